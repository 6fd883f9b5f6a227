"""The real audio codec: MMAudio's 16 kHz mel VAE + the BigVGAN v1 vocoder, written here by hand.

Why hand-written: MMAudio is not on PyPI, and PyPI `bigvgan` imports librosa, matplotlib and scipy
(and declares tensorboard, pesq, nnaudio, auraloss, ninja) for a ~200-line network. Both networks
are small, so they are restated from their published architectures (EDM2 magnitude-preserving 1-D
layers for the VAE; BigVGAN's anti-aliased SnakeBeta AMP blocks for the vocoder), with module
names chosen so upstream's state-dict keys load unchanged (weight norm aside, see
`ovi.checkpoint.codec_keys.bigvgan_from_upstream`). Numerical agreement with upstream's own code
is pinned by tests/pipeline/test_mmaudio.py.

Chain (Ovi's 16 kHz mode): latent [L, 20] -> VAE decoder -> log10-mel [80, 2L] -> vocoder -> 512*L
samples at 16 kHz. Encoding: wave -> mel front end (STFT 1024/hop 256, 80 Slaney mels up to 8 kHz;
the filter bank comes from transformers, so no librosa) -> VAE encoder mean -> [L, 20].
The VAE normalises mels with the 80-value mean/std stored in the checkpoint; latents are unscaled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ovi.checkpoint.codec_keys import (
    bigvgan_from_upstream,
    check_codec_keys,
    mmaudio_vae_from_upstream,
    read_torch_file,
)
from ovi.codecs.base import AudioCodec
from ovi.errors import CheckpointError, InputError
from ovi.specs import MMAUDIO_VAE_FILE, MMAUDIO_VOCODER_FILE

VAE_FILE, VOCODER_FILE = MMAUDIO_VAE_FILE, MMAUDIO_VOCODER_FILE  # upstream layout (ovi.specs)

SAMPLE_RATE, N_FFT, HOP, WIN, N_MELS, F_MAX = 16000, 1024, 256, 1024, 80, 8000.0


# ==== EDM2 magnitude-preserving pieces ============================================================
def pixel_norm(x: torch.Tensor, dim, eps: float = 1e-4) -> torch.Tensor:
    """x / (eps + ||x|| / sqrt(n)) over `dim`: unit RMS, with the norm taken in fp32 (EDM2 'normalize')."""
    norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
    norm = torch.add(eps, norm, alpha=math.sqrt(norm.numel() / x.numel()))
    return x / norm.to(x.dtype)


def mp_silu(x: torch.Tensor) -> torch.Tensor:
    return F.silu(x) / 0.596  # 0.596 = RMS of silu(N(0,1))


def mp_sum(a: torch.Tensor, b: torch.Tensor, t: float = 0.3) -> torch.Tensor:
    """Magnitude-preserving blend (1-t)a + tb, rescaled to unit variance for unit-variance inputs."""
    return a.lerp(b, t) / math.sqrt((1 - t) ** 2 + t ** 2)


class MPConv1d(nn.Module):
    """Bias-free conv whose weight is forced to unit norm per output channel (EDM2 'forced weight norm').

    The checkpoint holds the raw training weight; `fold_weight_norm()` bakes the normalisation in
    once after loading (in fp32), which is what MMAudio does before inference.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size))
        self.folded = False

    @torch.no_grad()
    def fold_weight_norm(self):
        w = self.weight.detach().float()
        w = pixel_norm(w, dim=list(range(1, w.ndim))) / math.sqrt(w[0].numel())
        self.weight = nn.Parameter(w.to(self.weight.dtype), requires_grad=False)
        self.folded = True

    def forward(self, x, gain=1):
        if not self.folded:
            raise RuntimeError("MPConv1d used before fold_weight_norm(); load through MMAudioCodec.from_checkpoint")
        w = self.weight * gain
        return F.conv1d(x, w, padding=w.shape[-1] // 2)


class ResBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 3):
        super().__init__()
        self.in_dim, self.out_dim = in_dim, out_dim
        self.conv1 = MPConv1d(in_dim, out_dim, kernel_size)
        self.conv2 = MPConv1d(out_dim, out_dim, kernel_size)
        if in_dim != out_dim:
            self.nin_shortcut = MPConv1d(in_dim, out_dim, 1)

    def forward(self, x):
        x = pixel_norm(x, dim=1)
        h = self.conv2(mp_silu(self.conv1(mp_silu(x))))
        if self.in_dim != self.out_dim:
            x = self.nin_shortcut(x)
        return mp_sum(x, h, 0.3)


