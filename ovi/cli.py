"""The `ovi` command: generate, queue, checkpoint, bench, doctor.

Exit codes (pinned): 0 ok, 2 bad input (one line naming what to fix), 1 runtime failure.
Subcommands register themselves from ovi.commands so this file stays a thin dispatcher.
"""

from __future__ import annotations

import argparse
import sys

from ovi.errors import InputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovi", description="Ovi Workbench command line")
    subparsers = parser.add_subparsers(dest="command", required=True)
    from ovi.commands.bench import add_bench_parser
    from ovi.commands.checkpoint import add_checkpoint_parser
    from ovi.commands.doctor import add_doctor_parser
    from ovi.commands.generate import add_generate_parser
    from ovi.commands.queue import add_queue_parser

    add_generate_parser(subparsers)
    add_queue_parser(subparsers)
    add_checkpoint_parser(subparsers)
    add_bench_parser(subparsers)
    add_doctor_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"ovi: error: {exc}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:  # a prompt csv or yaml the user gave that is not UTF-8
        print(f"ovi: error: a file given is not UTF-8 text (byte {exc.start}: {exc.reason}); save it "
              f"as UTF-8", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ovi: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
