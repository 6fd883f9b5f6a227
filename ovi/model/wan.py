"""One Wan2.2-style backbone (video or audio) with upstream Ovi's structure and parameter names.

Read top to bottom in data-flow order: attention layers, block, model. The model holds no process
state; sequence parallelism and sharding are applied from outside (ovi.parallel) by replacing the
`attend` kernels of the attention modules (parameter-free modules, so state_dict keys never change)
or wrapping the model. The block math exists once, here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ovi.errors import ConfigError
from ovi.model.attention import attention
from ovi.model.layers import (
    ChannelLastConv1d,
    Conv3d,
    ConvMLP,
    Head,
    LayerNorm,
    Linear,
    ModulationAdd,
    RMSNorm,
    sinusoidal_embedding,
)
from ovi.model.rope import apply_rope, audio_freqs, video_freqs


@dataclass
class SeqInfo:
    """Per-batch facts about one modality's token sequence, shared by every block."""
    lens: torch.Tensor                  # [B] true token counts (keys beyond are masked)
    grid_sizes: torch.Tensor            # [B,3] (f,h,w) video or [B,1] (L,) audio
    freqs: list[torch.Tensor] = field(default_factory=list)  # per-sample rope tables (complex128)
    offset: int = 0                     # global position of this tensor's first token (sequence shards)
    sharded: bool = False               # True when this tensor holds one shard of the sequence


class Attend(nn.Module):
    """Self-attention's kernel, a module so ovi.parallel can replace it (e.g. with Ulysses).
    q, k, v [B,L,H,d] (already roped) -> [B,L,H,d]."""

    def __init__(self, window_size=(-1, -1)):
        super().__init__()
        self.window_size = tuple(window_size)
        self.backend = "sdpa"

    def forward(self, q, k, v, k_lens=None):
        return attention(q, k, v, k_lens=k_lens, backend=self.backend, window=self.window_size)


class CrossAttend(nn.Module):
    """Cross-attention's kernel: attention to the text tokens plus, in a fused block, attention to
    the other modality's tokens (both sides roped with their own tables, the target's padding
    masked), summed. Takes un-roped q / kx so a parallel variant can rope after moving them.
    Returns [B,Lq,H,d], or a handle whose `wait()` returns it (a variant with communication in flight)."""

    def __init__(self):
        super().__init__()
        self.backend = "sdpa"

    def forward(self, q, k, v, kx=None, vx=None, src: "SeqInfo | None" = None, tgt: "SeqInfo | None" = None):
        out = attention(q, k, v, backend=self.backend)
        if kx is not None:
            qx = apply_rope(q, src.freqs, src.offset)
            kx = apply_rope(kx, tgt.freqs, tgt.offset)
            out = out + attention(qx, kx, vx, k_lens=tgt.lens, backend=self.backend)
        return out


