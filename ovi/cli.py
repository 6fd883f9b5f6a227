"""The `ovi` command: generate, queue, checkpoint, bench.

Exit codes (pinned): 0 ok, 2 bad input (one line naming what to fix), 1 runtime failure.
Subcommands register themselves from their own packages so this file stays a thin dispatcher.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from ovi.errors import InputError

BENCHES = ("sp", "fsdp", "lora", "pipeline", "queue")


def _add_bench_parser(subparsers) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovi", description="Ovi Workbench command line")
    subparsers = parser.add_subparsers(dest="command", required=True)
    from ovi.pipeline.cli import add_generate_parser
    from ovi.checkpoint.cli import add_checkpoint_parser
    from ovi.queue.cli import add_queue_parser

    add_generate_parser(subparsers)
    add_queue_parser(subparsers)
    add_checkpoint_parser(subparsers)
    _add_bench_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"ovi: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ovi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
