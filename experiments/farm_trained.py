"""The farm on the trained default model: a throwaway PostgreSQL, N jobs, R runner processes (each its
own process group, `ovi queue run` with the default engine), kill -9 of K runners mid-job; checks
every job done exactly once (one `done` event, one clip, each sidecar naming its runner) and appends a
JSON line to experiments/results/farm.jsonl.

    .venv/bin/python experiments/farm_trained.py --jobs 24 --runners 4 --kill 2 --steps 2

The tests (tests/queue/test_farm.py) show the same with a fake engine in CI time; this runs the real
trained tiny model, which on a 2-CPU machine costs minutes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "farm.jsonl"
COLOURS, SHAPES, MOTIONS = ("red", "green", "blue", "yellow"), ("circle", "square", "triangle"), (
    "left", "right", "up", "down")


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out after {timeout}s waiting for {what}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=24)
    parser.add_argument("--runners", type=int, default=4)
    parser.add_argument("--kill", type=int, default=2, help="runners to kill -9 mid-job")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--lease", type=float, default=10.0, help="--heartbeat-timeout of the runners")
    args = parser.parse_args()

    from ovi.queue import JobQueue
    from ovi.queue.pgtemp import TempPostgres

    with TempPostgres() as server:
        url = server.create_database()
        out = server.root / "out"
        q = JobQueue(url, root=server.root)
        prompts = [f"A {COLOURS[i % 4]} {SHAPES[i % 3]} moves {MOTIONS[(i // 3) % 4]}. "
                   f"<AUDCAP>a middle tone<ENDAUDCAP>" for i in range(args.jobs)]
        ids = q.submit_many([{"prompt": p, "seed": i, "steps": args.steps} for i, p in enumerate(prompts)])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        procs, logs = {}, {}
        t0 = time.monotonic()
        for r in range(args.runners):
            label = f"r{r}"
            logs[label] = server.root / f"{label}.log"
            with open(logs[label], "w") as log:
                procs[label] = subprocess.Popen(
                    [sys.executable, "-m", "ovi.cli", "queue", "run", "--db", url, "--label", label,
                     "--out", str(out), "--heartbeat-timeout", str(args.lease)],
                    cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        killed, kill_time = {}, None
        if args.kill:
            def mid_job():
                by_worker = {j["worker"]: j for j in q.list("running") if j["progress"] > 0}
                found = {r["label"]: by_worker[r["id"]] for r in q.runners() if r["id"] in by_worker}
                return found if len(found) >= args.kill else None

            found = _wait(mid_job, 900, f"{args.kill} runners mid-job")
            kill_time = time.time()
            for label, job in list(found.items())[:args.kill]:
                os.killpg(procs[label].pid, signal.SIGKILL)
                killed[label] = job["id"]
        _wait(lambda: q.counts()["done"] == len(ids), 3600, "every job to be done")
        wall = time.monotonic() - t0
        for label, proc in procs.items():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(120)

        jobs = {i: q.get(i) for i in ids}
        done_events = collections.Counter(e["id"] for e in q.events(0, limit=10**6) if e["kind"] == "done")
        makers = collections.Counter(json.loads(Path(j["result"]["json"]).read_text())["runner"]
                                     for j in jobs.values())
        recovered_within = [jobs[i]["finished_at"] - kill_time for i in killed.values()]
        record = {
            "bench": "farm", "model": "trained default (tiny)", "store": "postgres-temp",
            "jobs": len(ids), "runners": args.runners, "killed": sorted(killed), "steps": args.steps,
            "lease_seconds": args.lease, "wall_seconds": round(wall, 1),
            "done": sum(j["state"] == "done" for j in jobs.values()),
            "lost": sum(j["state"] != "done" for j in jobs.values()),
            "duplicate_done_events": sum(n - 1 for n in done_events.values()),
            "clips": len(list(out.glob("*.mp4"))),
            "killed_jobs_attempts": [jobs[i]["attempts"] for i in killed.values()],
            "killed_jobs_done_seconds_after_kill": [round(s, 1) for s in recovered_within],
            "jobs_per_runner": dict(sorted(makers.items())),
            "cpus": os.cpu_count(), "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        q.close()
    print(json.dumps(record, sort_keys=True))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
    ok = (record["lost"] == 0 and record["duplicate_done_events"] == 0 and record["clips"] == len(ids)
          and all(s < args.lease + 10 for s in recovered_within))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