class SelfAttention(nn.Module):
    def __init__(self, dim, num_heads, window_size=(-1, -1), qk_norm=True, eps=1e-6):
        super().__init__()
        if dim % num_heads:
            raise ConfigError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.q, self.k, self.v, self.o = (Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = RMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.attend = Attend(window_size)

    def heads(self, x):
        return x.unflatten(-1, (self.num_heads, self.head_dim))

    def forward(self, x, info: SeqInfo):
        q = apply_rope(self.heads(self.norm_q(self.q(x))), info.freqs, info.offset)
        k = apply_rope(self.heads(self.norm_k(self.k(x))), info.freqs, info.offset)
        v = self.heads(self.v(x))
        return self.o(self.attend(q, k, v, info.lens).flatten(2))


class CrossAttention(SelfAttention):
    """Text cross-attention; with `fusion`, also attention to the other modality's tokens.

    Text keys are all `text_len` slots, unmasked and un-roped (zero-padded prompts included), as
    upstream. The cross-modal path's output is summed with the text output before the one shared `o`
    (see CrossAttend). `start` / `finish` split the call so a fused block can let a parallel kernel's
    communication run while the other branch computes.
    """

    def __init__(self, dim, num_heads, window_size=(-1, -1), qk_norm=True, eps=1e-6, fusion=False):
        super().__init__(dim, num_heads, window_size, qk_norm, eps)
        self.attend = CrossAttend()
        self.fusion = fusion
        if fusion:
            self.k_fusion = Linear(dim, dim)
            self.v_fusion = Linear(dim, dim)
            self.pre_attn_norm_fusion = LayerNorm(dim, eps, elementwise_affine=True)
            self.norm_k_fusion = RMSNorm(dim, eps)

    def start(self, x, context, src: SeqInfo | None = None, target=None, tgt: SeqInfo | None = None):
        q = self.heads(self.norm_q(self.q(x)))
        k = self.heads(self.norm_k(self.k(context)))
        v = self.heads(self.v(context))
        if target is None:
            return self.attend(q, k, v)
        tn = self.pre_attn_norm_fusion(target)
        kx = self.heads(self.norm_k_fusion(self.k_fusion(tn)))
        vx = self.heads(self.v_fusion(tn))
        return self.attend(q, k, v, kx, vx, src, tgt)

    def finish(self, started):
        out = started if torch.is_tensor(started) else started.wait()
        return self.o(out.flatten(2))

    def forward(self, x, context, src: SeqInfo | None = None, target=None, tgt: SeqInfo | None = None):
        return self.finish(self.start(x, context, src, target, tgt))


class WanAttentionBlock(nn.Module):
    def __init__(self, dim, ffn_dim, num_heads, window_size=(-1, -1), qk_norm=True, cross_attn_norm=True,
                 eps=1e-6, fusion=False):
        super().__init__()
        self.norm1 = LayerNorm(dim, eps)
        self.self_attn = SelfAttention(dim, num_heads, window_size, qk_norm, eps)
        self.norm3 = LayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = CrossAttention(dim, num_heads, (-1, -1), qk_norm, eps, fusion=fusion)
        self.norm2 = LayerNorm(dim, eps)
        self.ffn = nn.Sequential(Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), Linear(ffn_dim, dim))
        self.modulation = ModulationAdd(dim, 6)

    def modulate(self, e0):
        """e0 [B,L,6,D] -> (shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn), each [B,L,D],
        or [B,1,D] when e0 is one timestep broadcast over every token (WanModel.time_embed): the same
        values, broadcast by the residual's arithmetic instead of materialised per token."""
        if e0.shape[1] > 1 and e0.stride(1) == 0:
            e0 = e0[:, :1]
        return [m.squeeze(2) for m in self.modulation(e0).chunk(6, dim=2)]

    def self_attn_residual(self, x, mods, info: SeqInfo):
        return x + self.self_attn(self.norm1(x) * (1 + mods[1]) + mods[0], info) * mods[2]

    def ffn_residual(self, x, mods):
        return x + self.ffn(self.norm2(x) * (1 + mods[4]) + mods[3]) * mods[5]

    def cross_ffn_residual(self, x, mods, context, src: SeqInfo, target=None, tgt: SeqInfo | None = None):
        return self.ffn_residual(x + self.cross_attn(self.norm3(x), context, src, target, tgt), mods)

    def forward(self, x, e0, context, info: SeqInfo):
        mods = self.modulate(e0)
        return self.cross_ffn_residual(self.self_attn_residual(x, mods, info), mods, context, info)


AUDIO_MODEL_TYPES = ("t2a",)
VIDEO_MODEL_TYPES = ("t2v", "ti2v")


