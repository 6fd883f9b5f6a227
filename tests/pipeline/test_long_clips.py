"""Long clips (ovi.pipeline.windows): continuation windows carrying a clean video + audio prefix, `duration`,
`extend`, on the real architecture's code path (the random tiny / mid presets, and the 720x720 config's
shapes through the pure plan())."""

import json

import numpy as np

import pytest
import torch

import ovi
from ovi.codecs.base import AudioCodec, VideoCodec
from ovi.config import load_config
from ovi.errors import InputError
from ovi.model.wan import WanModel
from ovi.parallel.dims import ParallelDims
from ovi.parallel.memory import Workload, estimate
from ovi.pipeline.plan import plan
from ovi.pipeline.windows import layout, read_prior
from ovi.request import MAX_DURATION_SECONDS, GenerateRequest, RequestError
from ovi.specs import MODEL_SPECS


def _count_forwards(engine):
    calls = []
    handle = engine.model.register_forward_hook(lambda *a: calls.append(1))
    return calls, handle


# ---- the layout (pure) ---------------------------------------------------------------------------------

def test_layout_covers_the_duration_and_keeps_audio_on_the_video_clock():
    tiny = dict(window_video_frames=5, window_audio_tokens=22, fps=24, audio_tokens_per_second=31.25)
    assert layout(None, **tiny) is None  # the model's own length: one ordinary window
    one = layout(0.5, **tiny)
    assert one.windows == 1 and one.num_frames == 17 and one.seams == []
    six = layout(6 * 0.667, **tiny)
    assert six.windows == 6
    assert six.num_frames == 17 + 5 * 16 and six.seams == [17 + 16 * i for i in range(5)]
    assert six.video_starts == (0, 4, 8, 12, 16, 20)
    # each window's audio starts at the video time of its first (carried) frame, to the token
    for w in range(1, 6):
        assert abs(six.audio_starts[w] - 4 * six.video_starts[w] / 24 * 31.25) <= 0.5
        assert six.audio_prefix[w] == six.audio_starts[w - 1] + 22 - six.audio_starts[w] >= 1
    # the audio covers the video to within one token however many windows
    assert abs(six.total_audio_tokens / 31.25 - six.num_frames / 24) < 2 / 31.25
    with pytest.raises(InputError, match="overlap 5"):
        layout(3.0, overlap=5, **tiny)


def test_an_extension_layout_continues_from_the_prior_clip():
    lay = layout(1.0, window_video_frames=5, window_audio_tokens=22, fps=24, audio_tokens_per_second=31.25,
                 prior_video_frames=9, prior_audio_tokens=43)
    assert lay.video_prefix[0] == 1 and lay.video_starts[0] == 8  # the prior's last latent frame is carried
    assert lay.audio_starts[0] + lay.audio_prefix[0] == 43       # the prior's audio tail is carried
    assert lay.num_frames - (1 + 4 * 8) >= 24                     # at least 1 s was added
    assert lay.seams[0] == 1 + 4 * 8


# ---- the request ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [0, -1.5, MAX_DURATION_SECONDS + 1, "10s", float("nan")])
def test_a_bad_duration_is_refused_when_the_request_is_made(bad):
    with pytest.raises(RequestError, match="duration") as err:
        GenerateRequest("a ball", duration=bad)
    assert err.value.field == "duration"
    with pytest.raises(RequestError, match="duration"):
        GenerateRequest.from_dict({"prompt": "a ball", "duration": bad}, aliases=True)


def test_duration_round_trips_through_the_stored_form():
    request = GenerateRequest("a ball", duration=3)
    assert request.duration == 3.0 and GenerateRequest.from_dict(request.to_dict()) == request


# ---- the model: per-tower clean prefixes ----------------------------------------------------------------

def test_the_clean_prefix_puts_the_first_tokens_of_either_tower_at_timestep_zero():
    video = WanModel.__new__(WanModel)
    audio = WanModel.__new__(WanModel)
    video.is_audio, audio.is_audio = False, True
    t = torch.tensor([500])
    grid = torch.tensor([[5, 4, 4]])
    assert video.token_timesteps(t, 80, grid, True)[0].eq(0).sum() == 16      # upstream: one frame
    assert video.token_timesteps(t, 80, grid, 2)[0].eq(0).sum() == 32         # ours: two frames
    assert audio.token_timesteps(t, 22, torch.tensor([[22]]), True)[0].eq(0).sum() == 0  # upstream ignores audio
    held = audio.token_timesteps(t, 22, torch.tensor([[22]]), 3)[0]
    assert held[:3].eq(0).all() and held[3:].eq(500).all()


