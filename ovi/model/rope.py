"""Rotary position tables and their application, with upstream Ovi's layout and precision.

Tables are complex128 (float64 angles) and the rotation runs in float64, then rounds back to the
compute dtype: the same precision upstream keeps. Channel pairs are interleaved ((2i, 2i+1) form
one complex value), not rotate-half.
"""

from __future__ import annotations

import torch


def rope_table(length: int, dim: int, theta: float = 10000.0, scale: float = 1.0) -> torch.Tensor:
    """[length, dim/2] complex128: polar(1, pos * scale * theta^(-2j/dim))."""
    if dim % 2:
        raise ValueError(f"rope dim must be even, got {dim}")
    inv = 1.0 / torch.pow(torch.tensor(theta, dtype=torch.float64), torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), scale * inv)
    return torch.polar(torch.ones_like(angles), angles)


def video_band_dims(head_dim: int) -> tuple[int, int, int]:
    """Real-channel widths of the (frame, row, column) bands, e.g. 44/42/42 for head_dim 128."""
    return head_dim - 4 * (head_dim // 6), 2 * (head_dim // 6), 2 * (head_dim // 6)


def video_freqs(grid: tuple[int, int, int], head_dim: int, temporal_scale: float = 1.0) -> torch.Tensor:
    """[f*h*w, head_dim/2] complex table for a row-major (frame, row, column) token grid."""
    f, h, w = grid
    df, dh, dw = video_band_dims(head_dim)
    tf = rope_table(f, df, scale=temporal_scale)
    th, tw = rope_table(h, dh), rope_table(w, dw)
    return torch.cat([
        tf.view(f, 1, 1, -1).expand(f, h, w, -1),
        th.view(1, h, 1, -1).expand(f, h, w, -1),
        tw.view(1, 1, w, -1).expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, -1)


def audio_freqs(length: int, head_dim: int, temporal_scale: float) -> torch.Tensor:
    """[length, c] complex table; only the first c = band/2 complex pairs of each head rotate."""
    return rope_table(length, video_band_dims(head_dim)[0], scale=temporal_scale)


def apply_rope(x: torch.Tensor, freqs: list[torch.Tensor], offset: int = 0) -> torch.Tensor:
    """Rotate x [B,L,H,d] by per-sample tables freqs[b] ([n_b, c] complex, c <= d/2).

    Token l of this tensor is global position `offset + l` (for sequence shards). Positions at or
    beyond a sample's table length (padding) pass through unchanged, as do channels past 2c.
    """
    b, length, h, d = x.shape
    if len(freqs) == 1 and b == 1 and freqs[0].shape[0] - offset >= length and 2 * freqs[0].shape[1] == d:
        # Every position and channel rotates (one video sample, no padding): no copy of x to patch into.
        table = freqs[0][offset:offset + length].to(x.device)
        xc = torch.view_as_complex(x[0].to(torch.float64).reshape(length, h, d // 2, 2))
        return torch.view_as_real(xc * table[:, None, :]).reshape(1, length, h, d).to(x.dtype)
    out = x.clone()
    for i, table in enumerate(freqs):
        n = min(table.shape[0] - offset, length)
        if n <= 0:
            continue
        c = table.shape[1]
        table = table[offset:offset + n].to(x.device)
        xi = x[i, :n, :, : 2 * c].to(torch.float64).reshape(n, h, c, 2)
        rotated = torch.view_as_real(torch.view_as_complex(xi) * table[:, None, :]).reshape(n, h, 2 * c)
        out[i, :n, :, : 2 * c] = rotated.to(x.dtype)
    return out
