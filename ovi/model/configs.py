"""Backbone configs as upstream's dicts (same keys and values as upstream's model json files)."""

from __future__ import annotations

import copy

from ovi.errors import ConfigError

OVI_VIDEO_CONFIG = {
    "patch_size": [1, 2, 2], "model_type": "ti2v", "dim": 3072, "ffn_dim": 14336, "freq_dim": 256,
    "num_heads": 24, "num_layers": 30, "in_dim": 48, "out_dim": 48, "text_len": 512,
    "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
}
OVI_AUDIO_CONFIG = {
    "patch_size": [1], "model_type": "t2a", "dim": 3072, "ffn_dim": 14336, "freq_dim": 256,
    "num_heads": 24, "num_layers": 30, "in_dim": 20, "out_dim": 20, "text_len": 512,
    "window_size": [-1, -1], "qk_norm": True, "cross_attn_norm": True, "eps": 1e-6,
    "temporal_rope_scaling_factor": 0.19676,
}

# Same architecture, small dims: 4 heads of 32 (head count divisible by sp=2 and 4), 3 fused blocks,
# a 64-wide text encoder. Runs a full 8-step generation on a laptop CPU in seconds.
TINY_TEXT_DIM = 64
TINY_VIDEO_CONFIG = {
    **OVI_VIDEO_CONFIG, "dim": 128, "ffn_dim": 256, "freq_dim": 64, "num_heads": 4, "num_layers": 3,
    "text_len": 256, "text_dim": TINY_TEXT_DIM,
}
TINY_AUDIO_CONFIG = {
    **OVI_AUDIO_CONFIG, "dim": 128, "ffn_dim": 256, "freq_dim": 64, "num_heads": 4, "num_layers": 3,
    "text_len": 256, "text_dim": TINY_TEXT_DIM,
}

# A mid-size preset for benchmarks on CPUs (random weights): 8 heads of 64, 4 fused blocks. Big enough
# that attention and communication matter, small enough for gloo ranks on a laptop.
MID_VIDEO_CONFIG = {**TINY_VIDEO_CONFIG, "dim": 512, "ffn_dim": 1536, "freq_dim": 128, "num_heads": 8, "num_layers": 4}
MID_AUDIO_CONFIG = {**TINY_AUDIO_CONFIG, "dim": 512, "ffn_dim": 1536, "freq_dim": 128, "num_heads": 8, "num_layers": 4}

# The trained tiny model (`tiny_trained`, DESIGN §5): tiny's widths with a wider FFN, and text_len 32
# (its word-level prompts are ~15 tokens; upstream pads to 512). 4 heads keep sp=2/4 possible.
TINY_TRAINED_VIDEO_CONFIG = {**TINY_VIDEO_CONFIG, "ffn_dim": 512, "text_len": 32}
TINY_TRAINED_AUDIO_CONFIG = {**TINY_AUDIO_CONFIG, "ffn_dim": 512, "text_len": 32}

ARCHITECTURES = {
    "ovi": (OVI_VIDEO_CONFIG, OVI_AUDIO_CONFIG),
    "tiny": (TINY_VIDEO_CONFIG, TINY_AUDIO_CONFIG),
    "mid": (MID_VIDEO_CONFIG, MID_AUDIO_CONFIG),
    "tiny_trained": (TINY_TRAINED_VIDEO_CONFIG, TINY_TRAINED_AUDIO_CONFIG),
}
RANDOM_ARCHITECTURES = ("tiny", "mid")  # made on demand from a seed; no downloaded weights


def architecture(name: str) -> tuple[dict, dict]:
    """Deep copies of (video_config, audio_config) for an architecture preset."""
    if name not in ARCHITECTURES:
        raise ConfigError(f"unknown model architecture '{name}'; use one of {', '.join(ARCHITECTURES)}")
    video, audio = ARCHITECTURES[name]
    return copy.deepcopy(video), copy.deepcopy(audio)