class AttnBlock(nn.Module):
    """Single-head self-attention over time with per-channel-vector normalised q, k, v (cosine attention).

    The qkv projection interleaves its outputs per channel: channel c*3 + {0,1,2} is q/k/v of c.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.qkv = MPConv1d(dim, dim * 3, 1)
        self.proj_out = MPConv1d(dim, dim, 1)

    def forward(self, x):
        b, c, n = x.shape
        y = self.qkv(x).reshape(b, 1, c, 3, n)
        q, k, v = pixel_norm(y, dim=2).unbind(3)                 # each [b, 1, c, n]
        h = F.scaled_dot_product_attention(q.transpose(2, 3), k.transpose(2, 3), v.transpose(2, 3))
        h = self.proj_out(h.transpose(2, 3).reshape(b, c, n))
        return mp_sum(x, h, 0.3)


class Downsample(nn.Module):  # 1x1 conv, average-pool by 2, 1x1 conv
    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = MPConv1d(dim, dim, 1)
        self.conv2 = MPConv1d(dim, dim, 1)

    def forward(self, x):
        return self.conv2(F.avg_pool1d(self.conv1(x), kernel_size=2, stride=2))


class Upsample(nn.Module):  # nearest x2, 3-tap conv
    def __init__(self, dim: int):
        super().__init__()
        self.conv = MPConv1d(dim, dim, 3)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest-exact"))


def _level(blocks: list[nn.Module], resample: nn.Module | None, name: str) -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList()  # MMAudio's 16k config has no per-level attention (attn level 3 of 0..2)
    if resample is not None:
        setattr(level, name, resample)
    return level


def _mid(dim: int) -> nn.Module:
    mid = nn.Module()
    mid.block_1, mid.attn_1, mid.block_2 = ResBlock(dim, dim), AttnBlock(dim), ResBlock(dim, dim)
    return mid


@dataclass(frozen=True)
class MMAudioVAEConfig:
    data_dim: int = 80        # mel bins
    embed_dim: int = 20       # latent channels
    hidden_dim: int = 384
    ch_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 2
    down_layers: tuple[int, ...] = (0,)   # levels followed by a 2x time downsample
    clip_act: float = 256.0


class _Encoder(nn.Module):
    def __init__(self, c: MMAudioVAEConfig):
        super().__init__()
        self.c = c
        self.conv_in = MPConv1d(c.data_dim, c.hidden_dim, 3)
        dims = [c.hidden_dim * m for m in (1,) + tuple(c.ch_mult)]
        self.down = nn.ModuleList()
        for i in range(len(c.ch_mult)):
            blocks = [ResBlock(dims[i] if j == 0 else dims[i + 1], dims[i + 1]) for j in range(c.num_res_blocks)]
            self.down.append(_level(blocks, Downsample(dims[i + 1]) if i in c.down_layers else None, "downsample"))
        self.mid = _mid(dims[-1])
        self.conv_out = MPConv1d(dims[-1], 2 * c.embed_dim, 3)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, x):
        h = self.conv_in(x)
        for i, level in enumerate(self.down):
            for block in level.block:
                h = block(h).clamp(-self.c.clip_act, self.c.clip_act)
            if i in self.c.down_layers:
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h))).clamp(-self.c.clip_act, self.c.clip_act)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class _Decoder(nn.Module):
    def __init__(self, c: MMAudioVAEConfig):
        super().__init__()
        self.c = c
        self.up_layers = tuple(i + 1 for i in c.down_layers)  # upsample after the level above each downsample
        top = c.hidden_dim * c.ch_mult[-1]
        self.conv_in = MPConv1d(c.embed_dim, top, 3)
        self.mid = _mid(top)
        levels, block_in = [], top
        for i in reversed(range(len(c.ch_mult))):
            out = c.hidden_dim * c.ch_mult[i]
            blocks = [ResBlock(block_in if j == 0 else out, out) for j in range(c.num_res_blocks + 1)]
            block_in = out
            levels.insert(0, _level(blocks, Upsample(out) if i in self.up_layers else None, "upsample"))
        self.up = nn.ModuleList(levels)  # indexed by level, run from the top level down
        self.conv_out = MPConv1d(block_in, c.data_dim, 3)
        self.learnable_gain = nn.Parameter(torch.zeros([]))

    def forward(self, z):
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(self.conv_in(z))))
        h = h.clamp(-self.c.clip_act, self.c.clip_act)
        for i in reversed(range(len(self.up))):
            for block in self.up[i].block:
                h = block(h).clamp(-self.c.clip_act, self.c.clip_act)
            if i in self.up_layers:
                h = self.up[i].upsample(h)
        return self.conv_out(mp_silu(h), gain=self.learnable_gain + 1)


class MMAudioVAE(nn.Module):
    """1-D mel VAE: [B, 80, 2L] log-mel <-> [B, 20, L] latent mean (keys as MMAudio's `VAE`)."""

    def __init__(self, config: MMAudioVAEConfig = MMAudioVAEConfig()):
        super().__init__()
        self.config = config
        # Mel statistics: filled from the checkpoint (kept [1, C, 1] as MMAudio stores them).
        self.register_buffer("data_mean", torch.zeros(1, config.data_dim, 1))
        self.register_buffer("data_std", torch.ones(1, config.data_dim, 1))
        self.encoder = _Encoder(config)
        self.decoder = _Decoder(config)

    def fold_weight_norm(self):
        for m in self.modules():
            if isinstance(m, MPConv1d):
                m.fold_weight_norm()
        return self

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        """Posterior mean (the first half of the encoder's 2*embed_dim output channels)."""
        moments = self.encoder((mel - self.data_mean) / self.data_std)
        return moments.chunk(2, dim=1)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z) * self.data_std + self.data_mean


