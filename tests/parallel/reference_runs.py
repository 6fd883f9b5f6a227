"""The runs whose final latents are pinned in tests/parallel/data/reference_latents.safetensors: the trained
default (configs/tiny.yaml) in one process, sp=2, cfg2 x sp2 (4 ranks) and FSDP FULL_SHARD (2 ranks), each
on gloo CPU ranks with 2 steps at the model's 128x128 (the file stays small: 320 video tokens).

The reference was made once, on the code before the one-plan redesign (issue 17), with

    OMP_NUM_THREADS=1 .venv/bin/python -m tests.parallel.reference_runs --write

and tests/parallel/test_reference_latents.py compares every new run to it within 1e-6.
Remade with the same command on 2026-12-05, each time the shipped weights changed (the continuation
fine-tune, then the shape fine-tune; issue 18) and no engine code did: the previous file matched the code of
that commit on the old weights. Remade on 2026-12-06 for a new machine and library set (same latents from
the code that wrote the previous file and from the current code, 1.4e-5 from the file's): the file now
records its environment (`environment()`); the test holds 1e-6 there and 1e-4 elsewhere."""

from __future__ import annotations

import sys
from pathlib import Path

REFERENCE = Path(__file__).parent / "data" / "reference_latents.safetensors"
PROMPT = "A blue square moves left. <AUDCAP>a low tone<ENDAUDCAP>"
SEED = 103
SMALL = dict(sample_steps=2)
# name -> (config overrides, ranks; 0 = a single-process Engine)
RUNS = {
    "single": ({}, 0),
    "sp2": ({"sp_size": 2}, 2),
    "cfg2_sp2": ({"sp_size": 2, "cfg_parallel": True}, 4),
    "full_shard": ({"sp_size": 1, "world_size": 2, "use_fsdp": True, "fsdp_sharding_strategy": "FULL_SHARD"}, 2),
}


def run(name: str) -> dict:
    """Final {video, audio} latents of one reference run."""
    import ovi
    from ovi.runtime import WorkerGroup

    overrides, ranks = RUNS[name]
    cfg = ovi.load_config(None, **SMALL, **overrides)
    if ranks == 0:
        clip = ovi.Engine.from_config(cfg).generate(PROMPT, seed=SEED)
    else:
        with WorkerGroup(cfg, world_size=ranks, threads=1, request_timeout=300) as group:
            clip = group.generate(PROMPT, seed=SEED)
    return {key: value.contiguous() for key, value in clip.latents.items()}


def environment() -> dict:
    """What the float results depend on besides the code: library versions and the CPU kernels torch
    dispatches to (another machine or library set moved the latents by ~1e-5 on 2026-12-06, where the code
    that wrote the previous file and the current code gave identical latents)."""
    import numpy
    import torch
    import transformers
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "transformers": transformers.__version__, "numpy": numpy.__version__}


def main(argv) -> int:
    from safetensors.torch import save_file
    if argv != ["--write"]:
        print(__doc__)
        return 2
    import torch
    torch.set_num_threads(2)  # as the tests run (tests/conftest.py): a reduction split another way moves ~1e-5
    tensors = {f"{name}/{key}": value for name in RUNS for key, value in run(name).items()}
    save_file(tensors, str(REFERENCE), metadata=environment())
    print(REFERENCE, {k: tuple(v.shape) for k, v in tensors.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
