"""What the memory model (ovi.parallel.memory) needs to know about a config besides the DiT: the clip's
token counts and the other components' parameter bytes, counted on the meta device (nothing loaded).

Decoding holds the clip three times in fp32 (decoder output, clamped copy, the uint8 conversion's
intermediate) plus the uint8 frames (measured on the toy codecs). For the real Wan2.2 VAE its working
set is added as a rough figure, 64 bytes per output pixel of one 4-frame chunk (activations of its
256-channel full-resolution stage, several alive at once): not measured here;
experiments/gpu_check_fsdp.py records the real peak on a GPU.
"""

from __future__ import annotations

import functools

import torch

from ovi.codecs.text import make_t5
from ovi.codecs.toy import ToyVideoCodec
from ovi.model.configs import RANDOM_ARCHITECTURES
from ovi.parallel.memory import ParamLayout, Workload, text_param_layout
from ovi.pipeline.images import snap_to_area
from ovi.pipeline.objective import video_tokens
from ovi.specs import MODEL_SPECS

WAN_DECODER_BYTES_PER_PIXEL = 64  # per output pixel of one 4-frame chunk (see the module docstring)


def latent_shape(model_name: str, height_width) -> tuple[int, int, int, int]:
    """The video latent shape of a t2v clip of `model_name` at `height_width`, as Engine.plan makes it
    (snapped to the model's area; every codec shares the 16x spatial / 4x temporal geometry)."""
    spec = MODEL_SPECS[model_name]
    return ToyVideoCodec().latent_shape(spec.num_frames, *snap_to_area(*height_width, spec.area))


def sequence_lengths(model_name: str, height_width) -> tuple[int, int]:
    """(video tokens, audio tokens) of that clip: 1x2x2 patches of its latent, and its audio latents."""
    return video_tokens(latent_shape(model_name, height_width)), MODEL_SPECS[model_name].audio_latent_length


@functools.lru_cache(maxsize=None)
def _component_params(architecture: str) -> tuple[int, int]:
    """(text encoder, codecs) parameter counts of an architecture, built on the meta device."""
    with torch.device("meta"):
        text = sum(p.numel() for p in make_t5(architecture).parameters())
        if architecture in RANDOM_ARCHITECTURES:
            return text, 0  # toy codecs have no weights
        from ovi.codecs.mmaudio import BigVGANConfig, BigVGANGenerator, MMAudioVAE, MMAudioVAEConfig
        from ovi.codecs.wan_vae import make_wan22_vae
        codecs = sum(sum(p.numel() for p in m.parameters())
                     for m in (make_wan22_vae(), MMAudioVAE(MMAudioVAEConfig()), BigVGANGenerator(BigVGANConfig())))
    return text, codecs


@functools.lru_cache(maxsize=None)
def text_layout(architecture: str, dtype: torch.dtype) -> ParamLayout:
    """The text encoder's FSDP units in `dtype` (shard_text_model), counted on the meta device."""
    with torch.device("meta"):
        return text_param_layout(make_t5(architecture).to(dtype))


def workload(cfg, dtype: torch.dtype, height_width=None) -> Workload:
    """The Workload of one t2v clip of `cfg` (at its video_frame_height_width unless given) in `dtype`."""
    height_width = height_width or cfg.height_width
    video_tokens, audio_tokens = sequence_lengths(cfg.model_name, height_width)
    text, codecs = _component_params(cfg.model)
    spec = MODEL_SPECS[cfg.model_name]
    height, width = snap_to_area(*height_width, spec.area)
    clip = 3 * spec.num_frames * height * width
    decode = 3 * clip * 4 + clip
    if cfg.model not in RANDOM_ARCHITECTURES:
        decode += WAN_DECODER_BYTES_PER_PIXEL * 4 * height * width
    return Workload(video_tokens=video_tokens, audio_tokens=audio_tokens, text_encoder_bytes=text * dtype.itemsize,
                    codec_bytes=codecs * dtype.itemsize, decode_bytes=decode, text_layout=text_layout(cfg.model, dtype))
