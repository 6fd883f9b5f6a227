"""Storage for the job queue: the store interface, the SQL both stores share, and `SQLiteStore`.

A store knows tables, transactions and connections; it knows nothing of what the states mean or
when a job may move between them — that policy lives in `ovi.queue.jobqueue` / `ovi.queue.lease`
(the huey split: the scheduler never cares how rows are kept). Everything a policy step reads and
writes happens inside one `store.write()` transaction, which is what makes it atomic across
threads, processes and (PostgreSQL) machines.

A store is: `write()` / `read()` (context managers yielding a `Txn`), `schema_version()`,
`integrity_check()`, `close()`, `now()` (the clock leases are judged by),
`event_mark()` + `wait_for_events(stop, timeout, mark)` (block until the queue changed after the
mark was taken), `is_transient(exc)`, `is_duplicate(exc)`, `describe`
(for messages) and `local` (True when every runner shares this machine, so a PID says something).
`open_store(url)` picks one by URL: a `postgresql://` URL -> `ovi.queue.postgres.PostgresStore`,
anything else is a SQLite file path. A third store is one more module with a `Txn` subclass.

SQLite connections: one per thread (sqlite3 connections must not be shared by concurrent threads),
made again after a fork (a connection must never cross `fork()`).
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from ovi.errors import InputError

# Each entry upgrades the schema by one version; `PRAGMA user_version` records how many ran.
# Append only: a shipped migration is never edited, so every old file upgrades the same way.
MIGRATIONS: list[list[str]] = [
    # v1: jobs, the event log and queue-wide settings.
    [
        """CREATE TABLE jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            state TEXT NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            position REAL NOT NULL,
            request TEXT NOT NULL,
            progress REAL NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            updated_at REAL NOT NULL,
            worker TEXT,
            heartbeat_at REAL,
            cancel_requested INTEGER NOT NULL DEFAULT 0,
            result TEXT,
            error TEXT
        )""",
        # Serves both the claim (first row of state='queued' in run order) and list(state).
        "CREATE INDEX jobs_order ON jobs(state, priority DESC, position, id)",
        # New jobs go after every position ever handed out: MAX(position) must be cheap.
        "CREATE INDEX jobs_position ON jobs(position)",
        """CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id INTEGER,
            kind TEXT NOT NULL,
            time REAL NOT NULL,
            data TEXT NOT NULL
        )""",
        "CREATE INDEX events_job ON events(job_id, seq)",
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
    # v2: an id the client chose (the seed fork's API: POST /api/generate {"id": ...}), unique.
    [
        "ALTER TABLE jobs ADD COLUMN client_id TEXT",
        "CREATE UNIQUE INDEX jobs_client_id ON jobs(client_id) WHERE client_id IS NOT NULL",
    ],
    # v3: fenced leases (the generation a claim hands out; the time the lease runs out), the
    # config a job needs a runner to serve, and the runners' roll call.
    [
        "ALTER TABLE jobs ADD COLUMN lease_generation INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE jobs ADD COLUMN lease_expires_at REAL",
        "ALTER TABLE jobs ADD COLUMN serve_key TEXT NOT NULL DEFAULT 'default'",
        """CREATE TABLE runners (
            id TEXT PRIMARY KEY,
            label TEXT NOT NULL,
            host TEXT NOT NULL,
            serves TEXT,
            current_job INTEGER,
            started_at REAL NOT NULL,
            heartbeat_at REAL NOT NULL
        )""",
    ],
]
# What every queue database holds from v1 on: how a file of ours is told from someone else's.
_QUEUE_TABLES = {"jobs", "events", "meta"}

SCHEMA_VERSION = len(MIGRATIONS)

_JOB_COLUMNS = (
    "id", "state", "priority", "position", "request", "progress", "attempts", "created_at",
    "started_at", "finished_at", "updated_at", "worker", "heartbeat_at", "cancel_requested",
    "result", "error", "client_id", "lease_generation", "lease_expires_at", "serve_key",
)
# The lease columns are the lease protocol's business; a job as callers see it leaves them out
# except the generation (a runner passes it back to prove the lease is still its own).
_RUNNER_COLUMNS = ("id", "label", "host", "serves", "current_job", "started_at", "heartbeat_at")
_JSON_COLUMNS = ("request", "result")
_WRITABLE = frozenset(_JOB_COLUMNS) - {"id"}


def redact_url(url: str | os.PathLike) -> str:
    """A queue URL fit for messages and logs: any password replaced by ***."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", str(url))


