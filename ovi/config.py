"""One typed config for the whole workbench.

It accepts every key of upstream Ovi's inference yaml, every key the seed fork documented, and our own
additions, so an upstream yaml loads unchanged. Values are checked when the config is built (a typo or a
bad value fails before any weights load, with a message naming the key, the value and the fix). Options
that are documented but not runnable yet load fine and are refused only by `require_available()`, which
the engine calls at start.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ovi.errors import ConfigError, NotAvailableError
from ovi.request import (
    CONFIG_KEYS,
    FieldError,
    GenerateRequest,
    config_field_check,
    show,
)
from ovi.specs import BUNDLED_CKPT_DIR, BUNDLED_WEIGHTS_DIR, MODEL_SPECS

# Shipped yaml files live inside the package so they exist in a wheel too; configs/*.yaml at the repo
# root are identical copies for people browsing the repo (a test keeps them in sync).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"
log = logging.getLogger(__name__)


def bundled_ckpt_dir(model_name: str) -> Path:
    """Where `ckpt_dir: bundled` points for `model_name`: weights shipped inside the package (upstream's
    layout), so the embedded default finds them from any working directory and in an installed wheel."""
    return Path(__file__).resolve().parent / BUNDLED_WEIGHTS_DIR / model_name
DEFAULT_CONFIG = "tiny"

FSDP_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD", "auto")
ATTENTION_BACKENDS = ("auto", "flash3", "flash2", "sdpa", "math")
DTYPES = ("auto", "bf16", "fp32")
STEP_CACHES = ("none", "teacache", "magcache", "fbcache")
STEP_CACHE_THRESHOLD_RANGE = (0.0, 1.0)

# One GPU (DESIGN §7): a memory profile is a named set of the knobs below; a key the config sets itself
# wins over its profile's value. `blocks_on_device` is a fraction of the fused blocks here (the count
# depends on the model) and None = all of them (no block swap). `auto` picks one from the memory model
# (ovi.pipeline.memory_profiles) for the device it finds.
MEMORY_PROFILES = {
    "none": {"blocks_on_device": None, "quantize": "none", "vae_tiling": False, "text_encoder_device": "device"},
    "balanced": {"blocks_on_device": None, "quantize": "int8", "vae_tiling": True, "text_encoder_device": "cpu"},
    "low": {"blocks_on_device": 0.5, "quantize": "int8", "vae_tiling": True, "text_encoder_device": "cpu"},
    "minimal": {"blocks_on_device": 0.0, "quantize": "int8", "vae_tiling": True, "text_encoder_device": "cpu"},
}
MEMORY_PROFILE_NAMES = (*MEMORY_PROFILES, "auto")
QUANTIZE_MODES = ("none", "int8", "fp8")
TEXT_ENCODER_DEVICES = ("device", "cpu")

# Switched-on options this build cannot run yet -> the feature they wait for. Delete an entry when its
# feature lands; `require_available()` then stops refusing it. (Upstream's `qint8` has landed: it is mapped
# to `quantize: int8` when the config is built, see _check_memory_keys.)
PENDING_FEATURES: dict[str, str] = {}


@dataclass
class OviConfig:
    """Every setting of one generation run. Built (and validated) by `load_config` or directly."""

    # --- upstream Ovi inference keys -------------------------------------------------------------
    ckpt_dir: str = "./ckpts"
    output_dir: str = "./outputs"
    model_name: str = "960x960_10s"
    mode: str = "t2v"
    sample_steps: int = 50
    solver_name: str = "unipc"
    shift: float = 5.0
    sp_size: int | None = None              # None: filled from the number of ranks (1 in one process)
    audio_guidance_scale: float = 3.0
    video_guidance_scale: float = 4.0
    slg_layer: int | bool = 11              # 0, -1 or False disable skip-layer guidance
    seed: int = 103
    fp8: bool = False
    qint8: bool = False
    cpu_offload: bool = False
    each_example_n_times: int = 1
    video_frame_height_width: list = field(default_factory=lambda: [704, 1280])
    text_prompt: str = ""                   # a prompt, or a .csv/.tsv prompt file
    image_path: str | None = None
    video_negative_prompt: str = "jitter, bad hands, blur, distortion"
    audio_negative_prompt: str = "robotic, muffled, echo, distorted"
    shard_text_model: bool = False          # shard the umT5 text encoder with FSDP too (needs use_fsdp)
    # --- the seed fork's keys --------------------------------------------------------------------
    use_fsdp: bool = False
    fsdp_sharding_strategy: str = "FULL_SHARD"
    fsdp_cpu_offload: bool = False
    use_optimized_comms: bool = True
    enable_async_comms: bool = False
    use_tensor_cores: bool = True
    # --- ours ------------------------------------------------------------------------------------
    model: str | None = None                # architecture preset; None -> derived from model_name
    attention_backend: str = "auto"
    cfg_parallel: bool = False
    world_size: int | None = None           # ranks to run; null: cfg x sp. More only with FSDP (replicas hold shards)
    lora: list = field(default_factory=list)  # [{path, weight, name, merge[, branch]}] or "path:weight" strings
    lightning: bool = False                   # few-step Lightning profile (ovi.lora.presets)
    dtype: str = "auto"
    device: str = "auto"
    save_latents: bool = False
    profile_comms: bool = False             # multi-rank: time collectives with torch.profiler too
    profile_dir: str | None = None          # write a torch.profiler trace of each generation here (TensorBoard)
    profile_memory: bool = False            # CPU ranks: measure allocated bytes with torch.profiler
    device_memory_gb: float | None = None   # memory per device the FSDP `auto` strategy plans for (null: measured)
    # --- one GPU (null: the memory profile's value) --------------------------------------------------
    memory_profile: str = "none"            # none | balanced | low | minimal | auto (MEMORY_PROFILES)
    blocks_on_device: int | None = None     # fused blocks kept on the device; the rest stream in (block swap)
    quantize: str | None = None             # none | int8 | fp8 weight-only (torchao) for the DiT's linear layers
    vae_tiling: bool | None = None          # decode the video VAE in spatial tiles (bounded memory)
    text_encoder_device: str | None = None  # device | cpu: where umT5 runs (cpu keeps it off the GPU)
    # --- speed -----------------------------------------------------------------------------------------
    compile: bool = False                   # torch.compile the fused block once per shape (ovi.pipeline.compile)
    step_cache: str = "none"                # skip forwards whose input barely changed (ovi.pipeline.step_cache)
    step_cache_threshold: float | None = None  # 0..1; null: the method's default

    def __post_init__(self):
        _validate(self)

    # ----------------------------------------------------------------------------------------------
    @property
    def height_width(self) -> tuple[int, int]:
        return tuple(self.video_frame_height_width)

    @property
    def slg_layer_index(self) -> int | None:
        """The block index skipped in the negative pass, or None when SLG is off (0, -1 or False)."""
        if self.slg_layer is False or self.slg_layer <= 0:
            return None
        return int(self.slg_layer)

    def request_defaults(self, prompt: str | None = None) -> GenerateRequest:
        """The config's per-clip keys as a GenerateRequest: the values every unset request field takes."""
        values = {name: getattr(self, key) for name, key in CONFIG_KEYS.items() if name not in ("prompt", "out")}
        values["loras"] = tuple(self.lora)
        return GenerateRequest(prompt=prompt or self.text_prompt or "(config defaults)", **values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every resolved setting (what the clip sidecar records)."""
        return dataclasses.asdict(self)

    def replace(self, **overrides) -> "OviConfig":
        """A validated copy with `overrides` applied. If `model_name` changes and `model` was the
        architecture derived from the old name (and is not overridden), it is derived again; so is a
        ckpt_dir that was the old name's bundled weights (`ckpt_dir: bundled`): the new name's bundled
        weights, or upstream's default ./ckpts when it has none."""
        data = self.to_dict()
        if "model_name" in overrides and "model" not in overrides:
            old = MODEL_SPECS.get(self.model_name)
            if old is not None and self.model == old.architecture:
                data["model"] = None
        if "model_name" in overrides and "ckpt_dir" not in overrides \
                and Path(self.ckpt_dir) == bundled_ckpt_dir(self.model_name):
            new = MODEL_SPECS.get(overrides["model_name"])
            data["ckpt_dir"] = BUNDLED_CKPT_DIR if new is not None and new.bundled else OviConfig.ckpt_dir
        return load_config(data, **overrides)

    def require_available(self) -> None:
        """Refuse switched-on options this build cannot run yet (called by the engine at start, not at
        load, so configs that mention them still load and can be inspected)."""
        problems = []
        for key, feature in PENDING_FEATURES.items():
            if getattr(self, key):
                problems.append(f"{key}: {show(getattr(self, key))} is not available until the {feature} "
                                f"feature lands; set {key}: false")
        if problems:
            raise NotAvailableError("; ".join(problems))


FIELDS = tuple(f.name for f in dataclasses.fields(OviConfig))
# Config keys that are per-clip defaults (a GenerateRequest field each); the rest are engine settings.
PER_CLIP_KEYS = tuple(CONFIG_KEYS.values())
ENGINE_KEYS = tuple(k for k in FIELDS if k not in PER_CLIP_KEYS)
_TEXT_FIELDS = ("ckpt_dir", "output_dir", "text_prompt", "image_path", "video_negative_prompt",
                "audio_negative_prompt")
_NOT_YAML = object()


def shipped_configs() -> dict[str, Path]:
    """Name -> path of every yaml shipped inside the package (e.g. 'tiny', 'rtx3090_x4')."""
    return {p.stem: p for p in sorted(CONFIG_DIR.glob("*.yaml"))}


def load_config(path_or_dict: str | Path | dict | OviConfig | None = None, **overrides) -> OviConfig:
    """Build a validated OviConfig.

    `path_or_dict` is a yaml path, the name of a shipped config ('tiny', 'ovi_720x720_5s',
    'rtx3090_x4', ...), a dict, an OviConfig, or None for the embedded default (configs/tiny.yaml).
    `overrides` are applied on top, key by key.
    """
    if path_or_dict is None:
        default = CONFIG_DIR / f"{DEFAULT_CONFIG}.yaml"
        if not default.is_file():
            raise FileNotFoundError(f"the embedded default config {default} is missing from this installation; "
                                    f"reinstall ovi-workbench (its wheel must ship ovi/configs/*.yaml)")
        data = _read_yaml(default)
    elif isinstance(path_or_dict, OviConfig):
        data = path_or_dict.to_dict()
    elif isinstance(path_or_dict, dict):
        data = dict(path_or_dict)
    elif isinstance(path_or_dict, (str, Path)):
        data = _read_yaml(_resolve_config_path(path_or_dict))
    else:
        raise ConfigError(f"load_config expects a yaml path, a dict or None, got {type(path_or_dict).__name__}")
    data.update(overrides)
    unknown = [k for k in data if k not in FIELDS]
    if unknown:
        raise ConfigError(_unknown_key_message(unknown[0]))
    return OviConfig(**data)


def parse_set_option(option: str) -> tuple[str, Any]:
    """Parse one `--set key=value` option into (key, value). The value is read as yaml (so `7`, `true`,
    `[128, 128]` and `null` get their types); prompts and paths stay text whatever they look like."""
    key, sep, raw = option.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set expects key=value (e.g. --set sample_steps=30), got {option!r}")
    if key not in FIELDS:
        raise ConfigError(_unknown_key_message(key))
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = _NOT_YAML
    if key in _TEXT_FIELDS and not isinstance(value, str) and value is not None:
        value = raw.strip()  # prompts and paths are text even when they look like yaml ("a: b", 123)
    elif value is _NOT_YAML:
        raise ConfigError(f"--set {key}: value {raw!r} is not valid yaml; quote it or fix the syntax")
    return key, value


# --------------------------------------------------------------------------------------------------
# loading helpers


def _resolve_config_path(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if p.is_file():
        return p
    shipped = shipped_configs()
    name = p.name[:-5] if p.name.endswith(".yaml") else p.name
    if p.parent == Path(".") and name in shipped:
        return shipped[name]
    raise ConfigError(f"config file {str(path)!r} not found; pass an existing yaml path or one of the "
                      f"shipped configs ({', '.join(shipped)}), or omit it for the embedded tiny default")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid yaml: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of key: value lines, "
                          f"got a {type(data).__name__}")
    return data


def _unknown_key_message(key: str) -> str:
    close = difflib.get_close_matches(str(key), FIELDS, n=1, cutoff=0.6)
    if close:
        return f"unknown config key {key!r}; did you mean {close[0]!r}?"
    return f"unknown config key {key!r}; valid keys are: {', '.join(FIELDS)}"


# --------------------------------------------------------------------------------------------------
# validation


def _fail(key: str, value, problem: str) -> ConfigError:
    return ConfigError(f"{key} {show(value)}: {problem}")


def check_step_cache(method, threshold) -> None:
    """An unknown step cache or an out-of-range threshold -> ConfigError naming the allowed values."""
    if method not in STEP_CACHES:
        raise _fail("step_cache", method, f"unknown step cache; choose one of {', '.join(STEP_CACHES)}")
    lo, hi = STEP_CACHE_THRESHOLD_RANGE
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
                                  or not lo <= threshold <= hi):
        raise _fail("step_cache_threshold", threshold, f"must be a number from {lo} to {hi} (0 never skips; "
                                                       "larger skips more), or null for the method's default")


