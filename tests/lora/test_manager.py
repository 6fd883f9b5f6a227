"""Merged and unmerged LoRAs compute the same thing; mixing is the weighted sum of deltas; switching and
removal give back every base weight bit for bit; fp8 storage runs the low-rank update unmerged."""

import pytest
import torch

from ovi.errors import LoRAError
from ovi.lora import LoRAManager, get_lora_config
from ovi.model.layers import Linear
from tests.lora.files import forward, load_tiny, random_factors, snapshot, write_musubi, write_wan


@pytest.fixture
def model(tiny_ckpt):
    return load_tiny(tiny_ckpt)


# name -> (rank, seed, alpha, file style) of the two test adapters
ADAPTERS = {"a": (4, 1, 4.0, write_wan), "b": (8, 2, 4.0, write_musubi)}


def _factors(model, name):
    rank, seed, alpha, _ = ADAPTERS[name]
    return random_factors(model.video_model, rank, seed=seed), alpha


@pytest.fixture
def manager(model, tmp_path):
    m = LoRAManager()
    for name, (_, _, _, write) in ADAPTERS.items():
        m.load_adapter(name, write(tmp_path / f"{name}.safetensors", *_factors(model, name)))
    return m


def _deltas(model, name):
    """{param: fp32 delta} of an adapter from the factors written to its file, by the formula
    (alpha / r) B @ A (a Wan-style file targets the video backbone's Linears)."""
    factors, alpha = _factors(model, name)
    rank = ADAPTERS[name][0]
    return {f"video_model.{m}.weight": alpha / rank * up @ down for m, (down, up) in factors.items()}


def test_merged_output_equals_unmerged_output(model, manager):
    base = forward(model)
    manager.apply_adapter(model, "a", merge=True)
    merged = forward(model)
    manager.apply_adapter(model, "a", merge=False)
    assert isinstance(model.video_model.blocks[0].self_attn.q, torch.nn.Module)
    assert type(model.video_model.blocks[0].self_attn.q).__module__.startswith("peft")  # a peft LoRA layer
    unmerged = forward(model)
    for m, u, b in zip(merged, unmerged, base):
        torch.testing.assert_close(m, u, rtol=0, atol=1e-5)
        assert (m - b).abs().max() > 1e-3  # the LoRA changes both outputs (audio through the fusion layers)


def test_unmerged_update_is_one_fused_addmm_equal_to_peft_formula(model, manager):
    """The unmerged layer adds scaling * B(A x) to the base output with FusedLowRankAdd (one addmm), the
    same sum as peft's vanilla `result + B(A(x)) * scaling` with two adapters mixed, and every FLOP of it
    is counted (ovi bench lora's FLOP ratio)."""
    from ovi.lora.manager import FusedLowRankAdd
    manager.apply_mixed_adapters(model, {"a": 0.7, "b": 0.3}, merge=False)
    layer = model.video_model.blocks[0].self_attn.q
    assert len(layer.active_adapters) == 2
    assert all(isinstance(layer.lora_variant[n], FusedLowRankAdd) for n in layer.active_adapters)
    x = torch.randn(2, 5, layer.in_features)
    expected = layer.get_base_layer()(x)
    for n in layer.active_adapters:
        expected = expected + layer.lora_B[n](layer.lora_A[n](x)) * layer.scaling[n]
    assert (expected - layer.get_base_layer()(x)).abs().max() > 1e-3  # the adapters change the output
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-5)
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        layer(x)
    low_rank = sum(2 * 10 * layer.in_features * r + 2 * 10 * r * layer.out_features
                   for r in (layer.lora_A[n].out_features for n in layer.active_adapters))
    assert counter.get_total_flops() == 2 * 10 * layer.in_features * layer.out_features + low_rank  # all counted


def test_apply_remove_apply_another_remove_restores_every_weight_bit_exactly(tiny_ckpt, model, manager):
    pristine = snapshot(load_tiny(tiny_ckpt))
    classes = {name: type(m) for name, m in model.named_modules()}
    for merge in (True, False):
        manager.apply_adapter(model, "a", merge=merge)
        manager.remove_adapter(model, "a")
        manager.apply_adapter(model, "b", merge=merge, weight=0.8)
        manager.apply_adapter(model, "a", merge=not merge, weight=-0.5)  # both at once, one merged one not
        manager.remove_adapter(model, "b")
        manager.remove_adapter(model, "a")
        state = model.state_dict()
        assert list(state) == list(pristine)  # same keys, same order: no adapter left behind
        for key, value in pristine.items():
            assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
        assert {name: type(m) for name, m in model.named_modules()} == classes
        assert not hasattr(model, "peft_config")
    with pytest.raises(LoRAError, match="adapter 'a' is not applied"):
        manager.remove_adapter(model, "a")


