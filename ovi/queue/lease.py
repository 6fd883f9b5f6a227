"""The runner's side of the queue: claim, heartbeat, progress, finish, release, recover.

A claim hands the runner a **lease** on one job: an owner (the runner's worker id), an expiry
(`lease_expires_at`, now + the policy's heartbeat timeout, pushed on by every heartbeat and
progress report) and a **fencing token** (`lease_generation`, one more on every claim). Every later
write of the runner names its worker id and generation; once the lease has expired and another
runner re-claimed the job, the generation has moved on and the stale runner's progress, finish,
fail or release is refused (logged, nothing written) — so a runner that was only paused, or cut
off by the network, can never overwrite the new owner's work.

Liveness is the lease: any runner re-queues jobs whose lease ran out (`recover_lost`). On a store
whose runners all share one machine (SQLite) a runner's vanished PID is also taken as death at
once, as a speed-up; a farm store never looks at PIDs.

Runners also keep a roll call (`register_runner`, `touch_runner`): label, host, the configs they
serve and their current job, so `ovi queue runners` can list them and `ovi queue list` can say
why a job waits.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
import uuid
from pathlib import Path

from ovi.queue.events import job_event

log = logging.getLogger("ovi.queue")

DEFAULT_SERVE_KEY = "default"  # the serve key of a job that names no config (the embedded default)


def serve_key(request: dict) -> str:
    """Which config a runner must serve to run `request`: the config it names, else "default"."""
    return str(request.get("config") or DEFAULT_SERVE_KEY)


def make_worker_id() -> str:
    """host:pid:nonce — the host and pid let a restarted runner on the same machine see at once
    that a job's runner process is gone (SQLite only), without waiting for its lease to expire."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def worker_process_gone(worker: str | None) -> bool:
    """True when `worker` ran on this host and its process no longer exists."""
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


