"""Sweeps: a grid appended as JSON lines, a failing point recorded, a rerun resumes."""

import json

import pytest

from ovi.bench import sweep
from ovi.errors import InputError, NotAvailableError


def test_sweep_appends_records_failures_and_resumes(tmp_path, monkeypatch):
    calls = []

    def fake_point(point, *, ckpt_root, profile):
        calls.append(point)
        if point["sp"] == 2 and point["fsdp"] != "off":
            raise NotAvailableError("use_fsdp: not available until FSDP lands")
        if point["sp"] == 4 and not (tmp_path / "fixed").exists():
            raise RuntimeError("rank 1 died")
        return {"bench": "fake", "step_seconds": 0.1 * point["sp"]}

    monkeypatch.setitem(sweep.POINT_RUNNERS, "fake", fake_point)
    spec_file = tmp_path / "s.yaml"
    out = tmp_path / "out.jsonl"
    spec_file.write_text(f"bench: fake\nout: {out}\nfixed: {{steps: 2}}\n"
                         "grid: {sp: [1, 2, 4], fsdp: ['off', FULL_SHARD]}\n")
    spec = sweep.load_sweep(spec_file)
    first = list(sweep.run_sweep(spec, ckpt_root=tmp_path, log=lambda _: None))
    assert len(first) == 6 and len(out.read_text().splitlines()) == 6
    failed = [r for r in first if r["status"] == "failed"]
    assert {(r["point"]["sp"], r["point"]["fsdp"]) for r in failed} == {(2, "FULL_SHARD"), (4, "off"), (4, "FULL_SHARD")}
    assert all(r["point"]["steps"] == 2 for r in first)
    assert next(r for r in failed if r["point"]["sp"] == 2)["not_available"] is True
    assert "rank 1 died" in next(r for r in failed if r["point"]["sp"] == 4)["error"]

    (tmp_path / "fixed").touch()
    calls.clear()
    list(sweep.run_sweep(spec, ckpt_root=tmp_path, log=lambda _: None))  # the rerun: only the failed points
    assert {(p["sp"], p["fsdp"]) for p in calls} == {(2, "FULL_SHARD"), (4, "off"), (4, "FULL_SHARD")}  # ok ones skipped
    assert len(out.read_text().splitlines()) == 9
    latest = {(r["point"]["sp"], r["point"]["fsdp"]): r for r in sweep.latest_records(out)}
    assert latest[(4, "off")]["status"] == "ok" and latest[(2, "FULL_SHARD")]["status"] == "failed"
    assert json.loads(out.read_text().splitlines()[0])["sweep"] == "s"


def test_sweep_file_errors_name_the_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("bench: sp\nout: x.jsonl\ngrid: {sp: []}\n")
    with pytest.raises(InputError, match="non-empty list"):
        sweep.load_sweep(bad)
    bad.write_text("bench: nope\nout: x.jsonl\ngrid: {sp: [1]}\n")
    with pytest.raises(InputError, match="cannot be swept"):
        sweep.load_sweep(bad)


def test_the_lora_axis_runs_the_point_with_a_random_lora(tmp_path):
    record = sweep.sp_point({"arch": "tiny", "sp": 1, "steps": 1, "lora": "unmerged"}, ckpt_root=tmp_path, profile=None)
    assert record["loras"] == [{"name": "tiny_lora_r16", "merged": False}] and record["step_seconds"] > 0
    with pytest.raises(InputError, match="lora 'fused': use one of base, merged, unmerged"):
        sweep.sp_point({"arch": "tiny", "sp": 1, "lora": "fused"}, ckpt_root=tmp_path, profile=None)
