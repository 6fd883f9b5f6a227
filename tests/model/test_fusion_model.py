"""FusionModel: upstream's keys and shapes for the real config, and the forward's contracts."""

import json
from pathlib import Path

import pytest
import torch

from ovi.model import FusionModel, configs
from ovi.model.attention import attention, resolve_backend
from ovi.model.rope import apply_rope, audio_freqs, video_band_dims, video_freqs

DATA = Path(__file__).parent / "data"


def test_real_config_state_dict_equals_upstream_keys_and_shapes():
    upstream = json.loads((DATA / "upstream_fusion_keys.json").read_text())
    assert upstream["video_config"] == configs.OVI_VIDEO_CONFIG
    assert upstream["audio_config"] == configs.OVI_AUDIO_CONFIG
    with torch.device("meta"):
        model = FusionModel(upstream["video_config"], upstream["audio_config"])
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == [(k, list(s)) for k, s in upstream["keys"]]
    assert sum(p.numel() for p in model.parameters()) == upstream["num_params"]
    assert not list(model.buffers()), "upstream has no buffers; the rope tables must not be persistent"


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = FusionModel(*configs.architecture("tiny"))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    return m.eval()


def _inputs(seed=0, frames=3, h=4, w=6, audio_len=11, ctx_len=7):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(48, frames, h, w, generator=g), torch.randn(audio_len, 20, generator=g),
            torch.randn(ctx_len, configs.TINY_TEXT_DIM, generator=g))


@torch.no_grad()
def test_forward_shapes_and_dtype(model):
    v, a, c = _inputs()
    vid, aud = model([v], [a], torch.tensor([700]), [c], [c], vid_seq_len=18, audio_seq_len=11)
    assert vid[0].shape == v.shape and aud[0].shape == a.shape
    assert vid[0].dtype == torch.float32 and torch.isfinite(vid[0]).all()


