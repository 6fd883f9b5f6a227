"""ovi.codecs.mmaudio: MMAudio 16 kHz VAE + BigVGAN v1 vocoder + mel front end.

Fixtures in tests/pipeline/data, made once from upstream Ovi's own code (commit in each file):
- mmaudio_keys.json: every key + shape of upstream's real networks, built on the meta device:
  the VAE (`get_my_vae('16k')`, keys of v1-16.pth) and the vocoder (`BigVGANVocoder` with
  bigvgan_vocoder.yml, keys of best_netG.pt["generator"], weight norm as parametrizations).
- mmaudio_golden.pt: the same upstream classes with reduced channels, because the real networks
  (171 M + 112 M parameters) cannot be a small fixture: VAE hidden_dim 4 (real 384), vocoder
  upsample_initial_channel 32 with 4 stages (4,4,4,4)/(8,8,8,8) instead of 1536 with 6 stages
  (4,4,2,2,2,2)/(8,8,4,4,4,4) -- still x256 per mel frame. Random weights (fp16 values, exact in
  fp32) in upstream's file formats, plus upstream's outputs: VAE decode mel and vocoder wave for a
  latent, and librosa-based mel + VAE encoder mean for a wave.
"""

import json
from pathlib import Path

import pytest
import torch

from ovi.checkpoint.codec_keys import bigvgan_from_upstream
from ovi.codecs.mmaudio import (
    BigVGANConfig,
    BigVGANGenerator,
    MelFrontEnd,
    MMAudioCodec,
    MMAudioVAE,
    MMAudioVAEConfig,
    kaiser_sinc_lowpass,
)
from ovi.errors import CheckpointError, InputError

DATA = Path(__file__).parent / "data"
ATOL = 1e-5  # measured difference is 0.0 on x86 CPU; the margin covers other CPUs' kernels


@pytest.fixture(scope="module")
def golden():
    return torch.load(DATA / "mmaudio_golden.pt", weights_only=True)


def configs(golden):
    v = golden["vocoder_config"]
    return (MMAudioVAEConfig(**golden["vae_config"]),
            BigVGANConfig(upsample_initial_channel=v["upsample_initial_channel"],
                          upsample_rates=tuple(v["upsample_rates"]),
                          upsample_kernel_sizes=tuple(v["upsample_kernel_sizes"])))


def write(tmp_path, golden, vocoder_file=None, vae_sd=None):
    vae_path, voc_path = tmp_path / "v1-16.pth", tmp_path / "best_netG.pt"
    torch.save(golden["vae_state_dict"] if vae_sd is None else vae_sd, vae_path)
    torch.save(golden["vocoder_file"] if vocoder_file is None else vocoder_file, voc_path)
    return vae_path, voc_path


def load(tmp_path, golden, **kw):
    vae_cfg, voc_cfg = configs(golden)
    return MMAudioCodec.from_checkpoint(*write(tmp_path, golden, **kw), torch.float32, "cpu",
                                        vae_config=vae_cfg, vocoder_config=voc_cfg)


@pytest.fixture(scope="module")
def codec(golden, tmp_path_factory):
    return load(tmp_path_factory.mktemp("mm"), golden)


def meta(shapes):
    return {k: torch.empty(v, device="meta") for k, v in shapes.items()}


