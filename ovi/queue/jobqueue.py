"""JobQueue: the scheduling policy over a durable store.

Order: highest `priority` first, then first-in first-out (a `position` handed out at submit;
`move` rewrites it). States and the only ways between them:

    queued ──claim──► running ──finish──► done
      ▲  │               ├──fail──────► failed ──retry──► queued
      │  └──cancel──►    ├──cancel (runner stops between steps) ──► cancelled ──retry──► queued
      │   cancelled      ├──release (runner interrupted) ──► queued
      └──requeue◄── lost ◄── lease expired / local runner process dead (recover_lost)
                     └──max_attempts used up──► failed (error: "lost N times: lease expired on
                                                runner X ...")

Producers (CLI, papermill, widgets, REST) and consumers (runners) may be threads or processes on
one SQLite file, or on many machines sharing one PostgreSQL database; each step is one write
transaction of the store (`ovi.queue.store`), so they never see half a change. The runner's calls
(claim, heartbeat, progress, finish, release, recover: the lease protocol) are in
`ovi.queue.lease`; events and `Subscription` in `ovi.queue.events`. Every change appends an event;
`subscribe()` follows the event log from any process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ovi.errors import InputError
from ovi.inputs import CLIENT_ID_PATTERN, check_int, job_number
from ovi.queue.events import FINISHED, Subscription, job_event
from ovi.queue.lease import (
    LeaseProtocol,
    make_worker_id,
    paths_as_read,
    paths_for_store,
    retrying,
    serve_key,
)
from ovi.queue.requests import requests_from_csv, validate_request
from ovi.queue.store import SQLiteStore, open_store, redact_url
from ovi.request import GenerateRequest, RequestError

STATES = ("queued", "running", "done", "failed", "cancelled", "lost")
DEFAULT_DB = "outputs/queue.db"
QUEUE_URL_ENV = "OVI_QUEUE_URL"  # the queue every command uses when --db is not given
QUEUE_ROOT_ENV = "OVI_QUEUE_ROOT"  # a PostgreSQL queue's output root (default: outputs)
__all__ = ["DEFAULT_DB", "FINISHED", "STATES", "DuplicateJobError", "JobCancelled", "JobQueue",
           "QueuePolicy", "Subscription", "make_worker_id"]


def default_queue_url() -> str:
    """$OVI_QUEUE_URL, else the SQLite file outputs/queue.db."""
    return os.environ.get(QUEUE_URL_ENV) or DEFAULT_DB


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

    heartbeat_timeout: a claim's lease lasts this many seconds, and every heartbeat extends it
        by as much; a running job whose lease ran out counts as lost (runners beat every few
        seconds, also while loading weights).
    max_attempts: a lost job is re-queued while it has been tried fewer times than this; after
        that it ends `failed`, with the reason ("lost 3 times: lease expired on runner X ..."),
        for a person to look at (`retry` re-queues it).
    requeue_lost: False leaves every lost job `lost`.
    reconnect_timeout: how long a runner's queue step keeps retrying while the database is
        unreachable (a PostgreSQL restart) before it gives up with the error.
    """

    heartbeat_timeout: float = 60.0
    max_attempts: int = 3
    requeue_lost: bool = True
    reconnect_timeout: float = 120.0


class JobCancelled(Exception):
    """Raised inside a running generation (from its progress callback) to stop it between steps."""

    def __init__(self, job_id: int, reason: str = "cancel requested"):
        super().__init__(f"job {job_id}: {reason}")
        self.job_id = job_id
        self.reason = reason


