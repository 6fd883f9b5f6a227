"""The engine each rank runs: one ovi.pipeline.Engine, with the parallel plan of its ParallelDims applied.

`build_rank_engine` is what a WorkerGroup rank (and a torchrun process) calls after the default process
group exists, with the dims its launcher resolved. It resolves the FSDP `auto` strategy (all ranks agree:
the smallest free device memory decides), makes the process groups and has ovi.parallel.parallelize
load the components and apply the dims (FSDP and text sharding while loading, SP, CFG-parallel). Every
rank runs the same `generate()` (same seeds, same noise); rank 0 alone decodes and returns the Clip.
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.distributed as dist

from ovi.parallel.comm import CommStats, GroupComm, profiled_comm_seconds
from ovi.parallel.dims import ParallelDims
from ovi.parallel.measure import (
    PeakMeter,
    allocated_peak,
    count_cpu_allocations,
    free_device_memory,
    rank_memory_accounting,
    resident_tensor_bytes,
)
from ovi.parallel.memory import GB, auto_candidates, choose_strategy, config_options, estimate
from ovi.parallel.parallelize import parallelize, rank_comms
from ovi.pipeline.components import load_components
from ovi.pipeline.engine import Engine, preload_loras, resolve_dtype
from ovi.pipeline.footprint import workload
from ovi.pipeline.memory_profiles import resolve_memory_settings
from ovi.request import GenerateRequest

log = logging.getLogger(__name__)


class RankEngine:
    """One rank's Engine plus its communication and memory accounting: `generate()` ends a comm-stats
    step after every denoising step (and counts profiled collective time with `profile_comms`) and
    measures the generation's peak memory; `stats()` reports them."""

    def __init__(self, engine: Engine, rank: int, comm_stats: CommStats, sp_comm: GroupComm | None, scheme: str,
                 *, meter: PeakMeter | None = None, sharded=None, memory: dict | None = None, sharded_text=None):
        self.engine, self.rank, self.comm_stats, self.sp_comm = engine, rank, comm_stats, sp_comm
        self.dims = engine.dims
        self.sp_scheme = scheme
        self.profiled_comm: list[tuple[int, dict]] = []  # (steps, {op: seconds}) per profiled generation
        self.meter = meter or PeakMeter(engine.device)
        self.sharded = sharded                           # ShardedFusionModel when FSDP shards the DiT
        self.sharded_text = sharded_text                 # ShardedTextEncoder with shard_text_model
        self.memory = dict(memory or {})                 # load-time accounting, estimate
        self.generation_peaks: list[int] = []           # PeakMeter per generation (CUDA allocated, or CPU RSS)
        self.allocated_peaks: list[int] = []            # CPU allocator peaks (profile_memory)

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

        components = self.engine.components
        resident = resident_tensor_bytes([components.model, components.text_encoder.model,
                                          getattr(components.video_codec, "module", None),
                                          getattr(components.audio_codec, "module", None)])
        self.meter.reset()
        cpu_memory = self.config.profile_memory and self.engine.device.type == "cpu"
        with count_cpu_allocations() if cpu_memory else contextlib.nullcontext(False) as every_thread:
            clip = self.engine.generate(request, progress=step_done, **fields)  # profiled per the config
        prof = self.engine.last_profile
        if self.config.profile_comms and prof is not None:
            self.profiled_comm.append((max(1, steps_run), profiled_comm_seconds(prof)))
        if cpu_memory and prof is not None:
            self.allocated_peaks.append(resident + allocated_peak(prof, every_thread=every_thread))
        self.generation_peaks.append(self.meter.peak())
        if clip is not None:
            clip.meta["comm"] = self.comm_stats.summary()
            clip.meta["memory"] = self.memory_accounting()
        return clip

    def memory_accounting(self) -> dict:
        """Parameter bytes this rank holds, the largest FSDP unit, the measured peak of the last generation
        and the memory model's estimate of it (ovi.parallel.measure.rank_memory_accounting)."""
        allocated = self.allocated_peaks[-1] if self.allocated_peaks and self.config.profile_memory else None
        return rank_memory_accounting(self.engine.model, self.engine.components.text_encoder.model, self.engine.device,
                                      fsdp_strategy=self.dims.fsdp_strategy, sharded=self.sharded,
                                      sharded_text=self.sharded_text, extra=self.memory, allocated_peak=allocated,
                                      generation_peak=self.generation_peaks[-1] if self.generation_peaks else None)

    def stats(self) -> dict:
        out = {"rank": self.rank, **self.dims.describe(), "sp_scheme": self.sp_scheme, **self.comm_stats.summary()}
        out["memory"] = self.memory_accounting()
        if self.profiled_comm:
            steps, seconds = self.profiled_comm[-1]
            out["profiled_comm_seconds_per_step"] = seconds["total"] / steps
            out["profiled_comm_ops"] = seconds
        if self.sp_comm is not None and self.sp_comm.pool is not None:
            out["buffer_allocations"] = self.sp_comm.pool.allocations
        if self.engine.device.type == "cuda":
            out["max_memory_allocated"] = torch.cuda.max_memory_allocated(self.engine.device)
        return out


