"""Block swap: K fused blocks stay on the device, the others live in host memory and are copied in one
at a time, the next one while the current one computes.

Why not diffusers' group offloading (`apply_group_offloading(offload_type="block_level", use_stream=True)`):
its hooks replace a block's `forward`, and its block-level grouping takes the ModuleLists that are
direct children of the module it is applied to. A FusionModel's fused block i is video block i + audio
block i from two towers (`video_model.blocks`, `audio_model.blocks`), and `FusionModel.fused_block` calls
the blocks' *methods* (modulate, self_attn_residual, ...), never their `forward`, so those hooks would
never fire; leaf-level offloading would fire but moves layer by layer, not "K blocks resident". The
unit here is the fused block, driven from the model's `fused_block` hook point, as the FSDP schedule
(ovi.parallel.fsdp) does.

Mechanics. A swapped block's tensors stay what they are between forwards (host memory, pinned on CUDA),
so LoRA merging, peft injection and state_dict work on them unchanged. `load(i)` gives each of block
i's parameters a device copy (`param.data = copy`, on a side CUDA stream with an event the compute
stream waits on; synchronous when streams are off), `release(i)` points them back at their host
tensors. The schedule per forward: the first block to run is prefetched when the forward starts; block i
runs; if it is swapped it is released; then the next block this forward runs (SLG skips one) is
prefetched. So the hooks see at most K + 1 blocks' parameters resident at any layer's forward. On a GPU
the released block's memory is returned only when its kernels finish (`record_stream`), so the device
briefly holds K + 2 blocks; the memory model (`estimated_peak_bytes`) counts K + 2.

On the CPU the "device" copy is a fresh clone, so the schedule, the accounting (`bytes_moved`) and the
numerics are exercised exactly; the CUDA path (pinned memory, side stream, events) is unverified here.
FSDP shards the same blocks through the same hook point, so FSDP + swap is refused.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from ovi.checkpoint.quantize import stored_bytes as tensor_bytes  # int8/fp8 weights: their data + scales
from ovi.errors import ConfigError


def _block_tensors(blocks: list[nn.Module]) -> list[tuple[nn.Module, str, bool]]:
    """(owner module, attribute name, is_parameter) of every parameter and buffer of these blocks
    (looked up at each load, so adapters injected since, e.g. unmerged LoRA layers, come along)."""
    found = []
    for block in blocks:
        for module in block.modules():
            found += [(module, name, True) for name, p in module._parameters.items() if p is not None]
            found += [(module, name, False) for name, b in module._buffers.items() if b is not None]
    return found


def _pinned(host: torch.Tensor) -> torch.Tensor:
    """`host` in page-locked memory (asynchronous copies need it); a tensor type that cannot be pinned
    (some quantised subclasses) stays pageable: its copies are then synchronous, still correct."""
    if host.is_pinned():
        return host
    try:
        return host.pin_memory()
    except (RuntimeError, NotImplementedError, TypeError):
        return host


class BlockSwap:
    """Installed as a FusionModel's `fused_block`. `blocks_on_device` fused blocks (the first ones) and
    everything outside the blocks go to `device`; the rest stay in host memory and stream in per use.

    `use_stream`: None = a side CUDA stream when `device` is CUDA; False = synchronous copies (same order).
    Counters: `bytes_moved` (host -> device bytes since install), `loads`, `peak_resident_blocks`, and
    `events` (("load"|"release", i) in order, kept when `record_events`)."""

    def __init__(self, model: nn.Module, device: torch.device | str, blocks_on_device: int, *,
                 use_stream: bool | None = None, record_events: bool = False):
        device = torch.device(device)
        if "fused_block" in vars(model):
            raise ConfigError("block swap cannot be combined with FSDP (or another block schedule already installed "
                              "on this model): FSDP already streams each fused block through the same hook point; "
                              "use fsdp_cpu_offload for FSDP's own offload, or drop use_fsdp to swap blocks")
        if any(type(p).__name__ == "DTensor" for p in model.parameters()):
            raise ConfigError("block swap cannot be combined with FSDP (this model's parameters are sharded "
                              "DTensors); drop use_fsdp or set blocks_on_device to null")
        n = model.num_blocks
        if not isinstance(blocks_on_device, int) or isinstance(blocks_on_device, bool) or blocks_on_device < 0:
            raise ConfigError(f"blocks_on_device {blocks_on_device!r}: must be a whole number from 0 to {n} "
                              f"(the model's fused blocks), or null for no block swap")
        if use_stream and device.type != "cuda":
            raise ConfigError(f"block swap with use_stream needs a CUDA device, got {device}; leave use_stream unset")
        self.model, self.device = model, device
        self.blocks_on_device = min(blocks_on_device, n)
        self.swapped = frozenset(range(self.blocks_on_device, n))
        self.use_stream = device.type == "cuda" if use_stream is None else bool(use_stream)
        self.stream = torch.cuda.Stream(device) if self.use_stream else None
        self.run_block = model.fused_block          # the class's method, bound to this model
        self.loaded: dict[int, list] = {}           # block -> [(module, name, is_param, host tensor)]
        self.ready: dict[int, object] = {}          # block -> CUDA event of its copy
        self.next_block: dict[int, int] = {}
        self.first_block: int | None = None
        self.bytes_moved = self.loads = self.forwards = self.peak_resident_blocks = 0
        self.record_events = record_events
        self.events: list[tuple[str, int]] = []
        self._place()
        model.fused_block = self                    # an instance attribute shadows the method
        self._hook = model.register_forward_pre_hook(self._forward_starts, with_kwargs=True)

    # ---- placement -----------------------------------------------------------------------------
    def pair(self, i: int) -> list[nn.Module]:
        return [self.model.video_model.blocks[i], self.model.audio_model.blocks[i]]

    def _place(self) -> None:
        swapped = {id(m) for i in self.swapped for m in self.pair(i)}
        pin = self.device.type == "cuda"

        def place(module: nn.Module, in_swapped: bool) -> None:
            in_swapped = in_swapped or id(module) in swapped
            for store in (module._parameters, module._buffers):
                for name, t in store.items():
                    if t is None:
                        continue
                    if in_swapped:
                        t.data = _pinned(t.data.to("cpu")) if pin else t.data.to("cpu")
                    else:
                        t.data = t.data.to(self.device)
            for child in module.children():
                place(child, in_swapped)
        place(self.model, False)

    def block_bytes(self, i: int) -> int:
        return tensor_bytes(getattr(m, n) for m, n, _ in _block_tensors(self.pair(i)))

    def swapped_bytes_per_forward(self, slg_layer=False) -> int:
        return sum(self.block_bytes(i) for i in self.model.blocks_to_run(slg_layer) if i in self.swapped)

    # ---- the schedule --------------------------------------------------------------------------
    def _forward_starts(self, module, args, kwargs) -> None:
        if any(x is None or (isinstance(x, (list, tuple)) and all(u is None for u in x)) for x in args[:2]):
            raise ConfigError("block swap runs the fused model (video and audio together); a single-modality "
                              "forward would run swapped blocks from host memory: pass both, or remove the swap")
        self.forwards += 1
        slg_layer = kwargs.get("slg_layer", args[11] if len(args) > 11 else False)
        order = module.blocks_to_run(slg_layer)
        self.next_block = dict(zip(order, order[1:]))
        self.first_block = order[0] if order else None
        if self.first_block is not None:
            self.load(self.first_block)             # its copy overlaps the embeddings

    def load(self, i: int) -> None:
        """Give block i's tensors device copies (no-op for resident or already loaded blocks)."""
        if i not in self.swapped or i in self.loaded:
            return
        entries = [(m, n, is_p, getattr(m, n).data) for m, n, is_p in _block_tensors(self.pair(i))]
        if self.stream is not None:
            # No wait on the compute stream: the copy must run *while* the current block computes. Host
            # tensors only change between generations (LoRA switches), synchronously on the CPU.
            with torch.cuda.stream(self.stream):
                copies = [host.to(self.device, non_blocking=True) for _, _, _, host in entries]
                event = torch.cuda.Event()
                event.record(self.stream)
            self.ready[i] = event
        else:
            copies = [host.to(self.device, copy=True) for _, _, _, host in entries]
        for (module, name, _, _), copy in zip(entries, copies):
            getattr(module, name).data = copy
        self.loaded[i] = entries
        self.loads += 1
        self.bytes_moved += tensor_bytes(h for _, _, _, h in entries)
        self.peak_resident_blocks = max(self.peak_resident_blocks, self.blocks_on_device + len(self.loaded))
        if self.record_events:
            self.events.append(("load", i))

    def _wait(self, i: int) -> None:
        event = self.ready.pop(i, None)
        if event is None:
            return
        compute = torch.cuda.current_stream(self.device)
        compute.wait_event(event)
        for module, name, _, _ in self.loaded[i]:
            getattr(module, name).data.record_stream(compute)  # freed only after this stream used it

    def release(self, i: int) -> None:
        """Point block i's tensors back at their host copies (the device copies are freed)."""
        entries = self.loaded.pop(i, None)
        if entries is None:
            return
        self.ready.pop(i, None)
        for module, name, _, host in entries:
            getattr(module, name).data = host
        if self.record_events:
            self.events.append(("release", i))

    def __call__(self, i: int, *args):
        self.load(i)                                # not prefetched: a call outside a forward
        self._wait(i)
        out = self.run_block(i, *args)
        self.release(i)
        if i in self.next_block:
            self.load(self.next_block[i])
        return out

    def release_all(self) -> None:
        for i in list(self.loaded):
            self.release(i)

    def remove(self) -> None:
        """Uninstall: every block back in host memory's copies released, the class's fused_block restored."""
        self.release_all()
        self._hook.remove()
        del self.model.fused_block

    def stats(self) -> dict:
        return {"blocks_on_device": self.blocks_on_device, "blocks_swapped": len(self.swapped),
                "bytes_moved": self.bytes_moved, "loads": self.loads, "forwards": self.forwards,
                "peak_resident_blocks": self.peak_resident_blocks, "use_stream": self.use_stream,
                "swapped_bytes_per_forward": self.swapped_bytes_per_forward()}
