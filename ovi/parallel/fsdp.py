"""FSDP2 sharded inference for the FusionModel (`torch.distributed.fsdp.fully_shard`), applied from outside.

Strategies, with the seed fork's names, as they act at inference:

* NO_SHARD      FSDP is not applied: every rank holds every parameter.
* FULL_SHARD    each rank keeps 1/fsdp of every parameter; a fused block is all-gathered just before it
                runs (the next block's gather is prefetched meanwhile) and freed right after.
* SHARD_GRAD_OP sharded at rest and loaded shard by shard; each unit is gathered on first use and kept
                for the whole denoising loop (`reshard_after_forward=False`), then freed. Its peak holds
                the whole model *plus* the shards: it saves load-time and idle memory, not peak memory.
* HYBRID_SHARD  FULL_SHARD inside a node, replicated across nodes: a 2-D (replicate, shard) mesh.

`fsdp_cpu_offload` keeps the shards in host memory (`CPUOffloadPolicy`); a unit is copied to the device
when it is gathered. fp8 storage keeps working: shards and all-gathers stay fp8 and the layers upcast
per use (ovi.model.layers); `MixedPrecisionPolicy` casts only parameters stored wider than the compute
dtype (fp32 weights in a bf16 run), so fp32 CPU runs stay fp32.

Shard units (each one all-gather): per branch the embeddings (patch, text, time, time projection), the
audio patch embedding's three large convolutions each on its own; per index i one *fused block* =
video block i + audio block i with their fusion layers, grouped with `fully_shard([video_block,
audio_block])`; the root FusionModel keeps the rest (the two heads).
`FusionModel.fused_block` calls block *methods*, not `forward`, so FSDP's forward hooks never fire for
block units: a `FusedBlockSchedule` installed as the instance's `fused_block` drives the public
`unshard()` / `reshard()` instead, prefetching block i+1 while block i computes. The embeddings and the
heads run through `forward` and use FSDP's own hooks.

Shard groups hold ranks that run the same passes (ovi.parallel.dims): one SP group, or with
HYBRID_SHARD the part of it on one node; each CFG group holds its own sharded copy (the mesh's
replicate dimension).

Sharded loading: the model is built on the meta device in its storage dtypes (ovi.checkpoint), sharded
there, given empty local shards, and each rank reads only its own rows of every tensor from the file.

The text encoder (`shard_text_model`): the same path over the same shard groups (`shard_text_encoder`,
`FsdpLoader.shard_text`); units are its token embedding and each block, freed after they run, each
block prefetching the next through FSDP's own forward hooks (they run through `forward`).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather  # the type set_custom_all_gather takes
from torch.distributed.tensor import DTensor

from ovi.checkpoint.loading import RowReads, meta_fusion_model, read_rows
from ovi.model.fusion import FusionModel
from ovi.model.layers import ConvMLP
from ovi.parallel.dims import SHARDING_STRATEGIES, ParallelDims

log = logging.getLogger(__name__)

HEADS = "heads"  # the root unit: what no other unit holds


# ---- units and sizes -------------------------------------------------------------------------------
def shard_units(model: FusionModel) -> dict[str, list[nn.Module]]:
    """The FSDP units, in the bottom-up order `fully_shard` must see them (the root, `HEADS`, is implicit).
    A unit owns the parameters of its modules that no earlier unit owns. The audio patch embedding's
    SwiGLU convolutions are units of their own: together they outweigh a fused block (528M parameters
    in the real model), and they run one after another."""
    units = {}
    for name, branch in (("video", model.video_model), ("audio", model.audio_model)):
        for mlp in (m for m in branch.patch_embedding.modules() if isinstance(m, ConvMLP)):
            for conv in ("w1", "w3", "w2"):
                units[f"{name}_patch_mlp.{conv}"] = [getattr(mlp, conv)]
        units[f"{name}_embed"] = [branch.patch_embedding, branch.text_embedding, branch.time_embedding,
                                  branch.time_projection]
    for i in range(model.num_blocks):
        units[f"block.{i}"] = [model.video_model.blocks[i], model.audio_model.blocks[i]]
    return units


def _nbytes(params) -> int:
    return sum(p.numel() * p.element_size() for p in params)


def owned_parameters(model: nn.Module, units: dict[str, list[nn.Module]]) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """(name, parameter) pairs each of `units` owns, HEADS (the rest) included, as fully_shard assigns
    them: a unit owns the parameters of its modules that no earlier unit owns."""
    owner = {}
    for unit, modules in units.items():
        for module in modules:
            for param in module.parameters():
                owner.setdefault(id(param), unit)
    out: dict[str, list] = {unit: [] for unit in [*units, HEADS]}
    for name, param in model.named_parameters():
        out[owner.get(id(param), HEADS)].append((name, param))
    return out


def unit_parameters(model: FusionModel) -> dict[str, list[tuple[str, nn.Parameter]]]:
    """(name, parameter) pairs each DiT unit owns, HEADS included."""
    return owned_parameters(model, shard_units(model))


def unit_param_bytes(model: FusionModel) -> dict[str, int]:
    """Unsharded parameter bytes of every unit, HEADS included (works on meta models too)."""
    return {unit: _nbytes(p for _, p in params) for unit, params in unit_parameters(model).items()}


def storage_bytes(tensors) -> int:
    """Bytes of the storages behind `tensors` on this rank (a DTensor's local shard), each counted once."""
    seen, total = set(), 0
    for tensor in tensors:
        storage = (tensor.to_local() if isinstance(tensor, DTensor) else tensor).untyped_storage()
        if storage.data_ptr() and storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()
    return total


def mixed_precision(storage: torch.dtype, compute: torch.dtype) -> MixedPrecisionPolicy:
    """Gather (and compute) in `compute` only when parameters are stored wider: fp32 weights in a bf16 run.
    fp8 shards stay fp8 (half the all-gather bytes; the layers upcast them one at a time)."""
    if storage.is_floating_point and storage.itemsize > compute.itemsize:
        return MixedPrecisionPolicy(param_dtype=compute)
    return MixedPrecisionPolicy()


class ByteAllGather(AllGather):
    """All-gather that moves float8 shards as bytes. gloo has no float8 type; FSDP itself gathers bytes
    when a unit mixes dtypes, but a unit of fp8 weights only (the patch convolutions, which have no
    bias) would reach the backend as float8."""

    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor, input_tensor, group, async_op: bool = False):
        return dist.all_gather_into_tensor(output_tensor.view(torch.uint8), input_tensor.view(torch.uint8),
                                           group=group, async_op=async_op)


