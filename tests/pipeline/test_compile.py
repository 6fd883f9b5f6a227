"""Regional compile (ovi.pipeline.compile): one inductor graph serves every fused block, results match
eager within the stated tolerance on the trained default and on mid, and where inductor cannot run or
compiling fails the block runs eagerly with the reason in the sidecar.

Tolerance: max |compiled - eager| <= 1e-4 x max |eager| (fp32; inductor fuses and reorders reductions)."""

import pytest
import torch

import ovi
from ovi.model import FusionModel
from ovi.model.configs import architecture
from ovi.pipeline import compile as regional
from ovi.pipeline.compile import compile_fused_block

RTOL_OF_MAX = 1e-4
PROMPT = "A red circle bounces. <AUDCAP>a high tone<ENDAUDCAP>"


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) <= RTOL_OF_MAX * float(b.abs().max())


@pytest.fixture(scope="module")
def eager_clip():
    return ovi.Engine.from_config(None).generate(PROMPT, seed=1, steps=2)


def test_compiled_trained_default_matches_eager_with_one_graph(eager_clip):
    engine = ovi.Engine.from_config(ovi.load_config(None, compile=True))
    clip = engine.generate(PROMPT, seed=1, steps=2)
    record = clip.meta["compile"]
    assert record["enabled"] and record["backend"] == "inductor" and record["fallback"] is None
    assert record["graphs"] == 1  # 3 blocks x 2 passes x 2 steps, one graph: compiled once, reused
    assert record["compile_seconds"] > 0
    for key in ("video", "audio"):
        assert close(clip.latents[key], eager_clip.latents[key])
    again = engine.generate(PROMPT, seed=2, steps=2)
    assert again.meta["compile"]["graphs"] == 1  # same shape, another seed: no recompile


def test_compiled_mid_matches_eager():
    torch.manual_seed(0)
    model = FusionModel(*architecture("mid")).eval()
    vid, audio = [torch.randn(48, 3, 8, 8)], [torch.randn(20, 20)]
    ctx = [torch.randn(7, 64)]
    with torch.no_grad():
        args = dict(vid=vid, audio=audio, t=torch.tensor([700.0]), vid_context=ctx, audio_context=ctx,
                    vid_seq_len=64, audio_seq_len=24)  # both padded: the key mask is exercised
        eager = model(**args)
        block = compile_fused_block(model, True, torch.device("cpu"))
        compiled = model(**args)
    assert block.record()["graphs"] == 1 and block.record()["fallback"] is None
    for e, c in zip(eager, compiled):
        assert close(c[0], e[0])


def test_no_compiler_falls_back_to_eager_and_says_why(monkeypatch, eager_clip):
    monkeypatch.setattr(regional, "inductor_unavailable", lambda device: "no C++ compiler found (test)")
    engine = ovi.Engine.from_config(ovi.load_config(None, compile=True))
    clip = engine.generate(PROMPT, seed=1, steps=2)
    record = clip.meta["compile"]
    assert record["backend"] == "eager" and "no C++ compiler found" in record["fallback"]
    assert torch.equal(clip.latents["video"], eager_clip.latents["video"])


def test_compile_failure_falls_back_to_eager(eager_clip):
    engine = ovi.Engine.from_config(None)
    block = compile_fused_block(engine.model, True, engine.device)

    def broken(*args):
        raise RuntimeError("inductor exploded")
    block.compiled = broken
    clip = engine.generate(PROMPT, seed=1, steps=2)
    assert "RuntimeError: inductor exploded" in block.record()["fallback"] and block.record()["backend"] == "eager"
    assert torch.equal(clip.latents["video"], eager_clip.latents["video"])


def test_compile_off_is_recorded():
    assert regional.EagerBlock().record() == {"enabled": False, "backend": "eager", "fallback": None, "graphs": 0,
                                              "compile_seconds": 0.0}


def test_cli_compile_flag_sets_the_engine_key():
    import argparse

    from ovi.commands.request_args import add_request_arguments, request_fields_from_args
    parser = argparse.ArgumentParser()
    add_request_arguments(parser)
    _, engine = request_fields_from_args(parser.parse_args(["--compile"]))
    assert engine == {"compile": True}
    _, engine = request_fields_from_args(parser.parse_args([]))
    assert "compile" not in engine
