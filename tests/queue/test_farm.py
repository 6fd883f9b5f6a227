"""The farm on a real PostgreSQL server: runner processes (each its own process group) sharing one
queue — every job done exactly once, kill -9 and SIGSTOP of runners, a server restart mid-batch,
heterogeneous runners, and bad URLs. The fake engine (tests/queue/fakes.py) stands in for the
model: the point here is the queue (the trained-model runner is covered in tests/runtime)."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from ovi.queue import JobQueue
from tests.launcher import ROOT, child_env, free_port, wait_until

LEASE = 3.0  # --heartbeat-timeout of every runner here: short, so recovery is quick


class Farm:
    """Runner processes of one queue, each in its own session (process group), stderr to a file."""

    def __init__(self, url: str, root: Path, step_seconds: float):
        self.url, self.root, self.step_seconds = url, root, step_seconds
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, label: str, *extra: str) -> subprocess.Popen:
        log = open(self.root / f"{label}.log", "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "ovi.cli", "queue", "run", "--db", self.url, "--label", label,
             "--engine-factory", "tests.queue.fakes:factory", "--out", str(self.root / "out"),
             "--heartbeat-timeout", str(LEASE), *extra],
            cwd=ROOT, env=child_env(OVI_FAKE_STEP_SECONDS=str(self.step_seconds),
                                    OVI_QUEUE_ROOT=str(self.root)),
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        log.close()
        self.procs[label] = proc
        return proc

    def signal(self, label: str, sig: int) -> None:
        os.killpg(self.procs[label].pid, sig)

    def log(self, label: str) -> str:
        return (self.root / f"{label}.log").read_text()

    def stop_all(self, timeout: float = 60) -> None:
        """SIGTERM every live runner (its job goes back to the queue) and wait for it."""
        for label, proc in self.procs.items():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGCONT)
                os.killpg(proc.pid, signal.SIGTERM)
        for label, proc in self.procs.items():
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                raise AssertionError(f"runner {label} ignored SIGTERM; log:\n{self.log(label)[-2000:]}")


@pytest.fixture
def farm_db(pg_server, tmp_path):
    return pg_server.create_database()


def _sidecar_runner(job: dict) -> str:
    return json.loads(Path(job["result"]["json"]).read_text())["runner"]


def _assert_each_done_once(q: JobQueue, ids: list[int], out: Path) -> dict[int, dict]:
    jobs = {i: q.get(i) for i in ids}
    assert {j["state"] for j in jobs.values()} == {"done"}, collections.Counter(
        j["state"] for j in jobs.values())
    done = collections.Counter(e["id"] for e in q.events(0, limit=1_000_000) if e["kind"] == "done")
    assert sorted(done) == sorted(ids) and set(done.values()) == {1}  # one `done` per job
    mp4s = sorted(out.glob("*.mp4"))
    assert len(mp4s) == len(ids)  # one clip per job: nothing twice
    assert sorted(Path(j["result"]["mp4"]) for j in jobs.values()) == mp4s
    assert q.integrity_check() == "ok"
    return jobs


def test_four_runners_every_job_once_and_kill_9_of_two_mid_job(farm_db, tmp_path):
    q = JobQueue(farm_db, root=tmp_path)
    ids = q.submit_many([{"prompt": f"clip {i}", "seed": i, "steps": 6} for i in range(100)])
    farm = Farm(farm_db, tmp_path, step_seconds=0.05)
    labels = [f"r{i}" for i in range(4)]
    try:
        for label in labels:
            farm.start(label)
        wait_until(lambda: len({r["label"] for r in q.runners(live_only=True)}) == 4, 120,
                   "4 runners to register")

        # Two runners each mid-way through a job: kill -9 their whole process groups.
        def victims_mid_job():
            running = {j["worker"]: j for j in q.list("running") if j["progress"] >= 0.3}
            by_label = {r["label"]: running.get(r["id"]) for r in q.runners()}
            return by_label if by_label.get("r0") and by_label.get("r1") else None

        mid = wait_until(victims_mid_job, 120, "r0 and r1 to be mid-job")
        farm.signal("r0", signal.SIGKILL)
        farm.signal("r1", signal.SIGKILL)
        victim_jobs = [mid["r0"]["id"], mid["r1"]["id"]]
        assert farm.procs["r0"].wait(30) == -signal.SIGKILL
        assert farm.procs["r1"].wait(30) == -signal.SIGKILL

        # Their jobs finish on the survivors once the leases run out. How soon is measured by
        # experiments/farm_trained.py (results/farm.jsonl), not here: the wait is only a liveness bound.
        wait_until(lambda: all(q.get(v)["state"] == "done" for v in victim_jobs), 120,
                   f"jobs {victim_jobs} of the killed runners to finish elsewhere")
        wait_until(lambda: q.counts()["done"] == len(ids), 180, "every job to be done")
    finally:
        farm.stop_all()
    jobs = _assert_each_done_once(q, ids, tmp_path / "out")
    for v in victim_jobs:
        assert jobs[v]["attempts"] == 2 and _sidecar_runner(jobs[v]) in ("r2", "r3")
        kinds = [e["kind"] for e in q.events(0, job_id=v)]
        assert kinds.count("lost") == 1 and kinds.count("running") == 2
    makers = collections.Counter(_sidecar_runner(j) for j in jobs.values())
    assert set(makers) <= set(labels) and makers["r2"] > 0 and makers["r3"] > 0
    assert sum(j["attempts"] for j in jobs.values()) == len(ids) + 2  # only the two re-runs
    q.close()


def test_a_job_that_keeps_killing_its_runners_ends_failed_with_the_reason(farm_db, tmp_path):
    """Each runner that takes the job dies (kill -9 mid-job); after --max-attempts 3 the next runner
    that recovers its expired lease fails it, saying why, instead of handing it out again."""
    q = JobQueue(farm_db, root=tmp_path)
    a = q.submit({"prompt": "deadly", "steps": 4})
    farm = Farm(farm_db, tmp_path, step_seconds=60.0)  # a step outlasts the test: always mid-job
    victims = []
    try:
        for attempt in (1, 2, 3):
            label = f"victim{attempt}"
            victims.append(farm.start(label, "--max-attempts", "3"))
            wait_until(lambda: q.get(a)["state"] == "running" and q.get(a)["attempts"] == attempt,
                       120, f"attempt {attempt} to start")
            farm.signal(label, signal.SIGKILL)
            assert farm.procs[label].wait(30) == -signal.SIGKILL
        farm.start("survivor", "--max-attempts", "3")
        wait_until(lambda: q.get(a)["state"] == "failed", 120, "the job to fail")
    finally:
        farm.stop_all()
    job = q.get(a)
    assert job["error"].startswith("lost 3 times: lease expired on runner "), job["error"]
    assert f":{victims[-1].pid}:" in job["error"].split(" during ")[0]  # the last runner it killed
    kinds = [e["kind"] for e in q.events(0, job_id=a)]
    assert kinds.count("running") == 3 and kinds.count("lost") == 3 and kinds[-1] == "failed"
    assert q.retry(a)["state"] == "queued"  # a person can still run it again
    q.close()


def test_a_paused_runner_is_fenced_out_and_its_late_write_refused(farm_db, tmp_path):
    q = JobQueue(farm_db, root=tmp_path)
    ids = q.submit_many([{"prompt": f"slow {i}", "steps": 10} for i in range(3)])
    farm = Farm(farm_db, tmp_path, step_seconds=0.3)
    try:
        farm.start("frozen")
        frozen_job = wait_until(lambda: next((j for j in q.list("running") if j["progress"] >= 0.2),
                                             None), 120, "a job to be mid-way on `frozen`")
        farm.signal("frozen", signal.SIGSTOP)  # alive but silent: its lease runs out
        farm.start("healthy")
        wait_until(lambda: q.get(frozen_job["id"])["state"] == "done", 120,
                   "the frozen runner's job to be re-run and done by `healthy`")
        farm.signal("frozen", signal.SIGCONT)  # wakes mid-step and reports progress late
        wait_until(lambda: "fenced out" in farm.log("frozen"), 60,
                   "the woken runner's late write to be refused")
        wait_until(lambda: q.counts()["done"] == len(ids), 120, "every job to be done")
    finally:
        farm.stop_all()
    jobs = _assert_each_done_once(q, ids, tmp_path / "out")
    job = jobs[frozen_job["id"]]
    assert _sidecar_runner(job) == "healthy" and job["attempts"] == 2
    assert job["lease_generation"] == frozen_job["lease_generation"] + 1
    log = farm.log("frozen")
    assert f"of job {frozen_job['id']} from runner" in log and "refused" in log
    q.close()


def _postmaster_start(url: str):
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT pg_postmaster_start_time()").fetchone()[0]


def test_server_restart_mid_batch_loses_nothing_and_runs_nothing_twice(farm_db, pg_server, tmp_path):
    q = JobQueue(farm_db, root=tmp_path)
    ids = q.submit_many([{"prompt": f"clip {i}", "steps": 4} for i in range(60)])
    sub = q.subscribe(since=0, poll=0.05, timeout=300)
    farm = Farm(farm_db, tmp_path, step_seconds=0.05)
    try:
        for label in ("a", "b", "c"):
            farm.start(label)
        wait_until(lambda: q.counts()["done"] >= 15, 120, "15 jobs done before the restart")
        started = _postmaster_start(farm_db)
        pg_server.restart()  # every connection of runners, subscriber and this queue drops
        assert q.counts()["done"] < len(ids), "the batch ended before the restart; make it longer"
        wait_until(lambda: q.counts()["done"] == len(ids), 180, "every job done after the restart")
        done_seen = set()
        for event in sub:  # the subscriber follows the log across the restart
            if event["kind"] == "done":
                done_seen.add(event["id"])
            if done_seen == set(ids):
                break
        sub.close()
    finally:
        farm.stop_all()
    _assert_each_done_once(q, ids, tmp_path / "out")
    assert done_seen == set(ids)
    assert all(q.get(i)["attempts"] == 1 for i in ids)
    assert _postmaster_start(farm_db) > started  # it was a real restart
    q.close()


def test_heterogeneous_runners_and_a_config_nobody_serves(farm_db, tmp_path, capsys):
    from ovi.cli import main

    (tmp_path / "configs").mkdir()
    q = JobQueue(farm_db, root=tmp_path)
    small = q.submit_many([{"prompt": f"small {i}", "steps": 2} for i in range(4)])
    big = q.submit_many([{"prompt": f"big {i}", "steps": 2, "config": "960x960_10s"} for i in range(4)])
    orphan = q.submit({"prompt": "nobody", "steps": 2, "config": "huge_20s"})
    farm = Farm(farm_db, tmp_path, step_seconds=0.01)
    try:
        farm.start("box24", "--serves", "default")
        farm.start("node8", "--serves", "960x960_10s")
        wait_until(lambda: q.counts()["done"] == 8, 120, "the served jobs to be done")
        assert main(["queue", "list", "--db", farm_db, "--state", "queued"]) == 0
        listed = capsys.readouterr().out
        assert f"{orphan}" in listed and "(waiting: no runner serves huge_20s)" in listed
        assert main(["queue", "runners", "--db", farm_db]) == 0
        roll = capsys.readouterr().out
        assert "box24" in roll and "serves=default" in roll and "serves=960x960_10s" in roll
    finally:
        farm.stop_all()
    assert all(_sidecar_runner(q.get(i)) == "box24" for i in small)
    assert all(_sidecar_runner(q.get(i)) == "node8" for i in big)
    assert q.get(orphan)["state"] == "queued" and q.get(orphan)["attempts"] == 0
    assert q.runners() == []  # a runner stopped cleanly leaves the roll call
    q.close()


def _one_error_line(url: str) -> str:
    done = subprocess.run([sys.executable, "-m", "ovi.cli", "queue", "list", "--db", url], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def test_bad_queue_urls_get_one_clear_line_and_exit_2(pg_server):
    unreachable = f"postgresql://ovi:x@127.0.0.1:{free_port()}/ovi"
    assert "cannot reach the PostgreSQL queue at 127.0.0.1" in _one_error_line(unreachable)

    wrong = pg_server.url("postgres", password="not-the-password")
    line = _one_error_line(wrong)
    assert "wrong or missing password" in line and "not-the-password" not in line

    assert "use postgresql://user:password@host:5432/db" in _one_error_line(
        "postgresql://ovi:x@127.0.0.1:port/ovi")

    missing = pg_server.url("no_such_db")
    assert "database 'no_such_db' does not exist" in _one_error_line(missing)

    other = pg_server.create_database()
    with psycopg.connect(other, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (name TEXT)")
    assert "holds tables of another program (users)" in _one_error_line(other)
    with psycopg.connect(other, autocommit=True) as conn:  # nothing half-written
        tables = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"users"}