def _check_request_key(cfg: OviConfig, key: str) -> None:
    """Per-clip keys are checked (and normalised) by the same checkers GenerateRequest uses."""
    try:
        setattr(cfg, key, config_field_check(key)(key, getattr(cfg, key)))
    except FieldError as exc:
        raise ConfigError(str(exc)) from None


def _choice(cfg: OviConfig, key: str, choices: tuple[str, ...], *, fold_case: bool = False) -> None:
    value = getattr(cfg, key)
    if isinstance(value, str) and fold_case:
        folded = {c.lower(): c for c in choices}
        if value.lower() in folded:
            setattr(cfg, key, folded[value.lower()])
            return
    if value in choices:
        return
    hint = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
    also = f" (did you mean {hint[0]!r}?)" if hint else ""
    raise _fail(key, value, f"must be one of {', '.join(choices)}{also}")


def _check_types(cfg: OviConfig) -> None:
    """Bools must be bools, ints ints (not bools), floats numbers, strings strings."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if f.name in PER_CLIP_KEYS or f.name in ("model", "sp_size", "world_size", "device_memory_gb",
                                                  "blocks_on_device", "quantize", "vae_tiling", "text_encoder_device"):
            continue  # checked on their own below
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise _fail(f.name, value, "must be true or false")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                raise _fail(f.name, value, "must be an integer")
        elif isinstance(default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _fail(f.name, value, "must be a number")
            setattr(cfg, f.name, float(value))
        elif isinstance(default, str):
            if isinstance(value, Path):
                setattr(cfg, f.name, str(value))
            elif not isinstance(value, str):
                raise _fail(f.name, value, "must be a string")


def _validate(cfg: OviConfig) -> None:
    _check_types(cfg)
    for key in PER_CLIP_KEYS:
        if key == "text_prompt" or (key == "image_path" and cfg.image_path is None):
            continue  # a config may leave them empty: the request gives them
        _check_request_key(cfg, key)
    if not isinstance(cfg.text_prompt, str):
        raise _fail("text_prompt", cfg.text_prompt, "must be a string (a prompt, or a .csv/.tsv prompt file)")
    if cfg.model_name not in MODEL_SPECS:
        raise _fail("model_name", cfg.model_name, f"unknown model; choose one of {', '.join(MODEL_SPECS)}")
    _choice(cfg, "fsdp_sharding_strategy", FSDP_STRATEGIES, fold_case=True)
    _choice(cfg, "attention_backend", ATTENTION_BACKENDS)
    _choice(cfg, "dtype", DTYPES)

    architectures = tuple(sorted({s.architecture for s in MODEL_SPECS.values()}))
    if cfg.model is None:
        cfg.model = MODEL_SPECS[cfg.model_name].architecture
    elif cfg.model not in architectures:
        raise _fail("model", cfg.model, f"unknown architecture preset; choose one of {', '.join(architectures)} "
                                        f"(or leave it out to follow model_name)")
    if cfg.ckpt_dir == BUNDLED_CKPT_DIR:
        spec = MODEL_SPECS[cfg.model_name]
        if not spec.bundled or cfg.model != spec.architecture:
            shipped = ", ".join(n for n, s in MODEL_SPECS.items() if s.bundled)
            raise _fail("ckpt_dir", cfg.ckpt_dir, f"model_name {cfg.model_name!r} (architecture {cfg.model!r}) has no "
                                                  f"bundled weights (only {shipped} ships with the package); set ckpt_dir "
                                                  "to a checkpoint folder in upstream's layout (the random presets tiny "
                                                  "and mid make theirs on first use, e.g. ./outputs/tiny_ckpt)")
        cfg.ckpt_dir = str(bundled_ckpt_dir(cfg.model_name))

    if isinstance(cfg.profile_dir, Path):
        cfg.profile_dir = str(cfg.profile_dir)
    if cfg.profile_dir is not None and (not isinstance(cfg.profile_dir, str) or not cfg.profile_dir):
        raise _fail("profile_dir", cfg.profile_dir, "must be a folder path (or null for no traces)")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", cfg.device):
        raise _fail("device", cfg.device, "must be auto, cpu, cuda or cuda:N (e.g. cuda:0)")
    if cfg.sp_size is not None and (isinstance(cfg.sp_size, bool) or not isinstance(cfg.sp_size, int)
                                    or cfg.sp_size < 1):
        raise _fail("sp_size", cfg.sp_size, "must be at least 1 (1 = no sequence parallelism), or null to "
                                            "use every rank")
    if cfg.world_size is not None and (isinstance(cfg.world_size, bool) or not isinstance(cfg.world_size, int)
                                       or cfg.world_size < 1):
        raise _fail("world_size", cfg.world_size, "must be a number of ranks (at least 1), or null for cfg x sp")
    if cfg.device_memory_gb is not None and (isinstance(cfg.device_memory_gb, bool)
                                             or not isinstance(cfg.device_memory_gb, (int, float))
                                             or cfg.device_memory_gb <= 0):
        raise _fail("device_memory_gb", cfg.device_memory_gb, "must be a positive number of GB, or null to measure "
                                                              "each device's free memory")
    if cfg.device_memory_gb is not None:
        cfg.device_memory_gb = float(cfg.device_memory_gb)
    check_step_cache(cfg.step_cache, cfg.step_cache_threshold)
    cfg.video_frame_height_width = list(cfg.video_frame_height_width)
    cfg.lora = [dict(item) for item in cfg.lora]
    _check_memory_keys(cfg)


def _map_upstream_qint8(cfg: OviConfig) -> None:
    """Upstream's `qint8: true` (optimum-quanto int8 weights on the DiT) is our `quantize: int8` (torchao
    int8 weight-only on the fused blocks' Linears): mapped once here, at the config edge, so everything
    after reads `quantize` only. The sidecar keeps both keys and the memory record says where int8 came from."""
    if not cfg.qint8:
        return
    if cfg.quantize not in (None, "int8"):
        raise _fail("qint8", cfg.qint8, f"upstream's qint8 means int8 weights (quantize: int8), but the config also "
                                        f"sets quantize: {cfg.quantize}; drop qint8 or the quantize key")
    if cfg.quantize is None:
        log.info("qint8: true (upstream key) -> quantize: int8 (torchao int8 weight-only on the DiT's block layers)")
        cfg.quantize = "int8"


def _check_memory_keys(cfg: OviConfig) -> None:
    _choice(cfg, "memory_profile", MEMORY_PROFILE_NAMES, fold_case=True)
    if cfg.quantize is not None:
        _choice(cfg, "quantize", QUANTIZE_MODES, fold_case=True)
    _map_upstream_qint8(cfg)
    if cfg.text_encoder_device is not None:
        _choice(cfg, "text_encoder_device", TEXT_ENCODER_DEVICES)
    if cfg.vae_tiling is not None and not isinstance(cfg.vae_tiling, bool):
        raise _fail("vae_tiling", cfg.vae_tiling, "must be true or false (or null for the memory profile's value)")
    b = cfg.blocks_on_device
    if b is not None and (isinstance(b, bool) or not isinstance(b, int) or b < 0):
        raise _fail("blocks_on_device", b, "must be a whole number of fused blocks (0 or more) to keep on the device, "
                                           "or null for all of them (no block swap)")
    if b is not None and cfg.use_fsdp and cfg.fsdp_sharding_strategy != "NO_SHARD":
        raise _fail("blocks_on_device", b, "block swap cannot be combined with FSDP, which already streams each fused "
                                           "block (fsdp_cpu_offload is its offload); drop use_fsdp or set "
                                           "blocks_on_device: null")
    if cfg.quantize not in (None, "none") and cfg.use_fsdp and cfg.fsdp_sharding_strategy != "NO_SHARD":
        raise _fail("quantize", cfg.quantize, "torchao weight-only quantisation is not applied to FSDP-sharded weights; "
                                              "drop use_fsdp, or use fp8 storage (fp8: true), which FSDP shards")
    if b is not None and cfg.cpu_offload:
        raise _fail("blocks_on_device", b, "block swap and cpu_offload both move the DiT between host and device; "
                                           "choose one (set cpu_offload: false or blocks_on_device: null)")
