"""WorkerGroup on gloo CPU ranks with the tiny model: persistent ranks serve many requests with the
single-process result; bad input, a cancelling progress callback, a raising rank, a killed rank and a
dead parent each end the way the API promises — and no process is left behind."""

import operator
import os
import signal
import threading

import pytest
import torch

import ovi
from ovi.errors import ConfigError, InputError
from ovi.runtime import WorkerError, WorkerGroup
from tests.launcher import run_python, spawned_children, wait_gone

# Every wait in these tests is bounded: a hang becomes a failure naming what did not answer.
REQUEST_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def cfg(tiny_ckpt):
    return ovi.load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), sample_steps=2, sp_size=2)


@pytest.fixture(scope="module")
def reference(cfg):
    """Single-process clips for seeds 0..2 (what every 2-rank result must match)."""
    engine = ovi.Engine.from_config(cfg.replace(sp_size=1))
    return {seed: engine.generate("A red ball bounces", seed=seed) for seed in range(3)}


def _ranks(group):
    return {f"rank {r}": pid for r, pid in enumerate(group.pids)}


def _assert_no_ranks_left(group):
    wait_gone(_ranks(group), timeout=15)
    assert all(p.exitcode is not None for p in group._procs)
    assert spawned_children() == []


def _assert_same_clip(clip, ref):
    for key in ("video", "audio"):
        torch.testing.assert_close(clip.latents[key], ref.latents[key], atol=1e-4, rtol=1e-4)


def _serve_three(group, reference):
    for seed in range(3):
        steps, threads = [], set()

        def progress(step, total, info):
            steps.append((step, total))
            threads.add(threading.get_ident())
        clip = group.generate("A red ball bounces", seed=seed, progress=progress)
        _assert_same_clip(clip, reference[seed])
        assert steps == [(1, 2), (2, 2)]
        assert threads == {threading.get_ident()}  # progress runs in the caller's thread
        assert clip.meta["world_size"] == 2 and clip.meta["sp"] == 2


def test_group_serves_requests_survives_bad_input_and_cancel_then_a_raising_rank_closes_it(cfg, reference):
    group = WorkerGroup(cfg, world_size=2, request_timeout=REQUEST_TIMEOUT)
    try:
        assert group.backend == "gloo" and len(set(group.pids)) == 2
        _serve_three(group, reference)

        # Bad input is not a crash: the rank's InputError reaches the caller, the group keeps serving.
        with pytest.raises(InputError, match="prompt is empty"):
            group.generate("   ")
        with pytest.raises(InputError, match="mode i2v needs an image"):
            group.generate("A cat", mode="i2v")

        # A progress callback that raises (how the Runner cancels a job) stops every rank at the next
        # step; its exception reaches the caller and the group stays usable.
        class Stop(Exception):
            pass

        def cancel(step, total, info):
            raise Stop
        with pytest.raises(Stop):
            group.generate("A red ball bounces", seed=0, steps=6, progress=cancel)
        _assert_same_clip(group.generate("A red ball bounces", seed=1), reference[1])

        stats = group.stats()
        assert [s["rank"] for s in stats] == [0, 1]
        assert [s["pid"] for s in stats] == group.pids
        assert all(s["requests_served"] == 4 and s["backend"] == "gloo" for s in stats)

        # Something else raised inside the ranks: WorkerError with the remote traceback; the group is
        # stopped and says so when used again.
        class RaisesInRank:
            def __reduce__(self):
                return operator.truediv, (1, 0)  # fine to pickle here, fails when a rank unpickles it
        with pytest.raises(WorkerError, match="ZeroDivisionError") as info:
            group.generate("A cat", image=RaisesInRank())
        assert info.value.rank in (0, 1) and info.value.exc_type == "ZeroDivisionError"
        assert "Traceback" in info.value.remote_traceback
        _assert_no_ranks_left(group)
        with pytest.raises(WorkerError, match="closed"):
            group.generate("A cat")
    finally:
        group.close()
    _assert_no_ranks_left(group)


def test_killed_rank_raises_within_seconds_and_a_new_group_then_works(cfg, reference):
    with WorkerGroup(cfg, world_size=2, request_timeout=REQUEST_TIMEOUT) as group:
        steps_seen = []

        def kill_rank_1(step, total, info):
            steps_seen.append(step)
            if step == 1:
                os.kill(group.pids[1], signal.SIGKILL)
        with pytest.raises(WorkerError) as info:
            group.generate("A red ball bounces", steps=50, progress=kill_rank_1)
        # The death watch raised it mid-generation (not the 60 s request timeout, not after the last step):
        # the error names the rank and its SIGKILL exit code, and the denoising loop never got near its end.
        assert max(steps_seen) < 50, steps_seen
        assert info.value.rank == 1 and info.value.exitcode == -signal.SIGKILL
        assert "rank 1" in str(info.value) and "SIGKILL" in str(info.value)
        _assert_no_ranks_left(group)
    port = group.port

    with WorkerGroup(cfg, world_size=2, request_timeout=REQUEST_TIMEOUT) as again:
        assert set(again.pids).isdisjoint(group.pids)
        _serve_three(again, reference)
    _assert_no_ranks_left(again)
    import socket
    with socket.socket() as s:  # the first group's rendezvous port was released
        s.bind(("127.0.0.1", port))


def test_ranks_exit_by_themselves_when_the_parent_dies(tiny_ckpt):
    code = (
        "import os, signal, ovi\n"
        "from ovi.runtime import WorkerGroup\n"
        f"cfg = ovi.load_config(model_name='tiny', ckpt_dir={str(tiny_ckpt)!r}, sample_steps=2, sp_size=2)\n"
        "group = WorkerGroup(cfg, world_size=2)\n"
        "print('PIDS', *group.pids, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"  # no close(), no atexit: only the ranks' watchdogs act
    )
    result = run_python(code, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("PIDS"))
    pids = [int(p) for p in line.split()[1:]]
    wait_gone({f"rank {r}": pid for r, pid in enumerate(pids)}, timeout=15)


def test_world_size_must_match_the_config_before_anything_starts(cfg):
    with pytest.raises(ConfigError, match="world size 3 must equal"):
        WorkerGroup(cfg, world_size=3)
    with pytest.raises(ConfigError, match="backend 'mpi'"):
        WorkerGroup(cfg, world_size=2, backend="mpi")
    assert spawned_children() == []


def test_a_config_without_sp_size_runs_sp_across_the_group(tiny_ckpt, reference):
    """WorkerGroup(load_config(), world_size=2): sp fills from the ranks, and says so."""
    cfg = ovi.load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), sample_steps=2)
    assert cfg.sp_size is None
    with WorkerGroup(cfg, world_size=2, request_timeout=REQUEST_TIMEOUT) as group:
        clip = group.generate("A red ball bounces", seed=0)
        assert (clip.meta["world_size"], clip.meta["sp"], clip.meta["cfg"]) == (2, 2, 1)
        assert [s["sp"] for s in group.stats()] == [2, 2]
    _assert_same_clip(clip, reference[0])
    _assert_no_ranks_left(group)