def fsdp_mesh(dims: ParallelDims, device_type: str) -> DeviceMesh:
    """The (replicate, shard) mesh of `dims`: shard groups are contiguous blocks of dims.fsdp ranks. 1-D
    when one shard group spans the world. Collective: every rank calls it."""
    shard_groups = len(dims.all_fsdp_groups())
    if shard_groups == 1:
        return init_device_mesh(device_type, (dims.fsdp,), mesh_dim_names=("shard",))
    return init_device_mesh(device_type, (shard_groups, dims.fsdp), mesh_dim_names=("replicate", "shard"))


def _free_gather_buffer_after_copy_out(unit: FSDPModule) -> None:
    """Have the forward hooks' all-gathers free their buffer as soon as it is copied out. By default
    FSDP2 keeps the last hook-driven gather's buffer until the next hook-driven gather (an overlap meant
    for implicit prefetching in training); here that is the last embedding unit's buffer, held through
    every fused block until the heads run. An async unshard (which the hooks then wait for at once)
    frees it at copy-out; the numbers are the same. The setter lost its public name in torch 2.13."""
    setter = getattr(unit, "set_unshard_async_op", None) or unit._set_unshard_async_op
    setter(True)


# ---- the block schedule ----------------------------------------------------------------------------
class FusedBlockSchedule:
    """Installed as a FusionModel's `fused_block`: gathers fused block i (waiting for its prefetch),
    prefetches the next block this forward runs, runs block i, and (unless `keep`) frees it. Records
    the peak of gathered parameter bytes it sees."""

    def __init__(self, model: FusionModel, units: dict[str, FSDPModule], sizes: dict[str, int],
                 probes: dict[str, str], keep: bool):
        self.model, self.run_block = model, model.fused_block  # the class's method, bound to this model
        self.sizes, self.keep = sizes, keep
        self.blocks = [units[f"block.{i}"] for i in range(model.num_blocks)]
        self.probes = probes                        # unit -> the name of one parameter it owns
        self.pending: dict[int, object] = {}        # block index -> UnshardHandle of a prefetch in flight
        self.next_block: dict[int, int] = {}        # this forward's order: block -> the one after it
        self.gathers = 0                            # fused-block all-gathers issued
        self.forwards = 0
        self.peak_gathered = 0
        model.fused_block = self                    # an instance attribute shadows the method
        model.register_forward_pre_hook(self._forward_starts, with_kwargs=True)
        for name, modules in shard_units(model).items():
            if not name.startswith("block."):
                for module in modules:              # after FSDP's own pre-hook: the unit is gathered
                    module.register_forward_pre_hook(lambda module, args: self.sample())

    def _forward_starts(self, module, args, kwargs) -> None:
        """Learn which blocks this forward runs (SLG skips one), so the prefetch never gathers a block
        that will not run. Block 0 is not prefetched: its gather would sit beside the embeddings'."""
        self.forwards += 1
        slg_layer = kwargs.get("slg_layer", args[11] if len(args) > 11 else False)
        order = module.blocks_to_run(slg_layer)
        self.next_block = dict(zip(order, order[1:]))

    def gathered(self, unit: str) -> bool:
        """A unit is gathered when its modules hold plain tensors instead of their sharded DTensors."""
        return not isinstance(self.model.get_parameter(self.probes[unit]), DTensor)

    def _prefetch(self, i: int) -> None:
        if i < len(self.blocks) and i not in self.pending and not self.gathered(f"block.{i}"):
            self.pending[i] = self.blocks[i].unshard(async_op=True)
            self.gathers += 1

    def __call__(self, i: int, *args):
        if i not in self.pending and not self.gathered(f"block.{i}"):
            self.gathers += 1
        self.blocks[i].unshard()                    # waits for the prefetch when there was one
        self.pending.pop(i, None)
        if i in self.next_block:
            self._prefetch(self.next_block[i])
        self.sample()
        out = self.run_block(i, *args)
        if not self.keep:
            self.blocks[i].reshard()
        return out

    def sample(self) -> None:
        """Record the parameter bytes gathered now (units materialised, or with a gather in flight)."""
        now = sum(self.sizes[unit] for unit in self.probes if self.gathered(unit))
        now += sum(self.sizes[f"block.{i}"] for i in self.pending)
        self.peak_gathered = max(self.peak_gathered, now)


