"""The two codec interfaces every video / audio codec implements: video <-> [48, F_lat, H/16, W/16],
audio <-> [L, 20] (the real Wan2.2 VAE and MMAudio VAE + BigVGAN, and the toy codecs)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


class VideoCodec(ABC):
    latent_channels = 48
    temporal_factor = 4
    spatial_factor = 16

    def latent_shape(self, num_frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        return (self.latent_channels, 1 + (num_frames - 1) // self.temporal_factor,
                height // self.spatial_factor, width // self.spatial_factor)

    @abstractmethod
    def encode(self, video: torch.Tensor) -> torch.Tensor:  # [3,F,H,W] in [-1,1] -> latent
        ...

    @abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:  # latent -> [3,F,H,W] in [-1,1]
        ...


class AudioCodec(ABC):
    latent_channels = 20
    samples_per_latent = 512
    sample_rate = 16000

    @abstractmethod
    def encode(self, wave: torch.Tensor) -> torch.Tensor:  # [N] -> [L,20]
        ...

    @abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:  # [L,20] -> [L*512]
        ...
