"""One GPU: memory profiles (config `memory_profile`), resolved against the model and the device, applied
to an engine's components, and costed by the memory model.

A profile (ovi.config.MEMORY_PROFILES) is a named set of knobs; a key the config sets itself wins:

| profile  | fused blocks on the device | DiT weights | VAE decode | umT5 runs on |
|----------|----------------------------|-------------|------------|--------------|
| none     | all                        | as stored   | whole      | the device   |
| balanced | all                        | int8        | tiled      | the CPU      |
| low      | half (the rest stream in)  | int8        | tiled      | the CPU      |
| minimal  | none (every block streams) | int8        | tiled      | the CPU      |
| auto     | the first of none, balanced, low, minimal whose estimated peak fits 90% of the device |

Applying: the DiT is loaded on the host (`dit_loads_on_host`), quantised there (ovi.checkpoint.quantize),
then placed: everything on the device, or with block swap (ovi.parallel.offload) the first K fused blocks
and the non-block layers on the device and the rest in (pinned) host memory. The estimate reuses the
FSDP memory model's parts (ovi.parallel.memory: exact parameter bytes on the meta device, activations)
and adds what a profile changes: int8/fp8 block weights, the swapped blocks (K resident + 2 streaming:
the running one and the next one's copy in flight) and the bytes they move per step. FSDP offload on one
GPU is costed by the same table (`estimate_fsdp_offload`, shown by `ovi doctor --gpus 1` beside the
profiles). The settings are resolved before the model loads (Engine.from_config, the rank builder; a
WorkerGroup checks them before spawning: `check_memory_settings`), so a refusal costs no loading.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ovi.checkpoint.loading import FP8
from ovi.checkpoint.quantize import quantize_block_while_loading, quantize_model, require_fp8
from ovi.config import MEMORY_PROFILES, OviConfig
from ovi.errors import ConfigError
from ovi.model import FusionModel
from ovi.model.configs import RANDOM_ARCHITECTURES
from ovi.model.configs import architecture as architecture_configs
from ovi.parallel.measure import free_device_memory
from ovi.parallel.memory import HEADROOM, activation_bytes, param_layout
from ovi.parallel.offload import BlockSwap
from ovi.pipeline.footprint import WAN_DECODER_BYTES_PER_PIXEL, workload

AUTO_ORDER = ("none", "balanced", "low", "minimal")   # least to most memory-saving
TILE_PIXELS = 256 * 256                               # diffusers' AutoencoderKLWan default tile


@dataclass(frozen=True)
class MemorySettings:
    """The knobs one engine runs with, after the profile and the config's own keys are combined."""
    profile: str                      # as configured (auto included)
    chosen: str                       # the profile whose values apply
    blocks_on_device: int | None      # fused blocks kept on the device; None = all (no block swap)
    quantize: str                     # none | int8 | fp8
    vae_tiling: bool
    text_encoder_device: str          # device | cpu
    reason: str = ""

    @property
    def swaps(self) -> bool:
        return self.blocks_on_device is not None

    def to_dict(self) -> dict:
        return asdict(self)


def num_blocks(architecture: str) -> int:
    return int(architecture_configs(architecture)[0]["num_layers"])


def profile_values(name: str, blocks: int) -> dict:
    """A named profile's knobs with its block fraction turned into a count (None: all blocks)."""
    values = dict(MEMORY_PROFILES[name])
    fraction = values["blocks_on_device"]
    values["blocks_on_device"] = None if fraction is None else int(math.floor(fraction * blocks))
    return values


def settings_for(cfg: OviConfig, chosen: str, reason: str = "") -> MemorySettings:
    """The knobs of profile `chosen`, overridden by the keys `cfg` sets itself."""
    blocks = num_blocks(cfg.model)
    values = profile_values(chosen, blocks)
    for key in values:
        if getattr(cfg, key) is not None:
            values[key] = getattr(cfg, key)
    if values["blocks_on_device"] is not None and values["blocks_on_device"] >= blocks:
        values["blocks_on_device"] = None  # every block fits: nothing to swap
    if cfg.qint8:  # mapped at the config edge (ovi.config); the sidecar says so
        reason = "; ".join(filter(None, [reason, "quantize: int8 comes from upstream's qint8: true"]))
    return MemorySettings(profile=cfg.memory_profile, chosen=chosen, reason=reason, **values)


