"""JobQueue policy: order, move, pause, cancel, retry, validation, recovery, events, schema."""

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from ovi.errors import InputError
from ovi.queue import STATES, DuplicateJobError, JobQueue, QueuePolicy, RequestError, SQLiteStore
from ovi.queue import store as store_mod


def _order(q):
    return [j["id"] for j in q.list("queued")]


def _claim_all(q, worker="w"):
    ids = []
    while (job := q.claim(worker)) is not None:
        ids.append(job["id"])
        q.finish(job["id"], {}, worker_id=worker)
    return ids


def test_job_dict_has_the_pinned_fields_and_request_verbatim(queue):
    request = {"prompt": "A cat. <S>Hi<E>", "mode": "t2v", "seed": 7, "set": {"sample_steps": 4},
               "loras": ["a.safetensors:0.5"], "height_width": [64, 96]}
    job = queue.get(queue.submit(request, priority=3))
    for key in ("id", "state", "priority", "request", "progress", "attempts", "created_at",
                "started_at", "finished_at", "result", "error"):
        assert key in job
    assert job["request"] == request and job["state"] == "queued" and job["priority"] == 3
    assert job["progress"] == 0.0 and job["attempts"] == 0 and job["result"] is None
    assert queue.get(999) is None


def test_priority_first_then_fifo(queue):
    a = queue.submit({"prompt": "a"})
    b = queue.submit({"prompt": "b"}, priority=5)
    c = queue.submit({"prompt": "c"})
    d = queue.submit({"prompt": "d"}, priority=5)
    e = queue.submit({"prompt": "e"}, priority=-1)
    assert _order(queue) == [b, d, a, c, e]
    assert _claim_all(queue) == [b, d, a, c, e]


def test_move_before_after_and_priority(queue):
    a, b, c, d = (queue.submit({"prompt": p}) for p in "abcd")
    queue.move(d, before=b)
    assert _order(queue) == [a, d, b, c]
    queue.move(a, after=c)
    assert _order(queue) == [d, b, c, a]
    queue.move(c, priority=9)
    assert _order(queue) == [c, d, b, a]
    # Moving next to a job of another priority takes that priority.
    queue.move(a, before=c)
    assert _order(queue) == [a, c, d, b] and queue.get(a)["priority"] == 9
    # A later submit still goes last in its priority.
    e = queue.submit({"prompt": "e"}, priority=9)
    assert _order(queue) == [a, c, e, d, b]
    assert _claim_all(queue) == [a, c, e, d, b]


def test_move_many_times_into_one_gap_keeps_order(queue):
    first, last = queue.submit({"prompt": "first"}), queue.submit({"prompt": "last"})
    moved = [queue.submit({"prompt": f"m{i}"}) for i in range(80)]
    for job_id in moved:  # each lands just before `last`: halves the same gap 80 times
        queue.move(job_id, before=last)
    assert _order(queue) == [first] + moved + [last]


def test_move_errors_name_the_problem(queue):
    a, b = queue.submit({"prompt": "a"}), queue.submit({"prompt": "b"})
    with pytest.raises(InputError, match="exactly one"):
        queue.move(a)
    with pytest.raises(InputError, match="exactly one"):
        queue.move(a, before=b, priority=1)
    with pytest.raises(InputError, match="itself"):
        queue.move(a, before=a)
    with pytest.raises(InputError, match="no job 42"):
        queue.move(a, before=42)
    queue.claim("w")
    with pytest.raises(InputError, match="only queued jobs"):
        queue.move(a, after=b)


def test_pause_and_resume(queue):
    a = queue.submit({"prompt": "a"})
    queue.pause()
    assert queue.paused and queue.claim("w") is None
    assert queue.get(a)["state"] == "queued"
    queue.resume()
    assert not queue.paused and queue.claim("w")["id"] == a
    kinds = [e["kind"] for e in queue.events(0) if e["id"] is None]
    assert kinds == ["paused", "resumed"]


