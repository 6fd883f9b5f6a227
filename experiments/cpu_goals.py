"""Issue 22's CPU goal (b): achieved FLOP/s of a denoising step on mid vs the measured matmul peak, with
the two measured interleaved in one process, one thread, so machine load hits both alike.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/cpu_goals.py --runs 12 [--compile] [--label after]

Each turn times a 1024^3 fp32 matmul (best of 3: the peak the step is compared with, as `ovi bench
pipeline`'s matmul_peak_flops) and then one guided denoising step (`Engine.predict`, positive + negative
pass) on mid at 256x448 (1008 video tokens), in wall and in CPU time of this process.
`utilisation_median` is the median over turns of each turn's (step FLOP/s / matmul FLOP/s) in wall time;
`cpu_utilisation_median` the same in CPU time, the measure `met` uses: on a shared machine a one-thread
process's CPU time leaves out the time other processes held the core, which a long step (seconds) suffers
far more than a best-of-3 matmul (tens of ms).
FLOPs per step come from torch.utils.flop_counter on the real step, CPU attention included
(ovi.bench.pipeline.flop_counter; torch counts only its CUDA attention kernels). With `--compile` a
second engine with regional compile (inductor) takes a third slot in every turn (`compiled_*` fields; its
compile, the first call, is outside the timed turns). `time_split` is torch.profiler's self
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


KINDS = {"matmul": ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm"),
         "attention": ("aten::_scaled_dot_product",),
         "convolution": ("aten::mkldnn_convolution", "aten::slow_conv", "aten::convolution")}


def kind_of(op_name: str) -> str:
    return next((k for k, names in KINDS.items() if op_name.startswith(names)), "other")


def time_split(step) -> dict:
    """Self CPU seconds of one step by op kind: matmuls, attention, convolutions, everything else."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    split = {k: 0.0 for k in (*KINDS, "other")}
    for event in prof.key_averages():
        split[kind_of(event.key)] += event.self_cpu_time_total / 1e6
    others = sorted(((e.self_cpu_time_total / 1e6, e.key) for e in prof.key_averages()
                     if kind_of(e.key) == "other" and e.key.startswith("aten::")), reverse=True)[:8]
    return {**split, "top_other": [[name, seconds] for seconds, name in others]}


def flops_by_kind(counter) -> dict:
    """The step's counted FLOPs by op kind (torch.utils.flop_counter keys ops as `aten.addmm`, ...)."""
    split = {k: 0 for k in (*KINDS, "other")}
    for op, n in counter.get_flop_counts()["Global"].items():
        split[kind_of(str(op).replace("aten.", "aten::", 1))] += int(n)
    return split


def matmul_peak(size: int = 1024, repeats: int = 3) -> tuple[float, float]:
    """Best FLOP/s of a square fp32 matmul over `repeats` tries: (per wall second, per CPU second of this
    process). One thread: CPU time leaves out the time other processes held the core."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    wall, cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        a @ b
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    return 2.0 * size ** 3 / wall, 2.0 * size ** 3 / cpu


def timed(fn) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=12, help="interleaved turns (matmul, step)")
    parser.add_argument("--compile", action="store_true", help="also time a regionally compiled engine")
    parser.add_argument("--label", default="", help="free text stored with the record (e.g. the code state)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    import ovi
    from ovi.pipeline.random_checkpoint import make_random_checkpoint
    from ovi.bench.pipeline import flop_counter
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
        with flop_counter() as counter:
            step()
        flops = int(counter.get_total_flops())
        flops_split = flops_by_kind(counter)
        step()  # warm-up
        if compiled_step is not None:
            compiled_step()  # compiles (not timed)
        peaks, cpu_peaks, steps, cpu_steps, compiled_steps, compiled_cpu = [], [], [], [], [], []
        for _ in range(args.runs):
            matmul_peak(repeats=1)  # warm the matmul's caches after the step
            wall, cpu = matmul_peak()
            peaks.append(wall)
            cpu_peaks.append(cpu)
            wall, cpu = timed(step)
            steps.append(wall)
            cpu_steps.append(cpu)
            if compiled_step is not None:
                wall, cpu = timed(compiled_step)
                compiled_steps.append(wall)
                compiled_cpu.append(cpu)
        split = time_split(step)

    def utilisation(seconds, peak):
        return [flops / s / p for s, p in zip(seconds, peak)]
    per_turn, per_turn_cpu = utilisation(steps, peaks), utilisation(cpu_steps, cpu_peaks)
    compiled_fields = {}
    if compiled_steps:
        turn, turn_cpu = utilisation(compiled_steps, peaks), utilisation(compiled_cpu, cpu_peaks)
        compiled_fields = {"compiled_step_seconds": compiled_steps, "compiled_step_cpu_seconds": compiled_cpu,
                           "compiled_utilisation_per_turn": turn,
                           "compiled_utilisation_median": statistics.median(turn),
                           "compiled_cpu_utilisation_per_turn": turn_cpu,
                           "compiled_cpu_utilisation_median": statistics.median(turn_cpu),
                           "compile": compiled.compiled.record()}
    # What bounds the utilisation: each kind's share of the FLOPs over its share of the profiled step's time,
    # times the step's utilisation, estimates that kind's FLOP/s against the matmul peak (shares, not the
    # profiled seconds: the profiler's clock is wall time, which load inflates; its per-op cost also makes
    # the many small `other` ops look a little dearer, so the matmul estimate reads a little high).
    profiled = sum(v for k, v in split.items() if k != "top_other")
    time_share = {k: split[k] / profiled for k in (*KINDS, "other")}
    efficiency = {k: flops_split[k] / flops / time_share[k] * statistics.median(per_turn_cpu)
                  for k in KINDS if time_share[k] > 0}
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    record = {"bench": "cpu_goals", "goal": "flops_utilisation", "config": "mid", "video_tokens": plan.vid_seq_len,
              "flops_per_step": flops, "step_seconds": steps, "matmul_peak_flops": peaks,
              "utilisation_per_turn": per_turn, "utilisation_median": statistics.median(per_turn),
              "step_cpu_seconds": cpu_steps, "matmul_peak_cpu_flops": cpu_peaks,
              "cpu_utilisation_per_turn": per_turn_cpu, "cpu_utilisation_median": statistics.median(per_turn_cpu),
              "target": GOAL, "met": statistics.median(per_turn_cpu) >= GOAL,
              "flops_by_kind": flops_split, "time_share_by_kind": time_share,
              "rate_vs_peak_by_kind": efficiency, "time_split_seconds": split, "runs": args.runs,
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
