"""Run one `ovi bench` benchmark and store its JSON lines under experiments/results/.

    .venv/bin/python experiments/run_bench.py pipeline [bench options]
    .venv/bin/python experiments/run_bench.py sp --arch tiny,mid

Writes experiments/results/<bench>.jsonl (replacing it atomically) with a host/time stamp on every
record, and echoes each line. `experiments/plot_results.py` makes the plots from these files.
"""

from __future__ import annotations

import argparse
import importlib
import json
import socket
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print(__doc__)
        return 2
    name = argv.pop(0)
    module = importlib.import_module(f"ovi.bench.{name}")
    parser = argparse.ArgumentParser(prog=f"run_bench.py {name}")
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    parser.add_argument("--results", type=Path, default=RESULTS / f"{name}.jsonl")
    args = parser.parse_args(argv)
    stamp = {"host": socket.gethostname(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    lines = []
    for record in module.run(args):
        line = json.dumps({**record, **stamp}, sort_keys=True)
        print(line, flush=True)
        lines.append(line)
    write_results(args.results, lines)
    return 0


def write_results(path: Path, lines: list[str]) -> None:
    """Replace a results file with these JSON lines, atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(main())