def retrying(method):
    """Run a queue step again while its store is unreachable (a restarting PostgreSQL), up to the
    policy's `reconnect_timeout`. Each step is one transaction, so a step that failed was not
    written and running it again is safe."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        deadline = time.monotonic() + self.policy.reconnect_timeout
        wait = 0.1
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as exc:
                if not self.store.is_transient(exc) or time.monotonic() > deadline:
                    raise
                log.warning("queue %s unreachable (%s); retrying %s in %.1fs", self.store.describe,
                            str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                            method.__name__, wait)
                time.sleep(wait)
                wait = min(wait * 2, 2.0)

    return wrapper


ROOT_RELATIVE = "root_relative"  # a stored dict's keys whose paths are relative to the root


def paths_for_store(record: dict, root: Path) -> dict:
    """A job's result or request as stored: absolute paths under the queue's output root become
    relative to it (their keys listed under ROOT_RELATIVE), so every machine that mounts the root —
    at whatever path — finds the files (a clip, the clip an extension continues); other values are
    kept as given."""
    stored, relative = {}, []
    for key, value in record.items():
        if isinstance(value, str) and Path(value).is_absolute() and key != ROOT_RELATIVE:
            path = Path(value).resolve()  # as the root is (a symlinked mount compares alike)
            if path.is_relative_to(root):
                value = path.relative_to(root).as_posix()
                relative.append(key)
        stored[key] = value
    if relative:
        stored[ROOT_RELATIVE] = relative
    return stored


def paths_as_read(record, root: Path):
    """A stored result or request with its root-relative paths made absolute on this machine (its
    root). One stored before paths were relative (no ROOT_RELATIVE) reads as it was stored."""
    if not isinstance(record, dict) or ROOT_RELATIVE not in record:
        return record
    relative = set(record[ROOT_RELATIVE] or ())
    return {key: str(root / value) if key in relative and isinstance(value, str) else value
            for key, value in record.items() if key != ROOT_RELATIVE}


def _public(job: dict | None) -> dict | None:
    if job is not None:
        job.pop("position", None)  # internal ordering key; `list(state="queued")` shows the order
        job.pop("lease_expires_at", None)
        job.pop("serve_key", None)
    return job


class LeaseProtocol:
    """Mixed into JobQueue: the calls a runner makes. Needs `self.store`, `self.policy` and
    `self.root`."""

    def _shown(self, job: dict | None) -> dict | None:
        """A job as callers see it: internal fields dropped, request and result paths absolute here."""
        job = _public(job)
        if job is not None:
            job["request"] = paths_as_read(job["request"], self.root)
            job["result"] = paths_as_read(job["result"], self.root)
        return job

    # -- claim --------------------------------------------------------------------------------
    @retrying
    def claim(self, worker_id: str, *, serves: list[str] | None = None) -> dict | None:
        """Atomically take the next queued job (None when empty or paused); attempts += 1 and a
        new lease generation (the job's `lease_generation`). `serves`: only jobs of these configs
        (serve keys, see `serve_key`); None takes any."""
        now = self.store.now()
        with self.store.write() as tx:
            job = tx.claim_next(worker_id, now, self.policy.heartbeat_timeout,
                                None if serves is None else list(serves))
            if job is None:
                return None
            tx.add_events([(job["id"], "running", now,
                            job_event(job, attempt=job["attempts"], worker=worker_id))])
        return self._shown(job)

    # -- while running ------------------------------------------------------------------------
    @retrying
    def heartbeat(self, job_id: int, worker_id: str, *, lease: int | None = None) -> bool:
        """Say the runner is alive and extend its lease; False when the job is no longer this
        worker's (its lease expired and it was re-queued, maybe re-claimed): drop it then."""
        now = self.store.now()
        with self.store.write() as tx:
            job = tx.job(int(job_id))
            if not self._owned(job, worker_id, lease, "heartbeat"):
                return False
            tx.update(job["id"], heartbeat_at=now, lease_expires_at=now + self.policy.heartbeat_timeout)
        return True

    @retrying
    def set_progress(self, job_id: int, progress: float, *, worker_id: str | None = None,
                     info: dict | None = None, lease: int | None = None) -> bool:
        """Record progress (0..1) and beat; returns True when the runner should stop the job
        now (a cancel was requested, or the job is no longer this worker's)."""
        now = self.store.now()
        progress = min(max(float(progress), 0.0), 1.0)
        with self.store.write() as tx:
            job = tx.job(int(job_id))
            if job is None or job["state"] != "running" or (
                    worker_id is not None and not self._owned(job, worker_id, lease, "progress")):
                return True
            tx.update(job["id"], progress=progress, heartbeat_at=now, updated_at=now,
                      lease_expires_at=now + self.policy.heartbeat_timeout)
            job["progress"] = progress
            tx.add_events([(job["id"], "progress", now, job_event(job, **(info or {})))])
            return bool(job["cancel_requested"])

    @retrying
    def is_cancel_requested(self, job_id: int) -> bool:
        with self.store.read() as tx:
            job = tx.job(int(job_id))
        return bool(job and (job["cancel_requested"] or job["state"] == "cancelled"))

    # -- ends ---------------------------------------------------------------------------------
    def finish(self, job_id: int, result: dict, *, worker_id: str | None = None,
               lease: int | None = None) -> dict | None:
        """Mark done with its output paths; None (and no change) if no longer this worker's."""
        return self._end(job_id, worker_id, lease, "done",
                         result=paths_for_store(dict(result), self.root), error=None,
                         progress=1.0)

    def fail(self, job_id: int, error: str, *, worker_id: str | None = None,
             lease: int | None = None) -> dict | None:
        return self._end(job_id, worker_id, lease, "failed", error=str(error))

    def mark_cancelled(self, job_id: int, *, worker_id: str | None = None,
                       lease: int | None = None) -> dict | None:
        """The runner has stopped a running job whose cancel was requested."""
        return self._end(job_id, worker_id, lease, "cancelled", error=None)

    @retrying
    def release(self, job_id: int, *, worker_id: str | None = None, lease: int | None = None,
                reason: str = "runner stopped") -> dict | None:
        """Give a running job back to the queue untouched (runner interrupted, e.g. Ctrl-C or
        SIGTERM), keeping its place; the interrupted run is not counted as an attempt."""
        now = self.store.now()
        with self.store.write() as tx:
            job = tx.job(int(job_id))
            if worker_id is not None and not self._owned(job, worker_id, lease, "release"):
                return None
            if job is None or job["state"] != "running":
                return self._shown(job)
            if job["cancel_requested"]:
                tx.update(job["id"], state="cancelled", finished_at=now, updated_at=now)
                kind = "cancelled"
            else:
                tx.update(job["id"], state="queued", progress=0.0, started_at=None, worker=None,
                          heartbeat_at=None, lease_expires_at=None, updated_at=now,
                          error=f"released: {reason}", attempts=max(job["attempts"] - 1, 0))
                kind = "requeued"
            job = tx.job(job["id"])
            tx.add_events([(job["id"], kind, now, job_event(job))])
        return self._shown(job)

    @retrying
    def recover_lost(self, *, heartbeat_timeout: float | None = None,
                     now: float | None = None) -> list[int]:
        """Find running jobs whose runner is dead — their lease ran out (or, given
        `heartbeat_timeout`, no heartbeat within it; or, on a local store, the runner's process is
        gone) — mark them `lost`, then per policy re-queue them in their old place (a
        cancel-flagged one becomes `cancelled`; one that used up `max_attempts` ends `failed`
        with the reason). Returns their ids."""
        now = self.store.now() if now is None else now
        lost = []
        with self.store.write() as tx:
            for job in tx.jobs(["running"], skip_locked=True):
                if heartbeat_timeout is not None:
                    stale = (job["heartbeat_at"] or 0.0) < now - heartbeat_timeout
                elif job["lease_expires_at"] is not None:
                    stale = job["lease_expires_at"] < now
                else:  # claimed before leases existed (a v2 database)
                    stale = (job["heartbeat_at"] or 0.0) < now - self.policy.heartbeat_timeout
                if not (stale or (self.store.local and worker_process_gone(job["worker"]))):
                    continue
                lost.append(job["id"])
                if job["cancel_requested"]:
                    tx.update(job["id"], state="cancelled", finished_at=now, updated_at=now)
                    job = tx.job(job["id"])
                    tx.add_events([(job["id"], "cancelled", now, job_event(job))])
                    continue
                how = "lease expired" if stale else "process gone"
                why = (f"{how} on runner {job['worker']} during attempt {job['attempts']} "
                       f"(last heartbeat {now - (job['heartbeat_at'] or now):.1f}s ago)")
                tx.update(job["id"], state="lost", error=why, updated_at=now)
                job = tx.job(job["id"])
                events = [(job["id"], "lost", now, job_event(job))]
                if not self.policy.requeue_lost:
                    pass  # stays lost, for a person to look at
                elif job["attempts"] < self.policy.max_attempts:
                    tx.update(job["id"], state="queued", progress=0.0, started_at=None,
                              worker=None, heartbeat_at=None, lease_expires_at=None, updated_at=now)
                    job = tx.job(job["id"])
                    events.append((job["id"], "requeued", now, job_event(job)))
                else:
                    # It keeps killing its runners (or they keep vanishing under it): give up.
                    losses = tx.losses_since_retry(job["id"]) + 1  # + the one being added
                    tx.update(job["id"], state="failed", finished_at=now, lease_expires_at=None,
                              error=f"lost {losses} times: {why}; gave up after {job['attempts']} "
                                    f"attempts (max_attempts {self.policy.max_attempts}; retry "
                                    f"re-queues it)")
                    job = tx.job(job["id"])
                    events.append((job["id"], "failed", now, job_event(job)))
                tx.add_events(events)
        return lost

    # -- the runners' roll call ---------------------------------------------------------------
    @retrying
    def register_runner(self, runner_id: str, *, label: str | None = None,
                        serves: list[str] | None = None) -> None:
        """Announce a runner (label, host, the serve keys it runs; None = any config)."""
        now = self.store.now()
        with self.store.write() as tx:
            tx.upsert_runner({"id": runner_id, "label": label or runner_id,
                              "host": socket.gethostname(),
                              "serves": None if serves is None else list(serves),
                              "current_job": None, "started_at": now, "heartbeat_at": now})

    @retrying
    def touch_runner(self, runner_id: str, current_job: int | None = None) -> None:
        with self.store.write() as tx:
            tx.touch_runner(runner_id, self.store.now(), current_job)

    @retrying
    def unregister_runner(self, runner_id: str) -> None:
        with self.store.write() as tx:
            tx.remove_runner(runner_id)

    @retrying
    def runners(self, *, live_only: bool = False) -> list[dict]:
        """Registered runners, each with `live` (a heartbeat within the policy's timeout)."""
        now = self.store.now()
        with self.store.read() as tx:
            found = tx.runners()
        for r in found:
            r["live"] = r["heartbeat_at"] >= now - self.policy.heartbeat_timeout
        return [r for r in found if r["live"]] if live_only else found

    # -- helpers ------------------------------------------------------------------------------
    @retrying
    def _end(self, job_id, worker_id, lease, state, **fields) -> dict | None:
        now = self.store.now()
        with self.store.write() as tx:
            job = tx.job(int(job_id))
            if (job is not None and worker_id is not None and job["state"] == state
                    and job["worker"] == worker_id and lease in (None, job["lease_generation"])):
                return self._shown(job)  # our own earlier write, whose answer a dropped connection lost
            if not self._owned(job, worker_id, lease, state):
                return None
            tx.update(job["id"], state=state, finished_at=now, updated_at=now, heartbeat_at=now,
                      lease_expires_at=None, **fields)
            job = tx.job(job["id"])
            tx.add_events([(job["id"], state, now, job_event(job))])
        return self._shown(job)

    @staticmethod
    def _owned(job: dict | None, worker_id: str | None, lease: int | None, action: str) -> bool:
        """Is this still the writer's job? When not, the write is refused and said in the log."""
        if job is None:
            return False
        if job["state"] == "running" and (worker_id is None or job["worker"] == worker_id) and (
                lease is None or job["lease_generation"] == lease):
            return True
        if worker_id is not None:
            log.warning("refused %s of job %s from runner %s (lease %s): the job is %s, held by %s "
                        "under lease %s — that runner was fenced out", action, job["id"], worker_id,
                        lease, job["state"], job["worker"], job["lease_generation"])
        return False
