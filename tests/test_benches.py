"""`ovi bench pipeline` and `ovi bench sp` emit the pinned JSON fields (the numbers are for
experiments/, not for asserting here)."""

import json

from ovi.cli import main


def _records(capsys):
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_bench_pipeline_fields(capsys, tiny_ckpt):
    assert main(["bench", "pipeline", "--json", "--runs", "1", "--set", "model_name=tiny", "--set", f"ckpt_dir={tiny_ckpt}",
                 "--set", "sample_steps=2"]) == 0
    (rec,) = _records(capsys)
    for key in ("bench", "config", "world_size", "stage_seconds", "non_model_share", "flops_per_step", "achieved_flops"):
        assert key in rec, key
    assert set(rec["stage_seconds"]) == {"text", "denoise", "decode", "mux"}
    assert rec["flops_per_step"] > 0 and 0 < rec["non_model_share"] < 1


def test_bench_sp_fields_and_scheme_ordering(capsys, tmp_path):
    assert main(["bench", "sp", "--json", "--arch", "tiny", "--sp", "2", "--schemes", "upstream,optimized",
                 "--steps", "1", "--ckpt-root", str(tmp_path), "--profile"]) == 0
    recs = {r["scheme"]: r for r in _records(capsys)}
    for rec in recs.values():
        for key in ("bench", "config", "world_size", "scheme", "sp", "collectives_per_step", "bytes_per_step",
                    "step_seconds"):
            assert key in rec, key
    assert recs["optimized"]["collectives_per_step"] <= 0.5 * recs["upstream"]["collectives_per_step"]
    assert recs["optimized"]["bytes_per_step"] <= recs["upstream"]["bytes_per_step"]
    assert all(r["profiled_comm_seconds_per_step"] > 0 for r in recs.values()), "torch.profiler saw the gloo ops"
