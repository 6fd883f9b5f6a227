"""WorkerGroup: N persistent ranks that load the model once and serve many generate() calls.

The caller's process (a Jupyter kernel or a script) spawns ranks 0..N-1 with torch.multiprocessing's
spawn context. Each rank joins one process group (gloo on CPU; nccl with one GPU per rank), builds its
RankEngine once, then runs every request it is sent: all ranks take part in each generate() (the
collectives inside need them all); rank 0 returns the Clip and forwards per-step progress.

Each rank has its own pair of pipes rather than a shared queue: a rank killed while writing to a
shared queue can leave its lock held and wedge everyone, a private pipe just reads EOF. The parent
waits on every pipe and every process sentinel at once, so a dead rank is noticed at once, and a
failed group is torn down (terminate, then kill) before the error reaches the caller. The rendezvous
store lives in the parent on a free localhost port and goes away with the group.

Under torchrun there is no parent process to drive the ranks: see `serve_torchrun` (rank 0 drives).
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
import weakref
from multiprocessing import connection

from ovi.config import OviConfig, load_config
from ovi.errors import ConfigError, InputError
from ovi.parallel.dims import ParallelDims
from ovi.pipeline.memory_profiles import check_memory_settings
from ovi.request import GenerateRequest
from ovi.runtime.launch import plan_backend, prepare_checkpoint
from ovi.runtime.ranks import CRASH_EXIT, PARENT_GONE_EXIT, rank_main

__all__ = ["WorkerGroup", "WorkerError"]

_CANCELLED = object()
STOP_GRACE_SECONDS = 10.0      # orderly close: how long ranks get to leave by themselves
TERMINATE_GRACE_SECONDS = 3.0  # after SIGTERM, before SIGKILL
DESYNC_GRACE_SECONDS = 30.0    # one rank reported bad input; how long the others get to report too


class WorkerError(RuntimeError):
    """A rank of a WorkerGroup died or raised. The group has been stopped; start a new one.

    `rank` (None when the group as a whole failed, e.g. a timeout), `exitcode` (None while unknown;
    negative = killed by that signal), `exc_type` and `remote_traceback` (when the rank raised)."""

    def __init__(self, message, *, rank=None, exitcode=None, exc_type=None, remote_traceback=None):
        super().__init__(message)
        self.rank, self.exitcode = rank, exitcode
        self.exc_type, self.remote_traceback = exc_type, remote_traceback


def _describe_exit(exitcode) -> str:
    if exitcode is None:
        return "exit code unknown"
    if exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}, exit code {exitcode}"
        except ValueError:
            return f"killed by signal {-exitcode}, exit code {exitcode}"
    if exitcode == PARENT_GONE_EXIT:
        return f"exit code {exitcode}: it lost its parent process"
    return f"exit code {exitcode}"


def _stop_processes(procs, conns, store_box, grace: float = TERMINATE_GRACE_SECONDS) -> None:
    """Terminate, then kill, every live rank; join all; close pipes; drop the store (frees the port).
    Module-level so the finalizer holds no reference to the group."""
    for p in procs:
        if p.is_alive():
            p.terminate()  # a rank blocked in a gloo collective never returns by itself
    deadline = time.monotonic() + grace
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(10)
    for conn in conns:
        try:
            conn.close()
        except OSError:
            pass
    store_box.clear()


class WorkerGroup:
    """N persistent ranks serving `generate()` calls; a context manager.

        with WorkerGroup(cfg, world_size=2) as group:
            clip = group.generate("A cat plays piano", seed=1, progress=print)

    cfg: OviConfig, dict, yaml path or None (the embedded default). world_size: number of ranks
    (default: sp_size x (2 if cfg_parallel else 1)); degrees the config leaves unset fill from it
    (sp_size: null -> world_size / cfg), set ones must multiply to it. backend: "gloo",
    "nccl" or None (nccl with one GPU per rank when CUDA is usable, else gloo on the CPU).
    threads: torch threads per CPU rank (default: this machine's cores / world_size).
    start_timeout / request_timeout: seconds before a start-up / a request that makes no progress
    counts as hung (None: no limit; a dead rank is always noticed at once).

    `generate()` takes what Engine.generate takes (a GenerateRequest, or a prompt and fields) and
    returns rank 0's Clip; `progress(step, total,
    info)` is called in the caller's thread; if it raises, every rank stops at the next step and the
    exception reaches the caller (the group stays usable). Bad input raises the rank's InputError
    (the group stays usable). A rank that dies or raises anything else stops the whole group and
    raises WorkerError; start a new WorkerGroup to continue.
    """

    def __init__(self, cfg=None, world_size: int | None = None, backend: str | None = None, *,
                 dims: ParallelDims | None = None, threads: int | None = None, start_timeout: float | None = 900.0,
                 request_timeout: float | None = None, poll_interval: float = 0.25):
        self.config = cfg if isinstance(cfg, OviConfig) else load_config(cfg)
        # Degrees are resolved and checked once per launch, before any process starts: by the launcher that
        # made this group (`dims=`: `ovi generate`, the Runner), else here (a group made in a kernel). The
        # ranks get them.
        if dims is not None and world_size is not None and world_size != dims.world_size:
            raise ConfigError(f"world_size={world_size} but the dims handed in are for {dims.world_size} ranks; "
                              f"pass one of them")
        self.dims = dims or ParallelDims.from_config(self.config, world_size)
        self.world_size = self.dims.world_size
        self.config.require_available()  # refuse what cannot run before spawning anything
        self.backend, self.device_type = plan_backend(self.config, self.world_size, backend)
        check_memory_settings(self.config, self.device_type)  # a refused memory profile fails before spawning
        self.request_timeout = request_timeout
        self.poll_interval = float(poll_interval)
        self._lock = threading.RLock()      # one call (generate/stats/close) at a time
        self._stop_lock = threading.Lock()
        self._procs, self._requests, self._replies, self._conns = [], [], [], []
        self._store_box: list = []
        self._req_id = 0
        self._closed = False
        self._failure: str | None = None
        if threads is None:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            threads = max(1, cores // self.world_size)
        self.threads = threads
        self._start(start_timeout)

    # -- lifecycle -------------------------------------------------------------------------------
    def _start(self, start_timeout) -> None:
        import datetime

        import torch.distributed as dist
        import torch.multiprocessing as mp

        timeout = start_timeout if start_timeout is not None else 24 * 3600
        prepare_checkpoint(self.config)
        # The parent hosts the rendezvous store on a free port (no race for the port, and closing the
        # group frees it); the ranks connect to it as clients.
        store = dist.TCPStore("127.0.0.1", 0, None, True, timeout=datetime.timedelta(seconds=timeout),
                              wait_for_workers=False)
        self._store_box.append(store)
        self.port = store.port
        spec = {"config": self.config.to_dict(), "dims": self.dims.describe(), "backend": self.backend, "device_type": self.device_type,
                "host": "127.0.0.1", "port": self.port, "parent_pid": os.getpid(), "threads": self.threads,
                "collective_timeout": max(float(timeout), float(self.request_timeout or 0), 1800.0)}
        ctx = mp.get_context("spawn")
        # Registered before the first start, so a failed start still cleans up. Runs at close(), on
        # garbage collection, or at interpreter exit (before multiprocessing joins its children).
        self._finalizer = weakref.finalize(self, _stop_processes, self._procs, self._conns, self._store_box)
        try:
            for rank in range(self.world_size):
                req_read, req_write = ctx.Pipe(duplex=False)
                rep_read, rep_write = ctx.Pipe(duplex=False)
                proc = ctx.Process(target=rank_main, args=(rank, self.world_size, spec, req_read, rep_write),
                                   name=f"ovi-rank-{rank}")
                proc.start()
                # Keep only our ends: when a rank dies its end closes and we read EOF.
                req_read.close()
                rep_write.close()
                self._procs.append(proc)
                self._requests.append(req_write)
                self._replies.append(rep_read)
                self._conns.extend([req_write, rep_read])
            ready, _ = self._collect(0, "start-up", start_timeout)
            self.rank_info = [ready[r] for r in range(self.world_size)]
        except BaseException:
            self._stop()
            self._closed = True
            raise

    def _stop(self) -> None:
        """Terminate/kill/join the ranks once; a second caller waits until the first is done."""
        with self._stop_lock:
            self._finalizer()

    def close(self) -> None:
        """Stop every rank (asking first, then terminating), join them and free the port. Idempotent;
        safe to call from another thread while generate() runs (that call then raises WorkerError)."""
        if not self._lock.acquire(timeout=0.5):
            # A call is running (maybe stuck in a collective): stop the processes under it.
            self._closed = True
            self._failure = self._failure or "the group was closed while a call was running"
            self._stop()
            return
        try:
            if self._closed:
                return
            self._closed = True
            for conn in self._requests:
                try:
                    conn.send_bytes(pickle.dumps(("stop",)))
                except OSError:
                    pass
            deadline = time.monotonic() + STOP_GRACE_SECONDS
            for p in self._procs:
                p.join(max(0.0, deadline - time.monotonic()))
            self._stop()
        finally:
            self._lock.release()

    def __enter__(self) -> "WorkerGroup":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return (f"WorkerGroup(world_size={self.world_size}, backend={self.backend!r}, "
                f"device={self.device_type!r}, {state})")

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    @property
    def closed(self) -> bool:
        return self._closed

    # -- calls -----------------------------------------------------------------------------------
    def generate(self, request: GenerateRequest | str | None = None, /, *, progress=None, **fields):
        """Engine.generate on all ranks (a GenerateRequest, or the keyword form); returns rank 0's Clip
        (see the class docstring for errors). The request travels to the ranks unchanged."""
        request = GenerateRequest.coerce(request, **fields)
        try:
            payload = pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise InputError(f"generate() arguments cannot be sent to the ranks ({exc}); pass the image as "
                             f"a path, PIL image, array or tensor") from exc
        with self._lock:
            req_id = self._send_all(("generate", payload, progress is not None))
            try:
                answers, callback_error = self._collect(req_id, "generate()", self.request_timeout, progress)
            except KeyboardInterrupt:  # while waiting (not from the callback): stop the ranks too
                self._interrupted(req_id)
                raise
        if callback_error is not None:
            raise callback_error  # every rank has stopped; the group is ready for the next call
        clip = answers[0]
        if clip is _CANCELLED or clip is None:
            raise WorkerError(f"rank 0 returned {'a cancellation' if clip is _CANCELLED else 'no clip'} for a "
                              f"generate() call that this process did not cancel; this is a bug in the rank engine")
        return clip

    def stats(self) -> list[dict]:
        """One dict per rank: the rank engine's accounting plus pid, device, backend, requests
        served, load time and peak RSS."""
        with self._lock:
            req_id = self._send_all(("stats",))
            replies, _ = self._collect(req_id, "stats()", self.request_timeout)
        return [replies[r] for r in range(self.world_size)]

    # -- plumbing --------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            why = f" ({self._failure})" if self._failure else ""
            raise WorkerError(f"this WorkerGroup is closed{why}; start a new one with "
                              f"WorkerGroup(cfg, world_size={self.world_size})")

    def _send_all(self, head: tuple) -> int:
        self._check_open()
        self._req_id += 1
        envelope = pickle.dumps((head[0], self._req_id, *head[1:]), protocol=pickle.HIGHEST_PROTOCOL)
        for rank, conn in enumerate(self._requests):
            try:
                conn.send_bytes(envelope)
            except OSError:
                raise self._rank_died(rank, head[0] + "()") from None
            except BaseException:
                if rank > 0:  # some ranks have the request and others never will: they cannot agree
                    self._fail(f"interrupted while sending {head[0]}() to the ranks")
                raise
        return self._req_id

    def _interrupted(self, req_id: int) -> None:
        """Ctrl-C / kernel interrupt during generate(): ask the ranks to stop at the next step; if
        they do not answer soon (or a second interrupt comes), stop the group."""
        try:
            self._requests[0].send_bytes(pickle.dumps(("cancel", req_id)))
            self._collect(req_id, "cancel", timeout=60.0)
        except (InputError, WorkerError):
            pass  # the request had ended anyway (bad input: group fine; a failure: already stopped)
        except BaseException:
            self._fail("the group was stopped after an interrupt")

    def _collect(self, req_id: int, what: str, timeout: float | None, progress=None):
        """Wait until every rank answered request `req_id`; return ({rank: value}, the exception the
        progress callback raised or None); a cancelled rank's value is _CANCELLED. Never blocks
        longer than `poll_interval` without checking that every rank is alive. `timeout` counts
        from the last message heard about this request."""

        answers: dict[int, object] = {}
        state = {"callback_error": None, "input_error": None, "desync_deadline": None,
                 "deadline": time.monotonic() + timeout if timeout is not None else None}
        conn_rank = {conn: rank for rank, conn in enumerate(self._replies)}
        sentinel_rank = {p.sentinel: rank for rank, p in enumerate(self._procs)}

        def handle(rank: int, message: tuple) -> None:
            kind, msg_id = message[0], message[1]
            if msg_id != req_id:
                return  # late news of an earlier request
            if timeout is not None:
                state["deadline"] = time.monotonic() + timeout
            if kind == "progress":
                if progress is not None and state["callback_error"] is None:
                    try:
                        progress(*message[2:])
                    except BaseException as exc:  # e.g. a Runner cancelling its job: stop all ranks
                        state["callback_error"] = exc
                        try:
                            self._requests[0].send_bytes(pickle.dumps(("cancel", req_id)))
                        except OSError:
                            pass  # rank 0 is gone; its sentinel reports that next
            elif kind == "done":
                answers[rank] = message[2]
            elif kind == "cancelled":
                answers[rank] = _CANCELLED
            elif kind == "error":
                if message[2] == "crash":
                    # A peer's death shows up here as a collective error; blame the dead rank.
                    others = [p.sentinel for r, p in enumerate(self._procs) if r != rank]
                    for obj in connection.wait(others, timeout=0.5):
                        dead = sentinel_rank[obj]
                        self._procs[dead].join(0.5)
                        if self._procs[dead].exitcode != CRASH_EXIT:  # not a rank that reported its own error
                            raise self._rank_died(dead, what,
                                                  then=f"rank {rank} then raised {message[3]}: {message[4]}")
                error = self._remote_error(rank, what, *message[2:])
                if not isinstance(error, InputError):
                    raise error  # the group is already stopped
                if req_id == 0:  # bad config or checkpoint at start-up: no group to keep
                    self._fail(f"rank {rank} could not start: {error}")
                    raise error
                answers[rank] = error
                state["input_error"] = state["input_error"] or error
                if state["desync_deadline"] is None:
                    state["desync_deadline"] = time.monotonic() + DESYNC_GRACE_SECONDS

        def drain(conn) -> bool:
            """Handle every message waiting on `conn`; False when the rank's end is closed."""
            try:
                while conn.poll():
                    handle(conn_rank[conn], pickle.loads(conn.recv_bytes()))
            except (EOFError, OSError):
                return False
            return True

        while len(answers) < self.world_size:
            if self._closed:
                raise self._fail(self._failure or "the group was closed")
            try:
                ready = connection.wait([*conn_rank, *sentinel_rank], timeout=self.poll_interval)
            except (OSError, ValueError):  # close() from another thread closed the pipes under us
                if self._closed:
                    raise self._fail(self._failure or "the group was closed") from None
                raise
            if self._closed:  # close() from another thread stopped the ranks
                raise self._fail(self._failure or "the group was closed")
            # A death is the root cause of whatever its peers report next, so look at deaths first.
            for rank in sorted(sentinel_rank[obj] for obj in ready if obj in sentinel_rank):
                drain(self._replies[rank])  # its last words (a traceback) explain more than its exit code
                raise self._rank_died(rank, what)
            for obj in ready:
                if obj in conn_rank and not drain(obj):
                    raise self._rank_died(conn_rank[obj], what)
            now = time.monotonic()
            missing = sorted(set(range(self.world_size)) - set(answers))
            if state["desync_deadline"] is not None and now > state["desync_deadline"] and missing:
                raise self._fail(f"rank {min(answers)} rejected the input of {what} but ranks {missing} went "
                                 f"on and did not finish within {DESYNC_GRACE_SECONDS:.0f}s") from state["input_error"]
            if state["deadline"] is not None and now > state["deadline"]:
                raise self._fail(f"ranks {missing} did not finish {what} within {timeout:.0f}s")
        if state["input_error"] is not None:
            raise state["input_error"]
        return answers, state["callback_error"]

    def _remote_error(self, rank, what, kind, type_name, message, tb, pickled):

        if kind == "input":
            exc = None
            if pickled is not None:
                try:
                    exc = pickle.loads(pickled)
                except Exception:
                    exc = None
            if not isinstance(exc, InputError):
                exc = InputError(message)
            exc.add_note(f"(raised on ovi worker rank {rank} during {what}; the group is still running)")
            return exc
        return self._fail(f"rank {rank} raised {type_name}: {message} during {what}", rank=rank,
                          exc_type=type_name, remote_traceback=tb)

    def _rank_died(self, rank: int, what: str, then: str | None = None) -> WorkerError:
        proc = self._procs[rank]
        proc.join(1.0)  # its sentinel fired, so this returns at once; gives us the exit code
        reason = f"rank {rank} (pid {proc.pid}) died ({_describe_exit(proc.exitcode)}) during {what}"
        if then:
            reason += f"; {then}"
        if what == "start-up":
            reason += (" (its own output above says why; in a script, create the group under "
                       "`if __name__ == '__main__':`, as spawned ranks re-import the main module)")
        return self._fail(reason, rank=rank, exitcode=proc.exitcode)

    def _fail(self, reason: str, **details) -> WorkerError:
        """Stop the whole group and build the error that tells the caller why."""
        self._closed = True
        self._failure = self._failure or reason
        self._stop()
        tb = details.get("remote_traceback")
        text = (f"ovi worker group failed: {reason}. All {self.world_size} ranks were stopped; start a new "
                f"WorkerGroup to continue.")
        if tb:
            text += f"\n\nRemote traceback (rank {details.get('rank')}):\n{tb.rstrip()}"
        return WorkerError(text, **details)
