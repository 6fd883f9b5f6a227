"""ParallelDims: degrees resolved once, unset ones filled from the world size, both branches' heads checked."""

import pytest

import ovi
from ovi.errors import ConfigError
from ovi.model.configs import ARCHITECTURES
from ovi.parallel.dims import ParallelDims


def test_unset_sp_fills_from_the_world_size():
    cfg = ovi.load_config()
    assert cfg.sp_size is None
    assert ParallelDims.from_config(cfg) == ParallelDims(world_size=1)
    assert ParallelDims.from_config(cfg, 4).describe() == {"world_size": 4, "sp": 4, "cfg": 1, "fsdp": 1,
                                                           "fsdp_strategy": None, "fsdp_offload": False,
                                                           "shard_text": False}
    both = ParallelDims.from_config(cfg.replace(cfg_parallel=True), 4)
    assert (both.sp, both.cfg) == (2, 2)
    assert both.all_sp_groups() == [[0, 1], [2, 3]] and both.all_cfg_groups() == [[0, 2], [1, 3]]


def test_set_degrees_must_multiply_to_the_world_size():
    cfg = ovi.load_config(sp_size=2)
    assert ParallelDims.from_config(cfg).world_size == 2
    with pytest.raises(ConfigError, match="world size 3 must equal cfg \\(1\\) x sp \\(2\\)"):
        ParallelDims.from_config(cfg, 3)
    with pytest.raises(ConfigError, match="cfg_parallel needs an even number of ranks"):
        ParallelDims.from_config(ovi.load_config(cfg_parallel=True), 3)


def test_heads_of_both_branches_are_checked(monkeypatch):
    video, audio = ARCHITECTURES["tiny"]
    monkeypatch.setitem(ARCHITECTURES, "tiny", (video, {**audio, "num_heads": 2, "dim": 64}))
    with pytest.raises(ConfigError, match="sp_size 4 does not divide the audio backbone's 2 attention heads"):
        ParallelDims.from_config(ovi.load_config(model_name="tiny", ckpt_dir="unused"), 4)


def test_the_config_asks_for_replicas_with_world_size():
    """More ranks than cfg x sp: replicas that hold FSDP shards (FSDP alone: sp 1); the launcher's count
    and the config's must agree."""
    cfg = ovi.load_config(world_size=4, sp_size=1, use_fsdp=True, fsdp_sharding_strategy="FULL_SHARD")
    dims = ParallelDims.from_config(cfg)
    assert (dims.world_size, dims.sp, dims.fsdp, dims.per_cfg // dims.sp) == (4, 1, 4, 4)
    assert ParallelDims.from_config(cfg, 4) == dims
    mixed = ParallelDims.from_config(cfg.replace(sp_size=2, cfg_parallel=True, world_size=8))
    assert (mixed.sp, mixed.cfg, mixed.fsdp, mixed.all_fsdp_groups()) == (2, 2, 4, [[0, 1, 2, 3], [4, 5, 6, 7]])
    assert ParallelDims.from_config(ovi.load_config(world_size=2)).sp == 2  # sp fills from it, as from a launcher
    with pytest.raises(ConfigError, match="world size 2 must equal cfg \\(1\\) x sp \\(1\\).*shard with FSDP"):
        ParallelDims.from_config(ovi.load_config(world_size=2, sp_size=1))
    with pytest.raises(ConfigError, match="world_size 0: must be a number of ranks"):
        ovi.load_config(world_size=0)
