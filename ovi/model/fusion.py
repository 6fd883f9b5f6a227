"""Ovi's FusionModel: a video and an audio WanModel fused block by block.

Per block i: both branches run self-attention; then each branch's cross-attention reads the *other*
branch's post-self-attention state, so the two updates are symmetric. `slg_layer` skips block i
entirely. Where tokens live between embedding and head is the `token_layout`'s business (identity
here; ovi.parallel installs a sequence-sharding layout), so the model never communicates.
Signature and return value follow upstream's FusionModel.forward; see DESIGN.md §4 for the one
deliberate difference (dtype follows the weights).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.profiler import record_function
from torch.utils.checkpoint import checkpoint

from ovi.errors import ConfigError
from ovi.model.wan import Attend, CrossAttend, WanModel


class TokenLayout:
    """Identity layout: every token of both modalities on this process."""

    fused_only = False  # a sharding layout cannot run the single-modality paths

    def scatter(self, modality, x, e, e0, info):
        return x, e, e0, info

    def gather(self, modality, out):
        return out


class AllBlocks:
    """Runs every fused block of a forward (the default). A step cache (ovi.pipeline.step_cache) takes
    its place to skip forwards whose input barely changed; a plain attribute, like `token_layout`."""

    def __call__(self, model, blocks, vid, audio, *rest):
        return model.run_blocks(blocks, vid, audio, *rest)


def fused_block_step(vb, ab, vid, audio, v_e0, a_e0, v_ctx, a_ctx, v_info, a_info):
    """One fused block: video block `vb` and audio block `ab` (modules passed in, so one compiled graph
    serves every block: ovi.pipeline.compile)."""
    v_mods, a_mods = vb.modulate(v_e0), ab.modulate(a_e0)
    audio = ab.self_attn_residual(audio, a_mods, a_info)
    vid = vb.self_attn_residual(vid, v_mods, v_info)
    # Both cross-attentions read the other branch's post-self-attention state. Audio's is started
    # first and finished last: a parallel kernel's communication can run under the video branch.
    audio_cross = ab.cross_attn.start(ab.norm3(audio), a_ctx, a_info, target=vid, tgt=v_info)
    vid = vb.cross_ffn_residual(vid, v_mods, v_ctx, v_info, target=audio, tgt=a_info)
    audio = ab.ffn_residual(audio + ab.cross_attn.finish(audio_cross), a_mods)
    return vid, audio


def _all_none(x) -> bool:
    return x is None or (isinstance(x, (list, tuple)) and all(u is None for u in x))


class FusionModel(nn.Module):
    def __init__(self, video_config: dict, audio_config: dict):
        super().__init__()
        self.video_config, self.audio_config = dict(video_config), dict(audio_config)
        self.video_model = WanModel(**video_config, fusion=True)
        self.audio_model = WanModel(**audio_config, fusion=True)
        if len(self.video_model.blocks) != len(self.audio_model.blocks):
            raise ConfigError("video and audio backbones must have the same num_layers to be fused "
                              f"({len(self.video_model.blocks)} vs {len(self.audio_model.blocks)})")
        if self.video_model.is_audio or not self.audio_model.is_audio:
            raise ConfigError("video_config must describe a video backbone (model_type ti2v/t2v) and "
                              "audio_config an audio one (model_type t2a)")
        self.gradient_checkpointing = False
        self.token_layout = TokenLayout()  # a plain attribute: not a module, not in the state_dict
        self.block_runner = AllBlocks()    # likewise; a step cache replaces it
        self.fused_block_fn = fused_block_step  # regional compile swaps in the compiled function

    @property
    def num_blocks(self) -> int:
        return len(self.video_model.blocks)

    def set_compute_dtype(self, dtype: torch.dtype | None) -> None:
        self.video_model.compute_dtype = dtype
        self.audio_model.compute_dtype = dtype

    def set_attention_backend(self, backend: str) -> None:
        for m in self.modules():
            if isinstance(m, (Attend, CrossAttend)):
                m.backend = backend

    def blocks_to_run(self, slg_layer=False) -> list[int]:
        """Indices of the fused blocks a forward runs: all but block `slg_layer` when SLG is on (> 0)."""
        return [i for i in range(self.num_blocks) if not (slg_layer and slg_layer > 0 and i == slg_layer)]

    def fused_block(self, i, vid, audio, v_e0, a_e0, v_ctx, a_ctx, v_info, a_info):
        return self.fused_block_fn(self.video_model.blocks[i], self.audio_model.blocks[i],
                                   vid, audio, v_e0, a_e0, v_ctx, a_ctx, v_info, a_info)

    def run_blocks(self, blocks, vid, audio, v_e0, a_e0, v_ctx, a_ctx, v_info, a_info):
        """Fused blocks `blocks` (indices, in order) on the prepared tokens -> (vid, audio)."""
        for i in blocks:
            args = (vid, audio, v_e0, a_e0, v_ctx, a_ctx, v_info, a_info)
            with record_function(f"fused_block/{i}"):  # a range in profiler traces; ~free otherwise
                if self.gradient_checkpointing and self.training:
                    vid, audio = checkpoint(self.fused_block, i, *args, use_reentrant=False)
                else:
                    vid, audio = self.fused_block(i, *args)
        return vid, audio

    def forward(self, vid, audio, t, vid_context, audio_context, vid_seq_len, audio_seq_len,
                clip_fea=None, clip_fea_audio=None, y=None, first_frame_is_clean=False, slg_layer=False):
        if clip_fea is not None or clip_fea_audio is not None or y is not None:
            raise ValueError("FusionModel takes no clip_fea/clip_fea_audio/y (Ovi's backbones are not CLIP-conditioned)")
        if self.token_layout.fused_only and (_all_none(vid) or _all_none(audio)):
            raise ValueError("this model's tokens are sharded across ranks (sequence parallelism), which runs "
                             "the fused model only; pass both video and audio")
        # first_frame_is_clean: upstream's bool (i2v: the first video latent frame), or ours, a
        # (video latent frames, audio latent tokens) pair: a continuation window's clean prefix per tower.
        video_clean, audio_clean = (first_frame_is_clean if isinstance(first_frame_is_clean, tuple)
                                    else (first_frame_is_clean, False))
        if _all_none(vid):
            # Upstream ignores slg_layer on the single-modality paths; so do we.
            return None, self.audio_model(audio, t, audio_context, audio_seq_len, first_frame_is_clean=audio_clean)
        if _all_none(audio):
            return self.video_model(vid, t, vid_context, vid_seq_len, first_frame_is_clean=video_clean), None

        vid, v_e, v_e0, v_ctx, v_info = self.video_model.prepare(
            vid, t, vid_context, vid_seq_len, first_frame_is_clean=video_clean)
        audio, a_e, a_e0, a_ctx, a_info = self.audio_model.prepare(audio, t, audio_context, audio_seq_len,
                                                                   first_frame_is_clean=audio_clean)
        vid, v_e, v_e0, v_info = self.token_layout.scatter("video", vid, v_e, v_e0, v_info)
        audio, a_e, a_e0, a_info = self.token_layout.scatter("audio", audio, a_e, a_e0, a_info)
        vid, audio = self.block_runner(self, self.blocks_to_run(slg_layer), vid, audio, v_e0, a_e0, v_ctx, a_ctx,
                                       v_info, a_info)
        vid = self.token_layout.gather("video", self.video_model.head(vid, v_e))
        audio = self.token_layout.gather("audio", self.audio_model.head(audio, a_e))
        return (self.video_model.unpatchify(vid, v_info.grid_sizes),
                self.audio_model.unpatchify(audio, a_info.grid_sizes))

    @torch.no_grad()
    def init_weights(self):
        """Upstream's training init, including its quirk: video fusion Linears scaled by 1/10."""
        self.video_model.init_weights()
        self.audio_model.init_weights()
        for name, p in self.video_model.named_parameters():
            if "fusion" in name and name.endswith("weight") and p.dim() == 2:
                p.div_(10.0)
