"""ParallelDims: the one object that answers "which degree, which group" for every rank.

world_size = cfg * sp: CFG-parallel splits the conditional/unconditional passes over `cfg` groups
(1 or 2), each of which runs Ulysses sequence parallelism over `sp` ranks. Ranks are laid out
sp-major: rank = cfg_index * sp + sp_rank, so an SP group is a block of contiguous ranks (on one
node when sp <= GPUs per node). `fsdp` is the parameter-sharding degree over the same ranks (1: every
rank holds the whole model).

Built and validated once, before any process starts (`from_config`), then handed to every rank: nobody
re-derives a degree. A degree the config leaves unset (sp_size: null) fills from the world size, as
torchtitan fills its -1 degree.
"""

from __future__ import annotations

from dataclasses import dataclass

from ovi.errors import ConfigError
from ovi.model.configs import architecture


@dataclass(frozen=True)
class ParallelDims:
    world_size: int
    sp: int = 1
    cfg: int = 1
    fsdp: int = 1

    def __post_init__(self):
        if self.world_size < 1 or self.sp < 1 or self.cfg not in (1, 2) or self.fsdp < 1:
            raise ConfigError(f"parallel degrees must be positive and cfg 1 or 2 (got world_size={self.world_size}, "
                              f"sp={self.sp}, cfg={self.cfg}, fsdp={self.fsdp})")
        if self.sp * self.cfg != self.world_size:
            raise ConfigError(f"world size {self.world_size} must equal cfg ({self.cfg}) x sp ({self.sp}); "
                              f"set sp_size to {max(1, self.world_size // self.cfg)} (or leave it out to use every "
                              f"rank) or change the number of ranks")
        if self.world_size % self.fsdp:
            raise ConfigError(f"the FSDP degree {self.fsdp} must divide the world size {self.world_size}")

    @classmethod
    def from_config(cls, cfg, world_size: int | None = None) -> "ParallelDims":
        """The degrees a config asks for on `world_size` ranks (None: as many as the config needs),
        checked against both backbones' head counts (Ulysses splits heads across the SP group)."""
        cfg_degree = 2 if cfg.cfg_parallel else 1
        sp = cfg.sp_size
        if world_size is None:
            world_size = (sp or 1) * cfg_degree
        elif world_size < 1:
            raise ConfigError(f"world_size {world_size} must be at least 1")
        elif sp is None:
            if world_size % cfg_degree:
                raise ConfigError(f"cfg_parallel needs an even number of ranks, got world_size {world_size}; "
                                  f"use {world_size + 1} ranks or set cfg_parallel: false")
            sp = world_size // cfg_degree
        dims = cls(world_size=world_size, sp=sp or 1, cfg=cfg_degree)
        video, audio = architecture(cfg.model)
        for branch, config in (("video", video), ("audio", audio)):
            dims.check_heads(config["num_heads"], branch)
        return dims

    def check_heads(self, num_heads: int, branch: str = "video") -> None:
        if num_heads % self.sp:
            raise ConfigError(f"sp_size {self.sp} does not divide the {branch} backbone's {num_heads} attention "
                              f"heads; use an sp_size that divides {num_heads}")

    def describe(self) -> dict:
        return {"world_size": self.world_size, "sp": self.sp, "cfg": self.cfg, "fsdp": self.fsdp}

    def sp_rank(self, rank: int) -> int:
        return rank % self.sp

    def cfg_rank(self, rank: int) -> int:
        return rank // self.sp

    def sp_group_ranks(self, rank: int) -> list[int]:
        start = self.cfg_rank(rank) * self.sp
        return list(range(start, start + self.sp))

    def cfg_group_ranks(self, rank: int) -> list[int]:
        return [c * self.sp + self.sp_rank(rank) for c in range(self.cfg)]

    def all_sp_groups(self) -> list[list[int]]:
        return [list(range(c * self.sp, (c + 1) * self.sp)) for c in range(self.cfg)]

    def all_cfg_groups(self) -> list[list[int]]:
        return [[c * self.sp + s for c in range(self.cfg)] for s in range(self.sp)]
