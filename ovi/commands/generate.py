"""`ovi generate`: run the pipeline for one prompt, or a whole upstream prompt csv.

torch-side modules (engine, ranks) are imported when the command runs, not when the parser is built:
every `ovi` command builds all parsers, and `ovi queue list` must start in a blink.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from ovi.commands.request_args import add_request_arguments, request_fields_from_args
from ovi.config import load_config
from ovi.errors import InputError
from ovi.pipeline.prompts import clip_stem, expand_prompts
from ovi.request import CONFIG_KEYS, GenerateRequest


def add_generate_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate clips (mp4 + wav + json sidecar)")
    p.add_argument("config", nargs="?", default=None, help="yaml config (default: the embedded tiny model)")
    p.add_argument("--prompt", help="prompt text, or a .csv/.tsv prompt file (overrides text_prompt)")
    add_request_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_generate)


def config_from_args(args):
    """The engine config: the yaml (or the embedded default) with the engine flags applied."""
    _, engine = request_fields_from_args(args)
    if args.config and args.config_opt:
        raise InputError("give the config once: as the positional CONFIG or as --config")
    return load_config(args.config or args.config_opt, **engine)


def requests_from_args(args, cfg) -> list[GenerateRequest]:
    """Every clip to make: the prompt (or each row of a prompt file) x n, as validated requests.
    Repeat k of an example uses seed + k (upstream's each_example_n_times)."""
    fields, _ = request_fields_from_args(args)
    fields.pop("out", None)
    if fields.get("extend"):
        return [_extension_request(args, cfg, fields)]
    view = {CONFIG_KEYS[name]: fields.pop(name) for name in ("image", "mode", "n") if name in fields}
    if args.prompt is not None:
        view["text_prompt"] = args.prompt
    view = cfg.replace(**view) if view else cfg
    jobs = expand_prompts(view)
    seed = fields.pop("seed", view.seed)
    return [GenerateRequest.from_dict({**fields, "prompt": prompt, "mode": view.mode, "image": image,
                                       "seed": seed + index % view.each_example_n_times})
            for index, (prompt, image) in enumerate(jobs)]


def _extension_request(args, cfg, fields) -> GenerateRequest:
    """`--extend CLIP.mp4`: one request continuing the clip. What is not given on the command line (prompt,
    seed, steps, ...) is the clip's own (its sidecar), not the config's; the clip is checked here, before
    anything loads."""
    from ovi.pipeline.windows import read_prior

    if args.prompt is not None and Path(args.prompt).suffix.lower() in (".csv", ".tsv"):
        raise InputError("--extend continues one clip; give --prompt as text, not a prompt file")
    prior = read_prior(fields["extend"], cfg.model_name)
    prompt = args.prompt if args.prompt is not None else prior.settings.get("prompt")
    return GenerateRequest.from_dict({**fields, "prompt": prompt})


def run_generate(args) -> int:
    from ovi.pipeline.images import load_image
    from ovi.runtime.launch import torchrun_env

    cfg = config_from_args(args)
    requests = requests_from_args(args, cfg)
    out_dir = Path(args.out) if args.out else Path(cfg.output_dir)
    # Check every input before loading anything or writing a file: a bad row fails the batch up front.
    for request in requests:
        resolved = request.fill(cfg.request_defaults())
        if resolved.mode == "i2v":
            if not resolved.image:
                raise InputError(f"mode i2v needs an image for prompt {request.prompt[:40]!r}: pass --image or an "
                                 f"image_path column")
            load_image(resolved.image)
    if torchrun_env() is not None:
        return _generate_under_torchrun(cfg, requests, out_dir, args)
    with _open_engine(cfg) as engine:
        for index, request in enumerate(requests):
            bar, progress = _progress_bar(index, len(requests), cfg, args.quiet)
            try:
                clip = engine.generate(request, progress=progress)
            finally:
                bar.close()
            _save(cfg, out_dir, index, request, clip)
    return 0


@contextlib.contextmanager
def _open_engine(cfg):
    """One process for one rank; a WorkerGroup of sp_size x (2 with cfg_parallel) ranks otherwise, or
    when FSDP shards the model (gloo ranks on the CPU, one rank per GPU with nccl)."""
    from ovi.parallel.dims import ParallelDims
    from ovi.pipeline.engine import Engine
    from ovi.runtime.worker_group import WorkerGroup

    dims = ParallelDims.from_config(cfg)  # the one resolution of this launch, handed down
    if not dims.needs_process_group:
        yield Engine.from_config(cfg, dims=dims)
        return
    with WorkerGroup(cfg, dims=dims) as group:
        yield group


def _generate_under_torchrun(cfg, requests, out_dir, args) -> int:
    """Every torchrun process runs this; rank 0 drives the requests, shows progress and saves."""
    from ovi.runtime.launch import torchrun_env
    from ovi.runtime.torchrun import serve_torchrun

    lead = torchrun_env()["rank"] == 0
    bars = []

    def items():
        for index, request in enumerate(requests):
            bar, progress = _progress_bar(index, len(requests), cfg, args.quiet)
            bars.append(bar)
            yield request, progress

    def on_clip(index, request, clip):
        bars[index].close()
        _save(cfg, out_dir, index, request, clip)

    try:
        serve_torchrun(cfg, items() if lead else None, on_clip)
    finally:
        for bar in bars:
            bar.close()
    return 0


def _progress_bar(index, count, cfg, quiet):
    from tqdm import tqdm
    bar = tqdm(total=cfg.sample_steps, desc=f"clip {index + 1}/{count}", disable=quiet, file=sys.stderr)

    def progress(step, total, info=None):
        bar.total = total
        bar.update(step - bar.n)
    return bar, progress


def _save(cfg, out_dir, index, request, clip) -> None:
    h, w = clip.meta["height_width"]
    stem = clip_stem(request.prompt, h, w, clip.meta["seed"], index)
    paths = clip.save(out_dir / stem, save_latents=cfg.save_latents)
    print(paths["mp4"], flush=True)
