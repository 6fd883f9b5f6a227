"""What a generation request may hold, checked when it is submitted (not when it runs hours later).

A request is a flat JSON dict: `prompt` (required), optionally `config` (a yaml path), `set`
(config overrides), `loras`, `out` (output directory) and any keyword of `Engine.generate`.
Also: reading upstream Ovi's prompt csv (`text_prompt`, optional `image_path`) into requests.
"""

from __future__ import annotations

import csv
import difflib
import json
import math
from pathlib import Path
from typing import Any

from ovi.errors import InputError

MODES = ("t2v", "i2v", "t2i2v")
# Keywords passed through to Engine.generate / WorkerGroup.generate.
GENERATE_KEYS = (
    "mode", "image", "seed", "negative_prompt", "audio_negative_prompt", "steps", "solver",
    "video_guidance_scale", "audio_guidance_scale", "slg_layer", "height_width",
)
# Keys that pick the model (changing them means loading other weights).
ENGINE_KEYS = ("config", "set", "loras")
REQUEST_KEYS = ("prompt", "out") + ENGINE_KEYS + GENERATE_KEYS

# Upstream's default seed (its inference yaml): the base of repeated rows when no config says.
UPSTREAM_DEFAULT_SEED = 100


class RequestError(InputError):
    """A request field is invalid; `field` names it (the REST API reports it as the 422 loc)."""

    def __init__(self, field: str | None, reason: str, *, where: str | None = None):
        text = f"{field}: {reason}" if field else reason
        super().__init__(f"{where}: {text}" if where else text)
        self.field = field
        self.reason = reason


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def validate_request(request: Any) -> None:
    """Raise RequestError naming the first bad field; return None when the request is fine."""
    if not isinstance(request, dict):
        raise RequestError(None, f"a request must be a dict, got {type(request).__name__}")
    for key in request:
        if key not in REQUEST_KEYS:
            near = difflib.get_close_matches(str(key), REQUEST_KEYS, n=1)
            hint = f"; did you mean '{near[0]}'?" if near else f"; valid keys: {', '.join(REQUEST_KEYS)}"
            raise RequestError(str(key), f"unknown request key{hint}")
    prompt = request.get("prompt")
    if prompt is None:
        raise RequestError("prompt", "missing; every request needs a text prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError("prompt", "must be a non-empty string")
    mode = request.get("mode")
    if mode is not None and mode not in MODES:
        raise RequestError("mode", f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "i2v" and not request.get("image"):
        raise RequestError("image", "mode 'i2v' needs an image path")
    for key in ("image", "config", "out", "solver", "negative_prompt", "audio_negative_prompt"):
        if request.get(key) is not None and not isinstance(request[key], str):
            raise RequestError(key, f"must be a string, got {type(request[key]).__name__}")
    for key in ("seed", "slg_layer"):
        if request.get(key) is not None and not _is_int(request[key]):
            raise RequestError(key, f"must be an integer, got {request[key]!r}")
    steps = request.get("steps")
    if steps is not None and not (_is_int(steps) and steps >= 1):
        raise RequestError("steps", f"must be a positive integer, got {steps!r}")
    for key in ("video_guidance_scale", "audio_guidance_scale"):
        if request.get(key) is not None and not _is_number(request[key]):
            raise RequestError(key, f"must be a number, got {request[key]!r}")
    hw = request.get("height_width")
    if hw is not None and not (isinstance(hw, (list, tuple)) and len(hw) == 2
                               and all(_is_int(x) and x > 0 for x in hw)):
        raise RequestError("height_width", f"must be [height, width] in pixels, got {hw!r}")
    overrides = request.get("set")
    if overrides is not None and not (isinstance(overrides, dict)
                                      and all(isinstance(k, str) for k in overrides)):
        raise RequestError("set", "must be a dict of config key -> value, e.g. {'sample_steps': 4}")
    loras = request.get("loras")
    if loras is not None and not (isinstance(loras, list)
                                  and all(isinstance(x, (str, dict)) for x in loras)):
        raise RequestError("loras", "must be a list of 'PATH[:WEIGHT]' strings or {path, weight} dicts")
    try:
        json.dumps(request, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RequestError(None, f"the request must be plain JSON data: {exc}") from exc


def check_engine_settings(request: dict):
    """Resolve the request's config + `set` + `loras` the way the runner will (ovi.config), so a
    typo fails at submit with the key named, not hours later in the runner. Returns the config.

    Kept out of `validate_request`: the queue itself stays model-agnostic (tests and other
    engines may carry their own `set` keys); the CLI and REST front ends call this."""
    from ovi.config import load_config

    try:
        cfg = load_config(request.get("config"))
    except InputError as exc:
        raise RequestError("config", str(exc)) from None
    overrides = dict(request.get("set") or {})
    try:
        cfg = load_config(cfg, **overrides)
    except InputError as exc:
        raise RequestError("set", str(exc)) from None
    if request.get("loras"):
        try:
            cfg = load_config(cfg, lora=list(request["loras"]))
        except InputError as exc:
            raise RequestError("loras", str(exc)) from None
    return cfg


def engine_key(request: dict) -> dict:
    """The part of a request that decides which weights are loaded: jobs with equal keys can
    share one engine. Empty `set`/`loras` and missing ones are the same key."""
    return {
        "config": request.get("config"),
        "set": dict(request.get("set") or {}),
        "loras": list(request.get("loras") or []),
    }


def generate_kwargs(request: dict) -> dict:
    kwargs = {k: request[k] for k in GENERATE_KEYS if request.get(k) is not None}
    if "height_width" in kwargs:
        kwargs["height_width"] = tuple(kwargs["height_width"])
    return kwargs


def requests_from_csv(path: str | Path, *, n_times: int = 1, mode: str | None = None,
                      seed: int | None = None, base: dict | None = None) -> list[dict]:
    """Upstream Ovi's prompt csv -> requests, one per row and repetition.

    Like upstream: `text_prompt` is required, `image_path` optional; outside i2v the image is
    dropped; repetition `i` of a row uses seed `seed + i` (seed defaults to the config's seed
    when n_times > 1, so repeats differ, as in `ovi generate`). Without `mode`, a row with an image is i2v, else t2v.
    Relative image paths are taken relative to the csv's folder when they exist there.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt csv not found: {path}; fix the path")
    if not (_is_int(n_times) and n_times >= 1):
        raise InputError(f"--n-times must be a positive integer, got {n_times!r}")
    if mode is not None and mode not in MODES:
        raise RequestError("mode", f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "text_prompt" not in columns:
            raise InputError(f"{path}: no 'text_prompt' column (found {columns or 'none'}); "
                             f"upstream's csv has text_prompt and optionally image_path")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    requests = []
    for line, row in enumerate(rows, start=2):
        prompt = row.get("text_prompt", "")
        if not prompt:
            raise InputError(f"{path} line {line}: text_prompt is empty")
        image = row.get("image_path") or None
        row_mode = mode or ("i2v" if image else "t2v")
        if row_mode != "i2v":
            image = None
        elif image is None:
            raise InputError(f"{path} line {line}: mode i2v needs an image_path")
        else:
            candidate = path.parent / image
            image = str((candidate if not Path(image).is_absolute() and candidate.exists()
                         else Path(image)).resolve())
        for i in range(n_times):
            request = dict(base or {})
            request.update(prompt=prompt, mode=row_mode)
            if image is not None:
                request["image"] = image
            if seed is not None or n_times > 1:
                request["seed"] = (_base_seed(base) if seed is None else seed) + i
            validate_request(request)
            requests.append(request)
    return requests


def _base_seed(base: dict | None) -> int:
    # The seed the runner would use anyway: the request's config (+ overrides), else upstream's.
    try:
        from ovi.config import load_config

        base = base or {}
        return int(load_config(base.get("config"), **dict(base.get("set") or {})).seed)
    except Exception:  # a config problem is reported when the jobs are checked or run
        return UPSTREAM_DEFAULT_SEED