class WanModel(nn.Module):
    """One backbone. `fusion=True` adds the cross-modal layers FusionModel needs to every block."""

    def __init__(self, model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=2048, ffn_dim=8192,
                 freq_dim=256, text_dim=4096, out_dim=16, num_heads=16, num_layers=32, window_size=(-1, -1),
                 qk_norm=True, cross_attn_norm=True, eps=1e-6, temporal_rope_scaling_factor=1.0,
                 additional_emb_dim=None, additional_emb_length=None, gradient_checkpointing=False, fusion=False):
        super().__init__()
        if model_type not in AUDIO_MODEL_TYPES + VIDEO_MODEL_TYPES:
            raise ConfigError(
                f"model_type '{model_type}' is not supported: Ovi's backbones are 'ti2v'/'t2v' (video) and 't2a' "
                "(audio); CLIP-conditioned 'i2v' backbones are not used by any Ovi checkpoint")
        if additional_emb_dim is not None or additional_emb_length is not None:
            raise ConfigError(f"additional_emb_dim/additional_emb_length must be null for model_type '{model_type}' "
                              "(they belong to CLIP-conditioned i2v backbones)")
        self.is_audio = model_type in AUDIO_MODEL_TYPES
        patch_size = tuple(patch_size)
        if self.is_audio and patch_size != (1,):
            raise ConfigError(f"audio backbone patch_size must be [1], got {list(patch_size)}")
        if not self.is_audio and len(patch_size) != 3:
            raise ConfigError(f"video backbone patch_size must have 3 entries, got {list(patch_size)}")
        self.model_type, self.patch_size = model_type, patch_size
        self.text_len, self.dim, self.freq_dim, self.out_dim = text_len, dim, freq_dim, out_dim
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.temporal_rope_scaling_factor = temporal_rope_scaling_factor
        self.gradient_checkpointing = gradient_checkpointing
        self.compute_dtype: torch.dtype | None = None  # None: follow the weights (bf16 for fp8 storage)

        if self.is_audio:
            self.patch_embedding = nn.Sequential(
                ChannelLastConv1d(in_dim, dim, kernel_size=7, padding=3), nn.SiLU(),
                ConvMLP(dim, dim * 4, kernel_size=7, padding=3))
        else:
            self.patch_embedding = Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.text_embedding = nn.Sequential(Linear(text_dim, dim), nn.GELU(approximate="tanh"), Linear(dim, dim))
        self.time_embedding = nn.Sequential(Linear(freq_dim, dim), nn.SiLU(), Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), Linear(dim, dim * 6))
        self.blocks = nn.ModuleList(
            WanAttentionBlock(dim, ffn_dim, num_heads, window_size, qk_norm, cross_attn_norm, eps, fusion)
            for _ in range(num_layers))
        self.head = Head(dim, out_dim, patch_size, eps)

    # ---- dtype ---------------------------------------------------------------------------------
    def resolve_compute_dtype(self) -> torch.dtype:
        if self.compute_dtype is not None:
            return self.compute_dtype
        dtype = self.head.head.weight.dtype
        return torch.bfloat16 if dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else dtype

    # ---- input side ----------------------------------------------------------------------------
    def embed(self, x: list[torch.Tensor], seq_len: int, y=None):
        """Patchify each sample and zero-pad to seq_len -> ([B,seq_len,D], grid_sizes, lens)."""
        dtype = self.resolve_compute_dtype()
        if y is not None:
            x = [torch.cat([u, v], dim=0) for u, v in zip(x, y)]
        tokens, grids = [], []
        for u in x:
            u = self.patch_embedding(u.unsqueeze(0).to(dtype))
            if self.is_audio:
                grids.append(u.shape[1:2])
            else:
                grids.append(u.shape[2:])
                u = u.flatten(2).transpose(1, 2)
            tokens.append(u)
        grid_sizes = torch.tensor([list(g) for g in grids], dtype=torch.long)
        lens = torch.tensor([u.shape[1] for u in tokens], dtype=torch.long)
        if int(lens.max()) > seq_len:
            raise ValueError(f"{'audio' if self.is_audio else 'video'} input has {int(lens.max())} tokens but "
                             f"seq_len is {seq_len}; pass seq_len >= the longest sample's token count")
        x = torch.cat([torch.cat([u, u.new_zeros(1, seq_len - u.shape[1], u.shape[2])], dim=1) for u in tokens])
        return x, grid_sizes, lens

    def rope_freqs(self, grid_sizes: torch.Tensor, device) -> list[torch.Tensor]:
        if self.is_audio:
            return [audio_freqs(int(g[0]), self.head_dim, self.temporal_rope_scaling_factor).to(device)
                    for g in grid_sizes]
        # Upstream scales only the audio table; a video backbone's temporal factor is not applied.
        return [video_freqs(tuple(int(v) for v in g), self.head_dim).to(device) for g in grid_sizes]

    def token_timesteps(self, t: torch.Tensor, seq_len: int, grid_sizes, first_frame_is_clean):
        """[B] or [B,L] timesteps -> [B,seq_len]; with a clean first frame its tokens get t=0.
        `first_frame_is_clean` True is upstream's i2v flag (video only); an int n > 0 (ours: a continuation
        window's clean prefix) holds the first n latent frames (video) or n latent tokens (audio) at t=0."""
        if t.dim() == 2:
            return t
        tt = t[:, None].expand(t.shape[0], seq_len).clone()
        if isinstance(first_frame_is_clean, bool):
            clean_frames = 1 if first_frame_is_clean and not self.is_audio else 0
        else:
            clean_frames = int(first_frame_is_clean)
        if clean_frames:
            per_frame = torch.ones_like(grid_sizes[:, 0]) if self.is_audio else grid_sizes[:, 1:].prod(-1)
            for i in range(tt.shape[0]):
                tt[i, : clean_frames * int(per_frame[i])] = 0
        return tt

    def time_embed(self, t_tokens: torch.Tensor):
        """[B,L] timesteps -> e [B,L,D], e0 [B,L,6,D]. Embeds each distinct t once, then gathers; one t for
        every token (the usual case) gives broadcast views (stride 0 over L), so no per-token copy is made."""
        dtype = self.resolve_compute_dtype()
        values, inverse = torch.unique(t_tokens, return_inverse=True)
        sin = sinusoidal_embedding(self.freq_dim, values).to(dtype)
        e = self.time_embedding(sin)
        e0 = self.time_projection(e).unflatten(-1, (6, self.dim))
        if values.numel() == 1:
            return e.expand(*t_tokens.shape, -1), e0.expand(*t_tokens.shape, -1, -1)
        return e[inverse], e0[inverse]

    def embed_context(self, context: list[torch.Tensor]) -> torch.Tensor:
        dtype = self.resolve_compute_dtype()
        padded = []
        for u in context:
            if u.shape[0] > self.text_len:
                raise ValueError(f"text context has {u.shape[0]} tokens, more than text_len {self.text_len}")
            padded.append(torch.cat([u, u.new_zeros(self.text_len - u.shape[0], u.shape[1])]))
        return self.text_embedding(torch.stack(padded).to(dtype))

    def prepare(self, x, t, context, seq_len, y=None, first_frame_is_clean=False):
        """Everything before the blocks: tokens, time embeddings, text context, sequence info."""
        x, grid_sizes, lens = self.embed(x, seq_len, y)
        device = x.device
        t_tokens = self.token_timesteps(t.to(device), seq_len, grid_sizes, first_frame_is_clean)
        e, e0 = self.time_embed(t_tokens)
        info = SeqInfo(lens=lens.to(device), grid_sizes=grid_sizes, freqs=self.rope_freqs(grid_sizes, device))
        return x, e, e0, self.embed_context(context), info

    # ---- output side ---------------------------------------------------------------------------
    def unpatchify(self, x: torch.Tensor, grid_sizes: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for u, g in zip(x, grid_sizes.tolist()):
            if self.is_audio:
                out.append(u[: g[0]])
                continue
            f, h, w = g
            p, q, r = self.patch_size
            u = u[: f * h * w].view(f, h, w, p, q, r, self.out_dim)
            out.append(torch.einsum("fhwpqrc->cfphqwr", u).reshape(self.out_dim, f * p, h * q, w * r))
        return out

    def finish(self, x, e, grid_sizes) -> list[torch.Tensor]:
        return self.unpatchify(self.head(x, e), grid_sizes)

    def forward(self, x, t, context, seq_len, clip_fea=None, y=None, first_frame_is_clean=False, slg_layer=False):
        if clip_fea is not None:
            raise ValueError("clip_fea is only for CLIP-conditioned i2v backbones; Ovi passes None")
        x, e, e0, ctx, info = self.prepare(x, t, context, seq_len, y, first_frame_is_clean)
        for i, block in enumerate(self.blocks):
            if slg_layer and slg_layer > 0 and i == slg_layer:
                continue
            if self.gradient_checkpointing and self.training:
                x = checkpoint(block, x, e0, ctx, info, use_reentrant=False)
            else:
                x = block(x, e0, ctx, info)
        return self.finish(x, e, info.grid_sizes)

    # ---- training init (upstream's recipe; used by make-tiny and training) ---------------------
    @torch.no_grad()
    def init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if not self.is_audio:
            nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for m in list(self.text_embedding) + list(self.time_embedding):
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)
