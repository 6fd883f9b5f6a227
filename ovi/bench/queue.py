"""`ovi bench queue`: how fast the job queue takes submissions and hands out jobs, per store.

Stores: SQLite in each `synchronous` mode (NORMAL — the default, survives a killed process — and
FULL, which also survives a power cut), and PostgreSQL (`--postgres URL` of a server, where it
creates and drops scratch databases; `temp` — the default — starts a throwaway local server as the
tests do, with fsync off; `none` skips it). For each store and each runner count
(`--runners 1,4`), one record:
  submits_per_second       single producer, one `submit()` (one transaction) per job
  claim_latency_seconds    median time from calling `claim()` to holding the job (claim-to-start),
                           with `--claims` jobs waiting, while N runners claim and finish at once
  claims_per_second        jobs claimed and finished per second by all N runners together
plus the p95 claim latency, batched `submit_many` throughput and the finish() latency.
Runners are threads here, each with its own JobQueue (own connections), so the store's locking is
what they contend on; a SQLite claim holds the file's write lock, a PostgreSQL claim one row.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from ovi.queue import JobQueue

REQUEST = {"prompt": "A cat plays the piano. <S>Hello there.<E> <AUDCAP>Piano music.<ENDAUDCAP>",
           "mode": "t2v", "seed": 100, "steps": 50, "engine": {"fp8": False}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--submits", type=int, default=2000, help="jobs submitted one by one")
    parser.add_argument("--claims", type=int, default=1000, help="claims timed (all runners together)")
    parser.add_argument("--batch", type=int, default=500, help="batch size for submit_many")
    parser.add_argument("--sync", default="NORMAL,FULL",
                        help="comma list of SQLite synchronous modes to measure")
    parser.add_argument("--postgres", default="temp", metavar="URL|temp|none",
                        help="PostgreSQL server to measure (a URL of a database there; the bench "
                             "creates and drops scratch databases, so it needs CREATEDB); 'temp' "
                             "starts a throwaway local server; 'none' skips PostgreSQL")
    parser.add_argument("--runners", default="1,4", help="comma list of concurrent runner counts")
    parser.add_argument("--dir", default=None,
                        help="folder for the scratch databases (default: a temp folder)")


def _claim_and_finish(url: str, synchronous: str, worker: str, n: int, latencies: list,
                      finishes: list, start: threading.Barrier) -> None:
    q = JobQueue(url, synchronous=synchronous)
    try:
        start.wait()
        for _ in range(n):
            t0 = time.perf_counter()
            job = q.claim(worker)
            t1 = time.perf_counter()
            if job is None:
                break
            q.finish(job["id"], {"mp4": "x.mp4"}, worker_id=worker, lease=job["lease_generation"])
            latencies.append(t1 - t0)
            finishes.append(time.perf_counter() - t1)
    finally:
        q.close()


def _measure(url: str, n_submits: int, n_claims: int, batch: int, runners: int,
             synchronous: str = "NORMAL") -> dict:
    q = JobQueue(url, synchronous=synchronous)
    try:
        t0 = time.perf_counter()
        for i in range(n_submits):
            q.submit({**REQUEST, "seed": i})
        submit_s = time.perf_counter() - t0

        n_batched = max(batch, 1) * 4
        t0 = time.perf_counter()
        for start in range(0, n_batched, max(batch, 1)):
            q.submit_many([{**REQUEST, "seed": i} for i in range(start, start + batch)])
        batched_s = time.perf_counter() - t0
        queued = q.counts()["queued"]
    finally:
        q.close()

    n_claims = min(n_claims, n_submits + n_batched)
    latencies: list[float] = []
    finishes: list[float] = []
    barrier = threading.Barrier(runners + 1)
    share = [n_claims // runners + (1 if r < n_claims % runners else 0) for r in range(runners)]
    threads = [threading.Thread(target=_claim_and_finish,
                                args=(url, synchronous, f"bench{r}", share[r], latencies, finishes,
                                      barrier))
               for r in range(runners)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    claim_s = time.perf_counter() - t0
    latencies.sort()
    return {
        "submits_per_second": n_submits / submit_s,
        "claim_latency_seconds": statistics.median(latencies),
        "claim_latency_p95_seconds": latencies[int(0.95 * (len(latencies) - 1))],
        "finish_latency_seconds": statistics.median(finishes),
        "claims_per_second": len(latencies) / claim_s,
        "batched_submits_per_second": n_batched / batched_s,
        "batch": batch,
        "submits": n_submits,
        "claims": len(latencies),
        "queued_when_claiming": queued,
    }


def run(args):
    """Yield one JSON-able record per store and runner count."""
    modes = [m.strip().upper() for m in str(getattr(args, "sync", "NORMAL,FULL")).split(",") if m.strip()]
    runner_counts = [int(r) for r in str(getattr(args, "runners", "1,4")).split(",") if r.strip()]
    n_submits = int(getattr(args, "submits", 2000))
    n_claims = int(getattr(args, "claims", 1000))
    batch = int(getattr(args, "batch", 500))
    postgres = str(getattr(args, "postgres", "temp") or "none")
    base = getattr(args, "dir", None)
    common = {"bench": "queue", "world_size": 1, "python": platform.python_version(),
              "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(dir=base, prefix="ovi-bench-queue-") as tmp:
        for sync in modes:
            for runners in runner_counts:
                db = Path(tmp) / f"queue-{sync.lower()}-{runners}.db"
                yield {**common, "config": f"sqlite-wal-{sync.lower()}", "store": "sqlite",
                       "synchronous": sync, "runners": runners,
                       **_measure(str(db), n_submits, n_claims, batch, runners, sync)}
        if postgres == "none":
            return
        server = None
        if postgres == "temp":
            from ovi.queue.pgtemp import TempPostgres

            server = TempPostgres().start()
            postgres = server.url()
        try:
            for runners in runner_counts:
                with _scratch_database(postgres) as url:
                    # The throwaway server runs with fsync off: the record says so.
                    yield {**common, "config": "postgres-temp" if server else "postgres",
                           "store": "postgres", "synchronous": "fsync-off" if server else "server",
                           "runners": runners, **_measure(url, n_submits, n_claims, batch, runners)}
        finally:
            if server is not None:
                server.stop()


@contextmanager
def _scratch_database(server_url: str):
    """A new database on the server `server_url` points at (needs CREATEDB), dropped afterwards:
    the bench never writes into an existing queue."""
    import psycopg

    name = f"ovi_bench_{uuid.uuid4().hex[:10]}"
    parts = urlsplit(server_url)
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path="/" + name))
    finally:
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
