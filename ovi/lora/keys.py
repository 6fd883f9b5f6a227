"""LoRA key styles -> Ovi's names: the one place that knows how other tools name a LoRA's tensors.

Every tensor key is split into an *owner* (a module path, or for full deltas a parameter path) and a
*part*: "down" (A, [r, in]), "up" (B, [out, r]), "alpha" (a scalar), or "delta:<param>" (a full
delta of one parameter: Wan's `diff` -> weight, `diff_b` -> bias, LightX2V's `diff_m` -> modulation).

Styles (`detect_format`):
- "native" (ours): peft names on Ovi's modules, `video_model.blocks.0.self_attn.q.lora_A.weight`, in a
  safetensors file whose metadata header carries `ovi_lora` (rank, alpha, base model, branch,
  targets); backbone-relative names (`blocks.0...`) with a `branch` in the header work too.
- "wan": original Wan / ComfyUI / kohya / LightX2V: `diffusion_model.` + Wan names
  (`blocks.N.self_attn.q.lora_down.weight`, `.lora_up.weight`, `.alpha`, `.diff`, `.diff_b`, `.diff_m`;
  `lora_A/lora_B` spellings too). Ovi's branches use Wan's names, so these map one to one.
- "musubi": musubi-tuner / kohya `lora_unet_blocks_0_self_attn_q.lora_down.weight`: Wan names with
  dots turned into underscores, split back against the model's real module names (`self_attn`, `ffn_0`
  contain underscores themselves, so no rule can split them blindly).
- "diffusers": `transformer.blocks.0.attn1.to_q.lora_A.weight` on diffusers' WanTransformer3DModel
  names, mapped back to Wan's (`attn1` -> self_attn, `to_out.0` -> o, `ffn.net.0.proj` -> ffn.0, ...).

Hand-written: diffusers' own converters (`loaders.lora_conversion_utils`, private) go the other way,
to diffusers' names, drop norm deltas and refuse leftovers; peft knows none of these styles.
"""

from __future__ import annotations

import re

from ovi.errors import LoRAError

NATIVE_TAG = "ovi_lora"  # safetensors metadata key that marks a native file (its value: format version)

# Key prefixes that wrap the model's own names (tools and trainers add them).
_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.", "unet.", "dit.",
             "model.")

# Longest first: ".lora_B.bias" before ".lora_B", ".diff_b" before ".diff".
_SUFFIXES = sorted([
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".lora_down", "down"), (".lora_up", "up"),
    (".lora_A.weight", "down"), (".lora_B.weight", "up"), (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"), (".lora_A", "down"), (".lora_B", "up"),
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),
    (".lora_B.bias", "delta:bias"), (".alpha", "alpha"),
    (".diff", "delta:weight"), (".diff_b", "delta:bias"), (".diff_m", "delta:modulation"),
], key=lambda item: -len(item[0]))

# diffusers' WanTransformer3DModel module names -> Wan's (relative to the transformer / backbone).
_DIFFUSERS_TO_WAN = [(re.compile(pattern), replacement) for pattern, replacement in [
    (r"blocks\.(\d+)\.attn1\.to_out\.0", r"blocks.\1.self_attn.o"),
    (r"blocks\.(\d+)\.attn1\.to_([qkv])", r"blocks.\1.self_attn.\2"),
    (r"blocks\.(\d+)\.attn1\.norm_([qk])", r"blocks.\1.self_attn.norm_\2"),
    (r"blocks\.(\d+)\.attn2\.to_out\.0", r"blocks.\1.cross_attn.o"),
    (r"blocks\.(\d+)\.attn2\.to_([qkv])", r"blocks.\1.cross_attn.\2"),
    (r"blocks\.(\d+)\.attn2\.norm_([qk])", r"blocks.\1.cross_attn.norm_\2"),
    (r"blocks\.(\d+)\.attn2\.add_([kv])_proj", r"blocks.\1.cross_attn.\2_img"),
    (r"blocks\.(\d+)\.attn2\.norm_added_k", r"blocks.\1.cross_attn.norm_k_img"),
    (r"blocks\.(\d+)\.ffn\.net\.0\.proj", r"blocks.\1.ffn.0"),
    (r"blocks\.(\d+)\.ffn\.net\.2", r"blocks.\1.ffn.2"),
    (r"blocks\.(\d+)\.norm2", r"blocks.\1.norm3"),  # diffusers' norm2 is Wan's affine cross-attention norm
    (r"condition_embedder\.time_embedder\.linear_([12])", None),
    (r"condition_embedder\.text_embedder\.linear_([12])", None),
    (r"condition_embedder\.time_proj", "time_projection.1"),
    (r"condition_embedder\.image_embedder\.ff\.net\.0\.proj", "img_emb.proj.1"),
    (r"condition_embedder\.image_embedder\.ff\.net\.2", "img_emb.proj.3"),
    (r"proj_out", "head.head"),
    (r"patch_embedding", "patch_embedding"),
]]
_DIFFUSERS_HINT = re.compile(r"(^|\.)(attn1|attn2|condition_embedder|proj_out)(\.|$)|\.ffn\.net\.")
_WAN_HINT = re.compile(r"^(blocks\.\d+\.|head\.|time_embedding\.|text_embedding\.|time_projection\.|"
                       r"patch_embedding|img_emb\.)")
