"""Step caching (ovi.pipeline.step_cache) on the trained default: threshold 0 changes nothing, a large
threshold skips forwards, the sidecar counts what ran, bad settings are refused with the allowed values."""

import pytest
import torch

import ovi
from ovi.errors import ConfigError, InputError
from ovi.pipeline.step_cache import StepCache, install_step_cache

STEPS = 4
PROMPT = "A red circle bounces. <AUDCAP>a high tone<ENDAUDCAP>"
METHODS = ("teacache", "magcache", "fbcache")


@pytest.fixture(scope="module")
def engine():
    return ovi.Engine.from_config(None)  # the trained default: guidance on, so two passes a step


def generate(engine, method, threshold, steps=STEPS, **fields):
    engine.step_cache = install_step_cache(engine.model, method, threshold)
    try:
        return engine.generate(PROMPT, seed=3, steps=steps, **fields)
    finally:
        engine.step_cache = install_step_cache(engine.model, "none")


@pytest.fixture(scope="module")
def reference(engine):
    return generate(engine, "none", None)


def test_no_cache_counts_every_forward(reference):
    assert reference.meta["forwards"] == STEPS * 2
    assert reference.meta["step_cache"] == {"method": "none", "threshold": 0.0, "forwards": STEPS * 2, "skipped": 0,
                                            "blocks_run": STEPS * 2 * 3, "blocks_total": STEPS * 2 * 3}


@pytest.mark.parametrize("method", METHODS)
def test_threshold_zero_is_bit_equal_to_no_cache(engine, reference, method):
    clip = generate(engine, method, 0.0)
    assert clip.meta["forwards"] == STEPS * 2 and clip.meta["step_cache"]["skipped"] == 0
    for key in ("video", "audio"):
        assert torch.equal(clip.latents[key], reference.latents[key])


@pytest.mark.parametrize("method", METHODS)
def test_large_threshold_skips_forwards(engine, reference, method):
    clip = generate(engine, method, 1.0)
    record = clip.meta["step_cache"]
    assert clip.meta["forwards"] == record["forwards"] < STEPS * 2
    assert record["forwards"] + record["skipped"] == STEPS * 2
    # the first forward of each pass and the last step always run
    assert record["forwards"] >= 2 * 2
    assert record["blocks_run"] < record["blocks_total"]
    assert not torch.equal(clip.latents["video"], reference.latents["video"])  # the skips really changed it


def test_guidance_passes_cache_separately(engine):
    cache = install_step_cache(engine.model, "teacache", 1.0)
    engine.step_cache = cache
    try:
        engine.generate(PROMPT, seed=3, steps=STEPS)
        assert len(cache.passes) == 2  # positive and negative pass
        assert all(state.step == STEPS for state in cache.passes.values())
        engine.generate(PROMPT, seed=3, steps=STEPS, video_guidance_scale=1.0, audio_guidance_scale=1.0)
        assert len(cache.passes) == 1  # guidance off: one pass (reset between generations)
    finally:
        engine.step_cache = install_step_cache(engine.model, "none")


def test_config_keys_reach_the_engine_and_sidecar():
    engine = ovi.Engine.from_config(ovi.load_config(None, step_cache="fbcache", step_cache_threshold=1.0))
    clip = engine.generate(PROMPT, seed=3, steps=STEPS)
    assert clip.meta["step_cache"]["method"] == "fbcache" and clip.meta["step_cache"]["threshold"] == 1.0
    assert clip.meta["forwards"] < STEPS * 2
    assert clip.meta["config"]["step_cache"] == "fbcache"


def test_default_threshold_when_unset():
    assert StepCache("teacache").threshold > 0
    assert StepCache("none").threshold == 0


@pytest.mark.parametrize("value", ["teacash", "TeaCache", ""])
def test_unknown_cache_name_names_the_allowed_ones(value):
    with pytest.raises(ConfigError) as err:
        ovi.load_config(None, step_cache=value)
    message = str(err.value)
    assert "step_cache" in message and all(m in message for m in ("none", "teacache", "magcache", "fbcache"))


@pytest.mark.parametrize("value", [-0.1, 1.5, "high", True])
def test_threshold_out_of_range_names_the_range(value):
    with pytest.raises(ConfigError, match=r"step_cache_threshold .*from 0.0 to 1.0"):
        ovi.load_config(None, step_cache="teacache", step_cache_threshold=value)


def test_cli_set_rejects_bad_cache(capsys):
    from ovi.cli import main
    assert main(["generate", "--set", "step_cache=deepcache", "--steps", "1"]) == 2
    assert "choose one of none, teacache, magcache, fbcache" in capsys.readouterr().err


def test_sequence_parallel_is_refused(engine):
    with pytest.raises(InputError, match="sp_size 2"):
        install_step_cache(engine.model, "teacache", 0.1, sp=2)
    assert isinstance(install_step_cache(engine.model, "none", sp=2), StepCache)  # counting only: fine
    engine.step_cache = install_step_cache(engine.model, "none")


def test_quality_rows_carry_the_speed_settings_and_forwards(capsys):
    import json

    from ovi.cli import main
    assert main(["bench", "quality", "--json", "--steps", "4", "--seeds", "1", "--limit", "1", "--no-floor",
                 "--no-ceiling", "--out-dir", "", "--set", "step_cache=teacache",
                 "--set", "step_cache_threshold=1.0"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    trained = next(r for r in rows if r["weights"] == "trained" and r.get("kind") is None)
    assert (trained["compile"], trained["step_cache"], trained["step_cache_threshold"]) == (False, "teacache", 1.0)
    assert 4 <= trained["forwards"] < 4 * 2  # first and last of each pass ran; the rest were skipped
