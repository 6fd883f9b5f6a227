"""kill -9 of a runner process mid-job: the job comes back as lost, is re-run once, and the
database stays sound."""

import json
import os
import signal

from ovi.queue import JobQueue
from tests.launcher import join_all, spawn_ovi_queue, wait_until


def test_kill_9_runner_mid_job_then_restart(tmp_path):
    db = str(tmp_path / "queue.db")
    loads = tmp_path / "loads.jsonl"
    env = {"OVI_FAKE_STEP_SECONDS": "0.03", "OVI_FAKE_LOAD_LOG": str(loads)}
    q = JobQueue(db)
    ids = q.submit_many([{"prompt": f"clip {i}", "steps": 10} for i in range(5)])
    victim = ids[1]
    # A long heartbeat timeout: recovery must come from seeing the runner's process is gone.
    args = ["run", "--db", db, "--engine-factory", "tests.queue.fakes:factory",
            "--heartbeat-timeout", "600"]

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
