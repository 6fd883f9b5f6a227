"""Step caching: skip a FusionModel forward whose input barely changed and reuse the cached residual.

Config `step_cache` picks the method, `step_cache_threshold` how much change counts as "barely":

- `teacache`: the relative L1 change of fused block 0's timestep-modulated input (per modality),
  accumulated since the last forward that ran; below the threshold the forward is skipped and the last
  residual (blocks' output minus input) is added to the input instead. TeaCache rescales the change with
  a polynomial fitted per model; none is fitted for ours, so the raw relative change is used.
- `magcache`: the ratio of successive residual magnitudes; skipping multiplies the last measured ratio
  into a running product and adds |1 - product| to an error, and skips while the error is below the
  threshold (at most MAX_CONSECUTIVE_SKIPS in a row). MagCache calibrates the ratios offline on one full
  run; here the ratio of the last two forwards that ran stands in for it (no calibration file needed).
- `fbcache` (First-Block-Cache): fused block 0 always runs; when its residual changed less than the
  threshold (relative L1) since the last forward that ran everything, the other blocks are skipped and
  their cached residual reused.
- `none`: every forward runs (still counted).

Per modality: video and audio each measure their own change and keep their own residual, and a forward
is skipped only when both are below the threshold: a fused block cannot run one modality without the
other (each cross-attention reads the other's state), so skipping one alone would save nothing.
Guidance passes (positive, negative, an SLG pass) each keep their own state, told apart by the skipped
blocks and a fingerprint of the pass's text context. The first forward of each pass and the last step
always run. `forwards` counts the forwards that ran every block (what the sidecar records).

Why not diffusers' hooks (diffusers.hooks FirstBlockCache / MagCache / TeaCache): they attach to the
block modules' `forward` of a transformer with one block list. Our fused block interleaves two towers'
blocks through their methods (audio self-attention, video self-attention, cross-attention in both
directions), so no module's forward is "block i" and the hooks cannot see a block boundary; the
decision also has to be joint across the two towers. So the logic is written here, on
FusionModel.run_blocks, installed as the model's `block_runner`.

With sequence parallelism each rank would decide from its own shard, and ranks that disagree deadlock
in their collectives: step caching is refused for sp > 1 (CFG-parallel is fine: each rank runs whole
passes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ovi.config import check_step_cache
from ovi.errors import InputError

# Used when step_cache_threshold is left unset (null). From the sweep on the shipped trained default
# (experiments/results/step_cache_sweep.jsonl): the smallest threshold that saves >= 30% of forwards and
# keeps every accuracy (shape included) at >= 0.95 of uncached, i.e. the least latent drift for that
# saving. teacache 0.1 saved 38% on earlier weights but 23% on the shipped ones (sampled at guidance 2).
DEFAULT_THRESHOLDS = {"none": 0.0, "teacache": 0.2, "magcache": 0.2, "fbcache": 0.2}
MAX_CONSECUTIVE_SKIPS = 3


def relative_l1(new: torch.Tensor, old: torch.Tensor) -> float:
    return float((new - old).abs().mean() / old.abs().mean().clamp_min(1e-12))


def _fingerprint(t: torch.Tensor) -> float:
    # Same context tensor in, same embedding bits out: a sum tells the guidance passes apart.
    return float(t.double().sum())


@dataclass
class _PassState:
    """What one guidance pass remembers between steps (one entry per modality where a pair)."""
    step: int = 0
    residual: tuple | None = None        # (video, audio) residual of the blocks a skip replaces
    reference: tuple | None = None       # teacache: last modulated input; fbcache: block 0's last residual
    accumulated: list = field(default_factory=lambda: [0.0, 0.0])   # teacache change / magcache error
    product: list = field(default_factory=lambda: [1.0, 1.0])       # magcache running ratio product
    norms: tuple | None = None           # magcache: last residual magnitudes
    ratios: tuple | None = None          # magcache: last measured magnitude ratios
    consecutive: int = 0


class StepCache:
    """A FusionModel `block_runner` that skips forwards (see the module docstring). `start_clip()` before
    each clip (zeroes its counts), `reset(steps)` before each denoising run (a long clip has one per window);
    `record()` -> what the sidecar gets."""

    def __init__(self, method: str = "none", threshold: float | None = None):
        check_step_cache(method, threshold)
        self.method = method
        self.threshold = float(DEFAULT_THRESHOLDS[method] if threshold is None else threshold)
        self.start_clip()
        self.reset()

    def start_clip(self) -> None:
        self.forwards = self.skipped = self.blocks_run = self.blocks_total = 0

    def reset(self, steps: int | None = None) -> None:
        """A new denoising run: no cached residual carries over from the last one."""
        self.steps = steps
        self.passes: dict = {}

    def record(self) -> dict:
        return {"forwards": self.forwards,
                "step_cache": {"method": self.method, "threshold": self.threshold, "forwards": self.forwards,
                               "skipped": self.skipped, "blocks_run": self.blocks_run,
                               "blocks_total": self.blocks_total}}

    def __call__(self, model, blocks, vid, audio, *rest):
        blocks = list(blocks)
        self.blocks_total += len(blocks)
        if self.method == "none" or not blocks:
            self.forwards += 1
            return self._run(model, blocks, vid, audio, rest)
        v_ctx, a_ctx = rest[2], rest[3]
        state = self.passes.setdefault((tuple(blocks), _fingerprint(v_ctx), _fingerprint(a_ctx)), _PassState())
        last_step = self.steps is not None and state.step >= self.steps - 1
        state.step += 1
        step = {"teacache": self._teacache, "magcache": self._magcache, "fbcache": self._fbcache}[self.method]
        return step(state, last_step, model, blocks, vid, audio, rest)

    # ---- shared --------------------------------------------------------------------------------
    def _run(self, model, blocks, vid, audio, rest):
        """Run `blocks` for real, counting a full forward when they are all of them."""
        self.blocks_run += len(blocks)
        return model.run_blocks(blocks, vid, audio, *rest)

    def _run_all(self, state, model, blocks, vid, audio, rest):
        self.forwards += 1
        state.consecutive = 0
        out_v, out_a = self._run(model, blocks, vid, audio, rest)
        state.residual = (out_v - vid, out_a - audio)
        return out_v, out_a

    def _skip(self, state, vid, audio):
        self.skipped += 1
        state.consecutive += 1
        return vid + state.residual[0], audio + state.residual[1]

    def _below(self, values) -> bool:
        return all(v < self.threshold for v in values)

    # ---- methods -------------------------------------------------------------------------------
    def _teacache(self, state, last_step, model, blocks, vid, audio, rest):
        v_e0, a_e0 = rest[0], rest[1]
        first = blocks[0]
        modulated = tuple(_modulated_input(tower.blocks[first], x, e0) for tower, x, e0 in
                          ((model.video_model, vid, v_e0), (model.audio_model, audio, a_e0)))
        if state.reference is not None:
            for m in range(2):
                state.accumulated[m] += relative_l1(modulated[m], state.reference[m])
        state.reference = modulated
        if state.residual is not None and not last_step and self._below(state.accumulated):
            return self._skip(state, vid, audio)
        state.accumulated = [0.0, 0.0]
        return self._run_all(state, model, blocks, vid, audio, rest)

    def _magcache(self, state, last_step, model, blocks, vid, audio, rest):
        if state.ratios is not None and not last_step and state.consecutive < MAX_CONSECUTIVE_SKIPS:
            product = [p * r for p, r in zip(state.product, state.ratios)]
            error = [e + abs(1.0 - p) for e, p in zip(state.accumulated, product)]
            if self._below(error):
                state.product, state.accumulated = product, error
                return self._skip(state, vid, audio)
        state.product, state.accumulated = [1.0, 1.0], [0.0, 0.0]
        out = self._run_all(state, model, blocks, vid, audio, rest)
        norms = tuple(float(r.norm()) for r in state.residual)
        if state.norms is not None:
            state.ratios = tuple(n / max(o, 1e-12) for n, o in zip(norms, state.norms))
        state.norms = norms
        return out

    def _fbcache(self, state, last_step, model, blocks, vid, audio, rest):
        head, tail = blocks[:1], blocks[1:]
        v1, a1 = self._run(model, head, vid, audio, rest)
        first_residual = (v1 - vid, a1 - audio)
        if state.residual is not None and not last_step and self._below(
                relative_l1(new, old) for new, old in zip(first_residual, state.reference)):
            return self._skip(state, v1, a1)
        self.forwards += 1
        state.consecutive = 0
        state.reference = first_residual
        out_v, out_a = self._run(model, tail, v1, a1, rest)
        state.residual = (out_v - v1, out_a - a1)
        return out_v, out_a


def _modulated_input(block, x, e0):
    """Block `block`'s self-attention input: its norm of x, shifted and scaled by the timestep modulation."""
    mods = block.modulate(e0)
    return block.norm1(x) * (1 + mods[1]) + mods[0]


def install_step_cache(model, method: str = "none", threshold: float | None = None, sp: int = 1) -> StepCache:
    """Make a StepCache `model`'s block runner and return it (also for `none`: it counts forwards)."""
    if method != "none" and sp > 1:
        raise InputError(f"step_cache {method} with sp_size {sp}: each rank would decide skips from its own "
                         f"sequence shard and ranks that disagree deadlock; use step_cache: none with sequence "
                         f"parallelism (cfg_parallel works with a step cache)")
    cache = StepCache(method, threshold)
    model.block_runner = cache
    return cache
