"""The holes of issue 20, one regression test per bullet (REST, WebSocket and Socket.IO side; the CLI
side is tests/test_cli_errors.py): bad text and integers are refused by name and stored nowhere, a
stored record that cannot be sent is shown as damaged, a web page cannot drive the server, and
clients never see server paths or memory addresses."""

import asyncio
import json
import sqlite3

import pytest
import socketio
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from ovi.runtime import Runner
from ovi.server.rest import create_app
from tests.queue import fakes

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
BIG = 2**63  # one past SQLite's int64


def _post_json(client, url, body, **headers):
    """JSON as a client may send it: ensure_ascii escapes, so a lone surrogate travels as \\ud800."""
    return client.post(url, content=json.dumps(body).encode(),
                       headers={"content-type": "application/json", **headers})


def _bridge(app):
    from ovi.server.sio import SocketIOBridge
    return SocketIOBridge(app.state.service)


# -- one character poisons the list ----------------------------------------------------------------
@pytest.mark.parametrize("body, loc", [
    ({"prompt": "x\ud800"}, ["body", "prompt"]),
    ({"prompt": "a cat", "negative_prompt": "\udcff"}, ["body", "negative_prompt"]),
    ({"prompt": "a\x00cat"}, ["body", "prompt"]),
    ({"prompt": "a\x1b[31mcat"}, ["body", "prompt"]),
    ({"id": "a\ud800", "prompt": "a cat"}, ["body", "id"]),
    ({"prompt": "a cat", "x\ud800": 1}, ["body", "x\\ud800"]),  # echoed escaped
])
def test_bad_text_is_422_and_not_stored(queue, body, loc):
    with TestClient(create_app(queue)) as client:
        good = client.post("/api/generate", json={"prompt": "a dog\twith\nlines"})
        assert good.status_code == 202  # tab and newlines are text
        r = _post_json(client, "/api/generate", body)
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == loc
        assert [j["id"] for j in queue.list()] == [good.json()["job_id"]]
        for url in ("/api/jobs", "/api/jobs?state=queued", f"/api/jobs/{good.json()['id']}"):
            assert client.get(url).status_code == 200, url
        ack = asyncio.run(_bridge(client.app).submit_job("sid", body))
        assert ack["ok"] is False and ack["status"] == 422 and ack["detail"][0]["loc"] == loc
    assert len(queue.list()) == 1


def test_a_stored_record_that_cannot_be_sent_is_shown_damaged(queue):
    good = queue.submit({"prompt": "a dog"})
    bad = queue.submit({"prompt": "x"})
    nan = queue.submit({"prompt": "y"})
    with sqlite3.connect(queue.path) as db:  # written before the intake refused them
        db.execute("UPDATE jobs SET request = ? WHERE id = ?", ('{"prompt": "x\\ud800"}', bad))
        db.execute("UPDATE jobs SET request = ? WHERE id = ?", ('{"prompt": "y", "shift": NaN}', nan))
    with TestClient(create_app(queue)) as client:
        for url in ("/api/jobs", "/api/jobs?state=queued"):
            r = client.get(url)
            assert r.status_code == 200, r.text
            jobs = {j["job_id"]: j for j in r.json()["jobs"]}
            assert jobs[good]["request"] == {"prompt": "a dog"} and "damaged" not in jobs[good]
            assert jobs[bad]["damaged"] is True and jobs[bad]["request"] is None
            assert jobs[nan]["damaged"] is True and jobs[nan]["status"] == "queued"
        r = client.get(f"/api/jobs/{bad}")
        assert r.status_code == 200 and r.json()["damaged"] is True
        assert client.delete(f"/api/jobs/{bad}").json()["status"] == "cancelled"  # still actionable
        with client.stream("GET", "/api/events", params={"since": 0, "timeout": 0.5}) as stream:
            assert stream.status_code == 200
            assert sum(1 for line in stream.iter_lines() if line.startswith("data: ")) >= 3


