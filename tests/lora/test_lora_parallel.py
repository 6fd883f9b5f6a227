"""A LoRA set inside a WorkerGroup: every rank applies the request's set, so 2-rank sequence parallelism
with LoRAs (one merged, one unmerged) gives the single-rank result, and the next request switches back."""

import torch

import ovi
from ovi.runtime import WorkerGroup
from tests.launcher import run_ranks
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


def _sharded_switch(rank, world_size, ckpt_dir, lora):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from ovi.errors import LoRAError
    from ovi.lora import LoRAManager
    from tests.lora.files import load_tiny

    model, manager = load_tiny(ckpt_dir), LoRAManager()
    manager.load_adapter("a", lora)
    manager.apply_adapter(model, "a")  # merged while the weights are whole (what the runtime does at load)
    mesh = init_device_mesh("cpu", (world_size,))
    q = model.video_model.blocks[0].self_attn.q
    q.weight = torch.nn.Parameter(distribute_tensor(q.weight.detach(), mesh, [Shard(0)]))  # as FSDP2 leaves it
    manager.apply_adapter(model, "a")  # the same set: nothing changes, nothing to refuse
    try:
        manager.remove_adapter(model, "a")
    except LoRAError as exc:
        return str(exc)
    return None


def test_a_set_change_on_sharded_weights_is_refused(tiny_ckpt, tmp_path):
    """The hook FSDP builds on: the config's set is merged before sharding; changing it on DTensor
    weights is refused with a message saying so, never applied to a shard."""
    lora = write_wan(tmp_path / "a.safetensors", {"blocks.0.self_attn.q": (torch.randn(2, 128), torch.randn(128, 2))},
                     2.0)
    (message,) = run_ranks(_sharded_switch, 1, str(tiny_ckpt), str(lora), timeout=120)
    assert message is not None and "is sharded (FSDP)" in message and "config key `lora`" in message
