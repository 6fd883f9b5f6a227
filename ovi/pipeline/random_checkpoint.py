"""Random checkpoints in upstream's directory layout and key names: `make_tiny` (tests, demos, the
embedded default) and `make_random_checkpoint` for any random-weight preset (e.g. `mid` for benchmarks).

Deterministic for a given seed, so every machine that makes one gets the same weights (and clips).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from ovi.checkpoint.adapter import hf_t5_to_wan
from ovi.checkpoint.loading import FP8, convert_checkpoint, save_state_dict
from ovi.codecs.text import T5_CONFIGS, make_t5
from ovi.errors import CheckpointError
from ovi.model import FusionModel
from ovi.model.configs import architecture
from ovi.specs import (
    BYTE_TOKENIZER_FILE,
    FP8_CHECKPOINT_FILE,
    FUSION_DIR,
    MODEL_SPECS,
    T5_DIR,
    T5_FILE,
    TOKENIZER_DIR,
)

log = logging.getLogger(__name__)
RANDOM_MARKER = "random_architecture.txt"  # written last: marks a folder as a (complete) random checkpoint


def make_tiny(ckpt_dir: str | Path, seed: int = 0, fp8: bool = False) -> Path:
    """Write <ckpt_dir>/Ovi/model.safetensors, the umT5 .pth and a tokenizer folder. Returns ckpt_dir."""
    return make_random_checkpoint(ckpt_dir, "tiny", seed=seed, fp8=fp8)


def make_random_checkpoint(ckpt_dir: str | Path, arch: str = "tiny", seed: int = 0, fp8: bool = False) -> Path:
    ckpt_dir = Path(ckpt_dir)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = FusionModel(*architecture(arch))
        model.init_weights()
        # Upstream zero-inits the output heads (training start); a demo model should move, so give
        # them small random weights instead.
        for branch in (model.video_model, model.audio_model):
            torch.nn.init.normal_(branch.head.head.weight, std=0.02)
        ovi_file = ckpt_dir / FUSION_DIR / MODEL_SPECS[arch].checkpoint_file
        save_state_dict(model.state_dict(), ovi_file)
        if fp8:
            convert_checkpoint(ovi_file, ckpt_dir / FUSION_DIR / FP8_CHECKPOINT_FILE, FP8)

        t5 = make_t5(arch)
        t5_dir = ckpt_dir / T5_DIR
        t5_dir.mkdir(parents=True, exist_ok=True)
        tmp = t5_dir / (T5_FILE + ".tmp")
        torch.save(hf_t5_to_wan(t5.state_dict()), tmp)
        tmp.replace(t5_dir / T5_FILE)
        tok_dir = t5_dir / TOKENIZER_DIR
        tok_dir.mkdir(parents=True, exist_ok=True)
        (tok_dir / BYTE_TOKENIZER_FILE).write_text(
            json.dumps({"type": "bytes", "max_length": T5_CONFIGS[arch]["max_length"]}))
        (ckpt_dir / FUSION_DIR / RANDOM_MARKER).write_text(arch)
    finally:
        torch.random.set_rng_state(generator_state)
    return ckpt_dir


def is_random_checkpoint_dir(ckpt_dir: str | Path, arch: str = "tiny") -> bool:
    """Whether ckpt_dir holds a complete random checkpoint of `arch` (as make_random_checkpoint writes)."""
    ckpt_dir = Path(ckpt_dir)
    marker = ckpt_dir / FUSION_DIR / RANDOM_MARKER
    return (marker.is_file() and marker.read_text().strip() == arch
            and (ckpt_dir / FUSION_DIR / MODEL_SPECS[arch].checkpoint_file).is_file()
            and (ckpt_dir / T5_DIR / T5_FILE).is_file()
            and (ckpt_dir / T5_DIR / TOKENIZER_DIR / BYTE_TOKENIZER_FILE).is_file())


def ensure_random_checkpoint(ckpt_dir: str | Path, arch: str, fp8: bool = False) -> None:
    """Random-weight presets (tiny, mid) make their checkpoint on first use, deterministically."""
    ckpt_dir = Path(ckpt_dir)
    marker = ckpt_dir / FUSION_DIR / RANDOM_MARKER
    if not marker.is_file() and (ckpt_dir / FUSION_DIR / MODEL_SPECS[arch].checkpoint_file).is_file():
        # A real or trained checkpoint lives here (e.g. the bundled weights after model_name was switched
        # to a random preset): never overwrite it with random weights.
        raise CheckpointError(f"{ckpt_dir} holds a checkpoint that is not a random '{arch}' one; the random "
                              f"preset '{arch}' makes its own weights: set ckpt_dir to another folder (e.g. "
                              f"./outputs/{arch}_ckpt)")
    if not is_random_checkpoint_dir(ckpt_dir, arch) or (fp8 and not (ckpt_dir / FUSION_DIR / FP8_CHECKPOINT_FILE).is_file()):
        log.info("making the random %s checkpoint in %s", arch, ckpt_dir)
        make_random_checkpoint(ckpt_dir, arch, fp8=fp8)
