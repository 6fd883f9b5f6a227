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

Mechanism: `apply_sequence_parallel` installs hooks, never copies of the block math: the FusionModel's
`token_layout` becomes a sharding layout (shard after embedding, gather the head outputs), and the
parameter-free attention kernels (`Attend`, `CrossAttend`) are replaced by communicating variants.
state_dict keys are untouched, so checkpoints, LoRA and FSDP see the same model.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from ovi.model.attention import attention, attention_with_lse, merge_partial_attention
from ovi.model.fusion import FusionModel, TokenLayout
from ovi.model.rope import apply_rope
from ovi.model.wan import Attend, CrossAttend, SeqInfo
from ovi.parallel.comm import GroupComm

SCHEMES = ("upstream", "optimized")
# The SP schemes users choose by name (`ovi bench sp --schemes`, the Studio's engine panel) -> the config keys
# that select them (use_optimized_comms picks the scheme above, enable_async_comms overlaps its all-to-alls).
SCHEME_CONFIGS = {"upstream": dict(use_optimized_comms=False, enable_async_comms=False),
                  "optimized": dict(use_optimized_comms=True, enable_async_comms=False),
                  "optimized+async": dict(use_optimized_comms=True, enable_async_comms=True)}


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


# ---- attention kernels ----------------------------------------------------------------------------
class UlyssesAttend(Attend):
    """Self-attention over a sharded sequence: all-to-all to head shards, attend, and back."""

    def __init__(self, like: Attend, comm: GroupComm, scheme: str, overlap: bool, slot: str):
        super().__init__(like.window_size)
        self.backend = like.backend
        self.comm, self.scheme, self.overlap, self.slot = comm, scheme, overlap, slot

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


class UpstreamSPCrossAttend(CrossAttend):
    """Upstream's SP cross-attention: q to head shards once, text k/v head-sliced locally, the other
    branch's k/v to head shards, both attentions summed, one all-to-all back."""

    def __init__(self, like: CrossAttend, comm: GroupComm, slot: str):
        super().__init__()
        self.backend = like.backend
        self.comm, self.slot = comm, slot

    def forward(self, q, k, v, kx=None, vx=None, src: SeqInfo | None = None, tgt: SeqInfo | None = None):
        comm, slot = self.comm, self.slot
        heads = q.shape[2] // comm.size
        h0 = comm.rank * heads
        q = seq_to_heads(comm, q[None], f"{slot}.q")[0]
        out = attention(q, k[:, :, h0:h0 + heads], v[:, :, h0:h0 + heads], backend=self.backend)
        if kx is not None:
            kx = seq_to_heads(comm, kx[None], f"{slot}.kx")[0]
            vx = seq_to_heads(comm, vx[None], f"{slot}.vx")[0]
            qx, kx = apply_rope(q, src.freqs), apply_rope(kx, tgt.freqs)  # full sequences now: offset 0
            out = out + attention(qx, kx, vx, k_lens=tgt.lens, backend=self.backend)
        return heads_to_seq(comm, out, f"{slot}.out")


class ReplicatedQueryCrossAttend(CrossAttend):
    """Cross-attention of a replicated branch (audio) to a sharded one (video): attend over the local
    key shard, then merge the partial results of all ranks by log-sum-exp (one all-gather). With
    `overlap` the all-gather stays in flight until the caller waits on the returned handle."""

    def __init__(self, like: CrossAttend, comm: GroupComm, slot: str, overlap: bool):
        super().__init__()
        self.backend = like.backend
        self.comm, self.slot, self.overlap = comm, slot, overlap

    def forward(self, q, k, v, kx=None, vx=None, src: SeqInfo | None = None, tgt: SeqInfo | None = None):
        text = attention(q, k, v, backend=self.backend)
        kx = apply_rope(kx, tgt.freqs, tgt.offset)
        local_lens = (tgt.lens - tgt.offset).clamp(0, kx.shape[1])
        out, lse = attention_with_lse(apply_rope(q, src.freqs, src.offset), kx, vx, k_lens=local_lens)
        packed = torch.cat([out, lse[..., None]], dim=-1)
        gathered = self.comm.all_gather(packed, f"{self.slot}.merge", async_op=self.overlap)
        merged = _MergedAttention(text, gathered)
        return merged if self.overlap else merged.wait()


class _MergedAttention:
    """Text attention + the log-sum-exp merge of every rank's partial cross-modal attention."""

    def __init__(self, text, gathered):
        self.text, self.gathered = text, gathered

    def wait(self) -> torch.Tensor:
        gathered = self.gathered if torch.is_tensor(self.gathered) else self.gathered.wait()
        fused = merge_partial_attention(gathered[..., :-1], gathered[..., -1])
        return self.text + fused.to(self.text.dtype)


# ---- the token layout -----------------------------------------------------------------------------
class SequenceShardLayout(TokenLayout):
    """Shards the video (and, in the upstream scheme, the audio) sequence over an SP group after
    embedding, padding to a multiple of the group size; gathers the head outputs."""

    fused_only = True

    def __init__(self, comm: GroupComm, shard_audio: bool):
        self.comm, self.shard_audio = comm, shard_audio

    def scatter(self, modality, x, e, e0, info):
        if modality == "audio" and not self.shard_audio:
            return x, e, e0, info
        comm = self.comm
        length = x.shape[1]
        pad = (-length) % comm.size
        if pad:
            x, e = F.pad(x, (0, 0, 0, pad)), F.pad(e, (0, 0, 0, pad))
            e0 = F.pad(e0, (0, 0, 0, 0, 0, pad))
        shard = (length + pad) // comm.size
        sl = slice(comm.rank * shard, (comm.rank + 1) * shard)
        info = dataclasses.replace(info, offset=comm.rank * shard, sharded=True)
        return x[:, sl], e[:, sl], e0[:, sl], info

    def gather(self, modality, out):
        if modality == "audio" and not self.shard_audio:
            return out
        gathered = self.comm.all_gather(out, None)  # [P,B,Ls,C]; fresh: it leaves the model
        return gathered.permute(1, 0, 2, 3).reshape(out.shape[0], -1, out.shape[2])


def apply_sequence_parallel(model: FusionModel, comm: GroupComm, *, scheme: str = "optimized",
                            overlap: bool = False) -> FusionModel:
    """Install sequence parallelism over `comm`'s ranks on `model` (in place) and return it."""
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
    model.token_layout = SequenceShardLayout(comm, shard_audio)
    for name, branch in (("video", model.video_model), ("audio", model.audio_model)):
        sharded = name == "video" or shard_audio
        for i, block in enumerate(branch.blocks):
            slot = f"{name}.{i % 2}"  # alternate slots: consecutive blocks never share a buffer
            self_attn, cross_attn = block.self_attn, block.cross_attn
            if sharded:
                self_attn.attend = UlyssesAttend(self_attn.attend, comm, scheme, overlap, f"{slot}.self")
            if scheme == "upstream":
                cross_attn.attend = UpstreamSPCrossAttend(cross_attn.attend, comm, f"{slot}.cross")
            elif name == "audio":
                cross_attn.attend = ReplicatedQueryCrossAttend(cross_attn.attend, comm, f"{slot}.cross", overlap)
    return model
