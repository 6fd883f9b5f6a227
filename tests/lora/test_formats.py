"""LoRA files in every key style map onto the same Ovi layers; what cannot be applied is refused with
a message naming the key, the shapes and the cause; what Ovi lacks is ignored and named."""

import json

import pytest
import torch
from safetensors.torch import save_file

from ovi.errors import InputError, LoRAError
from ovi.lora import LoRAManager
from ovi.model.configs import architecture
from ovi.model.fusion import FusionModel
from tests.lora.files import (
    load_tiny,
    random_factors,
    snapshot,
    write_diffusers,
    write_musubi,
    write_native,
    write_wan,
)

RANK, ALPHA = 4, 2.0  # scale 0.5: exact in binary, so folding it into A (diffusers) changes no bit


@pytest.fixture
def model(tiny_ckpt):
    return load_tiny(tiny_ckpt)


def _merged(model, path):
    manager = LoRAManager()
    manager.load_adapter("x", path)
    record = manager.apply_adapter(model, "x")
    weights = snapshot(model)
    manager.remove_all(model)
    return weights, record


def test_the_same_factors_in_every_key_style_give_identical_merged_weights(model, tmp_path):
    base = snapshot(model)
    factors = random_factors(model.video_model, RANK, seed=1)
    files = {"wan": write_wan(tmp_path / "wan.safetensors", factors, ALPHA),
             "wan_AB": write_wan(tmp_path / "wan_ab.safetensors", factors, ALPHA, spelling="A_B"),
             "musubi": write_musubi(tmp_path / "musubi.safetensors", factors, ALPHA),
             "diffusers": write_diffusers(tmp_path / "diffusers.safetensors", factors, ALPHA),
             "native": write_native(tmp_path / "native.safetensors", factors, ALPHA, model)}
    merged = {}
    for style, path in files.items():
        merged[style], record = _merged(model, path)
        assert record["format"] == style.split("_")[0]
        assert record["tensors_applied"] == len(factors) * (3 if style in ("wan", "wan_AB", "musubi") else 2)
        assert record["layers"] == len(factors) and record["ignored"] == [] and record["branch"] == "video"
    for style in files:
        for key in base:
            assert torch.equal(merged[style][key], merged["wan"][key]), (style, key)
    # ... and that common result is W0 + (alpha / r) B @ A on exactly the named video layers.
    for name, (a, b) in factors.items():
        key = f"video_model.{name}.weight"
        torch.testing.assert_close(merged["wan"][key], base[key] + (ALPHA / RANK) * b @ a, rtol=0, atol=1e-6)
    changed = {k for k in base if not torch.equal(base[k], merged["wan"][k])}
    assert changed == {f"video_model.{name}.weight" for name in factors}


def test_wan_full_deltas_reach_their_parameters(model, tmp_path):
    base = snapshot(model)
    g = torch.Generator().manual_seed(3)
    extra = {"diffusion_model.head.head.diff_b": torch.randn(192, generator=g),
             "diffusion_model.blocks.0.self_attn.norm_k.diff": torch.randn(128, generator=g),
             "diffusion_model.blocks.1.diff_m": torch.randn(1, 6, 128, generator=g),  # LightX2V modulation delta
             "diffusion_model.head.diff_m": torch.randn(1, 2, 128, generator=g)}
    path = write_wan(tmp_path / "deltas.safetensors", random_factors(model.video_model, 2, names=["head.head"]),
                     2.0, extra=extra)
    manager = LoRAManager()
    manager.load_adapter("d", path)
    manager.apply_adapter(model, "d", weight=0.5)
    targets = {"diffusion_model.head.head.diff_b": "video_model.head.head.bias",
               "diffusion_model.blocks.0.self_attn.norm_k.diff": "video_model.blocks.0.self_attn.norm_k.weight",
               "diffusion_model.blocks.1.diff_m": "video_model.blocks.1.modulation.modulation",
               "diffusion_model.head.diff_m": "video_model.head.modulation"}
    for key, param in targets.items():
        torch.testing.assert_close(model.state_dict()[param], base[param] + 0.5 * extra[key], rtol=0, atol=1e-6)
    manager.remove_all(model)
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())


def test_load_report_names_what_ovi_does_not_have(model, tmp_path):
    factors = random_factors(model.video_model, RANK, names=["blocks.0.self_attn.q"])
    g = torch.Generator().manual_seed(0)
    extra = {"diffusion_model.blocks.0.cross_attn.k_img.lora_down.weight": torch.randn(RANK, 128, generator=g),
             "diffusion_model.blocks.0.cross_attn.k_img.lora_up.weight": torch.randn(128, RANK, generator=g),
             "diffusion_model.img_emb.proj.1.diff_b": torch.randn(128, generator=g)}
    manager = LoRAManager()
    manager.load_adapter("i2v", write_wan(tmp_path / "i2v.safetensors", factors, ALPHA, extra=extra))
    record = manager.apply_adapter(model, "i2v")
    assert record["tensors_applied"] == 3 and record["layers"] == 1
    assert sorted(record["ignored"]) == sorted(extra)
    report = manager.adapters["i2v"].resolve(model).report
    assert "3 ignored (no such layer in Ovi)" in report.summary() and "k_img" in report.summary()