def dit_loads_on_host(cfg: OviConfig) -> bool:
    """Whether the DiT is loaded on the host first and placed by `apply_memory_settings` (any profile or
    knob that quantises or swaps it)."""
    return cfg.memory_profile != "none" or cfg.blocks_on_device is not None or cfg.quantize not in (None, "none")


def quantize_while_loading(cfg: OviConfig):
    """The `after_block` that quantises each fused block as the DiT streams in (load_fusion_model), when
    the config's quantize mode is known before loading (any profile but auto), else None."""
    mode = cfg.quantize if cfg.memory_profile == "auto" else settings_for(cfg, cfg.memory_profile).quantize
    return quantize_block_while_loading(mode)


def text_encoder_on_cpu(cfg: OviConfig) -> bool:
    """Where umT5 loads: known from the config unless the profile is auto (then it loads on the device
    and `apply_memory_settings` moves it)."""
    if cfg.text_encoder_device is not None:
        return cfg.text_encoder_device == "cpu"
    return cfg.memory_profile not in ("none", "auto") and MEMORY_PROFILES[cfg.memory_profile]["text_encoder_device"] == "cpu"


# ---- the estimate ----------------------------------------------------------------------------------
def block_param_bytes(architecture: str, compute: torch.dtype, quantize: str, storage: torch.dtype | None = None
                      ) -> int:
    """Bytes of one fused block (video + audio block) as stored: block Linear weights in int8/fp8 with one
    fp32 scale per output row when quantised (torchao weight-only), the rest in the storage dtype."""
    storage = storage or compute
    with torch.device("meta"):
        model = FusionModel(*architecture_configs(architecture))
    total = 0
    for block in (model.video_model.blocks[0], model.audio_model.blocks[0]):
        for module in block.modules():
            for name, p in module.named_parameters(recurse=False):
                if quantize != "none" and isinstance(module, nn.Linear) and name == "weight":
                    total += p.numel() + p.shape[0] * 4
                elif storage == FP8 and name == "weight" and p.dim() > 1:
                    total += p.numel()
                else:
                    total += p.numel() * (compute.itemsize if storage == FP8 else storage.itemsize)
    return total


def estimate_profile(cfg: OviConfig, settings: MemorySettings, dtype: torch.dtype, *, height_width=None,
                     forwards_per_step: int = 2, device: str = "cuda") -> dict:
    """Device bytes per phase, host bytes, and the bytes block swap moves per denoising step. On a GPU two
    swapped blocks are on the device while streaming (the running one, the next one's copy); on a CPU the
    copies are synchronous, so one."""
    storage = FP8 if cfg.fp8 else dtype
    layout = param_layout(cfg.model, storage, dtype)
    n = num_blocks(cfg.model)
    plain_block = layout.units["block.0"]
    block = block_param_bytes(cfg.model, dtype, settings.quantize, storage)
    non_block = layout.total - n * plain_block
    k = n if settings.blocks_on_device is None else settings.blocks_on_device
    swapped = n - k
    resident = non_block + k * block
    streaming = min(2 if device == "cuda" else 1, swapped) * block
    load = workload(cfg, dtype, height_width)
    acts = activation_bytes(cfg.model, load.video_tokens, load.audio_tokens, compute=dtype)
    text_on_device = settings.text_encoder_device == "device"
    text = load.text_encoder_bytes if text_on_device else 0
    decode = load.decode_bytes
    if settings.vae_tiling and cfg.model not in RANDOM_ARCHITECTURES:  # the VAE's working set: one tile
        clip = _clip_bytes(cfg, height_width)
        pixels = (decode - clip) // (WAN_DECODER_BYTES_PER_PIXEL * 4)
        decode = clip + WAN_DECODER_BYTES_PER_PIXEL * 4 * min(pixels, TILE_PIXELS)
    phases = {"text": resident + load.text_encoder_bytes * text_on_device + load.codec_bytes,
              "denoise": resident + streaming + acts + text + load.codec_bytes,
              "decode": resident + text + load.codec_bytes + decode}
    slg = cfg.slg_layer_index
    skipped = 1 if forwards_per_step > 1 and slg is not None and k <= slg < n else 0  # SLG skips a swapped block
    moved = (forwards_per_step * swapped - skipped) * block
    host = swapped * block + (0 if text_on_device else load.text_encoder_bytes)
    return {"peak_bytes": max(phases.values()), "phases": phases, "host_bytes": host,
            "bytes_moved_per_step": moved, "block_bytes": block, "resident_param_bytes": resident,
            "dit_bytes": non_block + n * block, "file_block_bytes": plain_block,
            "activation_bytes": acts}


