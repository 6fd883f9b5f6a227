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
    # Wan2.2's up block: 3 residual blocks, then the resample as upsamples.3 (tests/pipeline/data/wan22_vae_keys.json)
    assert (wan22_vae_key_to_diffusers("decoder.upsamples.0.upsamples.2.residual.2.weight")
            == "decoder.up_blocks.0.resnets.2.conv1.weight")
    assert (wan22_vae_key_to_diffusers("decoder.upsamples.0.upsamples.2.residual.6.bias")
            == "decoder.up_blocks.0.resnets.2.conv2.bias")
    assert (wan22_vae_key_to_diffusers("decoder.upsamples.0.upsamples.3.resample.1.weight")
            == "decoder.up_blocks.0.upsampler.resample.1.weight")
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


def _stitched_tiles(codec, latent, tile: int, stride: int, patch: int = 2):
    """The tiled decode from its formula (diffusers' AutoencoderKLWan.tiled_decode): every latent tile
    decoded alone, each blended linearly into the tile above and to its left over `tile - stride` pixels
    (weights step once per 2x2 patch: Wan2.2 blends before unpatchifying), the first `stride` pixels of
    each kept."""
    f, blend = codec.spatial_factor, tile - stride
    t, s = tile // f, stride // f
    height, width = latent.shape[-2:]
    rows = [[codec.decode(latent[..., i:i + t, j:j + t]) for j in range(0, width, s)] for i in range(0, height, s)]
    out = []
    for i, row in enumerate(rows):
        for j, px in enumerate(row):
            px = px.clone()
            if i > 0:
                above = rows[i - 1][j]
                for y in range(min(above.shape[-2], px.shape[-2], blend)):
                    w = (y // patch) / (blend // patch)
                    px[..., y, :] = above[..., y - blend, :] * (1 - w) + px[..., y, :] * w
            if j > 0:
                left = row[j - 1]
                for x in range(min(left.shape[-1], px.shape[-1], blend)):
                    w = (x // patch) / (blend // patch)
                    px[..., x] = left[..., x - blend] * (1 - w) + px[..., x] * w
            row[j] = px
        out.append(torch.cat([px[..., :stride, :stride] for px in row], -1))
    return torch.cat(out, -2)[..., :height * f, :width * f]


def test_tiled_decode_is_the_blend_of_tiles_decoded_alone(golden, tmp_path):
    path = tmp_path / "Wan2.2_VAE.pth"
    torch.save(golden["state_dict"], path)
    codec = WanVideoCodec.from_checkpoint(path, torch.float32, "cpu", config=golden["config"])
    with torch.no_grad():  # outputs well inside [-1, 1]: the final clamp then commutes with the blend
        codec.vae.decoder.conv_out.weight.mul_(0.1)
        codec.vae.decoder.conv_out.bias.mul_(0.1)
    latent = torch.randn(8, 2, 6, 6, generator=torch.Generator().manual_seed(0))  # 96 x 96 px: 2 x 2 tiles
    whole = codec.decode(latent)
    try:
        codec.enable_tiling(64, 64, 48, 48)
        tiled = codec.decode(latent)
    finally:
        codec.disable_tiling()
    assert tiled.shape == whole.shape == (3, 5, 96, 96) and tiled.abs().max() < 0.9
    torch.testing.assert_close(tiled, _stitched_tiles(codec, latent, 64, 48), rtol=0, atol=1e-5)
    # The decoder's attention sees the whole frame, so tiles are not the whole decode: an enable_tiling
    # that did nothing would be this far off.
    assert (tiled - whole).abs().max() > 0.05
    torch.testing.assert_close(codec.decode(latent), whole)  # disable_tiling restores the whole decode


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
