"""Durable job queue: `JobQueue` (policy) over a store: `SQLiteStore` (one SQLite WAL file, the default)
or `PostgresStore` (a PostgreSQL database shared by a farm of runners), chosen by URL."""

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
