"""Attention dispatch: one function, four backends (flash-attn 3, flash-attn 2, SDPA, math).

Why hand-written: the model needs key-length masking (padded batches, sequence-parallel padding)
across backends with different calling conventions (varlen packing for flash, boolean masks for
SDPA). The backend is resolved once per engine (`resolve_backend`) and recorded in the output
sidecar, so a run always says which kernel it used; no per-call silent fallback.
"""

from __future__ import annotations

import importlib
import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch.profiler import record_function

from ovi.errors import ConfigError

BACKENDS = ("flash3", "flash2", "sdpa", "math")
_HALF = (torch.float16, torch.bfloat16)


@lru_cache(maxsize=None)
def _import_flash(name: str):
    try:
        if name == "flash3":
            return importlib.import_module("flash_attn_interface")
        return importlib.import_module("flash_attn")
    except Exception:  # ImportError, or a broken CUDA build raising at import
        return None


def backend_available(name: str, device: torch.device | str, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether `name` can run here, and if not, why (the reason goes into the sidecar)."""
    device = torch.device(device)
    if name in ("sdpa", "math"):
        return True, ""
    if device.type != "cuda":
        return False, f"{name} needs a CUDA device (running on {device.type})"
    if dtype not in _HALF:
        return False, f"{name} needs bf16/fp16 compute (compute dtype is {dtype})"
    if _import_flash(name) is None:
        pkg = "flash_attn_interface (FA3)" if name == "flash3" else "flash_attn"
        return False, f"{pkg} is not installed (pip install .[gpu])"
    major, _ = torch.cuda.get_device_capability(device)
    if name == "flash3" and major != 9:
        return False, f"flash3 needs a Hopper GPU (capability 9.x, found {major}.x)"
    if name == "flash2" and major < 8:
        return False, f"flash2 needs capability >= 8.0 (found {major}.x)"
    return True, ""


def resolve_backend(requested: str, device, dtype) -> tuple[str, str]:
    """Pick the backend to run. Returns (backend, note); note explains any fallback."""
    if requested not in ("auto", *BACKENDS):
        raise ConfigError(f"attention_backend '{requested}' is unknown; use one of auto, {', '.join(BACKENDS)}")
    if requested != "auto":
        ok, why = backend_available(requested, device, dtype)
        if ok:
            return requested, ""
        return "sdpa", f"requested {requested} but {why}; ran sdpa"
    reasons = []
    for name in ("flash3", "flash2"):
        ok, why = backend_available(name, device, dtype)
        if ok:
            return name, ""
        reasons.append(why)
    return "sdpa", "; ".join(reasons)


def _key_mask(k_lens, batch: int, lq: int, lk: int, window, device) -> torch.Tensor | None:
    """Boolean [B,1,Lq,Lk] (True = attend) or None when nothing is masked."""
    mask = None
    if k_lens is not None:
        k_lens = torch.as_tensor(k_lens, device=device)
        # Inside a compiled graph the mask is always built: a data-dependent branch would break the graph
        # (ovi.pipeline.compile), and a mask that keeps every key gives the same attention.
        if torch.compiler.is_compiling() or bool((k_lens < lk).any()):
            mask = (torch.arange(lk, device=device)[None, :] < k_lens[:, None])[:, None, None, :]
    left, right = window
    if left >= 0 or right >= 0:
        qi = torch.arange(lq, device=device)[:, None]
        kj = torch.arange(lk, device=device)[None, :]
        local = torch.ones(lq, lk, dtype=torch.bool, device=device)
        if left >= 0:
            local &= kj >= qi - left
        if right >= 0:
            local &= kj <= qi + right
        local = local[None, None]
        mask = local if mask is None else mask & local
    if mask is not None:
        mask = mask.expand(batch, 1, lq, lk)
    return mask


def _flash(module, q, k, v, k_lens, window, scale):
    b, lq, h, d = q.shape
    lk = k.shape[1]
    device = q.device
    if k_lens is None:
        k_lens = torch.full((b,), lk, dtype=torch.int32, device=device)
    k_lens = torch.as_tensor(k_lens, device=device).to(torch.int32)
    q_flat = q.reshape(b * lq, h, d)
    valid = torch.arange(lk, device=device)[None, :] < k_lens[:, None]
    k_flat, v_flat = k[valid], v[valid]
    cu_q = torch.arange(0, (b + 1) * lq, lq, dtype=torch.int32, device=device)
    cu_k = F.pad(k_lens.cumsum(0, dtype=torch.int32), (1, 0))
    out = module.flash_attn_varlen_func(
        q_flat, k_flat, v_flat, cu_q, cu_k, lq, int(k_lens.max()),
        softmax_scale=scale, causal=False, window_size=tuple(window),
    )
    if isinstance(out, tuple):  # FA3 returns (out, lse)
        out = out[0]
    return out.reshape(b, lq, h, d)


def attention(q, k, v, *, k_lens=None, backend: str = "sdpa", window=(-1, -1), scale=None):
    """q [B,Lq,H,d], k/v [B,Lk,H,d] -> [B,Lq,H,d]; keys at positions >= k_lens[b] are ignored."""
    with record_function(f"attention/{backend}"):  # a range in profiler traces; ~free otherwise
        return _attention(q, k, v, k_lens=k_lens, backend=backend, window=window, scale=scale)


def _attention(q, k, v, *, k_lens, backend, window, scale):
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    if backend in ("flash3", "flash2"):
        return _flash(_import_flash(backend), q, k, v, k_lens, window, scale)
    b, lq, _, _ = q.shape
    mask = _key_mask(k_lens, b, lq, k.shape[1], window, q.device)
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, scale=scale)
    elif backend == "math":
        scores = (qt.float() @ kt.float().transpose(-1, -2)) * scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        out = (scores.softmax(-1) @ vt.float()).to(q.dtype)
    else:
        raise ConfigError(f"attention backend '{backend}' is unknown; use one of {', '.join(BACKENDS)}")
    return out.transpose(1, 2)


def attention_with_lse(q, k, v, *, k_lens=None, scale=None):
    """Attention that also returns the log-sum-exp of the scores, for merging partial results.

    q [B,Lq,H,d], k/v [B,Lk,H,d] -> (out [B,Lq,H,d] fp32, lse [B,Lq,H] fp32). Rows whose keys are all
    masked get out 0 and lse -inf, so they drop out of a log-sum-exp merge.
    """
    with record_function("attention/lse"):
        return _attention_with_lse(q, k, v, k_lens=k_lens, scale=scale)


def _attention_with_lse(q, k, v, *, k_lens, scale):
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    qt, kt, vt = (t.transpose(1, 2).float() for t in (q, k, v))
    scores = (qt @ kt.transpose(-1, -2)) * scale                      # [B,H,Lq,Lk]
    mask = _key_mask(k_lens, q.shape[0], q.shape[1], k.shape[1], (-1, -1), q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(scores, dim=-1)                             # [B,H,Lq]
    probs = torch.exp(scores - lse[..., None]).nan_to_num(0.0)
    out = probs @ vt
    return out.transpose(1, 2), lse.transpose(1, 2)


def merge_partial_attention(outs: torch.Tensor, lses: torch.Tensor) -> torch.Tensor:
    """Combine partial attentions over disjoint key sets: outs [P,...,d], lses [P,...] -> [...,d]."""
    peak = lses.max(dim=0).values
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    weights = torch.exp(lses - peak)                                   # 0 for empty shards
    total = weights.sum(0).clamp_min(torch.finfo(weights.dtype).tiny)
    return (outs * weights[..., None]).sum(0) / total[..., None]
