"""FSDP sharded inference on gloo ranks: every strategy, alone and with SP (and CFG-parallel, fp8,
offload, auto, the text encoder sharded too), gives the single-rank latents (fp32, 1e-4); per-rank
parameter bytes and the bytes each rank read while loading stay within a shard's share; the seed's
configure_fsdp_for_ampere shards a loaded model; bad combinations fail before any process starts.
Several cases share one set of ranks (rank start-up dominates on 2 cores)."""

import pytest
import torch

import ovi
from ovi.errors import ConfigError
from ovi.parallel.dims import ParallelDims
from tests.launcher import run_ranks, spawned_children
from tests.parallel.counting import StepCounter

PROMPT = "A red ball bounces. <AUDCAP>Rhythmic thuds<ENDAUDCAP>"
SETTINGS = dict(sample_steps=2, video_frame_height_width=[96, 160], slg_layer=1)
FSDP = dict(use_fsdp=True)

# name -> (config overrides); on 2 ranks "alone" is FSDP over 2 replicas (sp 1), "sp2" shares the ranks with SP
TWO_RANKS = {
    "FULL_SHARD alone": dict(FSDP, fsdp_sharding_strategy="FULL_SHARD", sp_size=1),
    "SHARD_GRAD_OP alone": dict(FSDP, fsdp_sharding_strategy="SHARD_GRAD_OP", sp_size=1),
    "FULL_SHARD+offload alone": dict(FSDP, fsdp_sharding_strategy="FULL_SHARD", fsdp_cpu_offload=True, sp_size=1),
    "NO_SHARD sp2": dict(FSDP, fsdp_sharding_strategy="NO_SHARD", sp_size=2),
    "FULL_SHARD sp2": dict(FSDP, fsdp_sharding_strategy="FULL_SHARD", sp_size=2),
    "SHARD_GRAD_OP sp2": dict(FSDP, fsdp_sharding_strategy="SHARD_GRAD_OP", sp_size=2, use_optimized_comms=False),
    "FULL_SHARD+offload sp2": dict(FSDP, fsdp_sharding_strategy="FULL_SHARD", fsdp_cpu_offload=True, sp_size=2),
    "FULL_SHARD cfg2": dict(FSDP, fsdp_sharding_strategy="FULL_SHARD", cfg_parallel=True),
    "FULL_SHARD fp8 sp2": dict(FSDP, fsdp_sharding_strategy="FULL_SHARD", sp_size=2, fp8=True),
    "FULL_SHARD+text sp2": dict(FSDP, fsdp_sharding_strategy="FULL_SHARD", sp_size=2, shard_text_model=True),
    "auto ample": dict(FSDP, fsdp_sharding_strategy="auto", sp_size=2, device_memory_gb=64),
    "auto little": dict(FSDP, fsdp_sharding_strategy="auto", sp_size=2),  # device_memory_gb: see below
}


def _between_full_and_no_shard_gb() -> float:
    """A device size FULL_SHARD fits and NO_SHARD does not, by the memory model `auto` uses."""
    from ovi.parallel.dims import ParallelDims
    from ovi.parallel.memory import HEADROOM, estimate
    from ovi.pipeline.footprint import workload
    load = workload(ovi.load_config(model_name="tiny", ckpt_dir="unused", **SETTINGS), torch.float32)
    peak = lambda **kw: estimate("tiny", load, ParallelDims(world_size=2, sp=2, **kw), compute=torch.float32,  # noqa
                                 device="cpu").peak
    full, none = peak(fsdp_strategy="FULL_SHARD", fsdp=2), peak()
    assert full < none
    return (full + none) / 2 / HEADROOM / 1e9
