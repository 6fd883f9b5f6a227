"""Issue 22's goal (a), both ideals in one run: sp=2 (optimized+async, one thread per rank) against the
single rank using both cores' threads (the ideal the earlier 1.25x was measured against) and against half
a one-thread single rank (perfect scaling from one core to two); interleaved turns on mid at 256x448.

    .venv/bin/python experiments/sp_ideal.py [--turns 2]   # on an idle machine; appends results/sp_ideal.jsonl
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import ovi.runtime
from ovi.bench import sp as sp_bench
from ovi.pipeline.random_checkpoint import make_random_checkpoint

RESULTS = Path(__file__).resolve().parent / "results" / "sp_ideal.jsonl"
STEPS = 6


class OneThreadGroup(ovi.runtime.WorkerGroup):
    """The bench's WorkerGroup with one torch thread per rank (it picks cores / world size otherwise)."""

    def __init__(self, *args, **kwargs):
        kwargs["threads"] = 1
        super().__init__(*args, **kwargs)


def single_rank_seconds(ckpt: Path, one_thread: bool) -> float:
    default = ovi.runtime.WorkerGroup
    ovi.runtime.WorkerGroup = OneThreadGroup if one_thread else default  # sp_bench.measure imports it per call
    try:
        return sp_bench.measure("mid", 1, "optimized", STEPS, ckpt)["step_seconds"]
    finally:
        ovi.runtime.WorkerGroup = default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=2)
    args = parser.parse_args()
    ckpt = Path(tempfile.mkdtemp(prefix="ovi-sp-ideal-")) / "mid"
    make_random_checkpoint(ckpt, "mid")
    for turn in range(args.turns):
        row = {"bench": "sp_ideal", "config": "mid", "steps": STEPS, "turn": turn,
               "single_both_cores_s": single_rank_seconds(ckpt, one_thread=False),
               "single_one_thread_s": single_rank_seconds(ckpt, one_thread=True),
               "sp2_async_s": sp_bench.measure("mid", 2, "optimized+async", STEPS, ckpt)["step_seconds"]}
        row["sp2_vs_single_both_cores"] = row["sp2_async_s"] / row["single_both_cores_s"]
        row["sp2_vs_half_one_thread"] = row["sp2_async_s"] / (row["single_one_thread_s"] / 2)
        print(json.dumps(row), flush=True)
        with RESULTS.open("a") as out:
            out.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
