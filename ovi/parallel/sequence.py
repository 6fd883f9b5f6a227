"""Ulysses sequence parallelism for the FusionModel, applied from outside the model.

Two layouts, chosen by `use_optimized_comms` (both exact: same result as one rank):

* "upstream" (use_optimized_comms: false) - upstream Ovi's scheme, kept as the measured baseline:
  both branches sharded along the sequence; self-attention moves q, k, v and the output with four
  all-to-alls; each fused cross-attention moves q, the other branch's k and v, and the output (four
  more); the device is synchronised after every all-to-all. 16 collectives per fused block.
* "optimized" - the video branch is sharded, the audio branch (<= 314 tokens, ~1% of the FLOPs) is
  replicated on every rank. Video self-attention packs q/k/v into one all-to-all (plus one for the
  output); video->audio and text cross-attention are local (full audio keys live on every rank);
  audio->video cross-attention runs over the local video shard and the partial results are merged
  with one all-gather of (out, log-sum-exp). 3 collectives per fused block, far fewer bytes.
* `enable_async_comms` (optimized only) overlaps that all-gather with the video branch's
  cross-attention + FFN, and pipelines video self-attention in two head groups.

Mechanism: `apply_sequence_parallel` swaps classes in place (state_dict keys are untouched, so
checkpoints, LoRA and FSDP see the same model): the FusionModel's token-layout hooks shard after
embedding and gather head outputs; attention modules get communicating variants.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ovi.model.attention import attention, attention_with_lse, merge_partial_attention
from ovi.model.fusion import FusionModel
from ovi.model.rope import apply_rope
from ovi.model.wan import Attend, CrossAttention, SeqInfo
from ovi.parallel.comm import GroupComm

SCHEMES = ("upstream", "optimized")


# ---- Ulysses layout changes ------------------------------------------------------------------------
def seq_to_heads(comm: GroupComm, x: torch.Tensor, slot: str, async_op=False):
    """[n,B,Ls,H,d] sequence shards -> [n,B,P*Ls,H/P,d] head shards (n tensors in one all-to-all)."""
    n, b, ls, h, d = x.shape
    p = comm.size
    send = x.reshape(n, b, ls, p, h // p, d).permute(3, 0, 1, 2, 4, 5)
    recv = comm.all_to_all(send, slot, async_op=async_op)
    finish = lambda r: r.permute(1, 2, 0, 3, 4, 5).reshape(n, b, p * ls, h // p, d)  # noqa: E731
    return _Deferred(recv, finish) if async_op else finish(recv)


def heads_to_seq(comm: GroupComm, x: torch.Tensor, slot: str, async_op=False):
    """[B,P*Ls,H/P,d] head shards -> [B,Ls,H,d] sequence shards."""
    b, length, h, d = x.shape
    p = comm.size
    send = x.reshape(b, p, length // p, h, d).permute(1, 0, 2, 3, 4)
    recv = comm.all_to_all(send, slot, async_op=async_op)
    finish = lambda r: r.permute(1, 2, 0, 3, 4).reshape(b, length // p, p * h, d)  # noqa: E731
    return _Deferred(recv, finish) if async_op else finish(recv)


class _Deferred:
    def __init__(self, pending, finish):
        self.pending, self.finish = pending, finish

    def wait(self):
        return self.finish(self.pending.wait())


# ---- attention variants ---------------------------------------------------------------------------
class UlyssesAttend(Attend):
    """Self-attention over a sharded sequence: all-to-all to head shards, attend, and back."""

    def configure(self, comm: GroupComm, scheme: str, overlap: bool, slot: str):
        self.comm, self.scheme, self.overlap, self.slot = comm, scheme, overlap, slot
        return self

    def forward(self, q, k, v, k_lens=None):
        comm = self.comm
        heads = q.shape[2]
        if self.scheme == "upstream":
            q, k, v = (seq_to_heads(comm, t[None], f"{self.slot}.{n}")[0] for t, n in zip((q, k, v), "qkv"))
            out = attention(q, k, v, k_lens=k_lens, backend=self.backend, window=self.window_size)
            return heads_to_seq(comm, out, f"{self.slot}.out")
        if self.overlap and heads % (2 * comm.size) == 0:
            return self._pipelined(q, k, v, k_lens)
        q, k, v = seq_to_heads(comm, torch.stack((q, k, v)), f"{self.slot}.qkv")
        out = attention(q, k, v, k_lens=k_lens, backend=self.backend, window=self.window_size)
        return heads_to_seq(comm, out, f"{self.slot}.out")

    def _pipelined(self, q, k, v, k_lens):
        """Two head groups: group 1's all-to-all is in flight while group 0 attends, and so on."""
        comm, half = self.comm, q.shape[2] // 2
        sends = [torch.stack((q[:, :, s], k[:, :, s], v[:, :, s])) for s in (slice(0, half), slice(half, None))]
        inbound = [seq_to_heads(comm, x, f"{self.slot}.qkv{g}", async_op=True) for g, x in enumerate(sends)]
        outbound = []
        for g, pending in enumerate(inbound):
            qg, kg, vg = pending.wait()
            out = attention(qg, kg, vg, k_lens=k_lens, backend=self.backend, window=self.window_size)
            outbound.append(heads_to_seq(comm, out, f"{self.slot}.out{g}", async_op=True))
        return torch.cat([p.wait() for p in outbound], dim=2)


