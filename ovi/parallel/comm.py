"""Collectives for one process group, with accounting and a receive-buffer pool.

Every collective the parallel code issues goes through `GroupComm`, which counts it, adds the bytes
this rank sends to others, and times it, into a `CommStats` shared by all groups of the rank.
Time is wall clock around the call and its wait: exact for gloo (synchronous on the CPU); on CUDA it
is host-side time, so ovi bench sp also reports profiler kernel time there.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch.profiler import record_function

# torch renamed all_gather_into_tensor to all_gather_single; use whichever this torch has.
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


@dataclass
class CommStats:
    """Per-rank totals since the last reset, plus per-denoising-step snapshots."""
    collectives: int = 0
    bytes_sent: int = 0
    seconds: float = 0.0
    by_kind: dict = field(default_factory=lambda: defaultdict(int))
    steps: list = field(default_factory=list)
    _mark: tuple = (0, 0, 0.0)

    def record(self, kind: str, nbytes: int, seconds: float) -> None:
        self.collectives += 1
        self.bytes_sent += int(nbytes)
        self.seconds += seconds
        self.by_kind[kind] += 1

    def end_step(self) -> None:
        c, b, s = self._mark
        self.steps.append({"collectives": self.collectives - c, "bytes": self.bytes_sent - b,
                           "seconds": self.seconds - s})
        self._mark = (self.collectives, self.bytes_sent, self.seconds)

    def reset(self) -> None:
        self.collectives, self.bytes_sent, self.seconds = 0, 0, 0.0
        self.by_kind = defaultdict(int)
        self.steps, self._mark = [], (0, 0, 0.0)

    def summary(self) -> dict:
        n = len(self.steps)
        mean = lambda key: (sum(s[key] for s in self.steps) / n) if n else 0.0  # noqa: E731
        return {"collectives": self.collectives, "bytes_sent": self.bytes_sent, "comm_seconds": self.seconds,
                "by_kind": dict(self.by_kind), "steps": n, "collectives_per_step": mean("collectives"),
                "bytes_per_step": mean("bytes"), "comm_seconds_per_step": mean("seconds")}


def profiled_comm_seconds(prof) -> dict[str, float]:
    """Time spent in collectives according to a torch.profiler run: {op: seconds} plus "total".

    gloo ops ("gloo:all_to_all", ...) run on the host, so their CPU time is the collective's time;
    nccl work runs in CUDA kernels ("ncclDevKernel_...", ...), whose device time is what counts.
    """
    out: dict[str, float] = {}
    for event in prof.key_averages():
        key = event.key
        if key.startswith("gloo:"):
            seconds = event.cpu_time_total / 1e6
        elif key.startswith("nccl") and getattr(event, "device_time_total", 0):
            seconds = event.device_time_total / 1e6
        else:
            continue
        out[key] = out.get(key, 0.0) + seconds
    out["total"] = sum(out.values())
    return out


class BufferPool:
    """Reuses receive buffers keyed by (slot, shape, dtype, device).

    A slot names one use site (e.g. "video.self.qkv"); its buffer is consumed before the same site
    runs again (next block), so reuse is safe while two different sites never share a buffer.
    """

    def __init__(self):
        self._buffers: dict = {}
        self.allocations = 0

    def get(self, slot: str, shape, dtype, device) -> torch.Tensor:
        key = (slot, tuple(shape), dtype, str(device))
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = torch.empty(shape, dtype=dtype, device=device)
            self.allocations += 1
        return buf


class Pending:
    """An issued asynchronous collective: `wait()` returns its result and records its time."""

    def __init__(self, comm, work, result, kind, nbytes, launch_seconds):
        self.comm, self.work, self.result = comm, work, result
        self.kind, self.nbytes, self.launch_seconds = kind, nbytes, launch_seconds

    @torch.compiler.disable  # see GroupComm.all_to_all
    def wait(self) -> torch.Tensor:
        """Time counted: issuing the collective plus the wait that computation did not hide."""
        t0 = time.perf_counter()
        self.work.wait()
        self.comm.stats.record(self.kind, self.nbytes, self.launch_seconds + time.perf_counter() - t0)
        return self.result


class GroupComm:
    def __init__(self, group, ranks: list[int], rank: int, stats: CommStats, *, use_pool=True, sync_after=False):
        self.group, self.ranks = group, list(ranks)
        self.size, self.rank = len(ranks), ranks.index(rank)
        self.stats = stats
        self.pool = BufferPool() if use_pool else None
        self.sync_after = sync_after  # upstream's scheme synchronises the device after every all-to-all

    def _buffer(self, slot, shape, dtype, device):
        if self.pool is None or slot is None:
            return torch.empty(shape, dtype=dtype, device=device)
        return self.pool.get(slot, shape, dtype, device)

    def _finish(self, work, result, kind, nbytes, t0, async_op):
        if async_op:
            return Pending(self, work, result, kind, nbytes, time.perf_counter() - t0)
        if self.sync_after and result.is_cuda:
            torch.cuda.synchronize()
        self.stats.record(kind, nbytes, time.perf_counter() - t0)
        return result

    # Under regional compile (ovi.pipeline.compile) a collective is a graph break that runs as is: traced,
    # its bookkeeping (timestamps, pool slots) would be guarded as constants and recompile on every call.
    @torch.compiler.disable
    def all_to_all(self, send: torch.Tensor, slot: str, async_op=False):
        """send [P, ...] (row j goes to rank j) -> recv [P, ...] (row j came from rank j).
        The result lives in the pool slot `slot` (None: fresh) until the same slot is used again."""
        send = send.contiguous()
        recv = self._buffer(slot, send.shape, send.dtype, send.device)
        nbytes = send.numel() * send.element_size() * (self.size - 1) // self.size
        t0 = time.perf_counter()
        with record_function("collective/all_to_all"):  # a range in --profile traces
            work = dist.all_to_all_single(recv, send, group=self.group, async_op=async_op)
        return self._finish(work, recv, "all_to_all", nbytes, t0, async_op)

    @torch.compiler.disable  # see all_to_all
    def all_gather(self, x: torch.Tensor, slot: str, async_op=False):
        """x [...] -> [P, ...] stacked in rank order. slot=None: a fresh buffer (for results that
        leave the caller, which a pooled buffer would see overwritten by the next call)."""
        x = x.reshape(1, *x.shape).contiguous()  # backends gather along dim 0 into [P * x0, ...]
        out = self._buffer(slot, (self.size, *x.shape[1:]), x.dtype, x.device)
        nbytes = x.numel() * x.element_size() * (self.size - 1)
        t0 = time.perf_counter()
        with record_function("collective/all_gather"):
            work = _all_gather(out, x, group=self.group, async_op=async_op)
        return self._finish(work, out, "all_gather", nbytes, t0, async_op)
