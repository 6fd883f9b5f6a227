"""`ovi checkpoint {make-tiny, inspect, convert}`."""

from __future__ import annotations

from pathlib import Path

from ovi.errors import CheckpointError

_STORAGE = {"fp8": "float8_e4m3fn", "bf16": "bfloat16", "fp32": "float32"}


def add_checkpoint_parser(subparsers) -> None:
    p = subparsers.add_parser("checkpoint", help="make, inspect and convert checkpoints")
    sub = p.add_subparsers(dest="checkpoint_command", required=True)
    mk = sub.add_parser("make-tiny", help="write a random tiny checkpoint in upstream's layout and key names")
    mk.add_argument("dir")
    mk.add_argument("--seed", type=int, default=0)
    mk.add_argument("--fp8", action="store_true", help="also write model_fp8_e4m3fn.safetensors")
    mk.set_defaults(func=_make_tiny)
    ins = sub.add_parser("inspect", help="check a fusion checkpoint file (or a ckpt_dir) against the model")
    ins.add_argument("path")
    from ovi.model.configs import ARCHITECTURES  # plain dicts: cheap to import at parser build
    ins.add_argument("--arch", choices=sorted(ARCHITECTURES), default=None, help="architecture (default: closest)")
    ins.set_defaults(func=_inspect)
    cv = sub.add_parser("convert", help="re-save a fusion checkpoint with another storage dtype")
    cv.add_argument("src")
    cv.add_argument("dst")
    cv.add_argument("--to", choices=sorted(_STORAGE), required=True)
    cv.set_defaults(func=_convert)


def _make_tiny(args) -> int:
    from ovi.pipeline.random_checkpoint import make_tiny
    print(make_tiny(args.dir, seed=args.seed, fp8=args.fp8))
    return 0


def _inspect(args) -> int:
    from ovi.checkpoint.loading import inspect_checkpoint
    path = Path(args.path)
    files = sorted((path / "Ovi").glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise CheckpointError(f"no Ovi/*.safetensors under {path}; pass a checkpoint file or an upstream ckpt_dir")
    failures = []
    for f in files:
        report = inspect_checkpoint(f, args.arch)
        print(report.summary(limit=20))
        if not report.ok:
            failures.append(report)
    if failures:
        raise CheckpointError(f"{len(failures)} of {len(files)} checkpoint file(s) do not match (see above)")
    return 0


def _convert(args) -> int:
    import torch

    from ovi.checkpoint.loading import convert_checkpoint
    convert_checkpoint(args.src, args.dst, getattr(torch, _STORAGE[args.to]))
    print(args.dst)
    return 0
