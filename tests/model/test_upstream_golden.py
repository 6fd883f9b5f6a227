"""Regression against upstream Ovi's own FusionModel (commit 5b69b25), without upstream code.

The fixture in tests/model/data/ holds a micro model's weights, inputs and the outputs upstream's
FusionModel produced for them, with upstream's hard-coded bf16 casts patched out so it computed in
fp32 (see data/README.md and data/upstream_golden.json). Our FusionModel in fp32 must reproduce those
outputs to ~1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import safetensors.torch as safetensors_torch
import torch

from ovi.model import FusionModel

DATA = Path(__file__).parent / "data"
META = json.loads((DATA / "upstream_golden.json").read_text())
ATOL, RTOL = META["tolerance"]["atol"], META["tolerance"]["rtol"]


@pytest.fixture(scope="module")
def golden():
    tensors = safetensors_torch.load_file(str(DATA / "upstream_golden.safetensors"))
    groups: dict[str, dict[str, torch.Tensor]] = {"weights": {}, "inputs": {}, "outputs": {}}
    for key, value in tensors.items():
        prefix, rest = key.split(".", 1)
        groups[prefix][rest] = value
    return groups


@pytest.fixture(scope="module")
def model(golden):
    m = FusionModel(META["video_config"], META["audio_config"]).eval()
    # stored as bf16 / float8_e4m3fn; upstream ran on their exact fp32 upcasts
    m.load_state_dict({k: v.float() for k, v in golden["weights"].items()}, strict=True)
    return m


def test_state_dict_keys_and_shapes_match_upstream(golden, model):
    ours = model.state_dict()
    assert set(ours) == set(golden["weights"])
    for k, v in ours.items():
        assert tuple(v.shape) == tuple(golden["weights"][k].shape), k


def _case_params():
    return [pytest.param(name, backend, id=f"{name}-{backend}")
            for name in META["cases"] for backend in ("sdpa", "math")]


def _run(model, inputs, case):
    pick = lambda names: None if names is None else [inputs[n] for n in names]  # noqa: E731
    t = inputs[case["t"]].to(getattr(torch, case["t_dtype"]))
    with torch.no_grad():
        return model(pick(case["vid"]), pick(case["audio"]), t, pick(case["vid_context"]),
                     pick(case["audio_context"]), case["vid_seq_len"], case["audio_seq_len"],
                     first_frame_is_clean=case["first_frame_is_clean"], slg_layer=case["slg_layer"])


@pytest.mark.parametrize("name,backend", _case_params())
def test_matches_upstream_fp32(golden, model, name, backend):
    case = META["cases"][name]
    model.set_attention_backend(backend)
    try:
        vid, audio = _run(model, golden["inputs"], case)
    finally:
        model.set_attention_backend("sdpa")
    got = {}
    for prefix, outs in (("vid", vid), ("audio", audio)):
        assert (outs is None) == (case[prefix] is None), prefix
        for i, u in enumerate(outs or []):
            got[f"{prefix}_{i}"] = u
    assert sorted(got) == case["outputs"]
    for k, u in got.items():
        expected = golden["outputs"][f"{name}.{k}"]
        assert u.dtype == torch.float32 and u.shape == expected.shape, (k, u.dtype, u.shape)
        torch.testing.assert_close(u, expected, atol=ATOL, rtol=RTOL, msg=lambda m: f"{name}.{k}: {m}")
