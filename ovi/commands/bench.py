"""`ovi bench NAME`: run a benchmark from ovi.bench; one JSON object per measured point."""

from __future__ import annotations

import importlib
import json

from ovi.errors import InputError

BENCHES = ("sp", "fsdp", "lora", "pipeline", "queue", "sweep", "quality", "memory", "long")


def add_bench_parser(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="run a benchmark; one JSON object per measured point")
    sub = bench.add_subparsers(dest="bench_name", required=True)
    for name in BENCHES:
        p = sub.add_parser(name, help=f"{name} benchmark")
        p.add_argument("--json", action="store_true", help="print JSON lines only")
        p.add_argument("--out", default=None, help="also append the JSON lines to this file")
        try:
            module = importlib.import_module(f"ovi.bench.{name}")
        except ModuleNotFoundError:
            module = None
        if module is not None and hasattr(module, "add_arguments"):
            module.add_arguments(p)
        p.set_defaults(func=_run_bench, bench_module=f"ovi.bench.{name}")


def _run_bench(args) -> int:
    try:
        module = importlib.import_module(args.bench_module)
    except ModuleNotFoundError:
        raise InputError(f"benchmark '{args.bench_name}' is not available in this build yet")
    out = open(args.out, "a") if args.out else None
    try:
        for record in module.run(args):
            line = json.dumps(record, sort_keys=True)
            print(line, flush=True)
            if out:
                out.write(line + "\n")
    finally:
        if out:
            out.close()
    return 0
