"""A LoRA set inside a WorkerGroup: every rank applies the request's set, so 2-rank sequence parallelism
with LoRAs (one merged, one unmerged) gives the single-rank result, and the next request switches back."""

import torch

import ovi
from ovi.runtime import WorkerGroup
from tests.launcher import run_ranks
from tests.lora.files import random_factors, write_diffusers, write_wan

PROMPT = "A red ball bounces. <AUDCAP>thuds<ENDAUDCAP>"


def test_two_rank_sp_with_loras_equals_one_rank(tiny_ckpt, tmp_path):
    cfg = ovi.load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), sample_steps=2, sp_size=2)
    single = ovi.Engine.from_config(cfg.replace(sp_size=1))
    video = single.model.video_model
    a = write_wan(tmp_path / "a.safetensors", random_factors(video, 4, seed=1, scale=0.2), 4.0)
    b = write_diffusers(tmp_path / "b.safetensors", random_factors(video, 8, seed=2, scale=0.2), 8.0)
    requests = [ovi.GenerateRequest(PROMPT, seed=4, loras=({"path": str(a), "weight": 0.7},
                                                           {"path": str(b), "weight": 0.3, "merge": False})),
                ovi.GenerateRequest(PROMPT, seed=4)]  # the next request switches back to the base on every rank
    with WorkerGroup(cfg, world_size=2, request_timeout=120) as group:
        for request in requests:
            want, got = single.generate(request), group.generate(request)
            for key in ("video", "audio"):
                torch.testing.assert_close(got.latents[key], want.latents[key], atol=1e-4, rtol=1e-4)
            assert got.meta["sp"] == 2
            assert [(r["name"], r["merged"]) for r in got.meta["loras"]] == \
                   [(r["name"], r["merged"]) for r in want.meta["loras"]]
    assert [r["name"] for r in want.meta["loras"]] == []


FSDP_SETTINGS = dict(sample_steps=2, video_frame_height_width=[96, 160])


def _fsdp_generations(rank, world_size, ckpt_dir, config_lora, requests):
    from ovi.parallel.dims import ParallelDims
    from ovi.runtime.rank_engine import build_rank_engine

    cfg = ovi.load_config(model_name="tiny", ckpt_dir=ckpt_dir, **FSDP_SETTINGS, use_fsdp=True,
                          fsdp_sharding_strategy="FULL_SHARD", sp_size=1, lora=[config_lora])
    engine = build_rank_engine(cfg, rank, world_size, torch.device("cpu"),
                               ParallelDims.from_config(cfg, world_size))  # this test is the launcher
    sharded = type(engine.engine.model.video_model.blocks[0].self_attn.q.weight).__name__
    out = []
    for request in requests:
        clip = engine.generate(request)
        out.append(None if clip is None else
                   (clip.latents, [(r["name"], r["merged"]) for r in clip.meta["loras"]], clip.meta["fsdp"]))
    return sharded, out


def test_fsdp_sharded_weights_take_merged_and_unmerged_loras(tiny_ckpt, tmp_path):
    """FULL_SHARD over 2 ranks: the config's LoRA is merged into each rank's rows at load; requests then
    switch to a mixed merged + unmerged set and to weight 0 (the base), all equal to one unsharded rank
    with the same config."""
    tiny = dict(model_name="tiny", ckpt_dir=str(tiny_ckpt), **FSDP_SETTINGS)
    probe = ovi.Engine.from_config(ovi.load_config(**tiny)).model.video_model
    a = write_wan(tmp_path / "a.safetensors", random_factors(probe, 4, seed=1, scale=0.2), 4.0)
    b = write_diffusers(tmp_path / "b.safetensors", random_factors(probe, 8, seed=2, scale=0.2), 8.0)
    single = ovi.Engine.from_config(ovi.load_config(**tiny, lora=[f"{a}:1.0"]))
    requests = [ovi.GenerateRequest(PROMPT, seed=4),  # no loras: the config's set
                ovi.GenerateRequest(PROMPT, seed=4, loras=({"path": str(a), "weight": 0.7},
                                                           {"path": str(b), "weight": 0.3, "merge": False})),
                ovi.GenerateRequest(PROMPT, seed=4, loras=({"path": str(a), "weight": 0.0},))]
    (sharded, got), (_, none) = run_ranks(_fsdp_generations, 2, str(tiny_ckpt), f"{a}:1.0", requests, timeout=300)
    assert sharded == "DTensor" and none == [None] * len(requests)  # rank 1 does not decode
    results = [single.generate(request) for request in requests]
    for want, (latents, loras, fsdp) in zip(results, got):
        assert fsdp == "FULL_SHARD"
        assert loras == [(r["name"], r["merged"]) for r in want.meta["loras"]]
        for key in ("video", "audio"):
            torch.testing.assert_close(latents[key], want.latents[key], atol=1e-4, rtol=1e-4)
    assert [loras for _, loras, _ in got] == [[("a", True)], [("a", True), ("b", False)], [("a", True)]]
    assert not torch.equal(results[0].latents["video"], results[2].latents["video"])  # the LoRA changed the clip
