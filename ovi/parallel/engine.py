"""The engine each rank runs: an Engine with sequence parallelism and CFG-parallel applied.

`build_rank_engine` is what ovi.runtime.WorkerGroup (and torchrun launches) call on every rank
after the process group exists. Every rank runs the same `generate()`; rank 0 alone decodes and
returns the Clip, the others return None.
"""

from __future__ import annotations

import torch

from ovi.parallel.dims import ParallelDims
from ovi.pipeline.engine import Engine, resolve_dtype
from ovi.pipeline.components import load_components


class RankEngine(Engine):
    def __init__(self, config, components, device, dtype, dims: ParallelDims, rank: int):
        super().__init__(config, components, device, dtype)
        self.dims, self.rank = dims, rank
        self.world_size, self.sp_size = dims.world_size, dims.sp
        self.is_output_rank = rank == 0

    def generate(self, prompt, **kwargs):
        clip = super().generate(prompt, **kwargs)
        return clip if self.is_output_rank else None

    def stats(self) -> dict:
        out = {"rank": self.rank, "world_size": self.world_size, "sp": self.sp_size, "cfg": self.dims.cfg}
        if self.device.type == "cuda":
            out["max_memory_allocated"] = torch.cuda.max_memory_allocated(self.device)
        return out


def build_rank_engine(cfg, rank: int, world_size: int, device: torch.device) -> RankEngine:
    """Load components on this rank and apply the parallel plan the config asks for."""
    dims = ParallelDims.from_config(cfg, world_size)
    cfg.require_available()
    dtype = resolve_dtype(cfg.dtype, device)
    components = load_components(cfg, device=device, dtype=dtype)
    dims.check_heads(components.model.video_model.num_heads)
    return RankEngine(cfg, components, device, dtype, dims, rank)
