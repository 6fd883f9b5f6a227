"""The per-clip and engine flags that `ovi generate` and `ovi queue submit` share.

Per-clip flags are built from GenerateRequest's fields (their CLI help lives in the field metadata),
so the two commands take the same flags by construction. Engine flags (--sp, --fsdp, --world-size, --set for
engine keys, --save-latents) become the request's `engine` overrides; `--set` of a per-clip config key
(e.g. --set sample_steps=4) sets the request field it defaults (steps).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ovi.config import ENGINE_KEYS, parse_set_option
from ovi.errors import InputError
from ovi.inputs import SEED_MAX, cli_int
from ovi.request import FieldError, GenerateRequest, check_loras, split_overrides

# Fields a command adds itself (the prompt's form differs; config is positional in generate).
_OWN = ("prompt", "config", "engine", "out", "image")
# Integers are ASCII digits (ovi.inputs); GenerateRequest checks every value's range, with messages
# naming the config key too.
_INTEGER = cli_int(-SEED_MAX, SEED_MAX, "integer")
_TYPES = {"seed": _INTEGER, "steps": _INTEGER, "slg_layer": _INTEGER, "n": _INTEGER,
          "shift": float, "video_guidance_scale": float, "audio_guidance_scale": float, "duration": float}


def _parse_height_width(text: str) -> list[int]:
    try:
        h, w = (cli_int(1, 2**31, "side")(x) for x in text.lower().replace(",", "x").split("x"))
    except (ValueError, argparse.ArgumentTypeError):
        raise InputError(f"--height-width {text!r}: use HxW, e.g. 720x720") from None
    return [h, w]


def add_request_arguments(parser: argparse.ArgumentParser) -> None:
    """Every GenerateRequest field as a flag (plus --image, --out, --config), and the engine flags."""
    parser.add_argument("--image", help="conditioning image for i2v (a file path)")
    for f in dataclasses.fields(GenerateRequest):
        if f.name in _OWN:
            continue
        flag = "--" + (f.metadata["flag"] or f.name).replace("_", "-")
        kwargs = {"dest": f.name, "help": f.metadata["help"]}
        if f.name == "loras":
            kwargs.update(action="append", metavar="PATH[:WEIGHT]")
        elif f.name == "lightning":
            kwargs.update(action="store_true", default=None)
        elif f.name == "height_width":
            kwargs.update(metavar="HxW")  # parsed in request_fields_from_args: one-line errors
        else:
            kwargs.update(type=_TYPES.get(f.name, str))  # values are checked by GenerateRequest
        names = [flag] + (["--each-example-n-times"] if f.name == "n" else [])
        parser.add_argument(*names, **kwargs)
    parser.add_argument("--out", help="output folder")
    parser.add_argument("--config", dest="config_opt", metavar="CONFIG",
                        help="config yaml or shipped name (default: the embedded tiny model)")
    engine = parser.add_argument_group("engine settings")
    engine.add_argument("--sp", type=_INTEGER, help="sequence-parallel ranks (sp_size)")
    engine.add_argument("--fsdp", metavar="STRATEGY", help="enable FSDP with this sharding strategy")
    engine.add_argument("--world-size", type=_INTEGER, metavar="N",
                        help="ranks to run (world_size; default cfg x sp); more than cfg x sp with --fsdp: the "
                             "extra ranks are replicas that hold shards (e.g. --world-size 4 --sp 1 --fsdp FULL_SHARD)")
    engine.add_argument("--memory-profile", metavar="PROFILE", default=None,
                        help="one GPU: none | balanced | low | minimal | auto (block swap, int8 weights, tiled decode)")
    engine.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="any config key (per-clip keys set the request field they default)")
    engine.add_argument("--save-latents", action="store_true", default=None,
                        help="also write <stem>.latents.safetensors")
    engine.add_argument("--compile", action="store_true", default=None,
                        help="torch.compile the fused block once per shape (regional compile; config compile)")
    engine.add_argument("--profile", metavar="DIR", default=None,
                        help="write a torch.profiler trace of each clip (per rank) into DIR; open it with "
                             "`tensorboard --logdir DIR` (torch-tb-profiler)")


def request_fields_from_args(args) -> tuple[dict, dict]:
    """-> (request fields that were given, engine overrides). Paths are made absolute so a runner
    started from another folder finds them."""
    overrides = dict(parse_set_option(item) for item in args.set)
    fields, engine = split_overrides(overrides)
    for f in dataclasses.fields(GenerateRequest):
        if f.name in ("prompt", "config", "engine"):
            continue
        value = getattr(args, f.name, None)
        if value is None or value == []:
            continue
        if f.name in fields:
            raise InputError(f"{f.name} is given twice (as a flag and in --set); give it once")
        fields[f.name] = value
    if isinstance(fields.get("height_width"), str):
        fields["height_width"] = _parse_height_width(fields["height_width"])
    for key in ("image", "out", "extend"):
        if isinstance(fields.get(key), str) and fields[key]:
            fields[key] = str(Path(fields[key]).expanduser().resolve())
    if fields.get("loras"):
        try:
            loras = check_loras("lora", fields["loras"])
        except FieldError as exc:
            raise InputError(f"--lora: {exc.problem}") from None
        fields["loras"] = [{**entry, "path": lora_ref(entry["path"])} for entry in loras]
    if args.sp is not None:
        engine["sp_size"] = args.sp
    if args.world_size is not None:
        engine["world_size"] = args.world_size
    if args.fsdp:
        engine.update(use_fsdp=True, fsdp_sharding_strategy=args.fsdp)
    if args.memory_profile:
        engine["memory_profile"] = args.memory_profile
    if args.save_latents:
        engine["save_latents"] = True
    if args.compile:
        engine["compile"] = True
    if args.profile:
        engine["profile_dir"] = str(Path(args.profile).expanduser().resolve())
    unknown = [k for k in engine if k not in ENGINE_KEYS]
    if unknown:
        raise InputError(f"--set {unknown[0]}: not a config key")  # parse_set_option names the nearest first
    return fields, engine


def lora_ref(path: str) -> str:
    """A LoRA file here is stored absolute (a runner started elsewhere finds it); anything else stays as
    given: a name from the queue server's LoRA folder (ovi.queue.folders) is resolved when the job runs."""
    candidate = Path(path).expanduser()
    return str(candidate.resolve()) if candidate.is_file() else path


def config_ref(config: str | None) -> str | None:
    """A yaml path is stored absolute (the runner may start elsewhere); a shipped name stays a name."""
    if config is None:
        return None
    return str(Path(config).expanduser().resolve()) if Path(config).expanduser().is_file() else config