def resolve_auto_fsdp(cfg, dims: ParallelDims, device: torch.device, dtype: torch.dtype
                      ) -> tuple[ParallelDims, dict]:
    """The FSDP `auto` strategy: the cheapest of NO_SHARD, FULL_SHARD, FULL_SHARD + offload whose
    estimated peak fits the device (device_memory_gb, or the smallest free memory over all ranks; CPU
    ranks of one host share its memory). Every rank computes the same choice. -> (dims, sidecar info)."""
    if cfg.device_memory_gb is not None:
        budget, source = int(cfg.device_memory_gb * GB), "device_memory_gb"
    else:
        free = free_device_memory(device) // (dims.world_size if device.type == "cpu" else 1)
        if dist.is_initialized() and dist.get_world_size() > 1:
            smallest = torch.tensor([free], dtype=torch.int64, device=device)
            dist.all_reduce(smallest, op=dist.ReduceOp.MIN)
            free = int(smallest.item())
        budget, source = free, "free memory (smallest over ranks" + (", host shared by the ranks)" if device.type == "cpu"
                                                                      else ")")
    candidates = auto_candidates(dims, offload_required=cfg.fsdp_cpu_offload)
    choice = choose_strategy(cfg.model, workload(cfg, dtype), candidates, budget, compute=dtype, device=device.type,
                             **config_options(cfg))
    log.info("%s", choice.reason)
    return dims.with_fsdp(choice.strategy, choice.offload), {
        "fsdp_reason": choice.reason, "fsdp_budget_bytes": budget, "fsdp_budget_source": source,
        "fsdp_candidates": choice.estimates}


def build_rank_engine(cfg, rank: int, world_size: int, device: torch.device, dims: ParallelDims) -> RankEngine:
    """Load components on this rank and apply the parallel plan of `dims` (resolved once by the launcher
    and handed to every rank: nobody derives them again here)."""
    meter = PeakMeter(device)  # before anything loads: the baseline of this rank's memory
    if dims.world_size != world_size:
        raise ValueError(f"dims are for {dims.world_size} ranks but the process group has {world_size}")
    cfg.require_available()
    dtype = resolve_dtype(cfg.dtype, device)
    fsdp_info = {"fsdp_reason": f"fsdp_sharding_strategy {dims.fsdp_strategy} is set in the config"} \
        if dims.fsdp_strategy is not None else {}
    if dims.fsdp_strategy == "auto":
        dims, fsdp_info = resolve_auto_fsdp(cfg, dims, device, dtype)
    memory_settings = resolve_memory_settings(cfg, device, dtype)  # before loading: refusals come first
    comms = rank_comms(rank, dims)
    loaded = {}

    def load(fusion_loader, text_placer):
        components = load_components(cfg, device=device, dtype=dtype, fusion_loader=fusion_loader,
                                     text_placer=text_placer)
        # The config's LoRA set (`lora:`) is applied once here, before SP touches the model; on FSDP-sharded
        # weights each rank merges its own rows (ovi.lora.manager). Requests with another set switch it per request.
        loaded["loras"] = preload_loras(cfg, components.model)
        loaded["load_peak_bytes"] = meter.peak()
        return components

    scheme = config_options(cfg)["scheme"]
    applied = parallelize(load, dims=dims, comms=comms, rank=rank, device=device, scheme=scheme,
                          overlap=cfg.enable_async_comms)
    engine = Engine(cfg, applied.components, device, dtype, dims=dims, predictor=applied.predictor,
                    decodes=rank == 0, model_scope=applied.model_scope, self_placed=applied.self_placed,
                    loras=loaded["loras"], trace_worker=f"rank{rank}", parallel_info={**applied.info, **fsdp_info},
                    memory_settings=memory_settings)
    memory = {"load_peak_bytes": loaded["load_peak_bytes"],
              "estimated_peak_bytes": estimate(cfg.model, workload(cfg, dtype), dims, **config_options(cfg),
                                               compute=dtype, device=device.type).peak}
    return RankEngine(engine, rank, comms.stats, comms.sp, scheme, meter=meter, sharded=applied.sharded,
                      memory=memory, sharded_text=applied.sharded_text)
