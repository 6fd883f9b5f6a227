"""`ovi bench sweep --file SWEEP.yaml`: a grid of benchmark points, one JSON line each, resumable.

A sweep file (experiments/sweeps/*.yaml) names the bench, the output file and the grid:

    bench: sp
    out: experiments/results/sweep_sp_tiny.jsonl
    profile: experiments/results/traces/sweep_sp_tiny    # optional: torch.profiler traces per point
    fixed: {steps: 2}
    grid: {arch: [tiny], sp: [1, 2], scheme: [upstream, optimized], fsdp: ["off"], lora: [base]}

Every point of the grid's product is measured in turn and appended to `out` as soon as it ends, as
{"sweep", "point", "status": "ok", ...the bench's record} or, when it raised, {"status": "failed",
"error"}: a failing point (a feature not on this build yet, a crashed rank) is recorded and the sweep
goes on. Run it again and the points already `ok` in `out` are skipped (failed ones are tried again),
so an interrupted sweep resumes. Plots read `out` (experiments/plot_results.py).
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
from pathlib import Path

import yaml

from ovi.config import PENDING_FEATURES
from ovi.errors import InputError, NotAvailableError

SWEEP_KEYS = ("bench", "out", "profile", "fixed", "grid")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--file", required=True, help="sweep yaml (experiments/sweeps/*.yaml)")
    parser.add_argument("--ckpt-root", default=None, help="where random checkpoints are made (default: temp)")


def load_sweep(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"sweep file {str(path)!r} not found; fix the path")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = [k for k in spec if k not in SWEEP_KEYS]
    if unknown:
        raise InputError(f"{path}: unknown key {unknown[0]!r}; a sweep has {', '.join(SWEEP_KEYS)}")
    if spec.get("bench") not in POINT_RUNNERS:
        raise InputError(f"{path}: bench {spec.get('bench')!r} cannot be swept; use one of {', '.join(POINT_RUNNERS)}")
    grid = spec.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise InputError(f"{path}: grid must map each axis to a non-empty list of values")
    if not spec.get("out"):
        raise InputError(f"{path}: out (the JSON lines file) is required")
    return {"name": path.stem, "fixed": {}, "profile": None, **spec}


def points(grid: dict) -> list[dict]:
    axes = list(grid)
    return [dict(zip(axes, values)) for values in itertools.product(*(grid[a] for a in axes))]


def point_key(point: dict) -> str:
    return json.dumps(point, sort_keys=True)


def finished_points(out: Path) -> set[str]:
    if not out.exists():
        return set()
    done = set()
    for line in out.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash mid-write: that point runs again
        if record.get("status") == "ok":
            done.add(point_key(record["point"]))
    return done


def latest_records(out: str | Path) -> list[dict]:
    """The last record of every point in a sweep's output (what plots show)."""
    latest = {}
    for line in Path(out).read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        latest[point_key(record["point"])] = record
    return list(latest.values())


def sp_normalise(point: dict) -> dict:
    """One rank has no SP scheme: sp=1 points differing only in scheme are one point."""
    return {**point, "scheme": "optimized"} if int(point.get("sp", 1)) == 1 and "scheme" in point else point


def sp_point(point: dict, *, ckpt_root: Path, profile: str | None) -> dict:
    """The sp bench at one point; axes arch, sp, scheme, steps, plus fsdp (off | a strategy) and lora
    (base | merged | unmerged), which are refused until those features are on this build."""
    from ovi.bench.sp import measure
    from ovi.pipeline.random_checkpoint import make_random_checkpoint

    extra = {}
    fsdp = str(point.get("fsdp", "off"))
    if fsdp != "off":
        extra.update(use_fsdp=True, fsdp_sharding_strategy=fsdp)
    lora = str(point.get("lora", "base"))
    if lora != "base" and "lora" in PENDING_FEATURES:
        raise NotAvailableError(f"lora mode {lora!r} needs the LoRA feature, which is not on this build yet")
    arch = point.get("arch", "tiny")
    ckpt = ckpt_root / arch
    make_random_checkpoint(ckpt, arch)
    return measure(arch, int(point.get("sp", 1)), point.get("scheme", "optimized"), int(point.get("steps", 2)),
                   ckpt, profile, extra=extra)


POINT_RUNNERS = {"sp": sp_point}
NORMALISERS = {"sp": sp_normalise}


def run_sweep(spec: dict, *, ckpt_root: str | Path | None = None, log=print):
    """Measure every point not yet ok in spec["out"]; yields each new record (also appended to out)."""
    out = Path(spec["out"])
    out.parent.mkdir(parents=True, exist_ok=True)
    root = Path(ckpt_root or tempfile.mkdtemp(prefix="ovi-sweep-"))
    done = finished_points(out)
    measure = POINT_RUNNERS[spec["bench"]]
    normalise = NORMALISERS.get(spec["bench"], dict)
    for point in points(spec["grid"]):
        point = normalise({**spec["fixed"], **point})
        if point_key(point) in done:
            log(f"skip (done): {point_key(point)}")
            continue
        t0 = time.perf_counter()
        try:
            record = {"status": "ok", **measure(point, ckpt_root=root, profile=spec.get("profile"))}
        except Exception as exc:  # recorded, and the sweep goes on
            record = {"status": "failed", "error": f"{type(exc).__name__}: {exc}",
                      "not_available": isinstance(exc, NotAvailableError)}
        record.update(sweep=spec["name"], point=point, point_seconds=time.perf_counter() - t0)
        with out.open("a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if record["status"] == "ok":
            done.add(point_key(point))  # a duplicate point later in the grid is not run twice
        yield record


def run(args):
    yield from run_sweep(load_sweep(args.file), ckpt_root=args.ckpt_root, log=lambda _: None)
