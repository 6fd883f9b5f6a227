"""Training LoRAs on a FusionModel: flow-matching fine-tuning and few-step (Lightning) distillation.

- `TrainableLoRA(model, rank=..., branch=...)` puts trainable peft LoRA layers (A random, B zero: the
  model starts unchanged) on the Linears of a branch's blocks (optionally the fusion layers too) and
  saves them in the native format (`save`), then takes them off (`remove`).
- `flow_matching_loss`: Ovi's objective. x_t = (1 - s) x0 + s e, the model predicts v = e - x0 for both
  modalities at one shared timestep; loss = video_weight * mse_video + audio_weight * mse_audio. The
  two weights are parameters because the modalities' latents differ in size and scale (upstream Ovi
  shares no training code, and its users ask how to weight them). With `sharpen`, x_t is made from the
  clip blurred and the target leads back to the clip (the base Trainer's sharpen batches), so an adapter
  on sharpen-trained weights does not relearn softer objects.
- Distillation: a many-step teacher's ODE trajectory (`euler_trajectory`, e.g. with guidance) gives
  the states at the student's few sigmas; `distillation_loss` asks the student (base + LoRA, guidance
  off) to land on the teacher's next state in one Euler step from each. Sampling the distilled LoRA
  with the same sigma grid (the Lightning profile stored in its header) then follows the teacher's
  path in a handful of forwards.
- `optimize`: the AdamW loop both use, with an optional wall-clock limit.

Velocity functions are passed in, so the pipeline's guidance and sequence lengths stay in one place
(ovi.pipeline.Engine.predict / model_pass); `model_velocity` is the plain single-pass call. The
flow-matching maths (noising, target, pinning, masked loss, token counts, time shift) is
ovi.pipeline.objective's, shared with the engine and the base model's training.

Codecs that fix some latent entries (the trained tiny model's coordinate channels: a codec's
`fixed_latents` -> (bool mask, values)) are handled as the engine and the base model's training handle
them: those entries are written into every model input, kept clean, and left out of every loss
(`Example.video_fixed` / `audio_fixed`; `pinned` for velocity functions).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ovi.errors import LoRAError
from ovi.lora.adapter import BRANCHES, save_native_lora
from ovi.pipeline.objective import (DEGRADED_SIGMA, Fixed, degraded_velocity_target, masked_mse, noised, pin,
                                    shift_sigma, spatial_blur, velocity_target, video_tokens)

Velocity = Callable[[torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Example:
    """One training clip in latent space: clean video [C, F, H, W] and audio [L, C] latents and its text
    context [tokens, text_dim] (Ovi feeds the same context to both branches), plus the entries its codecs
    fix, if any (pinned in every input, out of the loss)."""
    video: torch.Tensor
    audio: torch.Tensor
    context: torch.Tensor
    video_fixed: Fixed = None
    audio_fixed: Fixed = None


def pinned(velocity: Velocity, video_fixed: Fixed, audio_fixed: Fixed) -> Velocity:
    """A velocity function that sees pinned inputs and moves no fixed entry (its velocity is 0 there), so an
    Euler trajectory from pinned latents stays pinned and fixed entries add nothing to a loss."""
    if video_fixed is None and audio_fixed is None:
        return velocity

    def wrapped(video, audio, sigma):
        v, a = velocity(pin(video, video_fixed), pin(audio, audio_fixed), sigma)
        return pin(v, _zeros(video_fixed)), pin(a, _zeros(audio_fixed))
    return wrapped


def _zeros(fixed: Fixed) -> Fixed:
    return None if fixed is None else (fixed[0], torch.zeros_like(fixed[1]))


def model_velocity(model: nn.Module, video: torch.Tensor, audio: torch.Tensor, sigma: float,
                   context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One fused forward at noise level `sigma` (timestep 1000 * sigma) -> (video, audio) velocities."""
    t = torch.tensor([1000.0 * float(sigma)], device=video.device)
    v, a = model([video], [audio], t, [context], [context],
                 vid_seq_len=video_tokens(video.shape, model.video_model.patch_size), audio_seq_len=audio.shape[0])
    return v[0], a[0]


