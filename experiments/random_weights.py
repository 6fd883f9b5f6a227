"""The real architecture with random weights, made on the device (nothing downloaded): what the GPU checks
measure memory and speed on. Built on the meta device first, so the host never holds a copy."""

from __future__ import annotations

import torch

from ovi.model import FusionModel
from ovi.model.configs import architecture


def random_fusion_model(arch: str, device: torch.device, dtype: torch.dtype) -> FusionModel:
    """FusionModel of preset `arch` on `device` in `dtype`, weights ~ N(0, 0.02), in eval mode, no grads."""
    with torch.device("meta"):
        model = FusionModel(*architecture(arch))
    model = model.to_empty(device=device).to(dtype).eval().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model
