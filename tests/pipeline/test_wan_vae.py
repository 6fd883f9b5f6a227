"""ovi.codecs.wan_vae + ovi.checkpoint.codec_keys (Wan2.2 VAE -> diffusers AutoencoderKLWan).

Fixtures in tests/pipeline/data, made once from upstream Ovi's own code (commit in each file):
- wan22_vae_keys.json: every key + shape of upstream's real Wan2.2 VAE (`WanVAE_` as `Wan2_2_VAE`
  builds it, z=48, dim 160, decoder dim 256), built on the meta device.
- wan22_vae_golden.pt: a tiny random `WanVAE_` (dim 2, decoder dim 3, z 8; same classes and block
  structure) with its state dict in Wan names (fp16 values, exact in fp32), a video, upstream's
  normalised encoding of it, a latent and upstream's decoding of it (clamped), in fp32 on CPU.
"""

import json
from pathlib import Path

import pytest
import torch

from ovi.checkpoint.codec_keys import (
    diffusers_to_wan22_vae,
    wan22_vae_key_to_diffusers,
    wan22_vae_to_diffusers,
)
from ovi.codecs.wan_vae import (
    LATENTS_MEAN,
    LATENTS_STD,
    WanVideoCodec,
    expected_vae_shapes,
)
from ovi.errors import CheckpointError, InputError

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def golden():
    return torch.load(DATA / "wan22_vae_golden.pt", weights_only=True)


@pytest.fixture(scope="module")
def golden_codec(golden, tmp_path_factory):
    path = tmp_path_factory.mktemp("wan") / "Wan2.2_VAE.pth"
    torch.save(golden["state_dict"], path)
    return WanVideoCodec.from_checkpoint(path, torch.float32, "cpu", config=golden["config"])


def test_real_wan22_keys_land_exactly_on_autoencoderklwan():
    upstream = {k: tuple(v) for k, v in json.loads((DATA / "wan22_vae_keys.json").read_text())["keys"].items()}
    assert len(upstream) == 196
    mapped, unknown = wan22_vae_to_diffusers(upstream)
    assert unknown == []
    assert mapped == expected_vae_shapes()  # same key set, same shapes
    assert diffusers_to_wan22_vae(mapped) == upstream  # the inverse (used for fixtures) round-trips


def test_key_rules_spot_checks():
    assert wan22_vae_key_to_diffusers("conv1.weight") == "quant_conv.weight"
    assert wan22_vae_key_to_diffusers("conv2.bias") == "post_quant_conv.bias"
    assert wan22_vae_key_to_diffusers("encoder.head.0.gamma") == "encoder.norm_out.gamma"
    assert wan22_vae_key_to_diffusers("decoder.middle.2.residual.3.gamma") == "decoder.mid_block.resnets.1.norm2.gamma"
    assert (wan22_vae_key_to_diffusers("decoder.middle.1.to_qkv.weight")
            == "decoder.mid_block.attentions.0.to_qkv.weight")
    assert (wan22_vae_key_to_diffusers("encoder.downsamples.1.downsamples.2.time_conv.weight")
            == "encoder.down_blocks.1.downsampler.time_conv.weight")
    assert (wan22_vae_key_to_diffusers("decoder.upsamples.2.upsamples.0.shortcut.bias")
            == "decoder.up_blocks.2.resnets.0.conv_shortcut.bias")
    assert wan22_vae_key_to_diffusers("decoder.upsamples.0.upsamples.3.residual.2.weight") is not None
    assert wan22_vae_key_to_diffusers("encoder.middle.0.residual.4.weight") is None  # SiLU has no weights
    assert wan22_vae_key_to_diffusers("model.encoder.conv1.weight") is None


def test_latent_statistics_are_wan22s():
    assert len(LATENTS_MEAN) == len(LATENTS_STD) == 48
    assert (LATENTS_MEAN[0], LATENTS_MEAN[-1], LATENTS_STD[0], LATENTS_STD[-1]) == (-0.2289, -0.0667, 0.4765, 0.7744)


def test_encode_decode_match_upstream_numerically(golden, golden_codec):
    latent = golden_codec.encode(golden["video"].float())
    assert latent.shape == golden["latent"].shape == (8, 2, 2, 2)
    torch.testing.assert_close(latent, golden["latent"], rtol=0, atol=1e-5)
    video = golden_codec.decode(golden["z"].float())
    assert video.shape == golden["decoded"].shape == (3, 5, 32, 32)
    torch.testing.assert_close(video, golden["decoded"], rtol=0, atol=1e-5)


def test_round_trip_shapes_and_range(golden_codec):
    codec = golden_codec
    assert (codec.latent_channels, codec.spatial_factor, codec.temporal_factor) == (8, 16, 4)
    video = torch.rand(3, 9, 32, 48) * 2 - 1
    latent = codec.encode(video)
    assert latent.shape == codec.latent_shape(9, 32, 48) == (8, 3, 2, 3)
    out = codec.decode(latent)
    assert out.shape == video.shape and out.dtype == torch.float32
    assert out.abs().max() <= 1.0
    with pytest.raises(InputError, match=r"video must be \[3, 4k\+1"):
        codec.encode(torch.zeros(3, 4, 32, 32))
    with pytest.raises(InputError, match="video latent must be"):
        codec.decode(torch.zeros(48, 2, 2, 2))


def test_tiling_passthrough_keeps_shapes(golden_codec):
    codec = golden_codec
    latent = torch.randn(8, 2, 4, 4)
    try:
        codec.enable_tiling(32, 32, 16, 16)
        tiled = codec.decode(latent)
    finally:
        codec.disable_tiling()
    assert tiled.shape == (3, 5, 64, 64)
    assert codec.decode(latent).shape == tiled.shape


def test_key_errors_name_missing_and_unexpected_keys(golden, tmp_path):
    sd = dict(golden["state_dict"])
    del sd["decoder.head.2.weight"]
    sd["encoder.bogus.weight"] = torch.zeros(1)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        WanVideoCodec.from_checkpoint(path, config=golden["config"])
    msg = str(e.value)
    assert "decoder.conv_out.weight" in msg and "encoder.bogus.weight" in msg and str(path) in msg
    with pytest.raises(CheckpointError, match="not found"):
        WanVideoCodec.from_checkpoint(tmp_path / "absent.pth")
    with pytest.raises(CheckpointError, match="wrong-shape keys"):  # the tiny file against the real config
        torch.save(golden["state_dict"], path)
        WanVideoCodec.from_checkpoint(path)


def test_bf16_codec_runs_close_to_fp32(golden, tmp_path):
    path = tmp_path / "Wan2.2_VAE.pth"
    torch.save(golden["state_dict"], path)
    codec = WanVideoCodec.from_checkpoint(path, torch.bfloat16, "cpu", config=golden["config"])
    assert next(codec.module.parameters()).dtype == torch.bfloat16
    video = codec.decode(golden["z"].float())
    err = (video - golden["decoded"]).abs()
    assert video.dtype == torch.float32 and err.mean() < 0.04 and err.max() < 0.6  # 2-channel layers: bf16 is rough
