"""`ovi generate --duration S` and `--extend CLIP.mp4` through the CLI (the embedded trained default)."""

import json

from ovi.cli import main
from ovi.pipeline.output import probe_media

PROMPT = "A red circle moves left. <AUDCAP>a high tone<ENDAUDCAP>"


def test_bad_duration_exits_2_and_writes_nothing(tmp_path, capsys):
    for bad in ("0", "-2", "100000"):
        assert main(["generate", "--quiet", "--duration", bad, "--out", str(tmp_path / "out")]) == 2
        assert "duration" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_duration_then_extend_with_a_new_prompt(tmp_path, capsys):
    assert main(["generate", "--quiet", "--prompt", PROMPT, "--seed", "7", "--duration", "1.2", "--save-latents",
                 "--set", "sample_steps=2", "--out", str(tmp_path / "a")]) == 0
    (first,) = (tmp_path / "a").glob("*.mp4")
    sidecar = json.loads(first.with_suffix(".json").read_text())
    assert sidecar["windows"]["windows"] == 2 and sidecar["duration"] == 1.2
    assert probe_media(first)["video_frames"] == sidecar["num_frames"] == 33

    turned = PROMPT.replace("left", "right")
    assert main(["generate", "--quiet", "--extend", str(first), "--prompt", turned, "--duration", "0.6",
                 "--out", str(tmp_path / "b")]) == 0
    (longer,) = (tmp_path / "b").glob("*.mp4")
    meta = json.loads(longer.with_suffix(".json").read_text())
    assert meta["seed"] == 7 and meta["steps"] == 2  # the clip's own settings where none were given
    assert meta["prompt"] == turned and meta["windows"]["extended_from_frames"] == 33
    assert probe_media(longer)["video_frames"] == meta["num_frames"] > 33
    assert first.exists() and probe_media(first)["video_frames"] == 33  # the old clip is left as it was

    # a clip saved without latents cannot be extended: exit 2, nothing written
    assert main(["generate", "--quiet", "--prompt", PROMPT, "--set", "sample_steps=1",
                 "--out", str(tmp_path / "c")]) == 0
    (plain,) = (tmp_path / "c").glob("*.mp4")
    capsys.readouterr()
    assert main(["generate", "--quiet", "--extend", str(plain), "--out", str(tmp_path / "d")]) == 2
    assert "--save-latents" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_a_bad_duration_is_not_queued_from_the_cli_or_rest(tmp_path, capsys):
    from ovi.queue import JobQueue
    db = tmp_path / "queue.db"
    assert main(["queue", "submit", "--db", str(db), "--prompt", PROMPT, "--duration", "0"]) == 2
    assert "duration" in capsys.readouterr().err
    assert main(["queue", "submit", "--db", str(db), "--prompt", PROMPT, "--duration", "2.5"]) == 0
    queue = JobQueue(db)
    try:
        (job,) = queue.list()
        assert job["request"]["duration"] == 2.5

        from fastapi.testclient import TestClient

        from ovi.server.rest import create_app
        with TestClient(create_app(queue)) as client:
            # the seed's body shape: options.duration
            bad = client.post("/api/generate", json={"prompt": PROMPT, "options": {"duration": 10 ** 6}})
            assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "options", "duration"]
            ext = client.post("/api/generate", json={"prompt": PROMPT, "extend": str(tmp_path / "x.mp4")})
            assert ext.status_code == 422  # a server path is never taken from a client
            ok = client.post("/api/generate", json={"prompt": PROMPT, "options": {"duration": 2}})
            assert ok.status_code == 202, ok.text
        assert [j["request"].get("duration") for j in queue.list()] == [2.5, 2]
    finally:
        queue.close()