# ---- the sharded model -----------------------------------------------------------------------------
@dataclass
class ShardedFusionModel:
    """A FusionModel under FSDP2 plus what it holds: `in_use()` brackets a denoising loop (and frees
    every gathered unit when it ends); `accounting()` reports parameter bytes per rank."""
    model: FusionModel
    strategy: str
    offload: bool
    mesh: DeviceMesh
    unit_bytes: dict[str, int]
    schedule: FusedBlockSchedule
    reads: RowReads | None = None

    @property
    def total_param_bytes(self) -> int:
        return sum(self.unit_bytes.values())

    @property
    def largest_unit_bytes(self) -> int:
        return max(self.unit_bytes.values())

    def local_param_bytes(self) -> int:
        """Bytes of this rank's shard storage (FSDP pads each tensor's dim 0 to a multiple of the degree)."""
        return storage_bytes(self.model.parameters())

    @contextlib.contextmanager
    def in_use(self):
        """Run a denoising loop; afterwards every unit is resharded and FSDP's per-pass trackers cleared
        (`reset_iter_state`, which also recovers from a loop that raised or was cancelled)."""
        try:
            yield self.model
        finally:
            if self.schedule.forwards:  # FSDP initialises its state in the first forward
                self.model.reset_iter_state()
            self.schedule.pending.clear()

    def accounting(self) -> dict:
        local = self.local_param_bytes()
        return {"strategy": self.strategy, "cpu_offload": self.offload, "fsdp": self.mesh.size(-1),
                "param_bytes_per_rank": local, "total_param_bytes": self.total_param_bytes,
                "largest_block_bytes": self.largest_unit_bytes,
                "peak_param_bytes_per_rank": local + self.schedule.peak_gathered,
                "param_device": "cpu" if self.offload else str(self.mesh.device_type),
                "block_gathers": self.schedule.gathers,
                **({"load_bytes_read": self.reads.bytes_read, "load_largest_read": self.reads.largest_read,
                    "load_tensors_read": self.reads.tensors} if self.reads is not None else {})}


