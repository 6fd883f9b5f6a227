"""The GPU speed model `ovi doctor` ranks settings with: expected seconds per denoising step from spec-sheet
figures (`GpuProfile`), upstream's measured SP scaling, the FSDP gathers a prefetch cannot hide and the
module moves of offloading. A model, not a measurement (the measurements are `ovi bench`'s)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ovi.model.configs import architecture as architecture_configs
from ovi.parallel.dims import SHARDING_STRATEGIES, ParallelDims
from ovi.parallel.memory import GB, Workload, param_layout, storage_for


@dataclass(frozen=True)
class GpuProfile:
    """Spec-sheet figures the speed estimate assumes for a kind of GPU (not measured here)."""
    name: str
    bf16_tflops: float        # dense tensor-core bf16
    pinned_gbps: float        # host -> device copies from pinned memory (FSDP offload)
    pageable_gbps: float      # whole-module moves (upstream's cpu_offload: .to(device) / .cpu())
    peer_gbps: float          # all-gather bandwidth per GPU
    mfu: float = 0.4          # fraction of peak the DiT reaches


PCIE_CARD = GpuProfile("PCIe card (RTX 3090/4090 class)", 71, 25, 10, 20)
NVLINK_CARD = GpuProfile("NVLink card (A100/H100 class)", 989, 50, 20, 300)
# Upstream's measured SP scaling (its README: 83 s at sp 1, 55 s at 4, 40 s at 8; H100s with FA3).
UPSTREAM_SP_SPEEDUP = {1: 1.0, 4: 83 / 55, 8: 83 / 40}


def gpu_profile(memory_gb: float) -> GpuProfile:
    return PCIE_CARD if memory_gb <= 48 else NVLINK_CARD


def sp_speedup(sp: int) -> float:
    """Upstream's measured SP speed-up, interpolated geometrically in log2(sp)."""
    points = sorted(UPSTREAM_SP_SPEEDUP.items())
    for (a, sa), (b, sb) in zip(points, points[1:]):
        if a <= sp <= b:
            w = math.log2(sp / a) / math.log2(b / a)
            return sa * (sb / sa) ** w
    return points[-1][1] * (sp / points[-1][0]) ** 0.5


def forward_flops(architecture: str, video_tokens: int, audio_tokens: int, text_tokens: int = 512) -> float:
    """Matmul + attention FLOPs of one fused forward (both branches), counted from the configs."""
    video, audio = architecture_configs(architecture)
    total = 0.0
    for config, tokens, other in ((video, video_tokens, audio_tokens), (audio, audio_tokens, video_tokens)):
        d, f, n = config["dim"], config["ffn_dim"], config["num_layers"]
        per_token = 2 * (4 * d * d + 4 * d * d + 2 * d * f)        # self-attn, cross-attn q/o + text k/v, FFN
        fusion = 2 * 2 * d * d * other                               # k/v projections of the other branch
        attention = 4 * d * tokens * (tokens + text_tokens + other)  # scores + weighted sum
        total += n * (per_token * tokens + fusion + attention)
    return total


def step_seconds(architecture: str, workload: Workload, dims: ParallelDims, profile: GpuProfile, steps: int,
                 *, cpu_offload: bool = False, fp8: bool = False, compute: torch.dtype = torch.bfloat16) -> float:
    """Expected seconds per denoising step (both guidance passes) on one of `profile`'s GPUs: compute at
    `profile.mfu` scaled by upstream's SP speed-up, plus the FSDP gathers a prefetch cannot hide, plus
    per-clip module moves spread over the steps."""
    layout = param_layout(architecture, storage_for(fp8, compute), compute)
    strategy = dims.fsdp_strategy or "NO_SHARD"
    passes = 2 / dims.cfg
    flops = passes * forward_flops(architecture, workload.video_tokens, workload.audio_tokens)
    compute_s = flops / (profile.bf16_tflops * 1e12 * profile.mfu) / sp_speedup(dims.sp)
    blocks = sum(1 for unit in layout.units if unit.startswith("block."))
    n = dims.fsdp
    exposed = 0.0

    def gather(nbytes):
        seconds = nbytes * (n - 1) / n / (profile.peer_gbps * GB)
        return seconds + (nbytes / n / (profile.pinned_gbps * GB) if dims.fsdp_offload else 0.0)
    if strategy in SHARDING_STRATEGIES:
        if strategy == "SHARD_GRAD_OP":
            exposed = gather(layout.total) / steps
        else:
            per_block = compute_s / passes / blocks
            hidden = max(0.0, gather(layout.block) - per_block)
            unhidden = gather(layout.total - blocks * layout.block)  # embeddings and heads: no prefetch
            exposed = passes * (blocks * hidden + unhidden)
    text_sharded = dims.shard_text and strategy in SHARDING_STRATEGIES and workload.text_layout is not None
    if text_sharded:
        exposed += gather(workload.text_layout.total) / steps  # the text encoder, gathered once per clip
    moved = 0
    if cpu_offload:  # upstream's whole-module moves (FSDP places a sharded text encoder itself)
        moved = (0 if text_sharded else workload.text_encoder_bytes) + workload.codec_bytes
        moved += layout.total if strategy not in SHARDING_STRATEGIES else 0
    return compute_s + exposed + 2 * moved / (profile.pageable_gbps * GB) / steps