def estimate_fsdp_offload(cfg: OviConfig, dtype: torch.dtype, *, shard_text: bool = False, height_width=None,
                          forwards_per_step: int = 2, device: str = "cuda") -> dict:
    """FSDP offload on one GPU (use_fsdp, FULL_SHARD, fsdp_cpu_offload, world 1), costed as the profiles are
    (same keys as `estimate_profile`): the device peak from the FSDP memory model (ovi.parallel.memory:
    no shards on the device, the running fused block and the next one's copy gathered), the DiT's shards
    (and umT5's with `shard_text`) in host memory, and the bytes moved: every FSDP unit is copied to the
    device for every forward (SLG's skipped block excepted), i.e. the whole DiT twice per guided step;
    a sharded umT5 once per clip (`bytes_moved_per_clip`). On CPU ranks (`device` "cpu") the offloaded
    shards sit in the one memory there is; they are left out of the peaks here, as they would be on a GPU."""
    from ovi.parallel.dims import ParallelDims
    from ovi.parallel.memory import estimate
    storage = FP8 if cfg.fp8 else dtype
    layout = param_layout(cfg.model, storage, dtype)
    load = workload(cfg, dtype, height_width)
    dims = ParallelDims(world_size=1, sp=1, fsdp=1, fsdp_strategy="FULL_SHARD", fsdp_offload=True,
                        shard_text=shard_text)
    est = estimate(cfg.model, load, dims, fp8=cfg.fp8, compute=dtype, device=device)
    text_host = load.text_layout.total if shard_text and load.text_layout is not None else 0
    on_host_here = (layout.total + text_host) if device == "cpu" else 0
    phases = {k: v - on_host_here for k, v in est.phases.items()}
    n = num_blocks(cfg.model)
    block = layout.units["block.0"]
    slg = cfg.slg_layer_index
    skipped = 1 if forwards_per_step > 1 and slg is not None and slg < n else 0
    return {"peak_bytes": max(phases.values()), "phases": phases, "host_bytes": layout.total + text_host,
            "bytes_moved_per_step": forwards_per_step * layout.total - skipped * block,
            "bytes_moved_per_clip": text_host, "block_bytes": block, "resident_param_bytes": 0,
            "dit_bytes": layout.total, "file_block_bytes": block, "activation_bytes": est.parts["activations"]}


def _clip_bytes(cfg: OviConfig, height_width=None) -> int:
    """The decoded clip's own bytes (fp32 copies + uint8), as ovi.pipeline.footprint counts them."""
    from ovi.pipeline.images import snap_to_area
    from ovi.specs import MODEL_SPECS
    spec = MODEL_SPECS[cfg.model_name]
    height, width = snap_to_area(*(height_width or cfg.height_width), spec.area)
    clip = 3 * spec.num_frames * height * width
    return 3 * clip * 4 + clip


