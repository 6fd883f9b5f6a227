"""Issue 22's CPU goal (b): achieved FLOP/s of a denoising step on mid vs the measured matmul peak, with
the two measured interleaved in one process, one thread, so machine load hits both alike.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/cpu_goals.py --runs 12 [--compile] [--label after]

Each turn times one 1024^3 fp32 matmul (best of 3: the peak the step is compared with, as `ovi bench
pipeline`'s matmul_peak_flops) and then one guided denoising step (`Engine.predict`, positive + negative
pass) on mid at 256x448 (1008 video tokens). `utilisation_median` is the median over turns of each turn's
(step FLOP/s / matmul FLOP/s); `utilisation_best` compares the fastest step with the fastest matmul.
FLOPs per step come from torch.utils.flop_counter on the real step. With `--compile` a second engine
with regional compile (inductor) takes a third slot in every turn (`compiled_*` fields; its compile, the
first call, is outside the timed turns). `time_split` is torch.profiler's self
CPU time per op kind for one extra step (where the rest of the time goes). Appends one JSON line to
experiments/results/cpu_goals.jsonl. Goals (b) sp=2 and (c) LoRA are measured by `ovi bench sp` / `ovi bench
lora` (experiments/run_bench.py).
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "cpu_goals.jsonl"
GOAL = 0.75


def time_split(step) -> dict:
    """Self CPU seconds of one step by op kind: matmuls, attention, convolutions, everything else."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    kinds = {"matmul": ("aten::addmm", "aten::mm", "aten::bmm"), "attention": ("aten::_scaled_dot_product",),
             "convolution": ("aten::mkldnn_convolution", "aten::slow_conv", "aten::convolution")}
    split = {k: 0.0 for k in (*kinds, "other")}
    for event in prof.key_averages():
        kind = next((k for k, names in kinds.items() if event.key.startswith(names)), "other")
        split[kind] += event.self_cpu_time_total / 1e6
    others = sorted(((e.self_cpu_time_total / 1e6, e.key) for e in prof.key_averages()
                     if not any(e.key.startswith(n) for names in kinds.values() for n in names)
                     and e.key.startswith("aten::")), reverse=True)[:8]
    return {**split, "top_other": [[name, seconds] for seconds, name in others]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12, help="interleaved turns (matmul, step)")
    parser.add_argument("--compile", action="store_true", help="also time a regionally compiled engine")
    parser.add_argument("--label", default="", help="free text stored with the record (e.g. the code state)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    import ovi
    from ovi.bench.pipeline import matmul_peak_flops
    from ovi.pipeline.random_checkpoint import make_random_checkpoint
    from torch.utils.flop_counter import FlopCounterMode
    root = Path(tempfile.mkdtemp(prefix="ovi-cpu-goals-"))
    make_random_checkpoint(root / "mid", "mid")
    engine = ovi.Engine.from_config(ovi.load_config(model_name="mid", ckpt_dir=str(root / "mid"),
                                                    video_frame_height_width=[256, 448]))
    plan = engine.plan("a bench clip", seed=0)
    contexts = engine.encode_text(plan)
    video, audio = engine.initial_latents(plan)
    step = lambda: engine.predict(plan, video, audio, 999, contexts, False)  # noqa: E731
    compiled_step = None
    if args.compile:
        compiled = ovi.Engine.from_config(engine.config.replace(compile=True))
        compiled_step = lambda: compiled.predict(plan, video, audio, 999, contexts, False)  # noqa: E731
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            step()
        flops = int(counter.get_total_flops())
        step()  # warm-up
        if compiled_step is not None:
            compiled_step()  # compiles (not timed)
        peaks, steps, compiled_steps = [], [], []
        for _ in range(args.runs):
            peaks.append(matmul_peak_flops(engine.device, engine.dtype, repeats=3))
            t0 = time.perf_counter()
            step()
            steps.append(time.perf_counter() - t0)
            if compiled_step is not None:
                t0 = time.perf_counter()
                compiled_step()
                compiled_steps.append(time.perf_counter() - t0)
        split = time_split(step)
    per_turn = [flops / s / p for s, p in zip(steps, peaks)]
    compiled_fields = {}
    if compiled_steps:
        compiled_turn = [flops / s / p for s, p in zip(compiled_steps, peaks)]
        compiled_fields = {"compiled_step_seconds": compiled_steps, "compiled_utilisation_per_turn": compiled_turn,
                           "compiled_utilisation_median": statistics.median(compiled_turn),
                           "compiled_utilisation_best": flops / min(compiled_steps) / max(peaks),
                           "compile": compiled.compiled.record()}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    record = {"bench": "cpu_goals", "goal": "flops_utilisation", "config": "mid", "video_tokens": plan.vid_seq_len,
              "flops_per_step": flops, "step_seconds": steps, "matmul_peak_flops": peaks,
              "utilisation_per_turn": per_turn, "utilisation_median": statistics.median(per_turn),
              "utilisation_best": flops / min(steps) / max(peaks), "target": GOAL,
              "met": statistics.median(per_turn) >= GOAL, "time_split_seconds": split, "runs": args.runs,
              **compiled_fields,
              "threads": torch.get_num_threads(), "label": args.label, "commit": commit,
              "torch": torch.__version__, "host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    line = json.dumps(record, sort_keys=True)
    print(line)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