# -- integers without bounds -----------------------------------------------------------------------
@pytest.mark.parametrize("method, url, body, status", [
    ("post", "/api/generate", {"prompt": "a", "priority": BIG}, 422),
    ("post", "/api/generate", {"prompt": "a", "priority": -BIG - 1}, 422),
    ("post", "/api/generate", {"prompt": "a", "priority": 1.5}, 422),
    ("post", "/api/generate", {"prompt": "a", "resolution": "\u00b2x\u00b2"}, 422),
    ("post", "/api/generate", {"prompt": "a", "steps": 10**30}, 422),
    ("get", f"/api/jobs/{BIG}", None, 404),  # digits: a client id could read so; no such job
    ("get", "/api/jobs/\u00b2", None, 422),
    ("get", "/api/jobs/\u0661", None, 422),  # Arabic-Indic one: not job 1
    ("delete", f"/api/jobs/{2**64}", None, 404),
    ("delete", "/api/jobs/-5", None, 404),
    ("post", "/api/jobs/1/move", {"before": BIG}, 422),
    ("post", "/api/jobs/1/move", {"priority": BIG}, 422),
    ("post", "/api/jobs/1/move", {"after": "\u0661"}, 422),
    ("get", f"/api/jobs?offset={BIG}", None, 422),
    ("get", f"/api/events?since={BIG}", None, 422),
    ("get", f"/api/events?job={BIG}", None, 404),
    ("get", "/api/events?job=a%20b", None, 422),
    ("get", f"/api/jobs/1/events?since={2**70}", None, 422),
])
def test_integers_out_of_range_or_not_ascii_are_refused(queue, method, url, body, status):
    first = queue.submit({"prompt": "first"})
    with TestClient(create_app(queue)) as client:
        kwargs = {"json": body} if body is not None else {}
        r = getattr(client, method)(url, **kwargs) if method != "delete" else client.delete(url)
        assert r.status_code == status, r.text
        assert client.get("/api/jobs").status_code == 200
    assert [j["id"] for j in queue.list()] == [first] and queue.get(first)["state"] == "queued"


@pytest.mark.parametrize("header", [str(BIG), "\u00b2".encode(), "\u0661".encode(), "-1", "1e3"])
def test_a_bad_last_event_id_is_400(queue, header):
    with TestClient(create_app(queue)) as client:
        r = client.get("/api/events", params={"timeout": 0.2}, headers={"Last-Event-ID": header})
        assert r.status_code == 400 and "Last-Event-ID" in r.json()["detail"], r.text
        with client.stream("GET", "/api/events", params={"timeout": 0.2},
                           headers={"Last-Event-ID": "0"}) as ok:
            assert ok.status_code == 200


def test_websocket_and_socketio_refuse_bad_ids_with_an_answer(queue):
    with TestClient(create_app(queue)) as client:
        for query in (f"job={BIG}", f"since={BIG}", "job=\u00b2"):
            with pytest.raises(WebSocketDisconnect) as refused:
                with client.websocket_connect(f"/api/ws?{query}"):
                    pass
            assert refused.value.code in (1008, 1000), query
        bridge = _bridge(client.app)
        for ref in (BIG, 2**64, "\u0661", {"nested": [1]}, None, 1.5, True):
            ack = asyncio.run(bridge.cancel_job("sid", {"id": ref}))
            assert ack["ok"] is False and ack["status"] == 422, (ref, ack)


# -- seeds -----------------------------------------------------------------------------------------
def test_seeds_are_bounded_by_what_the_generator_takes(queue):
    top = 2**64 - 1
    with TestClient(create_app(queue)) as client:
        assert client.post("/api/generate", json={"prompt": "a", "seed": 2**64}).status_code == 422
        assert client.post("/api/generate", json={"prompt": "a", "seed": -1}).status_code == 422
        r = client.post("/api/generate", json={"prompt": "a", "seed": top, "n": 2})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "seed"]
        r = client.post("/api/generate", json={"prompt": "a", "seed": top})
        assert r.status_code == 202 and r.json()["request"]["seed"] == top
    import torch
    torch.Generator("cpu").manual_seed(top)  # the largest accepted seed runs
    with pytest.raises((RuntimeError, ValueError)):
        torch.Generator("cpu").manual_seed(top + 1)


# -- a web page cannot drive the server ------------------------------------------------------------
def _guarded_client(queue, **kwargs):
    from ovi.server.browser import allowed_hosts_for
    hosts, any_ip = allowed_hosts_for("127.0.0.1")
    app = create_app(queue, token=TOKEN, allowed_hosts=hosts, any_ip_host=any_ip, **kwargs)
    return TestClient(app, base_url="http://127.0.0.1:8000")


