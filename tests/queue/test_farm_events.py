"""The server's event streams are woken by the store, not a timer: a job run by a runner in another
process (another machine, as far as the server can tell) reaches an SSE client and a Socket.IO
client, on PostgreSQL (LISTEN/NOTIFY, across a restart of the database server) and on SQLite
(another process's commit, seen by its data_version). The server's fallback rescan is switched off
here (`rescan_seconds` = a day), so an update can only arrive through a wake-up; the waits below
are liveness bounds, not timings."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import httpx
import pytest

from ovi.queue import JobQueue
from ovi.server.rest import create_app
from tests.launcher import ROOT, child_env, wait_until
from tests.server.conftest import LiveServer, connect_job_updates

LIVENESS = 120.0  # seconds: only a bound on a hang; a missed wake-up would wait a day


def _sse_events(url: str, seen: list, connected: threading.Event, stop: threading.Event) -> None:
    with httpx.Client(timeout=None) as client, client.stream("GET", f"{url}/api/events") as response:
        connected.set()
        for line in response.iter_lines():
            if line.startswith("data: "):
                seen.append(json.loads(line[len("data: "):]))
            if stop.is_set():
                return


async def _socketio_updates(url: str, submit, settled) -> list:
    client, updates, changed = await connect_job_updates(url)
    await asyncio.to_thread(submit)

    async def wait_done():
        while not settled(updates):
            changed.clear()
            await changed.wait()

    await asyncio.wait_for(wait_done(), timeout=LIVENESS)
    await client.disconnect()
    return updates


@pytest.mark.parametrize("store", ["postgres", "sqlite"])
def test_a_job_run_by_another_process_reaches_sse_and_socketio_clients(store, request, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("OVI_QUEUE_ROOT", str(tmp_path))  # the shared root, as on every machine
    pg_server = request.getfixturevalue("pg_server") if store == "postgres" else None
    url = pg_server.create_database() if pg_server else str(tmp_path / "queue.db")
    app = create_app(url, out_dir=tmp_path)
    app.state.service.rescan_seconds = 86400.0  # only a wake-up can bring an event
    producer = JobQueue(url, root=tmp_path)
    runner_log = tmp_path / "runner.log"
    job_ids = []

    def submit_and_run_elsewhere():
        if pg_server:  # the clients are connected: restart the database under the idle server,
            pg_server.restart()  # whose LISTEN connection must come back for anything to arrive
        job_ids.append(producer.submit({"prompt": "made elsewhere", "steps": 3}))
        with open(runner_log, "w") as log:  # the runner: a process of its own, its own connections
            subprocess.run(
                [sys.executable, "-m", "ovi.cli", "queue", "run", "--db", url, "--until-empty",
                 "--engine-factory", "tests.queue.fakes:factory", "--out", str(tmp_path)],
                cwd=ROOT, env=child_env(OVI_QUEUE_ROOT=str(tmp_path)), stdout=log, stderr=log,
                timeout=LIVENESS, check=True)

    def done(events: list) -> bool:
        return any(e.get("job_id") in job_ids and e["status"] == "done" for e in events)

    with LiveServer(app) as server:
        sse_seen, connected, stop = [], threading.Event(), threading.Event()
        reader = threading.Thread(target=_sse_events, args=(server.url, sse_seen, connected, stop),
                                  daemon=True)
        reader.start()
        assert connected.wait(LIVENESS)
        updates = asyncio.run(_socketio_updates(server.url, submit_and_run_elsewhere, done))
        wait_until(lambda: done(sse_seen), LIVENESS, "the SSE client to see the job done")
        stop.set()
    producer.close()
    (job_id,) = job_ids
    for seen in (updates, sse_seen):
        mine = [e for e in seen if e["job_id"] == job_id]
        kinds = [e["kind"] for e in mine]
        # Every change the other process made, in order: submitted, claimed, 3 steps, done.
        assert kinds == ["submitted", "running", "progress", "progress", "progress", "done"], kinds
        assert [e["progress"] for e in mine if e["kind"] == "progress"] == [1 / 3, 2 / 3, 1.0]
        assert mine[-1]["videoUrl"] and mine[-1]["videoUrl"].startswith("/api/videos/")
