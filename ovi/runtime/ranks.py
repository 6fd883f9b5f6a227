"""Code that runs inside a rank: the serve loop of a WorkerGroup rank, and the torchrun driver.

A WorkerGroup rank talks to its parent over two private pipes (requests in, replies out). Every
message is a plain-pickled tuple; tensors travel by value, so nothing depends on shared memory that
a dying process would leave behind. Replies:

    ("done", req_id, value)            start-up (req_id 0) -> info dict; generate -> Clip on rank 0,
                                       None elsewhere; stats -> dict
    ("progress", req_id, step, total, info)      rank 0 only, once per denoising step
    ("cancelled", req_id)
    ("error", req_id, kind, type_name, message, traceback_text, pickled_exception_or_None)
                                       kind "input" (bad input: the rank keeps serving) or "crash"
                                       (the rank exits after sending it)
"""

from __future__ import annotations

import datetime
import os
import pickle
import signal
import sys
import threading
import time
import traceback

from ovi.errors import InputError
from ovi.runtime.launch import rank_device

PARENT_GONE_EXIT = 3   # exit code of a rank whose parent process disappeared
CRASH_EXIT = 1         # exit code of a rank that raised something other than an InputError
PARENT_POLL_SECONDS = 1.0


class Cancelled(Exception):
    """Raised inside every rank at the same denoising step when the caller cancelled the request."""


def start_parent_watchdog(parent_pid: int, interval: float = PARENT_POLL_SECONDS) -> threading.Thread:
    """Exit this process when its parent dies. A rank blocked in a collective never looks at its
    pipes, so only a separate thread can notice; PR_SET_PDEATHSIG is not used because it fires when
    the *thread* that spawned us ends (e.g. a Runner thread in a kernel), not the process."""
    def watch():
        while True:
            if os.getppid() != parent_pid:
                os._exit(PARENT_GONE_EXIT)
            time.sleep(interval)
    thread = threading.Thread(target=watch, name="ovi-parent-watchdog", daemon=True)
    thread.start()
    return thread


def error_message(req_id: int, exc: BaseException) -> tuple:
    kind = "input" if isinstance(exc, InputError) else "crash"
    try:
        pickled = pickle.dumps(exc)
        pickle.loads(pickled)  # some exceptions pickle but cannot be rebuilt; send only what round-trips
    except Exception:
        pickled = None
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return ("error", req_id, kind, type(exc).__qualname__, str(exc), tb, pickled)


class _Replies:
    """The rank's end of its reply pipe."""

    def __init__(self, conn):
        self.conn = conn

    def send(self, message: tuple) -> None:
        self.conn.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def _crash_exit(replies: _Replies, req_id: int, exc: BaseException) -> None:
    """Report a crash and leave without running atexit/destroy code that may block on peers."""
    try:
        replies.send(error_message(req_id, exc))
    except Exception:
        traceback.print_exc()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(CRASH_EXIT)


def rank_main(rank: int, world_size: int, spec: dict, requests, replies_conn) -> None:
    """Entry point of a WorkerGroup rank (spawned by the parent with torch.multiprocessing)."""
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what to do with it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    start_parent_watchdog(spec["parent_pid"])
    replies = _Replies(replies_conn)
    t0 = time.perf_counter()
    try:
        import torch
        import torch.distributed as dist

        from ovi.config import load_config
        from ovi.parallel.dims import ParallelDims
        from ovi.runtime.rank_engine import build_rank_engine

        device = rank_device(spec["device_type"], rank)
        if device.type == "cpu" and spec.get("threads"):
            torch.set_num_threads(int(spec["threads"]))
        timeout = datetime.timedelta(seconds=spec["collective_timeout"])
        store = dist.TCPStore(spec["host"], spec["port"], world_size, False, timeout=timeout)
        dist.init_process_group(spec["backend"], store=store, rank=rank, world_size=world_size, timeout=timeout)
        engine = build_rank_engine(load_config(spec["config"]), rank, world_size, device,
                                   dims=ParallelDims(**spec["dims"]))
    except BaseException as exc:
        _crash_exit(replies, 0, exc)
    load_seconds = time.perf_counter() - t0
    replies.send(("done", 0, {"rank": rank, "pid": os.getpid(), "device": str(device),
                              "backend": spec["backend"], "load_seconds": load_seconds}))
    _serve(engine, rank, device, requests, replies, load_seconds, spec["backend"])
    # Orderly stop (the parent asked, or closed its end of the pipe).
    try:
        dist.destroy_process_group()
    except Exception:
        pass


def _serve(engine, rank, device, requests, replies: _Replies, load_seconds: float, backend: str) -> None:
    import torch
    import torch.distributed as dist


    served = 0
    while True:
        try:
            envelope = pickle.loads(requests.recv_bytes())
        except (EOFError, OSError):
            return  # the parent closed the pipe (close(), or it is gone)
        kind = envelope[0]
        if kind == "stop":
            return
        if kind == "cancel":
            continue  # for a request that already finished
        req_id = envelope[1]
        if kind == "stats":
            replies.send(("done", req_id, {**engine.stats(), "pid": os.getpid(), "device": str(device),
                                           "backend": backend, "requests_served": served,
                                           "load_seconds": load_seconds, "max_rss_bytes": _max_rss()}))
            continue
        stop_after = False

        def hook(step, total, info=None, req_id=req_id, want_progress=envelope[3]):
            # Every rank calls this once per denoising step (Engine.denoise); rank 0 forwards progress
            # and decides whether to stop, and a broadcast makes all ranks stop at the same step so no
            # rank is left waiting in a collective the others skipped.
            nonlocal stop_after
            cancel = 0
            if rank == 0:
                if want_progress:
                    replies.send(("progress", req_id, step, total, info or {}))
                while requests.poll():
                    message = pickle.loads(requests.recv_bytes())
                    if message[0] == "cancel" and message[1] == req_id:
                        cancel = 1
                    elif message[0] == "stop":
                        cancel, stop_after = 1, True
            flag = torch.tensor([cancel], dtype=torch.int32, device=device)
            dist.broadcast(flag, src=0)
            if flag.item():
                raise Cancelled(f"request {req_id} cancelled at step {step}/{total}")

        try:
            request = pickle.loads(envelope[2])  # the caller's GenerateRequest, unchanged
            clip = engine.generate(request, progress=hook)
        except Cancelled:
            replies.send(("cancelled", req_id))
            if stop_after:
                return
            continue
        except InputError as exc:  # bad input is not a crash: say so and keep serving
            replies.send(error_message(req_id, exc))
            continue
        except BaseException as exc:
            _crash_exit(replies, req_id, exc)
        served += 1
        replies.send(("done", req_id, clip))


def _max_rss() -> int | None:
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    except Exception:
        return None


