"""Long clips over REST: `duration` counted against `max_frames` (all the windows it makes), and
`POST /api/jobs/{id}/extend`, which continues a done job's own clip (never a path a client names)."""

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load_file

from ovi.pipeline.windows import clip_files
from ovi.runtime import Runner
from ovi.runtime.runner import make_engine_factory
from ovi.server.limits import ServerLimits
from ovi.server.rest import create_app
from tests.queue import fakes

# The embedded default (tiny_trained): 17 frames a window, each further window adds 16.
PROMPT = "A red circle moves left. <AUDCAP>a high tone<ENDAUDCAP>"
TWO_WINDOWS, THREE_WINDOWS = 1.375, 2.0417   # 33 and 49 frames
LIMITS = ServerLimits(max_frames=40)


def _client(queue, **kwargs):
    return TestClient(create_app(queue, **kwargs))


@pytest.mark.parametrize("body, loc", [
    ({"prompt": PROMPT, "duration": THREE_WINDOWS}, ["body", "duration"]),
    ({"id": "seed-1", "mode": "t2v", "prompt": PROMPT, "options": {"duration": THREE_WINDOWS}},
     ["body", "options", "duration"]),  # the seed's API
])
def test_a_duration_over_max_frames_is_422_naming_it_and_nothing_is_queued(queue, body, loc):
    with _client(queue, limits=LIMITS) as client:
        r = client.post("/api/generate", json=body)
        assert r.status_code == 422, r.text
        [detail] = r.json()["detail"]
        assert detail["loc"] == loc and detail["type"] == "limit_exceeded"
        assert "max_frames" in detail["msg"] and "limit of 40" in detail["msg"]
        assert "49 frames in 3 windows" in detail["msg"] and f"duration {THREE_WINDOWS:g} s" in detail["msg"]
        assert queue.list() == []
        # Two windows (33 frames) fit under the same limit: the frames counted are the duration's own.
        ok = client.post("/api/generate", json={**body, "options": {"duration": TWO_WINDOWS}}
                         if "options" in body else {**body, "duration": TWO_WINDOWS})
        assert ok.status_code == 202, ok.text
    [job] = queue.list()
    assert job["request"]["duration"] == TWO_WINDOWS


def test_extend_refuses_without_token_unknown_unfinished_and_latent_less_jobs(queue):
    with _client(queue, token="s3cret") as client:
        auth = {"Authorization": "Bearer s3cret"}
        job = client.post("/api/generate", json={"prompt": PROMPT, "steps": 2}, headers=auth).json()["job_id"]
        assert client.post(f"/api/jobs/{job}/extend", json={}).status_code == 401
        r = client.post("/api/jobs/999/extend", json={}, headers=auth)
        assert r.status_code == 404 and "no job 999" in r.text
        r = client.post(f"/api/jobs/{job}/extend", json={}, headers=auth)
        assert r.status_code == 409 and "only a done job's clip can be extended" in r.text, r.text
        Runner(queue, engine_factory=fakes.factory).run(until_empty=True)  # the fake keeps no latents
        assert queue.get(job)["state"] == "done"
        r = client.post(f"/api/jobs/{job}/extend", json={"duration": 1}, headers=auth)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "ref"]
        assert "has no saved latents" in r.text and str(queue.path.parent) not in r.text
        for body, field in (({"extend": "/etc/passwd"}, "extend"), ({"steps": 50}, "steps"),
                            ({"duration": -1}, "duration"), ({"duration": 1e6}, "duration"),
                            ({"prompt": ""}, "prompt")):
            r = client.post(f"/api/jobs/{job}/extend", json=body, headers=auth)
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", field], (body, r.text)
    assert [j["id"] for j in queue.list()] == [job]  # nothing was queued


def test_extend_by_job_id_continues_the_clip_through_the_runner(queue):
    """The trained default, for real: the extension names the job, not a file; its clip is longer and
    starts with the old clip's latents, unchanged. The extended clip as a whole counts against max_frames."""
    runner = Runner(queue, engine_factory=make_engine_factory())
    try:
        with _client(queue, limits=LIMITS) as client:
            first = client.post("/api/generate", json={"prompt": PROMPT, "steps": 2, "id": "ball"}).json()
            runner.run(until_empty=True)
            assert queue.get(first["job_id"])["state"] == "done", queue.get(first["job_id"])["error"]
            # 17 frames + two more windows (32) = 49 > 40: refused, naming duration.
            r = client.post("/api/jobs/ball/extend", json={"duration": TWO_WINDOWS})
            assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "duration"], r.text
            assert "the extended clip as a whole" in r.text and "max_frames" in r.text
            turned = "A red circle moves right. <AUDCAP>a high tone<ENDAUDCAP>"
            r = client.post("/api/jobs/ball/extend", json={"prompt": turned, "id": "ball-2", "priority": 2})
            assert r.status_code == 202, r.text
            job = r.json()
            assert job["id"] == "ball-2" and job["priority"] == 2 and job["request"]["prompt"] == turned
            clip = client.get("/api/jobs/ball").json()["videoUrl"].rsplit("/", 1)[1]
            assert job["request"]["extend"] == clip  # the clip by its name in the output folder, not a path
            assert str(queue.path.parent) not in r.text
            assert client.post("/api/jobs/ball/extend", json={"id": "ball-2"}).status_code == 409
            runner.run(until_empty=True)
            done = client.get("/api/jobs/ball-2").json()
            assert done["status"] == "done", done["error"]
    finally:
        runner.close()
    old, new = (load_file(str(clip_files(queue.get(i)["result"]["mp4"])[0]))
                for i in (first["job_id"], done["job_id"]))
    frames, tokens = old["video"].shape[1], old["audio"].shape[0]
    assert new["video"].shape[1] == frames + 4 and new["audio"].shape[0] > tokens  # one window: 4 latent frames
    assert (new["video"][:, :frames] == old["video"]).all() and (new["audio"][:tokens] == old["audio"]).all()
