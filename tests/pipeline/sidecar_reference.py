"""Sidecars pinned across refactors: the trained default's json sidecar for a t2v clip, a Lightning clip
and an i2v clip (in-memory image), minus what differs per machine or run (timings, versions, paths).
tests/pipeline/test_sidecar_reference.py compares new sidecars to tests/pipeline/data/reference_sidecars.json.

Made once, on the code before the one-plan redesign (issue 17), with

    OMP_NUM_THREADS=1 .venv/bin/python -m tests.pipeline.sidecar_reference --write

Remade with the same command on 2026-12-05, each time the shipped weights changed (the continuation
fine-tune, then the shape fine-tune; issue 18) and no engine code did: the previous file matched the code of
that commit on the old weights.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

REFERENCE = Path(__file__).parent / "data" / "reference_sidecars.json"
PROMPT = "A blue square moves left. <AUDCAP>a low tone<ENDAUDCAP>"
# Per machine or per run: not compared.
VOLATILE = ("timings", "versions", "checkpoint", "config", "device", "attention_backend_note", "tensor_cores")


def image() -> np.ndarray:
    """A deterministic 96x160 uint8 picture (an i2v conditioning image of another aspect)."""
    y, x = np.mgrid[0:96, 0:160]
    return np.stack([(x * 1.5) % 256, (y * 2.5) % 256, (x + y) % 256], -1).astype(np.uint8)


CASES = {
    "t2v": dict(seed=7),
    "lightning": dict(seed=7, lightning=True, steps=2, video_guidance_scale=3.0),
    "i2v": dict(seed=7, mode="i2v", height_width=[96, 160]),
}


def sidecars() -> dict:
    import ovi
    engine = ovi.Engine.from_config(ovi.load_config(None, sample_steps=2))
    out = {}
    for name, fields in CASES.items():
        extra = {"image": image()} if fields.get("mode") == "i2v" else {}
        meta = engine.generate(PROMPT, **fields, **extra).meta
        out[name] = json.loads(json.dumps({k: v for k, v in meta.items() if k not in VOLATILE}))
    return out


def main(argv) -> int:
    if argv != ["--write"]:
        print(__doc__)
        return 2
    REFERENCE.write_text(json.dumps(sidecars(), indent=1, sort_keys=True) + "\n")
    print(REFERENCE)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
