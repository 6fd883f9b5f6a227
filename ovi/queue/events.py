"""Queue events: what each change records, and `Subscription`, which follows the event log.

The log (the store's `events` table) is the truth, in whichever database holds the queue, so a
subscriber sees changes made by any process on any machine. It reads the log again when the store
says the queue changed (`store.wait_for_events`): PostgreSQL pushes a LISTEN/NOTIFY wake-up from
any machine; SQLite wakes at once on a commit in this process and sees another process's commit by
its `data_version` (a cheap check every few tens of ms, no table read). The mark taken before each
read (`store.event_mark()`) means a change between the read and the wait is never slept through.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ovi.queue.jobqueue import JobQueue

FINISHED = ("done", "failed", "cancelled")  # nothing more happens without a user's retry


def job_event(job: dict, **extra) -> dict:
    """The data of an event about `job`: its state as clients see it (+ kind-specific extras)."""
    data = {"status": job["state"], "progress": job["progress"], "error": job["error"],
            "result": job["result"], "client_id": job.get("client_id")}
    data.update(extra)
    return data


class Subscription:
    """An iterator over queue events, read from the event log (so it sees writes from any
    process). Between reads it waits for the store's wake-up, at most `poll` seconds at first,
    backing off to `max_poll` while idle. Stop it with `close()` from any thread, or give
    `timeout` (seconds of total life) / `until_finished`."""

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
            mark = self._queue.store.event_mark()  # before the read: no change slips between
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
            if self._queue.store.wait_for_events(self._stop, wait, mark):
                wait = self._poll
            else:
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
