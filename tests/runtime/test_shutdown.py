"""SIGTERM / SIGINT to a process running jobs (`ovi queue run`, `ovi queue serve --run`): the running
job goes back to `queued` (not counted as an attempt) and the process exits within 10 s; a second
signal exits at once. Subprocesses with the fake engine; every wait is bounded."""

import signal
import socket
import subprocess
import threading

import pytest

from ovi.queue import JobQueue
from tests.launcher import free_port, spawn_ovi_queue, wait_until

FAKE = ["--engine-factory", "tests.queue.fakes:factory"]


def _start(kind: str, db: str, step_seconds: str) -> tuple[subprocess.Popen, int | None]:
    env = {"OVI_FAKE_STEP_SECONDS": step_seconds}
    if kind == "run":
        return spawn_ovi_queue("run", "--db", db, *FAKE, **env), None
    port = free_port()
    return spawn_ovi_queue("serve", "--db", db, "--port", str(port), "--token", "t", "--run", *FAKE, **env), port


def _stderr_lines(proc: subprocess.Popen) -> list[str]:
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True).start()
    return lines


def _running(q: JobQueue, job_id: int, proc: subprocess.Popen, lines: list[str]):
    def check():
        assert proc.poll() is None, "".join(lines)
        job = q.get(job_id)
        return job["state"] == "running" and job["progress"] > 0
    return check


@pytest.mark.parametrize("kind", ["run", "serve"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_requeues_the_running_job_and_exits(tmp_path, kind, sig):
    q = JobQueue(tmp_path / "queue.db")
    job_id = q.submit({"prompt": "a long clip", "steps": 10_000})  # ~100 s at 10 ms a step
    proc, port = _start(kind, str(q.path), "0.01")
    lines = _stderr_lines(proc)
    held = None
    try:
        wait_until(_running(q, job_id, proc, lines), 60, "the job to be mid-way")
        if port is not None:
            # An event-stream client stays attached: it used to keep uvicorn waiting for ever.
            held = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer t\r\n\r\n")
            assert b"200 OK" in held.recv(4096)
        proc.send_signal(sig)
        code = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        if held is not None:
            held.close()
    job = q.get(job_id)
    assert job["state"] == "queued", "".join(lines)
    assert job["attempts"] == 0 and job["error"].startswith("released")
    assert q.counts()["running"] == 0
    if kind == "run" or sig == signal.SIGINT:
        # `run` returns GracefulShutdown.exit_code (128 + the signal). Under `serve`, uvicorn re-raises the
        # SIGINT it caught once it has shut down; Python turns it into KeyboardInterrupt, which `ovi` maps
        # to 130 (= 128 + SIGINT, ovi/cli.py).
        assert code == 128 + sig, "".join(lines)
    else:  # uvicorn re-raises SIGTERM with the default handler back: the process ends by the signal
        assert code == -signal.SIGTERM, "".join(lines)
    q.close()


def test_a_second_signal_exits_at_once(tmp_path):
    q = JobQueue(tmp_path / "queue.db")
    job_id = q.submit({"prompt": "one slow step", "steps": 2})
    proc, _ = _start("run", str(q.path), "60")  # the first step never ends in time
    lines = _stderr_lines(proc)
    try:
        wait_until(lambda: q.get(job_id)["state"] == "running", 60, "the job to start")
        proc.send_signal(signal.SIGTERM)
        wait_until(lambda: any("stopping" in line for line in lines), 10, "the first signal's notice")
        assert proc.poll() is None  # still inside the step
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=3) == 128 + signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    # Left running by the hard exit; the next runner finds its process gone and re-queues it.
    assert q.get(job_id)["state"] == "running"
    assert q.recover_lost() == [job_id] and q.get(job_id)["state"] == "queued"
    q.close()
