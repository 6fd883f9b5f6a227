"""The one launcher for multi-process tests: gloo ranks (`run_ranks`), Python children and CLI
subprocesses (`spawn`, `run`), joined with deadlines, with checks that no process is left behind.
Nothing here sleeps to wait for a condition: every wait is a bounded poll or a join with a timeout,
and a failure names the rank or child (with its traceback or stderr)."""

from __future__ import annotations

import os
import pickle
import queue
import socket
import subprocess
import sys
import time
import traceback
import uuid
from pathlib import Path

import torch.multiprocessing as mp

try:
    import psutil
except ImportError:  # optional: fall back to os.kill(pid, 0) and /proc
    psutil = None

ROOT = Path(__file__).resolve().parents[1]


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


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


def run(argv: list[str], timeout: float, cwd=None, **env: str) -> subprocess.CompletedProcess:
    """Run a command to completion; on timeout kill it and fail saying so (with its stderr)."""
    proc = subprocess.Popen(argv, cwd=cwd or ROOT, env=child_env(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"{' '.join(argv[:6])} ... did not finish within {timeout}s; stderr:\n{err[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def run_python(code: str, timeout: float, **env: str) -> subprocess.CompletedProcess:
    return run([sys.executable, "-c", code], timeout, **env)


def marker() -> dict:
    """An environment variable that every descendant of a child inherits: lets a test find all the
    processes a command started, even after they were re-parented."""
    return {"OVI_TEST_MARKER": uuid.uuid4().hex}


def is_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped counts as gone)."""
    if psutil is not None:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_gone(pids: dict[str, int], timeout: float) -> None:
    """Join processes that are not our children: fail naming the ones still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {name: pid for name, pid in pids.items() if is_alive(pid)}
        if not alive:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"still running after {timeout}s: " +
                                 ", ".join(f"{name} (pid {pid})" for name, pid in alive.items()))
        if psutil is not None:
            procs = []
            for pid in alive.values():
                try:
                    procs.append(psutil.Process(pid))
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(procs, timeout=min(0.5, max(0.0, deadline - time.monotonic())))
        else:
            time.sleep(0.05)  # no psutil: a bounded poll is the only way to watch a non-child


def spawned_children() -> list[int]:
    """Pids of live spawn-context children of this process (a leaked rank would be one)."""
    if psutil is None:
        return []
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child.pid)
        except psutil.NoSuchProcess:
            pass
    return found


def marked_processes(mark: dict) -> list[int]:
    """Live processes carrying the marker from `marker()` (needs psutil; else [] — the callers also
    check what they can without it)."""
    if psutil is None:
        return []
    (key, value), = mark.items()
    found = []
    for proc in psutil.process_iter(["pid"]):
        try:
            if proc.pid != os.getpid() and proc.environ().get(key) == value and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


def spawn(code: str, *args: str, **env: str) -> subprocess.Popen:
    """Run `python -c code args...` from the repo root."""
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=child_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def spawn_ovi_queue(*args: str, **env: str) -> subprocess.Popen:
    """Run the queue CLI (`ovi queue ARGS`) in a child process."""
    return subprocess.Popen([sys.executable, "-m", "ovi.cli", "queue", *args], cwd=ROOT, env=child_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def join_all(procs: dict[str, subprocess.Popen], timeout: float) -> dict[str, str]:
    """Wait for every child (one shared deadline); kill the rest on timeout. Raises naming the
    first child that failed or hung; returns each child's stdout."""
    deadline = time.monotonic() + timeout
    outputs, failures = {}, []
    for name, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=30)
            failures.append(f"{name} did not finish within {timeout}s; stderr:\n{err[-2000:]}")
            continue
        outputs[name] = out
        if proc.returncode != 0:
            failures.append(f"{name} exited {proc.returncode}; stderr:\n{err[-2000:]}")
    if failures:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
        raise AssertionError("\n\n".join(failures))
    return outputs


def wait_until(predicate, timeout: float, what: str, interval: float = 0.02):
    """Bounded poll: return predicate()'s first truthy value, or fail saying what never happened."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
