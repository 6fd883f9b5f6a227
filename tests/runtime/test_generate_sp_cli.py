"""`ovi generate --sp N` on the CPU: a WorkerGroup of gloo ranks (and the same command under
torchrun, on one node or as two node agents) writes the clip a single process writes, and leaves no
process behind."""

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ovi.cli import main
from tests.launcher import free_port, marked_processes, marker, run, spawned_children

PROMPT = "A red ball bounces on a wooden floor. <AUDCAP>Thuds<ENDAUDCAP>"


def _args(tiny_ckpt, out):
    return ["generate", "--prompt", PROMPT, "--set", "model_name=tiny", "--set", f"ckpt_dir={tiny_ckpt}", "--steps", "2", "--seed", "5",
            "--out", str(out), "--save-latents", "--quiet"]


def _outputs(out: Path):
    latents = list(out.glob("*.latents.safetensors"))
    assert len(latents) == 1 and len(list(out.glob("*.mp4"))) == 1, sorted(p.name for p in out.iterdir())
    sidecar = json.loads(Path(str(latents[0]).replace(".latents.safetensors", ".json")).read_text())
    return load_file(str(latents[0])), sidecar


@pytest.fixture(scope="module")
def single_process(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert main(_args(tiny_ckpt, out)) == 0
    return _outputs(out)


def _check_same_clip(out, single_process, sp=2):
    latents, sidecar = _outputs(out)
    reference, ref_sidecar = single_process
    for key in ("video", "audio"):
        torch.testing.assert_close(latents[key], reference[key], atol=1e-4, rtol=1e-4)
    assert sidecar["world_size"] == 2 and sidecar["sp"] == sp and ref_sidecar["world_size"] == 1
    assert sidecar["seed"] == ref_sidecar["seed"] == 5


@pytest.mark.parametrize("flags, sp", [(["--sp", "2"], 2), (["--world-size", "2", "--sp", "1", "--fsdp", "full_shard"], 1)],
                         ids=["sp", "fsdp replicas"])
def test_generate_runs_gloo_ranks_and_matches_one_process(tiny_ckpt, tmp_path, single_process, flags, sp):
    mark = marker()
    result = run([sys.executable, "-m", "ovi.cli", *_args(tiny_ckpt, tmp_path / "out"), *flags], timeout=180, **mark)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(".mp4")
    _check_same_clip(tmp_path / "out", single_process, sp)
    if sp == 1:  # FSDP alone: two replicas of sp 1, each holding half of the model
        sidecar = _outputs(tmp_path / "out")[1]
        assert (sidecar["fsdp"], sidecar["fsdp_degree"]) == ("FULL_SHARD", 2)
        assert sidecar["memory"]["param_bytes_per_rank"] < 0.6 * sidecar["memory"]["total_param_bytes"]
    assert marked_processes(mark) == []  # its ranks ended with it


@pytest.mark.parametrize("fsdp", [[], ["--fsdp", "FULL_SHARD"]], ids=["sp", "sp+fsdp"])
def test_generate_under_torchrun_matches_one_process(tiny_ckpt, tmp_path, single_process, fsdp):
    mark = marker()
    result = run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                  "-m", "ovi.cli", *_args(tiny_ckpt, tmp_path / "out"), "--sp", "2", *fsdp], timeout=180, **mark)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count(".mp4") == 1  # rank 0 alone saves and prints
    _check_same_clip(tmp_path / "out", single_process)
    if fsdp:
        sidecar = _outputs(tmp_path / "out")[1]
        assert (sidecar["fsdp"], sidecar["fsdp_degree"]) == ("FULL_SHARD", 2)
        assert sidecar["memory"]["param_bytes_per_rank"] < sidecar["memory"]["total_param_bytes"]
    assert marked_processes(mark) == []


@pytest.mark.parametrize("ranks_per_node, fsdp", [(1, []), (2, ["--fsdp", "HYBRID_SHARD"])],
                         ids=["sp across nodes", "hybrid shard across nodes, sp within"])
def test_one_generation_over_two_node_agents_matches_one_process(tiny_ckpt, tmp_path, single_process,
                                                                  ranks_per_node, fsdp):
    """Two torchrun node agents (separate processes, c10d rendezvous on the loopback, as on two
    machines) run one generation together: with one rank per node SP 2 spans the nodes; with two,
    SP 2 runs within each node and HYBRID_SHARD shards over a node's ranks and replicates across
    the nodes (FSDP2's 2-D mesh, on gloo)."""
    mark, port, out = marker(), free_port(), tmp_path / "out"
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
             "--nproc-per-node", str(ranks_per_node), "--rdzv-backend", "c10d",
             "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
             "-m", "ovi.cli", *_args(tiny_ckpt, out), "--sp", "2", *fsdp]
    with ThreadPoolExecutor(2) as pool:
        node_runs = list(pool.map(lambda _: run(agent, timeout=300, **mark), range(2)))
    for result in node_runs:
        assert result.returncode == 0, result.stderr[-3000:]
    assert sum(r.stdout.count(".mp4") for r in node_runs) == 1  # global rank 0 alone saves
    latents, sidecar = _outputs(out)
    reference, _ = single_process
    for key in ("video", "audio"):
        torch.testing.assert_close(latents[key], reference[key], atol=1e-4, rtol=1e-4)
    assert (sidecar["world_size"], sidecar["sp"]) == (2 * ranks_per_node, 2)
    if fsdp:  # sharded within a node (degree 2 of 4 ranks), each node a replica
        assert (sidecar["fsdp"], sidecar["fsdp_degree"]) == ("HYBRID_SHARD", 2)
        memory = sidecar["memory"]
        assert memory["param_bytes_per_rank"] < 0.6 * memory["total_param_bytes"]
    assert marked_processes(mark) == []


@pytest.mark.parametrize("args, message", [
    (["--sp", "3"], "sp_size 3 does not divide"),
    (["--sp", "0"], "sp_size"),
    (["--sp", "2", "--fsdp", "HYBRID_SHARD"], "HYBRID_SHARD replicates across nodes"),
    (["--set", "fsdp_cpu_offload=true"], "fsdp_cpu_offload: true keeps parameter shards in host memory"),
    (["--world-size", "2", "--sp", "1"], "world size 2 must equal cfg (1) x sp (1)"),
    (["--world-size", "4", "--fsdp", "HYBRID_SHARD"], "HYBRID_SHARD replicates across nodes"),
    (["--world-size", "3", "--sp", "2", "--fsdp", "FULL_SHARD"], "world size 3 is not divisible by cfg (1) x sp (2)"),
    (["--world-size", "0"], "world_size 0: must be a number of ranks"),
    (["--set", "shard_text_model=true"], "shard_text_model: true shards the text encoder with FSDP"),
])
def test_bad_parallel_settings_exit_2_before_any_rank_starts(tiny_ckpt, tmp_path, capsys, args, message):
    code = main(_args(tiny_ckpt, tmp_path / "out") + args)
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert spawned_children() == []
    assert not (tmp_path / "out").exists()
