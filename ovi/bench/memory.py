"""`ovi bench memory`: each memory profile (none, balanced, low, minimal) on one device, and FSDP offload on
one rank beside them (`fsdp_offload`), measured against the memory model
(ovi.pipeline.memory_profiles.estimate_profile / estimate_fsdp_offload).

Per profile a fresh Engine loads the model (random `mid` weights by default), makes a 1-step warm-up clip
and then the measured clip. Pinned fields: `profile`, `peak_device_bytes`, `peak_host_bytes`,
`bytes_moved_per_step`, `max_latent_diff` (against the `none` profile's latents, same seed),
`seconds` (the measured clip), `estimated_peak_bytes`; also `measured_over_estimate`, the knobs that
ran and the estimate's phases.

What "device" means: on a GPU, CUDA's max_memory_allocated over the clip. On a CPU there is no separate
device, so `peak_device_bytes` is what the device would hold: the parameters resident between forwards
(the DiT less its swapped blocks, umT5 when it runs on the device; counted) plus the peak of torch's CPU
allocator during the clip (measured with torch.profiler, every thread: activations, the streamed block
copies, decoding). `peak_host_bytes` is the process's resident high-water mark from before the engine
loads to the end of the clip (PeakMeter; on a CPU it includes everything). `bytes_moved_per_step` is
counted by the block swap (host -> device copies) over the measured clip.
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time

PROFILES = ("none", "balanced", "low", "minimal")
FSDP_OFFLOAD = "fsdp_offload"   # use_fsdp FULL_SHARD + fsdp_cpu_offload on one rank, beside the profiles
CHOICES = (*PROFILES, FSDP_OFFLOAD)
SIZES = {"tiny": [128, 128], "mid": [256, 448]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="mid", help="random-weight preset: tiny or mid (default mid)")
    parser.add_argument("--profiles", default=",".join(CHOICES), help="comma list of " + ", ".join(CHOICES)
                        + f" ({FSDP_OFFLOAD}: FSDP FULL_SHARD with fsdp_cpu_offload on one rank)")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps of the measured clip")
    parser.add_argument("--ckpt-dir", default=None, help="where the random checkpoint is made (default: temp)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")


def measure(cfg, reference=None) -> tuple[dict, dict]:
    import torch

    import ovi
    from ovi.parallel.measure import PeakMeter, allocated_peak, count_cpu_allocations
    from ovi.parallel.offload import BlockSwap
    from ovi.pipeline.engine import resolve_device
    from ovi.pipeline.memory_profiles import estimate_profile, resident_param_bytes

    device = resolve_device(cfg.device)
    gc.collect()  # the previous profile's engine is gone before the host baseline is taken
    host = PeakMeter(torch.device("cpu"))
    meter = PeakMeter(device)
    engine = ovi.Engine.from_config(cfg)
    engine.generate("a bench clip", seed=0, steps=1)               # warm-up: first-use allocations
    swap = vars(engine.model).get("fused_block")
    moved_before = swap.bytes_moved if isinstance(swap, BlockSwap) else 0
    meter.reset()
    t0 = time.perf_counter()
    with count_cpu_allocations() if device.type == "cpu" else _null() as every_thread:
        clip = engine.generate("a bench clip", seed=0)
    seconds = time.perf_counter() - t0
    if device.type == "cuda":
        peak = meter.peak()
    else:
        peak = resident_param_bytes(engine.components) + allocated_peak(engine.last_profile, every_thread=every_thread)
    moved = (swap.bytes_moved - moved_before) if isinstance(swap, BlockSwap) else 0
    guided = not engine.guidance_off(engine.plan("a bench clip"))
    est = estimate_profile(cfg, engine.memory_settings, engine.dtype, forwards_per_step=2 if guided else 1,
                           device=device.type)
    latents = {k: v.float() for k, v in clip.latents.items()}
    diff = None if reference is None else max(float((latents[k] - reference[k]).abs().max()) for k in latents)
    settings = engine.memory_settings
    record = {"bench": "memory", "config": cfg.model_name, "world_size": 1, "device": str(device),
              "profile": settings.profile, "blocks_on_device": settings.blocks_on_device,
              "quantize": settings.quantize, "vae_tiling": settings.vae_tiling,
              "text_encoder_device": settings.text_encoder_device, "steps": cfg.sample_steps,
              "peak_device_bytes": int(peak), "peak_host_bytes": int(host.peak()),
              "bytes_moved_per_step": moved // cfg.sample_steps,
              "estimated_bytes_moved_per_step": est["bytes_moved_per_step"],
              "max_latent_diff": diff, "seconds": seconds, "estimated_peak_bytes": est["peak_bytes"],
              "measured_over_estimate": peak / est["peak_bytes"], "estimated_phases": est["phases"],
              "estimated_host_bytes": est["host_bytes"], "resident_param_bytes": resident_param_bytes(engine.components),
              "measured_peak": "cuda max_memory_allocated" if device.type == "cuda"
              else "resident parameters (counted) + cpu allocator peak (profiled)"}
    return record, latents


def measure_fsdp_offload(cfg, reference=None) -> dict:
    """FSDP offload on one rank (a WorkerGroup of 1: FSDP shards through a process group), measured the
    way the profiles are and against the same memory model (estimate_fsdp_offload). On a CPU the
    offloaded shards live in the one memory there is: `peak_device_bytes` leaves them out (the rank's
    measured peak less its shard bytes), as a GPU would hold them in host memory. Bytes moved per step:
    the fused-block gathers the rank counted over the measured clip times a block's bytes, plus the
    non-block units, which FSDP gathers once per forward (forwards counted by the engine)."""
    import torch

    from ovi.parallel.measure import PeakMeter
    from ovi.parallel.memory import param_layout, storage_for
    from ovi.pipeline.engine import resolve_device, resolve_dtype
    from ovi.pipeline.memory_profiles import estimate_fsdp_offload, num_blocks
    from ovi.runtime import WorkerGroup

    cfg = cfg.replace(use_fsdp=True, fsdp_sharding_strategy="FULL_SHARD", fsdp_cpu_offload=True,
                      memory_profile="none", world_size=1, sp_size=1)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    gc.collect()
    host = PeakMeter(torch.device("cpu"))
    with WorkerGroup(cfg, world_size=1) as group:
        group.generate("a bench clip", seed=0, steps=1)       # warm-up: first-use allocations
        gathers_before = group.stats()[0]["memory"]["block_gathers"]
        t0 = time.perf_counter()
        clip = group.generate("a bench clip", seed=0)
        seconds = time.perf_counter() - t0
        stats = group.stats()[0]
    memory = stats["memory"]
    forwards = clip.meta["forwards"]
    layout = param_layout(cfg.model, storage_for(cfg.fp8, dtype), dtype)
    block = layout.units["block.0"]
    non_block = layout.total - num_blocks(cfg.model) * block
    moved = (memory["block_gathers"] - gathers_before) * block + forwards * non_block
    est = estimate_fsdp_offload(cfg, dtype, forwards_per_step=forwards // cfg.sample_steps, device=device.type)
    peak = memory["peak_bytes_per_rank"] - (memory["param_bytes_per_rank"] if device.type == "cpu" else 0)
    # the rank's resident high-water mark above its size before loading, over loading and over the clip
    rank_host = max(memory["load_peak_bytes"] if device.type == "cpu" else 0, memory.get("peak_rss_bytes_per_rank") or 0)
    latents = {k: v.float() for k, v in clip.latents.items()}
    diff = None if reference is None else max(float((latents[k] - reference[k]).abs().max()) for k in latents)
    return {"bench": "memory", "config": cfg.model_name, "world_size": 1, "device": str(device),
            "profile": FSDP_OFFLOAD, "strategy": "FULL_SHARD", "fsdp_cpu_offload": True, "blocks_on_device": 0,
            "quantize": "none", "vae_tiling": False, "text_encoder_device": "device", "steps": cfg.sample_steps,
            "peak_device_bytes": int(peak), "peak_host_bytes": int(rank_host), "launcher_host_bytes": int(host.peak()),
            "bytes_moved_per_step": moved // cfg.sample_steps,
            "estimated_bytes_moved_per_step": est["bytes_moved_per_step"], "forwards": forwards,
            "block_gathers": memory["block_gathers"] - gathers_before,
            "max_latent_diff": diff, "seconds": seconds, "estimated_peak_bytes": est["peak_bytes"],
            "measured_over_estimate": peak / est["peak_bytes"], "estimated_phases": est["phases"],
            "estimated_host_bytes": est["host_bytes"], "resident_param_bytes": 0,
            "shard_bytes_on_host": memory["param_bytes_per_rank"],
            "measured_peak": ("cuda max_memory_allocated" if device.type == "cuda" else
                              "the rank's resident tensors + cpu allocator peak (profiled), less its offloaded shards")}


def _null():
    import contextlib
    return contextlib.nullcontext(False)


def run(args):
    import ovi
    from ovi.errors import InputError

    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    bad = [p for p in profiles if p not in CHOICES]
    if bad:
        raise InputError(f"--profiles: unknown profile {bad[0]!r}; choose from {', '.join(CHOICES)}")
    if args.arch not in SIZES:
        raise InputError(f"--arch {args.arch!r}: choose tiny or mid (random weights, made on first use)")
    if args.steps < 1:
        raise InputError("--steps must be at least 1")
    ckpt = args.ckpt_dir or tempfile.mkdtemp(prefix=f"ovi_bench_memory_{args.arch}_")
    reference = None
    for profile in ["none"] + [p for p in profiles if p != "none"]:
        cfg = ovi.load_config(model_name=args.arch, ckpt_dir=ckpt, sample_steps=args.steps, profile_memory=True,
                              video_frame_height_width=SIZES[args.arch], device=args.device,
                              memory_profile="none" if profile == FSDP_OFFLOAD else profile)
        if profile == FSDP_OFFLOAD:
            yield measure_fsdp_offload(cfg, reference)
            continue
        record, latents = measure(cfg, reference)
        if profile == "none":
            reference = latents
            record["max_latent_diff"] = 0.0
            if "none" not in profiles:
                continue
        yield record
