"""GenerateRequest: one vocabulary, checks shared with the config, JSON round trips, edge aliases."""

import json

import pytest

from ovi.config import PER_CLIP_KEYS, load_config
from ovi.request import ALIASES, CONFIG_KEYS, FIELDS, GenerateRequest, RequestError, split_overrides


def test_round_trip_keeps_exactly_the_fields_that_were_set():
    request = GenerateRequest("A red ball", seed=3, steps=4, height_width=[64, 96],
                              loras=["style.safetensors:0.5"], engine={"fp8": True})
    data = request.to_dict()
    assert data == {"prompt": "A red ball", "seed": 3, "steps": 4, "height_width": [64, 96],
                    "loras": [{"path": "style.safetensors", "weight": 0.5, "name": "style", "merge": True}],
                    "engine": {"fp8": True}}
    assert json.loads(json.dumps(data)) == data
    again = GenerateRequest.from_dict(data)
    assert again == request.validate() and again.to_dict() == data


def test_prompt_is_positional_and_the_rest_keyword_only():
    with pytest.raises(TypeError):
        GenerateRequest("a", "t2v")  # mode must be named


@pytest.mark.parametrize("data, field, fragment", [
    ({"prompt": "x", "steps": 0}, "steps", "steps 0 (config key sample_steps): must be at least 1"),
    ({"prompt": "x", "solver": "ddim"}, "solver", "(config key solver_name): must be one of unipc"),
    ({"prompt": "x", "mode": "v2v"}, "mode", "must be one of t2v, i2v, t2i2v"),
    ({"prompt": "x", "mode": "i2v"}, "image", "mode i2v needs an image"),
    ({"prompt": "x", "mode": "t2v", "image": "a.png"}, "image", "use mode i2v"),
    ({"prompt": "x", "height_width": [100, 128]}, "height_width", "multiple of 32, e.g. [96, 128]"),
    ({"prompt": "x", "sedd": 1}, "sedd", "did you mean 'seed'"),
    ({"prompt": "  "}, "prompt", "prompt is empty"),
    ({"seed": 1}, "prompt", "missing"),
    ({"prompt": "x", "engine": {"sample_steps": 4}}, "engine", "per-clip setting"),
    ({"prompt": "x", "loras": [{"path": "a", "scale": 1}]}, "loras", "unknown entry key 'scale'"),
])
def test_bad_fields_are_named_with_the_fix(data, field, fragment):
    with pytest.raises(RequestError) as info:
        GenerateRequest.from_dict(data)
    assert info.value.field == field and fragment in str(info.value), str(info.value)


def test_request_and_config_share_their_checks():
    """The same bad value is refused by both, with the same problem text."""
    for config_key, bad in (("sample_steps", 0), ("shift", -1), ("video_guidance_scale", -2),
                            ("video_frame_height_width", [100, 128]), ("solver_name", "ddim")):
        field = next(name for name, key in CONFIG_KEYS.items() if key == config_key)
        with pytest.raises(Exception) as from_config:
            load_config(None, **{config_key: bad})
        with pytest.raises(RequestError) as from_request:
            GenerateRequest.from_dict({"prompt": "x", field: bad})
        problem = str(from_config.value).split(": ", 1)[1]
        assert problem in str(from_request.value)
    assert set(CONFIG_KEYS.values()) == set(PER_CLIP_KEYS)


def test_upstream_and_seed_names_are_mapped_once_at_the_edges():
    upstream = {"text_prompt": "x", "sample_steps": 4, "solver_name": "euler", "video_negative_prompt": "blur",
                "video_frame_height_width": [64, 96], "each_example_n_times": 2, "image_path": None}
    request = GenerateRequest.from_dict(upstream, aliases=True)
    assert (request.prompt, request.steps, request.solver, request.negative_prompt, request.height_width,
            request.n) == ("x", 4, "euler", "blur", (64, 96), 2)
    seed_style = {"prompt": "x", "videoGuidanceScale": 5.0, "numSteps": 3}
    assert GenerateRequest.from_dict(seed_style, aliases=True).to_dict() == {
        "prompt": "x", "video_guidance_scale": 5.0, "steps": 3}
    with pytest.raises(RequestError, match="did you mean"):
        GenerateRequest.from_dict(seed_style)  # without aliases only our names are accepted
    assert set(ALIASES.values()) <= set(FIELDS)


def test_set_overrides_split_into_fields_and_engine_settings():
    fields, engine = split_overrides({"sample_steps": 3, "shift": 6, "fp8": True, "ckpt_dir": "/c"})
    assert fields == {"steps": 3, "shift": 6} and engine == {"fp8": True, "ckpt_dir": "/c"}
    request = GenerateRequest.from_dict({"prompt": "x", "set": {"sample_steps": 3, "fp8": True}}, aliases=True)
    assert request.steps == 3 and request.engine == {"fp8": True}
    with pytest.raises(RequestError) as info:  # the error names the key as the caller wrote it
        GenerateRequest.from_dict({"prompt": "x", "set": ["sample_steps"]}, aliases=True)
    assert info.value.field == "set"


def test_fill_takes_the_config_defaults_and_expand_makes_seeds():
    cfg = load_config(None)
    filled = GenerateRequest("x", steps=2).fill(cfg.request_defaults())
    assert (filled.steps, filled.solver, filled.seed, filled.shift) == (2, cfg.solver_name, cfg.seed, cfg.shift)
    clips = GenerateRequest("x", n=3).validate().expand(default_seed=10)
    assert [(c.seed, c.n) for c in clips] == [(10, 1), (11, 1), (12, 1)]


def test_an_in_memory_image_travels_in_process_but_is_not_stored():
    import numpy as np
    request = GenerateRequest.coerce("x", mode="i2v", image=np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(RequestError, match="save it to a file"):
        request.to_dict()