# ---- the engine: two windows on the real architecture --------------------------------------------------

@pytest.mark.parametrize("preset", ["tiny", "mid"])
def test_windows_carry_the_prefix_bit_identically_and_cost_one_window_each(preset, tiny_ckpt, tmp_path):
    if preset == "tiny":
        engine = ovi.Engine.from_config(load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), sample_steps=2))
    else:
        from ovi.pipeline.random_checkpoint import make_random_checkpoint
        ckpt = make_random_checkpoint(tmp_path / "mid", "mid")
        # one step, guidance off: one forward per window (the mid preset's 1008 tokens are slow on a CPU)
        engine = ovi.Engine.from_config(load_config(model_name="mid", ckpt_dir=str(ckpt), sample_steps=1,
                                                    video_guidance_scale=1.0, audio_guidance_scale=1.0,
                                                    video_frame_height_width=[256, 448]))
    steps = engine.config.sample_steps
    spec = MODEL_SPECS[preset]
    calls, handle = _count_forwards(engine)
    try:
        one = engine.generate("a red ball moves left", seed=3)
        per_clip = len(calls)
        calls.clear()
        seen = []
        clip = engine.generate("a red ball moves left", seed=3, duration=1.5 * spec.num_frames / spec.fps,
                               progress=lambda step, total, info: seen.append((step, total, info["window"])))
    finally:
        handle.remove()
    lay = layout(1.5 * spec.num_frames / spec.fps, window_video_frames=spec.video_latent_frames,
                 window_audio_tokens=spec.audio_latent_length, fps=spec.fps, audio_tokens_per_second=31.25)
    assert lay.windows == 2
    assert len(calls) == 2 * per_clip  # time linear in windows: the same forwards per window
    assert one.meta["forwards"] == per_clip and clip.meta["forwards"] == len(calls)  # sidecar: every window
    assert seen == [(i + 1, 2 * steps, i // steps) for i in range(2 * steps)]  # steps across windows
    (v0, a0), (v1, a1) = engine.last_windows
    assert v1.shape == v0.shape == one.latents["video"].shape  # memory per window: one clip's latents
    assert torch.equal(v1[:, :1], v0[:, -1:])                 # the carried prefix is bit-identical
    k_a = lay.audio_prefix[1]
    assert k_a >= 1 and torch.equal(a1[:k_a], a0[-k_a:])
    assert not torch.equal(v1[:, 1:2], v0[:, -1:])            # ... and the rest was generated
    # window 0 is the ordinary clip (same seed); the whole sequence is decoded once
    assert torch.equal(v0, one.latents["video"])
    assert clip.latents["video"].shape[1] == 2 * spec.video_latent_frames - 1
    assert clip.num_frames == lay.num_frames == clip.meta["num_frames"]
    assert clip.meta["windows"]["seams_frames"] == [spec.num_frames]
    # the sound covers the picture, overshooting by no more than one window of the model does (+ a token)
    overshoot = len(one.audio) / one.sample_rate - one.duration
    assert 0 <= len(clip.audio) / clip.sample_rate - clip.duration <= overshoot + 512 / 16000


def test_memory_per_window_is_constant_in_duration_on_the_720x720_config_shapes():
    class Video(VideoCodec):
        def encode(self, video): ...
        def decode(self, latent): ...

    class Audio(AudioCodec):
        def encode(self, wave): ...
        def decode(self, latent): ...

    class Codecs:
        video_codec, audio_codec = Video(), Audio()

    cfg = load_config("configs/ovi_720x720_5s.yaml")
    spec = MODEL_SPECS[cfg.model_name]
    plans = [plan(GenerateRequest("a cat", duration=d), cfg, spec, Codecs()) for d in (5.0, 20.0, 60.0)]
    assert [p.windows.windows for p in plans] == [1, 4, 12]
    assert len({(p.vid_seq_len, p.audio_seq_len) for p in plans}) == 1  # every window has the model's shape
    peaks = {estimate(cfg.model, Workload(video_tokens=p.vid_seq_len, audio_tokens=p.audio_seq_len,
                                          text_encoder_bytes=0, codec_bytes=0), ParallelDims(world_size=1)
                      ).phases["denoise"] for p in plans}
    assert len(peaks) == 1


# ---- extend ------------------------------------------------------------------------------------------

def test_extend_continues_from_the_saved_latents_and_keeps_the_old_part(tiny_ckpt, tmp_path):
    engine = ovi.Engine.from_config(load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), sample_steps=2))
    first = engine.generate("a red ball moves left", seed=5)
    paths = first.save(tmp_path / "first", save_latents=True)
    calls, handle = _count_forwards(engine)
    try:
        longer = engine.generate("a red ball moves right", extend=str(paths["mp4"]), duration=0.5)
    finally:
        handle.remove()
    assert longer.meta["forwards"] == len(calls)  # this clip's forwards only, not the first clip's too
    old_frames = first.num_frames
    assert torch.equal(longer.latents["video"][:, :first.latents["video"].shape[1]], first.latents["video"])
    assert torch.equal(longer.latents["audio"][:first.latents["audio"].shape[0]], first.latents["audio"])
    assert (longer.video[:old_frames] == first.video).all()  # the old part decodes unchanged
    assert longer.num_frames >= old_frames + 12
    # unset fields take the extended clip's settings (here its seed), the prompt is the new one
    assert longer.meta["seed"] == 5 and longer.meta["prompt"] == "a red ball moves right"
    assert longer.meta["windows"]["extended_from_frames"] == old_frames


