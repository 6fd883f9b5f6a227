"""JobQueue: the scheduling policy over a durable store.

Order: highest `priority` first, then first-in first-out (a `position` handed out at submit;
`move` rewrites it). States and the only ways between them:

    queued ──claim──► running ──finish──► done
      ▲  │               ├──fail──────► failed ──retry──► queued
      │  └──cancel──►    ├──cancel (runner stops between steps) ──► cancelled ──retry──► queued
      │   cancelled      ├──release (runner interrupted) ──► queued
      └──requeue◄── lost ◄── heartbeat expired / runner process dead (recover_lost)

Producers (CLI, papermill, widgets, REST) and consumers (runners) may be threads or processes
on the same file; each step below is one write transaction, so they never see half a change.
Every change appends an event; `subscribe()` follows the event log from any process.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ovi.errors import InputError
from ovi.inputs import CLIENT_ID_PATTERN, check_int, job_number
from ovi.queue.requests import requests_from_csv, validate_request
from ovi.queue.store import SQLiteStore
from ovi.request import GenerateRequest, RequestError

STATES = ("queued", "running", "done", "failed", "cancelled", "lost")
FINISHED = ("done", "failed", "cancelled")  # nothing more happens without a user's retry
DEFAULT_DB = "outputs/queue.db"


class DuplicateJobError(InputError):
    """A client id that another job already has (REST answers 409)."""


def check_client_id(client_id) -> str:
    """A client id as stored: a string (an integer id, as a JS client's Date.now(), is taken as its
    text) of URL-safe characters."""
    if isinstance(client_id, int) and not isinstance(client_id, bool):
        client_id = str(client_id)
    if not (isinstance(client_id, str) and CLIENT_ID_PATTERN.fullmatch(client_id)):
        raise RequestError("id", f"{client_id!r} is not a usable job id; use 1-128 letters, digits "
                                 f"or ._~:@- (e.g. a UUID)")
    return client_id


@dataclass
class QueuePolicy:
    """When is a running job lost, and what then.

    heartbeat_timeout: seconds without a heartbeat after which a running job's runner is taken
        for dead (runners beat every few seconds, also while loading weights).
    max_attempts: a lost job is re-queued while it has been tried fewer times than this; after
        that it stays `lost` for a person to look at (`retry` re-queues it).
    requeue_lost: False leaves every lost job `lost`.
    """

    heartbeat_timeout: float = 60.0
    max_attempts: int = 3
    requeue_lost: bool = True


class JobCancelled(Exception):
    """Raised inside a running generation (from its progress callback) to stop it between steps."""

    def __init__(self, job_id: int, reason: str = "cancel requested"):
        super().__init__(f"job {job_id}: {reason}")
        self.job_id = job_id
        self.reason = reason


def make_worker_id() -> str:
    """host:pid:nonce — the host and pid let a restarted runner on the same machine see at once
    that a job's runner process is gone, without waiting for its heartbeat to expire."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _worker_process_gone(worker: str | None) -> bool:
    if not worker:
        return False
    parts = worker.rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname():
        return False
    try:
        pid = int(parts[1])
    except ValueError:
        return False
    if pid == os.getpid():
        return False  # ours: a thread in this process; only the heartbeat can tell
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, someone else's
    return False


def _event(job: dict, **extra) -> dict:
    data = {"status": job["state"], "progress": job["progress"], "error": job["error"],
            "result": job["result"], "client_id": job.get("client_id")}
    data.update(extra)
    return data


def _public(job: dict | None) -> dict | None:
    if job is not None:
        job.pop("position", None)  # internal ordering key; `list(state="queued")` shows the order
    return job


