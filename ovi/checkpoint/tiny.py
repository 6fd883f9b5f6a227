"""`make_tiny`: a random tiny Ovi checkpoint in upstream's directory layout and key names.

Used by tests, demos and the embedded default. Deterministic for a given seed, so every machine
that makes one gets the same weights (and the same clips).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ovi.checkpoint.adapter import hf_t5_to_wan
from ovi.checkpoint.loading import FP8, convert_checkpoint, save_state_dict
from ovi.model import FusionModel
from ovi.model.configs import architecture
from ovi.pipeline.specs import FP8_CHECKPOINT_FILE, MODEL_SPECS
from ovi.pipeline.text import BYTE_TOKENIZER_FILE, T5_CONFIGS, T5_DIR, T5_FILE, TOKENIZER_DIR, make_t5


def make_tiny(ckpt_dir: str | Path, seed: int = 0, fp8: bool = False) -> Path:
    """Write <ckpt_dir>/Ovi/model.safetensors, the umT5 .pth and a tokenizer folder. Returns ckpt_dir."""
    ckpt_dir = Path(ckpt_dir)
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = FusionModel(*architecture("tiny"))
        model.init_weights()
        # Upstream zero-inits the output heads (training start); a demo model should move, so give
        # them small random weights instead.
        for branch in (model.video_model, model.audio_model):
            torch.nn.init.normal_(branch.head.head.weight, std=0.02)
        ovi_file = ckpt_dir / "Ovi" / MODEL_SPECS["tiny"].checkpoint_file
        save_state_dict(model.state_dict(), ovi_file)
        if fp8:
            convert_checkpoint(ovi_file, ckpt_dir / "Ovi" / FP8_CHECKPOINT_FILE, FP8)

        t5 = make_t5("tiny")
        t5_dir = ckpt_dir / T5_DIR
        t5_dir.mkdir(parents=True, exist_ok=True)
        tmp = t5_dir / (T5_FILE + ".tmp")
        torch.save(hf_t5_to_wan(t5.state_dict()), tmp)
        tmp.replace(t5_dir / T5_FILE)
        tok_dir = t5_dir / TOKENIZER_DIR
        tok_dir.mkdir(parents=True, exist_ok=True)
        (tok_dir / BYTE_TOKENIZER_FILE).write_text(
            json.dumps({"type": "bytes", "max_length": T5_CONFIGS["tiny"]["max_length"]}))
    finally:
        torch.random.set_rng_state(generator_state)
    return ckpt_dir


def is_tiny_checkpoint_dir(ckpt_dir: str | Path) -> bool:
    ckpt_dir = Path(ckpt_dir)
    return ((ckpt_dir / "Ovi" / MODEL_SPECS["tiny"].checkpoint_file).is_file()
            and (ckpt_dir / T5_DIR / T5_FILE).is_file()
            and (ckpt_dir / T5_DIR / TOKENIZER_DIR / BYTE_TOKENIZER_FILE).is_file())
