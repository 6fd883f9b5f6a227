"""The memory model: what one rank holds at its peak under its ParallelDims (sp, cfg, FSDP strategy and
degree, fsdp offload, text sharding) with the config's cpu_offload, fp8 and SP scheme, and the choice the
FSDP `auto` strategy makes from it. `ovi doctor` prints the same estimates. Measuring is
ovi.parallel.measure's, the speed model ovi.parallel.speed's.

Three phases of a generation, and what is on the device in each:

* text:    the text encoder's parameters (with shard_text_model: its shards plus the units gathered at
           once, as for the DiT), and whatever stays resident; its working set is not counted (the
           real umT5's attention scores are about 0.1 GB, against 11.4 GB of parameters);
* denoise: the DiT's parameters - all of them (NO_SHARD), this rank's shards (sharded; none on the
           device with fsdp offload) plus the units gathered at once (`ParamLayout.gathered_peak`:
           FULL_SHARD/HYBRID the running fused block plus the next one's gather in flight, i.e. its
           all-gather buffer and, on gloo, the flat copy gloo makes of it; SHARD_GRAD_OP the whole
           model) - and the activations of one fused block (below);
* decode:  the codecs' parameters and working memory (a `Workload` input).
Upstream's `cpu_offload` keeps every component off the device except in its own phase (the DiT too,
unless FSDP manages it). Parameter bytes are counted exactly on the meta device (storage dtypes, fp8
rule, FSDP's dim-0 padding); the peak is the largest phase.

Activations (per rank, `l` = this rank's tokens of a branch, D/F = model/FFN width, b = compute bytes),
from the tensors the block code keeps alive: through the forward x (D l b per branch; with per-token
timesteps, as i2v and continuation windows have, also the per-token e and e0: 7 D l b more, and each
block's modulations, 6 D l b; one timestep for every token keeps them broadcast views), the text
context and the rope tables (complex128); inside a fused block the larger of an attention's working set (q, k, v, out and the float64 rope
rotation: 5 D l b + 24 D l, with the text keys/values) and the FFN's (2 F l b + 3 D l b). Checked
against the tensors one forward really keeps alive (tests/parallel/test_memory.py). Attention kernels
are assumed not to materialise the L x L scores (flash / SDPA without a mask).
The estimate counts tensors, as CUDA's max_memory_allocated does (not the allocator's cache, CUDA
context or libraries); `ovi bench fsdp` reports measured peak / estimate (ovi.parallel.measure).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from ovi.checkpoint.loading import FP8, storage_dtype_for
from ovi.model import FusionModel
from ovi.model.configs import architecture as architecture_configs
from ovi.parallel.dims import SHARDING_STRATEGIES, ParallelDims
from ovi.parallel.fsdp import HEADS, owned_parameters, text_shard_units, tie_input_embedding, unit_parameters

GB = 1e9


# ---- parameter bytes (exact, on the meta device) ---------------------------------------------------
@dataclass(frozen=True)
class ParamLayout:
    """The DiT's parameter bytes by FSDP unit, and per tensor (rows, bytes per row) for sharded sizes."""
    units: dict[str, int]
    tensors: dict[str, tuple[tuple[int, int], ...]]   # unit -> ((rows, row_bytes), ...)

    @property
    def total(self) -> int:
        return sum(self.units.values())

    @property
    def largest(self) -> int:
        return max(self.units.values())

    @property
    def block(self) -> int:
        return max(v for k, v in self.units.items() if k.startswith("block."))

    @property
    def embed(self) -> int:
        return max(v for k, v in self.units.items() if k.endswith("_embed"))

    @property
    def patch_conv(self) -> int:
        """The largest patch-embedding convolution unit (the audio SwiGLU's), 0 when there is none."""
        return max((v for k, v in self.units.items() if "_patch_mlp." in k), default=0)

    def gathered_peak(self, strategy: str, degree: int, *, gloo: bool = False) -> int:
        """Parameter bytes gathered at once, beyond the shards (measured on gloo ranks, tests/parallel).
        FSDP2 all-gathers a unit into a buffer, then copies it out into the parameters: a unit costs 2x
        its size while both exist; gloo also clones the buffer while the collective runs. FULL_SHARD:
        the heads, plus either an embedding unit with one patch convolution being gathered, or the
        running fused block with the next one's all-gather in flight. SHARD_GRAD_OP: all of it, plus the
        largest unit's buffer."""
        copies = 2 + (gloo and degree > 1)  # one rank copies its shard in, without a collective
        if strategy == "SHARD_GRAD_OP":
            return int(self.total + (copies - 1) * max(self.block, self.embed, self.patch_conv))
        embeddings = max(2 * self.embed, self.embed + 2 * self.patch_conv)
        return int(self.units[HEADS] + max(embeddings, copies * self.block))

    def shard_bytes(self, degree: int) -> int:
        """One rank's shard storage at FSDP degree `degree` (each tensor's dim 0 padded to a multiple)."""
        if degree == 1:
            return self.total
        return sum(-(-rows // degree) * row for unit in self.tensors.values() for rows, row in unit)


@functools.lru_cache(maxsize=None)
def param_layout(architecture: str, storage: torch.dtype, compute: torch.dtype) -> ParamLayout:
    """Unit and tensor sizes of `architecture` stored as `storage` (fp8: the upstream rule, with norms
    and biases in `compute`), counted on the meta device."""
    with torch.device("meta"):
        model = FusionModel(*architecture_configs(architecture))
    tensors = {}
    for unit, params in unit_parameters(model).items():
        tensors[unit] = [(p.shape[0], p.numel() // p.shape[0] * storage_dtype_for(name, compute, storage).itemsize)
                         for name, p in params]
    units = {unit: sum(rows * row for rows, row in items) for unit, items in tensors.items()}
    return ParamLayout(units, {unit: tuple(items) for unit, items in tensors.items()})


def text_param_layout(encoder: nn.Module) -> ParamLayout:
    """Unit and tensor sizes of a T5-family text encoder (meta device is fine) as shard_text_encoder
    splits it: the token embedding, each block, the root's final norm (HEADS)."""
    tie_input_embedding(encoder)
    tensors = {unit: tuple((p.shape[0], p.numel() // p.shape[0] * p.element_size()) for _, p in params)
               for unit, params in owned_parameters(encoder, text_shard_units(encoder)).items()}
    return ParamLayout({unit: sum(rows * row for rows, row in items) for unit, items in tensors.items()}, tensors)


def storage_for(fp8: bool, compute: torch.dtype) -> torch.dtype:
    return FP8 if fp8 else compute


# ---- activations -----------------------------------------------------------------------------------
def activation_bytes(architecture: str, video_tokens: int, audio_tokens: int, *, sp: int = 1,
                     scheme: str = "optimized", compute: torch.dtype = torch.bfloat16,
                     per_token_timesteps: bool = True) -> int:
    """Peak activation bytes of one fused forward on one rank (see the module docstring).
    `per_token_timesteps`: a clean prefix (i2v, continuation windows) gives tokens different
    timesteps, which materialises the modulations per token; the default counts that case, the
    larger one, so a plan never under-counts."""
    video, audio = architecture_configs(architecture)
    b = compute.itemsize
    lv = math.ceil(video_tokens / sp)
    la = audio_tokens if scheme == "optimized" else math.ceil(audio_tokens / sp)  # optimized replicates audio
    total = block = 0
    for config, local, tokens in ((video, lv, video_tokens), (audio, la, audio_tokens)):
        d, head_dim, text = config["dim"], config["dim"] // config["num_heads"], config["text_len"]
        per_token = 7 * local if per_token_timesteps else 0
        total += (local + per_token + text) * d * b + 8 * tokens * head_dim  # x, e, e0, text; rope table
        block += (6 * d * local * b) if per_token_timesteps else 0           # this block's modulations
    d, f, text = video["dim"], video["ffn_dim"], video["text_len"]
    larger = max(lv, la)
    attention = 5 * d * larger * b + 24 * d * larger + 2 * text * d * b  # q/k/v/out, float64 rope, text k/v
    return total + block + max(attention, (2 * f + 3 * d) * larger * b)


# ---- the estimate ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Workload:
    """One clip's sizes besides the DiT: token counts, other components' parameters, codec working memory."""
    video_tokens: int
    audio_tokens: int
    text_encoder_bytes: int
    codec_bytes: int
    decode_bytes: int = 0        # the codecs' working memory while decoding one clip
    text_layout: ParamLayout | None = None  # the text encoder's FSDP units (for shard_text_model)


def label(dims: ParallelDims, *, cpu_offload: bool = False, fp8: bool = False) -> str:
    """A setting in words: "4 ranks sp=4 FULL_SHARD+fsdp_offload shard_text fp8"."""
    parts = [f"{dims.world_size} ranks", f"sp={dims.sp}"] + (["cfg=2"] if dims.cfg == 2 else [])
    parts.append((dims.fsdp_strategy or "NO_SHARD") + ("+fsdp_offload" if dims.fsdp_offload else ""))
    parts += ["shard_text"] * dims.shard_text + ["cpu_offload"] * cpu_offload + ["fp8"] * fp8
    return " ".join(parts)


def config_options(cfg) -> dict:
    """What besides its degrees changes a rank's memory: the config's cpu_offload, fp8 and SP scheme."""
    return {"cpu_offload": bool(cfg.cpu_offload), "fp8": bool(cfg.fp8),
            "scheme": "optimized" if cfg.use_optimized_comms else "upstream"}


@dataclass(frozen=True)
class Estimate:
    dims: ParallelDims
    options: dict                 # cpu_offload, fp8, scheme
    phases: dict[str, int]        # text / denoise / decode -> bytes on one device
    parts: dict[str, int]         # the denoise phase's parts
    device: str = "cuda"

    def label(self) -> str:
        return label(self.dims, cpu_offload=self.options["cpu_offload"], fp8=self.options["fp8"])

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    def as_dict(self) -> dict:
        return {"setting": {**self.dims.describe(), **self.options}, "label": self.label(), "peak_bytes": self.peak,
                "phases": dict(self.phases), "denoise_parts": dict(self.parts)}


def estimate(architecture: str, workload: Workload, dims: ParallelDims, *, cpu_offload: bool = False,
             fp8: bool = False, scheme: str = "optimized", compute: torch.dtype = torch.bfloat16,
             device: str = "cuda") -> Estimate:
    """Bytes one rank holds in each phase under `dims` with these options (see the module docstring)."""
    layout = param_layout(architecture, storage_for(fp8, compute), compute)
    sharded = dims.fsdp_strategy in SHARDING_STRATEGIES
    if sharded:
        # offloaded shards leave the device, unless the device is the host's memory itself (CPU ranks)
        shards = 0 if dims.fsdp_offload and device != "cpu" else layout.shard_bytes(dims.fsdp)
        gathered = layout.gathered_peak(dims.fsdp_strategy, dims.fsdp, gloo=device == "cpu")
        dit_idle = shards
    else:
        shards, gathered = layout.total, 0
        dit_idle = 0 if cpu_offload else layout.total
    acts = activation_bytes(architecture, workload.video_tokens, workload.audio_tokens, sp=dims.sp,
                            scheme=scheme, compute=compute)
    if sharded and dims.shard_text and workload.text_layout is not None:
        # the text encoder's shards stay (on the host with fsdp offload); it gathers while it encodes
        text_layout = workload.text_layout
        text = 0 if dims.fsdp_offload and device != "cpu" else text_layout.shard_bytes(dims.fsdp)
        encoding = text + text_layout.gathered_peak("FULL_SHARD", dims.fsdp, gloo=device == "cpu")
    else:
        text = 0 if cpu_offload else workload.text_encoder_bytes
        encoding = workload.text_encoder_bytes
    codecs = 0 if cpu_offload else workload.codec_bytes
    parts = {"dit_params": shards, "dit_gathered": gathered, "activations": acts, "text_encoder": text,
             "codecs": codecs}
    phases = {"text": dit_idle + encoding + codecs,
              "denoise": sum(parts.values()),
              "decode": dit_idle + text + workload.codec_bytes + workload.decode_bytes}
    return Estimate(dims, {"cpu_offload": cpu_offload, "fp8": fp8, "scheme": scheme}, phases, parts, device)


# ---- the `auto` choice -----------------------------------------------------------------------------
HEADROOM = 0.9   # plan for 90% of the free memory: the allocator and fragmentation take the rest


def auto_candidates(dims: ParallelDims, *, offload_required: bool) -> list[ParallelDims]:
    """The resolutions `auto` tries for `dims` (strategy "auto"), cheapest (fastest) first: NO_SHARD (not
    with replicas, which exist only to hold shards), FULL_SHARD over `dims.fsdp` ranks, FULL_SHARD + offload
    (only the last with offload_required)."""
    no_shard = [dims.with_fsdp("NO_SHARD", False)] if dims.per_cfg == dims.sp and not offload_required else []
    full = [dims.with_fsdp("FULL_SHARD", False)] if not offload_required else []
    return no_shard + full + [dims.with_fsdp("FULL_SHARD", True)]


@dataclass
class AutoChoice:
    strategy: str
    offload: bool
    reason: str
    estimates: list[dict] = field(default_factory=list)


def choose_strategy(architecture: str, workload: Workload, candidates: list[ParallelDims], budget_bytes: int, *,
                    compute: torch.dtype, device: str, cpu_offload: bool = False, fp8: bool = False,
                    scheme: str = "optimized") -> AutoChoice:
    """The first candidate whose estimated peak fits `HEADROOM` x `budget_bytes`, with the reason; when
    none fits, the one with the smallest peak (and a reason saying it probably will not fit)."""
    usable = int(HEADROOM * budget_bytes)
    estimates = [estimate(architecture, workload, c, cpu_offload=cpu_offload, fp8=fp8, scheme=scheme, compute=compute,
                          device=device) for c in candidates]
    records = [e.as_dict() for e in estimates]
    tried = "; ".join(f"{e.label()} needs {e.peak / GB:.2f} GB" for e in estimates)
    for e in estimates:
        if e.peak <= usable:
            why = (f"auto chose {e.dims.fsdp_strategy}{' with fsdp_cpu_offload' if e.dims.fsdp_offload else ''}: "
                   f"estimated peak {e.peak / GB:.2f} GB per device fits {usable / GB:.2f} GB "
                   f"({HEADROOM:.0%} of {budget_bytes / GB:.2f} GB); tried {tried}")
            return AutoChoice(e.dims.fsdp_strategy, e.dims.fsdp_offload, why, records)
    best = min(estimates, key=lambda e: e.peak)
    why = (f"auto chose {best.dims.fsdp_strategy}{' with fsdp_cpu_offload' if best.dims.fsdp_offload else ''}, the "
           f"smallest estimate, but nothing fits {usable / GB:.2f} GB ({HEADROOM:.0%} of {budget_bytes / GB:.2f} GB): "
           f"{tried}; expect an out-of-memory error (add ranks, fp8: true or cpu_offload: true)")
    return AutoChoice(best.dims.fsdp_strategy, best.dims.fsdp_offload, why, records)
