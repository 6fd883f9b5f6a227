"""ParallelDims are resolved once per launch, where the launch starts, and handed down: `ovi generate`
(one process or a WorkerGroup), a WorkerGroup made in a kernel, the queue Runner's engine factory and
torchrun each call ParallelDims.from_config exactly once (counted, not grepped). Ranks never resolve:
build_rank_engine takes the dims. The numerics of what parallelize() applies are pinned by
test_reference_latents.py (sp2, cfg2 x sp2, FULL_SHARD equal the saved reference)."""

import inspect

import pytest
import torch

import ovi
from ovi.parallel.dims import ParallelDims
from ovi.parallel.parallelize import RankComms, parallelize
from ovi.runtime.worker_group import WorkerGroup


class Resolutions:
    """Counts ParallelDims.from_config calls (the real one still runs)."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = ParallelDims.from_config.__func__

        def counting(cls, cfg, world_size=None, **kw):
            self.calls.append(world_size)
            return real(cls, cfg, world_size, **kw)
        monkeypatch.setattr(ParallelDims, "from_config", classmethod(counting))


@pytest.fixture
def resolutions(monkeypatch):
    return Resolutions(monkeypatch)


@pytest.fixture
def no_spawn(monkeypatch):
    """WorkerGroups that start no processes (what is counted happens before any would start)."""
    started = []
    monkeypatch.setattr(WorkerGroup, "_start", lambda self, timeout: started.append(self.dims))
    monkeypatch.setattr(WorkerGroup, "close", lambda self: None)
    return started


def test_ovi_generate_in_one_process_resolves_once(resolutions, tmp_path):
    from ovi.cli import main
    assert main(["generate", "--steps", "1", "--quiet", "--out", str(tmp_path)]) == 0
    assert len(list(tmp_path.glob("*.mp4"))) == 1
    assert len(resolutions.calls) == 1


def test_ovi_generate_with_ranks_resolves_once_and_hands_the_dims_to_the_group(resolutions, no_spawn):
    from ovi.commands.generate import _open_engine
    with _open_engine(ovi.load_config(None, sp_size=2)) as group:
        assert isinstance(group, WorkerGroup)
    assert len(resolutions.calls) == 1
    assert [(d.world_size, d.sp) for d in no_spawn] == [(2, 2)]


def test_a_group_made_in_a_kernel_resolves_once(resolutions, no_spawn):
    group = WorkerGroup(ovi.load_config(None, cfg_parallel=True), world_size=4)
    assert (group.dims.cfg, group.dims.sp, len(resolutions.calls)) == (2, 2, 1)
    # Handed dims are used as they are: no second resolution.
    WorkerGroup(group.config, dims=group.dims)
    assert len(resolutions.calls) == 1
    with pytest.raises(ovi.errors.ConfigError, match="dims handed in are for 4 ranks"):
        WorkerGroup(group.config, world_size=2, dims=group.dims)


def test_the_runner_engine_factory_resolves_once(resolutions, no_spawn):
    from ovi.runtime.runner import make_engine_factory
    group = make_engine_factory(world_size=2)({"config": None, "engine": {}})
    assert isinstance(group, WorkerGroup) and group.dims.sp == 2
    assert len(resolutions.calls) == 1


def test_torchrun_resolves_once_before_the_rendezvous(resolutions, monkeypatch):
    from ovi.runtime import torchrun

    class Rendezvous(Exception):
        pass

    def stop(*args, **kwargs):
        raise Rendezvous
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(torchrun, "start_parent_watchdog", lambda pid: None)
    monkeypatch.setattr(torchrun.dist, "init_process_group", stop)
    with pytest.raises(Rendezvous):
        torchrun.serve_torchrun(ovi.load_config(None))
    assert resolutions.calls == [2]


def test_ranks_are_handed_their_dims():
    from ovi.runtime.rank_engine import build_rank_engine
    assert inspect.signature(build_rank_engine).parameters["dims"].default is inspect.Parameter.empty


def test_parallelize_needs_the_auto_strategy_resolved_first():
    dims = ParallelDims(world_size=2, sp=2, fsdp=2, fsdp_strategy="auto")
    with pytest.raises(ValueError, match="resolve the FSDP auto strategy"):
        parallelize(lambda **kw: None, dims=dims, comms=RankComms(), rank=0, device=torch.device("cpu"))


def test_parallelize_on_one_rank_loads_and_leaves_the_model_alone():
    seen = {}

    class Loaded:
        model = torch.nn.Linear(2, 2)
        text_encoder = type("Text", (), {"model": torch.nn.Linear(2, 2)})()

    def load(**placement):
        seen.update(placement)
        return Loaded
    applied = parallelize(load, dims=ParallelDims(world_size=1), comms=RankComms(), rank=0, device=torch.device("cpu"))
    assert seen == {"fusion_loader": None, "text_placer": None}
    assert applied.components is Loaded and applied.predictor is None and applied.model_scope is None
    assert applied.self_placed == () and applied.info["fsdp"] is None and applied.info["sp_scheme"] is None
