"""Launch helper for multi-process queue tests: start Python children, join them with a timeout,
and say which one failed (with its stderr) instead of hanging or failing silently."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def spawn(code: str, *args: str, **env: str) -> subprocess.Popen:
    """Run `python -c code args...` from the repo root."""
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=child_env(**env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def spawn_ovi_queue(*args: str, **env: str) -> subprocess.Popen:
    """Run the queue CLI (`ovi queue ARGS`) in a child process."""
    code = ("import sys, argparse; from ovi.queue.cli import add_queue_parser; "
            "p = argparse.ArgumentParser(prog='ovi'); s = p.add_subparsers(dest='c'); "
            "add_queue_parser(s); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
    return spawn(code, "queue", *args, **env)


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
