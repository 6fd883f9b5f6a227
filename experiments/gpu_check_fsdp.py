"""FSDP and memory-model checks for a lent GPU machine (called by experiments/gpu_check.py; never by CI).

What the CPU machines cannot show, recorded as JSON lines:
  - configure_fsdp_for_ampere on CUDA: bf16 MixedPrecisionPolicy over fp32 weights, one nccl rank,
    output vs the fp32 CPU reference and max_memory_allocated;
  - WorkerGroups on nccl (one rank per GPU; one rank on a 1-GPU machine): NO_SHARD, FULL_SHARD with
    fsdp_cpu_offload (pinned host shards; also with the text encoder sharded: FSDP moves its inputs),
    fp8 + FULL_SHARD, and with >= 2 GPUs FULL_SHARD / SHARD_GRAD_OP / shard_text_model over the GPUs:
    final latents vs NO_SHARD, CUDA peak vs the memory model's estimate;
  - the real architecture at real size with random weights: one fused forward at the 720x720 5 s token
    count (parameters + activations vs the estimate), and the Wan2.2 VAE decoding a 5 s 704x704 clip
    (the decode working memory the model only guesses).
`smoke(device)` runs the same code paths small on any device (tests it on a CPU before a GPU session).
"""

from __future__ import annotations

import os
import tempfile

import torch


def _worker_group_points(emit, out, root: str, arch: str, hw, gpus: int, device: str) -> None:
    import ovi
    from ovi.pipeline.random_checkpoint import make_random_checkpoint
    from ovi.runtime import WorkerGroup
    ckpt = make_random_checkpoint(f"{root}/{arch}", arch, fp8=True)
    points = [("NO_SHARD", 1, {}), ("FULL_SHARD+offload", 1, dict(fsdp_sharding_strategy="FULL_SHARD",
                                                                   fsdp_cpu_offload=True)),
              ("FULL_SHARD fp8", 1, dict(fsdp_sharding_strategy="FULL_SHARD", fp8=True)),
              ("FULL_SHARD+offload+text", 1, dict(fsdp_sharding_strategy="FULL_SHARD", fsdp_cpu_offload=True,
                                                  shard_text_model=True))]
    if gpus >= 2:
        points += [("FULL_SHARD", gpus, dict(fsdp_sharding_strategy="FULL_SHARD")),
                   ("SHARD_GRAD_OP", gpus, dict(fsdp_sharding_strategy="SHARD_GRAD_OP")),
                   ("FULL_SHARD fp8", gpus, dict(fsdp_sharding_strategy="FULL_SHARD", fp8=True)),
                   ("FULL_SHARD alone", gpus, dict(fsdp_sharding_strategy="FULL_SHARD", sp_size=1)),
                   ("FULL_SHARD+text", gpus, dict(fsdp_sharding_strategy="FULL_SHARD", shard_text_model=True))]
    reference = {}
    for name, world, overrides in points:
        fsdp = dict(use_fsdp=True, **overrides) if overrides else {}
        cfg = ovi.load_config(model_name=arch, ckpt_dir=str(ckpt), sample_steps=3, video_frame_height_width=hw,
                              device=device, sp_size=overrides.get("sp_size", world),
                              **{k: v for k, v in fsdp.items() if k != "sp_size"})
        with WorkerGroup(cfg, world_size=world) as group:
            clip = group.generate("a red ball bounces")
            mems = [s["memory"] for s in group.stats()]
        want = reference.setdefault("fp8" if cfg.fp8 else "full precision", clip.latents)
        rel = max(float((clip.latents[k] - want[k]).norm() / want[k].norm()) for k in ("video", "audio"))
        emit({"check": "fsdp_worker_group", "arch": arch, "strategy": name, "world_size": world,
              "rel_diff_vs_first_run_of_its_dtype": rel,
              "peak_bytes_per_rank": max(m["peak_bytes_per_rank"] for m in mems),
              "estimated_peak_bytes": mems[0]["estimated_peak_bytes"],
              "measured_over_estimate": max(m["peak_bytes_per_rank"] for m in mems) / mems[0]["estimated_peak_bytes"],
              "param_bytes_per_rank": max(m["param_bytes_per_rank"] for m in mems),
              "text_param_bytes_per_rank": max(m["text_param_bytes_per_rank"] for m in mems),
              "peak_param_bytes_per_rank": max(m["peak_param_bytes_per_rank"] for m in mems),
              "measured_peak": mems[0]["measured_peak"], "denoise_seconds": clip.meta["timings"]["denoise"]}, out)