class JobQueue(LeaseProtocol):
    """The durable job queue. `url`: a SQLite file (default $OVI_QUEUE_URL, else
    `outputs/queue.db`) or a `postgresql://user:pass@host:5432/db` URL shared by many machines.
    The producer and admin API is here; the runner's lease protocol in `ovi.queue.lease`.

    `root`: the folder clips are written under and served from, and where the named configs,
    LoRAs and uploads live: for SQLite the file's folder; for PostgreSQL `root`, else
    $OVI_QUEUE_ROOT, else `outputs` — a path every machine of the farm mounts. `path` is the
    SQLite file, or for PostgreSQL `<root>/postgres` (a name inside the root, so code that takes
    the folder of `path` finds the root)."""

    def __init__(self, url: str | os.PathLike | None = None, *, policy: QueuePolicy | None = None,
                 synchronous: str = "NORMAL", store=None, root: str | os.PathLike | None = None):
        url = default_queue_url() if url is None else url
        self.store = store or open_store(url, synchronous=synchronous)
        self.url = str(url)
        if isinstance(self.store, SQLiteStore):
            self.path = self.store.path
        else:
            root = root or os.environ.get(QUEUE_ROOT_ENV) or "outputs"
            self.path = Path(root).resolve() / "postgres"
        self.policy = policy or QueuePolicy()
        self._root = Path(self.path).resolve().parent

    @property
    def root(self) -> Path:
        return self._root

    def __repr__(self) -> str:
        return f"JobQueue({redact_url(self.url)!r})"

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
        now = self.store.now()
        try:
            with self.store.write() as tx:
                start = tx.max_position() + 1
                rows = [dict(state="queued", priority=priority, position=start + i,
                             request=paths_for_store(r, self.root), created_at=now, updated_at=now,
                             client_id=c, serve_key=serve_key(r))
                        for i, (r, c) in enumerate(zip(requests, client_ids))]
                ids = tx.insert_jobs(rows)
                tx.add_events([(job_id, "submitted", now,
                                {"status": "queued", "progress": 0.0, "error": None, "result": None,
                                 "priority": priority, "client_id": c})
                               for job_id, c in zip(ids, client_ids)])
        except Exception as exc:
            if not self.store.is_duplicate(exc):
                raise
            with self.store.read() as tx:  # the failed transaction is gone: look in a new one
                taken = [c for c in client_ids if c is not None and tx.job_by_client_id(c)]
            raise DuplicateJobError(f"a job with id {taken[0] if taken else client_ids!r} already "
                                    f"exists; choose another id") from None
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
    @retrying
    def get(self, job_id: int) -> dict | None:
        with self.store.read() as tx:
            return self._shown(tx.job(int(job_id)))

    def find(self, ref: int | str) -> dict | None:
        """The job a client refers to: by the id it chose at submit, else by the queue's integer id
        (a client id wins where the two read alike, so a client always gets its own job)."""
        with self.store.read() as tx:
            job = tx.job_by_client_id(str(ref))
            number = job_number(ref) if isinstance(ref, (int, str)) else None  # ASCII digits in int64
            if job is None and number is not None:
                job = tx.job(number)
            return self._shown(job)

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
            return [self._shown(j) for j in tx.jobs(states, queue_order=queue_order, limit=limit,
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
        now = self.store.now()
        with self.store.write() as tx:
            job = self._must(tx, job_id)
            if job["state"] in ("queued", "lost"):
                tx.update(job["id"], state="cancelled", finished_at=now, updated_at=now)
                kind = "cancelled"
            elif job["state"] == "running":
                if job["cancel_requested"]:
                    return self._shown(job)
                tx.update(job["id"], cancel_requested=True, updated_at=now)
                kind = "cancel_requested"
            else:
                raise InputError(f"job {job_id} is already {job['state']}; nothing to cancel")
            job = tx.job(job["id"])
            tx.add_events([(job["id"], kind, now, job_event(job))])
        return self._shown(job)

    def retry(self, job_id: int) -> dict:
        """Re-queue a failed, cancelled or lost job at the back of its priority."""
        now = self.store.now()
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
            tx.add_events([(job["id"], "retried", now, job_event(job))])
        return self._shown(job)

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
        now = self.store.now()
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
            tx.add_events([(job["id"], "moved", now, job_event(job, priority=job["priority"]))])
        return self._shown(job)

    def waiting_reasons(self) -> dict[str, str]:
        """Why queued jobs of a config wait beyond their turn: {serve key: reason} for each config
        with queued jobs that no live runner serves (empty when no runner ever registered, or a
        live one takes any job)."""
        with self.store.read() as tx:
            keys = tx.queued_serve_keys()
        if not keys:
            return {}
        registered = self.runners()
        live = [r for r in registered if r["live"]]
        if not registered or any(r["serves"] is None for r in live):
            return {}  # a queue without a farm, or a runner that takes any job
        served = {k for r in live for k in r["serves"]}
        return {k: (f"no runner serves {k}" if live else "no runner is alive")
                for k in keys if k not in served}

    def why_waiting(self, jobs: Iterable[dict]) -> dict[int, str]:
        """{job id: why it waits beyond its turn} for the queued ones of `jobs` whose config no
        live runner serves (`waiting_reasons`); what `ovi queue list` and the Studio show."""
        jobs = [j for j in jobs if j["state"] == "queued"]
        reasons = self.waiting_reasons() if jobs else {}
        return {j["id"]: reasons[serve_key(j["request"])] for j in jobs
                if serve_key(j["request"]) in reasons}

    # -- events -------------------------------------------------------------------------------
    @retrying
    def events(self, since: int = 0, *, job_id: int | None = None, limit: int = 1000) -> list[dict]:
        """Events with seq > since, oldest first. Each: seq, id (job id, None for queue-wide),
        kind, time, status, progress, error, result (+ kind-specific extras)."""
        with self.store.read() as tx:
            events = tx.events_after(int(since), job_id=job_id, limit=limit)
        root = self.root
        for event in events:
            event["result"] = paths_as_read(event.get("result"), root)
        return events

    @retrying
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
            return tx.prune_events(self.store.now() - older_than)

    def integrity_check(self) -> str:
        return self.store.integrity_check()

    # -- helpers ------------------------------------------------------------------------------
    def _set_paused(self, paused: bool) -> None:
        now = self.store.now()
        with self.store.write() as tx:
            if bool(tx.get_meta("paused", False)) == paused:
                return
            tx.set_meta("paused", paused)
            kind = "paused" if paused else "resumed"
            tx.add_events([(None, kind, now, {"status": kind, "progress": None, "error": None,
                                              "result": None})])

    def _must(self, tx, job_id) -> dict:
        try:
            key = int(job_id)
        except (TypeError, ValueError):
            raise InputError(f"job id must be an integer, got {job_id!r}") from None
        job = tx.job(key)
        if job is None:
            raise InputError(f"no job {job_id} in {redact_url(self.url)}; `ovi queue list` shows the ids")
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
    """Where runners write and the REST API serves clips: the queue's root (see JobQueue)."""
    return queue.root
