"""GenerateRequest: every per-clip field of one generation, in one vocabulary.

One object travels unchanged from where a request is made (CLI, REST, widget, csv) through the queue
store, the Runner, a WorkerGroup's pipe and a rank to `Engine.generate`. Engine settings (model,
checkpoint, dtype, device, parallel degrees, attention backend) are not here: they belong to the
config (ovi.config), and a request only names the config it runs under (`config`) plus engine
overrides (`engine`), which is what the Runner groups jobs by.

Other vocabularies are mapped once, at the edges, by `from_dict(..., aliases=True)`: upstream Ovi's
yaml/csv names (`text_prompt`, `sample_steps`, `video_negative_prompt`, ...) and the seed fork's.
Field values are checked by `validate()` with the same messages the config gives for its keys; the
config uses the checkers below for its per-clip keys, so the two never disagree.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ovi.errors import InputError
from ovi.inputs import SEED_MAX, text_problem

MODES = ("t2v", "i2v", "t2i2v")
SOLVERS = ("unipc", "dpm++", "euler")
LORA_KEYS = ("path", "weight", "name", "merge", "branch")
LORA_BRANCHES = ("video", "audio", "both")


class RequestError(InputError):
    """A request field is invalid; `field` names it (the REST API reports it as the 422 loc)."""

    def __init__(self, field: str | None, reason: str, *, where: str | None = None, sep: str = ": "):
        text = f"{field}{sep}{reason}" if field else reason
        super().__init__(f"{where}: {text}" if where else text)
        self.field = field
        self.reason = reason


# --------------------------------------------------------------------------------------------------
# value checkers, shared with ovi.config (each returns the normalised value or raises)


def show(value) -> str:
    """A value as it would be written in yaml (for messages)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return repr(value)
    return str(value)


class FieldError(InputError):
    """Raised by a checker; carries the bad value's key so callers can re-label it."""

    def __init__(self, key: str, value, problem: str):
        super().__init__(f"{key} {show(value)}: {problem}")
        self.key, self.value, self.problem = key, value, problem


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _choice(key, value, choices):
    if value in choices:
        return value
    hint = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    also = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise FieldError(key, value, f"must be one of {', '.join(choices)}{also}")


# Upper bounds: every integer has a stated range (ovi.inputs); these are far beyond any real clip.
MAX_STEPS = 1_000_000
MAX_CLIPS = 10_000
MAX_SIDE = 2**16
MAX_BLOCK = 10_000


def _valid_text(key, value, *, multiline: bool = True):
    """Text rules of ovi.inputs (UTF-8 without surrogates; no control characters but tab/newlines
    in multi-line text)."""
    problem = text_problem(value, multiline=multiline)
    if problem:
        raise FieldError(key, value[:60] + ("..." if len(value) > 60 else ""), problem)
    return value


def check_text(key, value):
    if isinstance(value, Path):
        return str(value)
    if not isinstance(value, str):
        raise FieldError(key, value, "must be a string")
    return _valid_text(key, value)


def check_prompt(key, value):
    if not isinstance(value, str) or not value.strip():
        raise FieldError(key, value, "prompt is empty or not text; pass the text to generate from")
    return _valid_text(key, value)


def check_mode(key, value):
    return _choice(key, value, MODES)


def check_solver(key, value):
    return _choice(key, value, SOLVERS)


def check_seed(key, value):
    if not is_int(value) or value < 0:
        raise FieldError(key, value, "must be a non-negative integer")
    if value > SEED_MAX:
        raise FieldError(key, value, f"must be at most {SEED_MAX} (2^64-1, what torch's generator takes)")
    return value


def check_steps(key, value):
    if not is_int(value):
        raise FieldError(key, value, "must be an integer")
    if value < 1:
        raise FieldError(key, value, "must be at least 1 (upstream uses 50)")
    if value > MAX_STEPS:
        raise FieldError(key, value, f"must be at most {MAX_STEPS}")
    return value


def check_shift(key, value):
    if not is_number(value):
        raise FieldError(key, value, "must be a number")
    value = float(value)
    if value <= 0:
        raise FieldError(key, value, "must be > 0 (upstream uses 5.0)")
    return value


