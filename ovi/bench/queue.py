"""`ovi bench queue`: how fast the job queue takes submissions and hands out jobs.

One record per SQLite durability mode (`synchronous` NORMAL — the default, survives a killed
process — and FULL, which also survives a power cut):
  submits_per_second       single producer, one `submit()` (one transaction) per job
  claim_latency_seconds    median time of one `claim()` with `--queued` jobs waiting
plus the p95 claim latency, batched `submit_many` throughput and the finish() latency.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from ovi.queue import JobQueue

REQUEST = {"prompt": "A cat plays the piano. <S>Hello there.<E> <AUDCAP>Piano music.<ENDAUDCAP>",
           "mode": "t2v", "seed": 100, "steps": 50, "engine": {"fp8": False}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--submits", type=int, default=5000, help="jobs submitted one by one")
    parser.add_argument("--claims", type=int, default=1000, help="claims timed")
    parser.add_argument("--batch", type=int, default=500, help="batch size for submit_many")
    parser.add_argument("--sync", default="NORMAL,FULL",
                        help="comma list of SQLite synchronous modes to measure")
    parser.add_argument("--dir", default=None,
                        help="folder for the scratch databases (default: a temp folder)")


def _measure(db: Path, sync: str, n_submits: int, n_claims: int, batch: int) -> dict:
    q = JobQueue(db, synchronous=sync)
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

        claim_times, finish_times = [], []
        for _ in range(min(n_claims, n_submits + n_batched)):
            t0 = time.perf_counter()
            job = q.claim("bench")
            claim_times.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            q.finish(job["id"], {"mp4": "x.mp4"}, worker_id="bench")
            finish_times.append(time.perf_counter() - t0)
        queued_left = q.counts()["queued"]
    finally:
        q.close()
    claim_times.sort()
    return {
        "submits_per_second": n_submits / submit_s,
        "claim_latency_seconds": statistics.median(claim_times),
        "claim_latency_p95_seconds": claim_times[int(0.95 * (len(claim_times) - 1))],
        "finish_latency_seconds": statistics.median(finish_times),
        "batched_submits_per_second": n_batched / batched_s,
        "batch": batch,
        "submits": n_submits,
        "claims": len(claim_times),
        "queued_when_claiming": queued_left + len(claim_times),
    }


def run(args):
    """Yield one JSON-able record per synchronous mode."""
    modes = [m.strip().upper() for m in str(getattr(args, "sync", "NORMAL,FULL")).split(",") if m.strip()]
    n_submits = int(getattr(args, "submits", 5000))
    n_claims = int(getattr(args, "claims", 1000))
    batch = int(getattr(args, "batch", 500))
    base = getattr(args, "dir", None)
    with tempfile.TemporaryDirectory(dir=base, prefix="ovi-bench-queue-") as tmp:
        for sync in modes:
            db = Path(tmp) / f"queue-{sync.lower()}.db"
            record = {"bench": "queue", "config": f"sqlite-wal-{sync.lower()}", "world_size": 1,
                      "synchronous": sync, "python": platform.python_version(),
                      "cpus": os.cpu_count()}
            record.update(_measure(db, sync, n_submits, n_claims, batch))
            yield record