def resident_param_bytes(components) -> int:
    """Parameter bytes the device holds between forwards under the applied settings: the DiT less its
    swapped blocks, plus umT5 when it runs on the device (counted, as the estimate counts them)."""
    from ovi.checkpoint.quantize import stored_bytes
    model = components.model
    swap = vars(model).get("fused_block")
    swapped = {id(p) for i in (swap.swapped if isinstance(swap, BlockSwap) else ())
               for b in swap.pair(i) for p in b.parameters()}
    total = stored_bytes(p for p in model.parameters() if id(p) not in swapped)
    settings = getattr(model, "memory_settings", None)
    if settings is None or settings.text_encoder_device == "device":
        total += stored_bytes(components.text_encoder.model.parameters())
    return total


# ---- resolving -------------------------------------------------------------------------------------
def resolve_memory_settings(cfg: OviConfig, device: torch.device, dtype: torch.dtype, *,
                            budget_bytes: int | None = None) -> MemorySettings:
    """The settings `cfg` runs with on `device`. `auto` takes the first profile (least saving first) whose
    estimated peak fits 90% of the budget (`device_memory_gb`, else the device's free memory; on a CPU
    there is no separate device memory, so `none`). quantize: fp8 where the device has no fp8 -> error."""
    if cfg.memory_profile != "auto":
        settings = settings_for(cfg, cfg.memory_profile, f"memory_profile {cfg.memory_profile} is set in the config")
        if cfg.memory_profile != "none" and (budget_bytes is not None or cfg.device_memory_gb is not None):
            _check_fits(cfg, settings, dtype, budget_bytes or int(cfg.device_memory_gb * 1e9))
    elif device.type != "cuda" and budget_bytes is None and cfg.device_memory_gb is None:
        settings = settings_for(cfg, "none", f"auto on {device}: the model runs in host memory, nothing to save")
    else:
        if budget_bytes is None:
            budget_bytes = int(cfg.device_memory_gb * 1e9) if cfg.device_memory_gb else free_device_memory(device)
        settings, fits = None, False
        for name in AUTO_ORDER:
            candidate = settings_for(cfg, name)
            peak = estimate_profile(cfg, candidate, dtype)["peak_bytes"]
            if peak <= HEADROOM * budget_bytes:
                settings, fits = candidate, True
                break
        if not fits:
            peak = estimate_profile(cfg, settings_for(cfg, "minimal"), dtype)["peak_bytes"]
            raise ConfigError(f"memory_profile auto: even the minimal profile needs an estimated {peak / 1e9:.1f} GB, "
                              f"more than 90% of the {budget_bytes / 1e9:.1f} GB this device offers; use a smaller "
                              f"video_frame_height_width or a bigger GPU (or several with sp/fsdp)")
        settings = MemorySettings(**{**settings.to_dict(), "profile": "auto", "reason": (
            f"auto: {settings.chosen} is the first profile whose estimated peak ({peak / 1e9:.2f} GB) fits 90% of "
            f"{budget_bytes / 1e9:.2f} GB" + (f"; {settings.reason}" if settings.reason else ""))})
    if (settings.swaps or settings.quantize != "none") and cfg.use_fsdp and cfg.fsdp_sharding_strategy != "NO_SHARD":
        raise ConfigError(f"memory profile {settings.chosen} swaps blocks or quantises the DiT, which FSDP-sharded "
                          f"weights cannot do (FSDP already streams each block; fsdp_cpu_offload is its offload); "
                          f"set memory_profile: none with use_fsdp")
    if settings.swaps and cfg.cpu_offload:
        raise ConfigError(f"memory profile {settings.chosen} swaps blocks, and cpu_offload moves the whole DiT: choose "
                          f"one (cpu_offload: false, or memory_profile none/balanced)")
    if settings.quantize == "fp8":
        require_fp8(device)
    return settings


