"""The memory model: what one rank holds at its peak under a setting (sp, FSDP strategy, offload, fp8),
and the choice the FSDP `auto` strategy makes from it. `ovi doctor` prints the same estimates.

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
from the tensors the block code keeps alive: through the forward x, e and the per-token e0 (8 D l b per
branch), the text context and the rope tables (complex128); inside a fused block both branches'
modulations (6 D l b) plus the larger of an attention's working set (q, k, v, out and the float64 rope
rotation: 5 D l b + 24 D l, with the text keys/values) and the FFN's (2 F l b + 3 D l b). Checked
against the tensors one forward really keeps alive (tests/parallel/test_memory.py). Attention kernels
are assumed not to materialise the L x L scores (flash / SDPA without a mask).
The estimate counts tensors, as CUDA's max_memory_allocated does (not the allocator's cache, CUDA
context or libraries); `ovi bench fsdp` reports measured peak / estimate. On a CPU the measured peak
comes from torch.profiler's allocation events, with the allocator counting every thread
(`count_cpu_allocations`, `allocated_peak`: frees on gloo's worker threads are never recorded as
events, and a plain running sum of the events counted those buffers alive for the rest of the run).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
from dataclasses import asdict, dataclass, field, replace

import torch
from torch import nn
from torch._C._profiler import _EventType

from ovi.checkpoint.loading import FP8, storage_dtype_for
from ovi.model import FusionModel
from ovi.model.configs import architecture as architecture_configs
from ovi.parallel.dims import SHARDING_STRATEGIES
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
                     scheme: str = "optimized", compute: torch.dtype = torch.bfloat16) -> int:
    """Peak activation bytes of one fused forward on one rank (see the module docstring)."""
    video, audio = architecture_configs(architecture)
    b = compute.itemsize
    lv = math.ceil(video_tokens / sp)
    la = audio_tokens if scheme == "optimized" else math.ceil(audio_tokens / sp)  # optimized replicates audio
    total = block = 0
    for config, local, tokens in ((video, lv, video_tokens), (audio, la, audio_tokens)):
        d, head_dim, text = config["dim"], config["dim"] // config["num_heads"], config["text_len"]
        total += (8 * local + text) * d * b + 8 * tokens * head_dim  # x, e, e0, text context; rope table
        block += 6 * d * local * b                                    # this block's modulations
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


@dataclass(frozen=True)
class Setting:
    """One way to run: degrees, FSDP strategy and offloads. `fsdp` is the shard degree."""
    sp: int = 1
    cfg: int = 1
    replicas: int = 1            # SP groups per CFG group (FSDP without SP: sp 1, several replicas)
    strategy: str = "NO_SHARD"
    fsdp: int = 1
    fsdp_offload: bool = False
    cpu_offload: bool = False
    fp8: bool = False
    scheme: str = "optimized"
    shard_text: bool = False     # the text encoder sharded too (with a sharding strategy)

    @property
    def world_size(self) -> int:
        return self.sp * self.cfg * self.replicas

    def label(self) -> str:
        parts = [f"{self.world_size} ranks", f"sp={self.sp}"] + (["cfg=2"] if self.cfg == 2 else [])
        parts.append(self.strategy + ("+fsdp_offload" if self.fsdp_offload else ""))
        parts += ["shard_text"] * self.shard_text + ["cpu_offload"] * self.cpu_offload + ["fp8"] * self.fp8
        return " ".join(parts)


@dataclass(frozen=True)
class Estimate:
    setting: Setting
    phases: dict[str, int]        # text / denoise / decode -> bytes on one device
    parts: dict[str, int]         # the denoise phase's parts
    device: str = "cuda"

    @property
    def peak(self) -> int:
        return max(self.phases.values())

    def as_dict(self) -> dict:
        return {"setting": asdict(self.setting), "label": self.setting.label(), "peak_bytes": self.peak,
                "phases": dict(self.phases), "denoise_parts": dict(self.parts)}


def estimate(architecture: str, workload: Workload, setting: Setting, *, compute: torch.dtype = torch.bfloat16,
             device: str = "cuda") -> Estimate:
    """Bytes one rank holds in each phase under `setting` (see the module docstring)."""
    layout = param_layout(architecture, storage_for(setting.fp8, compute), compute)
    sharded = setting.strategy in SHARDING_STRATEGIES
    if sharded:
        # offloaded shards leave the device, unless the device is the host's memory itself (CPU ranks)
        shards = 0 if setting.fsdp_offload and device != "cpu" else layout.shard_bytes(setting.fsdp)
        gathered = layout.gathered_peak(setting.strategy, setting.fsdp, gloo=device == "cpu")
        dit_idle = shards
    else:
        shards, gathered = layout.total, 0
        dit_idle = 0 if setting.cpu_offload else layout.total
    acts = activation_bytes(architecture, workload.video_tokens, workload.audio_tokens, sp=setting.sp,
                            scheme=setting.scheme, compute=compute)
    if sharded and setting.shard_text and workload.text_layout is not None:
        # the text encoder's shards stay (on the host with fsdp offload); it gathers while it encodes
        text_layout = workload.text_layout
        text = 0 if setting.fsdp_offload and device != "cpu" else text_layout.shard_bytes(setting.fsdp)
        encoding = text + text_layout.gathered_peak("FULL_SHARD", setting.fsdp, gloo=device == "cpu")
    else:
        text = 0 if setting.cpu_offload else workload.text_encoder_bytes
        encoding = workload.text_encoder_bytes
    codecs = 0 if setting.cpu_offload else workload.codec_bytes
    parts = {"dit_params": shards, "dit_gathered": gathered, "activations": acts, "text_encoder": text,
             "codecs": codecs}
    phases = {"text": dit_idle + encoding + codecs,
              "denoise": sum(parts.values()),
              "decode": dit_idle + text + workload.codec_bytes + workload.decode_bytes}
    return Estimate(setting, phases, parts, device)


# ---- the `auto` choice -----------------------------------------------------------------------------
HEADROOM = 0.9   # plan for 90% of the free memory: the allocator and fragmentation take the rest


def auto_candidates(base: Setting, fsdp: int, *, offload_required: bool) -> list[Setting]:
    """The settings `auto` tries for `base`'s degrees, cheapest (fastest) first: NO_SHARD (not with
    replicas, which exist only to hold shards), FULL_SHARD over `fsdp` ranks, FULL_SHARD + offload (only
    the last with offload_required)."""
    full = replace(base, strategy="FULL_SHARD", fsdp=fsdp, fsdp_offload=False)
    no_shard = replace(full, strategy="NO_SHARD", fsdp=1, shard_text=False)
    out = [] if offload_required else [no_shard] * (base.replicas == 1) + [full]
    return out + [replace(full, fsdp_offload=True)]


@dataclass
class AutoChoice:
    strategy: str
    offload: bool
    reason: str
    estimates: list[dict] = field(default_factory=list)


def choose_strategy(architecture: str, workload: Workload, candidates: list[Setting], budget_bytes: int, *,
                    compute: torch.dtype, device: str) -> AutoChoice:
    """The first candidate whose estimated peak fits `HEADROOM` x `budget_bytes`, with the reason; when
    none fits, the one with the smallest peak (and a reason saying it probably will not fit)."""
    usable = int(HEADROOM * budget_bytes)
    estimates = [estimate(architecture, workload, c, compute=compute, device=device) for c in candidates]
    records = [e.as_dict() for e in estimates]
    tried = "; ".join(f"{e.setting.label()} needs {e.peak / GB:.2f} GB" for e in estimates)
    for e in estimates:
        if e.peak <= usable:
            why = (f"auto chose {e.setting.strategy}{' with fsdp_cpu_offload' if e.setting.fsdp_offload else ''}: "
                   f"estimated peak {e.peak / GB:.2f} GB per device fits {usable / GB:.2f} GB "
                   f"({HEADROOM:.0%} of {budget_bytes / GB:.2f} GB); tried {tried}")
            return AutoChoice(e.setting.strategy, e.setting.fsdp_offload, why, records)
    best = min(estimates, key=lambda e: e.peak)
    why = (f"auto chose {best.setting.strategy}{' with fsdp_cpu_offload' if best.setting.fsdp_offload else ''}, the "
           f"smallest estimate, but nothing fits {usable / GB:.2f} GB ({HEADROOM:.0%} of {budget_bytes / GB:.2f} GB): "
           f"{tried}; expect an out-of-memory error (add ranks, fp8: true or cpu_offload: true)")
    return AutoChoice(best.setting.strategy, best.setting.fsdp_offload, why, records)


# ---- measuring -------------------------------------------------------------------------------------
def free_device_memory(device: torch.device) -> int:
    """Bytes free on `device` now: CUDA's free memory, or the host's available memory for a CPU rank."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def allocated_peak(prof, *, every_thread: bool = False) -> int:
    """The most bytes torch's CPU allocator had handed out at once during a torch.profiler run made
    with profile_memory=True (on a CPU, what max_memory_allocated is on CUDA), above what was alive
    when it started.

    torch.profiler records allocation events only on threads it profiles, and a collective's buffer is
    often freed on gloo's worker thread (when it drops the last reference to the finished work): a
    running sum of the events counts such buffers alive for the rest of the run (measured: +1-2 fused
    blocks on mid FULL_SHARD, varying with thread timing). With `every_thread` (the run was inside
    `count_cpu_allocations()`) each event carries the allocator's running total over every thread, and
    the peak comes from those totals; otherwise from the events paired by address (`live_bytes_peak`,
    an upper bound)."""
    events = allocation_events(prof)
    if not events:
        return 0
    if not every_thread:
        return live_bytes_peak((t, address, nbytes) for t, address, nbytes, _ in events)
    events.sort()
    _, _, first_bytes, first_total = events[0]
    return max(total for *_, total in events) - (first_total - first_bytes)