def is_postgres_url(url: str | os.PathLike) -> bool:
    return str(url).startswith(("postgresql://", "postgres://"))


def open_store(url: str | os.PathLike, *, synchronous: str = "NORMAL"):
    """The store a `--db` value names: a `postgresql://` URL or a SQLite file path."""
    if is_postgres_url(url):
        from ovi.queue.postgres import PostgresStore  # psycopg only where a farm is used

        return PostgresStore(str(url))
    return SQLiteStore(url, synchronous=synchronous)


def _decode_job(row) -> dict | None:
    if row is None:
        return None
    job = dict(row)
    for key in _JSON_COLUMNS:
        if job.get(key) is not None:
            job[key] = json.loads(job[key])
    job["cancel_requested"] = bool(job["cancel_requested"])
    return job


def _encode(field: str, value: Any) -> Any:
    if field in _JSON_COLUMNS and value is not None:
        return json.dumps(value)
    if field == "cancel_requested":
        return int(bool(value))
    return value


class SqlTxn:
    """The primitive reads and writes, valid only inside a store's `read()/write()`. Written once
    in the SQL both stores speak (`?` placeholders; a store's `execute` translates); a store
    overrides only what its dialect does differently. `locking`: a write transaction, whose reads
    of a job lock its row (PostgreSQL `FOR UPDATE`) until commit."""

    for_update = ""    # appended to single-job reads in a write transaction
    limit_all = -1     # LIMIT value meaning "no limit"

    def __init__(self, conn, *, locking: bool = False):
        self.conn = conn
        self.locking = locking

    def execute(self, sql: str, args: Iterable[Any] = ()):
        return self.conn.execute(sql, tuple(args))

    def _lock(self) -> str:
        return self.for_update if self.locking else ""

    # -- jobs ---------------------------------------------------------------------------------
    def insert_jobs(self, rows: list[dict]) -> list[int]:
        ids = []
        for row in rows:
            cols = [c for c in row if c in _WRITABLE]
            cur = self.execute(
                f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                f"RETURNING id",
                [_encode(c, row[c]) for c in cols],
            )
            ids.append(_first(cur.fetchone()))
        return ids

    def job(self, job_id: int) -> dict | None:
        return _decode_job(self.execute(f"SELECT * FROM jobs WHERE id = ?{self._lock()}",
                                        (job_id,)).fetchone())

    def job_by_client_id(self, client_id: str) -> dict | None:
        return _decode_job(self.execute(f"SELECT * FROM jobs WHERE client_id = ?{self._lock()}",
                                        (client_id,)).fetchone())

    def jobs(self, states: Iterable[str] | None = None, *, queue_order: bool = False,
             limit: int | None = None, offset: int = 0, skip_locked: bool = False) -> list[dict]:
        """skip_locked (write transactions): lock the rows read, passing over rows another
        transaction holds (PostgreSQL; SQLite's write lock already excludes everyone)."""
        sql, args = "SELECT * FROM jobs", []
        if states is not None:
            states = list(states)
            sql += f" WHERE state IN ({', '.join('?' * len(states))})"
            args += states
        sql += " ORDER BY priority DESC, position, id" if queue_order else " ORDER BY id"
        sql += " LIMIT ? OFFSET ?"
        args += [self.limit_all if limit is None else int(limit), int(offset)]
        if skip_locked and self.locking and self.for_update:
            sql += self.for_update + " SKIP LOCKED"
        return [_decode_job(r) for r in self.execute(sql, args)]

    def claim_next(self, worker: str, now: float, lease_seconds: float,
                   serves: list[str] | None) -> dict | None:
        """Take the first queued job in run order (of a config in `serves`, None = any) unless the
        queue is paused: running, attempts + 1, a new lease generation. SQLite: a read then an
        update, made atomic by the store's write lock."""
        where, args = self._claimable(serves)
        if self.get_meta("paused", False):
            return None
        row = self.execute(f"SELECT id FROM jobs WHERE {where} ORDER BY priority DESC, position, id "
                           f"LIMIT 1", args).fetchone()
        if row is None:
            return None
        job_id = _first(row)
        self.execute(f"UPDATE jobs SET {_CLAIM_SET} WHERE id = ?",
                     (now, worker, now, now, now + lease_seconds, job_id))
        return self.job(job_id)

    @staticmethod
    def _claimable(serves: list[str] | None) -> tuple[str, list]:
        if serves is None:
            return "state = 'queued'", []
        if not serves:
            return "0 = 1", []
        return f"state = 'queued' AND serve_key IN ({', '.join('?' * len(serves))})", list(serves)

    def queued_neighbour(self, priority: int, position: float, *, below: bool,
                         exclude: int) -> dict | None:
        """The queued job of `priority` just before (below=True) or after `position`."""
        op, order = ("<", "DESC") if below else (">", "ASC")
        row = self.execute(
            f"SELECT * FROM jobs WHERE state = 'queued' AND priority = ? AND position {op} ? "
            f"AND id != ? ORDER BY position {order}, id {order} LIMIT 1",
            (priority, position, exclude),
        ).fetchone()
        return _decode_job(row)

    def queued_ids_in_order(self, priority: int) -> list[int]:
        return [_first(r) for r in self.execute(
            "SELECT id FROM jobs WHERE state = 'queued' AND priority = ? ORDER BY position, id",
            (priority,))]

    def max_position(self) -> float:
        value = _first(self.execute("SELECT MAX(position) FROM jobs").fetchone())
        return float(value) if value is not None else 0.0

    def update(self, job_id: int, **fields) -> None:
        bad = set(fields) - _WRITABLE
        if bad:
            raise KeyError(f"not a job column: {sorted(bad)}")
        cols = list(fields)
        self.execute(
            f"UPDATE jobs SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
            [_encode(c, fields[c]) for c in cols] + [job_id],
        )

    def counts(self) -> dict[str, int]:
        rows = self.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        return {r["state"]: int(r["n"]) for r in rows}

    def queued_serve_keys(self) -> dict[str, int]:
        """How many queued jobs need each config (for "no runner serves ...")."""
        rows = self.execute("SELECT serve_key, COUNT(*) AS n FROM jobs WHERE state = 'queued' "
                            "GROUP BY serve_key").fetchall()
        return {r["serve_key"]: int(r["n"]) for r in rows}

    # -- events -------------------------------------------------------------------------------
    def add_events(self, events: list[tuple[int | None, str, float, dict]]) -> None:
        for job_id, kind, t, data in events:
            self.execute("INSERT INTO events (job_id, kind, time, data) VALUES (?, ?, ?, ?)",
                         (job_id, kind, t, json.dumps(data)))

    def events_after(self, seq: int, *, job_id: int | None = None, limit: int = 1000) -> list[dict]:
        if job_id is None:
            rows = self.execute(
                "SELECT * FROM events WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))
        else:
            rows = self.execute(
                "SELECT * FROM events WHERE job_id = ? AND seq > ? ORDER BY seq LIMIT ?",
                (job_id, seq, limit))
        out = []
        for r in rows:
            event = json.loads(r["data"])
            event.update(seq=r["seq"], id=r["job_id"], kind=r["kind"], time=r["time"])
            out.append(event)
        return out

    def losses_since_retry(self, job_id: int) -> int:
        """How many times the job was lost since it was submitted or last retried (its `lost`
        events after its last `retried` one); events pruned meanwhile are not counted."""
        row = self.execute(
            "SELECT COUNT(*) FROM events WHERE job_id = ? AND kind = 'lost' AND seq > "
            "COALESCE((SELECT MAX(seq) FROM events WHERE job_id = ? AND kind = 'retried'), 0)",
            (job_id, job_id)).fetchone()
        return int(_first(row) or 0)

    def last_event_seq(self) -> int:
        value = _first(self.execute("SELECT MAX(seq) FROM events").fetchone())
        return int(value or 0)

    def prune_events(self, before: float) -> int:
        # Keep the newest event whatever its age, so `last_event_seq` never goes backwards
        # (AUTOINCREMENT would keep it monotonic anyway; this keeps subscribers' cursors valid).
        cur = self.execute(
            "DELETE FROM events WHERE time < ? AND seq < (SELECT MAX(seq) FROM events)", (before,))
        return cur.rowcount

    # -- queue-wide settings ------------------------------------------------------------------
    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(_first(row))

    def set_meta(self, key: str, value: Any) -> None:
        self.execute("INSERT INTO meta (key, value) VALUES (?, ?) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, json.dumps(value)))

    # -- runners ------------------------------------------------------------------------------
    def upsert_runner(self, runner: dict) -> None:
        cols = list(_RUNNER_COLUMNS)
        values = [json.dumps(runner[c]) if c == "serves" and runner[c] is not None else runner[c]
                  for c in cols]
        updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in ("id", "started_at"))
        self.execute(f"INSERT INTO runners ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
                     f"ON CONFLICT (id) DO UPDATE SET {updates}", values)

    def touch_runner(self, runner_id: str, now: float, current_job: int | None) -> None:
        self.execute("UPDATE runners SET heartbeat_at = ?, current_job = ? WHERE id = ?",
                     (now, current_job, runner_id))

    def remove_runner(self, runner_id: str) -> None:
        self.execute("DELETE FROM runners WHERE id = ?", (runner_id,))

    def runners(self) -> list[dict]:
        out = []
        for row in self.execute("SELECT * FROM runners ORDER BY label, id"):
            runner = dict(row)
            runner["serves"] = None if runner["serves"] is None else json.loads(runner["serves"])
            out.append(runner)
        return out


def _first(row) -> Any:
    """The first column of a row (a sqlite3.Row or a psycopg dict row)."""
    if row is None:
        return None
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


# A claim: the one SET both stores' claims use (args: now, worker, now, now, lease expiry).
_CLAIM_SET = ("state = 'running', attempts = attempts + 1, progress = 0, started_at = ?, "
              "finished_at = NULL, worker = ?, heartbeat_at = ?, updated_at = ?, error = NULL, "
              "lease_expires_at = ?, lease_generation = lease_generation + 1")


CHANGE_CHECK = 0.05  # seconds between two looks for another process's commit (SQLite)


class Txn(SqlTxn):
    """SQLite's transaction: the shared SQL as is."""


class SQLiteStore:
    """A queue database file (all runners on this machine: `local`). `synchronous="NORMAL"` (default) makes every commit survive a crash
    or kill of the process; only an OS crash or power cut can lose the last few commits. Pass
    `"FULL"` to fsync every commit and survive those too, at roughly a third of the throughput."""

    def __init__(self, path: str | os.PathLike, *, synchronous: str = "NORMAL",
                 busy_timeout: float = 30.0):
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise InputError(f"synchronous={synchronous!r}: use 'NORMAL', 'FULL' or 'EXTRA'")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.busy_timeout = float(busy_timeout)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[tuple[threading.Thread, sqlite3.Connection]] = []  # (owner, connection)
        self._pid = os.getpid()
        self._closed = False
        self._commits = 0  # write transactions this process committed (see event_mark)
        self._committed = threading.Condition()
        self.describe = str(self.path)
        self.local = True
        if self.path.parent and not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate(self._conn())

    # -- connections --------------------------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError(f"the queue store {self.path} was closed; open a new JobQueue")
        if os.getpid() != self._pid:
            # Forked child: the parent's connections are unusable here; keep references (not
            # closing them, which could disturb the parent's locks) and start afresh.
            with self._lock:
                self._pid = os.getpid()
                self._local = threading.local()
                self._conns = []
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._conns.append((threading.current_thread(), conn))
        return conn

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(str(self.path), timeout=self.busy_timeout,
                                   isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise InputError(f"cannot open queue database {self.path}: {exc}; "
                             f"check the path (--db) and its permissions") from exc
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        try:
            self._check_ours(conn)
        except BaseException:
            conn.close()
            raise
        # journal_mode needs a moment with no other writer; several processes opening a fresh
        # file at once can collide here, so retry within the busy timeout.
        deadline = time.monotonic() + self.busy_timeout
        while True:
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise InputError(f"queue database {self.path} cannot use WAL mode (got {mode!r}); "
                             f"put it on a local filesystem, not a network share")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        # Checkpoints (WAL -> main file) are where NORMAL mode fsyncs: doing them every ~16 MB
        # rather than SQLite's 4 MB keeps single-job submits fast without a large WAL.
        conn.execute("PRAGMA wal_autocheckpoint = 4000")
        conn.execute("PRAGMA cache_size = -16000")
        return conn

    def _check_ours(self, conn: sqlite3.Connection) -> None:
        """Refuse a file that is not a queue database before anything writes to it: a file SQLite
        cannot read, or a database of another program (tables but no queue schema). An empty file
        is a new database. Read-only: the file stays as it was."""
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.DatabaseError as exc:
            raise InputError(f"{self.path} is not a queue database ({exc}); point --db at a queue "
                             f"file or at a new path") from None
        tables.discard("sqlite_sequence")
        if (version == 0 and tables) or (version > 0 and not _QUEUE_TABLES <= tables):
            shown = ", ".join(sorted(tables)[:5]) or "none"
            raise InputError(f"{self.path} is an SQLite database of another program (tables: {shown}), "
                             f"not a queue database; point --db at a queue file or at a new path")

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
            if version > SCHEMA_VERSION:
                raise InputError(
                    f"queue database {self.path} has schema v{version} but this ovi knows up to "
                    f"v{SCHEMA_VERSION}; upgrade ovi or point --db at another file")
            for v in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[v]:
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def schema_version(self) -> int:
        return self._conn().execute("PRAGMA user_version").fetchone()[0]

    # -- transactions -------------------------------------------------------------------------
    @contextmanager
    def write(self) -> Iterator[Txn]:
        """One atomic read-modify-write; takes the database write lock up front so two claimers
        can never both see the same job as queued."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield Txn(conn, locking=True)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        with self._committed:
            self._commits += 1
            self._committed.notify_all()

    @contextmanager
    def read(self) -> Iterator[Txn]:
        """A consistent snapshot for several reads (WAL readers never block the writer)."""
        conn = self._conn()
        conn.execute("BEGIN")
        try:
            yield Txn(conn)
        finally:
            conn.execute("COMMIT")

    def integrity_check(self) -> str:
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0]

    @staticmethod
    def now() -> float:
        """The queue's clock (seconds since the epoch): one machine, so this machine's."""
        return time.time()

    def event_mark(self) -> tuple[int, int]:
        """Where the database stands now, for `wait_for_events`: this process's commits (any
        thread) and the calling thread's connection's `PRAGMA data_version`, which moves when
        any other connection — another process included — commits."""
        version = self._conn().execute("PRAGMA data_version").fetchone()[0]
        return self._commits, int(version)

    def wait_for_events(self, stop: threading.Event, timeout: float, mark=None) -> bool:
        """Block up to `timeout` until the database changed after `mark` (default: now); True
        when it did, False on timeout or `stop`. A commit in this process wakes it at once;
        SQLite has no push from other processes, so their commits are seen by checking
        `data_version` (one cheap pragma, no table read) every `CHANGE_CHECK` seconds."""
        mark = self.event_mark() if mark is None else mark
        deadline = time.monotonic() + float(timeout)
        while not stop.is_set():
            if self.event_mark() != mark:
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._committed:
                if self._commits == mark[0]:
                    self._committed.wait(min(left, CHANGE_CHECK))
        return False

    @staticmethod
    def is_duplicate(exc: BaseException) -> bool:
        """A unique index refused a row (a client id taken)."""
        return isinstance(exc, sqlite3.IntegrityError)

    @staticmethod
    def is_transient(exc: BaseException) -> bool:
        return False  # a local file does not come back by waiting (a busy lock already waited)

    def close(self) -> None:
        """Close the calling thread's connection and those of threads that have ended. A live
        thread's connection is left to that thread (its next call raises "closed"; the connection
        closes when the thread or this store is freed): closing it here while that thread runs a
        statement on it crashes the process (seen: a server's change-watch thread in PRAGMA
        data_version)."""
        with self._lock:
            conns, self._conns = self._conns, []
            self._closed = True
        me = threading.current_thread()
        for owner, conn in conns:
            if owner is me or not owner.is_alive():
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
