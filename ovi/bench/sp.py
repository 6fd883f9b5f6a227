"""`ovi bench sp`: sequence-parallel schemes compared in one run, on real ranks.

For each architecture preset (tiny, and the mid-size benchmark preset with random weights) and each
(sp, scheme) point - scheme "upstream" (upstream Ovi's collective pattern), "optimized" (packed q/k/v,
replicated audio, log-sum-exp merge) and "optimized+async" (overlapped) - a WorkerGroup runs a warm-up
generation, then a timed one; the record carries the rank-0 per-denoising-step collective count, bytes
sent, time in collectives (wall clock around each call; with --profile also torch.profiler's
gloo/nccl op time), and the step time. sp=1 is the single-rank baseline. On CPUs the ranks use
gloo; on GPUs nccl (one GPU per rank), where the same records compare the schemes at scale.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

SIZES = {"tiny": [128, 128], "mid": [256, 448]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="tiny,mid", help="comma list of presets: tiny, mid")
    parser.add_argument("--sp", default="1,2", help="comma list of sequence-parallel degrees")
    # The names come from ovi.parallel.sequence.SCHEME_CONFIGS, read when the bench runs (building the parser
    # must not import torch: every `ovi` command builds it).
    parser.add_argument("--schemes", default=None, help="comma list of SP schemes (upstream, optimized, "
                                                        "optimized+async); default: all")
    parser.add_argument("--steps", type=int, default=3, help="denoising steps in the timed generation")
    parser.add_argument("--ckpt-root", default=None, help="where the random checkpoints are made (default: temp)")
    parser.add_argument("--profile", nargs="?", const=True, default=None, metavar="DIR",
                        help="also time collectives with torch.profiler (adds overhead to step_seconds); with "
                             "DIR, write each point's traces (one per rank) to DIR/<config>_sp<N>_<scheme>/ for "
                             "TensorBoard")


def _diff(after: dict, before: dict) -> dict:
    steps = after["steps"] - before["steps"]
    per = lambda key: (after[key] - before[key]) / steps if steps else 0.0  # noqa: E731
    return {"collectives_per_step": per("collectives"), "bytes_per_step": per("bytes_sent"),
            "comm_seconds_per_step": per("comm_seconds"), "steps_measured": steps}


def point_name(arch: str, sp: int, scheme: str) -> str:
    return f"{arch}_sp{sp}_{scheme if sp > 1 else 'single'}"


def measure(arch: str, sp: int, scheme: str, steps: int, ckpt_dir: Path, profile: bool | str | None = None,
            extra: dict | None = None) -> dict:
    """One point. `profile`: True times collectives with torch.profiler; a folder also writes the timed
    generation's traces (one file per rank) into <folder>/<point name>/. `extra`: more config keys
    (e.g. use_fsdp), refused by the config when this build cannot run them."""
    import ovi
    from ovi.parallel.sequence import SCHEME_CONFIGS
    from ovi.runtime import WorkerGroup
    trace_dir = Path(profile) / point_name(arch, sp, scheme) if isinstance(profile, (str, Path)) else None
    cfg = ovi.load_config(model_name=arch, ckpt_dir=str(ckpt_dir), sample_steps=steps, sp_size=sp,
                          video_frame_height_width=SIZES[arch], profile_comms=bool(profile),
                          profile_dir=str(trace_dir) if trace_dir else None, **SCHEME_CONFIGS[scheme], **dict(extra or {}))
    with WorkerGroup(cfg, world_size=sp) as group:
        group.generate("a bench clip", steps=1)                     # warm-up: allocations, buffers
        if trace_dir is not None:
            for warm_up_trace in trace_dir.glob("*.pt.trace.json"):  # keep the timed generation's only
                warm_up_trace.unlink()
        before = group.stats()[0]
        clip = group.generate("a bench clip")
        after = group.stats()[0]
        ranks = group.stats()
        threads = group.threads
    from ovi.pipeline.objective import audio_tokens, video_tokens
    return {"bench": "sp", "config": arch, "world_size": sp, "sp": sp, "scheme": scheme if sp > 1 else "single",
            **_diff(after, before), "step_seconds": clip.meta["timings"]["denoise"] / steps,
            "video_tokens": video_tokens(clip.latents["video"].shape),
            "audio_tokens": audio_tokens(clip.latents["audio"].shape),
            "device": clip.meta["device"], "backend": "nccl" if clip.meta["device"].startswith("cuda") else "gloo",
            "threads_per_rank": threads, "steps": steps, "profiled": bool(profile),
            "profiled_comm_seconds_per_step": after.get("profiled_comm_seconds_per_step"),
            "peak_bytes_per_rank": [r.get("max_memory_allocated") or r.get("max_rss_bytes") for r in ranks],
            "trace_dir": str(trace_dir) if trace_dir is not None else None,
            "loras": [{"name": r["name"], "merged": r["merged"]} for r in clip.meta["loras"]]}


def run(args):
    from ovi.errors import InputError
    from ovi.parallel.sequence import SCHEME_CONFIGS
    from ovi.pipeline.random_checkpoint import make_random_checkpoint
    schemes = args.schemes.split(",") if args.schemes else list(SCHEME_CONFIGS)
    unknown = [s for s in schemes if s not in SCHEME_CONFIGS]
    if unknown:
        raise InputError(f"--schemes: unknown SP scheme {unknown[0]!r}; use a comma list of {', '.join(SCHEME_CONFIGS)}")
    root = Path(args.ckpt_root or tempfile.mkdtemp(prefix="ovi-bench-sp-"))
    for arch in args.arch.split(","):
        ckpt = root / arch
        make_random_checkpoint(ckpt, arch)
        for sp in (int(s) for s in args.sp.split(",")):
            for scheme in (schemes if sp > 1 else ["optimized"]):
                yield measure(arch, sp, scheme, args.steps, ckpt, args.profile)
