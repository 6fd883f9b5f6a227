"""One GPU of 24 / 16 / 12 GB, acted by a big GPU: the memory profiles on random weights of the real shapes.

For each cap (torch.cuda.set_per_process_memory_fraction) and each profile (balanced, low, minimal) a
fresh FusionModel of the real architecture is made on the device (random bf16 weights, nothing
downloaded), quantised and placed as the profile says (ovi.checkpoint.quantize, ovi.parallel.offload
block swap), then the denoising loop's work runs for `--steps` steps of a 720x720 5 s clip (positive and
negative pass per step, SLG skipping block 11): random latents and random text contexts stand in for the
text encoder, which this check leaves out (its phase is not the peak). One JSON line per point: peak
VRAM (max_memory_allocated), host RSS high-water, s/step, bytes moved per step (counted by the swap),
and the memory model's denoise estimate without umT5 and the codecs, with the error.

Written for the lent GPU (experiments/gpu_check.sh); `--device cpu --arch mid` runs the same code as a
smoke test on a CPU (no caps there). Unverified on a GPU so far.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

from ovi.config import load_config
from ovi.model.configs import architecture
from ovi.parallel.offload import BlockSwap
from ovi.pipeline.footprint import latent_shape
from ovi.pipeline.memory_profiles import apply_memory_settings, estimate_profile, settings_for
from random_weights import random_fusion_model  # beside this script
from ovi.specs import MODEL_SPECS


class _Parts:  # what apply_memory_settings places (the DiT only here)
    def __init__(self, model):
        self.model, self.text_encoder, self.video_codec, self.audio_codec = model, None, None, None


def run_point(cfg, profile: str, cap_gb: float | None, device: torch.device, steps: int) -> dict:
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    settings = settings_for(cfg, profile)
    record = {"check": "memory_profile", "model_name": cfg.model_name, "profile": profile, "cap_gb": cap_gb,
              "blocks_on_device": settings.blocks_on_device, "quantize": settings.quantize, "steps": steps}
    est = estimate_profile(cfg, settings.__class__(**{**settings.to_dict(), "text_encoder_device": "cpu"}), dtype,
                           device=device.type)
    # the denoise phase without the codecs (with umT5 off the device the text phase is resident + codecs)
    record["estimated_denoise_bytes"] = est["phases"]["denoise"] - est["phases"]["text"] + est["resident_param_bytes"]
    model = random_fusion_model(cfg.model, device, dtype)
    dit_only = settings.__class__(**{**settings.to_dict(), "vae_tiling": False, "text_encoder_device": "device"})
    apply_memory_settings(_Parts(model), dit_only, device)
    spec = MODEL_SPECS[cfg.model_name]
    c, f, h, w = latent_shape(cfg.model_name, cfg.height_width)
    video = torch.randn(c, f, h, w, device=device, dtype=dtype)
    audio = torch.randn(spec.audio_latent_length, architecture(cfg.model)[1]["in_dim"], device=device, dtype=dtype)
    text_dim = architecture(cfg.model)[0]["text_dim"]
    ctx = [torch.randn(64, text_dim, device=device, dtype=dtype)]
    seq_v, seq_a = f * h * w // 4, audio.shape[0]
    if device.type == "cuda":
        torch.cuda.empty_cache()
        if cap_gb is not None:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, cap_gb * 1e9 / total), device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    swap = vars(model).get("fused_block")
    t0 = time.perf_counter()
    try:
        with torch.no_grad():
            for _ in range(steps):
                t = torch.tensor([500.0], device=device)
                for slg in (False, cfg.slg_layer_index or False):
                    model([video], [audio], t, ctx, ctx, seq_v, seq_a, slg_layer=slg)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        record["status"] = "ok"
    except torch.OutOfMemoryError as exc:
        record["status"] = f"oom: {str(exc)[:200]}"
    seconds = time.perf_counter() - t0
    record["seconds_per_step"] = seconds / steps
    record["host_rss_peak_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    record["bytes_moved_per_step"] = (swap.bytes_moved // steps) if isinstance(swap, BlockSwap) else 0
    record["estimated_bytes_moved_per_step"] = est["bytes_moved_per_step"]
    if device.type == "cuda":
        record["peak_vram_bytes"] = int(torch.cuda.max_memory_allocated(device))
        record["peak_above_start_bytes"] = record["peak_vram_bytes"] - base
        record["model_error"] = record["peak_vram_bytes"] / record["estimated_denoise_bytes"] - 1
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    if isinstance(swap, BlockSwap):
        swap.remove()
    del model, swap, video, audio, ctx
    return record


def main(argv=None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--config", default="ovi_720x720_5s")
    p.add_argument("--arch", default=None, help="override the architecture (mid: a CPU smoke test)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--caps", default="24,16,12")
    p.add_argument("--profiles", default="balanced,low,minimal")
    p.add_argument("--steps", type=int, default=2)
    args = p.parse_args(argv)
    cfg = load_config(args.config)
    if args.arch:
        cfg = cfg.replace(model_name=args.arch, model=args.arch, ckpt_dir="unused")
    device = torch.device(args.device)
    caps = [float(c) for c in args.caps.split(",")] if device.type == "cuda" else [None]
    with open(args.out, "a") as out:
        for cap in caps:
            for profile in args.profiles.split(","):
                record = run_point(cfg, profile, cap, device, args.steps)
                line = json.dumps(record, sort_keys=True)
                print(line, flush=True)
                out.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
