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
                                                           "fsdp_strategy": None, "fsdp_offload": False}
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