def shard_fusion_model(model: FusionModel, mesh: DeviceMesh, *, strategy: str, offload: bool = False,
                       mp_policy: MixedPrecisionPolicy | None = None) -> ShardedFusionModel:
    """Apply FSDP2 to `model` (meta or materialised) unit by unit, bottom-up, and install the block
    schedule. The model's parameters must not require grad (inference)."""
    if strategy not in SHARDING_STRATEGIES:
        raise ValueError(f"strategy {strategy!r} does not shard; use one of {', '.join(SHARDING_STRATEGIES)}")
    keep = strategy == "SHARD_GRAD_OP"
    pin = mesh.device_type == "cuda"
    kwargs = dict(mesh=mesh, reshard_after_forward=not keep, mp_policy=mp_policy or MixedPrecisionPolicy(),
                  offload_policy=CPUOffloadPolicy(pin_memory=pin) if offload else OffloadPolicy())
    owned = unit_parameters(model)
    sizes = {unit: _nbytes(p for _, p in params) for unit, params in owned.items()}
    units = {}
    for name, modules in shard_units(model).items():
        fully_shard(modules, **kwargs)
        units[name] = modules[0]  # one FSDP state serves the group; unshard/reshard act on all of it
        if all(p.dtype.itemsize == 1 and p.dtype.is_floating_point for _, p in owned[name]):
            units[name].set_custom_all_gather(ByteAllGather())
    fully_shard(model, **kwargs)
    units[HEADS] = model
    for unit in units.values():
        _free_gather_buffer_after_copy_out(unit)
    schedule = FusedBlockSchedule(model, units, sizes, {unit: params[0][0] for unit, params in owned.items()}, keep)
    log.info("FSDP %s over %d ranks%s: %d units, largest %.1f MB", strategy, mesh.size(-1),
             " (shards in host memory)" if offload else "", len(units), max(sizes.values()) / 1e6)
    return ShardedFusionModel(model, strategy, offload, mesh, sizes, schedule)


