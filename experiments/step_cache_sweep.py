"""Step caching measured against quality on the trained default (configs/tiny.yaml, 8 UniPC steps, dual
guidance: 16 forwards a clip).

For every method and threshold, every held-out prompt of `ovi bench quality` (ovi.train.data.HELD_OUT,
never trained on) is generated with the same seeds as the uncached reference and scored by the same
code (ovi.bench.quality.measure_engine, ovi.train.metrics.score); the latent distance to the uncached
run of the same prompt and seed is the relative L2 norm of the difference (video and audio separately).
One JSON line per setting -> experiments/results/step_cache_sweep.jsonl; plot with
experiments/plot_step_cache.py.

    OMP_NUM_THREADS=1 python experiments/step_cache_sweep.py [--seeds 1] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import ovi
from ovi.bench.quality import measure_engine
from ovi.pipeline.step_cache import install_step_cache
from ovi.train import data
from ovi.train.metrics import score

GRID = {"teacache": (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0),
        "magcache": (0.1, 0.2, 0.5, 1.0),
        "fbcache": (0.1, 0.15, 0.2, 0.3, 0.5, 1.0)}
# The goal of issue 22: >= 30% of forwards saved at >= 0.95 of every accuracy, bounce sync within 1 frame.
MIN_SAVED, MIN_ACCURACY_RATIO, MAX_SYNC_FRAMES = 0.30, 0.95, 1.0


def relative_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def sweep(seeds: int):
    engine = ovi.Engine.from_config(None)
    specs = data.held_out_specs()
    steps, nf = engine.config.sample_steps, engine.spec.num_frames

    def run(method, threshold):
        engine.step_cache = install_step_cache(engine.model, method, threshold)
        t0 = time.process_time()
        rows, seconds = measure_engine(engine, specs, seeds, steps)
        cpu = (time.process_time() - t0) / len(rows)
        meta = [c.meta["step_cache"] for _, _, c in rows]
        return rows, {"method": method, "threshold": engine.step_cache.threshold, "steps": steps,
                      "forwards": float(np.mean([m["forwards"] for m in meta])),
                      "forwards_full": float(np.mean([m["forwards"] + m["skipped"] for m in meta])),
                      "blocks_run": float(np.mean([m["blocks_run"] for m in meta])),
                      "blocks_total": float(np.mean([m["blocks_total"] for m in meta])),
                      "clip_seconds": seconds, "clip_cpu_seconds": cpu,
                      **score([(s, m) for s, m, _ in rows], nf)}

    ref_rows, ref = run("none", None)
    ref.update(forwards_saved=0.0, blocks_saved=0.0, video_latent_distance=0.0, audio_latent_distance=0.0)
    yield ref
    for method, thresholds in GRID.items():
        for threshold in thresholds:
            rows, row = run(method, threshold)
            row["forwards_saved"] = 1 - row["forwards"] / row["forwards_full"]
            row["blocks_saved"] = 1 - row["blocks_run"] / row["blocks_total"]
            for key in ("video", "audio"):
                row[f"{key}_latent_distance"] = float(np.mean(
                    [relative_l2(c.latents[key], rc.latents[key]) for (_, _, c), (_, _, rc) in zip(rows, ref_rows)]))
            # shape is the one accuracy the uncached model does not saturate (0.92), so it is where caching shows
            ratios = {k: row[k] / ref[k] for k in ("color_accuracy", "motion_accuracy", "pitch_accuracy", "shape_accuracy")
                      if ref[k]}
            row["accuracy_ratio_vs_uncached"] = ratios
            row["meets_goal"] = bool(row["forwards_saved"] >= MIN_SAVED
                                     and all(r >= MIN_ACCURACY_RATIO for r in ratios.values())
                                     and row["sync_error_frames"] is not None
                                     and row["sync_error_frames"] <= MAX_SYNC_FRAMES)
            yield row


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", default="experiments/results/step_cache_sweep.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)  # 2 cores shared by several jobs: CPU seconds on one thread are the stable figure
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as f:
        for row in sweep(args.seeds):
            row = {"bench": "step_cache_sweep", "config": "tiny (embedded default)", "world_size": 1,
                   "seeds": args.seeds, **row}
            print(json.dumps(row), flush=True)
            f.write(json.dumps(row) + "\n")
            f.flush()


if __name__ == "__main__":
    main()
