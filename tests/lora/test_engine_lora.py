"""LoRAs and Lightning through the Engine: each request applies its own set (switching never reloads the
base, and a request without LoRAs gets the base back bit for bit), the sidecar lists the set, the config's
set is applied at load, Lightning makes exactly one forward per step, and `ovi generate --lora` works."""

import json

import pytest
import torch

import ovi
from ovi.cli import main
from ovi.errors import InputError
from ovi.lora import save_native_lora
from tests.lora.files import random_factors, write_musubi, write_wan

PROMPT = "A red ball bounces. <AUDCAP>thuds<ENDAUDCAP>"


@pytest.fixture(scope="module")
def cfg(tiny_ckpt):
    return ovi.load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), sample_steps=2)


@pytest.fixture(scope="module")
def engine(cfg):
    return ovi.Engine.from_config(cfg)


@pytest.fixture(scope="module")
def loras(engine, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    video = engine.model.video_model
    return {"a": write_wan(folder / "a.safetensors", random_factors(video, 4, seed=1, scale=0.2), 4.0),
            "b": write_musubi(folder / "b.safetensors", random_factors(video, 8, seed=2, scale=0.2), 8.0)}


def _latents(clip):
    return clip.latents["video"], clip.latents["audio"]


def test_each_request_applies_its_own_set_and_the_base_comes_back(cfg, engine, loras):
    model = engine.model
    base = engine.generate(PROMPT, seed=1)
    with_a = engine.generate(PROMPT, seed=1, loras=[f"{loras['a']}:0.8"])
    mixed = engine.generate(PROMPT, seed=1, loras=[{"path": str(loras["b"]), "merge": False},
                                                   {"path": str(loras["a"]), "weight": 0.3}])
    again = engine.generate(PROMPT, seed=1)
    assert engine.model is model  # one base, switched in place
    for got, want in zip(_latents(again), _latents(base)):
        assert torch.equal(got, want)
    assert (with_a.latents["video"] - base.latents["video"]).abs().max() > 1e-2
    assert (mixed.latents["video"] - with_a.latents["video"]).abs().max() > 1e-2

    assert base.meta["loras"] == [] and again.meta["loras"] == []
    (a,) = with_a.meta["loras"]
    assert (a["name"], a["weight"], a["merged"], a["branch"], a["format"]) == ("a", 0.8, True, "video", "wan")
    assert a["tensors_applied"] == 3 * 34 and a["layers"] == 34 and a["path"] == str(loras["a"])
    assert [(r["name"], r["weight"], r["merged"]) for r in mixed.meta["loras"]] == [("b", 1.0, False), ("a", 0.3, True)]
    assert mixed.meta["request"]["loras"][0]["merge"] is False
    json.dumps(mixed.meta)  # the sidecar stays JSON

    # The config's set (yaml `lora:`) is applied when the engine loads: the same clip as the request's set.
    preloaded = ovi.Engine.from_config(cfg.replace(lora=[f"{loras['a']}:0.8"]))
    assert preloaded.loras.records(preloaded.model)[0]["name"] == "a"  # merged before the first request
    clip = preloaded.generate(PROMPT, seed=1)
    for got, want in zip(_latents(clip), _latents(with_a)):
        assert torch.equal(got, want)


def test_a_bad_lora_fails_its_request_only(engine, loras, tmp_path):
    with pytest.raises(InputError, match="LoRA 'nope': file not found"):
        engine.generate(PROMPT, loras=[str(tmp_path / "nope.safetensors")])
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x00" * 16)
    with pytest.raises(InputError, match="broken.safetensors"):
        engine.generate(PROMPT, loras=[str(loras["a"]), str(broken)])
    assert engine.loras.records(engine.model) == []  # the failed set changed nothing
    assert engine.generate(PROMPT, seed=2, loras=[str(loras["a"])]).meta["loras"][0]["name"] == "a"


def _count_forwards(model):
    calls = []
    handle = model.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def test_lightning_makes_exactly_four_forwards(engine, loras, tmp_path):
    calls, handle = _count_forwards(engine.model)
    try:
        clip = engine.generate(PROMPT, seed=3, lightning=True, loras=[str(loras["a"])])
        assert len(calls) == 4
        meta = clip.meta
        assert (meta["steps"], meta["solver"], meta["shift"]) == (4, "euler", 5.0)
        assert meta["video_guidance_scale"] == meta["audio_guidance_scale"] == 1.0
        assert meta["lightning"]["used"]["sigmas"] == [1.0, 0.75, 0.5, 0.25]

        calls.clear()  # without the profile every step runs two passes (guidance)
        engine.generate(PROMPT, seed=3, steps=2)
        assert len(calls) == 4

        calls.clear()  # a distilled LoRA carries its own profile
        own = save_native_lora(tmp_path / "distilled.safetensors",
                               {f"video_model.{n}": ab for n, ab in random_factors(engine.model.video_model, 4).items()},
                               engine.model, alpha=4.0,
                               extra={"lightning": {"sigmas": [1.0, 0.6, 0.3], "shift": 3.0}})
        clip = engine.generate(PROMPT, seed=3, lightning=True, loras=[str(own)])
        assert len(calls) == 3 and clip.meta["shift"] == 3.0
        assert clip.meta["lightning"]["used"]["sigmas"] == [1.0, 0.6, 0.3]
        calls.clear()
        # A step count the request sets applies (uniform grid); its guidance and solver give way to the profile
        # (a form that always sends them, like the Studio's, still gets one forward per step) and are recorded.
        clip = engine.generate(PROMPT, seed=3, lightning=True, steps=2, video_guidance_scale=2.0, solver="unipc")
        assert len(calls) == 2 and clip.meta["lightning"]["used"]["sigmas"] == [1.0, 0.5]
        assert clip.meta["lightning"]["replaced"] == {"solver": "unipc", "video_guidance_scale": 2.0}
    finally:
        handle.remove()


def test_cli_generate_with_lora(tmp_path, tiny_ckpt, loras, monkeypatch):
    monkeypatch.chdir(loras["a"].parent)  # a relative path is made absolute for the runner
    out = tmp_path / "out"
    code = main(["generate", "--quiet", "--set", "model_name=tiny", "--set", f"ckpt_dir={tiny_ckpt}", "--steps", "1", "--out", str(out),
                 "--lora", "a.safetensors:0.5", "--lora", str(loras["b"])])
    assert code == 0
    (sidecar,) = out.glob("*.json")
    meta = json.loads(sidecar.read_text())
    assert [(r["name"], r["weight"], r["merged"]) for r in meta["loras"]] == [("a", 0.5, True), ("b", 1.0, True)]
    assert meta["request"]["loras"][0]["path"] == str(loras["a"])
