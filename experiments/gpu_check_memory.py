"""One GPU of 24 / 16 / 12 GB, acted by a big GPU: the memory profiles on random weights of the real shapes.

For each profile (balanced, low, minimal) a fresh FusionModel of the real architecture is made on the
device once (random bf16 weights, nothing downloaded), quantised and placed as the profile says
(ovi.checkpoint.quantize, ovi.parallel.offload block swap). Then, for each cap from the largest down
(torch.cuda.set_per_process_memory_fraction: the weights already on the device count against it, as on a
card of that size; CUDA's context does not), the denoising loop's work runs for `--steps` steps of a
720x720 5 s clip (positive and negative pass per step, SLG skipping its block): random latents and
random text contexts stand in for the text encoder, which this check leaves out (its phase is not the
peak). A profile that runs out of memory under a cap is not tried under the smaller ones.

One JSON line per point: peak VRAM (max_memory_allocated), host RSS high-water over the point
(ovi.parallel.measure.PeakMeter), s/step (the last step; the first, with its warm-up, apart), bytes moved
per step (counted by the swap) and the memory model's denoise estimate without umT5 and the codecs, with
the error. `--budget-seconds` stops starting points once spent (a `skipped` line each), so the section
keeps to its share of one device call.

Written for the lent GPU (experiments/gpu_check.sh); `--device cpu --arch mid` (or tiny) runs the same
code as a smoke test on a CPU (no caps there). Unverified on a GPU so far.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from ovi.config import load_config
from ovi.model.configs import architecture
from ovi.parallel.measure import PeakMeter
from ovi.parallel.offload import BlockSwap
from ovi.pipeline.footprint import latent_shape
from ovi.pipeline.memory_profiles import apply_memory_settings, estimate_profile, settings_for
from random_weights import random_fusion_model  # beside this script
from ovi.specs import MODEL_SPECS


class _Parts:  # what apply_memory_settings places (the DiT only here)
    def __init__(self, model):
        self.model, self.text_encoder, self.video_codec, self.audio_codec = model, None, None, None


def _inputs(cfg, device, dtype):
    spec = MODEL_SPECS[cfg.model_name]
    c, f, h, w = latent_shape(cfg.model_name, cfg.height_width)
    g = torch.Generator(device).manual_seed(0)
    video = torch.randn(c, f, h, w, device=device, dtype=dtype, generator=g)
    audio = torch.randn(spec.audio_latent_length, architecture(cfg.model)[1]["in_dim"], device=device, dtype=dtype,
                        generator=g)
    ctx = [torch.randn(64, architecture(cfg.model)[0]["text_dim"], device=device, dtype=dtype, generator=g)]
    return video, audio, ctx, f * h * w // 4, audio.shape[0]


def _denoise_estimate(cfg, settings, dtype, device) -> dict:
    """The memory model's denoise phase without umT5 and the codecs (this check loads neither)."""
    est = estimate_profile(cfg, settings.__class__(**{**settings.to_dict(), "text_encoder_device": "cpu"}), dtype,
                           device=device.type)
    # with umT5 off the device the text phase is resident + codecs: take both away from denoise, add resident back
    return {"estimated_denoise_bytes": est["phases"]["denoise"] - est["phases"]["text"] + est["resident_param_bytes"],
            "estimated_bytes_moved_per_step": est["bytes_moved_per_step"]}


