"""parallelize(): everything one rank applies for its ParallelDims, in one place (torchtitan's manner).

A launch resolves its `ParallelDims` once (ParallelDims.from_config, where the launch starts: `ovi
generate`, a WorkerGroup made in a kernel, the queue's Runner, torchrun) and hands them down; on each
rank `rank_comms(rank, dims)` makes the process groups and `parallelize(load, dims=, comms=, ...)` then

* FSDP:          loads the DiT shard by shard when the dims shard it (`FsdpLoader` as the loader's
                 `fusion_loader`), each rank reading only its rows (ovi.parallel.fsdp);
* text sharding: with `shard_text`, the text encoder the same way (`text_placer`);
* SP:            installs Ulysses sequence parallelism on the loaded model over the SP group
                 (ovi.parallel.sequence);
* CFG-parallel:  with cfg = 2, the predictor that splits the positive and negative passes over the two
                 CFG groups (`CfgParallelPredictor`).

`load(fusion_loader=, text_placer=)` is the caller's component loader (ovi.pipeline.components, a layer
above this one, passed in so this module never imports it); it returns the loaded components. What was
applied comes back as a `Parallelized`: the components, the predictor, the model scope an FSDP model
needs, the modules that place their own shards, and `info` (the sidecar's parallel fields).
The FSDP `auto` strategy is resolved before this (it needs the clip's workload: ovi.runtime.rank_engine).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule

from ovi.parallel.comm import CommStats, GroupComm
from ovi.parallel.dims import SHARDING_STRATEGIES, ParallelDims
from ovi.parallel.fsdp import FsdpLoader, ShardedFusionModel, ShardedTextEncoder
from ovi.parallel.sequence import apply_sequence_parallel


@dataclass
class RankComms:
    """One rank's communication: the totals it counts, and its SP and CFG groups (None on one rank)."""
    stats: CommStats = field(default_factory=CommStats)
    sp: GroupComm | None = None
    cfg: GroupComm | None = None


def _make_groups(rank: int, all_groups: list[list[int]], stats: CommStats) -> GroupComm | None:
    """Create every group (all ranks must call new_group for each, in the same order); keep ours."""
    mine = None
    for ranks in all_groups:
        group = dist.new_group(ranks) if len(ranks) < dist.get_world_size() else dist.group.WORLD
        if rank in ranks:
            mine = GroupComm(group, ranks, rank, stats)
    return mine


def rank_comms(rank: int, dims: ParallelDims) -> RankComms:
    """The SP and CFG groups of `rank` (every rank calls this, in the same order, after the default
    process group exists); no groups on a single rank."""
    comms = RankComms()
    if dims.world_size > 1:
        comms.sp = _make_groups(rank, dims.all_sp_groups(), comms.stats)
        comms.cfg = _make_groups(rank, dims.all_cfg_groups(), comms.stats)
    return comms


class CfgParallelPredictor:
    """CFG-parallel: cfg group 0 runs the positive pass, group 1 the negative one; one all-gather of the
    packed velocities gives every rank both, and each combines them as the single-rank engine does
    (`engine.guide`). Guidance off: every rank runs the positive pass alone, as a single rank does.
    A predictor of ovi.pipeline.engine (called with the engine; uses its model_pass / guide)."""

    def __init__(self, comm: GroupComm, cfg_rank: int):
        self.comm, self.cfg_rank = comm, cfg_rank

    def __call__(self, engine, plan, video, audio, t, contexts, first_frame_is_clean):
        pos, vneg, aneg = contexts
        if engine.guidance_off(plan):
            return engine.model_pass(plan, video, audio, t, pos, pos, first_frame_is_clean)
        if self.cfg_rank == 0:
            v, a = engine.model_pass(plan, video, audio, t, pos, pos, first_frame_is_clean)
        else:
            v, a = engine.model_pass(plan, video, audio, t, vneg, aneg, first_frame_is_clean, plan.slg_layer or False)
        both = self.comm.all_gather(torch.cat([v.flatten(), a.flatten()]), "cfg")
        split = lambda row: (row[: v.numel()].view_as(v), row[v.numel():].view_as(a))  # noqa: E731
        return engine.guide(plan, split(both[0]), split(both[1]))


@dataclass
class Parallelized:
    """What parallelize() applied on one rank."""
    components: Any                                # what `load` returned, with the plan applied to its model
    predictor: CfgParallelPredictor | None         # None: the engine's own (both passes on this rank)
    sharded: ShardedFusionModel | None             # the FSDP-sharded DiT, when sharded
    sharded_text: ShardedTextEncoder | None        # the sharded text encoder (shard_text_model)
    self_placed: tuple = ()                        # modules that place their own shards (never moved whole)
    info: dict = field(default_factory=dict)       # the sidecar's parallel fields

    @property
    def model_scope(self) -> Callable | None:
        """The scope the denoising loop runs in (an FSDP DiT frees its gathered units after), or None."""
        return self.sharded.in_use if self.sharded is not None else None


def parallelize(load: Callable[..., Any], *, dims: ParallelDims, comms: RankComms, rank: int, device: torch.device,
                scheme: str = "optimized", overlap: bool = False) -> Parallelized:
    """Load this rank's components with `load(fusion_loader=, text_placer=)` and apply `dims` (FSDP,
    text sharding, SP over `comms.sp` with `scheme`/`overlap`, CFG-parallel over `comms.cfg`).
    `dims.fsdp_strategy` must be resolved (not "auto")."""
    if dims.fsdp_strategy == "auto":
        raise ValueError("resolve the FSDP auto strategy before parallelize (ovi.runtime.rank_engine.resolve_auto_fsdp)")
    loader = FsdpLoader(dims, device) if dims.fsdp_strategy in SHARDING_STRATEGIES else None
    components = load(fusion_loader=loader,
                      text_placer=loader.shard_text if loader is not None and dims.shard_text else None)
    if loader is not None and loader.text is not None:
        loader.text.reads = components.text_encoder.reads
    if dims.sp > 1:
        apply_sequence_parallel(components.model, comms.sp, scheme=scheme, overlap=overlap)
    predictor = CfgParallelPredictor(comms.cfg, dims.cfg_rank(rank)) if dims.cfg == 2 else None
    self_placed = tuple(m for m in (components.model, components.text_encoder.model) if isinstance(m, FSDPModule))
    info = {"sp_scheme": scheme if dims.sp > 1 else None, "async_comms": bool(overlap and dims.sp > 1),
            "fsdp": dims.fsdp_strategy, "fsdp_degree": dims.fsdp, "fsdp_cpu_offload": dims.fsdp_offload}
    return Parallelized(components, predictor, loader.sharded if loader is not None else None,
                        loader.text if loader is not None else None, self_placed, info)
