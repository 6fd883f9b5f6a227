"""The engine each rank runs: one ovi.pipeline.Engine, with the parallel plan of its ParallelDims applied.

`build_rank_engine` is what a WorkerGroup rank (and a torchrun process) calls after the default process
group exists. It creates the process groups the dims ask for, installs sequence parallelism on the
model (ovi.parallel), and gives the Engine a CFG-parallel predictor when cfg = 2. Every rank runs the
same `generate()` (same seeds, same noise); rank 0 alone decodes and returns the Clip.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ovi.parallel.comm import CommStats, GroupComm, profiled_comm_seconds
from ovi.parallel.dims import ParallelDims
from ovi.parallel.sequence import apply_sequence_parallel
from ovi.pipeline.components import load_components
from ovi.pipeline.engine import Engine, GuidedPredictor, resolve_dtype
from ovi.request import GenerateRequest


def _make_groups(rank: int, all_groups: list[list[int]], stats: CommStats) -> GroupComm | None:
    """Create every group (all ranks must call new_group for each, in the same order); keep ours."""
    mine = None
    for ranks in all_groups:
        group = dist.new_group(ranks) if len(ranks) < dist.get_world_size() else dist.group.WORLD
        if rank in ranks:
            mine = GroupComm(group, ranks, rank, stats)
    return mine


class CfgParallelPredictor(GuidedPredictor):
    """CFG-parallel: cfg group 0 runs the positive pass, group 1 the negative one; one all-gather of the
    packed velocities gives every rank both, and each combines them as the single-rank engine does."""

    def __init__(self, comm: GroupComm, cfg_rank: int):
        self.comm, self.cfg_rank = comm, cfg_rank

    def __call__(self, engine, plan, video, audio, t, contexts, first_frame_is_clean):
        if engine.guidance_off(plan):
            return super().__call__(engine, plan, video, audio, t, contexts, first_frame_is_clean)
        pos, vneg, aneg = contexts
        if self.cfg_rank == 0:
            v, a = engine.model_pass(plan, video, audio, t, pos, pos, first_frame_is_clean)
        else:
            v, a = engine.model_pass(plan, video, audio, t, vneg, aneg, first_frame_is_clean, plan.slg_layer or False)
        both = self.comm.all_gather(torch.cat([v.flatten(), a.flatten()]), "cfg")
        split = lambda row: (row[: v.numel()].view_as(v), row[v.numel():].view_as(a))  # noqa: E731
        return engine.guide(plan, split(both[0]), split(both[1]))


class RankEngine:
    """One rank's Engine plus its communication accounting: `generate()` ends a comm-stats step after
    every denoising step (and profiles collectives with `profile_comms`); `stats()` reports them."""

    def __init__(self, engine: Engine, rank: int, comm_stats: CommStats, sp_comm: GroupComm | None, scheme: str):
        self.engine, self.rank, self.comm_stats, self.sp_comm = engine, rank, comm_stats, sp_comm
        self.dims = engine.dims
        self.sp_scheme = scheme
        self.profiled_comm: list[tuple[int, dict]] = []  # (steps, {op: seconds}) per profiled generation

    @property
    def config(self):
        return self.engine.config

    @property
    def model(self):
        return self.engine.model

    def generate(self, request: GenerateRequest | str | None = None, /, *, progress=None, **fields):
        steps_run = 0

        def step_done(step, total, info):
            nonlocal steps_run
            steps_run += 1
            self.comm_stats.end_step()
            if progress is not None:
                progress(step, total, info)

        if not self.config.profile_comms:
            clip = self.engine.generate(request, progress=step_done, **fields)
        else:
            from torch.profiler import ProfilerActivity, profile
            activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.engine.device.type == "cuda" else [])
            with profile(activities=activities) as prof:
                clip = self.engine.generate(request, progress=step_done, **fields)
            self.profiled_comm.append((max(1, steps_run), profiled_comm_seconds(prof)))
        if clip is not None:
            clip.meta["comm"] = self.comm_stats.summary()
        return clip

    def stats(self) -> dict:
        out = {"rank": self.rank, **self.dims.describe(), "sp_scheme": self.sp_scheme, **self.comm_stats.summary()}
        if self.profiled_comm:
            steps, seconds = self.profiled_comm[-1]
            out["profiled_comm_seconds_per_step"] = seconds["total"] / steps
            out["profiled_comm_ops"] = seconds
        if self.sp_comm is not None and self.sp_comm.pool is not None:
            out["buffer_allocations"] = self.sp_comm.pool.allocations
        if self.engine.device.type == "cuda":
            out["max_memory_allocated"] = torch.cuda.max_memory_allocated(self.engine.device)
        return out


def build_rank_engine(cfg, rank: int, world_size: int, device: torch.device, dims: ParallelDims | None = None
                      ) -> RankEngine:
    """Load components on this rank and apply the parallel plan of `dims` (built once by the launcher;
    derived here only when a caller passes none)."""
    dims = dims or ParallelDims.from_config(cfg, world_size)
    if dims.world_size != world_size:
        raise ValueError(f"dims are for {dims.world_size} ranks but the process group has {world_size}")
    cfg.require_available()
    dtype = resolve_dtype(cfg.dtype, device)
    components = load_components(cfg, device=device, dtype=dtype)
    stats = CommStats()
    sp_comm = cfg_comm = None
    if world_size > 1:
        sp_comm = _make_groups(rank, dims.all_sp_groups(), stats)
        cfg_comm = _make_groups(rank, dims.all_cfg_groups(), stats)
    scheme = "optimized" if cfg.use_optimized_comms else "upstream"
    if dims.sp > 1:
        apply_sequence_parallel(components.model, sp_comm, scheme=scheme, overlap=cfg.enable_async_comms)
    predictor = CfgParallelPredictor(cfg_comm, dims.cfg_rank(rank)) if dims.cfg == 2 else None
    engine = Engine(cfg, components, device, dtype, dims=dims, predictor=predictor, decodes=rank == 0)
    engine.parallel_info = {"sp_scheme": scheme if dims.sp > 1 else None,
                            "async_comms": bool(cfg.enable_async_comms and dims.sp > 1)}
    return RankEngine(engine, rank, stats, sp_comm, scheme)
