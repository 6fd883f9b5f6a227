"""ParallelDims: the one object that answers "which degree, which group" for every rank.

world_size = cfg * sp: CFG-parallel splits the conditional/unconditional passes over `cfg` groups
(1 or 2), each of which runs Ulysses sequence parallelism over `sp` ranks. Ranks are laid out
sp-major: rank = cfg_index * sp + sp_rank, so an SP group is a block of contiguous ranks (on one
node when sp <= GPUs per node).
"""

from __future__ import annotations

from dataclasses import dataclass

from ovi.errors import ConfigError


@dataclass(frozen=True)
class ParallelDims:
    world_size: int
    sp: int = 1
    cfg: int = 1

    def __post_init__(self):
        if self.sp < 1 or self.cfg not in (1, 2):
            raise ConfigError(f"sp must be >= 1 and cfg 1 or 2 (got sp={self.sp}, cfg={self.cfg})")
        if self.sp * self.cfg != self.world_size:
            raise ConfigError(f"world size {self.world_size} must equal cfg ({self.cfg}) x sp ({self.sp}); "
                              f"set sp_size to {self.world_size // self.cfg} or change the number of ranks")

    @classmethod
    def from_config(cls, cfg, world_size: int | None = None) -> "ParallelDims":
        cfg_degree = 2 if cfg.cfg_parallel else 1
        world = world_size if world_size is not None else cfg.sp_size * cfg_degree
        return cls(world_size=world, sp=cfg.sp_size, cfg=cfg_degree)

    def check_heads(self, num_heads: int) -> None:
        if num_heads % self.sp:
            raise ConfigError(f"sp_size {self.sp} does not divide the model's {num_heads} attention heads; "
                              f"use an sp_size that divides {num_heads}")

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
