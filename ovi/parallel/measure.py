"""Measuring memory, next to the model of it (ovi.parallel.memory): free device memory, the peak of a
stretch of work (`PeakMeter`: CUDA max_memory_allocated, or the CPU's resident high-water mark) and the
CPU allocator's peak from torch.profiler's allocation events (`count_cpu_allocations`, `allocated_peak`:
frees on gloo's worker threads are never recorded as events, and a plain running sum of the events counted
those buffers alive for the rest of the run). The per-rank accounting built from them is
`rank_memory_accounting`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os

import torch
from torch._C._profiler import _EventType

from ovi.parallel.fsdp import storage_bytes, unit_param_bytes


def free_device_memory(device: torch.device) -> int:
    """Bytes free on `device` now: CUDA's free memory, or the host's available memory for a CPU rank."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def allocated_peak(prof, *, every_thread: bool = False) -> int:
    """The most bytes torch's CPU allocator had handed out at once during a torch.profiler run made
    with profile_memory=True (on a CPU, what max_memory_allocated is on CUDA), above what was alive
    when it started.

    torch.profiler records allocation events only on threads it profiles, and a collective's buffer is
    often freed on gloo's worker thread (when it drops the last reference to the finished work): a
    running sum of the events counts such buffers alive for the rest of the run (measured: +1-2 fused
    blocks on mid FULL_SHARD, varying with thread timing). With `every_thread` (the run was inside
    `count_cpu_allocations()`) each event carries the allocator's running total over every thread, and
    the peak comes from those totals; otherwise from the events paired by address (`live_bytes_peak`,
    an upper bound)."""
    events = allocation_events(prof)
    if not events:
        return 0
    if not every_thread:
        return live_bytes_peak((t, address, nbytes) for t, address, nbytes, _ in events)
    events.sort()
    _, _, first_bytes, first_total = events[0]
    return max(total for *_, total in events) - (first_total - first_bytes)


def allocation_events(prof, device_type: str = "cpu") -> list[tuple[int, int, int, int]]:
    """(time ns, address, bytes: + allocated / - freed, allocator total after it) of every allocation
    event of `device_type` the profiler recorded (its event tree: the flat event list has no addresses)."""
    out, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == device_type:
            fields = event.extra_fields
            out.append((event.start_time_ns, fields.ptr, fields.alloc_size, fields.total_allocated))
        stack.extend(event.children)
    return out


def live_bytes_peak(events) -> int:
    """Peak of the bytes alive at once from (time, address, bytes) events, each free paired with the
    allocation at its address. A free the profiler did not record (made on a thread it does not
    profile) is inferred when the address is handed out again; until then the block counts as alive.
    Frees of blocks allocated before profiling began are not counted (callers add what was resident)."""
    live: dict[int, int] = {}
    now = peak = 0
    for _, address, nbytes in sorted(events):
        if nbytes > 0:
            now += nbytes - live.pop(address, 0)
            live[address] = nbytes
            peak = max(peak, now)
        elif nbytes < 0:
            now -= live.pop(address, 0)
    return peak


@contextlib.contextmanager
def count_cpu_allocations():
    """Have torch's CPU allocator count the allocations and frees of every thread while profiling
    (c10's `caffe2_report_cpu_memory_usage` flag; no Python API sets it, so through ctypes). Yields
    whether it could (False: the flag is not in this build's libc10)."""
    try:
        flag = ctypes.c_bool.in_dll(ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.so")),
                                    "FLAGS_caffe2_report_cpu_memory_usage")
    except (OSError, ValueError):
        yield False
        return
    before, flag.value = flag.value, True
    try:
        yield True
    finally:
        flag.value = before


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    """Hand memory the C allocator holds for freed tensors back to the OS (glibc malloc_trim), so a
    resident-set measurement counts live memory rather than what earlier work left in the heap."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMeter:
    """Peak memory of this process on `device` over a stretch of work: CUDA's max_memory_allocated,
    or on a CPU the resident-set high-water mark (Linux VmHWM, reset through /proc/self/clear_refs after
    returning freed heap memory to the OS) above the resident size when the meter was made (`baseline`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()
        self.baseline = self.current()

    def current(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return _proc_status("VmRSS") or 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _release_free_heap()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass

    def peak(self) -> int:
        """Peak bytes since the last reset, above the baseline."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device)) - self.baseline
        return (_proc_status("VmHWM") or 0) - self.baseline


def resident_tensor_bytes(modules) -> int:
    """Bytes of the tensors `modules` hold (parameters and buffers; this rank's shards of an FSDP model),
    each storage counted once: what a rank holds between generations."""
    return storage_bytes(t for module in filter(None, modules) for t in (*module.parameters(), *module.buffers()))


def rank_memory_accounting(model, text_model, device: torch.device, *, fsdp_strategy: str | None, sharded=None,
                           sharded_text=None, generation_peak: int | None = None, allocated_peak: int | None = None,
                           extra: dict | None = None) -> dict:
    """One rank's memory: the parameter bytes it holds (sharded or not), the largest FSDP unit, the
    measured peak of its last generation and the model's estimate of it (in `extra`, with the load-time
    figures). `peak_bytes_per_rank`: on CUDA max_memory_allocated; on a CPU with profile_memory the bytes
    torch's allocator held at most (`allocated_peak`), else the process's resident high-water mark above
    its size before loading (`peak_rss_bytes_per_rank`, which also counts libraries and heap the C
    allocator kept)."""
    if sharded is not None:
        out = sharded.accounting()
    else:
        units = unit_param_bytes(model)
        out = {"strategy": fsdp_strategy or "NO_SHARD", "cpu_offload": False, "fsdp": 1,
               "param_bytes_per_rank": sum(units.values()), "total_param_bytes": sum(units.values()),
               "largest_block_bytes": max(units.values()), "peak_param_bytes_per_rank": sum(units.values()),
               "param_device": str(device)}
    if sharded_text is not None:
        out.update(sharded_text.accounting())
    else:
        text = storage_bytes(text_model.parameters())
        out.update(text_param_bytes_per_rank=text, text_total_param_bytes=text)
    out["text_sharded"] = sharded_text is not None
    out.update(extra or {})
    if device.type == "cuda":
        out["peak_bytes_per_rank"], out["measured_peak"] = generation_peak, "cuda max_memory_allocated"
    elif allocated_peak is not None:
        out["peak_bytes_per_rank"], out["measured_peak"] = allocated_peak, "cpu allocator peak (profiled)"
        out["peak_rss_bytes_per_rank"] = generation_peak
    else:
        out["peak_bytes_per_rank"], out["measured_peak"] = generation_peak, "process resident high-water mark"
        out["peak_rss_bytes_per_rank"] = generation_peak
    estimated = out.get("estimated_peak_bytes")
    if estimated and out["peak_bytes_per_rank"] and out["measured_peak"] != "process resident high-water mark":
        # the estimate counts tensors: compare it with allocator peaks, not with a process's RSS
        out["measured_over_estimate"] = out["peak_bytes_per_rank"] / estimated
    return out
