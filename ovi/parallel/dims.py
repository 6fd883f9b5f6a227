"""ParallelDims: the one object that answers "which degree, which group" for every rank.

CFG-parallel splits the conditional/unconditional passes over `cfg` groups (1 or 2) of world_size / cfg
ranks each; inside one, Ulysses sequence parallelism runs over groups of `sp` ranks. Without FSDP,
world_size = cfg * sp. With FSDP a CFG group may hold several SP groups that compute the same passes
(replicas: they exist only to pool memory, e.g. FSDP alone on 2 GPUs is sp 1 with 2 replicas).
Ranks are laid out sp-major: rank = cfg_index * (world_size / cfg) + replica * sp + sp_rank, so an SP
group is a block of contiguous ranks (on one node when sp <= GPUs per node).

FSDP shards parameters over `fsdp` contiguous ranks (1: every rank holds the whole model). A shard
group must run the same model passes in lockstep (every all-gather is a collective of the group), so
it lies inside one CFG group: the two CFG groups run different passes (the negative one skips the SLG
block), and each holds its own sharded copy. FULL_SHARD and SHARD_GRAD_OP shard over the CFG group
(fsdp = world_size / cfg); HYBRID_SHARD over the ranks of one node inside it (fsdp = gcd(that, ranks
per node)), replicated across nodes. `fsdp_strategy` is None when FSDP is off, "auto" until the ranks
resolve it (they know their devices' memory; see ovi.parallel.memory), then the strategy that runs.

The number of ranks comes from the launcher (torchrun's WORLD_SIZE, `WorkerGroup(world_size=N)`) or the
config's `world_size` (`ovi generate --world-size N`); unset, it is cfg x sp. So replicas are asked for as
more ranks than cfg x sp with a sharding strategy (`--world-size 4 --sp 1 --fsdp FULL_SHARD`: FSDP alone
over 4 ranks). `shard_text` (shard_text_model) shards the text encoder over the same shard groups.

Built and validated once, before any process starts (`from_config`), then handed to every rank: nobody
re-derives a degree. A degree the config leaves unset (sp_size: null) fills from the world size, as
torchtitan fills its -1 degree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ovi.config import FSDP_STRATEGIES
from ovi.errors import ConfigError
from ovi.model.configs import architecture

SHARDING_STRATEGIES = ("SHARD_GRAD_OP", "FULL_SHARD", "HYBRID_SHARD")


@dataclass(frozen=True)
class ParallelDims:
    world_size: int
    sp: int = 1
    cfg: int = 1
    fsdp: int = 1
    fsdp_strategy: str | None = None    # None: FSDP off; "auto": resolved on the ranks
    fsdp_offload: bool = False          # shards live in host memory (fsdp_cpu_offload)
    shard_text: bool = False            # the text encoder is sharded too (shard_text_model)

    def __post_init__(self):
        if self.world_size < 1 or self.sp < 1 or self.cfg not in (1, 2) or self.fsdp < 1:
            raise ConfigError(f"parallel degrees must be positive and cfg 1 or 2 (got world_size={self.world_size}, "
                              f"sp={self.sp}, cfg={self.cfg}, fsdp={self.fsdp})")
        if self.fsdp_strategy not in (None, *FSDP_STRATEGIES):
            raise ConfigError(f"fsdp strategy {self.fsdp_strategy!r} is unknown; use one of {', '.join(FSDP_STRATEGIES)}")
        sharding = self.fsdp_strategy in ("auto", *SHARDING_STRATEGIES)
        if self.world_size % (self.sp * self.cfg) or (self.world_size != self.sp * self.cfg and not sharding):
            if sharding:
                raise ConfigError(f"world size {self.world_size} is not divisible by cfg ({self.cfg}) x sp ({self.sp}); "
                                  f"with FSDP the ranks must be a multiple of {self.sp * self.cfg} (the ranks beyond "
                                  f"cfg x sp hold parameter shards and compute the same passes): change the number "
                                  f"of ranks or sp_size")
            raise ConfigError(f"world size {self.world_size} must equal cfg ({self.cfg}) x sp ({self.sp}); "
                              f"set sp_size to {max(1, self.world_size // self.cfg)} (or leave it out to use every "
                              f"rank), change the number of ranks (world_size), or shard with FSDP "
                              f"(use_fsdp: true, fsdp_sharding_strategy FULL_SHARD: the extra ranks hold shards)")
        if self.per_cfg % self.fsdp:
            raise ConfigError(f"the FSDP degree {self.fsdp} must divide the {self.per_cfg} ranks of a CFG group "
                              f"(a shard group runs the same passes in lockstep)")
        if self.fsdp > 1 and not sharding:
            raise ConfigError(f"an FSDP degree of {self.fsdp} needs a sharding strategy, got {self.fsdp_strategy}")
        if self.fsdp_offload and not sharding:
            raise ConfigError(_OFFLOAD_NEEDS_SHARDING)
        if self.shard_text and not sharding:
            raise ConfigError(_TEXT_NEEDS_SHARDING)

    @classmethod
    def from_config(cls, cfg, world_size: int | None = None, *, ranks_per_node: int | None = None
                    ) -> "ParallelDims":
        """The degrees a config asks for on `world_size` ranks (None: the config's world_size, else as
        many as cfg x sp), checked against both backbones' head counts (Ulysses splits heads across the
        SP group) and the FSDP settings. `ranks_per_node`: ranks on each node (None: all on one, as a
        WorkerGroup's)."""
        cfg_degree = 2 if cfg.cfg_parallel else 1
        sp = cfg.sp_size
        if world_size is not None and cfg.world_size is not None and world_size != cfg.world_size:
            raise ConfigError(f"world_size: {cfg.world_size} in the config, but {world_size} ranks were started; "
                              f"start {cfg.world_size} ranks or set world_size to {world_size} (or null)")
        world_size = world_size if world_size is not None else cfg.world_size
        if world_size is None:
            world_size = (sp or 1) * cfg_degree
        elif world_size < 1:
            raise ConfigError(f"world_size {world_size} must be at least 1")
        elif sp is None:
            if world_size % cfg_degree:
                raise ConfigError(f"cfg_parallel needs an even number of ranks, got world_size {world_size}; "
                                  f"use {world_size + 1} ranks or set cfg_parallel: false")
            sp = world_size // cfg_degree
        sp = sp or 1
        strategy = cfg.fsdp_sharding_strategy if cfg.use_fsdp else None
        if world_size % (sp * cfg_degree) or (world_size != sp * cfg_degree and strategy in (None, "NO_SHARD")):
            cls(world_size=world_size, sp=sp, cfg=cfg_degree, fsdp_strategy=strategy)  # raises the degree error
        fsdp = _fsdp_degree(cfg, world_size // cfg_degree, world_size, ranks_per_node)
        dims = cls(world_size=world_size, sp=sp, cfg=cfg_degree, fsdp=fsdp, fsdp_strategy=strategy,
                   fsdp_offload=bool(cfg.use_fsdp and cfg.fsdp_cpu_offload), shard_text=bool(cfg.shard_text_model))
        video, audio = architecture(cfg.model)
        for branch, config in (("video", video), ("audio", audio)):
            dims.check_heads(config["num_heads"], branch)
        return dims

    def check_heads(self, num_heads: int, branch: str = "video") -> None:
        if num_heads % self.sp:
            raise ConfigError(f"sp_size {self.sp} does not divide the {branch} backbone's {num_heads} attention "
                              f"heads; use an sp_size that divides {num_heads}")

    @property
    def per_cfg(self) -> int:
        """Ranks in one CFG group (sp x replicas)."""
        return self.world_size // self.cfg

    @property
    def shards_parameters(self) -> bool:
        """Whether FSDP is (or, for auto, may be) applied: the model is loaded shard by shard."""
        return self.fsdp_strategy in ("auto", *SHARDING_STRATEGIES)

    @property
    def needs_process_group(self) -> bool:
        """More than one rank, or FSDP on one rank (offload streams the shards through a 1-rank group)."""
        return self.world_size > 1 or self.shards_parameters

    def with_fsdp(self, strategy: str, offload: bool) -> "ParallelDims":
        """These dims with the strategy `auto` resolved to (NO_SHARD keeps every parameter on every rank)."""
        shards = strategy in SHARDING_STRATEGIES
        return replace(self, fsdp_strategy=strategy, fsdp_offload=offload, fsdp=self.fsdp if shards else 1,
                       shard_text=self.shard_text and shards)

    def describe(self) -> dict:
        return {"world_size": self.world_size, "sp": self.sp, "cfg": self.cfg, "fsdp": self.fsdp,
                "fsdp_strategy": self.fsdp_strategy, "fsdp_offload": self.fsdp_offload, "shard_text": self.shard_text}

    def sp_rank(self, rank: int) -> int:
        return rank % self.sp

    def cfg_rank(self, rank: int) -> int:
        return rank // self.per_cfg

    def all_sp_groups(self) -> list[list[int]]:
        return [list(range(start, start + self.sp)) for start in range(0, self.world_size, self.sp)]

    def all_cfg_groups(self) -> list[list[int]]:
        return [[c * self.per_cfg + i for c in range(self.cfg)] for i in range(self.per_cfg)]

    def all_fsdp_groups(self) -> list[list[int]]:
        """Shard groups: contiguous blocks of `fsdp` ranks (inside one CFG group)."""
        return [list(range(start, start + self.fsdp)) for start in range(0, self.world_size, self.fsdp)]


_OFFLOAD_NEEDS_SHARDING = ("fsdp_cpu_offload: true keeps parameter shards in host memory, which needs FSDP with a "
                           "sharding strategy; set use_fsdp: true with fsdp_sharding_strategy FULL_SHARD (or auto), "
                           "or set fsdp_cpu_offload: false (cpu_offload: true is upstream's whole-module offload)")


_TEXT_NEEDS_SHARDING = ("shard_text_model: true shards the text encoder with FSDP, which needs a sharding strategy; set "
                        "use_fsdp: true with fsdp_sharding_strategy FULL_SHARD (or another sharding strategy, or "
                        "auto), or set shard_text_model: false")


def _fsdp_degree(cfg, per_cfg: int, world_size: int, ranks_per_node: int | None) -> int:
    """The FSDP degree the config asks for (`per_cfg`: ranks that run the same passes); ConfigError for
    combinations that cannot run."""
    if not cfg.use_fsdp or cfg.fsdp_sharding_strategy == "NO_SHARD":
        if cfg.shard_text_model:
            raise ConfigError(_TEXT_NEEDS_SHARDING)
    if not cfg.use_fsdp:
        if cfg.fsdp_cpu_offload:
            raise ConfigError(_OFFLOAD_NEEDS_SHARDING)
        return 1
    strategy = cfg.fsdp_sharding_strategy
    if strategy == "NO_SHARD":
        if cfg.fsdp_cpu_offload:
            raise ConfigError("fsdp_sharding_strategy NO_SHARD keeps every parameter on every device, so there is "
                              "nothing to offload; use FULL_SHARD with fsdp_cpu_offload: true (on one GPU too), or "
                              "set fsdp_cpu_offload: false")
        return 1
    if strategy != "HYBRID_SHARD":
        return per_cfg  # FULL_SHARD, SHARD_GRAD_OP, auto: over the ranks that run the same passes
    per_node = world_size if ranks_per_node is None else ranks_per_node
    if per_node < 1 or world_size % per_node:
        raise ConfigError(f"HYBRID_SHARD needs the same number of ranks on every node, but {world_size} ranks do not "
                          f"split into nodes of {per_node}; start a whole number of ranks per node")
    if per_node >= world_size:
        raise ConfigError(f"fsdp_sharding_strategy HYBRID_SHARD replicates across nodes and shards within one, but "
                          f"all {world_size} ranks run on one node here; use FULL_SHARD (shard over the node) or "
                          f"launch on several nodes with torchrun")
    return math.gcd(per_cfg, per_node)
