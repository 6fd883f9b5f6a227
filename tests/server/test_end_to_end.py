"""One request walked end to end: REST -> queue store -> Runner -> a 2-rank WorkerGroup -> clip. The
clip's sidecar records exactly the fields the client submitted; the 2 ranks come from the server's
own config (chosen by name), never from the request."""

import json

from fastapi.testclient import TestClient

from ovi.config import CONFIG_DIR
from ovi.server.rest import create_app
from tests.launcher import wait_until


def test_a_rest_request_reaches_a_two_rank_clip_unchanged(tmp_path, tiny_ckpt):
    configs = tmp_path / "configs"
    configs.mkdir()
    tiny = (CONFIG_DIR / "tiny.yaml").read_text()
    (configs / "tiny_sp2.yaml").write_text(f"{tiny}\nmodel_name: tiny\nckpt_dir: {tiny_ckpt}\nsp_size: 2\n")
    body = {"prompt": "A blue square moves left. <AUDCAP>a low tone<ENDAUDCAP>", "seed": 11,
            "steps": 2, "solver": "euler", "height_width": [96, 160], "video_guidance_scale": 3.5,
            "negative_prompt": "blur", "config": "tiny_sp2"}
    with TestClient(create_app(tmp_path / "queue.db", run=True)) as client:
        job = client.post("/api/generate", json={**body, "priority": 3})
        assert job.status_code == 202, job.text
        url = f"/api/jobs/{job.json()['id']}"

        def finished():
            current = client.get(url).json()
            return current if current["status"] in ("done", "failed") else None

        done = wait_until(finished, 300, "the 2-rank job to finish", interval=0.2)
        assert done["status"] == "done", done["error"]
        sidecar = client.get("/api/videos/" + done["result"]["json"].rsplit("/", 1)[-1])
    meta = json.loads(sidecar.content)
    assert meta["request"] == body
    assert meta["world_size"] == 2 and meta["sp"] == 2
    assert meta["steps"] == 2 and meta["seed"] == 11 and meta["height_width"] == [96, 160]
