"""How soon a change made by another process reaches the server's SSE stream: SQLite vs PostgreSQL,
with the store's wake-up (what the server does) vs the timer loop it replaced (read the log, then
sleep 0.05 s doubling to 0.5 s while idle). Another process submits jobs `--gap` seconds apart; latency = when
the SSE client got the `submitted` event minus the event's time. Appends JSON lines to
experiments/results/farm_events.jsonl.

    OMP_NUM_THREADS=1 .venv/bin/python experiments/farm_events.py --events 40 --gap 0.13
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results" / "farm_events.jsonl"
OLD_POLL_SECONDS = 0.5  # the idle read interval of the server's event loop before the wake-up


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(url: str, root: Path, mode: str, events: int, gap: float) -> dict:
    import httpx
    import uvicorn

    from ovi.server.rest import create_app

    app = create_app(url, out_dir=root)
    service = app.state.service
    if mode == "poll":  # the replaced loop (ApiService.follow before the wake-up), as it was
        async def polling_follow(since=None, *, job_id=None, timeout=None):
            cursor = since if since is not None else await asyncio.to_thread(service.queue.last_event_id)
            wait = 0.05
            while not service.stopping.is_set():
                found = await asyncio.to_thread(service.queue.events, cursor, job_id=job_id)
                for event in found:
                    cursor = event["seq"]
                    yield service.event_json(event)
                if found:
                    wait = 0.05
                    continue
                yield None
                await asyncio.sleep(wait)
                wait = min(wait * 2, OLD_POLL_SECONDS)
        service.follow = polling_follow
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    got: list[tuple[float, dict]] = []
    connected = threading.Event()

    def read():
        with httpx.Client(timeout=None) as client, client.stream(
                "GET", f"http://127.0.0.1:{port}/api/events") as response:
            connected.set()
            for line in response.iter_lines():
                if line.startswith("data: "):
                    got.append((time.time(), json.loads(line[6:])))
                if sum(e["kind"] == "submitted" for _, e in got) >= events:
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    connected.wait(30)
    time.sleep(1.0)  # the stream is idle, as it is between jobs
    code = ("import sys, time\nfrom ovi.queue import JobQueue\nq = JobQueue(sys.argv[1])\n"
            "for i in range(int(sys.argv[2])):\n    q.submit({'prompt': f'p{i}'})\n"
            "    time.sleep(float(sys.argv[3]))\n")
    subprocess.run([sys.executable, "-c", code, url, str(events), str(gap)], check=True, cwd=ROOT,
                   env={**os.environ, "OVI_QUEUE_ROOT": str(root)})
    reader.join(60)
    server.should_exit = True
    thread.join(30)
    latencies = sorted((received - e["time"]) * 1000 for received, e in got if e["kind"] == "submitted")
    return {"bench": "farm_events", "store": "postgres" if url.startswith("postgresql") else "sqlite",
            "mode": mode, "events": len(latencies), "gap_s": gap,
            "median_ms": round(statistics.median(latencies), 1),
            "p95_ms": round(latencies[int(0.95 * (len(latencies) - 1))], 1),
            "max_ms": round(latencies[-1], 1), "cpus": os.cpu_count()}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.13, help="seconds between two submits")
    args = parser.parse_args()
    from ovi.queue.pgtemp import TempPostgres

    with TempPostgres() as pg, tempfile.TemporaryDirectory() as tmp:
        records = []
        for mode in ("wake", "poll"):
            for store in ("sqlite", "postgres"):
                root = Path(tmp) / f"{store}-{mode}"
                root.mkdir()
                url = str(root / "queue.db") if store == "sqlite" else pg.create_database()
                records.append(measure(url, root, mode, args.events, args.gap))
                print(json.dumps(records[-1]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
