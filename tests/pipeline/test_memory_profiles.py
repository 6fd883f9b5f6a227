"""Memory profiles (config memory_profile + knobs; ovi.pipeline.memory_profiles) and `ovi bench memory`."""

import json

import pytest
import torch

import ovi
from ovi.cli import main
from ovi.config import MEMORY_PROFILES
from ovi.errors import ConfigError
from ovi.pipeline.memory_profiles import estimate_profile, resolve_memory_settings, settings_for

CPU = torch.device("cpu")


def test_each_profile_is_a_named_set_of_knobs_and_the_configs_own_keys_win():
    cfg = ovi.load_config(model_name="mid", ckpt_dir="unused", memory_profile="low")
    s = resolve_memory_settings(cfg, CPU, torch.float32)
    assert (s.chosen, s.blocks_on_device, s.quantize, s.vae_tiling, s.text_encoder_device) == ("low", 2, "int8", True, "cpu")
    s = resolve_memory_settings(cfg.replace(quantize="none", blocks_on_device=3), CPU, torch.float32)
    assert (s.blocks_on_device, s.quantize) == (3, "none")
    assert settings_for(cfg.replace(memory_profile="minimal"), "minimal").blocks_on_device == 0
    assert settings_for(cfg, "balanced").blocks_on_device is None  # all blocks: no swap
    assert set(MEMORY_PROFILES) == {"none", "balanced", "low", "minimal"}


def test_unknown_profile_and_bad_knobs_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="memory_profile 'lowest'.*did you mean 'low'"):
        ovi.load_config(None, memory_profile="lowest")
    with pytest.raises(ConfigError, match="vae_tiling"):
        ovi.load_config(None, vae_tiling="yes")
    with pytest.raises(ConfigError, match="quantize.*FSDP"):
        ovi.load_config(None, quantize="int8", use_fsdp=True)
    with pytest.raises(ConfigError, match="cpu_offload"):
        resolve_memory_settings(ovi.load_config(None, memory_profile="low", cpu_offload=True), CPU, torch.float32)


def test_auto_picks_the_least_saving_profile_that_fits_the_budget_and_says_why():
    cfg = ovi.load_config(model_name="mid", ckpt_dir="unused", memory_profile="auto")
    peaks = {p: estimate_profile(cfg, settings_for(cfg, p), torch.bfloat16)["peak_bytes"] for p in MEMORY_PROFILES}
    assert peaks["none"] > peaks["balanced"] > peaks["low"] > peaks["minimal"]
    for name in ("none", "balanced", "low", "minimal"):
        s = resolve_memory_settings(cfg, CPU, torch.bfloat16, budget_bytes=int(peaks[name] / 0.9) + 1)
        assert s.chosen == name and s.profile == "auto" and "fits 90%" in s.reason
    with pytest.raises(ConfigError, match="even the minimal profile"):
        resolve_memory_settings(cfg, CPU, torch.bfloat16, budget_bytes=int(peaks["minimal"] / 2))
    # on a CPU with no budget given there is no separate device memory to save
    assert resolve_memory_settings(cfg, CPU, torch.float32).chosen == "none"


def test_the_sidecar_records_the_profile_that_ran():
    clip = ovi.Engine.from_config(ovi.load_config(None, sample_steps=1, memory_profile="low")).generate(
        "A red square moves right. <AUDCAP>a high tone<ENDAUDCAP>", seed=0)
    record = clip.meta["memory_profile"]
    assert record["profile"] == "low" and record["quantize"] == "int8" and record["blocks_on_device"] == 1
    assert record["text_encoder_device"] == "cpu" and record["vae_tiling"] is True
    assert record["vae_tiling_applied"] is False and "ShapesVideoCodec" in record["vae_tiling_note"]