class Subscription:
    """An iterator over queue events, fed by polling the event log (so it sees writes from any
    process). Poll interval starts at `poll` and backs off to `max_poll` while idle. Stop it with
    `close()` from any thread, or give `timeout` (seconds of total life) / `until_finished`."""

    def __init__(self, queue: "JobQueue", *, job_id: int | None, since: int | None,
                 poll: float, max_poll: float, timeout: float | None, until_finished: bool):
        self._queue = queue
        self._job_id = job_id
        self._cursor = queue.last_event_id() if since is None else int(since)
        self._poll, self._max_poll = float(poll), float(max(max_poll, poll))
        self._deadline = None if timeout is None else time.monotonic() + float(timeout)
        self._until_finished = until_finished and job_id is not None
        self._stop = threading.Event()
        self._buffer: list[dict] = []

    @property
    def cursor(self) -> int:
        """The seq of the last event handed out; pass as `since=` to resume."""
        return self._cursor

    def close(self) -> None:
        self._stop.set()

    def __iter__(self) -> "Subscription":
        return self

    def __next__(self) -> dict:
        wait = self._poll
        while not self._buffer:
            if self._stop.is_set():
                raise StopIteration
            self._buffer = self._queue.events(since=self._cursor, job_id=self._job_id)
            if self._buffer:
                break
            # Idle: stop once the job has settled, after one more read for the events written
            # between the read above and the check.
            if self._until_finished and self._job_settled():
                self._buffer = self._queue.events(since=self._cursor, job_id=self._job_id)
                if self._buffer:
                    break
                raise StopIteration
            if self._deadline is not None:
                left = self._deadline - time.monotonic()
                if left <= 0:
                    raise StopIteration
                wait = min(wait, left)
            self._stop.wait(wait)
            wait = min(wait * 2, self._max_poll)
        event = self._buffer.pop(0)
        self._cursor = event["seq"]
        return event

    def _job_settled(self) -> bool:
        job = self._queue.get(self._job_id)
        return job is None or job["state"] in FINISHED + ("lost",)

    def __enter__(self) -> "Subscription":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class JobQueue:
    """The durable job queue (one SQLite file, default `outputs/queue.db`). See module doc."""

    def __init__(self, path: str | os.PathLike = DEFAULT_DB, *, policy: QueuePolicy | None = None,
                 synchronous: str = "NORMAL", store: SQLiteStore | None = None):
        self.store = store or SQLiteStore(path, synchronous=synchronous)
        self.path = self.store.path
        self.policy = policy or QueuePolicy()

    def __repr__(self) -> str:
        return f"JobQueue({str(self.path)!r})"

    def __enter__(self) -> "JobQueue":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.store.close()

    # -- producers ----------------------------------------------------------------------------
    def submit(self, request: dict | GenerateRequest, priority: int = 0, *,
               client_id: str | None = None) -> int:
        """Queue one generation request (a GenerateRequest, stored as its `to_dict()`, or such a dict,
        kept verbatim); returns its job id. `client_id`: an id the client chose, unique in this
        queue (DuplicateJobError otherwise); `find(client_id)` finds the job by it."""
        return self.submit_many([request], priority=priority,
                                client_ids=None if client_id is None else [client_id])[0]

    def submit_many(self, requests: Iterable[dict | GenerateRequest], priority: int = 0, *,
                    client_ids: list[str] | None = None) -> list[int]:
        """Queue several requests in one transaction: all are queued, or (on a bad one) none."""
        requests = list(requests)
        priority = self._check_priority(priority)
        if client_ids is None:
            client_ids = [None] * len(requests)
        elif len(client_ids) != len(requests):
            raise InputError(f"{len(client_ids)} client ids for {len(requests)} requests")
        client_ids = [None if c is None else check_client_id(c) for c in client_ids]
        for i, request in enumerate(requests):
            try:
                parsed = validate_request(request)
            except RequestError as exc:
                if len(requests) == 1:
                    raise
                raise RequestError(exc.field, exc.reason, where=f"request #{i}") from None
            if isinstance(request, GenerateRequest):
                requests[i] = parsed.to_dict()
        if not requests:
            return []
        now = time.time()
        with self.store.write() as tx:
            start = tx.max_position() + 1
            rows = [dict(state="queued", priority=priority, position=start + i, request=r,
                         created_at=now, updated_at=now, client_id=c)
                    for i, (r, c) in enumerate(zip(requests, client_ids))]
            try:
                ids = tx.insert_jobs(rows)
            except sqlite3.IntegrityError:
                taken = [c for c in client_ids if c is not None and tx.job_by_client_id(c)]
                raise DuplicateJobError(f"a job with id {taken[0] if taken else client_ids!r} already "
                                        f"exists; choose another id") from None
            tx.add_events([(job_id, "submitted", now,
                            {"status": "queued", "progress": 0.0, "error": None, "result": None,
                             "priority": priority, "client_id": c})
                           for job_id, c in zip(ids, client_ids)])
        return ids

    def import_csv(self, path: str | os.PathLike, *, n_times: int = 1, priority: int = 0,
                   mode: str | None = None, seed: int | None = None,
                   base: dict | None = None) -> list[int]:
        """Queue every row of upstream Ovi's prompt csv, `n_times` each (like its
        `each_example_n_times`); `base` holds settings shared by all rows."""
        return self.submit_many(
            requests_from_csv(path, n_times=n_times, mode=mode, seed=seed, base=base),
            priority=priority)

    # -- reading ------------------------------------------------------------------------------
    def get(self, job_id: int) -> dict | None:
        with self.store.read() as tx:
            return _public(tx.job(int(job_id)))

    def find(self, ref: int | str) -> dict | None:
        """The job a client refers to: by the id it chose at submit, else by the queue's integer id
        (a client id wins where the two read alike, so a client always gets its own job)."""
        with self.store.read() as tx:
            job = tx.job_by_client_id(str(ref))
            number = job_number(ref) if isinstance(ref, (int, str)) else None  # ASCII digits in int64
            if job is None and number is not None:
                job = tx.job(number)
            return _public(job)

    def list(self, state: str | Iterable[str] | None = None, *, limit: int | None = None,
             offset: int = 0) -> list[dict]:
        """Jobs by id; with state='queued', in the order they will run."""
        states = None
        if state is not None:
            states = [state] if isinstance(state, str) else list(state)
            for s in states:
                self._check_state(s)
        queue_order = states == ["queued"]
        with self.store.read() as tx:
            return [_public(j) for j in tx.jobs(states, queue_order=queue_order, limit=limit,
                                                offset=offset)]

    def counts(self) -> dict[str, int]:
        with self.store.read() as tx:
            found = tx.counts()
        return {s: found.get(s, 0) for s in STATES}

    @property
    def paused(self) -> bool:
        with self.store.read() as tx:
            return bool(tx.get_meta("paused", False))

    # -- user actions -------------------------------------------------------------------------
    def cancel(self, job_id: int) -> dict:
        """Queued/lost: cancelled now. Running: flagged; its runner stops between two steps,
        removes the partial files and marks it cancelled (a dead runner's flagged job is
        cancelled by `recover_lost`)."""
        now = time.time()
        with self.store.write() as tx:
            job = self._must(tx, job_id)
            if job["state"] in ("queued", "lost"):
                tx.update(job["id"], state="cancelled", finished_at=now, updated_at=now)
                kind = "cancelled"
            elif job["state"] == "running":
                if job["cancel_requested"]:
                    return _public(job)
                tx.update(job["id"], cancel_requested=True, updated_at=now)
                kind = "cancel_requested"
            else:
                raise InputError(f"job {job_id} is already {job['state']}; nothing to cancel")
            job = tx.job(job["id"])
            tx.add_events([(job["id"], kind, now, _event(job))])
        return _public(job)

    def retry(self, job_id: int) -> dict:
        """Re-queue a failed, cancelled or lost job at the back of its priority."""
        now = time.time()
        with self.store.write() as tx:
            job = self._must(tx, job_id)
            if job["state"] not in ("failed", "cancelled", "lost"):
                hint = ("; submit its request again to make another clip" if job["state"] == "done"
                        else "")
                raise InputError(f"job {job_id} is {job['state']}; only failed, cancelled or "
                                 f"lost jobs can be retried{hint}")
            tx.update(job["id"], state="queued", position=tx.max_position() + 1, progress=0.0,
                      started_at=None, finished_at=None, worker=None, heartbeat_at=None,
                      cancel_requested=False, result=None, error=None, updated_at=now)
            job = tx.job(job["id"])
            tx.add_events([(job["id"], "retried", now, _event(job))])
        return _public(job)

    def pause(self) -> None:
        """No job is claimed until `resume()`; running jobs finish normally."""
        self._set_paused(True)

    def resume(self) -> None:
        self._set_paused(False)

    def move(self, job_id: int, *, before: int | None = None, after: int | None = None,
             priority: int | None = None) -> dict:
        """Reorder a queued job: just before/after another queued job (taking that job's
        priority), or to another priority (keeping its place by submit order there)."""
        given = [x is not None for x in (before, after, priority)]
        if sum(given) != 1:
            raise InputError("move needs exactly one of before=ID, after=ID or priority=N")
        now = time.time()
        with self.store.write() as tx:
            job = self._must(tx, job_id)
            if job["state"] != "queued":
                raise InputError(f"job {job_id} is {job['state']}; only queued jobs can be moved")
            if priority is not None:
                tx.update(job["id"], priority=self._check_priority(priority), updated_at=now)
            else:
                target_id = before if before is not None else after
                target = self._must(tx, target_id)
                if target["id"] == job["id"]:
                    raise InputError(f"cannot move job {job_id} relative to itself")
                if target["state"] != "queued":
                    raise InputError(f"job {target_id} is {target['state']}; move relative to a "
                                     f"queued job")
                position = self._slot(tx, job["id"], target, below=before is not None)
                tx.update(job["id"], priority=target["priority"], position=position,
                          updated_at=now)
            job = tx.job(job["id"])
            tx.add_events([(job["id"], "moved", now, _event(job, priority=job["priority"]))])
        return _public(job)

    # -- consumers (runners) ------------------------------------------------------------------
    def claim(self, worker_id: str) -> dict | None:
        """Atomically take the next queued job (None when empty or paused); attempts += 1."""
        now = time.time()
        with self.store.write() as tx:
            if tx.get_meta("paused", False):
                return None
            job = tx.next_queued()
            if job is None:
                return None
            tx.update(job["id"], state="running", attempts=job["attempts"] + 1, progress=0.0,
                      started_at=now, finished_at=None, worker=worker_id, heartbeat_at=now,
                      updated_at=now, error=None)
            job = tx.job(job["id"])
            tx.add_events([(job["id"], "running", now,
                            _event(job, attempt=job["attempts"], worker=worker_id))])
        return _public(job)

    def heartbeat(self, job_id: int, worker_id: str) -> bool:
        """Say the runner is alive; False when the job is no longer this worker's (it was
        declared lost and maybe re-claimed): the runner should then drop it."""
        now = time.time()
        with self.store.write() as tx:
            job = tx.job(int(job_id))
            if not self._owned(job, worker_id):
                return False
            tx.update(job["id"], heartbeat_at=now)
        return True

    def set_progress(self, job_id: int, progress: float, *, worker_id: str | None = None,
                     info: dict | None = None) -> bool:
        """Record progress (0..1) and beat; returns True when the runner should stop the job
        now (a cancel was requested, or the job is no longer this worker's)."""
        now = time.time()
        progress = min(max(float(progress), 0.0), 1.0)
        with self.store.write() as tx:
            job = tx.job(int(job_id))
            if job is None or job["state"] != "running" or (
                    worker_id is not None and job["worker"] != worker_id):
                return True
            tx.update(job["id"], progress=progress, heartbeat_at=now, updated_at=now)
            job["progress"] = progress
            tx.add_events([(job["id"], "progress", now, _event(job, **(info or {})))])
            return bool(job["cancel_requested"])

    def is_cancel_requested(self, job_id: int) -> bool:
        with self.store.read() as tx:
            job = tx.job(int(job_id))
        return bool(job and (job["cancel_requested"] or job["state"] == "cancelled"))

    def finish(self, job_id: int, result: dict, *, worker_id: str | None = None) -> dict | None:
        """Mark done with its output paths; None (and no change) if no longer this worker's."""
        return self._end(job_id, worker_id, "done", result=dict(result), error=None, progress=1.0)

    def fail(self, job_id: int, error: str, *, worker_id: str | None = None) -> dict | None:
        return self._end(job_id, worker_id, "failed", error=str(error))

    def mark_cancelled(self, job_id: int, *, worker_id: str | None = None) -> dict | None:
        """The runner has stopped a running job whose cancel was requested."""
        return self._end(job_id, worker_id, "cancelled", error=None)

    def release(self, job_id: int, *, worker_id: str | None = None,
                reason: str = "runner stopped") -> dict | None:
        """Give a running job back to the queue untouched (runner interrupted, e.g. Ctrl-C or
        SIGTERM), keeping its place; the interrupted run is not counted as an attempt."""
        now = time.time()
        with self.store.write() as tx:
            job = tx.job(int(job_id))
            if worker_id is not None and not self._owned(job, worker_id):
                return None
            if job is None or job["state"] != "running":
                return _public(job)
            if job["cancel_requested"]:
                tx.update(job["id"], state="cancelled", finished_at=now, updated_at=now)
                kind = "cancelled"
            else:
                tx.update(job["id"], state="queued", progress=0.0, started_at=None, worker=None,
                          heartbeat_at=None, updated_at=now, error=f"released: {reason}",
                          attempts=max(job["attempts"] - 1, 0))
                kind = "requeued"
            job = tx.job(job["id"])
            tx.add_events([(job["id"], kind, now, _event(job))])
        return _public(job)

    def recover_lost(self, *, heartbeat_timeout: float | None = None,
                     now: float | None = None) -> list[int]:
        """Find running jobs whose runner is dead (no heartbeat within the timeout, or its
        process is gone from this host): mark them `lost`, then per policy re-queue them in
        their old place (a cancel-flagged one becomes `cancelled`). Returns their ids."""
        timeout = self.policy.heartbeat_timeout if heartbeat_timeout is None else heartbeat_timeout
        now = time.time() if now is None else now
        lost = []
        with self.store.write() as tx:
            for job in tx.jobs(["running"]):
                stale = (job["heartbeat_at"] or 0.0) < now - timeout
                if not (stale or _worker_process_gone(job["worker"])):
                    continue
                lost.append(job["id"])
                if job["cancel_requested"]:
                    tx.update(job["id"], state="cancelled", finished_at=now, updated_at=now)
                    job = tx.job(job["id"])
                    tx.add_events([(job["id"], "cancelled", now, _event(job))])
                    continue
                why = (f"runner {job['worker']} stopped during attempt {job['attempts']} "
                       f"(last heartbeat {now - (job['heartbeat_at'] or now):.1f}s ago)")
                tx.update(job["id"], state="lost", error=why, updated_at=now)
                job = tx.job(job["id"])
                events = [(job["id"], "lost", now, _event(job))]
                if self.policy.requeue_lost and job["attempts"] < self.policy.max_attempts:
                    tx.update(job["id"], state="queued", progress=0.0, started_at=None,
                              worker=None, heartbeat_at=None, updated_at=now)
                    job = tx.job(job["id"])
                    events.append((job["id"], "requeued", now, _event(job)))
                else:
                    tx.update(job["id"], finished_at=now)
                tx.add_events(events)
        return lost

    # -- events -------------------------------------------------------------------------------
    def events(self, since: int = 0, *, job_id: int | None = None, limit: int = 1000) -> list[dict]:
        """Events with seq > since, oldest first. Each: seq, id (job id, None for queue-wide),
        kind, time, status, progress, error, result (+ kind-specific extras)."""
        with self.store.read() as tx:
            return tx.events_after(int(since), job_id=job_id, limit=limit)

    def last_event_id(self) -> int:
        with self.store.read() as tx:
            return tx.last_event_seq()

    def subscribe(self, *, job_id: int | None = None, since: int | None = None,
                  poll: float = 0.05, max_poll: float = 0.5, timeout: float | None = None,
                  until_finished: bool = False) -> Subscription:
        """Follow events from now on (or after seq `since`); see `Subscription`."""
        return Subscription(self, job_id=job_id, since=since, poll=poll, max_poll=max_poll,
                            timeout=timeout, until_finished=until_finished)

    def prune_events(self, older_than: float = 7 * 86400.0) -> int:
        """Drop events older than `older_than` seconds (the jobs themselves stay)."""
        with self.store.write() as tx:
            return tx.prune_events(time.time() - older_than)

    def integrity_check(self) -> str:
        return self.store.integrity_check()

    # -- helpers ------------------------------------------------------------------------------
    def _set_paused(self, paused: bool) -> None:
        now = time.time()
        with self.store.write() as tx:
            if bool(tx.get_meta("paused", False)) == paused:
                return
            tx.set_meta("paused", paused)
            kind = "paused" if paused else "resumed"
            tx.add_events([(None, kind, now, {"status": kind, "progress": None, "error": None,
                                              "result": None})])

    def _end(self, job_id, worker_id, state, **fields) -> dict | None:
        now = time.time()
        with self.store.write() as tx:
            job = tx.job(int(job_id))
            if not self._owned(job, worker_id):
                return None
            tx.update(job["id"], state=state, finished_at=now, updated_at=now, heartbeat_at=now,
                      **fields)
            job = tx.job(job["id"])
            tx.add_events([(job["id"], state, now, _event(job))])
        return _public(job)

    @staticmethod
    def _owned(job: dict | None, worker_id: str | None) -> bool:
        return job is not None and job["state"] == "running" and (
            worker_id is None or job["worker"] == worker_id)

    def _must(self, tx, job_id) -> dict:
        try:
            key = int(job_id)
        except (TypeError, ValueError):
            raise InputError(f"job id must be an integer, got {job_id!r}") from None
        job = tx.job(key)
        if job is None:
            raise InputError(f"no job {job_id} in {self.path}; `ovi queue list` shows the ids")
        return job

    @staticmethod
    def _slot(tx, job_id: int, target: dict, *, below: bool) -> float:
        """A position just before (below) or after `target` within its priority."""
        for _ in range(2):
            other = tx.queued_neighbour(target["priority"], target["position"], below=below,
                                        exclude=job_id)
            if below:
                lo = other["position"] if other else target["position"] - 1.0
                hi = target["position"]
            else:
                lo = target["position"]
                hi = other["position"] if other else target["position"] + 1.0
            position = (lo + hi) / 2.0
            if lo < position < hi:
                return position
            # Repeated moves into one gap exhausted float precision: space this priority out
            # again (1.0 apart, same order) and look once more.
            ids = tx.queued_ids_in_order(target["priority"])
            base = tx.job(ids[0])["position"] if ids else 0.0
            for i, other_id in enumerate(ids):
                tx.update(other_id, position=base + i)
            target = tx.job(target["id"])
        raise RuntimeError("could not find a slot to move the job into")  # unreachable

    @staticmethod
    def _check_priority(priority) -> int:
        if isinstance(priority, bool) or not isinstance(priority, int):
            try:
                if isinstance(priority, bool) or int(priority) != float(priority):
                    raise ValueError
                priority = int(priority)
            except (TypeError, ValueError):
                raise InputError(f"priority must be an integer, got {priority!r}") from None
        return check_int("priority", priority)  # within SQLite's int64

    @staticmethod
    def _check_state(state: str) -> None:
        if state not in STATES:
            raise InputError(f"unknown state {state!r}; use one of {', '.join(STATES)}")


def default_out_dir(queue: JobQueue) -> Path:
    """Where runners write and the REST API serves clips: the folder holding the database."""
    return Path(queue.path).resolve().parent