# 4 ranks: HYBRID_SHARD over 2 "nodes" of 2 (shards within one, replicated across; the text encoder too),
# with sp 2 x 2 replicas and alone (sp 1 x 4 replicas), and FULL_SHARD with CFG-parallel and SP.
FOUR_RANKS = {
    "HYBRID_SHARD+text sp2 x2 nodes": (dict(FSDP, fsdp_sharding_strategy="HYBRID_SHARD", sp_size=2,
                                            shard_text_model=True), 2),
    "HYBRID_SHARD alone x2 nodes": (dict(FSDP, fsdp_sharding_strategy="HYBRID_SHARD", sp_size=1), 2),
    "FULL_SHARD cfg2 sp2": (dict(FSDP, fsdp_sharding_strategy="FULL_SHARD", cfg_parallel=True, sp_size=2), None),
}


def _ampere(world_size):
    """configure_fsdp_for_ampere on a loaded tiny FusionModel: its forward before and after sharding."""
    from ovi.model import FusionModel
    from ovi.model.configs import architecture
    from ovi.parallel.fsdp import configure_fsdp_for_ampere
    torch.manual_seed(0)  # the same weights and inputs on every rank
    model = FusionModel(*architecture("tiny")).eval().requires_grad_(False)
    video, audio = torch.randn(48, 3, 6, 10), torch.randn(40, 20)
    context = torch.randn(12, model.video_config["text_dim"])
    args = ([video], [audio], torch.tensor([900.0]), [context], [context], 3 * 6 * 10 // 4, 40)
    with torch.no_grad():
        before = model(*args)
    try:
        configure_fsdp_for_ampere(model, 0, world_size + 1)
    except ValueError as exc:
        refused = str(exc)
    sharded = configure_fsdp_for_ampere(model, 0, world_size)
    with torch.no_grad():
        after = sharded(*args)
    local = sum(p.to_local().numel() for p in sharded.parameters())
    return {"before": before, "after": after, "refused": refused, "local_numel": local,
            "total_numel": sum(p.numel() for p in sharded.parameters())}


def _generate(rank, world_size, ckpt, cases, ampere=False):
    from ovi.runtime.rank_engine import build_rank_engine
    out = {"ampere": _ampere(world_size)} if ampere else {}
    for name, (overrides, ranks_per_node) in cases.items():
        cfg = ovi.load_config(model_name="tiny", ckpt_dir=ckpt, **SETTINGS, **overrides)
        dims = ParallelDims.from_config(cfg, world_size, ranks_per_node=ranks_per_node)
        engine = build_rank_engine(cfg, rank, world_size, torch.device("cpu"), dims)
        counter = StepCounter(engine)
        clip = engine.generate(PROMPT, progress=counter.progress)
        stats = engine.stats()
        out[name] = {"latents": clip.latents if clip is not None else None,
                     "forwards_per_step": counter.forwards_per_step, "cfg_rank": dims.cfg_rank(rank),
                     "by_kind": stats["by_kind"], "collectives_per_step": stats["collectives_per_step"],
                     "meta": {k: clip.meta[k] for k in ("fsdp", "fsdp_degree", "fsdp_cpu_offload", "fsdp_reason",
                                                        "memory", "sp", "world_size")} if clip is not None else None,
                     "memory": stats["memory"]}
    return out


@pytest.fixture(scope="module")
def references(tiny_ckpt):
    refs = {}
    for fp8 in (False, True):
        engine = ovi.Engine.from_config(ovi.load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), **SETTINGS, fp8=fp8))
        refs[fp8] = engine.generate(PROMPT).latents
    return refs


@pytest.fixture(scope="module")
def two_ranks(tiny_ckpt):
    cases = {name: (dict(overrides), None) for name, overrides in TWO_RANKS.items()}
    cases["auto little"][0]["device_memory_gb"] = _between_full_and_no_shard_gb()
    return run_ranks(_generate, 2, str(tiny_ckpt), cases, True, timeout=600)


@pytest.fixture(scope="module")
def four_ranks(tiny_ckpt):
    return run_ranks(_generate, 4, str(tiny_ckpt), FOUR_RANKS, timeout=600)


