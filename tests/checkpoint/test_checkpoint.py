"""Checkpoint loading by upstream key names, fp8 storage, inspection and clear failures."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from ovi.checkpoint.adapter import hf_t5_to_wan, wan_t5_to_hf
from ovi.checkpoint.loading import FP8, inspect_checkpoint, load_fusion_model
from ovi.cli import main
from ovi.codecs.text import make_t5
from ovi.errors import CheckpointError


def test_make_tiny_writes_upstream_layout_and_loads_strictly(tiny_ckpt):
    ovi_file = tiny_ckpt / "Ovi" / "model.safetensors"
    assert (tiny_ckpt / "Wan2.2-TI2V-5B" / "models_t5_umt5-xxl-enc-bf16.pth").is_file()
    keys = set(load_file(str(ovi_file)))
    assert "video_model.blocks.0.cross_attn.k_fusion.weight" in keys
    assert "audio_model.patch_embedding.2.w1.weight" in keys
    assert "video_model.blocks.0.modulation.modulation" in keys
    model = load_fusion_model(ovi_file, "tiny")
    assert not any(p.is_meta for p in model.parameters())
    assert inspect_checkpoint(ovi_file).ok


def test_make_tiny_is_deterministic(tmp_path, tiny_ckpt):
    from ovi.pipeline.random_checkpoint import make_tiny
    make_tiny(tmp_path)
    a, b = load_file(str(tmp_path / "Ovi/model.safetensors")), load_file(str(tiny_ckpt / "Ovi/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_truncated_file_fails_naming_the_problem(tmp_path, tiny_ckpt):
    data = (tiny_ckpt / "Ovi" / "model.safetensors").read_bytes()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_fusion_model(bad, "tiny")
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        inspect_checkpoint(bad)


def test_renamed_and_misshaped_keys_are_listed(tmp_path, tiny_ckpt):
    sd = load_file(str(tiny_ckpt / "Ovi" / "model.safetensors"))
    sd["video_model.blocks.0.self_attn.query.weight"] = sd.pop("video_model.blocks.0.self_attn.q.weight")
    sd["audio_model.head.head.bias"] = torch.zeros(3)
    path = tmp_path / "renamed.safetensors"
    save_file(sd, str(path))
    with pytest.raises(CheckpointError) as err:
        load_fusion_model(path, "tiny")
    msg = str(err.value)
    assert "missing keys: video_model.blocks.0.self_attn.q.weight" in msg
    assert "unexpected keys: video_model.blocks.0.self_attn.query.weight" in msg
    assert "audio_model.head.head.bias [3] (expected [20])" in msg


def test_foreign_checkpoint_says_what_it_looks_like(tmp_path, tiny_ckpt):
    t5 = tiny_ckpt / "Wan2.2-TI2V-5B" / "models_t5_umt5-xxl-enc-bf16.pth"
    report = inspect_checkpoint(t5)
    assert not report.ok and "umT5 text encoder" in report.summary()
    wan = {k.removeprefix("video_model."): v for k, v in load_file(str(tiny_ckpt / "Ovi/model.safetensors")).items()
           if k.startswith("video_model.")}
    save_file(wan, str(tmp_path / "wan.safetensors"))
    assert "single Wan backbone" in inspect_checkpoint(tmp_path / "wan.safetensors").summary()


def test_pt_container_formats_load_every_weight(tmp_path, tiny_ckpt):
    sd = load_file(str(tiny_ckpt / "Ovi" / "model.safetensors"))
    prefixed = {f"module.{k}": v for k, v in sd.items()}  # DDP / FSDP wrapper prefix
    for obj in (sd, {"module": sd}, {"app": {"model": sd}}, {"module": prefixed}):
        torch.save(obj, tmp_path / "m.pt")
        assert inspect_checkpoint(tmp_path / "m.pt", "tiny").ok
        loaded = load_fusion_model(tmp_path / "m.pt", "tiny").state_dict()
        assert loaded.keys() == sd.keys()
        for key, value in sd.items():
            assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value), key


@torch.no_grad()
def test_fp8_storage_stays_fp8_and_tracks_full_precision(tiny_ckpt):
    fp8_file = tiny_ckpt / "Ovi" / "model_fp8_e4m3fn.safetensors"
    on_disk = load_file(str(fp8_file))
    assert on_disk["video_model.blocks.0.self_attn.q.weight"].dtype == FP8
    assert on_disk["video_model.blocks.0.self_attn.q.bias"].dtype != FP8, "biases keep high precision"
    assert on_disk["video_model.blocks.0.self_attn.norm_q.weight"].dtype != FP8, "norms keep high precision"
    m8 = load_fusion_model(fp8_file, "tiny", storage=FP8)
    assert m8.video_model.blocks[0].self_attn.q.weight.dtype == FP8
    ref = load_fusion_model(tiny_ckpt / "Ovi" / "model.safetensors", "tiny")
    g = torch.Generator().manual_seed(0)
    v, a, c = torch.randn(48, 2, 4, 4, generator=g), torch.randn(9, 20, generator=g), torch.randn(5, 64, generator=g)
    out8 = m8([v], [a], torch.tensor([800]), [c], [c], 8, 9)
    out = ref([v], [a], torch.tensor([800]), [c], [c], 8, 9)
    assert out8[0][0].dtype == torch.bfloat16
    rel = (out8[0][0].float() - out[0][0]).norm() / out[0][0].norm()
    assert rel < 0.1


def test_t5_key_mapping_round_trips_and_loads_strictly():
    t5 = make_t5("tiny")
    wan = hf_t5_to_wan(t5.state_dict())
    assert "blocks.0.ffn.gate.0.weight" in wan and "token_embedding.weight" in wan
    hf = wan_t5_to_hf(wan)
    assert torch.equal(hf["encoder.block.1.layer.1.DenseReluDense.wi_0.weight"],
                       t5.state_dict()["encoder.block.1.layer.1.DenseReluDense.wi_0.weight"])
    fresh = make_t5("tiny")
    fresh.load_state_dict(hf, strict=True)
    with pytest.raises(KeyError):
        wan_t5_to_hf({"blocks.0.mystery.weight": torch.zeros(1)})


def test_cli_inspect_and_convert(tmp_path, tiny_ckpt, capsys):
    assert main(["checkpoint", "inspect", str(tiny_ckpt)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["checkpoint", "convert", str(tiny_ckpt / "Ovi/model.safetensors"), str(tmp_path / "b.safetensors"),
                 "--to", "bf16"]) == 0
    assert load_file(str(tmp_path / "b.safetensors"))["video_model.head.head.weight"].dtype == torch.bfloat16
    (tmp_path / "junk.safetensors").write_bytes(b"12345678junk")
    assert main(["checkpoint", "inspect", str(tmp_path / "junk.safetensors")]) == 2
    assert "not a readable safetensors" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["model.safetensors", "model_fp8_e4m3fn.safetensors", "model.pt"])
def test_read_rows_reads_only_the_requested_rows(tmp_path, tiny_ckpt, name):
    from ovi.checkpoint.loading import meta_fusion_model, read_rows, read_state_dict
    path = tiny_ckpt / "Ovi" / name
    if name.endswith(".pt"):  # the same weights in a .pt container with a wrapper prefix
        path = tmp_path / name
        torch.save({"module": {f"module.{k}": v for k, v in load_file(str(tiny_ckpt / "Ovi/model.safetensors")).items()}},
                   path)
    full = read_state_dict(path)
    meta = dict(meta_fusion_model(path, "tiny", FP8 if "fp8" in name else torch.float32).named_parameters())
    keys = ["audio_model.patch_embedding.2.w1.weight", "video_model.blocks.1.ffn.0.bias", "video_model.head.modulation"]
    rows = {keys[0]: (1, 3), keys[1]: (100, 28), keys[2]: (0, 1)}  # (first row, rows) inside each tensor
    targets = {k: (torch.empty((n, *meta[k].shape[1:]), dtype=meta[k].dtype), start) for k, (start, n) in rows.items()}
    reads = read_rows(path, targets)
    for key, (dest, start) in targets.items():
        assert torch.equal(dest.view(torch.uint8), full[key][start:start + dest.shape[0]].to(dest.dtype).view(torch.uint8))
    assert reads.tensors == 3
    assert reads.bytes_read == sum(d.numel() * full[k].element_size() for k, (d, _) in targets.items())
    assert reads.bytes_read < sum(full[k].numel() * full[k].element_size() for k in keys) / 4
    # fp8 storage: matrices fp8, norms and biases keep the file's precision (upstream's rule)
    if "fp8" in name:
        assert meta["audio_model.patch_embedding.2.w1.weight"].dtype == FP8
        assert meta["video_model.blocks.1.ffn.0.bias"].dtype != FP8
