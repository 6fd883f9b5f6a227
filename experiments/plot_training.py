"""Plot a tiny-model training run: loss curves (video, audio; smoothed) and held-out accuracy over steps.

    python experiments/plot_training.py RUN_DIR [--out experiments/plots/tiny_training.png]
                                               [--copy-to experiments/results/tiny_training]

RUN_DIR is a `python -m ovi.train.train --out RUN_DIR` folder (loss.jsonl, eval.jsonl). --copy-to also
keeps the curves as JSON lines under experiments/results (loss every 10th step, every eval row).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def smooth(values: list[float], k: int = 50) -> list[float]:
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= k:
            acc -= values[i - k]
        out.append(acc / min(i + 1, k))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir")
    ap.add_argument("--out", default="experiments/plots/tiny_training.png")
    ap.add_argument("--copy-to", default=None)
    ap.add_argument("--title", default=None)
    args = ap.parse_args(argv)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = Path(args.run_dir)
    loss, evals = read_jsonl(run / "loss.jsonl"), read_jsonl(run / "eval.jsonl")
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["step"] for r in loss]
    for key, label in (("loss_video", "video"), ("loss_audio", "audio")):
        a.plot(steps, smooth([r[key] for r in loss]), label=f"{label} (mean of 50 steps)")
    a.set_xlabel("step")
    a.set_ylabel("flow-matching loss")
    a.set_yscale("log")
    a.legend()
    a.grid(alpha=0.3)
    if evals:
        es = [r["step"] for r in evals]
        for key in ("color_accuracy", "motion_accuracy", "pitch_accuracy"):
            b.plot(es, [r[key] for r in evals], marker="o", label=key.replace("_accuracy", ""))
        b.set_ylim(-0.05, 1.05)
        b.set_xlabel("step")
        b.set_ylabel("held-out accuracy (8 steps, 1 seed)")
        b.legend()
        b.grid(alpha=0.3)
    minutes = loss[-1]["wall"] / 60 if loss else 0
    fig.suptitle(args.title or f"{run.name}: {len(loss)} steps, {minutes:.0f} min on the CPU")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)
    if args.copy_to:
        dest = Path(args.copy_to)
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "loss.jsonl").write_text("".join(json.dumps(r) + "\n" for r in loss if r["step"] % 10 == 0))
        (dest / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evals))
        if (run / "config.json").is_file():
            (dest / "config.json").write_text((run / "config.json").read_text())
        print(dest)


if __name__ == "__main__":
    main()