def test_branch_audio_and_both(model, tmp_path):
    base = snapshot(model)
    factors = random_factors(model.video_model, RANK, names=["blocks.1.self_attn.v", "blocks.2.ffn.2"])
    manager = LoRAManager()
    manager.load_adapter("w", write_wan(tmp_path / "w.safetensors", factors, ALPHA))
    for branch, prefixes in (("audio", ["audio_model"]), ("both", ["video_model", "audio_model"])):
        record = manager.apply_adapter(model, "w", branch=branch)
        assert record["branch"] == branch and record["layers"] == 2 * len(prefixes)
        changed = {k for k, v in model.state_dict().items() if not torch.equal(v, base[k])}
        assert changed == {f"{p}.{n}.weight" for p in prefixes for n in factors}
    manager.remove_all(model)


def test_native_lora_may_target_the_fusion_layers(model, tmp_path):
    names = ["blocks.0.cross_attn.k_fusion", "blocks.2.cross_attn.v_fusion"]
    video = random_factors(model.video_model, RANK, seed=4, names=names)
    audio = random_factors(model.audio_model, RANK, seed=5, names=names)
    factors = {**{f"video_model.{n}": ab for n, ab in video.items()},
               **{f"audio_model.{n}": ab for n, ab in audio.items()}}
    from ovi.lora import save_native_lora
    path = save_native_lora(tmp_path / "fusion.safetensors", factors, model, alpha=ALPHA)
    manager = LoRAManager()
    manager.load_adapter("f", path)
    record = manager.apply_adapter(model, "f", merge=False)
    assert record["branch"] == "both" and record["layers"] == 4 and not record["merged"]
    assert type(model.audio_model.blocks[2].cross_attn.v_fusion).__module__.startswith("peft")
    with pytest.raises(LoRAError, match="name Ovi's layers in full"):
        manager.apply_adapter(model, "f", branch="video")


def _lora(tmp_path, name, tensors, metadata=None):
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("case, message", [
    ("no_match", r"no tensor matches a layer of this model.*img_emb"),
    ("wide", r"lora_down.weight has shape \[4, 5120\] but video_model.blocks.0.self_attn.q .* needs \[4, 128\]; "
             r"this LoRA was made for a different base model \(a Wan 14B model, width 5120\)"),
    ("blocks", r"names block 29 but the video_model branch has 3 blocks; .*different base model"),
    ("musubi_blocks", r"names block 30 but the video_model branch has 3 blocks"),
    ("pair", r"has no matching lora_up/lora_B tensor"),
    ("rank_pair", r"rank mismatch in blocks.0.self_attn.q"),
    ("dora", r"DoRA / LoHa / LoKr .* not supported.*dora_scale"),
    ("not_lora", r"not a LoRA in any supported key style"),
    ("missing", r"file not found"),
])
def test_bad_loras_are_refused_naming_the_problem(model, tmp_path, case, message):
    r = torch.randn
    q = "diffusion_model.blocks.0.self_attn.q"
    tensors = {
        "no_match": {"diffusion_model.img_emb.proj.1.lora_down.weight": r(4, 8),
                     "diffusion_model.img_emb.proj.1.lora_up.weight": r(8, 4)},
        "wide": {f"{q}.lora_down.weight": r(4, 5120), f"{q}.lora_up.weight": r(5120, 4)},
        "blocks": {"diffusion_model.blocks.29.ffn.0.lora_down.weight": r(4, 128),
                   "diffusion_model.blocks.29.ffn.0.lora_up.weight": r(256, 4)},
        "musubi_blocks": {"lora_unet_blocks_30_ffn_0.lora_down.weight": r(4, 128),
                          "lora_unet_blocks_30_ffn_0.lora_up.weight": r(256, 4)},
        "pair": {f"{q}.lora_down.weight": r(4, 128)},
        "rank_pair": {f"{q}.lora_down.weight": r(4, 128), f"{q}.lora_up.weight": r(128, 8)},
        "dora": {f"{q}.lora_down.weight": r(4, 128), f"{q}.lora_up.weight": r(128, 4), f"{q}.dora_scale": r(1, 128)},
        "not_lora": {"encoder.layer.0.weight": r(4, 4)},
    }
    path = tmp_path / "nothing.safetensors" if case == "missing" else _lora(tmp_path, case, tensors[case])
    manager = LoRAManager()
    with pytest.raises(LoRAError, match=message) as e:
        manager.load_adapter(case, path)
        manager.apply_adapter(model, case)
    assert isinstance(e.value, InputError)  # the CLI exits 2, a queued job fails alone


def test_a_rank_that_is_not_the_files_and_a_different_base_model_are_refused(model, tmp_path):
    factors = random_factors(model.video_model, 8, names=["blocks.0.self_attn.q"])
    manager = LoRAManager()
    manager.load_adapter("r8", write_wan(tmp_path / "r8.safetensors", factors, 8.0))
    with pytest.raises(LoRAError, match=r"the file's rank is 8 but rank=4 was asked"):
        manager.apply_adapter(model, "r8", rank=4)
    assert manager.apply_adapter(model, "r8", rank=8)["ranks"] == [8]

    with torch.device("meta"):
        mid = FusionModel(*architecture("mid"))
    path = write_native(tmp_path / "mid.safetensors", random_factors(mid.video_model, 4, names=["head.head"]),
                        4.0, mid)
    header = json.loads(manager.load_adapter("mid", path).metadata["ovi_lora"])
    assert header["base_model"] == "mid" and header["base_signature"]["video"]["dim"] == 512
    with pytest.raises(LoRAError, match=r"made for base model 'mid' .* this model is 'tiny'"):
        manager.apply_adapter(model, "mid")
    # a refused adapter changes nothing: the one applied before is still the whole set
    assert [a.name for a in manager.active_adapters(model)] == ["r8"]