def test_cross_origin_and_non_json_requests_are_refused(queue):
    evil = {"Origin": "http://evil.example"}
    with _guarded_client(queue) as client:
        r = client.post("/api/generate", content=b'{"prompt": "x"}',
                        headers={**AUTH, **evil, "content-type": "text/plain"})
        assert r.status_code == 403
        r = client.post("/api/pause", content=b"a=1",
                        headers={**AUTH, **evil, "content-type": "application/x-www-form-urlencoded"})
        assert r.status_code == 403 and not queue.paused
        r = client.post("/api/generate", content=b'{"prompt": "x"}',
                        headers={**AUTH, "content-type": "text/plain"})
        assert r.status_code == 415
        assert client.post("/api/pause", headers={**AUTH, "Origin": "null"}).status_code == 403
        assert not queue.paused and queue.list() == []
        # The same page served by this server (same origin) and clients without Origin work.
        same = {"Origin": "http://127.0.0.1:8000"}
        assert client.post("/api/generate", json={"prompt": "x"}, headers={**AUTH, **same}).status_code == 202
        assert client.post("/api/pause", headers=AUTH).status_code == 200 and queue.paused
        with pytest.raises(WebSocketDisconnect):
            with client.websocket_connect(f"/api/ws?access_token={TOKEN}", headers=evil):
                pass
        r = client.get("/socket.io/?EIO=4&transport=polling", headers=evil)
        assert r.status_code in (400, 403)


def test_an_allowed_origin_may_call(queue):
    page = "http://studio.example:8888"
    with _guarded_client(queue, allow_origins=[page]) as client:
        r = client.post("/api/generate", json={"prompt": "x"}, headers={**AUTH, "Origin": page})
        assert r.status_code == 202 and r.headers["access-control-allow-origin"] == page


@pytest.mark.parametrize("host, status", [
    ("evil.example", 400), ("evil.example:8000", 400), ("127.0.0.1.nip.io:8000", 400),
    ("127.0.0.1:8000", 200), ("localhost:8000", 200), ("[::1]:8000", 200),
])
def test_the_host_header_must_name_this_server(queue, host, status):
    with _guarded_client(queue) as client:
        assert client.get("/api/jobs", headers={**AUTH, "Host": host}).status_code == status


def test_host_rule_for_every_interface_takes_ip_literals_and_given_names():
    from ovi.server.browser import allowed_hosts_for
    hosts, any_ip = allowed_hosts_for("0.0.0.0", ["ovi.lan"])
    assert any_ip and {"ovi.lan", "localhost"} <= hosts and "evil.example" not in hosts
    hosts, any_ip = allowed_hosts_for("127.0.0.1")
    assert not any_ip and "localhost" in hosts


def test_docs_are_behind_the_token(queue):
    with _guarded_client(queue) as client:
        for url in ("/docs", "/redoc", "/openapi.json"):
            assert client.get(url).status_code == 401, url
            assert client.get(url, headers=AUTH).status_code == 200, url
        page = client.get(f"/docs?access_token={TOKEN}").text
        assert f"/openapi.json?access_token={TOKEN}" in page
        page = client.get("/docs?access_token=x';alert(1);'", headers=AUTH).text
        assert "alert" not in page  # only our token is written into the page
        assert "/api/generate" in client.get("/openapi.json", headers=AUTH).json()["paths"]


# -- long names, odd tokens ------------------------------------------------------------------------
def test_a_long_video_name_is_an_answer_not_a_500(queue):
    with TestClient(create_app(queue)) as client:
        assert client.get("/api/videos/" + "a" * 5000 + ".mp4").status_code == 400
        assert client.get("/api/videos/" + "a" * 250 + ".mp4").status_code == 404
        assert client.get("/api/videos/a%01b.mp4").status_code == 400


@pytest.mark.parametrize("auth", [{"token": 5}, {"token": {"a": 1}}, {"token": ["s3cret"]},
                                  {"token": "s3cr\ud800"}, {"token": "\u00e9"}, "s3cret", 7])
def test_a_socketio_token_that_is_not_text_is_refused_cleanly(queue, auth):
    app = create_app(queue, token=TOKEN)
    bridge = _bridge(app)
    with pytest.raises(socketio.exceptions.ConnectionRefusedError):
        asyncio.run(bridge.connect("sid", {"QUERY_STRING": ""}, auth))
    assert asyncio.run(bridge.connect("sid", {"QUERY_STRING": ""}, {"token": TOKEN})) is None