def allocation_events(prof, device_type: str = "cpu") -> list[tuple[int, int, int, int]]:
    """(time ns, address, bytes: + allocated / - freed, allocator total after it) of every allocation
    event of `device_type` the profiler recorded (its event tree: the flat event list has no addresses)."""
    out, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        event = stack.pop()
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == device_type:
            fields = event.extra_fields
            out.append((event.start_time_ns, fields.ptr, fields.alloc_size, fields.total_allocated))
        stack.extend(event.children)
    return out


def live_bytes_peak(events) -> int:
    """Peak of the bytes alive at once from (time, address, bytes) events, each free paired with the
    allocation at its address. A free the profiler did not record (made on a thread it does not
    profile) is inferred when the address is handed out again; until then the block counts as alive.
    Frees of blocks allocated before profiling began are not counted (callers add what was resident)."""
    live: dict[int, int] = {}
    now = peak = 0
    for _, address, nbytes in sorted(events):
        if nbytes > 0:
            now += nbytes - live.pop(address, 0)
            live[address] = nbytes
            peak = max(peak, now)
        elif nbytes < 0:
            now -= live.pop(address, 0)
    return peak


@contextlib.contextmanager
def count_cpu_allocations():
    """Have torch's CPU allocator count the allocations and frees of every thread while profiling
    (c10's `caffe2_report_cpu_memory_usage` flag; no Python API sets it, so through ctypes). Yields
    whether it could (False: the flag is not in this build's libc10)."""
    try:
        flag = ctypes.c_bool.in_dll(ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libc10.so")),
                                    "FLAGS_caffe2_report_cpu_memory_usage")
    except (OSError, ValueError):
        yield False
        return
    before, flag.value = flag.value, True
    try:
        yield True
    finally:
        flag.value = before


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    """Hand memory the C allocator holds for freed tensors back to the OS (glibc malloc_trim), so a
    resident-set measurement counts live memory rather than what earlier work left in the heap."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMeter:
    """Peak memory of this process on `device` over a stretch of work: CUDA's max_memory_allocated,
    or on a CPU the resident-set high-water mark (Linux VmHWM, reset through /proc/self/clear_refs after
    returning freed heap memory to the OS) above the resident size when the meter was made (`baseline`)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()
        self.baseline = self.current()

    def current(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return _proc_status("VmRSS") or 0

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        _release_free_heap()
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS
        except OSError:
            pass

    def peak(self) -> int:
        """Peak bytes since the last reset, above the baseline."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device)) - self.baseline
        return (_proc_status("VmHWM") or 0) - self.baseline


# ---- expected speed (for `ovi doctor`; a model, not a measurement) ---------------------------------
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


def step_seconds(architecture: str, workload: Workload, setting: Setting, profile: GpuProfile, steps: int,
                 *, compute: torch.dtype = torch.bfloat16) -> float:
    """Expected seconds per denoising step (both guidance passes) on one of `profile`'s GPUs: compute at
    `profile.mfu` scaled by upstream's SP speed-up, plus the FSDP gathers a prefetch cannot hide, plus
    per-clip module moves spread over the steps."""
    layout = param_layout(architecture, storage_for(setting.fp8, compute), compute)
    passes = 2 / setting.cfg
    flops = passes * forward_flops(architecture, workload.video_tokens, workload.audio_tokens)
    compute_s = flops / (profile.bf16_tflops * 1e12 * profile.mfu) / sp_speedup(setting.sp)
    blocks = sum(1 for unit in layout.units if unit.startswith("block."))
    n = setting.fsdp
    exposed = 0.0

    def gather(nbytes):
        seconds = nbytes * (n - 1) / n / (profile.peer_gbps * GB)
        return seconds + (nbytes / n / (profile.pinned_gbps * GB) if setting.fsdp_offload else 0.0)
    if setting.strategy in SHARDING_STRATEGIES:
        if setting.strategy == "SHARD_GRAD_OP":
            exposed = gather(layout.total) / steps
        else:
            per_block = compute_s / passes / blocks
            hidden = max(0.0, gather(layout.block) - per_block)
            unhidden = gather(layout.total - blocks * layout.block)  # embeddings and heads: no prefetch
            exposed = passes * (blocks * hidden + unhidden)
    text_sharded = setting.shard_text and setting.strategy in SHARDING_STRATEGIES and workload.text_layout is not None
    if text_sharded:
        exposed += gather(workload.text_layout.total) / steps  # the text encoder, gathered once per clip
    moved = 0
    if setting.cpu_offload:  # upstream's whole-module moves (FSDP places a sharded text encoder itself)
        moved = (0 if text_sharded else workload.text_encoder_bytes) + workload.codec_bytes
        moved += layout.total if setting.strategy not in SHARDING_STRATEGIES else 0
    return compute_s + exposed + 2 * moved / (profile.pageable_gbps * GB) / steps