def check_guidance(key, value):
    if not is_number(value):
        raise FieldError(key, value, "must be a number")
    value = float(value)
    if value < 0:
        raise FieldError(key, value, "must be >= 0 (1.0 turns guidance off)")
    return value


def check_slg_layer(key, value):
    if value is False:
        return False
    if not is_int(value) or not -1 <= value <= MAX_BLOCK:
        raise FieldError(key, value, "must be a block index (e.g. 11), or 0 / -1 / false to disable SLG")
    return value


def check_height_width(key, value):
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(is_int(v) and 0 < v <= MAX_SIDE and v % 32 == 0 for v in value))
    if not ok:
        example = [704, 1280]
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(is_number(v) for v in value):
            example = [min(MAX_SIDE, max(32, int(round(v / 32)) * 32)) for v in value]
        shown = list(value) if isinstance(value, tuple) else value
        raise FieldError(key, shown, f"each side must be a positive multiple of 32, e.g. {example} (at "
                                     f"most {MAX_SIDE})")
    return tuple(value)


def check_bool(key, value):
    if not isinstance(value, bool):
        raise FieldError(key, value, "must be true or false")
    return value


def check_count(key, value):
    if not is_int(value) or value < 1:
        raise FieldError(key, value, "must be at least 1")
    if value > MAX_CLIPS:
        raise FieldError(key, value, f"must be at most {MAX_CLIPS}")
    return value


def check_loras(key, value) -> tuple:
    """A list (or one item) of {path, weight, name?, merge?, branch?} dicts or "path[:weight]" strings
    -> a tuple of complete dicts."""
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    out = []
    for item in items:
        if isinstance(item, (str, Path)):
            path, weight = str(item), 1.0
            head, sep, tail = path.rpartition(":")
            if sep and head:
                try:
                    weight, path = float(tail), head
                except ValueError:
                    pass  # a ':' that is part of the path (e.g. C:\...)
            item = {"path": path, "weight": weight}
        if not isinstance(item, dict):
            raise FieldError(key, value, 'each entry must be "path:weight" or {path: ..., weight: ...}')
        extra = [k for k in item if k not in LORA_KEYS]
        if extra:
            raise FieldError(key, value, f"unknown entry key {extra[0]!r}; allowed: {', '.join(LORA_KEYS)}")
        if not item.get("path"):
            raise FieldError(key, value, "every entry needs a path")
        weight = item.get("weight", 1.0)
        if not is_number(weight):
            raise FieldError(key, value, f"weight {show(weight)} of {item['path']!r} must be a number")
        merge = item.get("merge", True)
        if not isinstance(merge, bool):
            raise FieldError(key, value, f"merge of {item['path']!r} must be true or false")
        branch = item.get("branch")
        if branch is not None and branch not in LORA_BRANCHES:
            raise FieldError(key, value, f"branch {branch!r} of {item['path']!r} must be one of "
                                         f"{', '.join(LORA_BRANCHES)}")
        path = str(item["path"])
        _valid_text(key, path, multiline=False)
        if item.get("name") is not None:
            if not isinstance(item["name"], str):
                raise FieldError(key, value, f"name of {item['path']!r} must be a string")
            _valid_text(key, item["name"], multiline=False)
        entry = {"path": path, "weight": float(weight), "name": str(item.get("name") or Path(path).stem),
                 "merge": merge}
        if branch is not None:
            entry["branch"] = branch
        out.append(entry)
    return tuple(out)


# The longest clip a request may ask for (seconds): `duration` above it is refused when the request is
# made, so nothing is queued (each window costs one clip's steps; 120 s is 24 windows of the real model).
MAX_DURATION_SECONDS = 120.0


def check_duration(key, value):
    if not is_number(value):
        raise FieldError(key, value, "must be a number of seconds")
    value = float(value)
    if not 0 < value <= MAX_DURATION_SECONDS:
        raise FieldError(key, value, f"must be > 0 and at most {MAX_DURATION_SECONDS:g} seconds (leave it out for "
                                     f"the model's own clip length)")
    return value


