"""Regional compile (ovi.pipeline.compile) with the other features: sequence-parallel hooks on 2 gloo
ranks, FSDP units, block swap, a merged and an unmerged LoRA, and dynamo's recompile limit.

These tests check graph capture and results, not inductor's code generation (tests/pipeline/test_compile.py
compiles with inductor; a cold inductor compile of the tiny model takes ~75 s here). So they compile with
dynamo's `aot_eager` backend: dynamo traces the fused block and AOTAutograd builds its graph exactly as for
inductor, then runs it without generating C++. Tolerance as test_compile.py: 1e-4 of the largest value."""

import pytest
import torch

import ovi
from ovi.pipeline import compile as regional
from tests.launcher import run_ranks

CAPTURE_BACKEND = "aot_eager"
RTOL_OF_MAX = 1e-4
PROMPT = "A red circle bounces. <AUDCAP>a high tone<ENDAUDCAP>"
TINY = dict(sample_steps=2, video_frame_height_width=[96, 160])  # 75 video tokens: SP pads the shards


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) <= RTOL_OF_MAX * float(b.abs().max())


@pytest.fixture(autouse=True)
def capture_backend(monkeypatch):
    monkeypatch.setattr(regional, "BACKEND", CAPTURE_BACKEND)


def _rank_generate(rank, world_size, ckpt, overrides):
    import torch._dynamo

    from ovi.parallel.dims import ParallelDims
    from ovi.pipeline import compile as regional
    from ovi.runtime.rank_engine import build_rank_engine
    regional.BACKEND = CAPTURE_BACKEND  # a fresh (spawned) process: set it here too
    cfg = ovi.load_config(model_name="tiny", ckpt_dir=ckpt, **TINY, **overrides)
    engine = build_rank_engine(cfg, rank, world_size, torch.device("cpu"), ParallelDims.from_config(cfg, world_size))
    clip = engine.generate(PROMPT, seed=1)
    graph_breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    return (clip.latents if clip is not None else None), engine.engine.compiled.record(), graph_breaks


@pytest.fixture(scope="module")
def eager_tiny(tiny_ckpt):
    return ovi.Engine.from_config(ovi.load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), **TINY)).generate(
        PROMPT, seed=1).latents


@pytest.mark.parametrize("overrides", [
    dict(sp_size=2, use_optimized_comms=True, enable_async_comms=True),
    dict(use_fsdp=True, fsdp_sharding_strategy="FULL_SHARD", sp_size=2),
], ids=["sp2-optimized-async", "fsdp-full-shard-sp2"])
def test_compiled_block_on_two_gloo_ranks_matches_one_eager_rank(tiny_ckpt, eager_tiny, overrides):
    results = run_ranks(_rank_generate, 2, str(tiny_ckpt), dict(overrides, compile=True), timeout=400)
    latents, record, graph_breaks = results[0]
    assert record["enabled"] and record["backend"] == CAPTURE_BACKEND and record["fallback"] is None
    # Collectives graph-break: the block is a few graphs, not one, but those serve every block and step.
    assert record["graphs"] >= 1 and graph_breaks >= 1
    for key in ("video", "audio"):
        assert close(latents[key], eager_tiny[key])
    assert all(r[1]["graphs"] == record["graphs"] for r in results)  # every rank compiled the same graphs


def test_compiled_block_swap_matches_eager():
    plain = ovi.Engine.from_config(ovi.load_config(None, sample_steps=2)).generate(PROMPT, seed=1)
    engine = ovi.Engine.from_config(ovi.load_config(None, sample_steps=2, blocks_on_device=1, compile=True))
    clip = engine.generate(PROMPT, seed=1)
    assert clip.meta["memory_profile"]["blocks_swapped"] == engine.model.num_blocks - 1
    assert clip.meta["compile"]["graphs"] >= 1 and clip.meta["compile"]["fallback"] is None
    for key in ("video", "audio"):
        assert close(clip.latents[key], plain.latents[key])


def test_merged_lora_reuses_the_graph_and_unmerged_compiles_one_variant(tmp_path):
    """A merged LoRA changes weight values only (graph inputs): no recompile. An unmerged one wraps the
    block's Linears in peft layers: dynamo compiles one new variant of the block, reused for all steps."""
    from ovi.bench.lora import _write_lora
    engine = ovi.Engine.from_config(ovi.load_config(None, sample_steps=2))
    path = _write_lora(tmp_path / "r4.safetensors", engine.model, rank=4, seed=0)
    eager = {merge: engine.generate(PROMPT, seed=1, loras=[{"path": str(path), "merge": merge}]).latents
             for merge in (True, False)}
    import torch._dynamo
    torch._dynamo.reset()  # variants compiled by earlier tests in this process would be reused, not counted
    engine = ovi.Engine.from_config(ovi.load_config(None, sample_steps=2, compile=True))
    engine.generate(PROMPT, seed=1)
    base_graphs = engine.compiled.record()["graphs"]
    assert base_graphs == 1
    merged = engine.generate(PROMPT, seed=1, loras=[{"path": str(path), "merge": True}])
    assert merged.meta["compile"]["graphs"] == base_graphs
    unmerged = engine.generate(PROMPT, seed=1, loras=[{"path": str(path), "merge": False}])
    assert unmerged.meta["compile"]["graphs"] == 2 * base_graphs  # one more variant of the block
    assert unmerged.meta["compile"]["fallback"] is None
    for clip, merge in ((merged, True), (unmerged, False)):
        for key in ("video", "audio"):
            assert close(clip.latents[key], eager[merge][key])


def test_recompile_limit_fallback_is_recorded_and_warned(monkeypatch, caplog):
    """Dynamo runs variants past its recompile_limit eagerly with only a log line; the block records it."""
    import torch._dynamo
    from ovi.model import FusionModel
    from ovi.model.configs import architecture
    torch._dynamo.reset()  # this process's earlier variants of the block would count against the limit
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", 1)
    torch.manual_seed(0)
    model = FusionModel(*architecture("tiny")).eval()
    block = regional.compile_fused_block(model, True, torch.device("cpu"))

    def run(video_len):
        g = torch.Generator().manual_seed(video_len)
        args = dict(vid=[torch.randn(48, 2, 4, 4, generator=g)], audio=[torch.randn(20, 20, generator=g)],
                    t=torch.tensor([500.0]), vid_context=[torch.randn(5, 64, generator=g)],
                    audio_context=[torch.randn(5, 64, generator=g)], vid_seq_len=video_len, audio_seq_len=20)
        with torch.no_grad():
            return model(**args)
    run(8)
    assert block.record()["fallback"] is None and block.record()["graphs"] == 1
    with caplog.at_level("WARNING", logger="ovi.pipeline.compile"):
        compiled = run(16)  # a second shape: a second variant, over the limit of 1
    record = block.record()
    assert "recompile_limit (1 variants" in record["fallback"] and record["graphs"] == 1
    assert any("recompile_limit" in r.getMessage() for r in caplog.records)
    assert record["backend"] == CAPTURE_BACKEND  # the first shape still runs compiled
    model.fused_block_fn = regional.fused_block_step
    eager = run(16)
    torch._dynamo.reset()
    for c, e in zip(compiled, eager):
        assert torch.equal(c[0], e[0])  # past the limit dynamo ran the block's Python: eager, bit for bit
