"""kill -9 of a runner process mid-job: the job comes back as lost, is re-run once, and the
database stays sound. SQLite: the dead runner's PID tells at once; PostgreSQL (runners on other
machines): only its lease running out does."""

import json
import os
import signal
import time

from ovi.queue import JobQueue
from tests.launcher import join_all, spawn_ovi_queue, wait_until


def test_kill_9_runner_mid_job_then_restart(queue_url, tmp_path):
    db = queue_url
    loads = tmp_path / "loads.jsonl"
    env = {"OVI_FAKE_STEP_SECONDS": "0.03", "OVI_FAKE_LOAD_LOG": str(loads), "OVI_QUEUE_ROOT": str(tmp_path)}
    q = JobQueue(db, root=tmp_path)
    ids = q.submit_many([{"prompt": f"clip {i}", "steps": 10} for i in range(5)])
    victim = ids[1]
    # SQLite: a long heartbeat timeout, so recovery must come from seeing the process is gone.
    lease = 600 if q.store.local else 2
    args = ["run", "--db", db, "--engine-factory", "tests.queue.fakes:factory",
            "--heartbeat-timeout", str(lease)]

    runner = spawn_ovi_queue(*args, **env)
    try:
        wait_until(lambda: q.get(victim)["state"] == "running" and q.get(victim)["progress"] > 0.2,
                   60, f"job {victim} to be mid-way in the first runner")
    finally:
        os.kill(runner.pid, signal.SIGKILL)
        runner.wait(timeout=30)
    assert runner.returncode == -signal.SIGKILL
    assert q.get(ids[0])["state"] == "done"
    assert q.get(victim)["state"] == "running"  # left behind by the dead runner
    assert q.integrity_check() == "ok"
    if not q.store.local:  # the restarted runner recovers the job once its lease has run out
        with q.store.read() as tx:
            expires = tx.job(victim)["lease_expires_at"]
        wait_until(lambda: time.time() > expires + 0.1, lease + 5, "the dead runner's lease to run out")

    join_all({"restarted runner": spawn_ovi_queue(*args, "--until-empty", **env)}, timeout=90)

    jobs = {i: q.get(i) for i in ids}
    assert all(j["state"] == "done" for j in jobs.values())
    assert jobs[victim]["attempts"] == 2
    assert all(jobs[i]["attempts"] == 1 for i in ids if i != victim)
    kinds = [e["kind"] for e in q.events(0, job_id=victim)]
    first_done = kinds.index("done")
    assert kinds[:2] == ["submitted", "running"]
    assert kinds[kinds.index("lost") + 1] == "requeued"
    assert kinds.index("lost") < kinds.index("requeued") < first_done
    assert kinds.count("running") == 2
    # Nothing lost, nothing twice: one `done` per job, one set of files per job.
    done_events = [e["id"] for e in q.events(0, limit=100_000) if e["kind"] == "done"]
    assert sorted(done_events) == sorted(ids)
    for job in jobs.values():
        assert all(os.path.isfile(p) for p in job["result"].values())
    assert len(list(tmp_path.glob("*.mp4"))) == len(ids)
    assert len(loads.read_text().splitlines()) == 2  # one engine per runner process
    assert json.loads(loads.read_text().splitlines()[0]) == {"config": None, "engine": {}}
    assert q.integrity_check() == "ok"
    q.close()