def check_engine(key, value):
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise FieldError(key, value, "must be a mapping of config key -> value, e.g. {sp_size: 2}")
    for name in value:
        _valid_text(key, name, multiline=False)
    return dict(value)


def check_image(key, value):
    """A file path; in-process callers may also pass an array, PIL image or tensor (not queueable)."""
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, str) and not value:
        raise FieldError(key, value, "is empty; give an image file path or leave it out")
    if isinstance(value, str):
        _valid_text(key, value, multiline=False)
    return value


# --------------------------------------------------------------------------------------------------
# the request


def _field(check: Callable, config_key: str | None, help: str, flag: str | None = None, **kw):
    """A dataclass field with its checker, the config key it defaults from, and CLI help."""
    return field(metadata={"check": check, "config_key": config_key, "help": help, "flag": flag}, **kw)


@dataclass(frozen=True)
class GenerateRequest:
    """One clip's settings: `GenerateRequest(prompt, *, mode=..., seed=..., ...)`. Fields left None take
    the engine config's value when the request runs (`fill(defaults)`); `to_dict()` keeps only what
    was set, so a stored request says what the user asked for, verbatim."""

    prompt: str = _field(check_prompt, "text_prompt", "prompt text (Ovi's <S>..<E> and <AUDCAP>..<ENDAUDCAP> tags)")
    _: dataclasses.KW_ONLY
    mode: str | None = _field(check_mode, "mode", "t2v | i2v | t2i2v", default=None)
    image: Any = _field(check_image, "image_path", "conditioning image for i2v (a file path)", default=None)
    seed: int | None = _field(check_seed, "seed", "random seed", default=None)
    negative_prompt: str | None = _field(check_text, "video_negative_prompt", "video negative prompt", default=None)
    audio_negative_prompt: str | None = _field(check_text, "audio_negative_prompt", "audio negative prompt",
                                               default=None)
    steps: int | None = _field(check_steps, "sample_steps", "denoising steps", default=None)
    solver: str | None = _field(check_solver, "solver_name", "unipc | dpm++ | euler", default=None)
    shift: float | None = _field(check_shift, "shift", "timestep shift of the flow schedule", default=None)
    video_guidance_scale: float | None = _field(check_guidance, "video_guidance_scale", "video CFG scale",
                                                default=None)
    audio_guidance_scale: float | None = _field(check_guidance, "audio_guidance_scale", "audio CFG scale",
                                                default=None)
    slg_layer: int | None = _field(check_slg_layer, "slg_layer",
                                   "block skipped in the negative pass (0 / -1 disable)", default=None)
    height_width: tuple | None = _field(check_height_width, "video_frame_height_width",
                                        "frame size HxW, e.g. 720x720", default=None)
    loras: tuple = _field(check_loras, "lora", "LoRA adapter PATH[:WEIGHT] (repeatable)", flag="lora",
                          default=())
    lightning: bool | None = _field(check_bool, "lightning", "few-step Lightning sampling profile", default=None)
    duration: float | None = _field(check_duration, None, "clip length in seconds, made of continuation windows "
                                    "(default: the model's own length)", default=None)
    extend: str | None = _field(check_text, None, "continue this clip (an mp4 saved with --save-latents): the output "
                                "is the whole clip plus `duration` seconds", default=None)
    n: int = _field(check_count, "each_example_n_times", "clips per prompt (seeds seed, seed+1, ...)", default=1)
    config: str | None = _field(check_text, None, "config the job runs under (a shipped name or a yaml)",
                                default=None)
    engine: dict = _field(check_engine, None, "engine-setting overrides (config keys)", default_factory=dict)
    out: str | None = _field(check_text, "output_dir", "output folder", default=None)

    def __post_init__(self):
        """Every request is checked and normalised when it is made (RequestError names the first bad
        field), so equal requests compare equal whatever form their values came in."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name in ("loras", "engine") and not value):
                continue
            try:
                object.__setattr__(self, f.name, f.metadata["check"](f.name, value))
            except FieldError as exc:
                # "steps 0 (config key sample_steps): must be ..." names both vocabularies.
                key = f.metadata["config_key"]
                also = f" (config key {key})" if key and key != f.name else ""
                raise RequestError(f.name, f"{show(exc.value)}{also}: {exc.problem}", sep=" ") from None
        if isinstance(self.loras, list):
            object.__setattr__(self, "loras", tuple(self.loras))
        per_clip = {key: name for name, key in CONFIG_KEYS.items()}
        for key in self.engine:
            if key in per_clip or key in FIELDS:
                raise RequestError("engine", f"{key} is a per-clip setting, not an engine setting; give it as the "
                                             f"request field '{per_clip.get(key, key)}'")
        if self.seed is not None and self.seed + self.n - 1 > SEED_MAX:
            raise RequestError("seed", f"{self.seed} + {self.n - 1} (n clips use seed, seed+1, ...) is "
                                       f"over {SEED_MAX}; choose a smaller seed")
        if self.mode == "i2v" and self.image is None:
            raise RequestError("image", "mode i2v needs an image: pass image=... (--image PATH)")
        if self.mode not in (None, "i2v") and self.image is not None:
            raise RequestError("image", f"an image was given but mode is {self.mode}; use mode i2v to "
                                        f"condition on it")

    # ---- checking ------------------------------------------------------------------------------
    def validate(self) -> "GenerateRequest":
        """The request itself: it was checked when it was made (kept for callers that say so)."""
        return self

    # ---- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-safe dict of the fields that were set (what the queue stores and REST accepts)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None or (f.name in ("loras", "engine") and not value) or (f.name == "n" and value == 1):
                continue
            if f.name == "image" and not isinstance(value, str):
                raise RequestError("image", f"a {type(value).__name__} cannot be stored or sent as JSON; "
                                            f"save it to a file and pass its path")
            if isinstance(value, tuple):
                value = [dict(v) if isinstance(v, dict) else v for v in value]
            out[f.name] = value
        try:
            json.dumps(out, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise RequestError(None, f"the request must be plain JSON data: {exc}") from None
        return out

    @classmethod
    def from_dict(cls, data: dict, *, aliases: bool = False, where: str | None = None) -> "GenerateRequest":
        """Build and validate a request from a dict of field names (with aliases=True also upstream's
        yaml/csv names and the seed fork's). An unknown key raises RequestError naming the nearest."""
        if isinstance(data, GenerateRequest):
            return data.validate()
        if not isinstance(data, dict):
            raise RequestError(None, f"a request must be a mapping of field -> value, got {type(data).__name__}",
                               where=where)
        values, given_as = {}, {}
        for key, value in data.items():
            name = ALIASES.get(key, key) if aliases else key
            given_as[name] = key
            if name not in FIELDS:
                valid = FIELDS + (tuple(ALIASES) if aliases else ())
                near = difflib.get_close_matches(str(key), valid, n=1)
                hint = f"did you mean '{near[0]}'?" if near else f"valid fields: {', '.join(FIELDS)}"
                raise RequestError(str(key), f"unknown request field; {hint}", where=where)
            if name in values:
                raise RequestError(str(key), f"given twice (as {name!r} and an alias of it)", where=where)
            values[name] = value
        if aliases and isinstance(values.get("engine"), dict):
            # `set`/`engine` overrides may name per-clip config keys (sample_steps, ...): they are fields.
            fields, engine = split_overrides(values["engine"])
            for name, value in fields.items():
                if name in values:
                    raise RequestError(name, "given twice (as a field and inside the engine overrides)", where=where)
                values[name] = value
            values["engine"] = engine
        if "prompt" not in values:
            raise RequestError("prompt", "missing; every request needs a text prompt", where=where)
        try:
            return cls(**values).validate()
        except RequestError as exc:
            field_name = given_as.get(exc.field, exc.field)  # name the field as the caller wrote it
            if where or field_name != exc.field:
                sep = " " if str(exc).startswith(f"{exc.field} ") else ": "
                raise RequestError(field_name, exc.reason, where=where, sep=sep) from None
            raise

    @classmethod
    def coerce(cls, request=None, /, **fields) -> "GenerateRequest":
        """The keyword convenience of `generate(...)`: a GenerateRequest (optionally with `fields`
        changed) or a prompt string plus fields (None values mean "not set"). Validated."""
        fields = {k: v for k, v in fields.items() if v is not None}
        if isinstance(request, GenerateRequest):
            return dataclasses.replace(request, **fields).validate() if fields else request.validate()
        if isinstance(request, str):
            unknown = [k for k in fields if k not in FIELDS]
            if unknown:
                near = difflib.get_close_matches(unknown[0], FIELDS, n=1)
                hint = f"did you mean '{near[0]}'?" if near else f"valid fields: {', '.join(FIELDS)}"
                raise RequestError(unknown[0], f"unknown request field; {hint}")
            return cls(prompt=request, **fields).validate()
        if isinstance(request, dict):
            return cls.from_dict({**request, **fields})
        raise RequestError("prompt", f"pass a prompt string or a GenerateRequest, got {type(request).__name__}")

    def replace(self, **changes) -> "GenerateRequest":
        return dataclasses.replace(self, **changes).validate()

    # ---- resolution ----------------------------------------------------------------------------
    def fill(self, defaults: "GenerateRequest") -> "GenerateRequest":
        """This request with every unset per-clip field taken from `defaults` (the config's values)."""
        changes = {}
        for f in dataclasses.fields(self):
            if f.name in ("prompt", "config", "engine", "out", "n"):
                continue
            if getattr(self, f.name) is None or (f.name == "loras" and not self.loras and defaults.loras):
                changes[f.name] = getattr(defaults, f.name)
        return dataclasses.replace(self, **changes)

    def expand(self, default_seed: int) -> list["GenerateRequest"]:
        """n clips of this request: seeds seed, seed+1, ... (seed defaults to `default_seed`), n=1 each."""
        seed = self.seed if self.seed is not None else default_seed
        if seed + self.n - 1 > SEED_MAX:
            raise RequestError("seed", f"seeds {seed}..{seed + self.n - 1} go over {SEED_MAX}; choose a "
                                       f"smaller seed")
        if self.n == 1:
            return [self]
        return [dataclasses.replace(self, seed=seed + i, n=1) for i in range(self.n)]

    @property
    def per_clip_settings(self) -> dict:
        """The fields that shape the clip (not where it runs or where it goes)."""
        return {k: v for k, v in self.to_dict().items() if k not in ("config", "engine", "out")}


FIELDS = tuple(f.name for f in dataclasses.fields(GenerateRequest))
# Per-clip field -> the config key that supplies its default.
CONFIG_KEYS = {f.name: f.metadata["config_key"] for f in dataclasses.fields(GenerateRequest)
               if f.metadata["config_key"]}

# Other vocabularies, accepted at the edges: upstream's yaml/csv keys, and the seed fork's option names.
ALIASES = {
    **{config_key: name for name, config_key in CONFIG_KEYS.items() if config_key != name},
    # the seed fork's web UI / API option names
    "videoGuidanceScale": "video_guidance_scale", "audioGuidanceScale": "audio_guidance_scale",
    "video_guidance": "video_guidance_scale", "audio_guidance": "audio_guidance_scale",
    "sampleSteps": "steps", "sample_steps": "steps", "numSteps": "steps", "num_steps": "steps",
    "solverName": "solver", "negativePrompt": "negative_prompt", "audioNegativePrompt": "audio_negative_prompt",
    "slgLayer": "slg_layer", "imagePath": "image", "set": "engine",
}


def config_field_check(config_key: str) -> Callable | None:
    """The checker the config uses for one of its per-clip keys (None for engine keys)."""
    for f in dataclasses.fields(GenerateRequest):
        if f.metadata["config_key"] == config_key:
            return f.metadata["check"]
    return None


def split_overrides(overrides: dict) -> tuple[dict, dict]:
    """Config-key overrides (`--set`, a job's `set`) -> (request fields, engine overrides): per-clip
    config keys become the request fields they default (sample_steps -> steps); the rest stay engine
    settings, checked against the config when the request is resolved."""
    field_of = {key: name for name, key in CONFIG_KEYS.items()}
    fields, engine = {}, {}
    for key, value in overrides.items():
        if key in field_of:
            fields[field_of[key]] = value
        elif key in FIELDS and key not in ("config", "engine", "out"):
            fields[key] = value
        else:
            engine[key] = value
    return fields, engine