_BRANCH_PREFIXES = ("video_model.", "audio_model.")

# Widths of the Wan backbones LoRAs are commonly made for, to name a different base model in errors.
WAN_WIDTHS = {1536: "Wan2.1-T2V-1.3B", 3072: "Wan2.2-TI2V-5B (Ovi's video branch)", 5120: "a Wan 14B model"}


def strip_prefix(key: str) -> str:
    """Remove wrapper prefixes, nested ones too (peft's `base_model.model.` around `transformer.`)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
                break
    return key


def split_key(key: str) -> tuple[str, str] | None:
    """'diffusion_model.blocks.0.self_attn.q.lora_down.weight' -> ('blocks.0.self_attn.q', 'down');
    None for a suffix no supported LoRA kind uses (e.g. DoRA's dora_scale, LoHa's hada_w1_a)."""
    if key.startswith("lora_unet_"):
        owner, dot, rest = key[len("lora_unet_"):].partition(".")
        key, prefix = "." + rest if dot else "", owner
        for suffix, part in _SUFFIXES:
            if key == suffix:
                return prefix, part
        return None
    key = strip_prefix(key)
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    return None


def detect_format(keys, metadata: dict[str, str]) -> str:
    """Which naming style a LoRA's keys follow (see the module docstring)."""
    keys = list(keys)
    if NATIVE_TAG in metadata:
        return "native"
    if any(k.startswith("lora_unet_") for k in keys):
        return "musubi"
    stripped = [strip_prefix(k) for k in keys]
    if any(_DIFFUSERS_HINT.search(k) for k in stripped):
        return "diffusers"
    if any(k.startswith(_BRANCH_PREFIXES) for k in stripped):
        return "native"
    if any(_WAN_HINT.match(k) for k in stripped):
        return "wan"
    shown = ", ".join(keys[:4]) or "none"
    raise LoRAError(f"not a LoRA in any supported key style (native, original Wan / kohya / LightX2V "
                    f"'diffusion_model.blocks.N...', musubi 'lora_unet_...', diffusers 'transformer.blocks.N.attn1...'); "
                    f"first keys: {shown}")


def diffusers_to_wan(owner: str) -> str | None:
    """A diffusers module path -> Wan's, or None when diffusers' name has no Wan counterpart we know."""
    for pattern, replacement in _DIFFUSERS_TO_WAN:
        m = pattern.fullmatch(owner)
        if not m:
            continue
        if replacement is None:  # condition_embedder.{time,text}_embedder.linear_{1,2} -> {time,text}_embedding.{0,2}
            kind = "time" if "time_embedder" in owner else "text"
            return f"{kind}_embedding.{0 if m.group(1) == '1' else 2}"
        return m.expand(replacement)
    return None


def musubi_lookup(module_names) -> dict[str, str]:
    """'blocks_0_self_attn_q' -> 'blocks.0.self_attn.q' for every module of a backbone."""
    return {name.replace(".", "_"): name for name in module_names}


def owner_to_ovi(owner: str, fmt: str, musubi_names: dict[str, str]) -> str | None:
    """An owner path in a style's names -> Ovi's (still relative to a backbone unless native full
    names); None when the style's name has no counterpart."""
    if fmt == "musubi":
        return musubi_names.get(owner)
    if fmt == "diffusers":
        return diffusers_to_wan(owner)
    return owner


def has_branch_prefix(name: str) -> bool:
    return name.startswith(_BRANCH_PREFIXES)


def block_index(name: str) -> int | None:
    m = re.match(r"(?:(?:video|audio)_model\.)?blocks[._](\d+)[._]", name)
    return int(m.group(1)) if m else None
