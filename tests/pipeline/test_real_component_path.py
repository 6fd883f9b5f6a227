"""The real-weight path end to end, in miniature: the `ovi` architecture name, upstream's checkpoint
layout and file formats, and the real component classes (umT5 via transformers, Wan2.2 VAE via
diffusers, MMAudio VAE + BigVGAN) - with every network shrunk so it runs on a CPU in seconds.

What this pins: that the Engine, load_components and the real codecs agree on shapes, rates and
dtypes (latent [48, F, H/16, W/16] <-> [3, 4F-3, H, W]; audio [L, 20] <-> 512 L samples at 16 kHz),
for t2v and i2v, before anyone spends GPU hours on the 11B checkpoint.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import ovi
from ovi import specs
from ovi.checkpoint.codec_keys import diffusers_to_wan22_vae
from ovi.codecs import text
from ovi.codecs.mmaudio import VAE_FILE as AUDIO_VAE_FILE
from ovi.codecs.mmaudio import VOCODER_FILE, MMAudioCodec
from ovi.codecs.wan_vae import VAE_FILE as VIDEO_VAE_FILE
from ovi.codecs.wan_vae import WanVideoCodec, make_wan22_vae
from ovi.model import configs
from ovi.pipeline.random_checkpoint import RANDOM_MARKER, make_random_checkpoint
from ovi.specs import FUSION_DIR

DATA = Path(__file__).parent / "data"
SMALL_WAN = dict(base_dim=8, decoder_base_dim=12)  # z_dim stays 48: the DiT's in_dim


@pytest.fixture
def miniature_real_setup(tmp_path, monkeypatch):
    from tests.pipeline.test_mmaudio import configs as mm_configs
    mm_golden = torch.load(DATA / "mmaudio_golden.pt", weights_only=True)
    vae_cfg, voc_cfg = mm_configs(mm_golden)

    # Shrink what the `ovi` name builds; keep every code path that name takes.
    monkeypatch.setitem(configs.ARCHITECTURES, "ovi", configs.ARCHITECTURES["tiny"])
    monkeypatch.setitem(text.T5_CONFIGS, "ovi", text.T5_CONFIGS["tiny"])
    spec = specs.MODEL_SPECS["720x720_5s"]
    monkeypatch.setitem(specs.MODEL_SPECS, "720x720_5s", dataclasses.replace(
        spec, video_latent_frames=2, audio_latent_length=6, area=64 * 64))
    wan_from = WanVideoCodec.from_checkpoint.__func__
    mm_from = MMAudioCodec.from_checkpoint.__func__
    monkeypatch.setattr(WanVideoCodec, "from_checkpoint",
                        classmethod(lambda cls, path, **kw: wan_from(cls, path, config=SMALL_WAN, **kw)))
    monkeypatch.setattr(MMAudioCodec, "from_checkpoint", classmethod(
        lambda cls, vae, voc, **kw: mm_from(cls, vae, voc, vae_config=vae_cfg, vocoder_config=voc_cfg, **kw)))

    # Upstream's layout: fusion DiT + umT5 (random, tiny), Wan2.2 VAE in Wan names, MMAudio files.
    ckpt = make_random_checkpoint(tmp_path / "ckpts", "tiny")
    (ckpt / FUSION_DIR / RANDOM_MARKER).unlink()  # upstream's folders carry no "made at random" marker
    torch.manual_seed(0)
    vae = make_wan22_vae(**SMALL_WAN)
    torch.save(diffusers_to_wan22_vae(vae.state_dict()), ckpt / VIDEO_VAE_FILE)
    (ckpt / AUDIO_VAE_FILE).parent.mkdir(parents=True, exist_ok=True)
    torch.save(mm_golden["vae_state_dict"], ckpt / AUDIO_VAE_FILE)
    torch.save(mm_golden["vocoder_file"], ckpt / VOCODER_FILE)
    return ovi.load_config("ovi_720x720_5s", ckpt_dir=str(ckpt), sample_steps=2, dtype="fp32", device="cpu",
                           video_frame_height_width=[64, 64], output_dir=str(tmp_path / "out"))


def test_real_components_generate_t2v_and_i2v(miniature_real_setup, tmp_path):
    engine = ovi.Engine.from_config(miniature_real_setup)
    assert engine.components.describe() == {"text_encoder": "UMT5EncoderModel", "model": "FusionModel",
                                            "video_codec": "WanVideoCodec", "audio_codec": "MMAudioCodec"}
    clip = engine.generate("A red ball bounces. <AUDCAP>thuds<ENDAUDCAP>")
    assert clip.video.shape == (5, 64, 64, 3) and clip.video.dtype == np.uint8
    assert clip.audio.shape == (6 * 512,) and np.isfinite(clip.audio).all()
    assert clip.latents["video"].shape == (48, 2, 4, 4) and clip.latents["audio"].shape == (6, 20)
    assert "Audio:" not in clip.meta["formatted_prompt"]  # the 720 model keeps <AUDCAP> captions
    paths = clip.save(tmp_path / "real_path")
    assert paths["mp4"].stat().st_size > 0

    image = np.full((64, 64, 3), 200, dtype=np.uint8)
    i2v = engine.generate("a scene", mode="i2v", image=image)
    # The image latent pins frame 0: the Wan VAE's own encoding of the image as a one-frame video in [-1, 1]
    # (64 x 64: the generation size, so nothing resizes it).
    pixels = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
    first = engine.components.video_codec.encode(pixels[:, None])
    assert first.shape == (48, 1, 4, 4)
    torch.testing.assert_close(i2v.latents["video"][:, :1], first)
