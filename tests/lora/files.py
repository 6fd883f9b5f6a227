"""Random LoRA files in every key style, written at test time (nothing is downloaded).

Each style's key names are spelled out here from the tools' own conventions, independently of
ovi.lora.keys, so a mapping mistake there cannot be mirrored here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from ovi.checkpoint.loading import load_fusion_model
from ovi.lora import save_native_lora
from ovi.specs import FP8_CHECKPOINT_FILE, FUSION_DIR

# Wan names of the Linears a typical Wan LoRA targets (the tiny model has 3 blocks).
_BLOCK = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k",
          "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
WAN_LINEARS = tuple(f"blocks.{i}.{m}" for i in range(3) for m in _BLOCK) + (
    "text_embedding.0", "time_embedding.2", "time_projection.1", "head.head")

# diffusers' WanTransformer3DModel names for the same layers.
_DIFFUSERS_BLOCK = {"self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
                    "self_attn.o": "attn1.to_out.0", "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k",
                    "cross_attn.v": "attn2.to_v", "cross_attn.o": "attn2.to_out.0", "ffn.0": "ffn.net.0.proj",
                    "ffn.2": "ffn.net.2"}
_DIFFUSERS_TOP = {"text_embedding.0": "condition_embedder.text_embedder.linear_1",
                  "time_embedding.2": "condition_embedder.time_embedder.linear_2",
                  "time_projection.1": "condition_embedder.time_proj", "head.head": "proj_out"}


def diffusers_name(wan_name: str) -> str:
    if wan_name in _DIFFUSERS_TOP:
        return _DIFFUSERS_TOP[wan_name]
    _, i, rest = wan_name.split(".", 2)
    return f"blocks.{i}.{_DIFFUSERS_BLOCK[rest]}"


def load_tiny(ckpt_dir, fp8: bool = False, storage=torch.float32):
    """A fresh tiny FusionModel from the session's checkpoint (fp32, or fp8 storage with bf16 compute)."""
    if fp8:
        return load_fusion_model(Path(ckpt_dir) / FUSION_DIR / FP8_CHECKPOINT_FILE, "tiny", storage=torch.float8_e4m3fn)
    return load_fusion_model(Path(ckpt_dir) / FUSION_DIR / "model.safetensors", "tiny", storage=storage)


def random_factors(backbone, rank: int = 4, seed: int = 0, names=WAN_LINEARS, scale: float = 0.05):
    """{wan name: (A [r, in], B [out, r])} for Linears of one backbone."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        m = backbone.get_submodule(name)
        out[name] = (torch.randn(rank, m.in_features, generator=g) * scale,
                     torch.randn(m.out_features, rank, generator=g) * scale)
    return out


def write_wan(path, factors, alpha: float, spelling: str = "down_up", extra=None) -> Path:
    """Original Wan / ComfyUI / kohya / LightX2V: diffusion_model.<wan name>.lora_down/.lora_up/.alpha."""
    down, up = ("lora_down", "lora_up") if spelling == "down_up" else ("lora_A", "lora_B")
    t = {}
    for name, (a, b) in factors.items():
        t[f"diffusion_model.{name}.{down}.weight"] = a
        t[f"diffusion_model.{name}.{up}.weight"] = b
        t[f"diffusion_model.{name}.alpha"] = torch.tensor(float(alpha))
    t.update(extra or {})
    save_file(t, str(path))
    return Path(path)


def write_musubi(path, factors, alpha: float) -> Path:
    """musubi-tuner: lora_unet_<wan name with '.' -> '_'>.lora_down/.lora_up/.alpha."""
    t = {}
    for name, (a, b) in factors.items():
        stem = "lora_unet_" + name.replace(".", "_")
        t[f"{stem}.lora_down.weight"] = a
        t[f"{stem}.lora_up.weight"] = b
        t[f"{stem}.alpha"] = torch.tensor(float(alpha))
    save_file(t, str(path))
    return Path(path)


def write_diffusers(path, factors, alpha: float) -> Path:
    """diffusers / peft: transformer.<diffusers name>.lora_A/.lora_B, no alpha (folded into A as diffusers does)."""
    t = {}
    for name, (a, b) in factors.items():
        rank = a.shape[0]
        t[f"transformer.{diffusers_name(name)}.lora_A.weight"] = a * (alpha / rank)
        t[f"transformer.{diffusers_name(name)}.lora_B.weight"] = b
    save_file(t, str(path))
    return Path(path)


def write_native(path, factors, alpha: float, model, branch: str = "video", **extra) -> Path:
    """Ours, with full Ovi names (<branch>_model.<name>)."""
    full = {f"{branch}_model.{name}": ab for name, ab in factors.items()}
    return save_native_lora(path, full, model, alpha=alpha, extra=extra or None)


def sample_inputs(seed: int = 5):
    """Fixed fp32 inputs for one fused forward of the tiny model (80 video + 22 audio tokens)."""
    g = torch.Generator().manual_seed(seed)
    context = [torch.randn(20, 64, generator=g)]
    return dict(vid=[torch.randn(48, 5, 8, 8, generator=g)], audio=[torch.randn(22, 20, generator=g)],
                t=torch.tensor([600.0]), vid_context=context, audio_context=context, vid_seq_len=80,
                audio_seq_len=22)


@torch.no_grad()
def forward(model, seed: int = 5):
    video, audio = model(**sample_inputs(seed))
    return video[0].float(), audio[0].float()


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