def test_bench_memory_measures_each_profile_within_25_percent_of_the_model(capsys, tmp_path):
    assert main(["bench", "memory", "--json", "--arch", "tiny", "--steps", "1", "--ckpt-dir", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["profile"] for r in rows] == ["none", "balanced", "low", "minimal", "fsdp_offload"]
    for r in rows:
        for key in ("peak_device_bytes", "peak_host_bytes", "bytes_moved_per_step", "max_latent_diff", "seconds",
                    "estimated_peak_bytes"):
            assert r[key] is not None, key
        assert 0.75 <= r["peak_device_bytes"] / r["estimated_peak_bytes"] <= 1.25, r
    by = {r["profile"]: r for r in rows}
    assert by["none"]["max_latent_diff"] == 0 and by["none"]["bytes_moved_per_step"] == 0
    assert 0 < by["low"]["bytes_moved_per_step"] < by["minimal"]["bytes_moved_per_step"]
    for name in ("low", "minimal"):  # the swap's own count agrees with the model's within 2% (int8 scales)
        assert by[name]["bytes_moved_per_step"] == pytest.approx(by[name]["estimated_bytes_moved_per_step"], rel=0.02)
    assert by["minimal"]["peak_device_bytes"] < by["none"]["peak_device_bytes"]
    # FSDP offload on one rank: counted gathers agree with the model, it moves the whole DiT every forward
    # (more than minimal's int8 blocks), holds no DiT shard on the device and computes what plain does
    fsdp = by["fsdp_offload"]
    assert fsdp["bytes_moved_per_step"] == pytest.approx(fsdp["estimated_bytes_moved_per_step"], rel=0.02)
    assert fsdp["bytes_moved_per_step"] > by["minimal"]["bytes_moved_per_step"]
    assert fsdp["block_gathers"] > 0 and fsdp["shard_bytes_on_host"] > 0 and fsdp["max_latent_diff"] <= 1e-4
    assert fsdp["peak_device_bytes"] < by["none"]["peak_device_bytes"]


def test_doctor_costs_fsdp_offload_on_one_gpu_beside_the_profiles(capsys):
    assert main(["doctor", "ovi_720x720_5s", "--gpus", "1", "--gpu-memory", "16", "--host-memory", "48",
                 "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    profiles = {r["profile"]: r for r in rows if r.get("doctor") == "memory_profile"}
    fsdp = {r["profile"]: r for r in rows if r.get("doctor") == "fsdp_offload"}
    assert set(fsdp) == {"fsdp_offload", "fsdp_offload+shard_text"}
    cfg = ovi.load_config("ovi_720x720_5s")
    from ovi.parallel.memory import param_layout
    dit = param_layout(cfg.model, torch.bfloat16, torch.bfloat16).total
    for r in fsdp.values():
        # both passes copy the whole DiT (less the block SLG skips): about 2x the model per step
        assert 1.9 * dit < r["bytes_moved_per_step"] < 2 * dit
        assert r["bytes_moved_per_step"] > profiles["minimal"]["bytes_moved_per_step"]
        assert r["transfer_seconds"] == pytest.approx(r["bytes_moved_per_step"] / 25e9, rel=0.01) or \
            r["bytes_moved_per_clip"] > 0  # PCIe card figures (25 GB/s pinned); umT5 once per clip on top
        assert r["step_seconds"] == max(r["compute_seconds"], r["transfer_seconds"])
        assert r["host_gb"] * 1e9 >= dit
    # umT5 on the device is what keeps plain FSDP offload off a 16 GB card; sharding it too fits
    assert not fsdp["fsdp_offload"]["fits"] and fsdp["fsdp_offload+shard_text"]["fits"]
    assert fsdp["fsdp_offload+shard_text"]["peak_gb"] < fsdp["fsdp_offload"]["peak_gb"]
    assert main(["doctor", "ovi_720x720_5s", "--gpus", "1", "--gpu-memory", "16"]) == 0
    out = capsys.readouterr().out
    assert "| 720x720_5s | fsdp_offload |" in out and "full-shard, fsdp-offload" in out
    assert f"(copies {2 * dit / 1e9:.1f} GB/step)" in out  # the settings table shows what fsdp offload moves


def test_doctor_names_a_profile_for_720p_5s_on_16_gb_and_960p_10s_on_24_gb(capsys):
    assert main(["doctor", "ovi_720x720_5s", "--gpus", "1", "--gpu-memory", "16", "--host-memory", "32"]) == 0
    out = capsys.readouterr().out
    assert "ovi_720x720_5s: memory_profile: low fits" in out and "| 720x720_5s | none |" in out
    assert main(["doctor", "ovi_960x960_10s", "--gpus", "1", "--gpu-memory", "24", "--host-memory", "32",
                 "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    profiles = {r["profile"]: r for r in rows if r.get("doctor") == "memory_profile"}
    assert profiles["low"]["fits"] and not profiles["none"]["fits"] and not profiles["balanced"]["fits"]
    assert profiles["low"]["bytes_moved_per_step"] > 0 and profiles["none"]["bytes_moved_per_step"] == 0
    assert 0 < profiles["low"]["host_gb"] < 0.9 * 32
    # a host too small for the swapped blocks and umT5 rules the profile out
    assert main(["doctor", "ovi_960x960_10s", "--gpus", "1", "--gpu-memory", "24", "--host-memory", "16",
                 "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert not any(r["fits"] for r in rows if r.get("doctor") == "memory_profile")


def test_cli_bad_profile_exits_2_naming_the_fix(capsys):
    assert main(["generate", "--memory-profile", "tiny-gpu", "--quiet"]) == 2
    assert "memory_profile 'tiny-gpu': must be one of none, balanced, low, minimal, auto" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="FSDP"):
        resolve_memory_settings(ovi.load_config(None, memory_profile="low", use_fsdp=True), CPU, torch.float32)


def test_a_named_profile_that_cannot_fit_the_described_device_is_refused_naming_one_that_does():
    cfg = ovi.load_config(model_name="mid", ckpt_dir="unused", memory_profile="balanced")
    minimal = estimate_profile(cfg, settings_for(cfg, "minimal"), torch.bfloat16)["peak_bytes"]
    with pytest.raises(ConfigError, match="memory_profile balanced needs.*use memory_profile: minimal"):
        resolve_memory_settings(cfg, CPU, torch.bfloat16, budget_bytes=int(minimal / 0.9) + 1)
    assert resolve_memory_settings(cfg.replace(memory_profile="minimal"), CPU, torch.bfloat16,
                                   budget_bytes=int(minimal / 0.9) + 1).chosen == "minimal"


def test_upstream_qint8_runs_as_int8_and_the_sidecar_says_where_it_came_from():
    clip = ovi.Engine.from_config(ovi.load_config(None, sample_steps=1, qint8=True)).generate(
        "A red square moves right. <AUDCAP>a high tone<ENDAUDCAP>", seed=0)
    record = clip.meta["memory_profile"]
    assert record["quantize"] == "int8" and record["quantized_layers"] > 0  # the int8 weights really loaded
    assert "upstream's qint8: true" in record["reason"]


@pytest.fixture
def loading_fails(monkeypatch):
    """Any model load raises: a refusal that comes from this fixture came after loading began."""
    def load(*args, **kwargs):
        raise AssertionError("the model started loading before the memory settings were checked")
    monkeypatch.setattr("ovi.pipeline.engine.load_components", load)


@pytest.mark.parametrize("overrides, message", [
    ({"quantize": "fp8"}, "quantize: fp8 cannot run here.*quantize: int8.*compute capability >= 8.9"),
    ({"memory_profile": "balanced", "device_memory_gb": 0.01}, "memory_profile balanced needs an estimated"),
    ({"memory_profile": "auto", "device_memory_gb": 0.01}, "even the minimal profile"),
], ids=["fp8_without_fp8", "profile_too_big", "auto_nothing_fits"])
def test_memory_refusals_come_before_the_model_loads(loading_fails, overrides, message):
    with pytest.raises(ConfigError, match=message):
        ovi.Engine.from_config(ovi.load_config(None, **overrides))


def test_a_worker_group_refuses_fp8_without_fp8_before_spawning_ranks():
    from ovi.runtime import WorkerGroup
    with pytest.raises(ConfigError, match="quantize: fp8 cannot run here"):
        WorkerGroup(ovi.load_config(None, quantize="fp8", sp_size=2), world_size=2)  # no rank ever starts


@pytest.mark.parametrize("args, message", [
    (["--set", "quantize=fp8"], "compute capability >= 8.9"),
    (["--memory-profile", "low", "--set", "device_memory_gb=0.01"], "memory_profile low needs an estimated"),
    (["--memory-profile", "lowest"], "memory_profile 'lowest'.*did you mean 'low'"),
], ids=["fp8", "cannot_fit", "unknown"])
def test_cli_memory_refusals_exit_2_with_one_line_naming_the_fix(capsys, tmp_path, args, message):
    import re
    assert main(["generate", *args, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert not list(tmp_path.glob("*.mp4"))


def test_rest_refuses_a_config_whose_memory_settings_cannot_run_here_with_422(queue, tmp_path):
    from fastapi.testclient import TestClient

    from ovi.server.rest import create_app
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "fp8.yaml").write_text("model_name: tiny\nsample_steps: 2\nquantize: fp8\n")
    with TestClient(create_app(queue)) as client:
        r = client.post("/api/generate", json={"prompt": "a cat", "config": "fp8"})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "config"] and "quantize: int8" in r.text
        r = client.post("/api/generate", json={"prompt": "a cat", "memory_profile": "low"})
        assert r.status_code == 422 and "engine setting" in r.text  # a request cannot pick its own profile
    assert queue.list() == []


def test_the_gpu_memory_check_runs_on_a_cpu_and_skips_points_once_its_budget_is_spent(tmp_path):
    """experiments/gpu_check_memory.py (the lent GPU's memory section) in its CPU smoke mode: every profile
    runs, the swap's bytes agree with the model; with its budget spent it writes skipped lines instead."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parents[2] / "experiments" / "gpu_check_memory.py"
    out = tmp_path / "memory.jsonl"
    # No budget first (nothing here depends on how fast the machine is), then one spent before any point starts.
    for budget in ([], ["--budget-seconds", "0"]):
        subprocess.run([sys.executable, str(script), str(out), "--device", "cpu", "--arch", "tiny", "--steps", "1",
                        *budget], check=True, capture_output=True, timeout=300)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    ran, skipped = rows[:3], rows[3:]
    assert [r["profile"] for r in ran] == ["balanced", "low", "minimal"] and all(r["status"] == "ok" for r in ran)
    for r in ran:
        assert r["seconds_per_step"] > 0 and r["host_rss_peak_bytes"] > 0 and r["estimated_denoise_bytes"] > 0
        assert r["bytes_moved_per_step"] == pytest.approx(r["estimated_bytes_moved_per_step"], rel=0.02)
    assert ran[0]["bytes_moved_per_step"] == 0 < ran[1]["bytes_moved_per_step"] < ran[2]["bytes_moved_per_step"]
    assert [r["status"] for r in skipped] == ["skipped: time budget spent"] * 3