class UpstreamSPCrossAttention(CrossAttention):
    """Upstream's SP cross-attention: q to head shards once, text k/v head-sliced locally, the other
    branch's k/v to head shards, both attentions summed, one all-to-all back."""

    def forward(self, x, context, src: SeqInfo | None = None, target=None, tgt: SeqInfo | None = None):
        comm, slot = self.comm, self.slot
        heads = self.num_heads // comm.size
        h0 = comm.rank * heads
        q = seq_to_heads(comm, self.heads(self.norm_q(self.q(x)))[None], f"{slot}.q")[0]
        k = self.heads(self.norm_k(self.k(context)))[:, :, h0:h0 + heads]
        v = self.heads(self.v(context))[:, :, h0:h0 + heads]
        out = attention(q, k, v, backend=self.attend.backend)
        if target is not None:
            tn = self.pre_attn_norm_fusion(target)
            kx = seq_to_heads(comm, self.heads(self.norm_k_fusion(self.k_fusion(tn)))[None], f"{slot}.kx")[0]
            vx = seq_to_heads(comm, self.heads(self.v_fusion(tn))[None], f"{slot}.vx")[0]
            qx, kx = apply_rope(q, src.freqs), apply_rope(kx, tgt.freqs)  # full sequences now: offset 0
            out = out + attention(qx, kx, vx, k_lens=tgt.lens, backend=self.attend_fusion.backend)
        return self.o(heads_to_seq(comm, out, f"{slot}.out").flatten(2))


class ReplicatedQueryCrossAttention(CrossAttention):
    """Cross-attention of a replicated branch (audio) to a sharded one (video): attend over the local
    key shard, then merge the partial results of all ranks by log-sum-exp (one all-gather)."""

    def forward(self, x, context, src: SeqInfo | None = None, target=None, tgt: SeqInfo | None = None):
        return self.finish(self.start(x, context, src, target, tgt))

    def start(self, x, context, src, target, tgt):
        q = self.heads(self.norm_q(self.q(x)))
        k = self.heads(self.norm_k(self.k(context)))
        v = self.heads(self.v(context))
        text = self.attend(q, k, v, None)
        tn = self.pre_attn_norm_fusion(target)
        kx = apply_rope(self.heads(self.norm_k_fusion(self.k_fusion(tn))), tgt.freqs, tgt.offset)
        vx = self.heads(self.v_fusion(tn))
        local_lens = (tgt.lens - tgt.offset).clamp(0, kx.shape[1])
        out, lse = attention_with_lse(apply_rope(q, src.freqs, src.offset), kx, vx, k_lens=local_lens)
        packed = torch.cat([out, lse[..., None]], dim=-1)
        return text, self.comm.all_gather(packed, f"{self.slot}.merge", async_op=self.overlap)

    def finish(self, started):
        text, gathered = started
        if not torch.is_tensor(gathered):
            gathered = gathered.wait()
        fused = merge_partial_attention(gathered[..., :-1], gathered[..., -1])
        return self.o((text + fused.to(text.dtype)).flatten(2))


