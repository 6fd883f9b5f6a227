"""torch.profiler traces of generations, in the format TensorBoard's profile plugin (torch-tb-profiler)
opens: `tensorboard --logdir DIR` (one run per folder holding `<worker>.<ts>.pt.trace.json` files).

The code marks its parts with `torch.profiler.record_function` ranges, which cost next to nothing
while no profiler runs: `denoise_step/N`, `fused_block/N` (ovi.model), `attention/<backend>`,
`collective/<kind>` (ovi.parallel), `text_encoder`, `codec/<video|audio>_<encode|decode>`. A trace
shows them on the timeline and in the operator view, with gloo/nccl ops and memory.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, tensorboard_trace_handler


@contextlib.contextmanager
def generation_profiler(profile_dir: str | None, worker: str, device: torch.device, *, enabled: bool = False,
                        memory: bool = False):
    """Profile the enclosed work when `profile_dir` is given (the trace is written there as
    `<worker>.<timestamp>.pt.trace.json`) or `enabled` or `memory` (kept in memory, e.g. to count
    collectives, or with allocation events to measure a CPU's allocator peak); yields the profiler, or
    None when none of them."""
    if not profile_dir and not enabled and not memory:
        yield None
        return
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    handler = None
    if profile_dir:
        Path(profile_dir).mkdir(parents=True, exist_ok=True)
        handler = tensorboard_trace_handler(str(profile_dir), worker_name=worker)
    with profile(activities=activities, on_trace_ready=handler, profile_memory=bool(profile_dir) or memory) as prof:
        yield prof


def trace_files(profile_dir: str | Path) -> list[Path]:
    """The trace files under a --profile folder (every run folder in it)."""
    return sorted(Path(profile_dir).rglob("*.pt.trace.json"))
