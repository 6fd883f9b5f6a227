"""One small launcher for multi-process tests: spawn N gloo ranks, join with a timeout, and report
which rank failed (with its traceback) instead of hanging."""

from __future__ import annotations

import os
import pickle
import queue
import socket
import time
import traceback

import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, world_size, port, fn, args, results):
    import torch
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world_size)
        # Plain pickle bytes: tensors sent through a torch queue live in the sender's shared memory,
        # which is gone once the rank exits.
        results.put((rank, "ok", pickle.dumps(fn(rank, world_size, *args))))
    except BaseException:
        results.put((rank, "error", traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_ranks(fn, world_size: int, *args, timeout: float = 120.0) -> list:
    """Run fn(rank, world_size, *args) on world_size gloo ranks; return the results in rank order."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, fn, args, results), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    out, errors = {}, []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < world_size and not errors:
            try:
                rank, status, value = results.get(timeout=0.5)
            except queue.Empty:
                dead = [f"rank {r} exited with code {p.exitcode}" for r, p in enumerate(procs)
                        if r not in out and p.exitcode is not None]
                if dead:
                    errors.append("; ".join(dead) + " without reporting")
                elif time.monotonic() > deadline:
                    errors.append(f"timed out after {timeout}s; ranks {sorted(set(range(world_size)) - set(out))} "
                                  "never reported")
                continue
            if status == "ok":
                out[rank] = pickle.loads(value)
            else:
                errors.append(f"rank {rank} failed:\n{value}")
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise AssertionError("\n".join(errors))
    return [out[r] for r in range(world_size)]
