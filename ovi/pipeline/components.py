"""Loading the pipeline's components from a checkpoint directory in upstream's layout.

    <ckpt_dir>/Ovi/<model file>                    fusion DiT (ovi.checkpoint)
    <ckpt_dir>/Wan2.2-TI2V-5B/models_t5_...pth     umT5 encoder + google/umt5-xxl/ tokenizer
    <ckpt_dir>/Wan2.2-TI2V-5B/Wan2.2_VAE.pth       video VAE        (real model only)
    <ckpt_dir>/MMAudio/ext_weights/...             audio VAE+vocoder (real model only)

The tiny architecture uses toy codecs (ovi.pipeline.codecs) and makes its checkpoint on first use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ovi.checkpoint.loading import FP8, fusion_checkpoint_path, load_fusion_model
from ovi.errors import NotAvailableError
from ovi.model.configs import RANDOM_ARCHITECTURES
from ovi.pipeline.codecs import AudioCodec, ToyAudioCodec, ToyVideoCodec, VideoCodec
from ovi.pipeline.specs import FP8_CHECKPOINT_FILE, MODEL_SPECS
from ovi.pipeline.text import T5TextEncoder

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


def ensure_random_checkpoint(ckpt_dir: str | Path, arch: str, fp8: bool = False) -> None:
    """Random-weight presets (tiny, mid) make their checkpoint on first use, deterministically."""
    from ovi.checkpoint.tiny import is_random_checkpoint_dir, make_random_checkpoint
    ckpt_dir = Path(ckpt_dir)
    if not is_random_checkpoint_dir(ckpt_dir, arch) or (fp8 and not (ckpt_dir / "Ovi" / FP8_CHECKPOINT_FILE).is_file()):
        log.info("making the random %s checkpoint in %s", arch, ckpt_dir)
        make_random_checkpoint(ckpt_dir, arch, fp8=fp8)


def load_components(cfg, *, device: torch.device, dtype: torch.dtype) -> Components:
    spec = MODEL_SPECS[cfg.model_name]
    architecture = cfg.model
    load_device = torch.device("cpu") if cfg.cpu_offload else device
    if architecture in RANDOM_ARCHITECTURES:
        ensure_random_checkpoint(cfg.ckpt_dir, architecture, fp8=cfg.fp8)
    else:
        # The DiT loads (ovi checkpoint inspect checks it); the real VAEs do not exist here yet.
        raise NotAvailableError(
            f"model '{architecture}' needs the Wan2.2 video VAE and MMAudio audio decoders, which are not in "
            "this build yet; the tiny model runs (load_config() or configs/tiny.yaml)")

    storage = FP8 if cfg.fp8 else dtype
    ckpt = Path(cfg.ckpt_dir) / "Ovi" / (FP8_CHECKPOINT_FILE if cfg.fp8 else spec.checkpoint_file)
    if cfg.fp8 and not ckpt.is_file():
        ckpt = fusion_checkpoint_path(cfg.ckpt_dir, spec.checkpoint_file)  # converted to fp8 while loading
    else:
        ckpt = fusion_checkpoint_path(cfg.ckpt_dir, ckpt.name)
    model = load_fusion_model(ckpt, architecture, storage=storage, compute=dtype, device=load_device)
    text = T5TextEncoder.from_checkpoint_dir(cfg.ckpt_dir, architecture, dtype=dtype, device=load_device)
    return Components(text, model, ToyVideoCodec(), ToyAudioCodec(), ckpt, storage)
