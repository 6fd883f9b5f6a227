"""Toy codecs for the tiny and mid presets: cheap, deterministic, exactly invertible on their subspace
(block-constant video, sums of the codec's tones for audio), with the real codecs' shapes and rates
(4x temporal / 16x spatial video compression; 512 samples per audio latent at 16 kHz). Hand-written:
no library ships a codec this small; they exist so every pipeline path runs in seconds on a CPU.
"""

from __future__ import annotations

import math

import torch

from ovi.codecs.base import AudioCodec, VideoCodec


class ToyVideoCodec(VideoCodec):
    """Causal 4-frame means; each latent pixel holds 3 colours x 4x4 sub-block means of 16x16 px."""

    def encode(self, video):
        c, f, h, w = video.shape
        if c != 3 or (f - 1) % 4 or h % 16 or w % 16:
            raise ValueError(f"video must be [3, 4k+1, 16m, 16n], got {list(video.shape)}")
        groups = [video[:, :1]] + [video[:, 1 + 4 * i: 5 + 4 * i] for i in range((f - 1) // 4)]
        x = torch.stack([g.mean(1) for g in groups], dim=1)  # [3, F_lat, H, W]
        fl, hl, wl = x.shape[1], h // 16, w // 16
        x = x.reshape(3, fl, hl, 4, 4, wl, 4, 4).mean(dim=(4, 7))          # [3,F,hl,sy,wl,sx]
        return x.permute(0, 3, 5, 1, 2, 4).reshape(48, fl, hl, wl)

    def decode(self, latent):
        _, fl, hl, wl = latent.shape
        x = latent.reshape(3, 4, 4, fl, hl, wl).permute(0, 3, 4, 1, 5, 2)  # [3,F,hl,sy,wl,sx]
        x = x[:, :, :, :, None, :, :, None].expand(3, fl, hl, 4, 4, wl, 4, 4).reshape(3, fl, hl * 16, wl * 16)
        frames = [x[:, :1]] + [x[:, i: i + 1].expand(3, 4, hl * 16, wl * 16) for i in range(1, fl)]
        return torch.cat(frames, dim=1).clamp(-1, 1)


class ToyAudioCodec(AudioCodec):
    """20 cosine tones with whole cycles per 512-sample frame (multiples of 31.25 Hz, 219-2031 Hz).

    encode projects each frame on the tones (orthogonal over the frame); decode re-synthesises them.
    """

    CYCLES = (7, 8, 9, 10, 11, 13, 14, 16, 18, 20, 23, 26, 29, 32, 36, 41, 46, 51, 58, 65)
    SCALE = 4.0  # typical amplitudes ~0.25 -> latents ~1

    def __init__(self):
        n = torch.arange(self.samples_per_latent, dtype=torch.float64)
        self.basis = torch.stack([torch.cos(2 * math.pi * k * n / self.samples_per_latent) for k in self.CYCLES])

    def frequencies(self) -> list[float]:
        return [k * self.sample_rate / self.samples_per_latent for k in self.CYCLES]

    def encode(self, wave):
        n = self.samples_per_latent
        length = math.ceil(wave.shape[-1] / n)
        frames = torch.nn.functional.pad(wave.double(), (0, length * n - wave.shape[-1])).reshape(length, n)
        coef = frames @ self.basis.T.to(frames.device) * (2.0 / n)
        return (coef * self.SCALE).float()

    def decode(self, latent):
        coef = latent.double() / self.SCALE
        return (coef @ self.basis.to(latent.device)).reshape(-1).float().clamp(-1, 1)
