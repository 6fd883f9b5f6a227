"""The shipped trained tiny model (the embedded default) through the real loading path, and the quality
bench's pinned fields. The accuracy checks are real: they fail if the weights, codecs, engine or solver
stop producing the prompted colour, motion and tone."""

import json

import pytest

import ovi
from ovi.cli import main
from ovi.train import data, metrics


@pytest.fixture(scope="module")
def trained_engine():
    return ovi.Engine.from_config(ovi.load_config())


def test_embedded_default_is_the_trained_model_from_its_bundled_folder(trained_engine):
    cfg = trained_engine.config
    assert (cfg.model_name, cfg.model) == ("tiny_trained", "tiny_trained")
    assert cfg.ckpt_dir.endswith("ovi/weights/tiny_trained")
    assert trained_engine.components.describe()["video_codec"] == "ShapesVideoCodec"
    assert str(trained_engine.components.checkpoint).startswith(cfg.ckpt_dir)


@pytest.mark.parametrize("combo", [data.HELD_OUT[0], data.HELD_OUT[4]])  # a move and a bounce, never trained
def test_held_out_prompts_come_out_as_asked(trained_engine, combo):
    spec = data.sample_spec(combo, __import__("random").Random(0))
    clip = trained_engine.generate(spec.prompt, seed=0)
    m = metrics.measure(clip.video, clip.audio)
    assert (m.color, m.motion, m.pitch) == (spec.color, spec.motion, spec.pitch), (spec.prompt, m.track)
    if spec.motion == "bounce":
        assert metrics.sync_error(m, clip.num_frames) <= 1.0, (m.contacts, m.clicks)


def test_quality_bench_fields(capsys, tmp_path):
    assert main(["bench", "quality", "--json", "--steps", "2", "--seeds", "1", "--limit", "2", "--no-floor",
                 "--out-dir", str(tmp_path)]) == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    by = {(r["weights"], r.get("kind")): r for r in recs}
    assert set(by) == {("data", None), ("data+codec", None), ("trained", None), ("trained", "default_clip")}
    for key in ("bench", "config", "world_size", "color_accuracy", "motion_accuracy", "pitch_accuracy",
                "sync_error_frames", "steps"):
        assert key in by[("trained", None)], key
    assert by[("data", None)]["color_accuracy"] == by[("data", None)]["motion_accuracy"] == 1.0
    assert by[("trained", None)]["steps"] == 2 and by[("trained", None)]["n_clips"] == 2
    default = by[("trained", "default_clip")]
    assert default["prompt"] == ovi.load_config().text_prompt and default["clip_seconds"] > 0
    # `make demo`'s clip: measured colour, direction and pitch are the ones its prompt names
    assert default["matches"] and default["expected"] == {"color": "blue", "motion": "left", "pitch": "low"}, default
    for rec in (by[("trained", None)], by[("data+codec", None)], default):
        for key in ("contact_sheet", "spectrograms"):
            assert (tmp_path / rec[key].split("/")[-1]).is_file()


def test_quality_bench_refuses_a_model_outside_its_vocabulary(tiny_ckpt, capsys):
    assert main(["bench", "quality", "--set", "model_name=tiny", "--set", f"ckpt_dir={tiny_ckpt}",
                 "--out-dir", ""]) == 2
    assert "tiny_trained" in capsys.readouterr().err
