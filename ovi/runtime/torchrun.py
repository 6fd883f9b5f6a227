"""serve_torchrun: every rank started by torchrun (one node or many) serves generate requests; rank 0
drives them (there is no parent process to do it, as there is for a WorkerGroup)."""

from __future__ import annotations

import os

import torch.distributed as dist

from ovi.config import OviConfig, load_config
from ovi.errors import ConfigError
from ovi.parallel.dims import ParallelDims
from ovi.runtime.launch import (
    plan_backend,
    prepare_checkpoint,
    rank_device,
    torchrun_env,
)
from ovi.runtime.rank_engine import build_rank_engine
from ovi.runtime.ranks import start_parent_watchdog


def serve_torchrun(cfg, requests=None, on_clip=None, *, backend=None) -> int:
    """Serve generate requests when every rank was started by torchrun (one or many nodes).

    Call it on every rank. Rank 0 iterates `requests` (GenerateRequests, or (request, progress) pairs
    whose progress callable stays on rank 0) and broadcasts each request to the other ranks, which
    ignore their own `requests`. After each clip rank 0 calls `on_clip(index, request, clip)`.
    Returns the number of requests served. A failure on one rank ends that process; torchrun then
    stops the others (that is its job here, as the parent is for a WorkerGroup)."""
    env = torchrun_env()
    if env is None:
        raise ConfigError("serve_torchrun needs RANK, WORLD_SIZE and LOCAL_RANK (start it with torchrun); "
                          "from a kernel or a plain script use ovi.runtime.WorkerGroup")
    cfg = cfg if isinstance(cfg, OviConfig) else load_config(cfg)
    rank, world = env["rank"], env["world_size"]
    # A wrong sp_size or FSDP setting fails here, before any rendezvous.
    dims = ParallelDims.from_config(cfg, world, ranks_per_node=env["local_world_size"])
    backend, device_type = plan_backend(cfg, env["local_world_size"], backend)
    start_parent_watchdog(os.getppid())
    device = rank_device(device_type, env["local_rank"])
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world)
    try:
        if env["local_rank"] == 0:
            prepare_checkpoint(cfg)  # one writer per node, the others wait at the barrier
        dist.barrier()
        engine = build_rank_engine(cfg, rank, world, device, dims=dims)
        source = iter(requests or ()) if rank == 0 else None
        served = 0
        while True:
            item = next(source, None) if rank == 0 else None
            request, progress = item if isinstance(item, tuple) else (item, None)
            box = [request]
            dist.broadcast_object_list(box, src=0)
            if box[0] is None:
                return served
            request = box[0]
            clip = engine.generate(request, progress=progress)
            if rank == 0 and on_clip is not None:
                on_clip(served, request, clip)
            served += 1
    finally:
        dist.destroy_process_group()
