"""Block swap (ovi.parallel.offload): K fused blocks on the device, the rest streamed in one by one.

On the CPU the "device" copy of a swapped block is a fresh clone of its host tensors, so residency is
observable: a swapped block is resident exactly when its parameters do not point at their host storage.
Forward pre-hooks on every Linear inside the blocks count the resident blocks at each layer's forward
(independently of the swap's own bookkeeping) and check the running layer's block is resident.
"""

from pathlib import Path

import pytest
import torch

import ovi
from ovi.errors import ConfigError
from ovi.parallel.offload import BlockSwap

LORAS = Path(__file__).resolve().parents[2] / "experiments" / "loras"
PROMPT = "A red square moves right. <AUDCAP>a high tone<ENDAUDCAP>"


@pytest.fixture(scope="module")
def mid(tmp_path_factory):
    # SLG on block 2: the negative pass skips a swapped block, so the prefetch must follow the real order.
    return ovi.Engine.from_config(ovi.load_config(model_name="mid", ckpt_dir=str(tmp_path_factory.mktemp("mid")),
                                                  sample_steps=2, slg_layer=2))


def _latents(engine, **fields):
    clip = engine.generate(PROMPT, seed=3, **fields)
    return clip.latents["video"], clip.latents["audio"]


def _pair(model, i):
    return [model.video_model.blocks[i], model.audio_model.blocks[i]]


def _host_ptrs(model, blocks):
    return {i: {p.data_ptr() for b in _pair(model, i) for p in b.parameters()} for i in blocks}


def test_block_swap_gives_latents_equal_to_the_plain_run_on_mid(mid):
    plain = _latents(mid)
    swap = BlockSwap(mid.model, mid.device, 1)
    try:
        swapped = _latents(mid)
        stats = swap.stats()
    finally:
        swap.remove()
    assert torch.equal(plain[0], swapped[0]) and torch.equal(plain[1], swapped[1])
    # 2 steps x 2 passes; blocks 1..3 swapped, the negative pass skips block 2
    assert stats["forwards"] == 4 and stats["loads"] == 2 * (3 + 2)
    assert stats["bytes_moved"] == 2 * (3 + 2) * swap.block_bytes(1)


@pytest.mark.parametrize("k", [0, 2])
def test_at_most_k_plus_one_blocks_resident_at_any_layer_forward(mid, k):
    model = mid.model
    swap = BlockSwap(model, mid.device, k, record_events=True)
    host = _host_ptrs(model, swap.swapped)
    owner = {id(m): i for i in range(model.num_blocks) for b in _pair(model, i) for m in b.modules()}
    seen, hooks = [], []

    def resident_blocks():
        loaded = [i for i in swap.swapped
                  if any(p.data_ptr() not in host[i] for b in _pair(model, i) for p in b.parameters())]
        return k + len(loaded)

    def check(module, args):
        i = owner[id(module)]
        if i in swap.swapped:  # the running layer computes with its block's device copy
            assert module.weight.data_ptr() not in host[i]
        seen.append(resident_blocks())

    for i in range(model.num_blocks):
        for b in _pair(model, i):
            hooks += [m.register_forward_pre_hook(check) for m in b.modules() if isinstance(m, torch.nn.Linear)]
    try:
        mid.generate(PROMPT, seed=3, steps=1)
    finally:
        for h in hooks:
            h.remove()
        swap.remove()
    assert seen and max(seen) <= k + 1 and max(seen) == k + 1
    assert swap.peak_resident_blocks == k + 1
    # the order: each swapped block is loaded before it runs and released before the next one loads
    positive = [i for i in range(4) if i >= k]
    negative = [i for i in (0, 1, 3) if i >= k]  # SLG skips block 2
    expected = [e for i in positive + negative for e in (("load", i), ("release", i))]
    assert swap.events == expected
    # released: every swapped block points at its host tensors again
    assert _host_ptrs(model, swap.swapped) == host


def test_trained_default_with_blocks_on_device_equals_plain_and_records_it():
    plain = ovi.Engine.from_config(ovi.load_config(None, sample_steps=2))
    swapped = ovi.Engine.from_config(ovi.load_config(None, sample_steps=2, blocks_on_device=1))
    assert isinstance(swapped.model.fused_block, BlockSwap) and swapped.model.fused_block.blocks_on_device == 1
    a, b = plain.generate(PROMPT, seed=1), swapped.generate(PROMPT, seed=1)
    for key in ("video", "audio"):
        assert torch.equal(a.latents[key], b.latents[key])
    record = b.meta["memory_profile"]
    assert record["blocks_on_device"] == 1 and record["blocks_swapped"] == swapped.model.num_blocks - 1
    assert a.meta["memory_profile"]["blocks_on_device"] is None


@pytest.mark.parametrize("merge", [True, False])
def test_block_swap_with_a_lora_merged_and_unmerged(merge):
    lora = {"path": str(LORAS / "new_colour.safetensors"), "weight": 1.0, "merge": merge}
    plain = ovi.Engine.from_config(ovi.load_config(None, sample_steps=2))
    swapped = ovi.Engine.from_config(ovi.load_config(None, sample_steps=2, blocks_on_device=0))
    a = plain.generate(PROMPT, seed=2, loras=[lora])
    b = swapped.generate(PROMPT, seed=2, loras=[lora])
    assert b.meta["loras"][0]["merged"] is merge
    for key in ("video", "audio"):
        assert torch.equal(a.latents[key], b.latents[key])
    # and the LoRA changed something (the swap did not run the base weights)
    base = swapped.generate(PROMPT, seed=2)
    assert not torch.equal(base.latents["video"], b.latents["video"])


def test_fsdp_and_block_swap_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="block swap cannot be combined with FSDP"):
        ovi.load_config(None, use_fsdp=True, blocks_on_device=1)
    with pytest.raises(ConfigError, match="cpu_offload"):
        ovi.load_config(None, cpu_offload=True, blocks_on_device=1)
    with pytest.raises(ConfigError, match="blocks_on_device"):
        ovi.load_config(None, blocks_on_device=-1)


def test_a_second_schedule_on_the_same_model_is_refused(mid):
    swap = BlockSwap(mid.model, mid.device, 1)
    try:
        with pytest.raises(ConfigError, match="another block schedule"):
            BlockSwap(mid.model, mid.device, 1)
    finally:
        swap.remove()
    assert "fused_block" not in vars(mid.model)


def test_each_sp_rank_swaps_its_own_blocks_and_the_clip_is_unchanged(tiny_ckpt):
    from ovi.runtime import WorkerGroup
    cfg = ovi.load_config(model_name="tiny", ckpt_dir=str(tiny_ckpt), sample_steps=2, sp_size=2)
    with WorkerGroup(cfg, world_size=2) as group:
        plain = group.generate(PROMPT, seed=4)
    with WorkerGroup(cfg.replace(blocks_on_device=0), world_size=2) as group:
        swapped = group.generate(PROMPT, seed=4)
    record = swapped.meta["memory_profile"]
    assert record["blocks_on_device"] == 0 and record["blocks_swapped"] == 3 and swapped.meta["sp"] == 2  # tiny: 3 blocks
    for key in ("video", "audio"):
        assert torch.equal(plain.latents[key], swapped.latents[key])
