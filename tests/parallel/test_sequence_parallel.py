"""Sequence parallelism and CFG-parallel on gloo ranks: same latents as one rank (fp32, 1e-4),
the collective counts each scheme promises, and the forwards each rank runs per step (SP: both passes on
every rank; CFG-parallel: one pass per rank, counted by a forward hook, tests/parallel/counting.py)."""

import pytest
import torch

from tests.launcher import run_ranks

PROMPT = "A red ball bounces. <AUDCAP>Rhythmic thuds<ENDAUDCAP>"
# 96x160 px -> latent 6x10 -> 5 frames x 3 x 5 = 75 video tokens: not divisible by 2 or 4.
# The tiny audio has 22 latents: not divisible by 4.
SETTINGS = dict(sample_steps=2, video_frame_height_width=[96, 160], slg_layer=1)
STEPS = 2 * SETTINGS["sample_steps"]  # each rank generates t2v, then i2v
BLOCKS, HEADS = 3, 4                  # the tiny preset's fused blocks and attention heads (both branches)


def _image():
    g = torch.Generator().manual_seed(3)
    return (torch.rand(3, 96, 160, generator=g) * 2 - 1)


def _generate(rank, world_size, ckpt, overrides):
    """Both modes on one set of ranks (rank start-up dominates on 2 cores)."""
    import ovi
    from ovi.parallel.dims import ParallelDims
    from ovi.runtime.rank_engine import build_rank_engine
    cfg = ovi.load_config(model_name="tiny", ckpt_dir=ckpt, **SETTINGS, **overrides)
    from tests.parallel.counting import StepCounter
    engine = build_rank_engine(cfg, rank, world_size, torch.device("cpu"),
                               ParallelDims.from_config(cfg, world_size))  # this test is the launcher
    counter = StepCounter(engine)
    latents = {}
    for mode in ("t2v", "i2v"):
        clip = engine.generate(PROMPT, mode=mode, image=_image() if mode == "i2v" else None, progress=counter.progress)
        latents[mode] = clip.latents if clip is not None else None
    return latents, {**engine.stats(), "cfg_rank": engine.dims.cfg_rank(rank),
                     "forwards_per_step": counter.forwards_per_step}


@pytest.fixture(scope="module")
def reference(tiny_ckpt):
    import ovi
    from tests.parallel.counting import StepCounter
    engine = ovi.Engine.from_config(ovi.load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), **SETTINGS))
    counter = StepCounter(engine)
    out = {mode: engine.generate(PROMPT, mode=mode, image=_image() if mode == "i2v" else None,
                                 progress=counter.progress).latents for mode in ("t2v", "i2v")}
    return {**out, "forwards_per_step": counter.forwards_per_step}


CASES = [
    ("sp2-upstream", 2, dict(sp_size=2, use_optimized_comms=False)),
    ("sp2-optimized", 2, dict(sp_size=2, use_optimized_comms=True)),
    ("sp2-optimized-async", 2, dict(sp_size=2, use_optimized_comms=True, enable_async_comms=True)),
    ("sp4-upstream", 4, dict(sp_size=4, use_optimized_comms=False)),
    ("sp4-optimized-async", 4, dict(sp_size=4, use_optimized_comms=True, enable_async_comms=True)),
    ("cfg2", 2, dict(cfg_parallel=True)),
    ("cfg2-sp2", 4, dict(cfg_parallel=True, sp_size=2, use_optimized_comms=True, enable_async_comms=True)),
]


@pytest.fixture(scope="module")
def case_results(tiny_ckpt):
    cache = {}

    def get(name):
        if name not in cache:
            _, world, overrides = next(c for c in CASES if c[0] == name)
            cache[name] = run_ranks(_generate, world, str(tiny_ckpt), overrides, timeout=240)
        return cache[name]
    return get


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_parallel_latents_equal_single_rank_t2v_and_i2v(case_results, reference, name):
    latents = case_results(name)[0][0]
    for mode in ("t2v", "i2v"):
        for key in ("video", "audio"):
            torch.testing.assert_close(latents[mode][key], reference[mode][key], atol=1e-4, rtol=1e-4)