def test_cancel_queued_job(queue):
    a, b = queue.submit({"prompt": "a"}), queue.submit({"prompt": "b"})
    job = queue.cancel(a)
    assert job["state"] == "cancelled" and job["finished_at"] is not None
    assert queue.claim("w")["id"] == b
    with pytest.raises(InputError, match="already cancelled"):
        queue.cancel(a)


def test_cancel_running_job_is_a_request_the_runner_acts_on(queue):
    a = queue.submit({"prompt": "a"})
    queue.claim("w")
    assert queue.set_progress(a, 0.25, worker_id="w") is False
    job = queue.cancel(a)
    assert job["state"] == "running" and job["cancel_requested"]
    assert queue.is_cancel_requested(a)
    assert queue.set_progress(a, 0.5, worker_id="w") is True  # the runner's cue to stop
    assert queue.mark_cancelled(a, worker_id="w")["state"] == "cancelled"


def test_retry_failed_and_cancelled_but_not_done(queue):
    a, b, c = (queue.submit({"prompt": p}) for p in "abc")
    queue.claim("w")
    queue.fail(a, "RuntimeError: boom", worker_id="w")
    assert queue.get(a)["error"] == "RuntimeError: boom"
    queue.cancel(b)
    job = queue.retry(a)
    assert job["state"] == "queued" and job["error"] is None and job["attempts"] == 1
    queue.retry(b)
    assert _order(queue) == [c, a, b]  # retried jobs go to the back of their priority
    job = queue.claim("w")
    queue.finish(job["id"], {"mp4": "x.mp4"}, worker_id="w")
    with pytest.raises(InputError, match="submit its request again"):
        queue.retry(job["id"])
    with pytest.raises(InputError, match="only failed, cancelled or lost"):
        queue.retry(a)


