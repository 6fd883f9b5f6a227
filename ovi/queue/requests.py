"""What a generation request may hold, checked when it is submitted (not when it runs hours later).

A stored request is a GenerateRequest's JSON dict (ovi.request). Also: reading upstream Ovi's prompt
csv (`text_prompt`, optional `image_path`) into requests.
"""

from __future__ import annotations

import csv
from pathlib import Path

from ovi.config import load_config
from ovi.errors import InputError
from ovi.request import MODES, GenerateRequest, RequestError, is_int

# Upstream's default seed (its inference yaml): the base of repeated rows when no config says.
UPSTREAM_DEFAULT_SEED = 100


def validate_request(request: dict | GenerateRequest) -> GenerateRequest:
    """The GenerateRequest a stored request dict stands for (upstream's and the seed's names are
    accepted too); RequestError naming the first bad field."""
    return GenerateRequest.from_dict(request, aliases=True)


def check_engine_settings(request: dict | GenerateRequest):
    """Resolve the request's `config` + `engine` overrides the way the runner will (ovi.config), so a
    typo fails at submit with the key named, not hours later in the runner. Returns the config.

    Kept out of `validate_request`: the queue itself stays model-agnostic (tests and other engines
    may carry their own engine keys); the CLI and REST front ends call this."""
    given_as = "set" if isinstance(request, dict) and "set" in request else "engine"
    request = validate_request(request)
    try:
        cfg = load_config(request.config)
    except InputError as exc:
        raise RequestError("config", str(exc)) from None
    try:
        return load_config(cfg, **request.engine)
    except InputError as exc:
        raise RequestError(given_as, str(exc)) from None


def engine_key(request: GenerateRequest) -> dict:
    """What decides which engine runs a request: jobs with equal keys share one engine (per-clip
    fields, LoRAs included, never split them)."""
    return {"config": request.config, "engine": dict(request.engine)}


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
    if not (is_int(n_times) and n_times >= 1):
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
            requests.append(validate_request(request).to_dict())
    return requests


def _base_seed(base: dict | None) -> int:
    # The seed the runner would use anyway: the request's config (+ overrides), else upstream's.
    try:
        return int(check_engine_settings({"prompt": "x", **(base or {})}).seed)
    except InputError:  # a config problem is reported when the jobs are checked or run
        return UPSTREAM_DEFAULT_SEED
