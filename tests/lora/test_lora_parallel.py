"""A LoRA set inside a WorkerGroup: every rank applies the request's set, so 2-rank sequence parallelism
with LoRAs (one merged, one unmerged) gives the single-rank result, and the next request switches back."""

import torch

import ovi
from ovi.runtime import WorkerGroup
from tests.lora.files import random_factors, write_diffusers, write_wan

PROMPT = "A red ball bounces. <AUDCAP>thuds<ENDAUDCAP>"


def test_two_rank_sp_with_loras_equals_one_rank(tiny_ckpt, tmp_path):
    cfg = ovi.load_config(ckpt_dir=str(tiny_ckpt), sample_steps=2, sp_size=2)
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
