"""Engine: determinism, solvers, modes, guidance, progress, and clear errors for bad input."""

import numpy as np
import pytest
import torch

import ovi
from ovi.codecs.toy import ToyAudioCodec, ToyVideoCodec
from ovi.errors import InputError

PROMPT = "A red ball bounces on a wooden floor. <AUDCAP>Rhythmic thuds<ENDAUDCAP>"


def test_same_seed_bit_identical_different_seed_differs(tiny_engine):
    a = tiny_engine.generate(PROMPT, seed=7)
    b = tiny_engine.generate(PROMPT, seed=7)
    c = tiny_engine.generate(PROMPT, seed=8)
    assert torch.equal(a.latents["video"], b.latents["video"]) and torch.equal(a.latents["audio"], b.latents["audio"])
    assert not torch.equal(a.latents["video"], c.latents["video"])
    assert not torch.equal(a.latents["audio"], c.latents["audio"])


def test_clip_shapes_rates_and_sidecar(tiny_engine):
    clip = tiny_engine.generate(PROMPT)
    assert clip.video.shape == (17, 128, 128, 3) and clip.video.dtype == np.uint8
    assert clip.audio.dtype == np.float32 and clip.audio.shape == (22 * 512,)
    assert clip.fps == 24 and clip.sample_rate == 16000
    meta = clip.meta
    for key in ("prompt", "mode", "seed", "steps", "solver", "video_guidance_scale", "audio_guidance_scale",
                "height_width", "fps", "sample_rate", "attention_backend", "world_size", "sp", "fsdp", "loras",
                "components", "timings"):
        assert key in meta, key
    assert meta["attention_backend"] == "sdpa" and meta["components"]["text_encoder"] == "UMT5EncoderModel"
    assert meta["formatted_prompt"].count("<AUDCAP>") == 1


@pytest.mark.parametrize("solver", ["unipc", "dpm++", "euler"])
def test_each_solver_runs_and_reports_progress_every_step(tiny_engine, solver):
    calls = []
    clip = tiny_engine.generate(PROMPT, solver=solver, steps=3, progress=lambda s, n, i: calls.append((s, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    assert clip.meta["solver"] == solver and np.isfinite(clip.audio).all()


def test_solvers_give_different_trajectories(tiny_engine):
    a = tiny_engine.generate(PROMPT, solver="unipc", steps=3).latents["video"]
    b = tiny_engine.generate(PROMPT, solver="euler", steps=3).latents["video"]
    assert not torch.allclose(a, b)


def test_guidance_and_slg_and_negative_prompts_matter(tiny_engine):
    base = tiny_engine.generate(PROMPT).latents["video"]
    assert not torch.equal(base, tiny_engine.generate(PROMPT, video_guidance_scale=1.5).latents["video"])
    assert not torch.equal(base, tiny_engine.generate(PROMPT, slg_layer=0).latents["video"])
    assert not torch.equal(base, tiny_engine.generate(PROMPT, negative_prompt="sharp").latents["video"])
    audio = tiny_engine.generate(PROMPT).latents["audio"]
    assert not torch.equal(audio, tiny_engine.generate(PROMPT, audio_negative_prompt="loud").latents["audio"])


def test_i2v_keeps_the_first_frame_closer_than_t2v(tiny_engine):
    rng = np.random.default_rng(0)
    image = np.kron(rng.integers(0, 255, (32, 32, 3)), np.ones((4, 4, 1))).astype(np.uint8)  # 4x4-px blocks
    i2v = tiny_engine.generate("a scene", mode="i2v", image=image)
    t2v = tiny_engine.generate("a scene", mode="t2v")
    err = lambda clip: np.abs(clip.video[0].astype(float) - image).mean()  # noqa: E731
    assert err(i2v) < 2.0 < err(t2v)


def test_t2i2v_runs_through_the_image_step(tiny_engine):
    clip = tiny_engine.generate("A blue ball on grass", mode="t2i2v")
    assert clip.meta["mode"] == "t2i2v"
    first = clip.video[0].reshape(-1, 3).mean(0)
    assert first[2] > first[0], "the toy text-to-image step paints the named colour (blue)"


def test_cpu_offload_gives_the_same_result(tiny_ckpt, tiny_engine):
    engine = ovi.Engine.from_config(ovi.load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), sample_steps=4,
                                                    slg_layer=1, cpu_offload=True))
    assert torch.equal(engine.generate(PROMPT).latents["video"], tiny_engine.generate(PROMPT).latents["video"])


def test_fp8_engine_runs(tiny_ckpt):
    engine = ovi.Engine.from_config(ovi.load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), sample_steps=2,
                                                    fp8=True))
    clip = engine.generate(PROMPT)
    assert clip.meta["storage_dtype"] == "float8_e4m3fn" and np.isfinite(clip.audio).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="v2v"), "mode"),
    (dict(mode="i2v"), "needs an image"),
    (dict(mode="i2v", image="/no/such/image.png"), "image not found: /no/such/image.png"),
    (dict(height_width=[100, 128]), "multiple of 32"),
    (dict(steps=0), "sample_steps"),
    (dict(video_guidance_scale=-1.0), "video_guidance_scale"),
    (dict(solver="ddim"), "solver_name"),
])
def test_bad_inputs_raise_clear_errors(tiny_engine, kwargs, match):
    with pytest.raises(InputError, match=match):
        tiny_engine.generate(PROMPT, **kwargs)


def test_toy_codecs_invert_on_their_subspace():
    vc = ToyVideoCodec()
    blocks = torch.rand(3, 3, 8, 8) * 2 - 1          # 3 groups, 4x4-px blocks
    video = blocks.repeat_interleave(4, 2).repeat_interleave(4, 3)
    video = torch.cat([video[:, :1], video[:, 1:].repeat_interleave(4, 1)], dim=1)  # [3, 9, 32, 32]
    latent = vc.encode(video)
    assert latent.shape == (48, 3, 2, 2)
    torch.testing.assert_close(vc.decode(latent), video)
    ac = ToyAudioCodec()
    coef = torch.rand(6, 20) * 0.1  # keeps the summed wave inside [-1, 1] (decode clamps)
    wave = ac.decode(coef)
    torch.testing.assert_close(ac.encode(wave), coef, atol=1e-5, rtol=1e-5)