def _row_offset(param: DTensor) -> int:
    """First global row of this rank's dim-0 shard of `param` (FSDP splits dim 0 as torch.chunk does)."""
    mesh_dim = next(d for d, placement in enumerate(param.placements) if placement.is_shard())
    parts, index = param.device_mesh.size(mesh_dim), param.device_mesh.get_local_rank(mesh_dim)
    rows = param.shape[0]
    chunk = -(-rows // parts)
    start = index * chunk
    expected = max(0, min(chunk, rows - start))
    if param.to_local().shape[0] != expected:
        raise RuntimeError(f"FSDP placed {param.to_local().shape[0]} rows of a {rows}-row tensor on shard {index}, "
                           f"expected {expected}; this torch shards differently than ovi.parallel.fsdp assumes")
    return start


def load_sharded_fusion_model(path, architecture: str, *, mesh: DeviceMesh, strategy: str, offload: bool,
                              storage: torch.dtype, compute: torch.dtype, device: torch.device) -> ShardedFusionModel:
    """Meta-device model -> FSDP units -> empty local shards on `device` (host with offload) -> each
    parameter's local rows read from the file. No rank holds more than its shards plus one slice."""
    model = meta_fusion_model(path, architecture, storage)
    sharded = shard_fusion_model(model, mesh, strategy=strategy, offload=offload,
                                 mp_policy=mixed_precision(storage, compute))
    model.to_empty(device=torch.device("cpu") if offload else device)
    targets = {name: (param.to_local(), _row_offset(param)) for name, param in model.named_parameters()}
    with torch.no_grad():
        sharded.reads = read_rows(path, targets)
    model.set_compute_dtype(compute)
    return sharded


# ---- the text encoder (shard_text_model) ----------------------------------------------------------
def text_shard_units(encoder: nn.Module) -> dict[str, list[nn.Module]]:
    """FSDP units of a transformers T5-family encoder (UMT5EncoderModel, umT5): the token embedding
    (256k x 4096 in the real one, the largest unit) and each block; the root keeps the final norm."""
    stack = encoder.encoder
    return {"token_embed": [stack.embed_tokens], **{f"block.{i}": [block] for i, block in enumerate(stack.block)}}


def tie_input_embedding(encoder: nn.Module) -> None:
    """Make the encoder's `shared` and `encoder.embed_tokens` (tied weights, two Embedding modules) one
    module. FSDP swaps a parameter on the modules of its unit only: the other name would keep the
    unsharded tensor, and the root unit would gather it again."""
    encoder.shared = encoder.encoder.embed_tokens


@dataclass
class ShardedTextEncoder:
    """A text encoder under FSDP2: gathered one block at a time (the next one prefetched) whenever it
    encodes, freed after each; `accounting()` reports its parameter bytes per rank."""
    model: nn.Module
    unit_bytes: dict[str, int]
    reads: RowReads | None = None

    def accounting(self) -> dict:
        return {"text_param_bytes_per_rank": storage_bytes(self.model.parameters()),
                "text_total_param_bytes": sum(self.unit_bytes.values()),
                "text_largest_unit_bytes": max(self.unit_bytes.values()),
                **({"text_load_bytes_read": self.reads.bytes_read, "text_load_largest_read": self.reads.largest_read}
                   if self.reads is not None else {})}


def shard_text_encoder(encoder: nn.Module, mesh: DeviceMesh, *, offload: bool = False) -> ShardedTextEncoder:
    """Apply FSDP2 to a T5-family text encoder (meta or materialised). It runs once per clip, so under
    every sharding strategy its units are freed right after they run (`reshard_after_forward`); each
    block prefetches the next (FSDP's own forward prefetch: the blocks run through `forward`)."""
    tie_input_embedding(encoder)
    pin = mesh.device_type == "cuda"
    kwargs = dict(mesh=mesh, reshard_after_forward=True,
                  offload_policy=CPUOffloadPolicy(pin_memory=pin) if offload else OffloadPolicy())
    units = text_shard_units(encoder)
    sizes = {unit: _nbytes(p for _, p in params) for unit, params in owned_parameters(encoder, units).items()}
    for modules in units.values():
        fully_shard(modules, **kwargs)
    fully_shard(encoder, **kwargs)
    for module in [group[0] for group in units.values()] + [encoder]:
        _free_gather_buffer_after_copy_out(module)
    blocks = [units[f"block.{i}"][0] for i in range(len(encoder.encoder.block))]
    for block, following in zip(blocks, blocks[1:]):
        block.set_modules_to_forward_prefetch([following])
    return ShardedTextEncoder(encoder, sizes)


class FsdpLoader:
    """A `fusion_loader` for ovi.pipeline.components.load_components: loads shard by shard and keeps
    the ShardedFusionModel it made (`.sharded`); with shard_text_model its `shard_text` is the
    `text_placer` (`.text`: the ShardedTextEncoder)."""

    def __init__(self, dims: ParallelDims, device: torch.device):
        self.dims, self.device = dims, device
        self.mesh = fsdp_mesh(dims, device.type)
        self.sharded: ShardedFusionModel | None = None
        self.text: ShardedTextEncoder | None = None

    def __call__(self, path, architecture: str, *, storage: torch.dtype, compute: torch.dtype) -> FusionModel:
        self.sharded = load_sharded_fusion_model(path, architecture, mesh=self.mesh, strategy=self.dims.fsdp_strategy,
                                                 offload=self.dims.fsdp_offload, storage=storage, compute=compute,
                                                 device=self.device)
        return self.sharded.model

    def shard_text(self, encoder: nn.Module) -> dict[str, tuple[torch.Tensor, int]]:
        """A `text_placer` for ovi.pipeline.components.load_components: shard the meta-device text
        encoder over this loader's mesh, give it empty local shards on the device (the host with
        offload) and return, per parameter, (local shard, its first global row) for the loader to fill."""
        self.text = shard_text_encoder(encoder, self.mesh, offload=self.dims.fsdp_offload)
        encoder.to_empty(device=torch.device("cpu") if self.dims.fsdp_offload else self.device)
        return {name: (param.to_local(), _row_offset(param)) for name, param in encoder.named_parameters()}


# ---- the seed fork's entry point -------------------------------------------------------------------
def configure_fsdp_for_ampere(model: FusionModel, device_id: int, num_gpus: int, cpu_offload: bool = False
                              ) -> FusionModel:
    """Shard an already-loaded FusionModel with FULL_SHARD over `num_gpus` ranks (the seed fork's call).

    On CUDA, parameters are gathered and computed in bf16 (Ampere tensor cores; `MixedPrecisionPolicy`)
    on GPU `device_id`; on a CPU-only machine the ranks are gloo ranks and the dtype is kept.
    `cpu_offload` keeps the shards in host memory. The process group must already exist with
    `num_gpus` ranks. Returns the model, sharded in place (its blocks gathered one fused block at a time).
    """
    if not isinstance(model, FusionModel):
        raise TypeError(f"configure_fsdp_for_ampere shards an ovi FusionModel, got {type(model).__name__}")
    if not dist.is_initialized() or dist.get_world_size() != num_gpus:
        have = dist.get_world_size() if dist.is_initialized() else "no process group"
        raise ValueError(f"configure_fsdp_for_ampere(num_gpus={num_gpus}) needs a process group of {num_gpus} ranks "
                         f"(have {have}); start the ranks with ovi.runtime.WorkerGroup or torchrun first")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(device_id)
    storage = next(model.parameters()).dtype
    compute = torch.bfloat16 if cuda else storage
    model.requires_grad_(False).eval()
    mesh = init_device_mesh("cuda" if cuda else "cpu", (num_gpus,), mesh_dim_names=("shard",))
    shard_fusion_model(model, mesh, strategy="FULL_SHARD", offload=cpu_offload,
                       mp_policy=mixed_precision(storage, compute))
    model.set_compute_dtype(compute)
    return model
