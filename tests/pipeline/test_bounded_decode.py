"""Decoding in bounded memory (vae_tiling): tiled Wan2.2 VAE decode and chunked MMAudio (BigVGAN) decode.

Wan2.2 VAE: diffusers' AutoencoderKLWan.tiled_decode. Its Wan2.2 path (patch_size 2: tiles decoded in the
patchified space, blended, then unpatchified) is checked here on random weights in upstream's key names,
loaded through WanVideoCodec.from_checkpoint:
- one tile covering the clip gives the untiled decode exactly (the patch geometry and crops are right);
- at 320x320 (2x2 tiles of 256 px, stride 128; one latent frame to keep the CPU time down) the tiled
  decode stays within the stated tolerance of the untiled one: mean |diff| <= 15% of mean |output|
  (measured 11.5%; 27% with 128 px tiles), and the error shrinks as the tiles and overlap grow. Tiling cannot be exact: the decoder's mid-block attention sees the whole frame and its convs
  reach past any tile edge; trained weights make both effects far smaller than random ones (not
  measured here: no real weights).
MMAudio: BigVGAN in chunks with 32 mel frames of context on each side equals the whole decode up to
float rounding (its receptive radius is 30 frames).
"""

from pathlib import Path

import pytest
import torch

from ovi.checkpoint.codec_keys import diffusers_to_wan22_vae
from ovi.codecs.mmaudio import BigVGANConfig, MMAudioCodec, MMAudioVAEConfig
from ovi.codecs.wan_vae import WanVideoCodec, make_wan22_vae

DATA = Path(__file__).parent / "data"
Z = 8
SMALL_WAN22 = dict(base_dim=8, decoder_base_dim=12, z_dim=Z, latents_mean=[0.0] * Z, latents_std=[1.0] * Z)


@pytest.fixture(scope="module")
def wan_codec(tmp_path_factory):
    torch.manual_seed(0)
    vae = make_wan22_vae(**SMALL_WAN22)  # diffusers' own random init, Wan2.2 structure (residual, patch 2)
    path = tmp_path_factory.mktemp("wan") / "Wan2.2_VAE.pth"
    torch.save(diffusers_to_wan22_vae(vae.state_dict()), path)  # upstream's key names
    return WanVideoCodec.from_checkpoint(path, config=SMALL_WAN22)


def _tiled(codec, latent, tile, stride):
    codec.enable_tiling(tile, tile, stride, stride)
    try:
        return codec.decode(latent)
    finally:
        codec.disable_tiling()


@torch.no_grad()
def test_one_tile_over_the_whole_clip_is_the_untiled_decode(wan_codec):
    latent = torch.randn(Z, 2, 6, 8)
    whole = wan_codec.decode(latent)
    vae = wan_codec.vae
    vae.enable_tiling(256, 256, 192, 192)  # a tile larger than the 96x128 clip: one tile, no blending
    try:
        z = (latent.float() / wan_codec.inv_std + wan_codec.mean)[None]
        tiled = vae.tiled_decode(z, return_dict=False)[0][0].float().clamp(-1, 1)
    finally:
        wan_codec.disable_tiling()
    assert tiled.shape == whole.shape == (3, 5, 96, 128)
    assert torch.allclose(tiled, whole, atol=1e-5)


@torch.no_grad()
def test_tiled_wan22_decode_stays_within_the_stated_tolerance_at_a_size_that_tiles(wan_codec):
    torch.manual_seed(1)
    latent = torch.randn(Z, 1, 20, 20)                 # 320 x 320 pixels
    whole = wan_codec.decode(latent)
    scale = float(whole.abs().mean())
    errors = {}
    for tile, stride in ((128, 64), (256, 128)):
        tiled = _tiled(wan_codec, latent, tile, stride)
        assert tiled.shape == whole.shape and tiled.abs().max() <= 1
        errors[tile] = float((tiled - whole).abs().mean()) / scale
    assert errors[256] <= 0.15
    assert 0 < errors[256] < errors[128]               # converges as the overlap grows (not a misplaced tile)


@pytest.fixture(scope="module")
def mmaudio_codec(tmp_path_factory):
    golden = torch.load(DATA / "mmaudio_golden.pt", weights_only=True)  # random weights, upstream's format
    v = golden["vocoder_config"]
    tmp = tmp_path_factory.mktemp("mm")
    torch.save(golden["vae_state_dict"], tmp / "v1-16.pth")
    torch.save(golden["vocoder_file"], tmp / "best_netG.pt")
    return MMAudioCodec.from_checkpoint(tmp / "v1-16.pth", tmp / "best_netG.pt", torch.float32, "cpu",
                                        vae_config=MMAudioVAEConfig(**golden["vae_config"]),
                                        vocoder_config=BigVGANConfig(
                                            upsample_initial_channel=v["upsample_initial_channel"],
                                            upsample_rates=tuple(v["upsample_rates"]),
                                            upsample_kernel_sizes=tuple(v["upsample_kernel_sizes"])))


@torch.no_grad()
@pytest.mark.parametrize("chunk", [24])
def test_chunked_mmaudio_decode_equals_the_whole_decode(mmaudio_codec, chunk):
    torch.manual_seed(2)
    latent = torch.randn(50, mmaudio_codec.latent_channels)   # 100 mel frames: several chunks, a short last one
    whole = mmaudio_codec.decode(latent)
    mmaudio_codec.decode_chunk_frames = chunk
    try:
        chunked = mmaudio_codec.decode(latent)
    finally:
        mmaudio_codec.decode_chunk_frames = None
    assert chunked.shape == whole.shape and float(whole.std()) > 0.01
    assert torch.allclose(chunked, whole, atol=1e-5, rtol=0)


@torch.no_grad()
def test_too_little_context_would_show_seams(mmaudio_codec, monkeypatch):
    """The equality above is not vacuous: with 4 frames of context the chunk edges differ."""
    torch.manual_seed(2)
    latent = torch.randn(50, mmaudio_codec.latent_channels)
    whole = mmaudio_codec.decode(latent)
    monkeypatch.setattr(mmaudio_codec, "VOCODER_CONTEXT", 4)
    mmaudio_codec.decode_chunk_frames = 24
    try:
        chunked = mmaudio_codec.decode(latent)
    finally:
        mmaudio_codec.decode_chunk_frames = None
    assert (chunked - whole).abs().max() > 1e-4