def test_collective_counts_match_upstream_and_optimized_halves_them(case_results):
    up = case_results("sp2-upstream")[0][1]
    opt = case_results("sp2-optimized")[0][1]
    # Upstream at sp=2 with 3 fused blocks: 3 x 16 all-to-alls + 2 head all-gathers = 50 per forward;
    # the negative pass skips one block (slg_layer=1): 34. One denoising step = both passes.
    assert up["collectives_per_step"] == 50 + 34
    # Optimized: per block 2 all-to-alls (packed qkv, output) + 1 all-gather (audio merge), + 1 head gather.
    assert opt["collectives_per_step"] == (3 * 3 + 1) + (2 * 3 + 1)
    assert opt["collectives_per_step"] <= 0.5 * up["collectives_per_step"]
    assert opt["bytes_per_step"] <= up["bytes_per_step"]


def per_forward(scheme: str, blocks: int, sp: int, overlap: bool = False) -> dict:
    """Collectives one fused forward over `blocks` blocks issues on one rank, by kind, as each scheme is
    documented (ovi/parallel/sequence.py): upstream 16 all-to-alls per block + 2 head all-gathers;
    optimized 2 all-to-alls per block (packed qkv, output; each split in two head groups when async
    overlap can split the heads evenly over the ranks) + 1 audio-merge all-gather per block + 1 head gather."""
    if scheme == "upstream":
        return {"all_to_all": 16 * blocks, "all_gather": 2}
    groups = 2 if overlap and HEADS % (2 * sp) == 0 else 1
    return {"all_to_all": 2 * groups * blocks, "all_gather": blocks + 1}


def _total(*counts: dict, times: int = 1) -> dict:
    return {kind: times * sum(c.get(kind, 0) for c in counts) for kind in {k for c in counts for k in c}}


@pytest.mark.parametrize("name,scheme,sp,overlap", [
    ("sp2-upstream", "upstream", 2, False), ("sp2-optimized", "optimized", 2, False),
    ("sp2-optimized-async", "optimized", 2, True), ("sp4-upstream", "upstream", 4, False),
    ("sp4-optimized-async", "optimized", 4, True)])
def test_sp_ranks_run_both_passes_with_the_documented_collectives(case_results, reference, name, scheme, sp,
                                                                 overlap):
    assert reference["forwards_per_step"] == [2] * STEPS  # one rank: the positive and the negative pass
    for rank, (_, stats) in enumerate(case_results(name)):
        # SP splits each forward's tokens, not the passes: every rank runs both, the negative one without
        # the SLG block.
        assert stats["forwards_per_step"] == [2] * STEPS, (name, rank)
        want = _total(per_forward(scheme, BLOCKS, sp, overlap), per_forward(scheme, BLOCKS - 1, sp, overlap),
                      times=STEPS)
        assert stats["by_kind"] == want, (name, rank, stats["by_kind"])


@pytest.mark.parametrize("name,sp", [("cfg2", 1), ("cfg2-sp2", 2)])
def test_cfg_parallel_gives_each_rank_one_pass_per_step(case_results, name, sp):
    results = case_results(name)
    assert sorted(stats["cfg_rank"] for _, stats in results) == [0] * sp + [1] * sp
    for rank, (_, stats) in enumerate(results):
        positive = stats["cfg_rank"] == 0
        # One forward per step per rank: cfg rank 0 the positive pass, cfg rank 1 the negative one.
        assert stats["forwards_per_step"] == [1] * STEPS, (name, rank)
        # ... and one all-gather per step swaps the two velocities; SP inside a pass adds that pass's
        # collectives only (the negative pass skips the SLG block).
        sp_part = per_forward("optimized", BLOCKS if positive else BLOCKS - 1, sp, overlap=True) if sp > 1 else {}
        want = _total(sp_part, {"all_gather": 1}, times=STEPS)
        assert stats["by_kind"] == want, (name, rank, stats["by_kind"])
