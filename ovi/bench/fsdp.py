"""`ovi bench fsdp`: memory per rank against FSDP strategy and world size, on real ranks.

For each architecture preset (tiny, mid) a single-rank NO_SHARD run is the reference; then for each
world size and strategy a fresh WorkerGroup loads the model (shard by shard when FSDP shards it) and
makes one clip. A record per point carries the pinned fields (strategy, param_bytes_per_rank,
total_param_bytes, largest_block_bytes, peak_bytes_per_rank: the largest over the ranks) plus the
load-time accounting (bytes each rank read from the checkpoint), the memory model's estimate and the
measured/estimated ratio, the largest difference of the final latents from the reference, and the
step time. The measured clip follows a 1-step warm-up clip, whose peak (first-use allocations
included) is reported as first_generation_peak_bytes_per_rank. Layouts: "sp" runs sequence parallelism over all ranks (FSDP shards over them too);
"replicas" runs FSDP alone (sp 1: every rank computes the whole clip and holds a shard).
peak_bytes_per_rank is what torch's allocator held at most: on a GPU max_memory_allocated, on a CPU the
same from torch.profiler's allocation events (profile_memory); on a CPU the record also carries the
process's resident high-water mark (peak_rss_bytes_per_rank), which adds libraries and freed heap the
C allocator kept.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

SIZES = {"tiny": [128, 128], "mid": [256, 448]}
STRATEGIES = ("NO_SHARD", "SHARD_GRAD_OP", "FULL_SHARD", "FULL_SHARD+offload")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="tiny,mid", help="comma list of presets: tiny, mid")
    parser.add_argument("--world", default="2,4", help="comma list of world sizes (the 1-rank reference always runs)")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma list of " + ", ".join(STRATEGIES))
    parser.add_argument("--layouts", default="sp,replicas", help="comma list: sp (SP over every rank), "
                                                                 "replicas (FSDP alone, sp 1)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps of the measured clip")
    parser.add_argument("--ckpt-root", default=None, help="where the random checkpoints are made (default: temp)")


def measure(arch: str, world: int, strategy: str, layout: str, steps: int, ckpt_dir: Path, reference=None) -> dict:
    import ovi
    from ovi.runtime import WorkerGroup
    name, _, offload = strategy.partition("+")
    fsdp = {} if name == "NO_SHARD" and world == 1 else dict(use_fsdp=True, fsdp_sharding_strategy=name,
                                                               fsdp_cpu_offload=bool(offload))
    cfg = ovi.load_config(model_name=arch, ckpt_dir=str(ckpt_dir), sample_steps=steps, profile_memory=True,
                          video_frame_height_width=SIZES[arch], sp_size=world if layout == "sp" else 1, **fsdp)
    with WorkerGroup(cfg, world_size=world) as group:
        group.generate("a bench clip", steps=1)  # warm-up: first-use allocations (reported apart)
        first = [s["memory"]["peak_bytes_per_rank"] for s in group.stats()]
        clip = group.generate("a bench clip")
        ranks = [s["memory"] for s in group.stats()]
    top = lambda key: max(r[key] for r in ranks)  # noqa: E731
    record = {"bench": "fsdp", "config": arch, "world_size": world, "sp": cfg.sp_size, "layout": layout,
              "strategy": strategy, "fsdp": ranks[0]["fsdp"],
              "param_bytes_per_rank": top("param_bytes_per_rank"), "total_param_bytes": ranks[0]["total_param_bytes"],
              "largest_block_bytes": ranks[0]["largest_block_bytes"], "peak_bytes_per_rank": top("peak_bytes_per_rank"),
              "peak_param_bytes_per_rank": top("peak_param_bytes_per_rank"),
              "load_peak_bytes_per_rank": top("load_peak_bytes"),
              "load_bytes_read_per_rank": max(r.get("load_bytes_read", r["total_param_bytes"]) for r in ranks),
              "estimated_peak_bytes": ranks[0]["estimated_peak_bytes"],
              "measured_over_estimate": top("peak_bytes_per_rank") / ranks[0]["estimated_peak_bytes"],
              "per_rank_peak_bytes": [r["peak_bytes_per_rank"] for r in ranks],
              "text_param_bytes_per_rank": top("text_param_bytes_per_rank"),
              "text_total_param_bytes": ranks[0]["text_total_param_bytes"],
              "first_generation_peak_bytes_per_rank": max(first),
              "peak_rss_bytes_per_rank": max(r["peak_rss_bytes_per_rank"] or 0 for r in ranks) or None,
              "peak_param_gathered_bytes": top("peak_param_bytes_per_rank") - top("param_bytes_per_rank"),
              "step_seconds": clip.meta["timings"]["denoise"] / steps, "steps": steps,
              "device": clip.meta["device"], "measured_peak": ranks[0]["measured_peak"]}
    if reference is not None:
        record["max_abs_diff_vs_single_rank"] = max(float((clip.latents[k] - reference[k]).abs().max())
                                                   for k in ("video", "audio"))
    record["latents"] = clip.latents
    return record


def points(worlds: list[int], strategies: list[str], layouts: list[str]):
    """(world, strategy, layout) of every measured point; NO_SHARD runs only with SP (replicas hold shards)."""
    for world in worlds:
        for layout in layouts:
            for strategy in strategies:
                if layout == "replicas" and strategy == "NO_SHARD":
                    continue
                yield world, strategy, layout


def run(args):
    from ovi.pipeline.random_checkpoint import make_random_checkpoint
    root = Path(args.ckpt_root or tempfile.mkdtemp(prefix="ovi-bench-fsdp-"))
    worlds = [int(w) for w in args.world.split(",")]
    for arch in args.arch.split(","):
        ckpt = root / arch
        make_random_checkpoint(ckpt, arch)
        single = measure(arch, 1, "NO_SHARD", "sp", args.steps, ckpt)
        reference = single.pop("latents")
        yield single
        for world, strategy, layout in points(worlds, args.strategies.split(","), args.layouts.split(",")):
            record = measure(arch, world, strategy, layout, args.steps, ckpt, reference)
            record.pop("latents")
            yield record
