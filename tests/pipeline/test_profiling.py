"""--profile DIR: torch.profiler traces with our ranges, in the format TensorBoard's profile plugin loads."""

import json

import pytest

from ovi.cli import main
from ovi.pipeline.profiling import trace_files


def _names(trace_path) -> set[str]:
    return {e.get("name", "") for e in json.loads(trace_path.read_text())["traceEvents"]}


def _load_with_tensorboard_plugin(run_dir):
    """What `tensorboard --logdir` does with a run folder: torch-tb-profiler's RunLoader parses every
    worker's trace into a RunProfile (its views: overview, operator, trace, memory, ...)."""
    pytest.importorskip("torch_tb_profiler", reason="dev extra: pip install -e .[dev]")
    from torch_tb_profiler import io
    from torch_tb_profiler.profiler.loader import RunLoader
    return RunLoader(run_dir.name, str(run_dir), io.Cache()).load()


def test_generate_profile_dir_writes_a_trace_tensorboard_loads(tmp_path, tiny_ckpt):
    trace_dir = tmp_path / "traces"
    assert main(["generate", "--set", "model_name=tiny", "--set", f"ckpt_dir={tiny_ckpt}", "--steps", "2", "--quiet",
                 "--out", str(tmp_path / "out"), "--profile", str(trace_dir)]) == 0
    [trace] = trace_files(trace_dir)
    names = _names(trace)
    for expected in ("denoise_step/0", "denoise_step/1", "fused_block/0", "text_encoder", "codec/video_decode",
                     "codec/audio_decode"):
        assert expected in names, expected
    assert any(n.startswith("attention/") for n in names)
    sidecar = json.loads(next((tmp_path / "out").glob("*.json")).read_text())
    assert sidecar["config"]["profile_dir"] == str(trace_dir)

    run = _load_with_tensorboard_plugin(trace_dir)
    [profile] = [p for (worker, _), p in run.profiles.items() if worker == "engine"]
    assert {v.name for v in profile.views} >= {"overall", "operator", "trace", "memory"}


def test_sp_bench_profile_dir_traces_every_rank_with_collectives(tmp_path, tiny_ckpt):
    from ovi.bench.sp import measure
    record = measure("tiny", 2, "optimized", 1, tiny_ckpt, profile=str(tmp_path / "traces"))
    run_dir = tmp_path / "traces" / "tiny_sp2_optimized"
    assert record["trace_dir"] == str(run_dir) and record["profiled_comm_seconds_per_step"] > 0
    assert len(record["peak_bytes_per_rank"]) == 2 and all(b > 0 for b in record["peak_bytes_per_rank"])
    traces = trace_files(run_dir)
    assert sorted(t.name.split(".")[0] for t in traces) == ["rank0", "rank1"]  # the warm-up's are gone
    for trace in traces:
        names = _names(trace)
        assert "collective/all_to_all" in names and any(n.startswith("gloo:") for n in names)
        assert "fused_block/0" in names
