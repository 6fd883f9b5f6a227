"""Weight-only quantisation of the fusion DiT through torchao: int8 (CPU and GPU) and fp8 (GPUs with fp8
tensor cores, compute capability >= 8.9).

Only the `nn.Linear` layers inside the fused blocks are quantised (attention projections, cross-modal
projections, FFNs: nearly all of the DiT's parameters). Norms, the per-block modulation table, the
embeddings, time projection and heads keep their precision, and the codecs are never touched.

The existing fp8 *storage* path (ovi.checkpoint.loading, `fp8: true`) stays as it is: it keeps the
checkpoint's unscaled float8_e4m3fn tensors exactly as upstream's `model_fp8_e4m3fn.safetensors` holds
them and upcasts per layer, so it loads upstream's fp8 file bit-exactly on any device (CPU included).
torchao's fp8 weight-only config re-quantises with per-row scales (a different, more accurate
rounding) and needs fp8 hardware, so it is not the same job; `quantize: fp8` is that torchao path.
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn as nn

from ovi.config import QUANTIZE_MODES
from ovi.errors import ConfigError


@contextlib.contextmanager
def quiet_torchao_import():
    """Importing torchao (directly, or through diffusers' model classes, which load their torchao
    integration when it is installed) logs that its CUDA kernels do not load on a CPU build of torch,
    and diffusers that it cannot import torchao's older tensor classes; torch's pytree logs a deprecation
    for each enum torchao registers: none of it matters here."""
    loggers = [logging.getLogger(name) for name in ("torchao", "diffusers.quantizers.torchao.torchao_quantizer",
                                                    "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def fp8_supported(device: torch.device) -> tuple[bool, str]:
    """(supported, why not): fp8 weight-only matmuls need a CUDA GPU of compute capability 8.9+."""
    device = torch.device(device)
    if device.type != "cuda":
        return False, f"fp8 weight-only needs a CUDA GPU with fp8 tensor cores; this engine runs on {device}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return False, (f"fp8 weight-only needs compute capability 8.9+ (Ada, Hopper, Blackwell); "
                       f"{torch.cuda.get_device_name(device)} is {major}.{minor}")
    return True, ""


def require_fp8(device: torch.device) -> None:
    """`quantize: fp8` where the device has no fp8 -> ConfigError naming the fixes (checked before loading)."""
    ok, why = fp8_supported(device)
    if not ok:
        raise ConfigError(f"quantize: fp8 cannot run here ({why}); use quantize: int8 (any device), a GPU with "
                          f"compute capability >= 8.9, or the fp8 storage path (fp8: true)")


def is_quantized(t: torch.Tensor) -> bool:
    """A torchao-quantised weight (a tensor subclass holding qdata and scales; not a DTensor shard)."""
    return hasattr(t, "__tensor_flatten__") and type(t).__module__.startswith("torchao")


def is_block_linear(module: nn.Module, fqn: str) -> bool:
    """The layers quantisation touches: Linear layers inside a fused block."""
    return isinstance(module, nn.Linear) and ".blocks." in f".{fqn}."


def stored_bytes(params) -> int:
    """Bytes these parameters occupy (a quantised one: its int8/fp8 data and scales)."""
    total = 0
    for p in params:
        if is_quantized(p):  # count the tensors it holds (int8/fp8 data, scales)
            inner = [getattr(p, n) for n in p.__tensor_flatten__()[0]]
            total += sum(t.numel() * t.element_size() for t in inner if t is not None)
            continue
        total += p.numel() * p.element_size()
    return total


def quantize_model(model: nn.Module, mode: str, device: torch.device | str) -> dict:
    """Quantise `model`'s block Linears in place (`mode` int8 | fp8 | none) -> a record for the sidecar
    (`quantize`, `quantized_layers`, `param_bytes_before` / `_after`). fp8 on hardware without it is an
    error naming the fix."""
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"quantize {mode!r}: must be one of {', '.join(QUANTIZE_MODES)}")
    before = sum(p.numel() * p.dtype.itemsize for p in model.parameters())  # unquantised (quantised while loading too)
    if mode == "none":
        return {"quantize": "none", "quantized_layers": 0, "param_bytes_before": before, "param_bytes_after": before}
    if mode == "fp8":
        require_fp8(device)
    with quiet_torchao_import():
        from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

    config = Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig()
    layers = [name for name, m in model.named_modules() if is_block_linear(m, name)]
    for name in layers:
        weight = model.get_submodule(name).weight
        if weight.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            raise ConfigError(f"quantize: {mode} needs the DiT in bf16/fp32, but {name} is stored in fp8 (fp8: true); "
                              f"set fp8: false to quantise, or keep fp8 storage without quantize")
    quantize_(model, config, filter_fn=lambda m, fqn: is_block_linear(m, fqn) and not is_quantized(m.weight))
    return {"quantize": mode, "quantized_layers": len(layers), "param_bytes_before": before,
            "param_bytes_after": stored_bytes(model.parameters())}


def quantize_block_while_loading(mode: str):
    """An `after_block` for ovi.checkpoint.loading.load_fusion_model: quantise fused block i's Linears as
    soon as they are loaded (host peak: the quantised model plus one block in the file's dtype), or
    None for mode none. `quantize_model` afterwards finds them done and only records the result."""
    if mode in (None, "none"):
        return None
    if mode not in QUANTIZE_MODES:
        raise ConfigError(f"quantize {mode!r}: must be one of {', '.join(QUANTIZE_MODES)}")

    def after_block(model: nn.Module, i: int) -> None:
        with quiet_torchao_import():
            from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_
        config = Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig()
        for block in (model.video_model.blocks[i], model.audio_model.blocks[i]):
            if any(m.weight.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
                   for m in block.modules() if isinstance(m, nn.Linear)):
                return  # fp8 storage: quantize_model refuses it with the reason
            quantize_(block, config, filter_fn=lambda m, fqn: isinstance(m, nn.Linear))
    return after_block