def test_real_config_keys_and_shapes_match_upstream():
    keys = json.loads((DATA / "mmaudio_keys.json").read_text())
    with torch.device("meta"):
        vae, vocoder = MMAudioVAE(), BigVGANGenerator()
    ours = lambda m: {k: list(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert ours(vae) == keys["vae"]
    assert len(keys["vocoder"]) == 784
    folded = {k: list(v.shape) for k, v in bigvgan_from_upstream({"generator": meta(keys["vocoder"])}).items()}
    assert folded == ours(vocoder)
    old_style = {k.replace(".parametrizations.weight.original0", ".weight_g")
                  .replace(".parametrizations.weight.original1", ".weight_v"): v for k, v in keys["vocoder"].items()}
    assert {k: list(v.shape) for k, v in bigvgan_from_upstream(meta(old_style)).items()} == ours(vocoder)


def test_decode_matches_upstream_numerically(golden, codec):
    z = golden["z"].float()
    mel = codec.module.vae.decode(z.t()[None])[0]
    torch.testing.assert_close(mel, golden["mel"], rtol=0, atol=ATOL)
    wave = codec.decode(z)
    assert wave.shape == golden["wave_out"].shape == (512 * z.shape[0],)
    torch.testing.assert_close(wave, golden["wave_out"], rtol=0, atol=ATOL)
    assert 0.1 < wave.std() and wave.abs().max() < 1  # the fixture exercises the vocoder, not tanh's rails


def test_encode_matches_upstream_numerically(golden, codec):
    wave = golden["wave_in"].float()
    torch.testing.assert_close(MelFrontEnd()(wave[None])[0], golden["mel_in"], rtol=0, atol=ATOL)
    latent = codec.encode(wave)
    assert latent.shape == golden["latent"].shape == (wave.shape[0] // 512, 20)
    torch.testing.assert_close(latent, golden["latent"], rtol=0, atol=ATOL)


def test_old_style_weight_norm_keys_and_missing_filters_load_the_same(golden, codec, tmp_path):
    sd = golden["vocoder_file"]["generator"]
    renamed = {k.replace(".parametrizations.weight.original0", ".weight_g")
                .replace(".parametrizations.weight.original1", ".weight_v"): v
               for k, v in sd.items() if not k.endswith(".filter")}
    other = load(tmp_path, golden, vocoder_file=renamed)
    z = golden["z"].float()
    assert torch.equal(other.decode(z), codec.decode(z))
    assert torch.equal(kaiser_sinc_lowpass(0.25, 0.3, 12), sd["resblocks.0.activations.0.upsample.filter"])


def test_round_trip_shapes_and_padding(codec):
    latent = codec.encode(torch.zeros(1000))          # padded up to 2 latents of 512 samples
    assert latent.shape == (2, 20) and latent.dtype == torch.float32
    assert codec.decode(latent).shape == (1024,)
    assert codec.samples_per_latent == 512 and codec.latent_channels == 20
    with pytest.raises(InputError, match=r"audio latent must be \[L, 20\]"):
        codec.decode(torch.zeros(20, 7))
    with pytest.raises(InputError, match="1-D wave"):
        codec.encode(torch.zeros(2, 512))


def test_key_errors_name_missing_and_unexpected_keys(golden, tmp_path):
    vae_sd = dict(golden["vae_state_dict"])
    del vae_sd["decoder.conv_out.weight"]
    vae_sd["decoder.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        load(tmp_path, golden, vae_sd=vae_sd)
    assert "decoder.conv_out.weight" in str(e.value) and "decoder.extra" in str(e.value) and "v1-16.pth" in str(e.value)
    voc = {k: v for k, v in golden["vocoder_file"]["generator"].items()
           if k != "conv_post.parametrizations.weight.original1"}  # half a weight-norm pair
    with pytest.raises(CheckpointError) as e:
        load(tmp_path, golden, vocoder_file={"generator": voc})
    assert "conv_post.weight" in str(e.value) and "conv_post.parametrizations.weight.original0" in str(e.value)
    with pytest.raises(CheckpointError, match="not found"):
        MMAudioCodec.from_checkpoint(tmp_path / "nope.pth", tmp_path / "best_netG.pt")


def test_missing_real_codec_files_are_named(tmp_path):
    from ovi.pipeline.components import real_codec_paths
    with pytest.raises(CheckpointError, match=r"Wan2\.2 video VAE not found at .*Wan2\.2-TI2V-5B/Wan2\.2_VAE\.pth"):
        real_codec_paths(tmp_path)
    (tmp_path / "Wan2.2-TI2V-5B").mkdir()
    (tmp_path / "Wan2.2-TI2V-5B" / "Wan2.2_VAE.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"MMAudio audio VAE not found at .*MMAudio/ext_weights/v1-16\.pth"):
        real_codec_paths(tmp_path)


def test_bf16_codec_runs_close_to_fp32(golden, tmp_path):
    vae_cfg, voc_cfg = configs(golden)
    codec = MMAudioCodec.from_checkpoint(*write(tmp_path, golden), torch.bfloat16, "cpu",
                                         vae_config=vae_cfg, vocoder_config=voc_cfg)
    wave = codec.decode(golden["z"].float())
    assert wave.dtype == torch.float32 and (wave - golden["wave_out"]).abs().max() < 0.15