@torch.no_grad()
def test_padding_to_longer_seq_len_does_not_change_outputs(model):
    v, a, c = _inputs()
    ref = model([v], [a], torch.tensor([700]), [c], [c], vid_seq_len=18, audio_seq_len=11)
    padded = model([v], [a], torch.tensor([700]), [c], [c], vid_seq_len=29, audio_seq_len=16)
    torch.testing.assert_close(padded[0][0], ref[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(padded[1][0], ref[1][0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_batch_of_different_shapes_equals_single_runs(model):
    v1, a1, c1 = _inputs(1, frames=3, h=4, w=6, audio_len=11, ctx_len=7)
    v2, a2, c2 = _inputs(2, frames=2, h=4, w=4, audio_len=7, ctx_len=3)
    t = torch.tensor([500, 500])
    vids, auds = model([v1, v2], [a1, a2], t, [c1, c2], [c1, c2], vid_seq_len=18, audio_seq_len=11)
    for i, (v, a, c) in enumerate([(v1, a1, c1), (v2, a2, c2)]):
        sv, sa = model([v], [a], t[:1], [c], [c], vid_seq_len=18, audio_seq_len=11)
        torch.testing.assert_close(vids[i], sv[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(auds[i], sa[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_clean_first_frame_and_slg_change_the_prediction(model):
    v, a, c = _inputs()
    t = torch.tensor([900])
    base = model([v], [a], t, [c], [c], 18, 11)
    clean = model([v], [a], t, [c], [c], 18, 11, first_frame_is_clean=True)
    slg = model([v], [a], t, [c], [c], 18, 11, slg_layer=1)
    assert not torch.allclose(base[0][0], clean[0][0])
    assert not torch.allclose(base[0][0], slg[0][0]) and not torch.allclose(base[1][0], slg[1][0])
    for off in (0, -1, False):
        torch.testing.assert_close(model([v], [a], t, [c], [c], 18, 11, slg_layer=off)[0][0], base[0][0])


@torch.no_grad()
def test_clean_first_frame_means_t_zero_on_frame_zero_tokens(model):
    v, a, c = _inputs()
    vm = model.video_model
    t_tokens = vm.token_timesteps(torch.tensor([900]), 18, torch.tensor([[3, 2, 3]]), True)
    assert t_tokens[0, :6].eq(0).all() and t_tokens[0, 6:].eq(900).all()


@torch.no_grad()
def test_single_modality_paths(model):
    v, a, c = _inputs()
    t = torch.tensor([300])
    none_v, only_a = model(None, [a], t, None, [c], None, 11)
    only_v, none_a = model([v], None, t, [c], None, 18, None)
    assert none_v is None and none_a is None
    assert only_a[0].shape == a.shape and only_v[0].shape == v.shape


@torch.no_grad()
def test_bf16_weights_compute_and_return_bf16(model):
    v, a, c = _inputs()
    m16 = FusionModel(*configs.architecture("tiny"))
    m16.load_state_dict(model.state_dict())
    m16 = m16.to(torch.bfloat16).eval()
    vid, aud = m16([v], [a], torch.tensor([700]), [c], [c], 18, 11)
    ref = model([v], [a], torch.tensor([700]), [c], [c], 18, 11)
    assert vid[0].dtype == torch.bfloat16
    assert (vid[0].float() - ref[0][0]).abs().max() < 0.1 * ref[0][0].abs().max()


def test_rope_bands_and_rotation_preserve_norms():
    assert video_band_dims(128) == (44, 42, 42)
    f = video_freqs((2, 3, 4), 128)
    assert f.shape == (24, 64) and f.dtype == torch.complex128
    assert audio_freqs(157, 128, 0.19676).shape == (157, 22)
    x = torch.randn(1, 30, 2, 128)
    y = apply_rope(x, [f])
    assert torch.allclose(x.norm(dim=-1), y.norm(dim=-1), atol=1e-5)
    assert torch.equal(y[0, 24:], x[0, 24:]), "padding positions must pass through"
    ya = apply_rope(x, [audio_freqs(30, 128, 0.19676)])
    assert torch.equal(ya[..., 44:], x[..., 44:]), "audio rotates only the first 22 complex pairs"
    assert not torch.equal(ya[0, 1:, :, :44], x[0, 1:, :, :44])


def test_rope_shard_offset_matches_full_sequence():
    x = torch.randn(1, 24, 2, 32)
    f = video_freqs((2, 3, 4), 32)
    full = apply_rope(x, [f])
    shard = apply_rope(x[:, 12:], [f], offset=12)
    torch.testing.assert_close(shard, full[:, 12:])


def test_sdpa_and_math_agree_with_key_masks_and_windows():
    q, k, v = torch.randn(2, 5, 2, 8), torch.randn(2, 7, 2, 8), torch.randn(2, 7, 2, 8)
    lens = torch.tensor([7, 4])
    for window in ((-1, -1), (1, 2)):
        a = attention(q, k, v, k_lens=lens, backend="sdpa", window=window)
        b = attention(q, k, v, k_lens=lens, backend="math", window=window)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # masked keys have no influence
    k2, v2 = k.clone(), v.clone()
    k2[1, 4:] += 100
    v2[1, 4:] -= 100
    torch.testing.assert_close(attention(q, k2, v2, k_lens=lens)[1], attention(q, k, v, k_lens=lens)[1])


def test_backend_resolution_on_cpu_falls_back_to_sdpa_and_says_why():
    assert resolve_backend("auto", "cpu", torch.float32)[0] == "sdpa"
    backend, note = resolve_backend("flash2", "cpu", torch.bfloat16)
    assert backend == "sdpa" and "CUDA" in note
    assert resolve_backend("math", "cpu", torch.float32) == ("math", "")
    with pytest.raises(ValueError, match="attention_backend 'fast'"):
        resolve_backend("fast", "cpu", torch.float32)
