"""Codecs of the trained tiny model (`tiny_trained`): spatially local video latents with fixed coordinate
channels, and tone latents with a per-channel scale. Same interface and rates as the other codecs.

Video [3, 17, 128, 128] <-> [48, 5, 16, 16]:
- 8x8-pixel average pooling (so an object's position is *which token* holds it, not a channel pattern
  inside a token: attention and rope can then express a shift),
- latent frame 0 = pixel frame 0; latent frame i = pixel frames 4i-3..4i, one channel group per frame (so
  the decoded clip keeps every frame; contact frames of a bounce stay measurable),
- colours normalised per channel to ~unit variance over the training data (as real VAEs carry their
  per-channel mean/std): 12 (frame-in-group, colour) channels carry the clip,
- channels 12..47 are FIXED: 12 deterministic maps of normalised x, y and latent-frame index (plus
  sines of them), then zeros. They are not generated: training keeps them clean and leaves them out of
  the loss, the engine writes them before every model call (`fixed_latents`). The coordinate maps give
  the backbone an absolute position signal, which its relative 3-D rope cannot give from pure noise
  (without them, the first denoising steps, which set the layout, cannot put "left" anywhere), without
  changing the model's code or keys. Fixing the unused channels, instead of tiling copies of the
  content into them, spares the 128-wide tiny backbone from carrying 144 noise values per token (a 2x2
  patch of 36 noisy channels) through its width: on the two-clip gate the video loss after 300-400 steps
  was 0.53 with three copies and 0.20 with one.
Audio [N] <-> [L, 20]: 20 cosine tones with whole cycles per 512-sample frame (incl. 218.75 / 437.5 /
875 Hz), each scaled so the data's tones and clicks land near unit size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ovi.codecs.base import AudioCodec, VideoCodec

POOL = 8
SUBFRAMES = 4
UNIQUE = SUBFRAMES * 3  # (frame in group, colour) channels
FIXED_CHANNELS = 12     # coordinate maps
# Per-colour mean/std of 8x8-pooled pixels over the training data ([-1, 1] range), measured by
# `ovi.train.data.measure_color_stats()` (2000 clips); a test re-measures them against the current data.
COLOR_MEAN = (-0.0002, 0.0011, -0.0204)
COLOR_STD = (0.176, 0.176, 0.1748)


def coordinate_maps(frames: int, height: int, width: int) -> torch.Tensor:
    """[12, F, H, W]: x, y, t in [-1, 1] at cell centres, and sines/cosines of them."""
    x = (torch.arange(width, dtype=torch.float32) + 0.5) / width * 2 - 1
    y = (torch.arange(height, dtype=torch.float32) + 0.5) / height * 2 - 1
    t = torch.linspace(-1, 1, frames) if frames > 1 else torch.zeros(1)
    X = x.view(1, 1, width).expand(frames, height, width)
    Y = y.view(1, height, 1).expand(frames, height, width)
    T = t.view(frames, 1, 1).expand(frames, height, width)
    pi = math.pi
    maps = [X, Y, T, torch.sin(pi * X), torch.cos(pi * X), torch.sin(pi * Y), torch.cos(pi * Y),
            torch.sin(2 * pi * X), torch.cos(2 * pi * X), torch.sin(2 * pi * Y), torch.cos(2 * pi * Y),
            torch.cos(pi * T)]
    return torch.stack(maps)


class ShapesVideoCodec(VideoCodec):
    latent_channels = 48
    temporal_factor = 4
    spatial_factor = POOL

    def __init__(self, copies: int = 1, coordinates: bool = True):
        self.copies = copies              # tiles of the 12 (frame, colour) channels
        self.coordinates = coordinates    # False: the fixed channels hold zeros (an ablation)
        self.content_channels = UNIQUE * copies
        if self.content_channels + (FIXED_CHANNELS if coordinates else 0) > self.latent_channels:
            raise ValueError(f"{copies} copies of {UNIQUE} channels and {FIXED_CHANNELS} coordinate maps do not "
                             f"fit in {self.latent_channels} latent channels")
        self.mean = torch.tensor(COLOR_MEAN).view(1, 3, 1, 1, 1)
        self.std = torch.tensor(COLOR_STD).view(1, 3, 1, 1, 1)

    def fixed_latents(self, shape) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask, values) [48, F, h, w]: every channel after the content holds a constant map (the
        coordinate maps first, zeros after them)."""
        c, f, h, w = shape
        mask = torch.zeros(c, 1, 1, 1, dtype=torch.bool)
        mask[self.content_channels:] = True
        values = torch.zeros(c, f, h, w)
        if self.coordinates:
            k = self.content_channels
            values[k:k + FIXED_CHANNELS] = coordinate_maps(f, h, w)
        return mask.expand(c, f, h, w), values

    def encode_content(self, video: torch.Tensor) -> torch.Tensor:
        """[3, 4k+1, H, W] -> the 12 normalised (frame-in-group, colour) channels [12, F_lat, H/8, W/8]."""
        c, f, h, w = video.shape
        if c != 3 or (f - 1) % 4 or h % POOL or w % POOL:
            raise ValueError(f"video must be [3, 4k+1, 8m, 8n], got {list(video.shape)}")
        pooled = F.avg_pool2d(video.float().transpose(0, 1), POOL).transpose(0, 1)  # [3, F, h, w]
        groups = [pooled[:, :1].expand(3, SUBFRAMES, *pooled.shape[2:])]
        groups += [pooled[:, 1 + 4 * i: 5 + 4 * i] for i in range((f - 1) // 4)]
        x = torch.stack(groups, 1)                                        # [3, F_lat, 4, h, w]
        x = (x.permute(2, 0, 1, 3, 4) - self.mean.to(x)) / self.std.to(x)  # [4, 3, F_lat, h, w]
        return x.reshape(UNIQUE, *x.shape[2:])

    def assemble(self, content: torch.Tensor) -> torch.Tensor:
        """[..., 12, F, h, w] content -> [..., 48, F, h, w] latents (copies + fixed channels)."""
        x = torch.cat([content.float()] * self.copies, dim=-4)
        pad = torch.zeros(*x.shape[:-4], self.latent_channels - x.shape[-4], *x.shape[-3:])
        x = torch.cat([x, pad], dim=-4)
        mask, values = self.fixed_latents(tuple(x.shape[-4:]))
        return torch.where(mask, values, x)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.assemble(self.encode_content(video))

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        _, fl, hl, wl = latent.shape
        x = latent[:self.content_channels].float().reshape(self.copies, SUBFRAMES, 3, fl, hl, wl).mean(0)
        x = x * self.std.to(x) + self.mean.to(x)                         # [4, 3, F_lat, h, w]
        first = x[:, :, :1].mean(0)                                       # frame 0: the mean of its 4 copies
        rest = x[:, :, 1:].permute(1, 2, 0, 3, 4).reshape(3, (fl - 1) * SUBFRAMES, hl, wl)
        frames = torch.cat([first, rest], 1)                              # [3, F, h, w]
        up = F.interpolate(frames.transpose(0, 1), scale_factor=POOL, mode="bilinear", align_corners=False)
        return up.transpose(0, 1).clamp(-1, 1)


class ShapesAudioCodec(AudioCodec):
    """Cosine tones with whole cycles per frame; per-channel affine normalisation like a VAE's."""

    CYCLES = (7, 8, 9, 10, 11, 13, 14, 16, 18, 20, 23, 25, 28, 32, 36, 41, 46, 51, 58, 65)
    TONES = (7, 14, 28)
    # A data tone has amplitude 0.3 in one of the 3 tone channels (mean 0.1, std ~0.14); other channels
    # hold only clicks (0.025): map those to ~2 so they are neither lost in nor louder than the noise.
    TONE_SHIFT, TONE_SCALE = 0.1, 1 / 0.1414
    CLICK_SCALE = 2.0 / 0.025

    def __init__(self):
        n = torch.arange(self.samples_per_latent, dtype=torch.float64)
        self.basis = torch.stack([torch.cos(2 * math.pi * k * n / self.samples_per_latent) for k in self.CYCLES])
        tone = torch.tensor([k in self.TONES for k in self.CYCLES])
        self.shift = torch.where(tone, self.TONE_SHIFT, 0.0).double()
        self.scale = torch.where(tone, self.TONE_SCALE, self.CLICK_SCALE).double()

    def frequencies(self) -> list[float]:
        return [k * self.sample_rate / self.samples_per_latent for k in self.CYCLES]

    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        n = self.samples_per_latent
        length = math.ceil(wave.shape[-1] / n)
        frames = F.pad(wave.double(), (0, length * n - wave.shape[-1])).reshape(length, n)
        coef = frames @ self.basis.T.to(frames.device) * (2.0 / n)
        return ((coef - self.shift.to(coef.device)) * self.scale.to(coef.device)).float()

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        coef = latent.double() / self.scale.to(latent.device) + self.shift.to(latent.device)
        return (coef @ self.basis.to(latent.device)).reshape(-1).float().clamp(-1, 1)