def check_memory_settings(cfg: OviConfig, device_type: str) -> None:
    """What a launcher can refuse before any rank loads (ovi.runtime.WorkerGroup): quantize: fp8 without fp8
    hardware, a named profile the described device (device_memory_gb) cannot hold, swap/quantise with FSDP
    sharding or cpu_offload. `auto` without device_memory_gb needs each rank's free memory: the ranks decide."""
    if cfg.memory_profile == "auto" and cfg.device_memory_gb is None:
        return
    from ovi.pipeline.engine import resolve_dtype
    device = torch.device(device_type)
    resolve_memory_settings(cfg, device, resolve_dtype(cfg.dtype, device))


def _check_fits(cfg: OviConfig, settings: MemorySettings, dtype: torch.dtype, budget_bytes: int) -> None:
    """A named profile whose estimate exceeds 90% of the device the config describes is refused, naming
    the least saving profile that would fit."""
    peak = estimate_profile(cfg, settings, dtype)["peak_bytes"]
    if peak <= HEADROOM * budget_bytes:
        return
    fits = [name for name in AUTO_ORDER
            if estimate_profile(cfg, settings_for(cfg, name), dtype)["peak_bytes"] <= HEADROOM * budget_bytes]
    fix = f"use memory_profile: {fits[0]} (or auto)" if fits else "no profile fits: use a smaller clip or a bigger GPU"
    raise ConfigError(f"memory_profile {settings.chosen} needs an estimated {peak / 1e9:.2f} GB, more than 90% of the "
                      f"{budget_bytes / 1e9:.2f} GB device (device_memory_gb); {fix}")


# ---- applying --------------------------------------------------------------------------------------
def apply_memory_settings(components, settings: MemorySettings, device: torch.device, *, cpu_offload: bool = False
                          ) -> dict:
    """Quantise and place the DiT (block swap or all on the device; left where it is with cpu_offload, which
    moves it per use), place umT5, set VAE tiling. Returns the sidecar's `memory_profile` record; the
    BlockSwap (if any) is `components.model.fused_block`."""
    model = components.model
    if getattr(model, "memory_settings", None) is not None:
        return {**model.memory_settings.to_dict(), "note": "already applied to this model"}
    record = settings.to_dict()
    record.update(quantize_model(model, settings.quantize, device))
    if settings.swaps:
        swap = BlockSwap(model, device, settings.blocks_on_device)
        record.update(blocks_swapped=len(swap.swapped), swapped_bytes_per_forward=swap.swapped_bytes_per_forward())
    elif not cpu_offload and not any(type(p).__name__ == "DTensor" for p in model.parameters()):
        model.to(device)  # loaded on the host for this profile (FSDP places its own shards)
    if settings.text_encoder_device == "cpu":
        components.text_encoder.to("cpu")
    video_codec = components.video_codec
    if settings.vae_tiling and hasattr(video_codec, "enable_tiling"):
        video_codec.enable_tiling()
        record["vae_tiling_applied"] = True
    elif settings.vae_tiling:
        record["vae_tiling_applied"] = False
        record["vae_tiling_note"] = f"{type(video_codec).__name__} decodes whole clips (tiling applies to the Wan2.2 VAE)"
    audio_codec = components.audio_codec
    if settings.vae_tiling and hasattr(audio_codec, "decode_chunk_frames"):
        audio_codec.decode_chunk_frames = audio_codec.DEFAULT_DECODE_CHUNK
    model.memory_settings = settings
    return record


# ---- planning (`ovi doctor --gpus 1`) --------------------------------------------------------------
FSDP_OFFLOAD_SETTINGS = {"fsdp_offload": False, "fsdp_offload+shard_text": True}  # name -> shard_text_model


