"""Loading the pipeline's components from a checkpoint directory in upstream's layout.

    <ckpt_dir>/Ovi/<model file>                    fusion DiT (ovi.checkpoint)
    <ckpt_dir>/Wan2.2-TI2V-5B/models_t5_...pth     umT5 encoder + google/umt5-xxl/ tokenizer
    <ckpt_dir>/Wan2.2-TI2V-5B/Wan2.2_VAE.pth       video VAE         (real model only; ovi.codecs.wan_vae)
    <ckpt_dir>/MMAudio/ext_weights/v1-16.pth       audio VAE         (real model only; ovi.codecs.mmaudio)
    <ckpt_dir>/MMAudio/ext_weights/best_netG.pt    BigVGAN vocoder   (real model only; ovi.codecs.mmaudio)

The random-weight presets (tiny, mid) use toy codecs (ovi.codecs.toy) and make their checkpoint on first use;
the trained tiny model (tiny_trained) uses the shapes codecs (ovi.codecs.shapes) and its bundled weights.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ovi.checkpoint.loading import FP8, fusion_checkpoint_path, load_fusion_model
from ovi.codecs.base import AudioCodec, VideoCodec
from ovi.codecs.mmaudio import MMAudioCodec
from ovi.codecs.shapes import ShapesAudioCodec, ShapesVideoCodec
from ovi.codecs.text import T5TextEncoder
from ovi.codecs.toy import ToyAudioCodec, ToyVideoCodec
from ovi.codecs.wan_vae import WanVideoCodec
from ovi.errors import CheckpointError
from ovi.model.configs import RANDOM_ARCHITECTURES
from ovi.pipeline.memory_profiles import dit_loads_on_host, quantize_while_loading, text_encoder_on_cpu
from ovi.pipeline.random_checkpoint import RANDOM_MARKER, ensure_random_checkpoint
from ovi.specs import (
    FP8_CHECKPOINT_FILE,
    FUSION_DIR,
    MMAUDIO_VAE_FILE,
    MMAUDIO_VOCODER_FILE,
    MODEL_SPECS,
    WAN_VAE_FILE,
)

log = logging.getLogger(__name__)


@dataclass
class Components:
    text_encoder: T5TextEncoder
    model: torch.nn.Module
    video_codec: VideoCodec
    audio_codec: AudioCodec
    checkpoint: Path
    storage_dtype: torch.dtype

    def describe(self) -> dict[str, str]:
        return {
            "text_encoder": type(self.text_encoder.model).__name__,
            "model": type(self.model).__name__,
            "video_codec": type(self.video_codec).__name__,
            "audio_codec": type(self.audio_codec).__name__,
        }


def codec_family(cfg) -> str:
    """Which codecs a config runs through: "toy" for the random presets (whatever model_name's spec says),
    else its spec's ("real" Wan2.2 VAE + MMAudio, or the trained tiny model's "shapes")."""
    return "toy" if cfg.model in RANDOM_ARCHITECTURES else MODEL_SPECS[cfg.model_name].codecs


def load_components(cfg, *, device: torch.device, dtype: torch.dtype, fusion_loader=None, text_placer=None
                    ) -> Components:
    """Every component of `cfg` in `dtype` (on the CPU with cpu_offload). `fusion_loader(path,
    architecture, storage=, compute=)` loads the fusion DiT instead of a plain `load_fusion_model`
    on the device (FSDP's sharded loading; ovi.parallel.fsdp); `text_placer(meta_model)` shards the
    text encoder and has only this rank's rows read (shard_text_model; T5TextEncoder)."""
    spec = MODEL_SPECS[cfg.model_name]
    architecture = cfg.model
    load_device = torch.device("cpu") if cfg.cpu_offload else device
    codecs = codec_family(cfg)
    marker = Path(cfg.ckpt_dir) / FUSION_DIR / RANDOM_MARKER
    if architecture not in RANDOM_ARCHITECTURES and marker.is_file():
        made_for = marker.read_text().strip()
        raise CheckpointError(f"{cfg.ckpt_dir} holds a random '{made_for}' checkpoint (made on first use or by "
                              f"`ovi checkpoint make-tiny`), not weights for '{architecture}'; set model_name: "
                              f"{made_for} to run it, or point ckpt_dir at {architecture}'s weights")
    if architecture in RANDOM_ARCHITECTURES:
        ensure_random_checkpoint(cfg.ckpt_dir, architecture, fp8=cfg.fp8)
    elif codecs == "real":
        codec_files = real_codec_paths(cfg.ckpt_dir)  # checked before the large DiT loads

    storage = FP8 if cfg.fp8 else dtype
    ckpt = Path(cfg.ckpt_dir) / FUSION_DIR / (FP8_CHECKPOINT_FILE if cfg.fp8 else spec.checkpoint_file)
    if cfg.fp8 and not ckpt.is_file():
        ckpt = fusion_checkpoint_path(cfg.ckpt_dir, spec.checkpoint_file)  # converted to fp8 while loading
    else:
        ckpt = fusion_checkpoint_path(cfg.ckpt_dir, ckpt.name)
    if fusion_loader is None:  # a memory profile quantises / places the DiT from host memory (memory_profiles)
        fusion_loader = functools.partial(load_fusion_model, after_block=quantize_while_loading(cfg),
                                          device=torch.device("cpu") if dit_loads_on_host(cfg) else load_device)
    model = fusion_loader(ckpt, architecture, storage=storage, compute=dtype)
    text = T5TextEncoder.from_checkpoint_dir(cfg.ckpt_dir, architecture, dtype=dtype,
                                             device=torch.device("cpu") if text_encoder_on_cpu(cfg) else load_device,
                                             place=text_placer)
    if codecs == "toy":
        return Components(text, model, ToyVideoCodec(), ToyAudioCodec(), ckpt, storage)
    if codecs == "shapes":
        return Components(text, model, ShapesVideoCodec(), ShapesAudioCodec(), ckpt, storage)
    video_codec, audio_codec = load_real_codecs(codec_files, dtype=dtype, device=load_device)
    return Components(text, model, video_codec, audio_codec, ckpt, storage)


def real_codec_paths(ckpt_dir: str | Path) -> dict[str, Path]:
    """The real model's codec files in upstream's layout; CheckpointError naming the first missing one."""
    files = {"Wan2.2 video VAE": Path(ckpt_dir) / WAN_VAE_FILE,
             "MMAudio audio VAE": Path(ckpt_dir) / MMAUDIO_VAE_FILE,
             "MMAudio BigVGAN vocoder": Path(ckpt_dir) / MMAUDIO_VOCODER_FILE}
    for name, path in files.items():
        if not path.is_file():
            raise CheckpointError(
                f"{name} not found at {path}; the real model needs upstream's layout <ckpt_dir>/{WAN_VAE_FILE}, "
                f"<ckpt_dir>/{MMAUDIO_VAE_FILE} and <ckpt_dir>/{MMAUDIO_VOCODER_FILE} (upstream's download_weights.py "
                "fetches them from Wan-AI/Wan2.2-TI2V-5B and hkchengrex/MMAudio)")
    return files


def load_real_codecs(files: dict[str, Path], *, dtype: torch.dtype, device) -> tuple[VideoCodec, AudioCodec]:
    """Wan2.2 VAE + MMAudio (VAE, BigVGAN) in `dtype` on `device` (upstream runs both in bf16)."""
    video_vae, audio_vae, vocoder = files.values()
    return (WanVideoCodec.from_checkpoint(video_vae, dtype=dtype, device=device),
            MMAudioCodec.from_checkpoint(audio_vae, vocoder, dtype=dtype, device=device))
