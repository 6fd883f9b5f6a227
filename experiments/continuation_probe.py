"""Does a checkpoint continue a clip from its carried prefix? Two probes on the trained tiny model (issue 18).

    OMP_NUM_THREADS=1 .venv/bin/python experiments/continuation_probe.py --ckpt-dir DIR --label NAME [...]

1. Teacher-forced continuation: the data's own window 0 (each held-out prompt's clip, encoded) is the prior,
   and the engine adds one continuation window to it, exactly as `--extend` does; the new window's direction
   is measured (ovi.train.metrics). A model that ignores the prefix scores like chance on the later window
   even though the first window is perfect, which `ovi bench long` alone cannot tell from drift.
2. The flow-matching video loss at fixed noise levels on continuation windows (prefix held clean) and on
   plain windows of the same clips: with a clean prefix the position is known, so at high noise a model
   that reads the prefix has the *lower* loss there.

Appends one JSON line per checkpoint to experiments/results/continuation_probe.jsonl.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SIGMAS = (0.1, 0.3, 0.6, 0.9, 0.99)


def teacher_forced(ckpt_dir: str, seed: int = 0) -> dict:
    import ovi
    from ovi.bench.quality import trained_engine
    from ovi.pipeline.windows import denoise_windows, layout
    from ovi.train import data, metrics

    engine = trained_engine(ovi.load_config(None, ckpt_dir=ckpt_dir), "continuation probe")
    vcodec, acodec, spec = engine.components.video_codec, engine.components.audio_codec, engine.spec
    rows = []
    for clip_spec in data.held_out_specs():
        video = vcodec.encode(torch.from_numpy(data.render_video(clip_spec)))
        audio = acodec.encode(torch.from_numpy(data.render_audio(clip_spec, acodec.CYCLES)))
        plan = engine.plan(clip_spec.prompt, seed=seed)
        windows = layout(None, window_video_frames=video.shape[1], window_audio_tokens=audio.shape[0], fps=spec.fps,
                         audio_tokens_per_second=acodec.sample_rate / acodec.samples_per_latent,
                         prior_video_frames=video.shape[1], prior_audio_tokens=audio.shape[0])
        plan = dataclasses.replace(plan, windows=windows, prior=(video, audio), num_frames=windows.num_frames)
        latents = denoise_windows(engine, plan, engine.encode_text(plan), prior=plan.prior)
        frames, wave = engine.decode(plan, *latents)
        (seam,) = windows.seams
        rate = spec.sample_rate / spec.fps
        m = metrics.measure(frames[seam:], wave[int(round(seam * rate)):])
        rows.append({"prompt": clip_spec.prompt, "motion": m.motion, "ok": m.motion == clip_spec.motion,
                     "shape": m.shape, "shape_ok": m.shape == clip_spec.shape})
    return {"teacher_forced_direction": sum(r["ok"] for r in rows) / len(rows),
            "teacher_forced_shape": sum(r["shape_ok"] for r in rows) / len(rows), "teacher_forced_rows": rows}


def losses_by_sigma(ckpt_dir: str, clips: int = 96) -> dict:
    from ovi.train.train import Dataset, TrainConfig, Trainer, continuation_windows, make_specs

    cfg = TrainConfig(num_clips=clips, prefix_frac=0.5, init_from=ckpt_dir, threads=torch.get_num_threads())
    trainer = Trainer(cfg, Path("."))
    trainer.model.eval()
    specs = make_specs(cfg)
    ds = Dataset(specs, trainer.tokenizer, trainer.vcodec, trainer.acodec, continuation_windows(cfg, len(specs)))
    prefix = max(ds.prefix_groups, key=lambda k: len(ds.prefix_groups[k]))
    out = {}
    for sigma in SIGMAS:
        trainer.sample_sigma = lambda n, gen, s=sigma: torch.full((n,), s)
        row = {}
        for name, pre, idx in (("plain", None, torch.arange(32)), ("continuation", prefix, ds.prefix_groups[prefix][:32])):
            with torch.no_grad():
                lv, _, _ = trainer.loss(ds, idx, torch.Generator().manual_seed(0), prefix=pre)
            row[name] = round(float(lv), 4)
        out[str(sigma)] = row
    return {"video_loss_by_sigma": out, "loss_prefix": list(prefix)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt-dir", action="append", required=True, help="exported checkpoint folder (repeatable)")
    ap.add_argument("--label", action="append", required=True, help="one per --ckpt-dir")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "continuation_probe.jsonl")
    args = ap.parse_args()
    if len(args.label) != len(args.ckpt_dir):
        ap.error("give one --label per --ckpt-dir")
    for ckpt_dir, label in zip(args.ckpt_dir, args.label):
        t0 = time.time()
        record = json.loads((Path(ckpt_dir) / "training.json").read_text())
        row = {"label": label, "step": record.get("step"), "turn_frac": record["config"].get("turn_frac", 0.0),
               "prefix_frac": record["config"].get("prefix_frac", 0.0), **teacher_forced(ckpt_dir),
               **losses_by_sigma(ckpt_dir), "seconds": round(time.time() - t0, 1)}
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k != "teacher_forced_rows"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
