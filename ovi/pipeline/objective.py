"""The flow-matching maths that sampling and training share, once.

Ovi's (Wan's) objective: x_t = (1 - σ) x0 + σ ε (`noised`), the model predicts v = ε - x0 (`velocity_target`)
at timestep t = 1000 σ, σ drawn with the sampler's time shift σ' = sσ / (1 + (s-1)σ) (`shift_sigma`).
A codec may fix some latent entries (the trained tiny model's coordinate channels: `fixed_latents` ->
(bool mask, values)): they are written into every model input (`pin`) and left out of every loss
(`masked_mse`). A continuation window's clean prefix (its first frames / tokens, held at their clean
values, timestep 0) is one more set of fixed entries (`hold_prefix`). Token counts: the video backbone
sees 1x2x2 patches of the [C, F, H, W] latent (`video_tokens`, from the architecture's patch size), the
audio backbone one token per audio latent (`audio_tokens`). Degraded-input training builds x_t from a
degraded clip (`spatial_blur`) and trains the velocity back to the clip (`degraded_velocity_target`).

Used by the engine (ovi.pipeline.plan / engine), the base model's Trainer (ovi.train.train), LoRA
training (ovi.train.lora) and the benches. It lives with the pipeline, the lowest layer that needs it
(the engine pins and counts tokens; ovi.train sits above it).
"""

from __future__ import annotations

import torch

Fixed = tuple[torch.Tensor, torch.Tensor] | None  # a codec's fixed latent entries: (bool mask, values)

VIDEO_PATCH = (1, 2, 2)  # every Ovi video backbone's patch_size (ovi.model.configs; upstream's ti2v)


def video_tokens(latent_shape, patch_size=VIDEO_PATCH) -> int:
    """Tokens of a [C, F, H, W] video latent (or its [F, H, W] tail) after patching."""
    f, h, w = tuple(latent_shape)[-3:]
    return (f // patch_size[0]) * (h // patch_size[1]) * (w // patch_size[2])


def audio_tokens(latent_shape) -> int:
    """Tokens of an [L, C] audio latent: one per latent."""
    return int(tuple(latent_shape)[0])


def shift_sigma(sigma, shift: float):
    """The sampler's time shift σ' = sσ / (1 + (s-1)σ) (works on floats, tensors and arrays)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def noised(x0: torch.Tensor, noise: torch.Tensor, sigma) -> torch.Tensor:
    """x_σ = (1 - σ) x0 + σ ε (σ a float or a tensor broadcasting against x0)."""
    return (1 - sigma) * x0 + sigma * noise


# σ range of degraded-input training steps (the base Trainer's `degraded_sigma_*` defaults, LoRA sharpen steps):
# mid to high noise, where sampling settles an object's outline
DEGRADED_SIGMA = (0.2, 0.95)


def spatial_blur(latent: torch.Tensor, strength) -> torch.Tensor:
    """`latent` [..., F, h, w] moved `strength` (broadcasting against it) of the way to its 3x3 binomial blur
    within each frame, edge cells replicated: the degraded input that sharpen training restores from."""
    import torch.nn.functional as F
    *lead, h, w = latent.shape
    kernel = torch.tensor([1.0, 2.0, 1.0], dtype=latent.dtype, device=latent.device)
    kernel = (kernel[:, None] * kernel[None]).div(16).view(1, 1, 3, 3)
    flat = F.pad(latent.reshape(-1, 1, h, w), (1, 1, 1, 1), mode="replicate")
    smooth = F.conv2d(flat, kernel).view(*lead, h, w)
    return latent + strength * (smooth - latent)


def content_blur(latent: torch.Tensor, content_channels: int, strength) -> torch.Tensor:
    """`latent` [B, C, F, h, w] with its first `content_channels` channels `spatial_blur`red, the codec's fixed
    channels (coordinate maps) left as they are: a blurred clip the engine could still be handed."""
    return torch.cat([spatial_blur(latent[:, :content_channels], strength), latent[:, content_channels:]], 1)


def degraded_velocity_target(x0: torch.Tensor, noise: torch.Tensor, source: torch.Tensor, sigma) -> torch.Tensor:
    """The velocity from x_t = noised(source, noise, σ), made from a degraded clip `source`, back to the
    clip x0 itself: (x_t - x0) / σ = ε - x0 + (1 - σ)/σ (source - x0)."""
    return velocity_target(x0, noise) + (1 - sigma) / sigma * (source - x0)


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """What the model predicts: v = ε - x0."""
    return noise - x0


def pin(latent: torch.Tensor, fixed: Fixed) -> torch.Tensor:
    """`latent` with a codec's fixed entries written in (unchanged when there are none)."""
    return latent if fixed is None else torch.where(fixed[0], fixed[1], latent)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, fixed: Fixed, weight: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Mean squared error over the entries a codec does not fix (`pred`/`target` may carry leading batch
    dimensions over the mask's shape). `weight` (broadcasting against `pred`): a weighted mean instead."""
    keep = torch.ones((), device=pred.device) if fixed is None else (~fixed[0]).float()
    if weight is not None:
        keep = keep * weight
    keep = keep.expand(pred.shape)
    return (((pred.float() - target.float()) ** 2) * keep).sum() / keep.sum()


def hold_prefix(fixed: Fixed, clean: torch.Tensor, count: int, dim: int) -> Fixed:
    """`fixed` plus the first `count` entries along `dim` of the unbatched latent shape held at `clean`
    (a continuation window's clean prefix, as training sees it; `clean` is a batch [B, *latent shape]):
    `pin` writes them into x_t and `masked_mse` leaves them out of the loss."""
    if not count:
        return fixed
    shape = tuple(clean.shape[1:])
    index = [slice(None)] * len(shape)
    index[dim] = slice(0, count)
    mask = torch.zeros(shape, dtype=torch.bool, device=clean.device)
    mask[tuple(index)] = True
    if fixed is None:
        return mask, clean
    return fixed[0] | mask, torch.where(fixed[0], fixed[1], clean)