# ==== BigVGAN v1 generator ========================================================================
def kaiser_sinc_lowpass(cutoff: float, half_width: float, kernel_size: int) -> torch.Tensor:
    """Kaiser-windowed sinc low-pass FIR, normalised to unit DC gain -> [1, 1, kernel_size] (fp32, CPU).

    The Kaiser beta follows the standard attenuation rule for a transition band of 2*half_width.
    """
    half = kernel_size // 2
    atten = 2.285 * (half - 1) * math.pi * (4 * half_width) + 7.95
    if atten > 50.0:
        beta = 0.1102 * (atten - 8.7)
    elif atten >= 21.0:
        beta = 0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21.0)
    else:
        beta = 0.0
    window = torch.kaiser_window(kernel_size, beta=beta, periodic=False, device="cpu")
    if kernel_size % 2 == 0:
        t = torch.arange(-half, half, device="cpu") + 0.5
    else:
        t = torch.arange(kernel_size, device="cpu") - half
    taps = 2 * cutoff * window * torch.sinc(2 * cutoff * t)
    taps /= taps.sum()
    return taps.view(1, 1, kernel_size)


class _Up2(nn.Module):  # 2x upsample with the low-pass as interpolation kernel
    def __init__(self, kernel_size: int = 12):
        super().__init__()
        self.k = kernel_size
        self.register_buffer("filter", kaiser_sinc_lowpass(0.25, 0.3, kernel_size))

    def forward(self, x):
        pad = self.k // 2 - 1
        crop_l, crop_r = pad * 2 + (self.k - 2) // 2, pad * 2 + (self.k - 1) // 2
        x = F.pad(x, (pad, pad), mode="replicate")
        x = 2 * F.conv_transpose1d(x, self.filter.expand(x.shape[1], -1, -1), stride=2, groups=x.shape[1])
        return x[..., crop_l:-crop_r]


