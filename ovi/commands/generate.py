"""`ovi generate`: run the pipeline for one prompt, or a whole upstream prompt csv.

torch-side modules (engine, ranks) are imported when the command runs, not when the parser is built:
every `ovi` command builds all parsers, and `ovi queue list` must start in a blink.
"""

from __future__ import annotations

import contextlib
import os
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
    # --set text_prompt=... is the prompt (or prompt file) as much as --prompt is.
    set_prompt = fields.pop("prompt", None)
    if set_prompt is not None and args.prompt is not None:
        raise InputError("the prompt is given twice (--prompt and --set text_prompt); give it once")
    if args.prompt is not None or set_prompt is not None:
        view["text_prompt"] = args.prompt if args.prompt is not None else set_prompt
    view = cfg.replace(**view) if view else cfg
    jobs = expand_prompts(view)
    seed = fields.pop("seed", view.seed)
    return [GenerateRequest.from_dict({**fields, "prompt": prompt, "mode": view.mode, "image": image,
                                       "seed": seed + index % view.each_example_n_times})
            for index, (prompt, image) in enumerate(jobs)]


def output_dir_from_args(args, cfg) -> Path:
    """--out, or --set output_dir, or the config's output_dir."""
    out = request_fields_from_args(args)[0].get("out")
    return Path(out) if out else Path(cfg.output_dir)


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
    out_dir = output_dir_from_args(args, cfg)
    # Check every input before loading anything or writing a file: a bad row fails the batch up front.
    for request in requests:
        resolved = request.fill(cfg.request_defaults())
        if resolved.mode == "i2v":
            if not resolved.image:
                raise InputError(f"mode i2v needs an image for prompt {request.prompt[:40]!r}: pass --image or an "
                                 f"image_path column")
            load_image(resolved.image)
    check_out_dir(out_dir)
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


def check_out_dir(out_dir: Path) -> None:
    """The output folder exists (made here) and takes files, or one line saying why not."""
    shown = f"--out {out_dir}"
    taken = next((p for p in (out_dir, *out_dir.absolute().parents) if p.exists()), None)
    if taken is not None and not taken.is_dir():
        which = "is a file" if taken == out_dir else f"is under the file {taken}"
        raise InputError(f"{shown} {which}, not a folder; give a folder for the clips")
    # Made and removed again: the folder can be made, and nothing is left if loading fails later.
    missing = [p for p in (out_dir, *out_dir.absolute().parents) if not p.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{shown}: cannot create the folder ({exc.strerror}); give a folder you "
                         f"can write") from None
    finally:
        for made in missing:
            with contextlib.suppress(OSError):
                made.rmdir()
    if not missing and not os.access(out_dir, os.W_OK | os.X_OK):
        raise InputError(f"{shown}: the folder is not writable for this user; give one you can write")


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
    # the total (steps x windows, known once the engine has planned the request) arrives with the first step
    bar = tqdm(total=None, desc=f"clip {index + 1}/{count}", disable=quiet, file=sys.stderr)

    def progress(step, total, info=None):
        bar.total = total
        bar.update(step - bar.n)
    return bar, progress


def _save(cfg, out_dir, index, request, clip) -> None:
    h, w = clip.meta["height_width"]
    stem = clip_stem(request.prompt, h, w, clip.meta["seed"], index)
    paths = clip.save(out_dir / stem, save_latents=cfg.save_latents)
    print(paths["mp4"], flush=True)
