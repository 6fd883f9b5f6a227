"""Durable job queue: `JobQueue` (policy) over `SQLiteStore` (one SQLite WAL file)."""

from ovi.queue.jobqueue import (
    DEFAULT_DB,
    FINISHED,
    STATES,
    DuplicateJobError,
    JobCancelled,
    JobQueue,
    QueuePolicy,
    Subscription,
    make_worker_id,
)
from ovi.queue.requests import validate_request
from ovi.queue.store import SCHEMA_VERSION, SQLiteStore
from ovi.request import MODES, RequestError

__all__ = [
    "DEFAULT_DB", "DuplicateJobError", "FINISHED", "MODES", "SCHEMA_VERSION", "STATES", "JobCancelled", "JobQueue",
    "QueuePolicy", "RequestError", "SQLiteStore", "Subscription", "make_worker_id",
    "validate_request",
]