def run_profile(cfg, profile: str, caps: list, device: torch.device, steps: int, deadline: float, emit) -> None:
    """Build the profile's model once, then run it under each cap (largest first)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    settings = settings_for(cfg, profile)
    base = {"check": "memory_profile", "model_name": cfg.model_name, "profile": profile,
            "blocks_on_device": settings.blocks_on_device, "quantize": settings.quantize, "steps": steps,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
            **_denoise_estimate(cfg, settings, dtype, device)}
    if time.monotonic() > deadline:
        for cap in caps:
            emit({**base, "cap_gb": cap, "status": "skipped: time budget spent"})
        return
    host = PeakMeter(torch.device("cpu"))
    t0 = time.perf_counter()
    model = random_fusion_model(cfg.model, device, dtype)
    dit_only = settings.__class__(**{**settings.to_dict(), "vae_tiling": False, "text_encoder_device": "device"})
    apply_memory_settings(_Parts(model), dit_only, device)
    base["build_seconds"] = time.perf_counter() - t0  # make + quantise + place (pinning the swapped blocks)
    swap = vars(model).get("fused_block")
    video, audio, ctx, seq_v, seq_a = _inputs(cfg, device, dtype)
    failed_at = None
    for cap in caps:
        record = {**base, "cap_gb": cap}
        if failed_at is not None or time.monotonic() > deadline:
            why = f"out of memory under {failed_at} GB" if failed_at is not None else "time budget spent"
            emit({**record, "status": f"skipped: {why}"})
            continue
        if device.type == "cuda":
            torch.cuda.empty_cache()
            if cap is not None:
                total = torch.cuda.get_device_properties(device).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, cap * 1e9 / total), device)
            torch.cuda.reset_peak_memory_stats(device)
            record["resident_bytes"] = torch.cuda.memory_allocated(device)
        host.reset()
        moved_before = swap.bytes_moved if isinstance(swap, BlockSwap) else 0
        step_seconds = []
        try:
            with torch.no_grad():
                for _ in range(steps):
                    t = time.perf_counter()
                    timestep = torch.tensor([500.0], device=device)
                    for slg in (False, cfg.slg_layer_index or False):
                        model([video], [audio], timestep, ctx, ctx, seq_v, seq_a, slg_layer=slg)
                    if device.type == "cuda":
                        torch.cuda.synchronize(device)
                    step_seconds.append(time.perf_counter() - t)
            record["status"] = "ok"
        except torch.OutOfMemoryError as exc:
            record["status"] = f"oom: {str(exc)[:200]}"
            failed_at = cap
        record["first_step_seconds"] = step_seconds[0] if step_seconds else None
        record["seconds_per_step"] = step_seconds[-1] if step_seconds else None
        record["host_rss_peak_bytes"] = host.peak() + host.baseline  # the process's high-water over this point
        moved = (swap.bytes_moved - moved_before) if isinstance(swap, BlockSwap) else 0
        record["bytes_moved_per_step"] = moved // max(1, len(step_seconds))
        if device.type == "cuda":
            record["peak_vram_bytes"] = int(torch.cuda.max_memory_allocated(device))
            record["model_error"] = record["peak_vram_bytes"] / record["estimated_denoise_bytes"] - 1
            torch.cuda.set_per_process_memory_fraction(1.0, device)
        emit(record)
    if isinstance(swap, BlockSwap):
        swap.remove()
    del model, swap, video, audio, ctx
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", help="JSON lines are appended here")
    p.add_argument("--config", default="ovi_720x720_5s")
    p.add_argument("--arch", default=None, help="override the architecture (mid or tiny: a CPU smoke test)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--caps", default="24,16,12", help="GB caps, acted by set_per_process_memory_fraction")
    p.add_argument("--profiles", default="balanced,low,minimal")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--budget-seconds", type=float, default=None,
                   help="start no new point after this many seconds (each unrun point gets a `skipped` line)")
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    if args.arch:
        cfg = cfg.replace(model_name=args.arch, model=args.arch, ckpt_dir="unused")
    device = torch.device(args.device)
    caps = sorted((float(c) for c in args.caps.split(",")), reverse=True) if device.type == "cuda" else [None]
    deadline = time.monotonic() + (args.budget_seconds if args.budget_seconds is not None else float("inf"))
    with open(args.out, "a") as out:
        def emit(record: dict) -> None:
            line = json.dumps(record, sort_keys=True)
            print(line, flush=True)
            out.write(line + "\n")
            out.flush()  # a timeout kill keeps every finished point
        for profile in args.profiles.split(","):
            run_profile(cfg, profile, caps, device, args.steps, deadline, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