def _configure_for_ampere(emit, out, root: str, arch: str, device: torch.device) -> None:
    """configure_fsdp_for_ampere on a 1-rank group: bf16 gathers of fp32 weights on CUDA."""
    import torch.distributed as dist

    from ovi.checkpoint.loading import load_fusion_model
    from ovi.parallel.fsdp import configure_fsdp_for_ampere
    from ovi.pipeline.random_checkpoint import make_random_checkpoint
    ckpt = make_random_checkpoint(f"{root}/{arch}", arch)
    file = ckpt / "Ovi" / "model.safetensors"
    g = torch.Generator().manual_seed(0)
    vid, aud = torch.randn(48, 5, 16, 28, generator=g), torch.randn(22, 20, generator=g)
    ctx = torch.randn(40, 64, generator=g)
    args = ([vid], [aud], torch.tensor([900]), [ctx], [ctx], 5 * 8 * 14, 22)
    with torch.no_grad():
        want = load_fusion_model(file, arch)(*args)[0][0]
    store = dist.FileStore(tempfile.mktemp(prefix="ovi-gpu-check-store-"), 1)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=0, world_size=1)
    try:
        model = configure_fsdp_for_ampere(load_fusion_model(file, arch), device_id=0, num_gpus=1)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        moved = [[t.to(device) for t in a] if isinstance(a, list) else (a.to(device) if torch.is_tensor(a) else a)
                 for a in args]
        with torch.no_grad():
            got = model(*moved)[0][0].float().cpu()
        emit({"check": "configure_fsdp_for_ampere", "arch": arch, "device": str(device),
              "param_dtype_gathered": str(model.video_model.blocks[0].self_attn.q.weight.dtype),
              "rel_err_vs_cpu_fp32": float((got - want).norm() / want.norm()),
              "max_memory_allocated": torch.cuda.max_memory_allocated() if device.type == "cuda" else None}, out)
    finally:
        dist.destroy_process_group()


def _real_size(emit, out, device: torch.device) -> None:
    """The real architecture with random weights (bf16): parameters + one fused forward at the 720x720
    5 s token count, and the Wan2.2 VAE decoding a 5 s 704x704 clip, vs the memory model."""
    import ovi
    from ovi.codecs.wan_vae import make_wan22_vae
    from random_weights import random_fusion_model  # beside this script
    from ovi.parallel.memory import activation_bytes, param_layout
    from ovi.pipeline.footprint import WAN_DECODER_BYTES_PER_PIXEL, latent_shape, sequence_lengths, workload
    cfg = ovi.load_config("ovi_720x720_5s")
    video_tokens, audio_tokens = sequence_lengths(cfg.model_name, cfg.height_width)
    _, f, h, w = latent_shape(cfg.model_name, cfg.height_width)
    model = random_fusion_model("ovi", device, torch.bfloat16)
    torch.cuda.reset_peak_memory_stats()
    params = torch.cuda.memory_allocated()
    vid = torch.randn(48, f, h, w, device=device)
    aud = torch.randn(audio_tokens, 20, device=device)
    ctx = torch.randn(120, 4096, device=device)
    with torch.no_grad():
        model([vid], [aud], torch.tensor([900], device=device), [ctx], [ctx], video_tokens, audio_tokens)
    torch.cuda.synchronize()
    emit({"check": "real_size_forward", "video_tokens": video_tokens, "param_bytes": params,
          "param_bytes_model": param_layout("ovi", torch.bfloat16, torch.bfloat16).total,
          "activation_peak_bytes": torch.cuda.max_memory_allocated() - params,
          "activation_bytes_model": activation_bytes("ovi", video_tokens, audio_tokens)}, out)
    del model
    torch.cuda.empty_cache()
    vae = make_wan22_vae().to(device=device, dtype=torch.bfloat16).eval().requires_grad_(False)
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.no_grad():
        vae.decode(torch.randn(1, 48, 31, 44, 44, device=device, dtype=torch.bfloat16))
    torch.cuda.synchronize()
    load = workload(cfg.replace(video_frame_height_width=[704, 704]), torch.bfloat16)
    emit({"check": "wan_vae_decode", "frames": 121, "height_width": [704, 704],
          "decode_peak_bytes": torch.cuda.max_memory_allocated() - base, "decode_bytes_model": load.decode_bytes,
          "decoder_bytes_per_pixel_assumed": WAN_DECODER_BYTES_PER_PIXEL}, out)


def run(emit, out, device: torch.device) -> None:
    root = tempfile.mkdtemp(prefix="ovi-gpu-fsdp-")
    gpus = torch.cuda.device_count() if device.type == "cuda" else 1
    _configure_for_ampere(emit, out, root, "mid", device)
    for arch, hw in (("tiny", [128, 128]), ("mid", [256, 448])):
        _worker_group_points(emit, out, root, arch, hw, gpus, device.type)
    if device.type == "cuda" and torch.cuda.get_device_properties(device).total_memory > 60e9:
        _real_size(emit, out, device)


def smoke(device: str = "cpu") -> list[dict]:
    """The WorkerGroup and configure_fsdp_for_ampere paths, small, on `device` (for a CPU dry run)."""
    records = []

    def emit(record, _out):
        records.append(record)
    root = tempfile.mkdtemp(prefix="ovi-gpu-fsdp-smoke-")
    _configure_for_ampere(emit, None, root, "tiny", torch.device(device))
    _worker_group_points(emit, None, root, "tiny", [128, 128], 1, device)
    return records


if __name__ == "__main__":
    for record in smoke(os.environ.get("OVI_SMOKE_DEVICE", "cpu")):
        print(record)
