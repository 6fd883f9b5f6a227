"""Regional compile on the CPU: compile seconds, steady-state seconds per step, and the distance to eager.

For the trained default (configs/tiny.yaml) and the random `mid` preset, one Engine runs eager, then one
with `compile: true` runs the same clip twice (the first run compiles; the second is the steady state),
then compiled plus the default TeaCache threshold. Steady-state per-step figures are CPU seconds of
this process on one thread (the machine's 2 cores are shared, so wall seconds are noisy; both are
recorded); `compile_seconds` is wall time of the calls that compiled (inductor compiles C++ in worker
processes whose CPU time this process does not see). One JSON line per run ->
experiments/results/compile.jsonl.

    OMP_NUM_THREADS=1 python experiments/compile_bench.py [--steps 4]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import ovi

PROMPT = "A red circle bounces. <AUDCAP>a high tone<ENDAUDCAP>"
CONFIGS = {"tiny (embedded default)": {}, "mid": {"model_name": "mid", "ckpt_dir": "./outputs/mid_ckpt"}}


def timed(engine, steps):
    wall, cpu = time.perf_counter(), time.process_time()
    clip = engine.generate(PROMPT, seed=0, steps=steps)
    return clip, (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def relative_diff(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max())


def bench(steps: int):
    for name, overrides in CONFIGS.items():
        base = {"bench": "compile", "config": name, "world_size": 1, "steps": steps, "threads": 1}
        eager = ovi.Engine.from_config(ovi.load_config(None, **overrides))
        timed(eager, 1)  # warm-up: first-call allocations, lazy imports
        ref, wall, cpu = timed(eager, steps)
        yield {**base, "mode": "eager", "step_seconds": wall, "step_cpu_seconds": cpu,
               "forwards": ref.meta["forwards"], "compile_seconds": 0.0}
        for mode, extra in (("compiled", {}), ("compiled+teacache", {"step_cache": "teacache"})):
            engine = ovi.Engine.from_config(ovi.load_config(None, compile=True, **overrides, **extra))
            first, first_wall, _ = timed(engine, steps)
            clip, wall, cpu = timed(engine, steps)
            record = clip.meta["compile"]
            yield {**base, "mode": mode, "step_seconds": wall, "step_cpu_seconds": cpu,
                   "first_run_step_seconds": first_wall, "compile_seconds": record["compile_seconds"],
                   "graphs": record["graphs"], "backend": record["backend"], "fallback": record["fallback"],
                   "forwards": clip.meta["forwards"], "step_cache_threshold": clip.meta["step_cache"]["threshold"],
                   "speedup_vs_eager_cpu": None,
                   "max_video_diff_vs_eager": relative_diff(clip.latents["video"], ref.latents["video"]),
                   "max_audio_diff_vs_eager": relative_diff(clip.latents["audio"], ref.latents["audio"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--out", default="experiments/results/compile.jsonl")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    eager_cpu = {}
    with out.open("w") as f:
        for row in bench(args.steps):
            if row["mode"] == "eager":
                eager_cpu[row["config"]] = row["step_cpu_seconds"]
            else:
                row["speedup_vs_eager_cpu"] = eager_cpu[row["config"]] / row["step_cpu_seconds"]
            print(json.dumps(row), flush=True)
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
