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

    def fixed_latents(self, shape) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Latent entries the codec fixes rather than letting the model generate them, as (bool mask,
        values), both of `shape`; None for codecs without any (the real VAEs). Training keeps them clean and
        out of the loss; the engine writes them before every model call (as i2v writes its clean first
        frame), so a codec can hand the backbone information such as absolute position (ovi.codecs.shapes)."""
        return None

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

    def fixed_latents(self, shape) -> tuple[torch.Tensor, torch.Tensor] | None:
        """As VideoCodec.fixed_latents, for [L, C] audio latents."""
        return None

    @abstractmethod
    def encode(self, wave: torch.Tensor) -> torch.Tensor:  # [N] -> [L,20]
        ...

    @abstractmethod
    def decode(self, latent: torch.Tensor) -> torch.Tensor:  # [L,20] -> [L*512]
        ...
