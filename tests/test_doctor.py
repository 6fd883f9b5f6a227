"""`ovi doctor`: the machine facts and, for the real configs, the settings that fit with their expected
peak per GPU (the memory model `auto` uses) and relative speed."""

import json

import pytest

from ovi.cli import main


def _json(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_doctor_prints_the_machine_and_a_table_for_the_real_configs(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "This machine" in out and "torch " in out and "gloo" in out and "disk:" in out
    assert "| model | GPUs | setting" in out
    for model in ("720x720_5s", "960x960_5s", "960x960_10s"):
        for machine in ("1x24 GB", "4x24 GB", "8x80 GB"):
            assert f"| {model} | {machine} |" in out, (model, machine)
    assert "Estimates (ovi.parallel.memory), not measurements" in out


def test_doctor_json_rows_follow_the_memory_model(capsys):
    assert main(["doctor", "ovi_960x960_10s", "--gpus", "4", "--gpu-memory", "24", "--json"]) == 0
    records = _json(capsys)
    machine, rows = records[0], records[1:]
    assert machine["doctor"] == "machine" and machine["gloo"] is True
    assert {r["gpus"] for r in rows} == {4} and {r["model_name"] for r in rows} == {"960x960_10s"}
    by = {(r["sp"], r["strategy"], r["fsdp_cpu_offload"], r["cpu_offload"], r["fp8"]): r for r in rows
          if not r["shard_text_model"]}
    text = {(r["sp"], r["strategy"]): r for r in rows if r["shard_text_model"] and not (
        r["fsdp_cpu_offload"] or r["cpu_offload"] or r["fp8"])}
    # shard_text_model: the umT5's 11.4 GB split over the 4 GPUs instead of held whole by each
    assert text[(4, "FULL_SHARD")]["peak_gb"] < by[(4, "FULL_SHARD", False, False, False)]["peak_gb"] - 5
    assert (4, "NO_SHARD") not in text  # only a sharding strategy shards it
    none, full = by[(4, "NO_SHARD", False, False, False)], by[(4, "FULL_SHARD", False, False, False)]
    assert full["peak_gb"] < none["peak_gb"] and not none["fits"]
    assert by[(4, "SHARD_GRAD_OP", False, False, False)]["peak_gb"] > none["peak_gb"]
    assert all(r["fits"] == (r["peak_gb"] <= 0.9 * 24) for r in rows)
    assert any(r["fits"] for r in rows) and all(r["relative_speed"] > 0 for r in rows)
    # FSDP alone (sp 1 with 4 replicas) never runs NO_SHARD: replicas exist only to hold shards
    assert (1, "NO_SHARD", False, False, False) not in by and (1, "FULL_SHARD", False, False, False) in by


def test_doctor_judges_a_config_as_written(capsys):
    # The seed fork's 4x RTX 3090 example: SHARD_GRAD_OP gathers the whole 10 s model on every GPU.
    assert main(["doctor", "rtx3090_x4", "--gpus", "4", "--gpu-memory", "24"]) == 0
    assert "rtx3090_x4 as written: sp 4, shard-grad-op (does NOT fit)" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--gpus", "4"], ["--gpus", "0", "--gpu-memory", "24"]])
def test_doctor_rejects_half_a_machine(argv, capsys):
    assert main(["doctor", *argv]) == 2
    assert "--gpus" in capsys.readouterr().err