@pytest.mark.parametrize("name", list(TWO_RANKS))
def test_two_rank_latents_equal_single_rank(two_ranks, references, name):
    latents = two_ranks[0][name]["latents"]
    want = references[bool(TWO_RANKS[name].get("fp8"))]
    for key in ("video", "audio"):
        torch.testing.assert_close(latents[key], want[key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(FOUR_RANKS))
def test_four_rank_latents_equal_single_rank(four_ranks, references, name):
    latents = four_ranks[0][name]["latents"]
    for key in ("video", "audio"):
        torch.testing.assert_close(latents[key], references[False][key], atol=1e-4, rtol=1e-4)


def test_full_shard_holds_a_shard_and_loading_reads_only_it(two_ranks, four_ranks):
    for results, name, degree in ((two_ranks, "FULL_SHARD sp2", 2), (two_ranks, "FULL_SHARD alone", 2),
                                  (four_ranks, "HYBRID_SHARD+text sp2 x2 nodes", 2), (four_ranks, "FULL_SHARD cfg2 sp2", 2),
                                  (four_ranks, "HYBRID_SHARD alone x2 nodes", 2)):
        for rank, result in enumerate(results):
            mem = result[name]["memory"]
            assert mem["fsdp"] == degree, (name, rank)
            total, largest = mem["total_param_bytes"], mem["largest_block_bytes"]
            assert mem["param_bytes_per_rank"] <= total / degree * 1.05 + largest, (name, rank, mem)
            assert mem["param_bytes_per_rank"] < total, (name, rank)
            # Loading: each rank read only its own rows, never the whole model, one tensor slice at a time.
            assert mem["load_bytes_read"] <= mem["param_bytes_per_rank"], (name, rank, mem)
            assert mem["load_bytes_read"] <= total / degree * 1.05 + largest
            assert mem["load_largest_read"] < largest
            # Gathering one fused block (plus the heads) at a time stays far below the whole model.
            assert mem["peak_param_bytes_per_rank"] <= mem["param_bytes_per_rank"] + largest + 2 * largest


@pytest.mark.parametrize("fixture,name,sp", [("two_ranks", "FULL_SHARD cfg2", 1),
                                             ("four_ranks", "FULL_SHARD cfg2 sp2", 2)])
def test_cfg_parallel_under_full_shard_runs_one_pass_per_rank(request, fixture, name, sp):
    results = [result[name] for result in request.getfixturevalue(fixture)]
    blocks, steps = 3, SETTINGS["sample_steps"]
    assert sorted(r["cfg_rank"] for r in results) == [0] * sp + [1] * sp
    for rank, r in enumerate(results):
        positive = r["cfg_rank"] == 0
        run = blocks if positive else blocks - 1  # the negative pass skips the SLG block
        assert r["forwards_per_step"] == [1] * steps, (name, rank)  # one pass per rank per step, not both
        assert r["memory"]["block_gathers"] == steps * run, (name, rank)  # FSDP gathers that pass's blocks only
        # one cfg all-gather per step; with SP the pass's own: per block 2 all-to-alls + 1 audio merge, + 1 head
        want = {"all_gather": 1} if sp == 1 else {"all_to_all": 2 * run, "all_gather": run + 1 + 1}
        assert r["by_kind"] == {kind: steps * n for kind, n in want.items()}, (name, rank, r["by_kind"])


def test_text_encoder_shards_like_the_dit(two_ranks, four_ranks):
    """shard_text_model: each rank holds (and read from the file) only its share of the umT5 encoder,
    over the same shard groups as the DiT (a node's ranks with HYBRID_SHARD)."""
    for results, name in ((two_ranks, "FULL_SHARD+text sp2"), (four_ranks, "HYBRID_SHARD+text sp2 x2 nodes")):
        for rank, result in enumerate(results):
            mem = result[name]["memory"]
            total, largest = mem["text_total_param_bytes"], mem["text_largest_unit_bytes"]
            assert mem["text_sharded"], (name, rank)
            assert mem["text_param_bytes_per_rank"] <= total / 2 * 1.05 + largest, (name, rank, mem)
            assert mem["text_param_bytes_per_rank"] < 0.6 * total, (name, rank, mem)
            assert mem["text_load_bytes_read"] <= mem["text_param_bytes_per_rank"], (name, rank, mem)
            assert mem["text_load_largest_read"] < largest
    plain = two_ranks[0]["FULL_SHARD sp2"]["memory"]
    assert not plain["text_sharded"] and plain["text_param_bytes_per_rank"] == plain["text_total_param_bytes"]
    sharded = two_ranks[0]["FULL_SHARD+text sp2"]["memory"]
    assert sharded["text_total_param_bytes"] == plain["text_total_param_bytes"]


def test_configure_fsdp_for_ampere_shards_a_loaded_model(two_ranks):
    for rank, result in enumerate(two_ranks):
        ampere = result["ampere"]
        for before, after in zip(ampere["before"], ampere["after"]):
            torch.testing.assert_close(after, before, atol=1e-5, rtol=1e-5)
        assert ampere["local_numel"] <= ampere["total_numel"] / 2 * 1.05, rank
        assert "configure_fsdp_for_ampere(num_gpus=3) needs a process group of 3 ranks (have 2)" in ampere["refused"]


def test_mixed_precision_casts_only_wider_storage():
    from ovi.checkpoint.loading import FP8
    from ovi.parallel.fsdp import mixed_precision
    assert mixed_precision(torch.float32, torch.bfloat16).param_dtype == torch.bfloat16  # fp32 file, bf16 run
    assert mixed_precision(torch.float32, torch.float32).param_dtype is None              # fp32 CPU runs stay fp32
    assert mixed_precision(FP8, torch.bfloat16).param_dtype is None                       # fp8 shards gather as fp8


def test_strategies_gather_as_documented(two_ranks):
    full = two_ranks[0]["FULL_SHARD sp2"]["memory"]
    keep = two_ranks[0]["SHARD_GRAD_OP sp2"]["memory"]
    blocks, steps = 3, SETTINGS["sample_steps"]
    # FULL_SHARD: every block a pass runs is gathered (the negative pass skips the SLG block, and the
    # prefetch knows it: it never gathers a block that will not run).
    assert full["block_gathers"] == steps * (blocks + blocks - 1)
    # SHARD_GRAD_OP: gathered once, kept for the whole denoising loop.
    assert keep["block_gathers"] == blocks
    assert keep["peak_param_bytes_per_rank"] >= keep["total_param_bytes"]
    assert full["peak_param_bytes_per_rank"] < keep["peak_param_bytes_per_rank"]
    offload = two_ranks[0]["FULL_SHARD+offload sp2"]["memory"]
    assert offload["cpu_offload"] and offload["param_device"] == "cpu"
    fp8 = two_ranks[0]["FULL_SHARD fp8 sp2"]["memory"]
    assert fp8["total_param_bytes"] < 0.3 * full["total_param_bytes"]  # shards stay fp8


def test_auto_picks_by_memory_and_says_why_in_the_sidecar(two_ranks):
    ample = two_ranks[0]["auto ample"]["meta"]
    little = two_ranks[0]["auto little"]["meta"]
    assert ample["fsdp"] == "NO_SHARD" and ample["fsdp_degree"] == 1
    assert "auto chose NO_SHARD" in ample["fsdp_reason"] and "fits" in ample["fsdp_reason"]
    assert little["fsdp"] == "FULL_SHARD" and little["fsdp_degree"] == 2 and not little["fsdp_cpu_offload"]
    assert "auto chose FULL_SHARD" in little["fsdp_reason"] and "NO_SHARD needs" in little["fsdp_reason"]
    assert two_ranks[1]["auto little"]["memory"]["strategy"] == "FULL_SHARD"  # every rank made the same choice


def test_sidecar_and_stats_carry_memory_accounting(two_ranks):
    meta = two_ranks[0]["FULL_SHARD sp2"]["meta"]
    assert meta["fsdp"] == "FULL_SHARD" and meta["fsdp_degree"] == 2 and meta["sp"] == 2
    for key in ("strategy", "param_bytes_per_rank", "total_param_bytes", "largest_block_bytes",
                "peak_bytes_per_rank", "estimated_peak_bytes"):
        assert meta["memory"][key], key
    assert two_ranks[1]["FULL_SHARD sp2"]["meta"] is None  # only rank 0 makes the clip


@pytest.mark.parametrize("overrides,world,ranks_per_node,message", [
    (dict(FSDP, fsdp_sharding_strategy="HYBRID_SHARD"), 2, None, "HYBRID_SHARD replicates across nodes.*one node"),
    (dict(FSDP, fsdp_sharding_strategy="HYBRID_SHARD"), 6, 4, "do not split into nodes of 4"),
    (dict(FSDP, fsdp_sharding_strategy="FULL_SHARD", sp_size=2), 3, None, "not divisible by cfg \\(1\\) x sp \\(2\\)"),
    (dict(sp_size=1), 2, None, "world size 2 must equal cfg \\(1\\) x sp \\(1\\)"),
    (dict(fsdp_cpu_offload=True), 1, None, "fsdp_cpu_offload: true .* needs FSDP"),
    (dict(FSDP, fsdp_sharding_strategy="NO_SHARD", fsdp_cpu_offload=True), 2, None, "NO_SHARD .* nothing to offload"),
    (dict(shard_text_model=True), 1, None, "shard_text_model: true .* needs a sharding strategy"),
    (dict(FSDP, fsdp_sharding_strategy="NO_SHARD", shard_text_model=True), 1, None, "shard_text_model: true"),
    (dict(FSDP, fsdp_sharding_strategy="FULL_SHARD", world_size=4), 2, None, "world_size: 4 in the config, but 2"),
    (dict(FSDP, fsdp_sharding_strategy="HYBRID_SHARD", world_size=4), None, None, "HYBRID_SHARD .*one node"),
])
def test_bad_combinations_fail_before_any_process_starts(tiny_ckpt, overrides, world, ranks_per_node, message):
    cfg = ovi.load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), **overrides)
    with pytest.raises(ConfigError, match=message):
        ParallelDims.from_config(cfg, world, ranks_per_node=ranks_per_node)
    if ranks_per_node is None:
        from ovi.runtime import WorkerGroup
        with pytest.raises(ConfigError, match=message):
            WorkerGroup(cfg, world_size=world)
        assert spawned_children() == []


def test_dims_lay_out_replicas_and_shard_groups():
    cfg = ovi.load_config(**FSDP, fsdp_sharding_strategy="FULL_SHARD", sp_size=2, cfg_parallel=True)
    dims = ParallelDims.from_config(cfg, 8)  # cfg 2 x (sp 2 x 2 replicas)
    assert (dims.sp, dims.cfg, dims.fsdp, dims.per_cfg) == (2, 2, 4, 4)
    assert dims.all_sp_groups() == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert dims.all_cfg_groups() == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert dims.all_fsdp_groups() == [[0, 1, 2, 3], [4, 5, 6, 7]]  # shard groups never span the CFG halves
    hybrid = ParallelDims.from_config(cfg.replace(fsdp_sharding_strategy="HYBRID_SHARD"), 8, ranks_per_node=2)
    assert hybrid.fsdp == 2 and hybrid.all_fsdp_groups()[1] == [2, 3]
    assert ParallelDims(**dims.describe()) == dims  # what a WorkerGroup sends to its ranks
    assert not ParallelDims.from_config(ovi.load_config(), 1).needs_process_group
    assert ParallelDims.from_config(ovi.load_config(**FSDP, fsdp_cpu_offload=True), 1).needs_process_group
