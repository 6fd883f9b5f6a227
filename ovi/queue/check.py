"""`check_queue(url)`: what `ovi doctor --queue URL` reports about a queue database."""

from __future__ import annotations

from ovi.queue.jobqueue import JobQueue, QueuePolicy
from ovi.queue.store import SQLiteStore, redact_url


def check_queue(url: str, *, heartbeat_timeout: float = 60.0) -> dict:
    """Open the queue (reachable, ours, migrated — else InputError naming the problem) and report:
    store, schema version, job counts, and the runners seen (live = heartbeat within the timeout)."""
    with JobQueue(url, policy=QueuePolicy(heartbeat_timeout=heartbeat_timeout)) as q:
        now = q.store.now()
        runners = q.runners()
        return {
            "queue": redact_url(url),
            "store": "sqlite" if isinstance(q.store, SQLiteStore) else "postgres",
            "schema_version": q.store.schema_version(),
            "jobs": q.counts(),
            "paused": q.paused,
            "runners": [{"label": r["label"], "host": r["host"], "serves": r["serves"],
                         "current_job": r["current_job"], "live": r["live"],
                         "heartbeat_age_s": round(now - r["heartbeat_at"], 1)} for r in runners],
        }


def format_queue_report(report: dict) -> str:
    live = [r for r in report["runners"] if r["live"]]
    jobs = ", ".join(f"{n} {s}" for s, n in report["jobs"].items() if n) or "no jobs"
    lines = [f"Queue {report['queue']}: {report['store']} schema v{report['schema_version']}, {jobs}"
             f"{' (paused)' if report['paused'] else ''}; {len(live)} live runner(s) of "
             f"{len(report['runners'])} seen"]
    for r in report["runners"]:
        serves = ",".join(r["serves"]) if r["serves"] is not None else "any"
        lines.append(f"  {r['label']} on {r['host']}: serves {serves}, job {r['current_job'] or '-'}, "
                     f"heartbeat {r['heartbeat_age_s']}s ago{'' if r['live'] else ' (silent)'}")
    return "\n".join(lines)
