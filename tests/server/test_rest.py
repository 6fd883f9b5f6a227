"""REST rules: no server paths, per-clip fields only, limits, uploads, job routes, the seed's body,
and the WebSocket event stream."""

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from starlette.websockets import WebSocketDisconnect

from ovi.runtime import Runner
from ovi.server.limits import ServerLimits
from ovi.server.rest import create_app
from tests.queue import fakes


def _png(size=(64, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


@pytest.fixture
def folders(tmp_path):
    """The server's folders beside the database, with one named config and one LoRA."""
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "quick.yaml").write_text("model_name: tiny\nsample_steps: 2\n")
    (tmp_path / "loras").mkdir()
    (tmp_path / "loras" / "style.safetensors").write_bytes(b"lora")
    return tmp_path


def _client(queue, **kwargs):
    return TestClient(create_app(queue, **kwargs))


def _loc(response):
    return response.json()["detail"][0]["loc"]


@pytest.mark.parametrize("make_body, loc", [
    (lambda t: {"ckpt_dir": str(t / "ckpt")}, ["ckpt_dir"]),
    (lambda t: {"set": {"ckpt_dir": str(t / "ckpt")}}, ["set"]),
    (lambda t: {"engine": {"sp_size": 2}}, ["engine"]),
    (lambda t: {"sp_size": 2}, ["sp_size"]),
    (lambda t: {"output_dir": str(t / "out")}, ["output_dir"]),
    (lambda t: {"out": str(t / "out")}, ["out"]),
    (lambda t: {"mode": "i2v", "image": str(t / "cat.png")}, ["image"]),  # exists on the server
    (lambda t: {"mode": "i2v", "image_path": "../cat.png"}, ["image_path"]),
    (lambda t: {"config": "/etc/passwd"}, ["config"]),
    (lambda t: {"config": str(t / "configs" / "quick.yaml")}, ["config"]),  # a path, even to ours
    (lambda t: {"loras": [str(t / "loras" / "style.safetensors")]}, ["loras"]),
    (lambda t: {"loras": ["../loras/style:0.5"]}, ["loras"]),
    (lambda t: {"options": {"ckpt_dir": str(t / "ckpt")}}, ["options", "ckpt_dir"]),
    (lambda t: {"options": {"duration": "10s"}}, ["options", "duration"]),
])
def test_server_settings_and_paths_are_422_and_nothing_is_written(queue, folders, make_body, loc):
    (folders / "cat.png").write_bytes(_png())
    before = sorted(p.relative_to(folders) for p in folders.rglob("*") if "queue.db" not in p.name)
    with _client(queue) as client:
        r = client.post("/api/generate", json={"prompt": "a cat", **make_body(folders)})
    assert r.status_code == 422, r.text
    assert _loc(r) == ["body", *loc], r.json()
    assert "root:" not in r.text  # /etc/passwd is never read
    assert queue.list() == []
    after = sorted(p.relative_to(folders) for p in folders.rglob("*") if "queue.db" not in p.name)
    assert after == before  # no checkpoint tree, output folder or upload appeared


def test_names_from_the_servers_folders_are_accepted(queue, folders):
    with _client(queue) as client:
        assert client.get("/api/configs").json()["configs"][0] == "quick"
        assert client.get("/api/loras").json() == {"loras": ["style"]}
        r = client.post("/api/generate", json={"prompt": "a cat", "config": "quick",
                                               "loras": ["style:0.5"]})
    assert r.status_code == 202, r.text
    assert r.json()["request"]["config"] == "quick"
    assert r.json()["request"]["loras"][0]["path"] == "style"


@pytest.mark.parametrize("body, loc, limit", [
    ({"steps": 11}, "steps", "max_steps"),
    ({"height_width": [160, 128]}, "height_width", "max_pixels"),
    ({"prompt": "x" * 41}, "prompt", "max_prompt_chars"),
    ({"negative_prompt": "x" * 41}, "negative_prompt", "max_prompt_chars"),
    ({"n": 3}, "n", "max_clips"),
    ({"config": "slow"}, "steps", "max_steps"),  # the config's default steps count too
])
def test_limits_are_422_naming_the_limit(queue, folders, body, loc, limit):
    (folders / "configs" / "slow.yaml").write_text("model_name: tiny\nsample_steps: 50\n")
    limits = ServerLimits(max_steps=10, max_pixels=128 * 128, max_prompt_chars=40, max_clips=2)
    with _client(queue, limits=limits) as client:
        r = client.post("/api/generate", json={"prompt": "a cat", **body})
        assert r.status_code == 422, r.text
        detail = r.json()["detail"][0]
        assert detail["loc"][-1] == loc and limit in detail["msg"] and detail["type"] == "limit_exceeded"
        assert client.get("/api/health").json()["limits"]["max_steps"] == 10
    assert queue.list() == []


def test_frames_over_the_limit_are_422(queue, folders):
    with _client(queue, limits=ServerLimits(max_frames=16)) as client:  # tiny clips have 17 frames
        r = client.post("/api/generate", json={"prompt": "a cat", "config": "quick"})
    assert r.status_code == 422 and _loc(r) == ["body", "config"] and "max_frames" in r.text


def test_uploads_by_multipart_and_base64(queue, folders):
    png = _png()
    with _client(queue, limits=ServerLimits(max_upload_bytes=4096)) as client:
        r = client.post("/api/uploads", files={"file": ("cat.png", png, "image/png")})
        assert r.status_code == 201, r.text
        name = r.json()["name"]
        assert name.endswith(".png") and r.json()["width"] == 64
        assert (folders / "uploads" / name).read_bytes() == png
        job = client.post("/api/generate", json={"prompt": "a cat", "mode": "i2v", "image": name})
        assert job.status_code == 202 and job.json()["request"]["image"] == name
        # The same image inside the request, base64: stored under the same name.
        r = client.post("/api/uploads", json={"image": _data_url(png)})
        assert r.status_code == 201 and r.json()["name"] == name
        other = _png((32, 32))
        job = client.post("/api/generate", json={"prompt": "a dog", "mode": "i2v",
                                                 "image": _data_url(other)})
        assert job.status_code == 202, job.text
        assert (folders / "uploads" / job.json()["request"]["image"]).read_bytes() == other
        uploads = sorted(p.name for p in (folders / "uploads").iterdir())
        # Too large: by multipart, by base64 in a request, and streamed without a length.
        big = png + b"\x00" * 5000
        assert client.post("/api/uploads", files={"file": ("big.png", big)}).status_code == 413
        r = client.post("/api/generate", json={"prompt": "a", "mode": "i2v", "image": _data_url(big)})
        assert r.status_code == 413
        r = client.post("/api/uploads", content=(b"x" * 1024 for _ in range(100)),  # over the body limit
                        headers={"content-type": "application/json"})
        assert r.status_code == 413
        # Not an image: refused by PIL, nothing stored.
        r = client.post("/api/uploads", files={"file": ("x.png", b"not a png at all")})
        assert r.status_code == 422 and "PIL" in r.text
        r = client.post("/api/generate", json={"prompt": "a", "mode": "i2v",
                                               "image": "data:image/png;base64,AAAA"})
        assert r.status_code == 422 and _loc(r) == ["body", "image"]
    assert sorted(p.name for p in (folders / "uploads").iterdir()) == uploads
    assert len(queue.list()) == 2


def test_n_clips_become_n_jobs_and_only_a_json_body_is_taken(queue, folders):
    body = b'{"prompt": "a cat", "n": 2, "seed": 4}'
    with _client(queue) as client:
        # Without a JSON content type (curl -d, a web form, text/plain): 415, nothing queued.
        for headers in ({}, {"content-type": "text/plain"},
                        {"content-type": "application/x-www-form-urlencoded"}):
            r = client.post("/api/generate", content=body, headers=headers)
            assert r.status_code == 415 and "application/json" in r.json()["detail"], r.text
        assert queue.list() == []
        r = client.post("/api/generate", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 202, r.text
        assert [queue.get(i)["request"]["seed"] for i in r.json()["job_ids"]] == [4, 5]
        r = client.post("/api/generate", json={"id": "one", "prompt": "a cat", "n": 2})
        assert r.status_code == 422 and _loc(r) == ["body", "n"]
        assert client.post("/api/generate", content=b"{nope",
                           headers={"content-type": "application/json"}).status_code == 422


def test_pause_resume_move_and_retry_routes(queue, folders):
    with _client(queue) as client:
        ids = [client.post("/api/generate", json={"prompt": p}).json()["id"] for p in "abc"]
        assert client.post("/api/pause").json() == {"paused": True} and queue.paused
        assert client.get("/api/health").json()["paused"] is True
        r = client.post(f"/api/jobs/{ids[2]}/move", json={"before": ids[0]})
        assert r.status_code == 200 and [j["id"] for j in queue.list("queued")] == [ids[2], ids[0], ids[1]]
        r = client.post(f"/api/jobs/{ids[1]}/move", json={"priority": 5})
        assert r.json()["priority"] == 5 and queue.list("queued")[0]["id"] == ids[1]
        assert client.post(f"/api/jobs/{ids[0]}/move", json={"before": 1, "after": 2}).status_code == 422
        assert client.post(f"/api/jobs/{ids[0]}/move", json={"before": 999}).status_code == 404
        assert client.post("/api/resume").json() == {"paused": False} and not queue.paused
        assert client.post(f"/api/jobs/{ids[0]}/retry").status_code == 409  # queued: nothing to retry
        client.delete(f"/api/jobs/{ids[0]}")
        r = client.post(f"/api/jobs/{ids[0]}/retry")
        assert r.status_code == 200 and r.json()["status"] == "queued"
        assert client.post(f"/api/jobs/{ids[0]}/move", json={"after": ids[2]}).status_code == 200
        client.delete(f"/api/jobs/{ids[1]}")
        assert client.post(f"/api/jobs/{ids[1]}/move", json={"priority": 1}).status_code == 409
        assert client.post("/api/jobs/999/retry").status_code == 404


def test_the_seed_body_shape_with_a_client_id(queue, folders):
    body = {"id": "unique-id", "mode": "t2v", "prompt": "A cat sings",
            "options": {"videoGuidanceScale": 4.5, "sampleSteps": 3, "resolution": "64x96",
                        "seed": 7, "solverName": "euler"}}
    with _client(queue) as client:
        r = client.post("/api/generate", json=body)
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["id"] == "unique-id" and isinstance(job["job_id"], int)
        assert job["request"] == {"prompt": "A cat sings", "mode": "t2v", "video_guidance_scale": 4.5,
                                  "steps": 3, "height_width": [64, 96], "seed": 7, "solver": "euler"}
        assert client.post("/api/generate", json=body).status_code == 409
        r = client.post("/api/generate", json={**body, "id": "other", "options": {"frobnicate": 1}})
        assert r.status_code == 422 and _loc(r) == ["body", "options", "frobnicate"]
        r = client.post("/api/generate", json={**body, "id": "x", "options": {"prompt": "again"}})
        assert r.status_code == 422 and _loc(r) == ["body", "options", "prompt"]
        r = client.post("/api/generate", json={**body, "id": "a/b"})
        assert r.status_code == 422 and _loc(r) == ["body", "id"]
        # A refused id stores nothing, not even the image that came with the request.
        image = {"mode": "i2v", "image": _data_url(_png())}
        assert client.post("/api/generate", json={**body, **image, "id": "a b"}).status_code == 422
        assert client.post("/api/generate", json={**body, **image}).status_code == 409
        assert not (folders / "uploads").exists()
        Runner(queue, engine_factory=fakes.factory).run(until_empty=True)
        done = client.get("/api/jobs/unique-id").json()
        assert done["status"] == "done" and done["videoUrl"].endswith(f"_{job['job_id']}.mp4")
        assert client.get(f"/api/jobs/{job['job_id']}").json()["id"] == "unique-id"
        with client.stream("GET", "/api/jobs/unique-id/events", params={"since": 0}) as stream:
            lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
        assert all('"id": "unique-id"' in line for line in lines) and '"status": "done"' in lines[-1]
        assert client.delete("/api/jobs/unique-id").status_code == 409  # already done
        assert client.get("/api/jobs/nope").status_code == 404


def test_websocket_streams_a_jobs_events(queue, folders):
    with _client(queue) as client:
        job_id = client.post("/api/generate", json={"prompt": "A cat", "steps": 3}).json()["id"]
        runner = Runner(queue, engine_factory=fakes.factory, poll_interval=0.05).start()
        try:
            with client.websocket_connect(f"/api/ws?job={job_id}&since=0") as ws:
                events = [ws.receive_json()]
                while events[-1]["status"] not in ("done", "failed"):
                    events.append(ws.receive_json())
        finally:
            assert runner.stop(timeout=30)
    assert events[0]["kind"] == "snapshot"
    assert [e["kind"] for e in events[1:]] == ["submitted", "running", "progress", "progress",
                                               "progress", "done"], events
    assert all({"id", "status", "progress", "videoUrl", "error"} <= set(e) for e in events)
    assert events[-1]["videoUrl"] == f"/api/videos/a_cat_job{job_id}.mp4"


def test_token_holds_on_websocket_and_new_routes(queue, folders):
    with _client(queue, token="s3cret") as client:
        with pytest.raises(WebSocketDisconnect) as refused:
            with client.websocket_connect("/api/ws"):
                pass
        assert refused.value.code == 1008
        with client.websocket_connect("/api/ws?access_token=s3cret") as ws:
            client.post("/api/pause", headers={"Authorization": "Bearer s3cret"})
            assert ws.receive_json()["status"] == "paused"
        for method, path in [("post", "/api/uploads"), ("post", "/api/pause"), ("get", "/api/configs"),
                             ("post", "/api/jobs/1/retry"), ("post", "/api/jobs/1/move")]:
            assert getattr(client, method)(path).status_code == 401, path
