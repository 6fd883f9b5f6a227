"""REST API over the queue: every endpoint, validation errors, path traversal, token, events."""

import json
import shutil
import signal
import socket
import subprocess

import httpx
import pytest
from fastapi.testclient import TestClient

from ovi.queue import JobQueue
from ovi.runtime import Runner
from ovi.server.rest import create_app
from tests.launcher import spawn_ovi_queue, wait_until
from tests.queue import fakes


@pytest.fixture
def q(queue_url, tmp_path):
    queue = JobQueue(queue_url, root=tmp_path)  # each store; clips under tmp_path
    yield queue
    queue.close()


@pytest.fixture
def client(q):
    with TestClient(create_app(q)) as c:
        yield c


def _run_all(q):
    Runner(q, engine_factory=fakes.factory).run(until_empty=True)


def test_health(client):
    body = client.get("/api/health").json()
    assert body["status"] == "ok" and body["jobs"]["queued"] == 0 and body["paused"] is False


def test_generate_then_get_list_and_video(client, q):
    r = client.post("/api/generate", json={"prompt": "A cat sings", "seed": 4, "steps": 2,
                                           "height_width": [64, 96], "priority": 1})
    assert r.status_code == 202
    job = r.json()
    assert job["status"] == "queued" and job["videoUrl"] is None and job["priority"] == 1
    assert job["request"] == {"prompt": "A cat sings", "seed": 4, "steps": 2,
                              "height_width": [64, 96]}
    _run_all(q)
    job = client.get(f"/api/jobs/{job['id']}").json()
    assert job["status"] == "done" and job["progress"] == 1.0
    # The `ovi generate` stem (prompt_HxW_seed_index), with the job id as the index.
    assert job["videoUrl"] == f"/api/videos/A_cat_sings_64x96_4_{job['id']}.mp4"
    video = client.get(job["videoUrl"])
    assert video.status_code == 200 and video.content.startswith(b"\x00\x00\x00\x18ftyp")
    listing = client.get("/api/jobs").json()
    assert [j["id"] for j in listing["jobs"]] == [job["id"]] and listing["counts"]["done"] == 1
    assert client.get("/api/jobs", params={"state": "queued"}).json()["jobs"] == []
    assert client.get("/api/jobs", params={"state": "nope"}).status_code == 422
    assert client.get("/api/jobs/999").status_code == 404


