"""Images in and out of the pipeline: loading/resizing the i2v conditioning image, and the
text-to-image step of t2i2v behind one interface (a toy generator for the tiny model; FLUX.1 via
diffusers for real weights)."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ovi.errors import InputError, NotAvailableError


def snap_to_area(height: int, width: int, area: int, multiple: int = 32) -> tuple[int, int]:
    """Scale (height, width) to ~`area` pixels at the same aspect, each side a multiple of 32."""
    scale = math.sqrt(area / (height * width))
    snap = lambda v: max(multiple, int(round(v * scale / multiple)) * multiple)  # noqa: E731
    return snap(height), snap(width)


def load_image(image) -> torch.Tensor:
    """Path / PIL image / uint8 array [H,W,3] / float tensor [3,H,W] in [-1,1] -> [3,H,W] float32 in [-1,1]."""
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise InputError(f"image not found: {path} (i2v needs an existing image file; check image_path/--image)")
        from PIL import Image
        try:
            with Image.open(path) as im:
                image = np.asarray(im.convert("RGB"))
        except Exception as exc:
            raise InputError(f"image {path} could not be read ({exc}); use a PNG or JPEG file") from exc
    if hasattr(image, "convert") and not isinstance(image, (np.ndarray, torch.Tensor)):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise InputError(f"image array must be [H, W, 3] uint8, got shape {list(image.shape)}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 127.5 - 1.0
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise InputError(f"image tensor must be [3, H, W] in [-1, 1], got shape {list(image.shape)}")
        return image.float()
    raise InputError(f"unsupported image type {type(image).__name__}; pass a path, PIL image, array or tensor")


def resize_image(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if tuple(image.shape[1:]) == (height, width):
        return image
    out = F.interpolate(image[None], size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return out[0].clamp(-1, 1)


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[3,F,H,W] in [-1,1] -> uint8 [F,H,W,3]."""
    v = ((video.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return v.permute(1, 2, 3, 0).cpu().numpy()


_COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 220), "yellow": (230, 210, 40),
    "orange": (240, 140, 30), "purple": (140, 60, 190), "pink": (240, 120, 180), "white": (240, 240, 240),
    "black": (20, 20, 20), "brown": (130, 80, 40), "grey": (128, 128, 128), "gray": (128, 128, 128),
}


class ToyImageGenerator:
    """Tiny-model text-to-image: a disc in the first colour named by the prompt, on a plain ground.

    Deterministic in (prompt, seed); exists so t2i2v runs end to end without FLUX weights.
    """

    def generate(self, prompt: str, height: int, width: int, seed: int) -> torch.Tensor:
        words = [w.strip(".,;:!?").lower() for w in prompt.split()]
        digest = hashlib.sha256(f"{prompt}|{seed}".encode()).digest()
        colour = next((_COLOURS[w] for w in words if w in _COLOURS), tuple(digest[:3]))
        cy, cx = height * (0.3 + 0.4 * digest[3] / 255), width * (0.3 + 0.4 * digest[4] / 255)
        yy, xx = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < (min(height, width) * 0.25) ** 2
        img = torch.empty(3, height, width)
        for c in range(3):
            img[c] = torch.where(disc, torch.tensor(colour[c] / 127.5 - 1), torch.tensor(-0.6))
        return img


class FluxImageGenerator:
    """FLUX.1 (Krea-dev in upstream) through diffusers' FluxPipeline, from a local folder only."""

    def __init__(self, model_dir: str | Path, device="cuda"):
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise NotAvailableError(f"t2i2v needs a local FLUX.1 folder at {model_dir} (diffusers layout); "
                                    "nothing is downloaded at run time — use mode i2v with an image instead")
        from diffusers import FluxPipeline
        self.pipe = FluxPipeline.from_pretrained(str(model_dir), torch_dtype=torch.bfloat16, local_files_only=True)
        self.pipe.enable_model_cpu_offload(device=device)

    def generate(self, prompt, height, width, seed):
        h, w = snap_to_area(height, width, 1024 * 1024, multiple=16)
        g = torch.Generator("cpu").manual_seed(seed)
        image = self.pipe(prompt, height=h, width=w, guidance_scale=4.5, generator=g).images[0]
        return load_image(image)
