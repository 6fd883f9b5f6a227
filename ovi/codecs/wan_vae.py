"""The real video codec: the Wan2.2 (TI2V-5B) VAE, as diffusers' `AutoencoderKLWan`.

diffusers implements the Wan2.2 architecture (residual down/up blocks, 2x2 pixel patchify) exactly,
so no network code lives here: this module fixes its configuration, loads upstream's
`Wan2.2-TI2V-5B/Wan2.2_VAE.pth` through the key map in `ovi.checkpoint.codec_keys`, and applies
the per-channel latent normalisation Ovi's DiT works in, `z = (mu - mean) / std`.

Upstream's arithmetic is kept where it matters for bit-equality: it stores `1 / std` and
multiplies on encode (`(mu - mean) * inv_std`) and divides by it on decode (`z / inv_std + mean`),
always in fp32; decoding clamps to [-1, 1] (diffusers does this inside `decode`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ovi.checkpoint.adapter import unwrap_container
from ovi.checkpoint.codec_keys import (
    check_codec_keys,
    read_torch_file,
    wan22_vae_to_diffusers,
)
from ovi.checkpoint.quantize import quiet_torchao_import
from ovi.codecs.base import VideoCodec
from ovi.errors import CheckpointError, InputError
from ovi.specs import WAN_VAE_FILE

VAE_FILE = WAN_VAE_FILE  # upstream layout (ovi.specs)

# AutoencoderKLWan arguments for Wan2.2-TI2V-5B (z=48, 16x spatial / 4x temporal).
WAN22_VAE_CONFIG = dict(
    base_dim=160, decoder_base_dim=256, z_dim=48, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
    temperal_downsample=[False, True, True], dropout=0.0, is_residual=True, in_channels=12, out_channels=12,
    patch_size=2, scale_factor_temporal=4, scale_factor_spatial=16,
)

# Per-channel latent statistics of the Wan2.2 VAE (data: upstream vae2_2.py, Wan2_2_VAE.__init__).
LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557, -0.1382, 0.0542, 0.2813, 0.0891,
    0.1570, -0.0098, 0.0375, -0.1825, -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230, -0.0313, -0.1649, 0.0117, 0.0723,
    -0.2839, -0.2083, -0.0520, 0.3748, 0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]
LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013, 0.8158, 1.0344, 0.5894, 1.0901,
    0.6885, 0.6165, 0.8454, 0.4978, 0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093, 0.5709, 0.6065, 0.6415, 0.4944,
    0.5726, 1.2042, 0.5458, 1.6887, 0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]


def make_wan22_vae(**overrides):
    """An AutoencoderKLWan with the TI2V-5B configuration (overrides: smaller test configs).

    Built on the current default device, so `with torch.device("meta"):` gives an empty shell.
    """
    with quiet_torchao_import():
        from diffusers import AutoencoderKLWan
    cfg = dict(WAN22_VAE_CONFIG, latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD)
    cfg.update(overrides)
    z = cfg["z_dim"]
    if len(cfg["latents_mean"]) != z or len(cfg["latents_std"]) != z:
        raise ValueError(f"latents_mean/latents_std need {z} values each (z_dim={z})")
    return AutoencoderKLWan(**cfg)


def expected_vae_shapes(**overrides) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        vae = make_wan22_vae(**overrides)
    return {k: tuple(v.shape) for k, v in vae.state_dict().items()}


class WanVideoCodec(VideoCodec):
    """Wan2.2 VAE behind the VideoCodec interface: [3,F,H,W] in [-1,1] <-> normalised [z, F_lat, H/16, W/16].

    `module` is the AutoencoderKLWan (move it with `.to()`, e.g. for cpu_offload); inputs are moved to
    its device and dtype, and results come back as fp32 on the input's device.
    """

    def __init__(self, vae):
        self.vae = vae.eval().requires_grad_(False)
        cfg = vae.config
        self.latent_channels = cfg.z_dim
        self.spatial_factor = cfg.scale_factor_spatial
        self.temporal_factor = cfg.scale_factor_temporal
        self.mean = torch.tensor(cfg.latents_mean, dtype=torch.float32).view(-1, 1, 1, 1)
        self.inv_std = 1.0 / torch.tensor(cfg.latents_std, dtype=torch.float32).view(-1, 1, 1, 1)

    # ---- loading -------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, dtype: torch.dtype = torch.float32, device="cpu",
                        config: dict | None = None) -> "WanVideoCodec":
        """Load upstream's Wan2.2_VAE.pth (Wan key names); `config` overrides WAN22_VAE_CONFIG (tests)."""
        what = "Wan2.2 video VAE (Wan2.2_VAE.pth)"
        try:
            sd = unwrap_container(read_torch_file(path, what))
        except TypeError as exc:
            raise CheckpointError(f"{path} is not a state dict; expected the {what}") from exc
        mapped, unknown = wan22_vae_to_diffusers(sd)
        config = dict(config or {})
        check_codec_keys(path, what + (" (custom config)" if config else ""), mapped,
                         expected_vae_shapes(**config), extra_unknown=unknown)
        with torch.device("meta"):
            vae = make_wan22_vae(**config)
        vae.load_state_dict({k: v.to(device=device, dtype=dtype) for k, v in mapped.items()},
                            strict=True, assign=True)
        return cls(vae)

    # ---- options -------------------------------------------------------------------------------
    @property
    def module(self) -> torch.nn.Module:
        return self.vae

    def to(self, device=None, dtype=None) -> "WanVideoCodec":
        kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
        torch.nn.Module.to(self.vae, **kwargs)  # plain Module.to: diffusers' override warns on dtype casts
        return self

    def enable_tiling(self, tile_sample_min_height: int | None = None, tile_sample_min_width: int | None = None,
                      tile_sample_stride_height: int | None = None, tile_sample_stride_width: int | None = None):
        """Spatial tiling (pixel units; diffusers' defaults 256/256 tiles, 192 stride) to cap memory."""
        self.vae.enable_tiling(tile_sample_min_height, tile_sample_min_width,
                               tile_sample_stride_height, tile_sample_stride_width)
        return self

    def disable_tiling(self):
        self.vae.use_tiling = False
        return self

    # ---- the codec -----------------------------------------------------------------------------
    def _place(self):
        p = next(self.vae.parameters())
        return p.device, p.dtype

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        c, f, h, w = video.shape if video.dim() == 4 else (None,) * 4
        s, t = self.spatial_factor, self.temporal_factor
        if c != 3 or (f - 1) % t or h % s or w % s:
            raise InputError(f"video must be [3, {t}k+1, {s}m, {s}n] in [-1, 1], got {list(video.shape)}")
        device, dtype = self._place()
        mu = self.vae.encode(video[None].to(device=device, dtype=dtype)).latent_dist.mode()[0].float()
        z = (mu - self.mean.to(device)) * self.inv_std.to(device)
        return z.to(video.device)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.dim() != 4 or latent.shape[0] != self.latent_channels:
            raise InputError(f"video latent must be [{self.latent_channels}, F, h, w], got {list(latent.shape)}")
        device, dtype = self._place()
        z = latent.to(device=device, dtype=torch.float32) / self.inv_std.to(device) + self.mean.to(device)
        video = self.vae.decode(z[None].to(dtype)).sample[0]
        return video.float().clamp(-1, 1).to(latent.device)