class _LowPass2(nn.Module):  # low-pass then keep every 2nd sample
    def __init__(self, kernel_size: int = 12):
        super().__init__()
        self.k = kernel_size
        self.register_buffer("filter", kaiser_sinc_lowpass(0.25, 0.3, kernel_size))

    def forward(self, x):
        x = F.pad(x, (self.k // 2 - 1 + (self.k % 2), self.k // 2), mode="replicate")
        return F.conv1d(x, self.filter.expand(x.shape[1], -1, -1), stride=2, groups=x.shape[1])


class _Down2(nn.Module):
    def __init__(self):
        super().__init__()
        self.lowpass = _LowPass2()

    def forward(self, x):
        return self.lowpass(x)


class SnakeBeta(nn.Module):
    """x + sin^2(a x) / b with per-channel a = exp(alpha), b = exp(beta) (log-scale parameters)."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels))
        self.beta = nn.Parameter(torch.zeros(channels))

    def forward(self, x):
        a = torch.exp(self.alpha[None, :, None])
        b = torch.exp(self.beta[None, :, None])
        return x + (1.0 / (b + 1e-9)) * torch.pow(torch.sin(x * a), 2)


class AntiAliasedSnake(nn.Module):
    """SnakeBeta evaluated at twice the rate (upsample, activate, low-pass + decimate)."""

    def __init__(self, channels: int):
        super().__init__()
        self.upsample, self.act, self.downsample = _Up2(), SnakeBeta(channels), _Down2()

    def forward(self, x):
        return self.downsample(self.act(self.upsample(x)))


class AMPBlock(nn.Module):
    """BigVGAN 'resblock 1': three (act, dilated conv, act, conv) residual units."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, dilation=d,
                                              padding=(kernel_size * d - d) // 2) for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel_size, padding=(kernel_size - 1) // 2)
                                    for _ in dilations)
        self.activations = nn.ModuleList(AntiAliasedSnake(channels) for _ in range(2 * len(dilations)))

    def forward(self, x):
        for j, (c1, c2) in enumerate(zip(self.convs1, self.convs2)):
            x = c2(self.activations[2 * j + 1](c1(self.activations[2 * j](x)))) + x
        return x


@dataclass(frozen=True)
class BigVGANConfig:
    num_mels: int = 80
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2)          # product 256 = mel hop
    upsample_kernel_sizes: tuple[int, ...] = (8, 8, 4, 4, 4, 4)
    upsample_initial_channel: int = 1536
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = field(default=((1, 3, 5), (1, 3, 5), (1, 3, 5)))