# ---- trainable adapters ------------------------------------------------------------------------------
class TrainableLoRA:
    """Trainable LoRA layers (peft) on `branch`'s block Linears; `include_fusion` adds the cross-modal ones."""

    def __init__(self, model: nn.Module, *, rank: int, alpha: float | None = None, branch: str = "video",
                 include_fusion: bool = False, name: str = "ovi_train", seed: int = 0):
        from peft import LoraConfig, inject_adapter_in_model

        if branch not in BRANCHES:
            raise LoRAError(f"branch {branch!r} must be one of {', '.join(BRANCHES)}")
        if not 1 <= rank:
            raise LoRAError(f"rank {rank} must be >= 1")
        self.model, self.rank, self.alpha, self.branch, self.name = model, rank, float(alpha or rank), branch, name
        prefixes = ("video_model", "audio_model") if branch == "both" else (f"{branch}_model",)
        self.targets = [n for n, m in model.named_modules()
                        if isinstance(m, nn.Linear) and n.startswith(tuple(p + ".blocks." for p in prefixes))
                        and (include_fusion or "fusion" not in n)]
        model.requires_grad_(False)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=self.alpha, lora_dropout=0.0,
                                               target_modules=self.targets), model, adapter_name=name)
        for target in self.targets:  # adapters compute in the dtype the branch computes in
            layer = model.get_submodule(target)
            dtype = model.get_submodule(target.split(".")[0]).resolve_compute_dtype()
            layer.lora_A[name].to(dtype).requires_grad_(True)
            layer.lora_B[name].to(dtype).requires_grad_(True)

    def parameters(self) -> list[nn.Parameter]:
        return [p for t in self.targets for d in ("lora_A", "lora_B")
                for p in getattr(self.model.get_submodule(t), d)[self.name].parameters()]

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return {t: (self.model.get_submodule(t).lora_A[self.name].weight.detach(),
                    self.model.get_submodule(t).lora_B[self.name].weight.detach()) for t in self.targets}

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write the native format (full Ovi names, alpha in the header)."""
        return save_native_lora(path, self.factors(), self.model, alpha=self.alpha, extra=extra)

    def remove(self) -> None:
        """Take the adapters off: every wrapped Linear is the original module again."""
        for target in self.targets:
            parent, _, child = target.rpartition(".")
            setattr(self.model.get_submodule(parent), child, self.model.get_submodule(target).get_base_layer())
        if hasattr(self.model, "peft_config"):
            del self.model.peft_config
        self.model.requires_grad_(False)


# ---- objectives ------------------------------------------------------------------------------------
@dataclass
class LossParts:
    total: torch.Tensor
    video: float
    audio: float


def flow_matching_loss(model: nn.Module, example: Example, sigma: float, video_noise: torch.Tensor,
                       audio_noise: torch.Tensor, *, video_weight: float = 1.0, audio_weight: float = 1.0,
                       sharpen: float = 0.0) -> LossParts:
    """`sharpen` > 0: the video x_t is made from the clip moved that far toward its spatial blur, the target
    still the velocity back to the clip (the base Trainer's sharpen batches)."""
    source = spatial_blur(example.video, sharpen) if sharpen else example.video
    xv = pin(noised(source, video_noise, sigma), example.video_fixed)
    xa = pin(noised(example.audio, audio_noise, sigma), example.audio_fixed)
    pv, pa = model_velocity(model, xv, xa, sigma, example.context)
    target = degraded_velocity_target(example.video, video_noise, source, sigma) if sharpen else \
        velocity_target(example.video, video_noise)
    lv = masked_mse(pv, target, example.video_fixed)
    la = masked_mse(pa, velocity_target(example.audio, audio_noise), example.audio_fixed)
    return LossParts(video_weight * lv + audio_weight * la, float(lv.detach()), float(la.detach()))


@torch.no_grad()
def euler_trajectory(velocity: Velocity, video: torch.Tensor, audio: torch.Tensor, sigmas, substeps: int = 1):
    """Integrate the flow ODE from `sigmas[0]` down to `sigmas[-1]` with `substeps` Euler steps per interval;
    returns the (video, audio) state at every sigma of `sigmas` (first = the input, last = the sample)."""
    states = [(video, audio)]
    for hi, lo in zip(sigmas[:-1], sigmas[1:]):
        for k in range(substeps):
            s0 = hi + (lo - hi) * k / substeps
            s1 = hi + (lo - hi) * (k + 1) / substeps
            v, a = velocity(video, audio, s0)
            video, audio = video + (s1 - s0) * v, audio + (s1 - s0) * a
        states.append((video, audio))
    return states


def distillation_loss(student: Velocity, states, sigmas, *, video_weight: float = 1.0,
                      audio_weight: float = 1.0) -> LossParts:
    """Mean over the student's intervals of the error of one student Euler step from the teacher's state
    at sigma_i against the teacher's state at sigma_{i+1}."""
    total, lv_sum, la_sum = 0.0, 0.0, 0.0
    n = len(sigmas) - 1
    for i in range(n):
        (v, a), (v_next, a_next) = states[i], states[i + 1]
        pv, pa = student(v, a, sigmas[i])
        dt = sigmas[i + 1] - sigmas[i]
        lv = F.mse_loss((v + dt * pv).float(), v_next.float())
        la = F.mse_loss((a + dt * pa).float(), a_next.float())
        total = total + video_weight * lv + audio_weight * la
        lv_sum, la_sum = lv_sum + float(lv.detach()), la_sum + float(la.detach())
    return LossParts(total / n, lv_sum / n, la_sum / n)


# ---- the loop ----------------------------------------------------------------------------------------
@dataclass
class History:
    loss: list[float] = field(default_factory=list)
    video: list[float] = field(default_factory=list)
    audio: list[float] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False


def optimize(parameters, loss_fn: Callable[[int], LossParts], *, steps: int, lr: float = 1e-3,
             time_limit: float | None = None, on_step: Callable[[int, LossParts], None] | None = None) -> History:
    """AdamW on `parameters` for `steps` steps (or until `time_limit` seconds): loss_fn(step) -> LossParts."""
    params = list(parameters)
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    history, t0 = History(), time.perf_counter()
    for step in range(steps):
        optimizer.zero_grad(set_to_none=True)
        parts = loss_fn(step)
        parts.total.backward()
        optimizer.step()
        history.loss.append(float(parts.total.detach()))
        history.video.append(parts.video)
        history.audio.append(parts.audio)
        if on_step is not None:
            on_step(step, parts)
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            history.stopped_early = step + 1 < steps
            break
    history.seconds = time.perf_counter() - t0
    return history


def training_sigmas(steps: int, shift: float, seed: int = 0) -> list[float]:
    """Noise levels for flow-matching steps: uniform, then time-shifted like the sampler's grid."""
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(steps, generator=g, dtype=torch.float64).clamp(0.001, 0.999)
    return shift_sigma(u, shift).tolist()


def train_flow_matching(lora: TrainableLoRA, examples: list[Example], *, steps: int, lr: float = 1e-3,
                        video_weight: float = 1.0, audio_weight: float = 1.0, shift: float = 5.0, seed: int = 0,
                        time_limit: float | None = None, on_step=None, sharpen_frac: float = 0.0,
                        sharpen_max: float = 1.0, sharpen_sigma: tuple[float, float] = DEGRADED_SIGMA) -> History:
    """Fine-tune `lora` on `examples` with Ovi's flow-matching loss (one example and noise level per step).
    `sharpen_frac` of the steps are sharpen steps (as the base model's: blur strength ~ U(0, sharpen_max),
    σ ~ U(sharpen_sigma)), so an adapter trained on top of sharpen-trained weights keeps restoring edges."""
    if not examples:
        raise LoRAError("training needs at least one example")
    sigmas = training_sigmas(steps, shift, seed)
    g = torch.Generator().manual_seed(seed + 1)
    lora.model.train()

    def loss(step):
        ex = examples[step % len(examples)]
        noise_v = torch.randn(ex.video.shape, generator=g).to(ex.video)
        noise_a = torch.randn(ex.audio.shape, generator=g).to(ex.audio)
        sigma, strength = sigmas[step], 0.0
        if sharpen_frac and float(torch.rand((), generator=g)) < sharpen_frac:  # no draw without sharpen steps
            lo, hi = sharpen_sigma
            sigma = lo + (hi - lo) * float(torch.rand((), generator=g))
            strength = sharpen_max * float(torch.rand((), generator=g))
        return flow_matching_loss(lora.model, ex, sigma, noise_v, noise_a, video_weight=video_weight,
                                  audio_weight=audio_weight, sharpen=strength)
    try:
        return optimize(lora.parameters(), loss, steps=steps, lr=lr, time_limit=time_limit, on_step=on_step)
    finally:
        lora.model.eval()


def student_sigmas(grid, shift: float) -> list[float]:
    """The Lightning profile's unshifted grid -> the shifted sigmas the sampler visits, ending at 0."""
    return [shift_sigma(s, shift) for s in grid] + [0.0]


def train_distillation(lora: TrainableLoRA, trajectories, sigmas, *, steps: int, lr: float = 1e-3,
                       video_weight: float = 1.0, audio_weight: float = 1.0, time_limit: float | None = None,
                       on_step=None) -> History:
    """Distil `lora` onto teacher trajectories: a list of (states at `sigmas`, student velocity function)."""
    if not trajectories:
        raise LoRAError("distillation needs at least one teacher trajectory")

    def loss(step):
        states, student = trajectories[step % len(trajectories)]
        return distillation_loss(student, states, sigmas, video_weight=video_weight, audio_weight=audio_weight)
    lora.model.train()
    try:
        return optimize(lora.parameters(), loss, steps=steps, lr=lr, time_limit=time_limit, on_step=on_step)
    finally:
        lora.model.eval()