# ---- the model ------------------------------------------------------------------------------------
class SequenceParallelFusionModel(FusionModel):
    """FusionModel whose token-layout hooks shard sequences over an SP group."""

    def scatter_tokens(self, modality, x, e, e0, info):
        if modality == "audio" and not self.sp_shard_audio:
            return x, e, e0, info
        comm = self.sp_comm
        length = x.shape[1]
        pad = (-length) % comm.size
        if pad:
            x, e = F.pad(x, (0, 0, 0, pad)), F.pad(e, (0, 0, 0, pad))
            e0 = F.pad(e0, (0, 0, 0, 0, 0, pad))
        shard = (length + pad) // comm.size
        sl = slice(comm.rank * shard, (comm.rank + 1) * shard)
        info = dataclasses.replace(info, offset=comm.rank * shard, sharded=True)
        return x[:, sl], e[:, sl], e0[:, sl], info

    def gather_tokens(self, modality, out):
        if modality == "audio" and not self.sp_shard_audio:
            return out
        gathered = self.sp_comm.all_gather(out, None)  # [P,B,Ls,C]; fresh: it leaves the model
        return gathered.permute(1, 0, 2, 3).reshape(out.shape[0], -1, out.shape[2])

    def forward(self, vid, audio, t, vid_context, audio_context, *args, **kwargs):
        if vid is None or audio is None or any(u is None for u in vid) or any(u is None for u in audio):
            raise ValueError("sequence parallelism runs the fused model only; pass both video and audio")
        return super().forward(vid, audio, t, vid_context, audio_context, *args, **kwargs)

    def fused_block(self, i, vid, audio, v_e0, a_e0, v_ctx, a_ctx, v_info, a_info):
        if not self.sp_overlap:
            return super().fused_block(i, vid, audio, v_e0, a_e0, v_ctx, a_ctx, v_info, a_info)
        # Same math as FusionModel.fused_block, reordered: the audio branch's all-gather is in flight
        # while the video branch runs its (local) cross-attention and FFN.
        vb, ab = self.video_model.blocks[i], self.audio_model.blocks[i]
        v_mods, a_mods = vb.modulate(v_e0), ab.modulate(a_e0)
        audio = ab.self_attn_residual(audio, a_mods, a_info)
        vid = vb.self_attn_residual(vid, v_mods, v_info)
        started = ab.cross_attn.start(ab.norm3(audio), a_ctx, a_info, vid, v_info)
        vid = vb.cross_ffn_residual(vid, v_mods, v_ctx, v_info, target=audio, tgt=a_info)
        audio = ab.ffn_residual(audio + ab.cross_attn.finish(started), a_mods)
        return vid, audio


def _swap(module, cls, **attrs):
    module.__class__ = cls
    for k, v in attrs.items():
        setattr(module, k, v)
    return module


def apply_sequence_parallel(model: FusionModel, comm: GroupComm, *, scheme: str = "optimized",
                            overlap: bool = False) -> FusionModel:
    """Turn `model` (in place) into its sequence-parallel form over `comm`'s ranks."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown SP scheme '{scheme}'; use one of {SCHEMES}")
    if comm.size == 1:
        return model
    for branch in (model.video_model, model.audio_model):
        if branch.num_heads % comm.size:
            raise ValueError(f"sp_size {comm.size} does not divide the {branch.num_heads} attention heads")
    overlap = overlap and scheme == "optimized"
    shard_audio = scheme == "upstream"
    comm.sync_after = scheme == "upstream"
    _swap(model, SequenceParallelFusionModel, sp_comm=comm, sp_shard_audio=shard_audio, sp_overlap=overlap)
    for name, branch in (("video", model.video_model), ("audio", model.audio_model)):
        sharded = name == "video" or shard_audio
        for i, block in enumerate(branch.blocks):
            slot = f"{name}.{i % 2}"  # alternate slots: consecutive blocks never share a buffer
            if sharded:
                _swap(block.self_attn.attend, UlyssesAttend).configure(comm, scheme, overlap, f"{slot}.self")
            if scheme == "upstream":
                _swap(block.cross_attn, UpstreamSPCrossAttention, comm=comm, slot=f"{slot}.cross")
            elif name == "audio":
                _swap(block.cross_attn, ReplicatedQueryCrossAttention, comm=comm, slot=f"{slot}.cross",
                      overlap=overlap)
    return model