@pytest.mark.parametrize("merge", [True, False])
def test_mixing_is_the_weighted_sum_of_deltas_and_weight_zero_is_the_base(model, manager, merge):
    base_weights, base_out = snapshot(model), forward(model)
    da, db = _deltas(model, "a"), _deltas(model, "b")
    records = manager.apply_mixed_adapters(model, {"a": 0.7, "b": 0.3}, merge=merge)
    assert [(r["name"], r["weight"], r["merged"]) for r in records] == [("a", 0.7, merge), ("b", 0.3, merge)]
    expected = dict(base_weights)
    for param in set(da) | set(db):
        expected[param] = base_weights[param] + 0.7 * da.get(param, 0) + 0.3 * db.get(param, 0)
    if merge:
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-6)
    else:  # unmerged: compare the output with a model holding exactly those weights
        mixed = forward(model)
        manager.remove_all(model)
        model.load_state_dict(expected)
        for got, want in zip(mixed, forward(model)):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        model.load_state_dict(base_weights)
    manager.apply_mixed_adapters(model, {"a": 0.0, "b": 0.0}, merge=merge)
    if merge:
        assert all(torch.equal(v, base_weights[k]) for k, v in model.state_dict().items())
    for got, want in zip(forward(model), base_out):
        assert torch.equal(got, want)


def test_switching_recomputes_only_what_changes(model, manager):
    manager.apply_mixed_adapters(model, {"a": 1.0})
    q = model.video_model.blocks[0].self_attn.q.weight
    storage = q.data_ptr()
    manager.apply_mixed_adapters(model, {"b": 1.0})   # switch: same tensors updated in place
    assert q.data_ptr() == storage
    state = manager._states[model]
    assert set(state.merged) == set(state.pristine) == set(_deltas(model, "b"))


def test_activate_keeps_only_a_few_idle_adapters_loaded(model, tmp_path):
    manager = LoRAManager(keep_loaded=1)
    paths = [write_wan(tmp_path / f"l{i}.safetensors", random_factors(model.video_model, 2, seed=i, names=["head.head"]),
                       2.0) for i in range(3)]
    for path in paths:
        manager.activate(model, [{"path": str(path)}])
    assert sorted(manager.adapters) == ["l1", "l2"]  # l2 active, l1 the one idle adapter kept
    with pytest.raises(LoRAError, match="applied to a model"):
        manager.unload_adapter("l2")


def test_presets_and_the_seed_calls(model, manager, tmp_path):
    assert get_lora_config("lightning") == {"rank": 4, "alpha": 4.0, "merge": True}
    assert get_lora_config("balanced") == {"rank": 8, "alpha": 8.0, "merge": True}
    assert get_lora_config("quality") == {"rank": 16, "alpha": 16.0, "merge": False}
    with pytest.raises(LoRAError, match="unknown LoRA preset 'fast'"):
        get_lora_config("fast")
    record = manager.apply_adapter(model, "a", **get_lora_config("lightning"))  # rank-4 file
    assert record["merged"] and record["ranks"] == [4]
    with pytest.raises(LoRAError, match="rank is 8 but rank=16"):
        manager.apply_adapter(model, "b", **get_lora_config("quality"))
    manager.load_adapter("q", write_wan(tmp_path / "q.safetensors", random_factors(model.video_model, 16), 1.0))
    record = manager.apply_adapter(model, "q", **get_lora_config("quality"))
    assert not record["merged"] and isinstance(model.video_model.blocks[0].self_attn.q.base_layer, Linear)
    # alpha from the preset replaces the file's: scale 16 / 16 instead of 1 / 16
    layer = model.video_model.blocks[0].self_attn.q
    assert [layer.scaling[n] for n in layer.active_adapters] == [1.0]


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(torch.uint8) if t.dtype == torch.float8_e4m3fn else t


def test_fp8_weights_run_the_low_rank_update_unmerged(tiny_ckpt, manager, tmp_path):
    fp8 = load_tiny(tiny_ckpt, fp8=True)
    pristine = snapshot(fp8)
    record = manager.apply_adapter(fp8, "a", merge=True)
    assert record["merge_requested"] and not record["merged"] and "fp8" in record["note"]
    wrapped = {k.replace(".base_layer", ""): v for k, v in fp8.state_dict().items() if "lora_" not in k}
    assert wrapped.keys() == pristine.keys()
    assert all(torch.equal(_bits(v), _bits(pristine[k])) for k, v in wrapped.items())  # fp8 weights untouched
    got = forward(fp8)
    # Reference: the same fp8 values upcast to bf16 with the delta merged in bf16 (what the LoRA means).
    ref = load_tiny(tiny_ckpt, fp8=True)
    base = forward(ref)
    for name, delta in _deltas(ref, "a").items():
        p = ref.get_parameter(name)
        p.data = (p.data.float() + delta).to(torch.bfloat16)
    want = forward(ref)
    # bf16 rounding only: 2% of the (video) LoRA's effect; the audio branch, moved only through the fusion
    # layers, moves so little that bf16 noise is a larger share of it.
    for g, w, b, tolerance in zip(got, want, base, (0.05, 0.6)):
        assert (g - w).norm() < tolerance * (w - b).norm()
    # A full delta on an fp8 matrix is merged into a bf16 copy of that one weight; removal puts the fp8 back.
    manager.load_adapter("head", write_wan(tmp_path / "head.safetensors", {}, 1.0,
                                           extra={"diffusion_model.head.head.diff": torch.full((192, 128), 0.01)}))
    manager.apply_adapter(fp8, "head")
    head = fp8.video_model.head.head.weight
    assert head.dtype == torch.bfloat16
    assert torch.equal(head, (pristine["video_model.head.head.weight"].float() + 0.01).to(torch.bfloat16))
    manager.remove_all(fp8)
    state = fp8.state_dict()
    assert list(state) == list(pristine)
    assert all(v.dtype == pristine[k].dtype and torch.equal(_bits(v), _bits(pristine[k])) for k, v in state.items())
