"""Train the tiny Ovi (`tiny_trained`) on synthetic clips with flow matching, on a CPU.

    python -m ovi.train.train --out runs/NAME [--steps N] [--batch B] [--data full|gate] ...
    python -m ovi.train.train --out runs/NAME --export DIR     # EMA weights -> upstream's layout in DIR

Objective (Wan / Ovi flow matching): x_t = (1 - σ) x0 + σ ε, the model predicts v = ε - x0 at timestep
t = 1000 σ, with σ drawn by the same time shift the sampler uses (σ' = sσ / (1 + (s-1)σ), σ ~ U(0,1)).
Video and audio share one σ per clip, as they share one t in the engine. The codec's fixed latents
(coordinate channels) stay clean in x_t and are left out of the loss, exactly as the engine pins them.
Classifier-free guidance: with probability p_uncond a clip is trained with the engine's negative prompts
(video negative for the video branch, audio negative for the audio branch), which is what the engine's
negative pass feeds.

Writes to --out: config.json, loss.jsonl, eval.jsonl (held-out accuracy through the real Engine every
eval_every steps) and ckpt.pt (every ckpt_every steps; a rerun with the same --out resumes from it).
The defaults of TrainConfig are the base recipe (the first run of the chain that
ovi/weights/tiny_trained/training.json records).

Continuation windows (issue 18): with `prefix_frac` > 0, that share of the steps trains a batch of later
windows of the clips' long sequences (ovi.train.data.sequence_window: window 1..sequence_windows-1 as the
engine lays them out), whose first video latent frame and first audio tokens are the previous window's
tail, held clean: timestep 0 on those tokens (the model's `first_frame_is_clean=(frames, tokens)`), written
into x_t and left out of the loss (ovi.pipeline.objective.hold_prefix), as Wan's i2v trains its first
frame. With `turn_frac` > 0, that share of the linear-motion continuation samples turns at the seam: the
carried tail is the old motion's, the new frames move another way from there, and the prompt names the new
way (ovi.train.data.turned_spec): an extension with another direction's prompt turns the object instead of
following the tail's momentum. `--init-from DIR` starts from an exported checkpoint folder (a fine-tune)
instead of random weights.

Shape twins: with `shape_twin_frac` > 0, that share of the plain batches is half clips and half the same
clips drawn with their twin shape (ovi.train.data.shape_twin: square <-> circle, triangle -> square), each
pair sharing its noise, σ and negative-prompt dropout. After 8x8 pooling a square and a circle differ in a
few corner cells; within a pair everything else is the same, so the pair's losses differ by the shape alone.
(Measured in the README: the shipped weights were trained with it, but it drew no better squares than
plain batches from the same checkpoint.) `twin_contrast_weight` adds a loss on the pair's difference alone
(`Trainer.twin_contrast`): measured, it did not draw better squares either.

Degraded inputs: measured (experiments/shape_diagnosis.py), the model rounds squares off in sampling
because the early, uncertain steps leave an in-between, blurred blob and the later steps keep it: noised
from a training square, its x0 prediction at σ 0.3-0.6 decodes with box fill 0.86-0.90 (the data's 0.93),
from the same square blurred by a 3x3 binomial kernel 0.80-0.81 (the blurred input's own 0.81), and its
conditional and negative-prompt passes agree to ~0.01 below σ 0.6 (it reads the shape off x_t and ignores
the word). Training data never shows a blurred or in-between object at low noise, so nothing taught it to
restore one. Three batch kinds try, each building x_t from a degraded clip x_in and training the velocity
that leads from that x_t to the clip's own x0: v = (x_t - x0) / σ = ε - x0 + (1 - σ)/σ · (x_in - x0).
- `shape_blend_frac` (of the twin batches): x_in = x0 + α (x0_twin - x0), so only the prompt says which
  shape the corners should take. Clips dropped to the negative prompt keep the plain input (without a
  word the mix is undecidable).
- `sharpen_frac` (of all batches): x_in = x0 + β (blur(x0) - x0), a 3x3 binomial blur of the content
  channels in each latent frame: the object's edges and corners must come back sharp. With
  `sharpen_prefix`, a continuation window's carried prefix is held at the blurred clip too: in a long
  clip the prefix is the previous window's generated, softer tail, and the new frames should still come
  out sharp.
- `self_correct_frac` (of the batches that are neither): x_in = the model's own one-step x0 estimate of the
  clip from a noisier state (σ_hi ~ U(σ, 1), no gradient; `Trainer.own_estimate`), so what it restores is
  the softness it produces itself, as a sampler's next step sees it, not a fixed blur.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import random
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovi.codecs.shapes import POOL, UNIQUE, ShapesAudioCodec, ShapesVideoCodec
from ovi.codecs.text import WordTokenizer, make_t5
from ovi.errors import CheckpointError, InputError
from ovi.pipeline.objective import (DEGRADED_SIGMA, audio_tokens, content_blur, degraded_velocity_target, hold_prefix,
                                    masked_mse, noised, pin, shift_sigma, velocity_target, video_tokens)
from ovi.train import data

# The engine's default negative prompts (config.py / configs/tiny.yaml): the unconditional branch of
# classifier-free guidance is trained on exactly what the negative pass feeds.
VIDEO_NEG = "jitter, bad hands, blur, distortion"
AUDIO_NEG = "robotic, muffled, echo, distorted"
ARCHITECTURE = "tiny_trained"


@dataclass
class TrainConfig:
    seed: int = 0
    data: str = "full"           # full | gate (two clips that differ only in the direction word)
    num_clips: int = 4000        # pre-encoded training clips (full)
    steps: int = 5000
    stop_at: int = 0             # end the run at this step (0: at `steps`); the lr schedule still spans `steps`
    batch: int = 8
    lr: float = 5e-4
    warmup: int = 200
    min_lr_frac: float = 0.1     # cosine decay to this fraction of lr
    weight_decay: float = 0.01
    ema: float = 0.998
    grad_clip: float = 1.0
    shift: float = 5.0           # timestep shift, the same as the sampler's
    uniform_frac: float = 0.25   # this fraction of σ drawn unshifted (covers low noise too)
    p_uncond: float = 0.1
    curriculum_steps: int = 1000  # first steps draw only red-square-low-tone clips (one per motion word)
    audio_weight: float = 1.0
    coords: bool = True          # False: the codec's fixed channels hold zeros (ablation)
    copies: int = 1              # tiles of the 12 content channels in the video latent
    # architecture: these defaults are the `tiny_trained` preset (a test keeps them equal); other values
    # are for experiments and cannot be exported as tiny_trained
    dim: int = 128
    ffn_dim: int = 512
    freq_dim: int = 64
    num_heads: int = 4
    num_layers: int = 3
    text_len: int = 32
    t5_dim: int = 64
    t5_layers: int = 2
    t5_heads: int = 4
    # evaluation during training
    eval_every: int = 250
    eval_steps: int = 8
    eval_guidance: tuple = (4.0, 3.0)
    eval_slg: int = -1
    ckpt_every: int = 250
    threads: int = 2
    # continuation windows (a fine-tune of the shipped weights teaches them; 0 = the base recipe)
    prefix_frac: float = 0.0     # share of steps whose batch is later windows with a clean prefix
    sequence_windows: int = 6    # continuation windows are drawn from windows 1..sequence_windows-1
    turn_frac: float = 0.0       # share of linear-motion continuation samples that turn (another direction's
                                 # prompt from the seam on: what an extension with a new prompt asks)
    # shape twins: this share of plain batches is half clips and half the same clips with their twin shape
    # (data.SHAPE_TWINS), each pair sharing noise, σ and guidance dropout, so the only difference within a
    # pair is the shape word and the shape's cells (a square and a circle differ in a few corner cells)
    shape_twin_frac: float = 0.0
    # the video loss weighs latent cells at and next to the object (1 + object_weight) x a background cell:
    # the object covers ~4% of the cells, and a shape is told by a few of them (a square's corners)
    object_weight: float = 0.0
    # twin contrast: in a twin batch, also this weight x the MSE between the pair's predicted velocity
    # difference and its target difference, over the cells where the pair's clips differ. The pair shares
    # noise, so the noise cancels and the target difference is -(x0_clip - x0_twin): the shape's own cells,
    # which the plain loss weighs as a few cells among the whole clip's
    twin_contrast_weight: float = 0.0
    # degraded inputs (see the module docstring): x_t is built from a degraded clip while the target stays
    # the clip, so the model learns to restore what sampling leaves degraded. Blend: this share of the twin
    # batches mixes each clip with its twin (twin share ~ U(0, shape_blend_max)); sharpen: this share of all
    # batches blurs the content spatially (strength ~ U(0, sharpen_max)); σ ~ U(degraded_sigma_min, _max)
    shape_blend_frac: float = 0.0
    shape_blend_max: float = 0.6
    sharpen_frac: float = 0.0
    sharpen_max: float = 1.0
    # a sharpen batch of continuation windows blurs the carried clean prefix too, so a window learns to come
    # out sharp after a soft one (in long clips a window's prefix is the previous window's generated tail)
    sharpen_prefix: bool = False
    # self-correction: this share of the batches that are neither blend nor sharpen builds x_t from the model's
    # own one-step x0 estimate, made from the clip noised to a higher σ (no gradient through it): the model
    # learns to restore what it itself leaves soft, not only a fixed blur
    self_correct_frac: float = 0.0
    degraded_sigma_min: float = DEGRADED_SIGMA[0]
    degraded_sigma_max: float = DEGRADED_SIGMA[1]
    init_from: str = ""          # exported checkpoint folder to start from ("" = random init)
    grow: bool = False           # init_from may have fewer blocks than num_layers: see grow_blocks


def model_configs(cfg: TrainConfig) -> tuple[dict, dict]:
    from ovi.model.configs import OVI_AUDIO_CONFIG, OVI_VIDEO_CONFIG
    dims = dict(dim=cfg.dim, ffn_dim=cfg.ffn_dim, freq_dim=cfg.freq_dim, num_heads=cfg.num_heads,
                num_layers=cfg.num_layers, text_len=cfg.text_len, text_dim=cfg.t5_dim)
    return {**OVI_VIDEO_CONFIG, **dims}, {**OVI_AUDIO_CONFIG, **dims}


def t5_config(cfg: TrainConfig, vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, d_model=cfg.t5_dim, d_kv=cfg.t5_dim // cfg.t5_heads, d_ff=2 * cfg.t5_dim,
                num_layers=cfg.t5_layers, num_heads=cfg.t5_heads, max_length=cfg.text_len)




# ---- data ----------------------------------------------------------------------------------------
M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def _mmap_threshold(nbytes: int) -> None:
    """Allocations of at least `nbytes` get their own mmap (returned to the OS when freed). Building the
    data renders thousands of clips through short-lived 128x128 float64 arrays; with glibc's default
    (a threshold that rises after the first frees) they came from the heap and were kept: RSS grew
    ~1.6 MB per clip, 12-17 GB for 4,000 clips and their continuation windows, and the run was killed on
    a shared 23 GB machine. A no-op where libc has no mallopt."""
    import ctypes
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, int(nbytes))
    except (OSError, AttributeError):
        pass


class Dataset:
    """Pre-encoded clips: video content latents (the 12 unique channels, fp16), audio latents, token ids."""

    def __init__(self, specs: list[data.ClipSpec], tokenizer: WordTokenizer, vcodec, acodec,
                 continuation_windows: list[int] | None = None, turns: list[str | None] | None = None,
                 twins: bool = False):
        """`continuation_windows`: per spec, a later window of its sequence to encode too (the clean-prefix
        samples); grouped by their (video, audio) prefix sizes, since one batch shares one prefix. `turns`:
        per spec, None or the motion its continuation window turns to (trained with that motion's prompt).
        `twins`: encode each spec's shape twin too (`data.shape_twin`; `twin_of[j]` is the spec index of
        twin j; its audio is the spec's own)."""
        self.specs = specs
        _mmap_threshold(64 << 10)
        try:
            self._encode(specs, tokenizer, vcodec, acodec, continuation_windows, turns)
            self.twin_of = self.twin_video = None
            if twins:
                self._encode_twins(specs, tokenizer, vcodec)
        finally:
            _mmap_threshold(32 << 20)  # training's tensors: back to heap allocation (mmap per tensor is slow)

    def _encode_twins(self, specs, tokenizer, vcodec):
        pairs = [(i, t) for i, t in enumerate(map(data.shape_twin, specs)) if t is not None]
        self.twin_of = torch.tensor([i for i, _ in pairs])
        self.twin_video = torch.stack([vcodec.encode_content(torch.from_numpy(data.render_video(t))).half()
                                       for _, t in pairs])
        self.twin_ids, self.twin_mask = tokenizer([t.prompt for _, t in pairs])

    def _encode(self, specs, tokenizer, vcodec, acodec, continuation_windows, turns):
        v, a = [], []
        for spec in specs:
            v.append(vcodec.encode_content(torch.from_numpy(data.render_video(spec))).half())
            a.append(acodec.encode(torch.from_numpy(data.render_audio(spec, acodec.CYCLES))))
        self.video = torch.stack(v)
        self.audio = torch.stack(a)
        self.ids, self.mask = tokenizer([s.prompt for s in specs])
        self.cont_video = self.cont_audio = None
        self.cont_ids, self.cont_mask = self.ids, self.mask
        self.prefix_groups: dict[tuple[int, int], torch.Tensor] = {}
        if continuation_windows:
            cv, ca, groups = [], [], {}
            turns = turns or [None] * len(specs)
            for i, (spec, w, turn) in enumerate(zip(specs, continuation_windows, turns)):
                content, audio, k_v, k_a = data.encode_window(spec, w, vcodec, acodec, turn)
                cv.append(content.half())
                ca.append(audio)
                groups.setdefault((k_v, k_a), []).append(i)
            self.cont_video, self.cont_audio = torch.stack(cv), torch.stack(ca)
            self.prefix_groups = {k: torch.tensor(v) for k, v in sorted(groups.items())}
            if any(turns):
                self.cont_ids, self.cont_mask = tokenizer([
                    s.prompt if t is None else dataclasses.replace(s, motion=t).prompt for s, t in zip(specs, turns)])

    def __len__(self):
        return len(self.specs)


def make_specs(cfg: TrainConfig) -> list[data.ClipSpec]:
    rng = random.Random(cfg.seed)
    if cfg.data == "gate":
        base = data.sample_spec(("red", "square", "left", "low"), rng)
        base = dataclasses.replace(base, x0=100.0, y0=64.0, speed=4.5, size=15.0, caption_variant=0)
        right = dataclasses.replace(base, motion="right", x0=28.0)
        return [base, right]
    combos = data.training_combinations()
    return [data.sample_spec(combos[i % len(combos)], rng) for i in range(cfg.num_clips)]


def continuation_windows(cfg: TrainConfig, n: int) -> list[int] | None:
    """Which later window of each clip's sequence the clean-prefix samples use (seeded; None: none)."""
    if cfg.prefix_frac <= 0:
        return None
    if cfg.sequence_windows < 2:
        raise ValueError(f"sequence_windows {cfg.sequence_windows}: a continuation needs at least 2 windows")
    rng = random.Random(cfg.seed + 7919)
    return [rng.randrange(1, cfg.sequence_windows) for _ in range(n)]


def continuation_turns(cfg: TrainConfig, specs: list[data.ClipSpec]) -> list[str | None] | None:
    """Per spec, the motion its continuation window turns to (None: it keeps its own), for a `turn_frac`
    share of the linear-motion specs (seeded; None when no continuation is trained or nothing turns)."""
    if cfg.prefix_frac <= 0 or cfg.turn_frac <= 0:
        return None
    rng = random.Random(cfg.seed + 104729)
    return [rng.choice([m for m in data.LINEAR_MOTIONS if m != s.motion])
            if s.motion in data.LINEAR_MOTIONS and rng.random() < cfg.turn_frac else None for s in specs]


# ---- model ---------------------------------------------------------------------------------------
# |clean content - background| above this (normalised units, ~5% of a cell covered by a palette colour):
# the cell holds part of the object (object_weight)
OBJECT_CELL_LEVEL = 0.3
# |clip - twin| above this (normalised units) in a latent entry: the pair differs there (twin_contrast)
TWIN_DIFFERENCE = 0.05
BLOCK_KEY = re.compile(r"^(video_model|audio_model)\.blocks\.(\d+)\.(.*)$")
# the layers whose output is added to the residual stream: zeroed, they make a block the identity
RESIDUAL_OUTPUTS = ("self_attn.o.", "cross_attn.o.", "ffn.2.")


def count_blocks(state: dict) -> int:
    return 1 + max(int(m[2]) for m in map(BLOCK_KEY.match, state) if m)


def grow_blocks(state: dict, layers: int) -> dict:
    """A fusion state dict with `layers` blocks per tower from one with fewer, computing the same function:
    the new blocks are copies of the middle block, inserted after it, with the layers that write to the
    residual stream zeroed (a fused block adds self-attention, cross-attention and FFN outputs to its
    input and nothing else, so it starts as the identity; its inner weights start as trained features).
    Depth grown this way keeps what the shallower model learnt, where a deeper model from scratch would
    cost the whole training chain again."""
    have = count_blocks(state)
    middle = have // 2
    # (source block, is a new zero-output copy) for each block of the grown tower
    order = ([(i, False) for i in range(middle + 1)] + [(middle, True)] * (layers - have)
             + [(i, False) for i in range(middle + 1, have)])
    out = {k: v for k, v in state.items() if not BLOCK_KEY.match(k)}
    for k, v in state.items():
        m = BLOCK_KEY.match(k)
        if not m:
            continue
        tower, index, rest = m[1], int(m[2]), m[3]
        for new, (source, copied) in enumerate(order):
            if source == index:
                zero = copied and rest.startswith(RESIDUAL_OUTPUTS)
                out[f"{tower}.blocks.{new}.{rest}"] = torch.zeros_like(v) if zero else v.clone()
    return out


class Trainer:
    def __init__(self, cfg: TrainConfig, out: Path):
        from ovi.model import FusionModel
        self.cfg, self.out = cfg, out
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.vcodec, self.acodec = ShapesVideoCodec(copies=cfg.copies, coordinates=cfg.coords), ShapesAudioCodec()
        self.tokenizer = WordTokenizer(data.vocabulary(), cfg.text_len)
        self.model = FusionModel(*model_configs(cfg))
        self.model.init_weights()
        self.t5 = make_t5(t5_config(cfg, len(self.tokenizer.vocabulary)))
        if cfg.init_from:
            self.load_exported(cfg.init_from)
        self.params = list(self.model.parameters()) + list(self.t5.parameters())
        self.opt = torch.optim.AdamW(self.params, lr=cfg.lr, betas=(0.9, 0.99), weight_decay=cfg.weight_decay)
        self.ema_model = copy.deepcopy(self.model).requires_grad_(False)
        self.ema_t5 = copy.deepcopy(self.t5).requires_grad_(False)
        self.step = 0
        self.neg_ids, self.neg_mask = self.tokenizer([VIDEO_NEG, AUDIO_NEG])
        self.vshape = self.vcodec.latent_shape(data.NUM_FRAMES, data.HEIGHT, data.WIDTH)
        self.ashape = (data.AUDIO_LATENTS, self.acodec.latent_channels)
        self.vfixed = self.vcodec.fixed_latents(self.vshape)
        # the grey background's content channels [12]: what object_weights measures a cell against
        self.background_content = self.vcodec.encode_content(torch.zeros(3, 1, POOL, POOL)).flatten()

    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        p = min(1.0, (step - c.warmup) / max(1, c.steps - c.warmup))
        return c.lr * (c.min_lr_frac + (1 - c.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * p)))

    def encode_text(self, t5, ids, mask) -> list[torch.Tensor]:
        hidden = t5(input_ids=ids, attention_mask=mask).last_hidden_state
        return [h[: int(n)] for h, n in zip(hidden, mask.sum(1))]

    def video_latents(self, content12: torch.Tensor) -> torch.Tensor:
        return self.vcodec.assemble(content12)

    def sample_sigma(self, n: int, gen: torch.Generator) -> torch.Tensor:
        u = torch.rand(n, generator=gen)
        shifted = shift_sigma(u, self.cfg.shift)
        plain = torch.rand(n, generator=gen) < self.cfg.uniform_frac
        return torch.where(plain, u, shifted).clamp(1e-3, 1.0)

    def loss(self, ds: Dataset, idx: torch.Tensor, gen: torch.Generator, model=None, t5=None,
             prefix: tuple[int, int] | None = None, twins: bool = False, blend: bool = False,
             sharpen: bool = False, self_correct: bool = False):
        """Flow-matching losses (video, audio) of a batch. `prefix` (k_v, k_a): the batch is the clips'
        continuation windows, their first k_v video latent frames / k_a audio tokens clean (t=0, pinned in
        x_t, out of the loss). `twins`: `idx` picks shape twins (`ds.twin_of`); the batch is those clips
        and then their twins, pair i and i + len(idx) sharing noise, σ and guidance dropout. `blend` (with
        `twins`): each clip's x_t is made from a mix with its pair (shape_blend_*), its target still its own;
        `sharpen`: x_t is made from the clips blurred (sharpen_max), the target still the sharp clips (the
        prefix held blurred too with `sharpen_prefix`). `self_correct`: x_t is made from the model's own x0
        estimate (`own_estimate`), the target still the clips."""
        if blend and not twins:
            raise ValueError("blend mixes each clip with its shape twin: it needs a twin batch (twins=True)")
        if self_correct and (blend or sharpen):
            raise ValueError("self_correct builds x_t from the model's own estimate: not with blend or sharpen")
        model, t5 = model or self.model, t5 or self.t5
        pairs = 2 if twins else 1
        if twins:
            own = ds.twin_of[idx]
            x0v = self.video_latents(torch.cat([ds.video[own], ds.twin_video[idx]]))
            x0a = torch.cat([ds.audio[own]] * 2)
            ids, masks = torch.cat([ds.ids[own], ds.twin_ids[idx]]), torch.cat([ds.mask[own], ds.twin_mask[idx]])
        elif prefix:
            x0v, x0a = self.video_latents(ds.cont_video[idx]), ds.cont_audio[idx]
            ids, masks = ds.cont_ids[idx], ds.cont_mask[idx]
        else:
            x0v, x0a = self.video_latents(ds.video[idx]), ds.audio[idx]
            ids, masks = ds.ids[idx], ds.mask[idx]
        b = len(x0v)
        k_v, k_a = prefix or (0, 0)
        clean_fixed = hold_prefix(self.vfixed, x0v, k_v, dim=1)  # the coordinate channels and a clean prefix
        afixed = hold_prefix(None, x0a, k_a, dim=0)
        if blend or sharpen or self_correct:
            lo, hi = self.cfg.degraded_sigma_min, self.cfg.degraded_sigma_max
            sigma = (lo + (hi - lo) * torch.rand(b // pairs, generator=gen)).repeat(pairs)
        else:
            sigma = self.sample_sigma(b // pairs, gen).repeat(pairs)
        ev = torch.randn((b // pairs, *x0v.shape[1:]), generator=gen).repeat(pairs, 1, 1, 1, 1)
        ea = torch.randn((b // pairs, *x0a.shape[1:]), generator=gen).repeat(pairs, 1, 1)
        sv, sa = sigma.view(b, 1, 1, 1, 1), sigma.view(b, 1, 1)
        uncond = (torch.rand(b // pairs, generator=gen) < self.cfg.p_uncond).repeat(pairs)
        ids, masks = torch.cat([ids, self.neg_ids]), torch.cat([masks, self.neg_mask])
        ctx = self.encode_text(t5, ids, masks)
        vctx = [ctx[b] if uncond[i] else ctx[i] for i in range(b)]
        actx = [ctx[b + 1] if uncond[i] else ctx[i] for i in range(b)]
        lengths = dict(vid_seq_len=video_tokens(self.vshape), audio_seq_len=audio_tokens(x0a.shape[1:]),
                       first_frame_is_clean=(k_v, k_a) if prefix else False)
        source = x0v  # what x_t is made from: the clips, or the clips degraded (blend / sharpen / self_correct)
        if blend:
            share = (self.cfg.shape_blend_max * torch.rand(b // pairs, generator=gen)).repeat(pairs)
            share = torch.where(uncond, 0.0, share).view(b, 1, 1, 1, 1)
            source = source + share * (x0v.roll(b // pairs, dims=0) - x0v)  # roll: each clip's pair
        if sharpen:
            strength = (self.cfg.sharpen_max * torch.rand(b // pairs, generator=gen)).repeat(pairs)
            source = self.blurred(source, strength.view(b, 1, 1, 1, 1))
        if self_correct:
            source = self.own_estimate(model, x0v, x0a, sigma, vctx, actx, clean_fixed, afixed, gen, **lengths)
        vfixed = hold_prefix(self.vfixed, source, k_v, dim=1) if sharpen and self.cfg.sharpen_prefix else clean_fixed
        xtv = pin(noised(source, ev, sv), vfixed)
        xta = pin(noised(x0a, ea, sa), afixed)
        target = velocity_target(x0v, ev) if source is x0v else degraded_velocity_target(x0v, ev, source, sv)
        ov, oa = model(list(xtv), list(xta), sigma * 1000.0, vctx, actx, **lengths)
        lv = masked_mse(torch.stack(ov), target, vfixed, self.object_weights(x0v))
        if twins and self.cfg.twin_contrast_weight:
            lv = lv + self.cfg.twin_contrast_weight * self.twin_contrast(torch.stack(ov), target, x0v, vfixed)
        la = masked_mse(torch.stack(oa), velocity_target(x0a, ea), afixed)
        return lv, la, sigma

    def twin_contrast(self, pred: torch.Tensor, target: torch.Tensor, x0v: torch.Tensor, fixed) -> torch.Tensor:
        """MSE between a twin batch's predicted and target pair differences (clip i minus twin i, the batch's
        two halves), over the content entries whose clean latents differ within the pair."""
        half = len(pred) // 2
        differs = ((x0v[:half] - x0v[half:]).abs() > TWIN_DIFFERENCE).float()
        if not differs.any():
            return pred.sum() * 0.0
        return masked_mse(pred[:half] - pred[half:], target[:half] - target[half:], fixed, differs)

    def own_estimate(self, model, x0v, x0a, sigma, vctx, actx, vfixed, afixed, gen, **lengths) -> torch.Tensor:
        """The model's one-step x0 estimate of the clips x0v from a noisier state, as a sampler makes one: each
        clip noised to σ_hi ~ U(σ, 1) (fresh noise, both towers), x0_hat = x_hi - σ_hi v, no gradient; the
        fixed entries (coordinate channels, a clean prefix) written back."""
        b = len(x0v)
        high = sigma + (1 - sigma) * torch.rand(b, generator=gen)
        hv, ha = high.view(b, 1, 1, 1, 1), high.view(b, 1, 1)
        xv = pin(noised(x0v, torch.randn(x0v.shape, generator=gen), hv), vfixed)
        xa = pin(noised(x0a, torch.randn(x0a.shape, generator=gen), ha), afixed)
        with torch.no_grad():
            ov, _ = model(list(xv), list(xa), high * 1000.0, [c.detach() for c in vctx], [c.detach() for c in actx],
                          **lengths)
        return pin(xv - hv * torch.stack(ov), vfixed)

    def blurred(self, x0v: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
        """x0v [B, C, F, h, w] with its content channels moved `strength` of the way to their 3x3 binomial
        blur within each latent frame (`spatial_blur`); the fixed channels unchanged."""
        return content_blur(x0v, self.vcodec.content_channels, strength)

    def object_weights(self, x0v: torch.Tensor) -> torch.Tensor | None:
        """[B, 1, F, h, w] video loss weights: 1 + object_weight on the cells whose clean content differs
        from the background (in any frame of their latent frame's group) and their 8 neighbours, 1 elsewhere;
        None when object_weight is 0."""
        if not self.cfg.object_weight:
            return None
        content = x0v[:, :UNIQUE]  # one tile of the (frame, colour) channels: further copies repeat it
        background = self.background_content.to(content).view(1, -1, 1, 1, 1)
        near = (content - background).abs().amax(1, keepdim=True) > OBJECT_CELL_LEVEL
        near = F.max_pool3d(near.float(), (1, 3, 3), stride=1, padding=(0, 1, 1))
        return 1.0 + self.cfg.object_weight * near

    @torch.no_grad()
    def update_ema(self):
        d = self.cfg.ema if self.step > self.cfg.warmup else 0.0
        for src, dst in ((self.model, self.ema_model), (self.t5, self.ema_t5)):
            for p, q in zip(src.parameters(), dst.parameters()):
                q.lerp_(p, 1 - d)

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "t5": self.t5.state_dict(), "ema_model": self.ema_model.state_dict(),
                "ema_t5": self.ema_t5.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                "cfg": dataclasses.asdict(self.cfg), "torch_rng": torch.random.get_rng_state()}

    def save(self):
        tmp = self.out / "ckpt.pt.tmp"
        torch.save(self.state(), tmp)
        tmp.replace(self.out / "ckpt.pt")

    def load_exported(self, folder: str | Path) -> None:
        """Start from an exported checkpoint folder (what `export` writes: the fusion safetensors and the
        T5 in Wan's keys); the EMA copies start equal to it."""
        from ovi.checkpoint.adapter import wan_t5_to_hf
        from ovi.checkpoint.loading import read_state_dict
        from ovi.specs import FUSION_DIR, MODEL_SPECS, T5_DIR, T5_FILE
        folder = Path(folder)
        fusion = folder / FUSION_DIR / MODEL_SPECS[ARCHITECTURE].checkpoint_file
        if not fusion.is_file():
            raise CheckpointError(f"--init-from {folder}: no {fusion.relative_to(folder)} there; give a folder "
                                  f"that `--export` wrote (e.g. ovi/weights/tiny_trained)")
        state = {k: v.float() for k, v in read_state_dict(fusion).items()}
        have = count_blocks(state)
        if have != self.cfg.num_layers:
            if not (self.cfg.grow and have < self.cfg.num_layers):
                raise CheckpointError(f"--init-from {folder} has {have} blocks per tower, this run "
                                      f"{self.cfg.num_layers}; pass --num-layers {have}, or --grow to start a "
                                      f"deeper model from it")
            state = grow_blocks(state, self.cfg.num_layers)
        self.model.load_state_dict(state)
        self.t5.load_state_dict(wan_t5_to_hf(torch.load(folder / T5_DIR / T5_FILE, weights_only=True)))

    def load(self, path: Path) -> None:
        st = torch.load(path, weights_only=False)
        self.model.load_state_dict(st["model"])
        self.t5.load_state_dict(st["t5"])
        self.ema_model.load_state_dict(st["ema_model"])
        self.ema_t5.load_state_dict(st["ema_t5"])
        self.opt.load_state_dict(st["opt"])
        self.step = st["step"]
        torch.random.set_rng_state(st["torch_rng"])


# ---- sampling through the real Engine ------------------------------------------------------------
def make_engine(model, t5, tokenizer, vcodec, acodec, *, steps=8, shift=5.0, guidance=(4.0, 3.0), slg=-1,
                solver="unipc"):
    from ovi.config import load_config
    from ovi.pipeline.components import Components
    from ovi.pipeline.engine import Engine
    from ovi.codecs.text import T5TextEncoder
    cfg = load_config(dict(model_name=ARCHITECTURE, sample_steps=steps, shift=shift, video_guidance_scale=guidance[0],
                           audio_guidance_scale=guidance[1], slg_layer=slg, video_frame_height_width=[128, 128],
                           dtype="fp32", device="cpu", solver_name=solver, video_negative_prompt=VIDEO_NEG,
                           audio_negative_prompt=AUDIO_NEG))
    comps = Components(T5TextEncoder(t5.eval(), tokenizer), model.eval(), vcodec, acodec, Path("<memory>"),
                       torch.float32)
    return Engine(cfg, comps, torch.device("cpu"), torch.float32)


def evaluate(engine, specs: list[data.ClipSpec], seeds=(0,)) -> dict:
    from ovi.train import metrics
    pairs, rows = [], []
    for spec in specs:
        for seed in seeds:
            clip = engine.generate(spec.prompt, seed=seed)
            m = metrics.measure(clip.video, clip.audio)
            pairs.append((spec, m))
            rows.append({"prompt": spec.prompt, "seed": seed, "color": m.color, "motion": m.motion, "pitch": m.pitch})
    return {**metrics.score(pairs, data.NUM_FRAMES), "rows": rows}


@torch.no_grad()
def noise_probe(trainer: Trainer, model, t5, specs: list[data.ClipSpec], seed=0) -> dict:
    """From pure noise at t=1000 (σ=1): how much the prediction changes when only the direction word is
    swapped, and the direction of the decoded x0-prediction for each prompt."""
    from ovi.pipeline.images import to_uint8_frames
    from ovi.train import metrics
    g = torch.Generator().manual_seed(seed)
    xv = torch.randn(trainer.vshape, generator=g)
    xv = pin(xv, trainer.vfixed)
    xa = torch.randn(trainer.ashape, generator=g)
    preds, dirs = [], []
    for spec in specs:
        ids, m = trainer.tokenizer([spec.prompt])
        ctx = trainer.encode_text(t5, ids, m)
        ov, oa = model([xv], [xa], torch.tensor([999.0]), ctx, ctx, vid_seq_len=video_tokens(xv.shape),
                       audio_seq_len=audio_tokens(xa.shape))
        x0 = xv - 0.999 * ov[0]
        preds.append(ov[0])
        frames = to_uint8_frames(trainer.vcodec.decode(pin(x0, trainer.vfixed)))
        dirs.append(metrics.measure(frames, np.zeros(data.NUM_SAMPLES, np.float32)).motion)
    rel = float((preds[0] - preds[1]).norm() / preds[0].norm())
    return {"swap_rel_change": rel, "x0_directions": dirs}


# ---- export ------------------------------------------------------------------------------------
def export(tr: Trainer, dest: str | Path, command: str | None = None) -> Path:
    """Write the EMA weights as a checkpoint folder in upstream's layout (what `ckpt_dir` points at):
    Ovi/model.safetensors, Wan2.2-TI2V-5B/models_t5_umt5-xxl-enc-bf16.pth (Wan key names), the word
    tokenizer json, and training.json (recipe, data seed, step, the command that reproduces it)."""
    import platform

    from ovi.checkpoint.adapter import hf_t5_to_wan
    from ovi.checkpoint.loading import save_state_dict
    from ovi.codecs.text import T5_CONFIGS
    from ovi.model.configs import architecture
    from ovi.specs import FUSION_DIR, MODEL_SPECS, T5_DIR, T5_FILE, TOKENIZER_DIR, WORD_TOKENIZER_FILE
    cfg = tr.cfg
    want_t5 = T5_CONFIGS[ARCHITECTURE]
    if list(model_configs(cfg)) != list(architecture(ARCHITECTURE)) or \
            t5_config(cfg, len(tr.tokenizer.vocabulary)) != want_t5:
        raise ValueError(f"this run's dims differ from the {ARCHITECTURE} preset (ovi.model.configs / "
                         "ovi.codecs.text.T5_CONFIGS); only a run with the preset's dims can be exported as it")
    dest = Path(dest)
    save_state_dict(tr.ema_model.state_dict(), dest / FUSION_DIR / MODEL_SPECS[ARCHITECTURE].checkpoint_file)
    t5_dir = dest / T5_DIR
    (t5_dir / TOKENIZER_DIR).mkdir(parents=True, exist_ok=True)
    tmp = t5_dir / (T5_FILE + ".tmp")
    torch.save(hf_t5_to_wan({k: v.contiguous() for k, v in tr.ema_t5.state_dict().items()}), tmp)
    tmp.replace(t5_dir / T5_FILE)
    (t5_dir / TOKENIZER_DIR / WORD_TOKENIZER_FILE).write_text(tr.tokenizer.to_json())
    # a fine-tune's record nests the record of the weights it started from (read before `dest`, which may
    # be that same folder, is overwritten)
    base = Path(cfg.init_from) / "training.json" if cfg.init_from else None
    base_record = json.loads(base.read_text()) if base is not None and base.is_file() else None
    record = {
        "model_name": ARCHITECTURE, "step": tr.step, "weights": "EMA", "config": dataclasses.asdict(cfg),
        "command": command or f"python -m ovi.train.train --out runs/{ARCHITECTURE} --steps {cfg.steps} "
                              f"&& python -m ovi.train.train --out runs/{ARCHITECTURE} --export {dest}",
        "data": {"seed": cfg.seed, "clips": cfg.num_clips, "held_out": [list(c) for c in data.HELD_OUT]},
        "torch": torch.__version__, "python": platform.python_version(), "threads": cfg.threads,
    }
    log = Path(tr.out) / "loss.jsonl"
    if log.is_file() and log.stat().st_size:
        # seconds from the (last) start of the run to its last step, data encoding included
        record["wall_seconds"] = json.loads(log.read_text().splitlines()[-1])["wall"]
    if base_record is not None:
        record["init_from"] = base_record
    (dest / "training.json").write_text(json.dumps(record, indent=1) + "\n")
    return dest


def main(argv=None):
    try:
        run_cli(argv)
    except InputError as exc:  # a bad --init-from or option: one line naming the fix, exit 2 as the ovi CLI does
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def run_cli(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="run folder (logs, ckpt.pt); reruns resume from it")
    ap.add_argument("--export", default=None, metavar="DIR",
                    help="write the run's EMA weights to DIR in upstream's layout and exit")
    ap.add_argument("--command", default=None,
                    help="with --export: the command chain that made the run, recorded in training.json")
    for f in dataclasses.fields(TrainConfig):
        if f.type in ("tuple",):
            continue
        kind = {"int": int, "float": float, "str": str, "bool": lambda s: s.lower() in ("1", "true", "yes")}[f.type]
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=kind, default=None)
    args = ap.parse_args(argv)
    out = Path(args.out)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
                 if f.type != "tuple" and getattr(args, f.name, None) is not None}
    if (out / "ckpt.pt").is_file():
        saved = torch.load(out / "ckpt.pt", weights_only=False)["cfg"]
        saved.update({k: v for k, v in overrides.items()
                      if k in ("steps", "stop_at", "eval_every", "ckpt_every", "threads")})
        saved["eval_guidance"] = tuple(saved["eval_guidance"])
        cfg = TrainConfig(**saved)
    else:
        cfg = TrainConfig(**overrides)
    if args.export:
        if not (out / "ckpt.pt").is_file():
            raise InputError(f"no ckpt.pt in {out}: train first (same --out), then --export")
        tr = Trainer(cfg, out)
        tr.load(out / "ckpt.pt")
        print(export(tr, args.export, args.command))
        return
    train(cfg, out)


def train(cfg: TrainConfig, out: Path, progress: bool = True) -> Trainer:
    from tqdm import tqdm
    t0 = time.time()
    out = Path(out)
    tr = Trainer(cfg, out)  # first: a refused config (a bad --init-from) leaves no run folder behind
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=1))
    if (out / "ckpt.pt").is_file():
        tr.load(out / "ckpt.pt")
    specs = make_specs(cfg)
    ds = Dataset(specs, tr.tokenizer, tr.vcodec, tr.acodec, continuation_windows(cfg, len(specs)),
                 continuation_turns(cfg, specs), twins=cfg.shape_twin_frac > 0 and cfg.data == "full")
    print(f"data: {len(ds)} clips encoded in {time.time() - t0:.0f}s; params "
          f"{sum(p.numel() for p in tr.model.parameters()) / 1e6:.2f}M dit + "
          f"{sum(p.numel() for p in tr.t5.parameters()) / 1e6:.3f}M t5", flush=True)
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + tr.step)
    easy = torch.tensor([i for i, sp in enumerate(specs) if (sp.color, sp.shape, sp.pitch) == ("red", "square", "low")])
    held = data.held_out_specs() if cfg.data == "full" else specs
    loss_log = open(out / "loss.jsonl", "a")
    eval_log = open(out / "eval.jsonl", "a")
    last = min(cfg.steps, cfg.stop_at or cfg.steps)
    bar = tqdm(total=last, initial=tr.step, mininterval=20, disable=not progress)
    tr.model.train()
    t_last = time.time()
    while tr.step < last:
        lr = tr.lr_at(tr.step)
        for gparam in tr.opt.param_groups:
            gparam["lr"] = lr
        prefix, twins, blend = None, False, False
        if ds.prefix_groups and float(torch.rand((), generator=gen)) < cfg.prefix_frac:
            # one prefix size per batch (the model takes one per call): a group drawn by its size
            keys = list(ds.prefix_groups)
            sizes = torch.tensor([len(ds.prefix_groups[k]) for k in keys], dtype=torch.float)
            prefix = keys[int(torch.multinomial(sizes, 1, generator=gen))]
            group = ds.prefix_groups[prefix]
            idx = group[torch.randint(len(group), (cfg.batch,), generator=gen)]
        elif tr.step < cfg.curriculum_steps:
            idx = easy[torch.randint(len(easy), (cfg.batch,), generator=gen)]
        elif ds.twin_of is not None and float(torch.rand((), generator=gen)) < cfg.shape_twin_frac:
            twins = True
            idx = torch.randint(len(ds.twin_of), (cfg.batch // 2,), generator=gen)
            blend = cfg.shape_blend_frac > 0 and float(torch.rand((), generator=gen)) < cfg.shape_blend_frac
        else:
            idx = torch.randint(len(ds), (cfg.batch,), generator=gen)
        sharpen = cfg.sharpen_frac > 0 and float(torch.rand((), generator=gen)) < cfg.sharpen_frac
        self_correct = cfg.self_correct_frac > 0 and not (blend or sharpen) and \
            float(torch.rand((), generator=gen)) < cfg.self_correct_frac
        lv, la, _ = tr.loss(ds, idx, gen, prefix=prefix, twins=twins, blend=blend, sharpen=sharpen,
                            self_correct=self_correct)
        loss = lv + cfg.audio_weight * la
        tr.opt.zero_grad(set_to_none=True)
        loss.backward()
        gn = torch.nn.utils.clip_grad_norm_(tr.params, cfg.grad_clip)
        tr.opt.step()
        tr.step += 1
        tr.update_ema()
        now = time.time()
        loss_log.write(json.dumps({"step": tr.step, "prefix": list(prefix) if prefix else None, "twins": twins,
                                   "blend": blend, "sharpen": sharpen, "self_correct": self_correct,
                                   "loss": loss.item(), "loss_video": lv.item(),
                                   "loss_audio": la.item(), "lr": lr, "grad_norm": float(gn),
                                   "sec": round(now - t_last, 3), "wall": round(now - t0, 1)}) + "\n")
        loss_log.flush()
        t_last = now
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", v=f"{lv.item():.3f}", a=f"{la.item():.3f}", refresh=False)
        if tr.step % cfg.ckpt_every == 0 or tr.step == last:
            tr.save()
        if cfg.eval_every and (tr.step % cfg.eval_every == 0 or tr.step == last):
            te = time.time()
            engine = make_engine(tr.ema_model, tr.ema_t5, tr.tokenizer, tr.vcodec, tr.acodec,
                                 steps=cfg.eval_steps, shift=cfg.shift, guidance=cfg.eval_guidance, slg=cfg.eval_slg)
            res = evaluate(engine, held, seeds=(0, 1) if cfg.data == "gate" else (0,))
            probe_specs = specs[:2] if cfg.data == "gate" else [
                data.ClipSpec("red", "square", "left", "low", 15, 100, 64, 4.5, 16, 8, 60),
                data.ClipSpec("red", "square", "right", "low", 15, 28, 64, 4.5, 16, 8, 60)]
            res.update(noise_probe(tr, tr.ema_model, tr.ema_t5, probe_specs))
            res.update(step=tr.step, wall=round(time.time() - t0, 1), eval_sec=round(time.time() - te, 1))
            rows = res.pop("rows")
            eval_log.write(json.dumps({**res, "rows": rows}) + "\n")
            eval_log.flush()
            print(json.dumps(res), flush=True)
            tr.model.train()
    bar.close()
    return tr


if __name__ == "__main__":
    main()
