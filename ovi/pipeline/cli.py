"""`ovi generate`: run the pipeline for one prompt, or a whole upstream prompt csv."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from ovi.errors import InputError


def add_generate_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate clips (mp4 + wav + json sidecar)")
    p.add_argument("config", nargs="?", default=None, help="yaml config (default: the embedded tiny model)")
    p.add_argument("--prompt", help="prompt text, or a .csv/.tsv prompt file (overrides text_prompt)")
    p.add_argument("--image", help="conditioning image for i2v (overrides image_path)")
    p.add_argument("--mode", help="t2v | i2v | t2i2v")
    p.add_argument("--seed", type=int)
    p.add_argument("--steps", type=int, help="sample_steps")
    p.add_argument("--sp", type=int, help="sequence-parallel ranks (sp_size)")
    p.add_argument("--fsdp", metavar="STRATEGY", help="enable FSDP with this sharding strategy")
    p.add_argument("--lora", action="append", default=[], metavar="PATH[:WEIGHT]")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config key")
    p.add_argument("--out", help="output directory (overrides output_dir)")
    p.add_argument("--save-latents", action="store_true", help="also write <stem>.latents.safetensors")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_generate)


def config_from_args(args):
    from ovi.config import load_config, parse_set_option
    overrides = dict(parse_set_option(item) for item in args.set)
    flags = {"text_prompt": args.prompt, "image_path": args.image, "mode": args.mode, "seed": args.seed,
             "sample_steps": args.steps, "sp_size": args.sp, "output_dir": args.out}
    overrides.update({k: v for k, v in flags.items() if v is not None})
    if args.fsdp:
        overrides.update(use_fsdp=True, fsdp_sharding_strategy=args.fsdp)
    if args.lora:
        overrides["lora"] = list(args.lora)
    if args.save_latents:
        overrides["save_latents"] = True
    return load_config(args.config, **overrides)


def run_generate(args) -> int:
    from ovi.pipeline.images import load_image
    from ovi.pipeline.prompts import expand_prompts

    cfg = config_from_args(args)
    jobs = expand_prompts(cfg)
    if not jobs:
        raise InputError("no prompt: pass --prompt TEXT or set text_prompt")
    # Check every input before loading anything or writing a file: a bad row fails the batch up front.
    for prompt, image in jobs:
        if cfg.mode == "i2v":
            if not image:
                raise InputError(f"mode i2v needs an image for prompt {prompt[:40]!r}: pass --image or an image_path column")
            load_image(image)
    from ovi.runtime._rank import torchrun_env
    if torchrun_env() is not None:
        return _generate_under_torchrun(cfg, jobs, args)
    with _open_engine(cfg) as engine:
        for index, (prompt, image) in enumerate(jobs):
            request = _request(cfg, index, prompt, image)
            bar, request["progress"] = _progress_bar(index, len(jobs), cfg, args.quiet)
            try:
                clip = engine.generate(**request)
            finally:
                bar.close()
            _save(cfg, index, prompt, clip)
    return 0


@contextlib.contextmanager
def _open_engine(cfg):
    """One process for one rank; a WorkerGroup of sp_size x (2 with cfg_parallel) ranks otherwise
    (gloo ranks on the CPU, one rank per GPU with nccl)."""
    from ovi.parallel.dims import ParallelDims
    world = ParallelDims.from_config(cfg).world_size
    if world == 1:
        from ovi.pipeline.engine import Engine
        yield Engine.from_config(cfg)
        return
    from ovi.runtime.worker_group import WorkerGroup
    with WorkerGroup(cfg, world_size=world) as group:
        yield group


def _generate_under_torchrun(cfg, jobs, args) -> int:
    """Every torchrun process runs this; rank 0 drives the requests, shows progress and saves."""
    from ovi.runtime._rank import serve_torchrun, torchrun_env
    lead = torchrun_env()["rank"] == 0
    bars = []

    def requests():
        for index, (prompt, image) in enumerate(jobs):
            request = _request(cfg, index, prompt, image)
            bar, request["progress"] = _progress_bar(index, len(jobs), cfg, args.quiet)
            bars.append(bar)
            yield request

    def on_clip(index, request, clip):
        bars[index].close()
        _save(cfg, index, request["prompt"], clip)

    try:
        serve_torchrun(cfg, requests() if lead else None, on_clip)
    finally:
        for bar in bars:
            bar.close()
    return 0


def _request(cfg, index, prompt, image) -> dict:
    seed = cfg.seed + index % cfg.each_example_n_times  # repeat k of an example uses seed + k
    return {"prompt": prompt, "image": image if cfg.mode == "i2v" else None, "seed": seed}


def _progress_bar(index, count, cfg, quiet):
    from tqdm import tqdm
    bar = tqdm(total=cfg.sample_steps, desc=f"clip {index + 1}/{count}", disable=quiet, file=sys.stderr)

    def progress(step, total, info=None):
        bar.total = total
        bar.update(step - bar.n)
    return bar, progress


def _save(cfg, index, prompt, clip) -> None:
    from ovi.pipeline.prompts import clip_stem
    h, w = clip.meta["height_width"]
    stem = clip_stem(prompt, h, w, clip.meta["seed"], index)
    paths = clip.save(Path(cfg.output_dir) / stem, save_latents=cfg.save_latents)
    print(paths["mp4"], flush=True)
