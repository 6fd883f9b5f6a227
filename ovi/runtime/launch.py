"""Where ranks run: backend and device choice, checkpoint preparation before ranks start, torchrun's
environment. Used by both launchers (WorkerGroup and serve_torchrun)."""

from __future__ import annotations

import os

from ovi.errors import ConfigError, InputError
from ovi.model.configs import RANDOM_ARCHITECTURES
from ovi.pipeline.random_checkpoint import ensure_random_checkpoint


def plan_backend(cfg, local_ranks: int, backend: str | None = None) -> tuple[str, str]:
    """(backend, device type) for `local_ranks` ranks on this node: nccl with one GPU per rank when
    CUDA is usable and the config does not ask for the CPU, else gloo on the CPU. `backend`
    ("gloo" | "nccl") overrides the choice of backend."""
    import torch

    if backend not in (None, "gloo", "nccl"):
        raise ConfigError(f"backend {backend!r} is not supported; use 'gloo', 'nccl' or None (automatic)")
    want = str(cfg.device)
    cuda = torch.cuda.is_available()
    if want.startswith("cuda") and not cuda:
        raise InputError(f"device '{want}' requested but CUDA is not available here; set device: auto or cpu")
    if backend is None:
        backend = "nccl" if cuda and want != "cpu" else "gloo"
    device_type = "cuda" if backend == "nccl" or want.startswith("cuda") else "cpu"
    if backend == "nccl" and (not cuda or want == "cpu"):
        raise ConfigError("backend nccl needs CUDA GPUs and a config with device auto or cuda; "
                          "use backend='gloo' for CPU ranks")
    if device_type == "cuda" and torch.cuda.device_count() < local_ranks:
        raise ConfigError(f"{local_ranks} ranks need {local_ranks} GPUs on this node (one rank per GPU) but "
                          f"{torch.cuda.device_count()} are visible; lower sp_size, or set device: cpu to run "
                          f"gloo ranks on the CPU")
    return backend, device_type


def prepare_checkpoint(cfg) -> None:
    """Make a random-weight preset's checkpoint (tiny, mid) before the ranks start: ranks that each
    found it missing would write the same files at once."""
    if cfg.model in RANDOM_ARCHITECTURES:
        ensure_random_checkpoint(cfg.ckpt_dir, cfg.model, fp8=cfg.fp8)


def rank_device(device_type: str, local_rank: int):
    import torch
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def torchrun_env() -> dict | None:
    """{rank, world_size, local_rank, local_world_size} when launched by torchrun, else None."""
    keys = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    if not all(k in os.environ for k in keys):
        return None
    return {"rank": int(os.environ["RANK"]), "world_size": int(os.environ["WORLD_SIZE"]),
            "local_rank": int(os.environ["LOCAL_RANK"]),
            "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))}