def test_delete_cancels(client, q):
    job_id = client.post("/api/generate", json={"prompt": "x"}).json()["id"]
    r = client.delete(f"/api/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert client.delete(f"/api/jobs/{job_id}").status_code == 409  # already cancelled
    assert client.delete("/api/jobs/999").status_code == 404
    # A running job: the cancel is a request; the job stays running until its runner stops.
    job_id = client.post("/api/generate", json={"prompt": "y"}).json()["id"]
    q.claim("w")
    body = client.delete(f"/api/jobs/{job_id}").json()
    assert body["status"] == "running" and body["cancel_requested"] is True


@pytest.mark.parametrize("body, field", [
    ({"mode": "t2v"}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   "}, "prompt"),
    ({"prompt": "x", "mode": "v2v"}, "mode"),
    ({"prompt": "x", "mode": "i2v"}, "image"),
    ({"prompt": "x", "image": "/no/such.png", "mode": "i2v"}, "image"),
    ({"prompt": "x", "steps": 0}, "steps"),
    ({"prompt": "x", "seed": "abc"}, "seed"),
    ({"prompt": "x", "out": "/etc"}, "out"),
    ({"prompt": "x", "sedd": 1}, "sedd"),
    ({"prompt": "x", "set": {"smaple_steps": 1}}, "set"),
    ({"prompt": "x", "config": "no_such_config"}, "config"),
    ({"prompt": "x", "loras": [{"pth": "a.safetensors"}]}, "loras"),
])
def test_bad_requests_are_422_naming_the_field(client, q, body, field):
    r = client.post("/api/generate", json=body)
    assert r.status_code == 422, r.text
    assert any(d["loc"][-1] == field for d in r.json()["detail"]), r.json()
    assert q.list() == []


def test_bad_json_is_422(client):
    r = client.post("/api/generate", content=b'{"prompt": "x",',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["detail"][0]["type"] == "json_invalid"
    r = client.post("/api/generate", json=["prompt", "x"])
    assert r.status_code == 422


@pytest.mark.parametrize("name", ["../queue.db", "..%2Fqueue.db", "%2e%2e%2fqueue.db",
                                  "..%5Cqueue.db", "sub%2F..%2F..%2Fetc%2Fpasswd",
                                  "%2Fetc%2Fpasswd", "queue.db", ".hidden.mp4", "nope.mp4",
                                  "a%00.mp4"])
def test_videos_never_leave_the_output_folder(client, tmp_path, name):
    (tmp_path / ".hidden.mp4").write_bytes(b"secret")
    r = client.get(f"/api/videos/{name}")
    assert r.status_code in (400, 404)
    assert b"SQLite" not in r.content and b"secret" not in r.content


def test_symlink_out_of_the_folder_is_refused(client, tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-outside.mp4"
    outside.write_bytes(b"secret")
    (tmp_path / "link.mp4").symlink_to(outside)
    assert client.get("/api/videos/link.mp4").status_code == 404


def test_token_is_required_when_configured(q):
    with TestClient(create_app(q, token="s3cret")) as c:
        assert c.get("/api/health").status_code == 401
        assert c.get("/api/jobs", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert c.post("/api/generate", json={"prompt": "x"}).status_code == 401
        assert q.list() == []
        ok = {"Authorization": "Bearer s3cret"}
        assert c.get("/api/health", headers=ok).status_code == 200
        assert c.post("/api/generate", json={"prompt": "x"}, headers=ok).status_code == 202
        assert c.get("/api/jobs/1", params={"access_token": "s3cret"}).status_code == 200
        assert c.delete("/api/jobs/1").status_code == 401


def _sse(response):
    events, current = [], {}
    for line in response.iter_lines():
        if line.startswith("data: "):
            current = json.loads(line[6:])
        elif line == "" and current:
            events.append(current)
            current = {}
    return events


def test_job_events_stream_progress_until_done(client, q):
    job_id = client.post("/api/generate", json={"prompt": "A cat", "steps": 3}).json()["id"]
    runner = Runner(q, engine_factory=fakes.factory, poll_interval=0.05).start()
    try:
        with client.stream("GET", f"/api/jobs/{job_id}/events", params={"since": 0}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = _sse(r)
    finally:
        assert runner.stop(timeout=30)
    assert events[0]["kind"] == "snapshot"
    for e in events:
        assert {"id", "status", "progress", "videoUrl", "error"} <= set(e)
    assert [e["progress"] for e in events if e["kind"] == "progress"] == \
        pytest.approx([1 / 3, 2 / 3, 1.0])
    assert events[-1]["status"] == "done"
    assert events[-1]["videoUrl"] == f"/api/videos/a_cat_job{job_id}.mp4"


def test_global_events_stream_with_timeout(client, q):
    client.post("/api/generate", json={"prompt": "a"})
    with client.stream("GET", "/api/events", params={"since": 0, "timeout": 0.5}) as r:
        events = _sse(r)
    assert [(e["id"], e["status"], e["kind"]) for e in events] == [(1, "queued", "submitted")]
    assert client.get("/api/events", params={"job": 42}).status_code == 404


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ovi_queue_serve_runs_on_localhost_with_a_runner(tmp_path):
    db, port = str(tmp_path / "queue.db"), _free_port()
    server = spawn_ovi_queue("serve", "--db", db, "--port", str(port), "--token", "t",
                             "--run", "--engine-factory", "tests.queue.fakes:factory")
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer t"}

    def up():
        try:
            return httpx.get(f"{base}/api/health", headers=auth, timeout=1).status_code == 200
        except httpx.TransportError:
            assert server.poll() is None, server.stderr.read()
            return False

    try:
        wait_until(up, 60, "the server to answer /api/health")
        job = httpx.post(f"{base}/api/generate", json={"prompt": "hi"}, headers=auth).json()
        done = wait_until(lambda: (j := httpx.get(f"{base}/api/jobs/{job['id']}",
                                                  headers=auth).json())["status"] == "done" and j,
                          60, "the served runner to finish the job")
        assert httpx.get(base + done["videoUrl"], headers=auth).status_code == 200
    finally:
        server.terminate()
        try:
            _, err = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, err = server.communicate(timeout=30)
    # uvicorn re-raises the SIGTERM it caught once it has shut down, with the default handler back: the
    # process ends by the signal (tests/runtime/test_shutdown.py pins the same for `serve --run`).
    assert server.returncode == -signal.SIGTERM, (server.returncode, err[-2000:])


def test_a_clip_on_the_shared_root_is_served_where_the_root_is_mounted(queue_url, tmp_path):
    """A runner on one machine finishes a clip under its mount of the root; a server whose root is
    another mount of the same share (here: a copy of the files) links and serves it."""
    runner_root, server_root = tmp_path / "runner", tmp_path / "server"
    if queue_url.startswith("postgresql"):
        runner_q, url = JobQueue(queue_url, root=runner_root), queue_url
    else:
        runner_root.mkdir()
        runner_q = JobQueue(runner_root / "queue.db")
    a = runner_q.submit({"prompt": "x", "steps": 2})
    Runner(runner_q, engine_factory=fakes.factory).run(until_empty=True)
    mp4 = runner_q.get(a)["result"]["mp4"]
    assert mp4.startswith(str(runner_root))
    runner_q.close()
    shutil.copytree(runner_root, server_root)
    server_q = (JobQueue(url, root=server_root) if queue_url.startswith("postgresql")
                else JobQueue(server_root / "queue.db"))
    with TestClient(create_app(server_q)) as c:
        job = c.get(f"/api/jobs/{a}").json()
        assert job["videoUrl"] == f"/api/videos/{mp4.rsplit('/', 1)[1]}"
        assert not job["result"]["mp4"].startswith("/")  # shown relative to the output folder
        video = c.get(job["videoUrl"])
        assert video.status_code == 200 and video.content == (server_root / job["result"]["mp4"]).read_bytes()
    server_q.close()
