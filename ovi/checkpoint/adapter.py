"""The one module that knows upstream key names.

- Ovi fusion DiT: our FusionModel's state_dict keys *are* upstream's (`video_model.*`, `audio_model.*`),
  so the adapter only unwraps containers (`.pt` files with 'module' or 'app'->'model') and strips
  wrapper prefixes that training frameworks add.
- Wan umT5 encoder (`models_t5_umt5-xxl-enc-bf16.pth`, Wan names) <-> transformers UMT5EncoderModel.
- `describe_foreign_keys` recognises other well-known checkpoint families, so a wrong file gets an
  error saying what it looks like instead.
"""

from __future__ import annotations

import re

import torch

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")


def unwrap_container(obj) -> dict[str, torch.Tensor]:
    """A loaded .pt/.pth object -> flat state dict (handles {'module': sd} and {'app': {'model': sd}})."""
    if isinstance(obj, dict) and "module" in obj and isinstance(obj["module"], dict):
        obj = obj["module"]
    elif isinstance(obj, dict) and "app" in obj and isinstance(obj["app"], dict) and "model" in obj["app"]:
        obj = obj["app"]["model"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) for k in obj):
        raise TypeError("not a state dict")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def fusion_key(key: str) -> str:
    """One upstream Ovi fusion key -> ours (identical), after stripping a framework wrapper prefix."""
    for prefix in _WRAPPER_PREFIXES:
        if key.startswith(prefix) and key[len(prefix):].startswith(("video_model.", "audio_model.")):
            return key[len(prefix):]
    return key


def fusion_keys_from_upstream(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Upstream Ovi fusion keys -> ours (identical), after stripping framework wrapper prefixes."""
    return {fusion_key(key): value for key, value in sd.items()}


# ---- Wan umT5 encoder <-> transformers UMT5EncoderModel ---------------------------------------
_T5_BLOCK_KEYS = [  # (Wan name, transformers name) within one encoder block
    ("norm1.weight", "layer.0.layer_norm.weight"),
    *[(f"attn.{p}.weight", f"layer.0.SelfAttention.{p}.weight") for p in "qkvo"],
    ("pos_embedding.embedding.weight", "layer.0.SelfAttention.relative_attention_bias.weight"),
    ("norm2.weight", "layer.1.layer_norm.weight"),
    # Wan's gate branch carries the GELU, so it is HF's wi_0 (a public converter swaps these two).
    ("ffn.gate.0.weight", "layer.1.DenseReluDense.wi_0.weight"),
    ("ffn.fc1.weight", "layer.1.DenseReluDense.wi_1.weight"),
    ("ffn.fc2.weight", "layer.1.DenseReluDense.wo.weight"),
]
_T5_WAN_TO_HF = dict(_T5_BLOCK_KEYS)
_T5_HF_TO_WAN = {hf: wan for wan, hf in _T5_BLOCK_KEYS}


def wan_t5_to_hf(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Wan T5 encoder keys -> transformers UMT5EncoderModel keys. Unknown keys raise KeyError."""
    out = {}
    for key, value in sd.items():
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
        if key == "token_embedding.weight":
            out["shared.weight"] = out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif m and m.group(2) in _T5_WAN_TO_HF:
            out[f"encoder.block.{m.group(1)}.{_T5_WAN_TO_HF[m.group(2)]}"] = value
        else:
            raise KeyError(key)
    return out


def hf_t5_to_wan(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of wan_t5_to_hf (used to write tiny checkpoints in Wan's layout)."""
    out = {}
    for key, value in sd.items():
        m = re.fullmatch(r"encoder\.block\.(\d+)\.(.+)", key)
        if key == "shared.weight":
            out["token_embedding.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = value
        elif key == "encoder.embed_tokens.weight":
            continue  # tied to shared.weight
        elif m and m.group(2) in _T5_HF_TO_WAN:
            out[f"blocks.{m.group(1)}.{_T5_HF_TO_WAN[m.group(2)]}"] = value
        else:
            raise KeyError(key)
    return out


# ---- recognising what a file is ------------------------------------------------------------------
def describe_foreign_keys(keys) -> str | None:
    """If `keys` look like a known non-Ovi-fusion checkpoint, say what it looks like."""
    keys = list(keys)
    has = lambda pat: any(re.search(pat, k) for k in keys)  # noqa: E731
    if has(r"lora_(down|up|A|B)") or has(r"^lora_unet_"):
        return "a LoRA adapter (lora_down/lora_up keys), not a full model; load it with --lora"
    if has(r"^token_embedding\.") and has(r"^blocks\.\d+\.attn\.q"):
        return "Wan's umT5 text encoder (models_t5_umt5-xxl-enc-bf16.pth)"
    if has(r"^encoder\.block\.\d+\.layer\.0\.SelfAttention"):
        return "a Hugging Face T5/UMT5 encoder"
    if has(r"^(encoder|decoder)\.(conv1|downsamples|upsamples|middle)") or has(r"^(encoder|decoder)\.(down|up)_blocks"):
        return "a video VAE (Wan VAE keys), not the fusion DiT"
    if has(r"^(diffusion_model\.)?blocks\.\d+\.self_attn\.q\.weight") and not has(r"^(video|audio)_model\."):
        return "a single Wan backbone (keys 'blocks.N...' without 'video_model.'/'audio_model.'), e.g. Wan2.2-TI2V-5B, not an Ovi fusion checkpoint"
    if has(r"^(transformer\.)?blocks\.\d+\.attn1\.to_q"):
        return "a diffusers-format Wan transformer, not an Ovi fusion checkpoint"
    if has(r"^generator\.|^ups\.\d+|^conv_pre\.") :
        return "an audio vocoder (BigVGAN), not the fusion DiT"
    return None