class BigVGANGenerator(nn.Module):
    """BigVGAN v1 (resblock 1, SnakeBeta log-scale, tanh out): [B, 80, T] mel -> [B, 1, 256*T] wave."""

    def __init__(self, config: BigVGANConfig = BigVGANConfig()):
        super().__init__()
        c = config
        self.config = c
        ch = c.upsample_initial_channel
        self.conv_pre = nn.Conv1d(c.num_mels, ch, 7, padding=3)
        self.ups = nn.ModuleList(
            nn.ModuleList([nn.ConvTranspose1d(ch // 2 ** i, ch // 2 ** (i + 1), k, u, padding=(k - u) // 2)])
            for i, (u, k) in enumerate(zip(c.upsample_rates, c.upsample_kernel_sizes)))
        self.resblocks = nn.ModuleList(
            AMPBlock(ch // 2 ** (i + 1), k, tuple(d))
            for i in range(len(c.upsample_rates))
            for k, d in zip(c.resblock_kernel_sizes, c.resblock_dilation_sizes))
        out_ch = ch // 2 ** len(c.upsample_rates)
        self.activation_post = AntiAliasedSnake(out_ch)
        self.conv_post = nn.Conv1d(out_ch, 1, 7, padding=3)

    def forward(self, x):
        n = len(self.config.resblock_kernel_sizes)
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            x = up[0](x)
            xs = self.resblocks[i * n](x)
            for j in range(1, n):
                xs = xs + self.resblocks[i * n + j](x)
            x = xs / n
        return torch.tanh(self.conv_post(self.activation_post(x)))


# ==== mel front end (encode only) =================================================================
def slaney_mel_basis() -> torch.Tensor:
    """[80, 513] fp32 Slaney mel bank, bit-identical to librosa.filters.mel(16000, 1024, 80, 0, 8000).

    transformers supplies the float64 triangles; librosa rounds them to fp32 *before* applying the
    Slaney area normalisation 2 / (f[i+2] - f[i]), so the same two roundings are done here.
    """
    import numpy as np
    from transformers.audio_utils import hertz_to_mel, mel_filter_bank, mel_to_hertz
    tri = mel_filter_bank(num_frequency_bins=N_FFT // 2 + 1, num_mel_filters=N_MELS, min_frequency=0.0,
                          max_frequency=F_MAX, sampling_rate=SAMPLE_RATE, norm=None, mel_scale="slaney")
    edges = mel_to_hertz(np.linspace(hertz_to_mel(0.0, "slaney"), hertz_to_mel(F_MAX, "slaney"), N_MELS + 2), "slaney")
    area = 2.0 / (edges[2:] - edges[:-2])
    return torch.from_numpy((tri.T.astype(np.float32) * area[:, None]).astype(np.float32))


class MelFrontEnd:
    """16 kHz log10-mel as MMAudio computes it: [B, N] wave -> [B, 80, N/256] (fp32).

    Reflect-pads (n_fft - hop)/2 per side and runs a non-centred STFT, so N = 256*k gives k frames.
    Magnitude = sqrt(re^2 + im^2 + 1e-9); Slaney-scale, Slaney-normalised mel bank (0-8 kHz).
    """

    def __init__(self):
        self.mel_basis = slaney_mel_basis()                          # [80, 513]
        self.window = torch.hann_window(WIN)

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        wave = wave.float().clamp(-1.0, 1.0)
        pad = (N_FFT - HOP) // 2
        wave = F.pad(wave.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        spec = torch.stft(wave, N_FFT, hop_length=HOP, win_length=WIN, window=self.window.to(wave.device),
                          center=False, normalized=False, onesided=True, return_complex=True)
        mag = torch.sqrt(torch.view_as_real(spec).pow(2).sum(-1) + 1e-9)
        mel = torch.matmul(self.mel_basis.to(wave.device), mag)
        return torch.log10(torch.clamp(mel, min=1e-5))


# ==== the codec ===================================================================================
class MMAudio(nn.Module):
    """Holder so one `.to()` moves both networks (cpu_offload)."""

    def __init__(self, vae: MMAudioVAE, vocoder: BigVGANGenerator):
        super().__init__()
        self.vae, self.vocoder = vae, vocoder


def _expected(module: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


class MMAudioCodec(AudioCodec):
    """MMAudio 16 kHz VAE + BigVGAN behind the AudioCodec interface: [N] wave <-> [L, 20] latent.

    `module` holds both networks; inputs go to its device/dtype, results come back as fp32 on the
    input's device. encode zero-pads the wave to a multiple of 512 samples (upstream only ever sees
    exact multiples); the mel front end always runs in fp32.
    """

    # Bounded-memory decode (vae_tiling): BigVGAN, the decode's largest working set, runs over chunks of
    # mel frames, each with VOCODER_CONTEXT frames of context on both sides that are decoded and dropped.
    # BigVGAN is convolutional with a receptive radius of 30 mel frames (measured with an impulse), so
    # chunked == whole up to float rounding (tests/pipeline/test_bounded_decode.py). The VAE's mel
    # decode stays whole: it is small (80 x 2L) and its mid attention sees the whole clip.
    DEFAULT_DECODE_CHUNK = 128
    VOCODER_CONTEXT = 32

    def __init__(self, vae: MMAudioVAE, vocoder: BigVGANGenerator):
        self.net = MMAudio(vae, vocoder).eval().requires_grad_(False)
        self.decode_chunk_frames: int | None = None  # mel frames per vocoder chunk; None: the whole clip
        self.latent_channels = vae.config.embed_dim
        self.samples_per_latent = 2 * math.prod(vocoder.config.upsample_rates)
        self.mel = MelFrontEnd()

    @property
    def module(self) -> nn.Module:
        return self.net

    def to(self, device=None, dtype=None) -> "MMAudioCodec":
        self.net.to(**{k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None})
        return self

    # ---- loading -------------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, vae_path: str | Path, vocoder_path: str | Path, dtype: torch.dtype = torch.float32,
                        device="cpu", vae_config: MMAudioVAEConfig | None = None,
                        vocoder_config: BigVGANConfig | None = None) -> "MMAudioCodec":
        """Load upstream's v1-16.pth and best_netG.pt; configs default to MMAudio's 16 kHz networks."""
        vae_what, voc_what = "MMAudio 16 kHz audio VAE (v1-16.pth)", "BigVGAN vocoder (best_netG.pt)"
        vae_config, vocoder_config = vae_config or MMAudioVAEConfig(), vocoder_config or BigVGANConfig()
        try:
            vae_sd = mmaudio_vae_from_upstream(read_torch_file(vae_path, vae_what))
            voc_sd = bigvgan_from_upstream(read_torch_file(vocoder_path, voc_what))
        except TypeError as exc:
            raise CheckpointError(f"{vae_path} / {vocoder_path}: not a state dict ({exc}); expected the "
                                  f"{vae_what} and the {voc_what}") from exc

        with torch.device("meta"):
            vae = MMAudioVAE(vae_config)
            vocoder = BigVGANGenerator(vocoder_config)
        check_codec_keys(vae_path, vae_what, vae_sd, _expected(vae))
        expected_voc = _expected(vocoder)
        for key in expected_voc:  # the anti-alias filters are fixed; older files may omit them
            if key.endswith(".filter") and key not in voc_sd:
                voc_sd[key] = kaiser_sinc_lowpass(0.25, 0.3, expected_voc[key][-1])
        check_codec_keys(vocoder_path, voc_what, voc_sd, expected_voc)

        # MMAudio folds the VAE's forced weight norm in fp32 before any cast.
        vae.load_state_dict({k: v.float() for k, v in vae_sd.items()}, strict=True, assign=True)
        vae.fold_weight_norm()
        vocoder.load_state_dict({k: v.float() for k, v in voc_sd.items()}, strict=True, assign=True)
        return cls(vae, vocoder).to(device=device, dtype=dtype)

    # ---- the codec -----------------------------------------------------------------------------
    def _place(self):
        p = next(self.net.parameters())
        return p.device, p.dtype

    @torch.no_grad()
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 1 or wave.shape[0] == 0:
            raise InputError(f"audio must be a 1-D wave [N] at {self.sample_rate} Hz, got {list(wave.shape)}")
        device, dtype = self._place()
        n = self.samples_per_latent
        length = math.ceil(wave.shape[0] / n)
        x = F.pad(wave.to(device=device, dtype=torch.float32), (0, length * n - wave.shape[0]))
        mel = self.mel(x[None])                                       # [1, 80, 2L]
        z = self.net.vae.encode(mel.to(dtype))                        # [1, 20, L]
        return z[0].t().float().to(wave.device)

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        if latent.dim() != 2 or latent.shape[1] != self.latent_channels:
            raise InputError(f"audio latent must be [L, {self.latent_channels}], got {list(latent.shape)}")
        device, dtype = self._place()
        z = latent.t()[None].to(device=device, dtype=dtype)          # [1, 20, L]
        mel = self.net.vae.decode(z)                                  # [1, 80, 2L]
        wave = self.vocode(mel)                                       # [1, 1, 512L]
        return wave.reshape(-1).float().to(latent.device)

    def vocode(self, mel: torch.Tensor) -> torch.Tensor:
        """BigVGAN over `mel` [1, 80, T], whole or in chunks of `decode_chunk_frames` (see above)."""
        chunk, frames = self.decode_chunk_frames, mel.shape[-1]
        if not chunk or frames <= chunk:
            return self.net.vocoder(mel)
        hop, context = math.prod(self.net.vocoder.config.upsample_rates), self.VOCODER_CONTEXT
        pieces = []
        for start in range(0, frames, chunk):
            lo, hi = max(0, start - context), min(frames, start + chunk + context)
            wave = self.net.vocoder(mel[..., lo:hi])
            keep = min(chunk, frames - start)
            pieces.append(wave[..., (start - lo) * hop:(start - lo + keep) * hop])
        return torch.cat(pieces, dim=-1)
