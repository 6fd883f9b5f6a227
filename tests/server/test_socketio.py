"""Socket.IO as the seed fork documented it, with real clients (python-socketio's AsyncClient and the
npm socket.io-client under node): submit_job -> job_update up to done with a videoUrl that downloads
a playable mp4 (real tiny model), cancel_job, and the REST token and path rules."""

import asyncio
import io
import json
import subprocess

import av
import httpx
import socketio

from tests.server.conftest import CONFIG, TOKEN, connect_job_updates

SEED_FIELDS = {"id", "status", "progress", "videoUrl", "error"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _assert_playable_mp4(data: bytes) -> None:
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video and container.streams.audio
        frames = list(container.decode(video=0))
        assert len(frames) > 1 and frames[0].width > 0


def _check_updates(updates: list, job_id: str, server) -> dict:
    """The job's updates: the seed's fields on every one, progress steps, and a final done whose
    videoUrl downloads a playable mp4. Returns the done update."""
    mine = [u for u in updates if u["id"] == job_id]
    assert all(SEED_FIELDS <= set(u) for u in mine)
    assert [u["status"] for u in mine][-1] == "done", mine[-1]
    assert [u["progress"] for u in mine if u["kind"] == "progress"] == [1 / 3, 2 / 3, 1.0]
    done = mine[-1]
    video = httpx.get(server.url + done["videoUrl"], headers=AUTH, timeout=30)
    assert video.status_code == 200
    _assert_playable_mp4(video.content)
    return done


async def _python_client(url: str) -> dict:
    stranger = socketio.AsyncClient(reconnection=False)
    try:
        await stranger.connect(url)
        refused = None
    except socketio.exceptions.ConnectionError as exc:
        refused = str(exc)
    client, updates, changed = await connect_job_updates(url, auth={"token": TOKEN})
    prompt = "A blue triangle moves down. <AUDCAP>a middle tone<ENDAUDCAP>"
    acks = {
        "submitted": await client.call("submit_job", {"id": "py-1", "mode": "t2v", "prompt": prompt,
                                                      "options": {"config": CONFIG, "seed": 9}}, timeout=30),
        "other": await client.call("submit_job", {"id": "py-2", "prompt": "A yellow circle.",
                                                  "options": {"config": CONFIG, "steps": 100}}, timeout=30),
        "cancelled": await client.call("cancel_job", {"id": "py-2"}, timeout=30),
        "duplicate": await client.call("submit_job", {"id": "py-1", "prompt": "again",
                                                      "options": {"config": CONFIG}}, timeout=30),
        "server_path": await client.call("submit_job", {"prompt": "x", "config": "/etc/passwd"}, timeout=30),
        "engine_setting": await client.call("submit_job", {"prompt": "x", "options": {"sp_size": 2}},
                                            timeout=30),
    }

    def settled(job_id):
        return any(u["id"] == job_id and u["status"] in ("done", "failed", "cancelled") for u in updates)

    async def wait_settled():
        while not (settled("py-1") and settled("py-2")):
            changed.clear()
            await changed.wait()

    await asyncio.wait_for(wait_settled(), timeout=120)
    await client.disconnect()
    return {"refused": refused, "acks": acks, "updates": updates}


def test_python_socketio_client(live_server):
    seen = asyncio.run(_python_client(live_server.url))
    assert seen["refused"] is not None  # no token, no connection
    acks = seen["acks"]
    assert acks["submitted"]["ok"] and acks["submitted"]["job"]["id"] == "py-1"
    assert acks["submitted"]["job"]["status"] == "queued"
    assert acks["cancelled"]["ok"] and acks["cancelled"]["job"]["id"] == "py-2"
    assert acks["duplicate"] == {"ok": False, "status": 409, "error": acks["duplicate"]["error"],
                                 "detail": acks["duplicate"]["error"]}
    assert acks["server_path"]["status"] == 422
    assert acks["server_path"]["detail"][0]["loc"] == ["body", "config"]
    assert acks["engine_setting"]["detail"][0]["loc"] == ["body", "options", "sp_size"]
    done = _check_updates(seen["updates"], "py-1", live_server)
    assert isinstance(done["job_id"], int) and done["error"] is None
    assert [u["status"] for u in seen["updates"] if u["id"] == "py-2"][-1] == "cancelled"
    job = httpx.get(f"{live_server.url}/api/jobs/py-1", headers=AUTH).json()
    assert job["request"] == {"prompt": "A blue triangle moves down. <AUDCAP>a middle tone<ENDAUDCAP>",
                              "mode": "t2v", "config": CONFIG, "seed": 9}


def test_node_socketio_client(live_server, socketio_client_js):
    node, script = socketio_client_js
    done = subprocess.run([node, str(script), live_server.url, TOKEN, CONFIG], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["refused"]["connected"] is False and "token" in seen["refused"]["error"]
    assert seen["submitted"]["ok"] and seen["submitted"]["job"]["id"] == "node-1"
    assert seen["cancelled"]["ok"] and seen["settled"] == {"node-1": "done", "node-2": "cancelled"}
    assert seen["serverPath"]["status"] == 422
    assert seen["serverPath"]["detail"][0]["loc"] == ["body", "options", "image"]
    assert seen["engineSetting"]["detail"][0]["loc"] == ["body", "options", "ckpt_dir"]
    _check_updates(seen["updates"], "node-1", live_server)