# -- what a client sees ----------------------------------------------------------------------------
def test_clients_see_relative_paths_and_no_addresses(queue, tmp_path):
    (tmp_path / "loras").mkdir()
    with TestClient(create_app(queue)) as client:
        job = client.post("/api/generate", json={"prompt": "a cat"}).json()
        Runner(queue, engine_factory=fakes.factory).run(until_empty=True)
        done = client.get(f"/api/jobs/{job['id']}").json()
        assert done["status"] == "done"
        assert set(done["result"].values()) >= {f"a_cat_job{job['job_id']}.mp4"}
        # A failure that names a LoRA file on the server is shown by the folder's name.
        failing = queue.submit({"prompt": "b"})
        claimed = queue.claim("w")
        queue.fail(claimed["id"], f"cannot apply LoRA {tmp_path / 'loras' / 'x.safetensors'}: bad rank",
                   worker_id="w")
        shown = client.get(f"/api/jobs/{failing}").json()
        assert shown["error"] == "cannot apply LoRA loras/x.safetensors: bad rank"
        everything = client.get("/api/jobs").text
        assert str(tmp_path) not in everything
        r = client.post("/api/uploads", files={"file": ("x.png", b"not a png at all")})
        assert r.status_code == 422 and "0x" not in r.text and "BytesIO" not in r.text, r.text


# -- a flood of bad input --------------------------------------------------------------------------
def test_after_a_flood_of_bad_input_every_job_is_intact(queue):
    with TestClient(create_app(queue)) as client:
        kept = [client.post("/api/generate", json={"prompt": f"job {i}", "seed": i}).json()
                for i in range(3)]
        before = client.get("/api/jobs").json()["jobs"]
        bodies = [{"prompt": "x\ud800"}, {"prompt": "\x00"}, {"prompt": "a", "seed": 2**64},
                  {"prompt": "a", "priority": 2**70}, {"prompt": ["a"]}, {"prompt": {"a": 1}},
                  {"prompt": "a", "steps": float("inf")}, [1, 2], "text", None, 2**80,
                  {"prompt": "a", "options": {"options": {}}}, {"prompt": "a", "resolution": "\u0661x2"},
                  {"prompt": "a", "loras": [{"path": "\ud800"}]}, {"prompt": "a", "height_width": [2**70, 32]}]
        bridge = _bridge(client.app)
        for _ in range(10):
            for body in bodies:
                text = json.dumps(body)  # NaN/Infinity travel as JSON5-style literals
                r = client.post("/api/generate", content=text.encode(),
                                headers={"content-type": "application/json"})
                assert r.status_code == 422, (body, r.text)
                ack = asyncio.run(bridge.submit_job("sid", body))
                assert ack["ok"] is False and ack["status"] == 422, (body, ack)
        r = client.get("/api/jobs")
        assert r.status_code == 200
        assert r.json()["jobs"] == before and len(before) == len(kept)


# -- `ovi queue serve` always has a token ----------------------------------------------------------
def _serve(tmp_path, *extra):
    import httpx

    from tests.launcher import free_port, spawn_ovi_queue, wait_until
    port = free_port()
    proc = spawn_ovi_queue("serve", "--db", str(tmp_path / "queue.db"), "--port", str(port), *extra)
    first = proc.stderr.readline()

    def up():
        try:
            return httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=1).status_code
        except httpx.TransportError:
            assert proc.poll() is None, first + proc.stderr.read()
            return None

    return proc, port, first, wait_until(up, 60, "the server to answer")


def test_serve_without_a_token_makes_one_and_prints_it(tmp_path):
    import re

    import httpx
    proc, port, first, status = _serve(tmp_path)
    try:
        token = re.search(r"access_token=([A-Za-z0-9_-]+)", first).group(1)
        assert status == 401 and len(token) >= 24
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/health", params={"access_token": token}).status_code == 200
        assert httpx.get(f"{base}/api/health", headers={"Authorization": f"Bearer {token}",
                                                        "Host": "evil.example"}).status_code == 400
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    proc, port, first, status = _serve(tmp_path, "--no-token")
    try:
        assert "warning" in first and "--no-token" in first and status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