@pytest.mark.parametrize("request_, field", [
    ({"mode": "t2v"}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x", "mode": "v2v"}, "mode"),
    ({"prompt": "x", "mode": "i2v"}, "image"),
    ({"prompt": "x", "sedd": 3}, "sedd"),
    ({"prompt": "x", "steps": 0}, "steps"),
    ({"prompt": "x", "height_width": [720]}, "height_width"),
    ({"prompt": "x", "set": ["sample_steps"]}, "set"),
])
def test_bad_requests_are_refused_at_submit_naming_the_field(queue, request_, field):
    with pytest.raises(RequestError) as info:
        queue.submit(request_)
    assert info.value.field == field and field in str(info.value)
    assert queue.list() == []


def test_unknown_key_suggests_the_nearest(queue):
    with pytest.raises(RequestError, match="did you mean 'seed'"):
        queue.submit({"prompt": "x", "sedd": 3})


def test_submit_many_is_all_or_nothing(queue):
    with pytest.raises(RequestError, match="request #1: mode"):
        queue.submit_many([{"prompt": "a"}, {"prompt": "b", "mode": "nope"}])
    assert queue.list() == []
    ids = queue.submit_many([{"prompt": str(i)} for i in range(5)], priority=2)
    assert _order(queue) == ids


def test_claims_from_threads_are_exclusive(queue_url):
    q = JobQueue(queue_url)
    ids = q.submit_many([{"prompt": str(i)} for i in range(200)])
    claimed: list[int] = []
    lock = threading.Lock()

    def worker(name):
        mine = JobQueue(queue_url)
        while (job := mine.claim(name)) is not None:
            with lock:
                claimed.append(job["id"])
            mine.finish(job["id"], {}, worker_id=name)
        mine.close()

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert sorted(claimed) == ids
    assert q.counts()["done"] == 200


def test_lost_job_is_requeued_with_its_attempts_and_place(queue_url):
    q = JobQueue(queue_url, policy=QueuePolicy(heartbeat_timeout=10, max_attempts=2))
    a, b = q.submit({"prompt": "a"}), q.submit({"prompt": "b"})
    q.claim("deadhost:1:x")
    assert q.recover_lost() == []  # heartbeat fresh
    assert q.recover_lost(now=time.time() + 11) == [a]
    job = q.get(a)
    assert job["state"] == "queued" and job["attempts"] == 1
    assert job["error"].startswith("lease expired on runner deadhost:1:x")
    kinds = [e["kind"] for e in q.events(0, job_id=a)]
    assert kinds[-2:] == ["lost", "requeued"]
    assert _order(q) == [a, b]  # keeps its place in line
    # Second loss reaches max_attempts: the job fails, saying why, for a person to look at.
    assert q.claim("deadhost:1:x")["attempts"] == 2
    assert q.recover_lost(now=time.time() + 11) == [a]
    job = q.get(a)
    assert job["state"] == "failed" and job["finished_at"] is not None
    assert job["error"].startswith("lost 2 times: lease expired on runner deadhost:1:x"), job["error"]
    assert [e["kind"] for e in q.events(0, job_id=a)][-2:] == ["lost", "failed"]
    assert q.claim("w")["id"] == b and q.claim("w") is None  # the failed job is not claimed again
    assert q.retry(a)["state"] == "queued"
    # Its attempts count on (retry keeps them), so the next loss fails it again; the reason counts
    # the losses since the retry.
    assert q.claim("deadhost:1:y")["attempts"] == 3
    q.recover_lost(now=time.time() + 11)
    assert q.get(a)["state"] == "failed" and q.get(a)["error"].startswith("lost 1 times: lease expired")
    q.close()


def test_job_that_keeps_losing_its_runner_ends_failed_not_lost(queue_url):
    q = JobQueue(queue_url, policy=QueuePolicy(heartbeat_timeout=10, max_attempts=3))
    a = q.submit({"prompt": "a"})
    for attempt in (1, 2, 3):
        assert q.claim(f"host{attempt}:1:x")["attempts"] == attempt
        q.recover_lost(now=time.time() + 11)
    job = q.get(a)
    assert job["state"] == "failed", job
    assert "lost 3 times: lease expired on runner host3:1:x" in job["error"]
    assert q.counts()["lost"] == 0 and q.counts()["failed"] == 1
    # Without re-queueing, a lost job stays lost as before.
    q2 = JobQueue(queue_url, policy=QueuePolicy(heartbeat_timeout=10, requeue_lost=False))
    b = q2.submit({"prompt": "b"})
    q2.claim("deadhost:1:z")
    assert q2.recover_lost(now=time.time() + 11) == [b]
    assert q2.get(b)["state"] == "lost"
    q2.close()
    q.close()


def test_lost_job_whose_cancel_was_requested_ends_cancelled(queue):
    a = queue.submit({"prompt": "a"})
    queue.claim("w")
    queue.cancel(a)
    queue.recover_lost(heartbeat_timeout=0, now=time.time() + 1)
    assert queue.get(a)["state"] == "cancelled"


def test_dead_local_runner_process_is_detected_without_waiting_on_sqlite_only(queue):
    import socket
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    a = queue.submit({"prompt": "a"})
    queue.claim(f"{socket.gethostname()}:{proc.pid}:abc")
    # On a farm store runners live on other machines: only the lease says a runner died.
    assert queue.recover_lost() == ([a] if queue.store.local else [])


def test_a_finished_job_cannot_be_finished_by_a_stale_worker(queue):
    a = queue.submit({"prompt": "a"})
    queue.claim("old")
    queue.recover_lost(heartbeat_timeout=0, now=time.time() + 1)
    queue.claim("new")
    assert queue.finish(a, {"mp4": "old.mp4"}, worker_id="old") is None
    assert queue.heartbeat(a, "old") is False
    assert queue.set_progress(a, 0.5, worker_id="old") is True
    assert queue.finish(a, {"mp4": "new.mp4"}, worker_id="new")["result"] == {"mp4": "new.mp4"}


def test_a_fenced_lease_refuses_the_same_runner_s_stale_writes(queue, caplog):
    """The same worker id re-claims its own lost job: only the new generation may write."""
    a = queue.submit({"prompt": "a"})
    first = queue.claim("w")["lease_generation"]
    queue.recover_lost(now=time.time() + queue.policy.heartbeat_timeout + 1)  # lease ran out
    second = queue.claim("w")["lease_generation"]
    assert second == first + 1
    with caplog.at_level("WARNING", logger="ovi.queue"):
        assert queue.set_progress(a, 0.9, worker_id="w", lease=first) is True
        assert queue.heartbeat(a, "w", lease=first) is False
        assert queue.finish(a, {"mp4": "stale.mp4"}, worker_id="w", lease=first) is None
        assert queue.release(a, worker_id="w", lease=first) is None
    assert "fenced out" in caplog.text and f"job {a}" in caplog.text
    job = queue.get(a)
    assert job["state"] == "running" and job["progress"] == 0.0 and job["result"] is None
    assert queue.heartbeat(a, "w", lease=second) is True
    assert queue.finish(a, {"mp4": "new.mp4"}, worker_id="w", lease=second)["result"] == {"mp4": "new.mp4"}


def test_heartbeats_extend_the_lease(queue):
    queue.policy.heartbeat_timeout = 30
    a = queue.submit({"prompt": "a"})
    queue.claim("w")
    assert queue.recover_lost(now=time.time() + 20) == []
    assert queue.recover_lost(now=time.time() + 31) == [a]  # the lease ran out
    queue.claim("w2")
    time.sleep(0.05)
    queue.heartbeat(a, "w2")
    with queue.store.read() as tx:
        expires = tx.job(a)["lease_expires_at"]
    assert expires > time.time() + 29


def test_claims_only_jobs_of_served_configs(queue):
    a = queue.submit({"prompt": "a"})
    b = queue.submit({"prompt": "b", "config": "960x960_10s"})
    assert queue.claim("small", serves=["720x720_5s"]) is None
    assert queue.claim("big", serves=["960x960_10s"])["id"] == b
    assert queue.claim("any")["id"] == a


def test_release_puts_an_interrupted_job_back(queue):
    a = queue.submit({"prompt": "a"})
    queue.claim("w")
    released = queue.release(a, worker_id="w")
    # Interrupted, not failed: the run does not count as an attempt.
    assert released["state"] == "queued" and released["attempts"] == 0
    assert queue.claim("w")["attempts"] == 1


def test_subscribe_sees_events_written_by_another_connection(queue_url):
    q1, q2 = JobQueue(queue_url), JobQueue(queue_url)
    sub = q1.subscribe(poll=0.01, timeout=20)
    a = q2.submit({"prompt": "a"})
    q2.claim("w")
    q2.set_progress(a, 0.5, worker_id="w", info={"step": 1, "total": 2})
    q2.finish(a, {"mp4": "a.mp4"}, worker_id="w")
    seen = []
    for event in sub:
        seen.append(event)
        if event["kind"] == "done":
            break
    sub.close()
    assert [e["kind"] for e in seen] == ["submitted", "running", "progress", "done"]
    assert seen[2]["progress"] == 0.5 and seen[2]["step"] == 1 and seen[2]["id"] == a
    assert seen[3]["result"] == {"mp4": "a.mp4"} and seen[3]["status"] == "done"
    assert [e["seq"] for e in seen] == sorted(e["seq"] for e in seen)
    q1.close()
    q2.close()


def test_subscription_stops_on_close_from_another_thread_and_on_timeout(queue):
    sub = queue.subscribe(poll=0.01, max_poll=0.05)
    timer = threading.Timer(0.2, sub.close)
    timer.start()
    assert _drain_within(sub, 5) == []
    assert _drain_within(queue.subscribe(poll=0.01, timeout=0.2), 5) == []


def _drain_within(subscription, timeout):
    """Iterate a subscription in a thread joined with a timeout: a hang fails, it does not block."""
    out = []
    worker = threading.Thread(target=lambda: out.extend(subscription), daemon=True)
    worker.start()
    worker.join(timeout)
    assert not worker.is_alive(), f"subscription still iterating after {timeout}s (it should have stopped)"
    return out


def test_subscription_until_finished_ends_with_the_job(queue):
    a = queue.submit({"prompt": "a"})
    queue.claim("w")
    queue.finish(a, {}, worker_id="w")
    kinds = [e["kind"] for e in queue.subscribe(job_id=a, since=0, until_finished=True,
                                                timeout=20)]
    assert kinds == ["submitted", "running", "done"]


def test_prune_events_keeps_jobs(queue):
    queue.submit({"prompt": "a"})
    queue.submit({"prompt": "b"})
    assert queue.prune_events(older_than=-10) == 1  # all but the newest event
    assert len(queue.list()) == 2 and queue.last_event_id() == 2


def test_list_filters_and_counts(queue):
    a, b = queue.submit({"prompt": "a"}), queue.submit({"prompt": "b"})
    queue.cancel(a)
    assert [j["id"] for j in queue.list("cancelled")] == [a]
    assert [j["id"] for j in queue.list(["queued", "cancelled"])] == [a, b]
    assert queue.counts() == dict.fromkeys(STATES, 0) | {"queued": 1, "cancelled": 1}
    with pytest.raises(InputError, match="unknown state"):
        queue.list("finished")


def test_import_csv_with_n_times(tmp_path, queue):
    (tmp_path / "cat.png").write_bytes(b"png")
    csv_path = tmp_path / "prompts.csv"
    csv_path.write_text("text_prompt,image_path\n"
                        "\"A cat, singing. <S>La la<E>\",\n"
                        "A dog runs,cat.png\n")
    ids = queue.import_csv(csv_path, n_times=2, priority=1, base={"steps": 3})
    jobs = [queue.get(i) for i in ids]
    assert [j["request"]["prompt"] for j in jobs] == ["A cat, singing. <S>La la<E>"] * 2 + \
        ["A dog runs"] * 2
    # Repeats use seed, seed+1, ... from the config's seed (the embedded tiny config: 103).
    from ovi.config import load_config

    base_seed = load_config().seed
    assert [j["request"]["seed"] for j in jobs] == [base_seed, base_seed + 1] * 2
    assert [j["request"]["mode"] for j in jobs] == ["t2v", "t2v", "i2v", "i2v"]
    assert jobs[2]["request"]["image"] == str((tmp_path / "cat.png").resolve())
    assert all(j["request"]["steps"] == 3 and j["priority"] == 1 for j in jobs)
    # A forced t2v drops images, like upstream; a csv without text_prompt is refused.
    ids = queue.import_csv(csv_path, mode="t2v", seed=5)
    assert [queue.get(i)["request"].get("image") for i in ids] == [None, None]
    assert [queue.get(i)["request"]["seed"] for i in ids] == [5, 5]
    bad = tmp_path / "bad.csv"
    bad.write_text("prompt\nhello\n")
    with pytest.raises(InputError, match="no 'text_prompt' column"):
        queue.import_csv(bad)


def test_schema_is_versioned_and_migrates_sqlite(tmp_path, monkeypatch):
    path = tmp_path / "q.db"
    q = JobQueue(path)
    a = q.submit({"prompt": "kept"})
    assert q.store.schema_version() == store_mod.SCHEMA_VERSION
    q.close()
    # A newer ovi adds a migration: the old file upgrades in place and keeps its jobs.
    extra = ["ALTER TABLE jobs ADD COLUMN tag TEXT"]
    monkeypatch.setattr(store_mod, "MIGRATIONS", store_mod.MIGRATIONS + [extra])
    monkeypatch.setattr(store_mod, "SCHEMA_VERSION", len(store_mod.MIGRATIONS))
    s = SQLiteStore(path)
    assert s.schema_version() == store_mod.SCHEMA_VERSION
    with s.read() as tx:
        assert tx.job(a)["request"] == {"prompt": "kept"} and "tag" in tx.job(a)
    s.close()
    # An older ovi refuses a newer file instead of misreading it.
    monkeypatch.undo()
    with pytest.raises(InputError, match="upgrade ovi"):
        JobQueue(path)


def test_a_v1_database_opens_and_gains_client_ids(tmp_path):
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    for statement in store_mod.MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute("INSERT INTO jobs (state, position, request, created_at, updated_at) "
                 "VALUES ('queued', 1, '{\"prompt\": \"old\"}', 0, 0)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    q = JobQueue(path)
    assert q.store.schema_version() == store_mod.SCHEMA_VERSION >= 2
    assert q.get(1)["request"] == {"prompt": "old"} and q.get(1)["client_id"] is None
    new = q.submit({"prompt": "new"}, client_id="abc-1")
    assert q.find("abc-1")["id"] == new and q.find(1)["request"] == {"prompt": "old"}
    q.close()


def test_client_ids_are_unique_and_found_first(queue):
    a = queue.submit({"prompt": "a"})
    b = queue.submit({"prompt": "b"}, client_id=str(a))  # reads like job a's number
    assert queue.get(b)["client_id"] == str(a)
    assert queue.find(str(a))["id"] == b  # the client's own job wins
    assert queue.find(b)["id"] == b and queue.find("nope") is None
    with pytest.raises(DuplicateJobError, match="already exists"):
        queue.submit({"prompt": "c"}, client_id=str(a))
    with pytest.raises(RequestError, match="not a usable job id"):
        queue.submit({"prompt": "c"}, client_id="a/b")
    assert queue.submit({"prompt": "d"}, client_id=1730000000000) and queue.find("1730000000000")
    assert len(queue.list()) == 3
    events = queue.events(0, job_id=b)
    assert events[0]["client_id"] == str(a)


def test_integrity_check(queue):
    queue.submit({"prompt": "a"})
    queue.claim("w")
    assert queue.integrity_check() == "ok"


def test_sqlite_uses_wal_mode(tmp_path):
    queue = JobQueue(tmp_path / "q.db")
    queue.submit({"prompt": "a"})
    conn = sqlite3.connect(queue.path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    queue.close()


def test_bad_priority_is_refused(queue):
    with pytest.raises(InputError, match="priority must be an integer"):
        queue.submit({"prompt": "a"}, priority="high")
    assert queue.get(queue.submit({"prompt": "a"}, priority="2"))["priority"] == 2


def test_postgres_notify_wakes_a_waiting_subscriber(pg_server):
    """Every committed event sends NOTIFY: a waiter on another connection wakes on it (True), not
    by its timeout (False)."""
    url = pg_server.create_database()
    listening, writer = JobQueue(url), JobQueue(url)
    assert listening.store.listener_ready(30)
    woke = []
    waiter = threading.Thread(target=lambda: woke.append(
        listening.store.wait_for_events(threading.Event(), 60)))
    waiter.start()
    while waiter.is_alive():  # submit until the waiter wakes (it may start waiting after one)
        writer.submit({"prompt": "wake"})
        waiter.join(0.2)
    assert woke == [True]
    listening.close()
    writer.close()


def test_a_finish_repeated_after_a_lost_answer_is_idempotent(queue):
    a = queue.submit({"prompt": "a"})
    lease = queue.claim("w")["lease_generation"]
    first = queue.finish(a, {"mp4": "a.mp4"}, worker_id="w", lease=lease)
    again = queue.finish(a, {"mp4": "a.mp4"}, worker_id="w", lease=lease)  # a retried step
    assert first == again and again["state"] == "done"
    assert [e["kind"] for e in queue.events(0, job_id=a)].count("done") == 1


def test_a_change_after_the_mark_wakes_the_wait_even_from_another_process(queue_url, tmp_path):
    """`event_mark()` before reading the log, `wait_for_events(..., mark)` after: a commit by
    another process in between is not slept through (SQLite: its data_version; PostgreSQL: its
    NOTIFY); with nothing committed the wait ends by its timeout (False)."""
    q = JobQueue(queue_url, root=tmp_path)
    if not q.store.local:
        assert q.store.listener_ready(30)
    mark = q.store.event_mark()
    subprocess.run([sys.executable, "-c", "import sys; from ovi.queue import JobQueue; "
                    "JobQueue(sys.argv[1]).submit({'prompt': 'elsewhere'})", queue_url],
                   check=True, timeout=120, env={**os.environ})
    assert q.store.wait_for_events(threading.Event(), 60, mark)  # 60 s: a liveness bound only
    assert not q.store.wait_for_events(threading.Event(), 0.3, q.store.event_mark())
    q.close()


def test_results_are_stored_relative_to_the_root_and_read_back_under_this_machines_root(
        queue_url, tmp_path):
    q = JobQueue(queue_url, root=tmp_path)
    a = q.submit({"prompt": "a"})
    q.claim("w")
    mp4 = tmp_path / "out" / "a.mp4"
    elsewhere = tmp_path.parent / "elsewhere.wav"  # not under the root: stays absolute
    q.finish(a, {"mp4": str(mp4), "wav": str(elsewhere), "runner": "node8"}, worker_id="w")
    with q.store.read() as tx:
        stored = tx.job(a)["result"]
    assert stored == {"mp4": "out/a.mp4", "wav": str(elsewhere), "runner": "node8",
                      "root_relative": ["mp4"]}
    shown = {"mp4": str(mp4), "wav": str(elsewhere), "runner": "node8"}
    assert q.get(a)["result"] == shown and q.list("done")[0]["result"] == shown
    assert q.events(0, job_id=a)[-1]["result"] == shown
    # An old row's absolute path (written before paths were relative) reads as it was stored.
    b = q.submit({"prompt": "b"})
    with q.store.write() as tx:
        tx.update(b, state="done", result={"mp4": str(tmp_path / "old.mp4")})
    assert q.get(b)["result"] == {"mp4": str(tmp_path / "old.mp4")}
    q.close()
    # Another machine mounts the same root at another path: it finds the clip under its mount.
    mount = tmp_path / "mnt"
    if queue_url.startswith("postgresql"):
        other = JobQueue(queue_url, root=mount)
    else:  # a SQLite queue's root is its file's folder: the same file, mounted elsewhere
        mount.mkdir()
        shutil.copy(queue_url, mount / "queue.db")
        other = JobQueue(mount / "queue.db")
    assert other.get(a)["result"]["mp4"] == str(mount / "out" / "a.mp4")
    other.close()


def test_a_requests_paths_under_the_root_are_stored_relative_too(queue_url, tmp_path):
    """A queued extension names the clip it continues: a runner on a machine that mounts the root
    elsewhere must find that clip under its own mount, as it finds results."""
    q = JobQueue(queue_url, root=tmp_path)
    clip = tmp_path / "studio" / "old.mp4"
    a = q.submit({"prompt": "a", "extend": str(clip)})
    with q.store.read() as tx:
        stored = tx.job(a)["request"]
    assert stored["extend"] == "studio/old.mp4" and stored["root_relative"] == ["extend"]
    assert q.get(a)["request"] == {"prompt": "a", "extend": str(clip)}
    assert q.claim("w")["request"]["extend"] == str(clip)
    q.close()
    mount = tmp_path / "mnt"
    if queue_url.startswith("postgresql"):
        other = JobQueue(queue_url, root=mount)
    else:
        mount.mkdir()
        shutil.copy(queue_url, mount / "queue.db")
        other = JobQueue(mount / "queue.db")
    assert other.get(a)["request"]["extend"] == str(mount / "studio" / "old.mp4")
    other.close()


def test_sqlite_close_leaves_a_live_threads_connection_to_that_thread(tmp_path):
    """Closing a connection that another thread is using crashes the process (a server's change-watch
    thread was in PRAGMA data_version when the queue closed): close() closes its own thread's and ended
    threads' connections, and a live thread's next call is refused instead."""
    store = SQLiteStore(tmp_path / "q.db")
    opened, release, after = threading.Event(), threading.Event(), {}

    def live_thread():
        conn = store._conn()
        opened.set()
        release.wait()  # set once the store is closed (or the test failed before that)
        after["still_open"] = conn.execute("SELECT 1").fetchone()[0] == 1  # a closed one raises
        try:
            store.event_mark()
        except RuntimeError as exc:
            after["refused"] = str(exc)

    ended = threading.Thread(target=store.event_mark)
    ended.start()
    ended.join()
    ended_conn = [c for owner, c in store._conns if owner is ended][0]
    live = threading.Thread(target=live_thread)
    live.start()
    try:
        opened.wait()
        own = store._conn()
        store.close()
    finally:
        release.set()
    live.join()
    assert after["still_open"] and "was closed" in after["refused"]
    for conn in (own, ended_conn):
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
