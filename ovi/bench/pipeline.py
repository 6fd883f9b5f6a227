"""`ovi bench pipeline`: where one generation's time goes, and how hard the model works.

One record per run: stage_seconds {text, denoise, decode, mux}, non_model_share (the share of wall
time outside the denoiser), flops_per_step (FLOPs of one denoising step - both guidance passes -
counted by torch.utils.flop_counter on the real forward, CPU attention included: `flop_counter`) and achieved_flops (flops_per_step x steps
/ denoise seconds). The first generation warms up and is not reported.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=None, help="yaml config (default: the embedded tiny model)")
    parser.add_argument("--runs", type=int, default=3, help="timed generations after one warm-up")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="trace one extra (untimed) generation into DIR/pipeline/ (TensorBoard)")


def flop_counter():
    """torch's FlopCounterMode, also counting the CPU's fused attention kernel
    (`_scaled_dot_product_flash_attention_for_cpu`, which SDPA runs on a CPU): torch has a formula for the
    CUDA kernels only, so without this a CPU step's attention FLOPs (~30% on mid) counted as zero."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query, key, value)
    return FlopCounterMode(display=False, custom_mapping={
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: attention_flops})


def flops_per_step(engine, plan) -> int:
    """FLOPs of one denoising step (positive + negative pass), counted on the real forward."""
    import torch

    from ovi.pipeline.solvers import make_solver
    contexts = engine.encode_text(plan)
    video, audio = engine.initial_latents(plan)
    t = make_solver(plan.solver, plan.steps, plan.shift).timesteps[0]
    with torch.no_grad(), flop_counter() as counter:
        engine.predict(plan, video, audio, t, contexts, first_frame_is_clean=False)
    return int(counter.get_total_flops())


def matmul_peak_flops(device, dtype, size: int = 1024, repeats: int = 5) -> float:
    """The best FLOP/s of a square matmul on this device and dtype: the ceiling `achieved_flops` is
    compared with (measured in the same run, so the ratio means something on any machine)."""
    import torch
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first call warms up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size ** 3 / best


def run(args):
    import torch  # here, not at import: `ovi` builds every bench's parser on each call

    import ovi
    from ovi.config import parse_set_option
    cfg = ovi.load_config(args.config, **dict(parse_set_option(s) for s in args.set))
    engine = ovi.Engine.from_config(cfg)
    prompt = cfg.text_prompt if cfg.text_prompt and not cfg.text_prompt.endswith((".csv", ".tsv")) else "a bench clip"
    plan = engine.plan(prompt)
    fps = flops_per_step(engine, plan)
    peak = matmul_peak_flops(engine.device, engine.dtype)
    engine.generate(prompt)  # warm-up
    trace_dir = None
    if args.profile:  # one traced generation, outside the timed runs (the profiler costs time)
        trace_dir = Path(args.profile) / "pipeline"
        engine.config = cfg.replace(profile_dir=str(trace_dir))
        engine.generate(prompt)
        engine.config = cfg
    with tempfile.TemporaryDirectory() as tmp:
        for run_index in range(args.runs):
            t0 = time.perf_counter()
            clip = engine.generate(prompt)
            t1 = time.perf_counter()
            clip.save(Path(tmp) / f"bench{run_index}")
            mux = time.perf_counter() - t1
            total = time.perf_counter() - t0
            timings = clip.meta["timings"]
            stages = {"text": timings["text"], "denoise": timings["denoise"], "decode": timings["decode"], "mux": mux}
            yield {
                "bench": "pipeline", "config": args.config or "tiny (embedded default)", "world_size": 1,
                "run": run_index, "model_name": cfg.model_name, "steps": plan.steps,
                "height_width": [plan.height, plan.width], "frames": plan.num_frames,
                "stage_seconds": stages, "total_seconds": total,
                "load_seconds": engine.load_seconds,
                "non_model_share": 1.0 - stages["denoise"] / total,
                "flops_per_step": fps, "achieved_flops": fps * plan.steps / stages["denoise"],
                "matmul_peak_flops": peak, "flops_utilisation": fps * plan.steps / stages["denoise"] / peak,
                "device": str(engine.device), "dtype": str(engine.dtype).replace("torch.", ""),
                "attention_backend": engine.attention_backend, "torch": torch.__version__,
                "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                "trace_dir": str(trace_dir) if trace_dir else None,
            }
