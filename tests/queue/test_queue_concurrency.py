"""Several producer and consumer processes on one queue file: nothing lost, nothing twice."""

import collections

from ovi.queue import JobQueue
from tests.launcher import join_all, spawn

PRODUCER = """
import sys
from ovi.queue import JobQueue
db, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
q = JobQueue(db)
for i in range(n):
    q.submit({"prompt": f"{name}-{i}", "seed": i}, priority=i % 3)
"""

# Claims and finishes until the producers are done and nothing is queued; prints its job ids.
CONSUMER = """
import os, sys, time
from ovi.queue import JobQueue
db, name, flag = sys.argv[1], sys.argv[2], sys.argv[3]
q = JobQueue(db)
mine = []
while True:
    job = q.claim(name)
    if job is None:
        if os.path.exists(flag) and q.counts()["queued"] == 0:
            break
        time.sleep(0.005)
        continue
    mine.append(job["id"])
    q.finish(job["id"], {"by": name}, worker_id=name)
print(" ".join(map(str, mine)))
"""


def test_4_producers_x_500_with_2_consumers(queue_url, tmp_path):
    db = queue_url
    flag = tmp_path / "producers-done"
    JobQueue(db).close()  # create the schema once; children race only on jobs
    producers = {f"producer{p}": spawn(PRODUCER, db, f"p{p}", "500") for p in range(4)}
    consumers = {f"consumer{c}": spawn(CONSUMER, db, f"c{c}", str(flag)) for c in range(2)}
    join_all(producers, timeout=90)
    flag.write_text("done")
    outputs = join_all(consumers, timeout=60)

    q = JobQueue(db)
    jobs = q.list()
    prompts = collections.Counter(j["request"]["prompt"] for j in jobs)
    assert len(jobs) == 2000
    assert set(prompts) == {f"p{p}-{i}" for p in range(4) for i in range(500)}
    assert max(prompts.values()) == 1  # every submit present exactly once
    claimed = [int(x) for out in outputs.values() for x in out.split()]
    assert sorted(claimed) == sorted(j["id"] for j in jobs)  # each claimed exactly once
    assert all(j["state"] == "done" and j["attempts"] == 1 for j in jobs)
    # Claims happened in queue order: each producer's jobs of one priority are handed out in submit
    # (seed) order. Every consumer's own claims (printed in the order it made them) keep that order.
    # Globally so does the event log's sequence of `running` events on SQLite, whose writes are
    # serial; on PostgreSQL two claims in flight at once (SKIP LOCKED) may commit their events in
    # either order, so there the log's sequence is no claim order.
    by_id = {j["id"]: j for j in jobs}
    claim_order = [e["id"] for e in q.events(0, limit=100_000) if e["kind"] == "running"]
    assert sorted(claim_order) == sorted(by_id)
    orders = [[int(x) for x in out.split()] for out in outputs.values()]
    if q.store.local:
        orders.append(claim_order)
    for order in orders:
        for p in range(4):
            for prio in range(3):
                seeds = [by_id[i]["request"]["seed"] for i in order
                         if by_id[i]["request"]["prompt"].startswith(f"p{p}-")
                         and by_id[i]["priority"] == prio]
                assert seeds == sorted(seeds)
    assert q.integrity_check() == "ok"
    q.close()