def profile_plan(cfg: OviConfig, gpu_memory_gb: float, host_memory_gb: float | None = None,
                 dtype: torch.dtype = torch.bfloat16) -> list[dict]:
    """Every profile of `cfg` on one GPU of `gpu_memory_gb`, then FSDP offload on that one GPU (without and
    with umT5 sharded too), costed the same way: estimated peak, whether it fits 90% of the GPU (and the
    host, when `host_memory_gb` is given), host memory needed, bytes moved per step over the link and an
    expected step time. Step time = max(compute, transfer): the prefetch hides a block's copy behind the
    previous block's compute when the link keeps up (an ideal-overlap bound, not measured); compute at the
    spec-sheet model of ovi.parallel.speed (int8 weight-only counted at bf16 speed); transfer at its
    pinned host -> device rate, a sharded umT5's once-per-clip copy spread over the steps."""
    from ovi.parallel.memory import GB
    from ovi.parallel.speed import forward_flops, gpu_profile
    gpu = gpu_profile(gpu_memory_gb)
    load = workload(cfg, dtype)
    forwards = 2  # positive + negative pass (SLG skips a block in the second)
    compute_s = forwards * forward_flops(cfg.model, load.video_tokens, load.audio_tokens) / (
        gpu.bf16_tflops * 1e12 * gpu.mfu)
    blocks = num_blocks(cfg.model)

    def row(name: str, est: dict, knobs: dict, load_host: int) -> dict:
        moved = est["bytes_moved_per_step"] + est.get("bytes_moved_per_clip", 0) / cfg.sample_steps
        transfer_s = moved / (gpu.pinned_gbps * GB)
        host = max(load_host, est["host_bytes"])
        fits = est["peak_bytes"] <= HEADROOM * gpu_memory_gb * GB
        host_fits = None if host_memory_gb is None else host <= HEADROOM * host_memory_gb * GB
        return {"doctor": "memory_profile", "model_name": cfg.model_name, "gpus": 1,
                "gpu_memory_gb": gpu_memory_gb, "host_memory_gb": host_memory_gb, "profile": name, "blocks": blocks,
                **knobs, "peak_gb": est["peak_bytes"] / GB, "phases_gb": {k: v / GB for k, v in est["phases"].items()},
                "host_gb": host / GB, "bytes_moved_per_step": est["bytes_moved_per_step"],
                "bytes_moved_per_clip": est.get("bytes_moved_per_clip", 0),
                "step_seconds": max(compute_s, transfer_s), "compute_seconds": compute_s,
                "transfer_seconds": transfer_s, "fits": fits and host_fits is not False,
                "fits_gpu": fits, "fits_host": host_fits}

    rows = []
    for name in AUTO_ORDER:
        settings = settings_for(cfg, name)
        est = estimate_profile(cfg, settings, dtype, forwards_per_step=forwards)
        # Loading streams the DiT block by block (load_fusion_model): straight onto the GPU without a
        # profile; else into host memory, each block quantised as it lands (peak: the stored DiT + one block).
        load_host = 0 if name == "none" else est["dit_bytes"] + est["file_block_bytes"]
        load_host += load.text_encoder_bytes if settings.text_encoder_device == "cpu" else 0
        rows.append(row(name, est, {"setting": "memory_profile", "blocks_on_device": settings.blocks_on_device,
                                    "quantize": settings.quantize, "vae_tiling": settings.vae_tiling,
                                    "text_encoder_device": settings.text_encoder_device}, load_host))
    for name, shard_text in FSDP_OFFLOAD_SETTINGS.items():
        # use_fsdp FULL_SHARD + fsdp_cpu_offload on one rank: every block streams from pinned host memory each
        # forward; shards are read from the file one unit at a time (host peak: the shards + one unit)
        est = estimate_fsdp_offload(cfg, dtype, shard_text=shard_text, forwards_per_step=forwards)
        rows.append(row(name, est, {"doctor": "fsdp_offload", "setting": "fsdp", "blocks_on_device": 0, "quantize": "none",
                                    "fp8": cfg.fp8, "vae_tiling": False, "shard_text_model": shard_text,
                                    "text_encoder_device": "host (FSDP shards)" if shard_text else "device"},
                        est["host_bytes"] + est["file_block_bytes"]))
    return rows
