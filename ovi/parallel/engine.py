"""The engine each rank runs: an Engine with sequence parallelism and CFG-parallel applied.

`build_rank_engine` is what ovi.runtime.WorkerGroup (and torchrun launches) call on every rank
after the default process group exists. Every rank runs the same `generate()` (same seeds, same
noise); rank 0 alone decodes and returns the Clip, the others return None.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ovi.parallel.comm import CommStats, GroupComm, profiled_comm_seconds
from ovi.parallel.dims import ParallelDims
from ovi.parallel.sequence import apply_sequence_parallel
from ovi.pipeline.components import load_components
from ovi.pipeline.engine import Engine, resolve_dtype


def _make_groups(rank: int, all_groups: list[list[int]], stats: CommStats) -> GroupComm | None:
    """Create every group (all ranks must call new_group for each, in the same order); keep ours."""
    mine = None
    for ranks in all_groups:
        group = dist.new_group(ranks) if len(ranks) < dist.get_world_size() else dist.group.WORLD
        if rank in ranks:
            mine = GroupComm(group, ranks, rank, stats)
    return mine


class RankEngine(Engine):
    def __init__(self, config, components, device, dtype, dims: ParallelDims, rank: int):
        super().__init__(config, components, device, dtype)
        self.dims, self.rank = dims, rank
        self.world_size, self.sp_size = dims.world_size, dims.sp
        self.is_output_rank = rank == 0
        self.comm_stats = CommStats()
        self.profiled_comm: list[tuple[int, dict]] = []  # (steps, {op: seconds}) per profiled generation
        self.sp_comm = self.cfg_comm = None
        if dims.world_size > 1:
            self.sp_comm = _make_groups(rank, dims.all_sp_groups(), self.comm_stats)
            self.cfg_comm = _make_groups(rank, dims.all_cfg_groups(), self.comm_stats)
        self.sp_scheme = "optimized" if config.use_optimized_comms else "upstream"
        if dims.sp > 1:
            apply_sequence_parallel(self.model, self.sp_comm, scheme=self.sp_scheme,
                                    overlap=config.enable_async_comms)

    def predict(self, plan, video, audio, t, contexts, first_frame_is_clean):
        if self.dims.cfg == 1 or self.guidance_off(plan):
            return super().predict(plan, video, audio, t, contexts, first_frame_is_clean)
        # CFG-parallel: group 0 runs the positive pass, group 1 the negative one; one all-gather
        # of the packed velocities gives every rank both.
        pos, vneg, aneg = contexts
        if self.dims.cfg_rank(self.rank) == 0:
            v, a = self.model_pass(plan, video, audio, t, pos, pos, first_frame_is_clean)
        else:
            v, a = self.model_pass(plan, video, audio, t, vneg, aneg, first_frame_is_clean, plan.slg_layer or False)
        both = self.cfg_comm.all_gather(torch.cat([v.flatten(), a.flatten()]), "cfg")
        split = lambda row: (row[: v.numel()].view_as(v), row[v.numel():].view_as(a))  # noqa: E731
        return self.guide(plan, split(both[0]), split(both[1]))

    def denoise(self, plan, contexts, video, audio, image_latent=None, progress=None):
        def step_done(step, total, info):
            self.comm_stats.end_step()
            if progress is not None:
                progress(step, total, info)
        if not self.config.profile_comms:
            return super().denoise(plan, contexts, video, audio, image_latent, step_done)
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            result = super().denoise(plan, contexts, video, audio, image_latent, step_done)
        self.profiled_comm.append((plan.steps, profiled_comm_seconds(prof)))
        return result

    def decode(self, plan, video_latent, audio_latent):
        if not self.is_output_rank:
            return None, None  # only rank 0 writes the clip
        return super().decode(plan, video_latent, audio_latent)

    def sidecar(self, plan, timings):
        meta = super().sidecar(plan, timings)
        meta.update(sp_scheme=self.sp_scheme if self.dims.sp > 1 else None, cfg_parallel=self.dims.cfg == 2,
                    async_comms=bool(self.config.enable_async_comms and self.dims.sp > 1),
                    comm=self.comm_stats.summary())
        return meta

    def stats(self) -> dict:
        out = {"rank": self.rank, "world_size": self.world_size, "sp": self.sp_size, "cfg": self.dims.cfg,
               "sp_scheme": self.sp_scheme, **self.comm_stats.summary()}
        if self.profiled_comm:
            steps, seconds = self.profiled_comm[-1]
            out["profiled_comm_seconds_per_step"] = seconds["total"] / steps
            out["profiled_comm_ops"] = seconds
        if self.sp_comm is not None and self.sp_comm.pool is not None:
            out["buffer_allocations"] = self.sp_comm.pool.allocations
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