def test_extend_refuses_a_clip_without_latents_or_of_another_model(tiny_ckpt, tmp_path):
    engine = ovi.Engine.from_config(load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), sample_steps=1))
    paths = engine.generate("a ball", seed=1).save(tmp_path / "plain")
    with pytest.raises(InputError, match="--save-latents"):
        engine.generate("a ball", extend=str(paths["mp4"]))
    kept = engine.generate("a ball", seed=1).save(tmp_path / "kept", save_latents=True)
    sidecar = json.loads(kept["json"].read_text())
    kept["json"].write_text(json.dumps({**sidecar, "model_name": "720x720_5s"}))
    with pytest.raises(InputError, match="model_name '720x720_5s'"):
        read_prior(kept["mp4"], "tiny")
    with pytest.raises(InputError, match="no such clip"):
        read_prior(tmp_path / "missing.mp4", "tiny")


# ---- the real components (Wan2.2 VAE, MMAudio) decode the whole sequence once ---------------------------

from tests.pipeline.test_real_component_path import miniature_real_setup  # noqa: E402,F401  (a fixture)


def test_real_codecs_decode_the_whole_window_sequence_causally(miniature_real_setup):
    engine = ovi.Engine.from_config(miniature_real_setup)  # the 720x720 config's code path, shrunk
    clip = engine.generate("A red ball bounces. <AUDCAP>thuds<ENDAUDCAP>", seed=2, duration=13 / 24)
    (v0, a0), *rest = engine.last_windows
    assert len(rest) == 2 and clip.latents["video"].shape == (48, 4, 4, 4)
    previous = v0
    for v, _ in rest:  # each window starts from the previous one's last latent frame, bit for bit
        assert torch.equal(v[:, :1], previous[:, -1:])
        previous = v
    assert clip.video.shape[0] == 13 and clip.meta["windows"]["seams_frames"] == [5, 9]
    # The Wan VAE is causal in time: the first window's frames decode the same inside the long sequence as
    # alone, so decoding once adds no seam and an extension leaves the old part as it was.
    alone, _ = engine.decode(engine.plan("x"), v0, a0)
    assert np.abs(alone.astype(int) - clip.video[:5].astype(int)).max() <= 1


def test_windows_run_unchanged_on_two_sequence_parallel_gloo_ranks():
    from ovi.runtime import WorkerGroup
    cfg = load_config(sample_steps=1)  # the embedded trained default
    request = GenerateRequest("A red circle moves left. <AUDCAP>a high tone<ENDAUDCAP>", seed=4, duration=1.2)
    one = ovi.Engine.from_config(cfg).generate(request)
    with WorkerGroup(cfg, world_size=2) as group:
        two = group.generate(request)
    assert two.meta["sp"] == 2 and two.meta["windows"]["windows"] == 2
    torch.testing.assert_close(two.latents["video"], one.latents["video"], atol=1e-4, rtol=0)
    torch.testing.assert_close(two.latents["audio"], one.latents["audio"], atol=1e-4, rtol=0)
