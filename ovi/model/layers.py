"""Building blocks of the Wan/Ovi backbone, with upstream's parameter names.

Every layer computes in the dtype of its *input* and casts its own parameters on the fly. That one
rule gives the dtype policy: fp32 weights compute in fp32, bf16 in bf16, and fp8-stored weights are
upcast per layer to the compute dtype as they are used (no full-precision copy is ever held).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.to(dtype)


class Linear(nn.Linear):
    def forward(self, x):
        return F.linear(x, self.weight.to(x.dtype), _cast(self.bias, x.dtype))


class Conv3d(nn.Conv3d):
    def forward(self, x):
        return self._conv_forward(x, self.weight.to(x.dtype), _cast(self.bias, x.dtype))


class ChannelLastConv1d(nn.Conv1d):
    """Conv1d over [B, L, C] inputs (channels last), as upstream's audio patch embedding."""

    def forward(self, x):
        y = self._conv_forward(x.transpose(1, 2), self.weight.to(x.dtype), _cast(self.bias, x.dtype))
        return y.transpose(1, 2)


class ConvMLP(nn.Module):
    """SwiGLU of bias-free channels-last convolutions: w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim: int, hidden_dim: int, kernel_size: int = 7, padding: int = 3, multiple_of: int = 256):
        super().__init__()
        hidden = int(2 * hidden_dim / 3)
        hidden = multiple_of * math.ceil(hidden / multiple_of)
        self.w1 = ChannelLastConv1d(dim, hidden, kernel_size, padding=padding, bias=False)
        self.w2 = ChannelLastConv1d(hidden, dim, kernel_size, padding=padding, bias=False)
        self.w3 = ChannelLastConv1d(dim, hidden, kernel_size, padding=padding, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class RMSNorm(nn.Module):
    """Full-width RMS norm (upstream WanRMSNorm). Statistics in fp32, result in the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight.to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 and returned in the input dtype (affine or not)."""

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False):
        super().__init__(dim, eps=eps, elementwise_affine=elementwise_affine)

    def forward(self, x):
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class ModulationAdd(nn.Module):
    """Holds `modulation` [1, num, dim] and adds it to per-token e0 [B, L, num, dim]."""

    def __init__(self, dim: int, num: int):
        super().__init__()
        self.modulation = nn.Parameter(torch.randn(1, num, dim) / dim**0.5)

    def forward(self, e):
        return self.modulation.to(e.dtype).unsqueeze(0) + e


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """[N] positions -> [N, dim] float64 embedding, cos first (upstream's order and precision)."""
    half = dim // 2
    position = position.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=position.device) / half)
    angles = torch.outer(position, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class Head(nn.Module):
    """Output head: modulated non-affine LayerNorm then a Linear to patch * out_dim."""

    def __init__(self, dim: int, out_dim: int, patch_size, eps: float = 1e-6):
        super().__init__()
        self.norm = LayerNorm(dim, eps)
        self.head = Linear(dim, math.prod(patch_size) * out_dim)
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x, e):
        # e: [B, L, D] un-projected time embedding
        shift, scale = (self.modulation.to(e.dtype).unsqueeze(0) + e.unsqueeze(2)).chunk(2, dim=2)
        return self.head(self.norm(x) * (1 + scale.squeeze(2)) + shift.squeeze(2))
