"""Key mapping for the latent codecs' checkpoints (upstream file layout -> our modules).

- Wan2.2 video VAE (`Wan2.2-TI2V-5B/Wan2.2_VAE.pth`, Wan's own module names) <-> diffusers
  `AutoencoderKLWan`. diffusers' single-file converter (`convert_wan_vae_to_diffusers`) only knows
  the Wan2.1 layout, and its Wan2.2 rules live in a repository script that is not in the wheel, so
  the rules are restated here by hand. Wan2.2's residual down/up blocks keep their resample layer
  inside the same `nn.Sequential` as the residual blocks (`downsamples.i.downsamples.j`); it is
  recognised by its `resample.`/`time_conv.` sub-keys rather than by position.
- MMAudio audio VAE (`MMAudio/ext_weights/v1-16.pth`): our module names are upstream's, so only
  container unwrapping is needed.
- BigVGAN v1 vocoder (`best_netG.pt`, state dict under "generator"): upstream trains with weight
  norm, stored either as `parametrizations.weight.original0/1` (torch >= 2.1) or as the older
  `weight_g/weight_v`. Our generator has plain convolutions, so the weight norm is folded here into
  one `weight` with the very op the parametrization runs (`torch._weight_norm`, dim 0), which is
  bit-identical to upstream's `remove_weight_norm()`.
"""

from __future__ import annotations

import re

import torch

from ovi.checkpoint.adapter import unwrap_container
from ovi.errors import CheckpointError

# ---- Wan2.2 VAE <-> diffusers AutoencoderKLWan ---------------------------------------------------
# Inside one Wan ResidualBlock: residual = [RMS_norm, SiLU, conv, RMS_norm, SiLU, Dropout, conv].
_RESIDUAL_TO_DIFFUSERS = {
    "residual.0.gamma": "norm1.gamma",
    "residual.2": "conv1",
    "residual.3.gamma": "norm2.gamma",
    "residual.6": "conv2",
    "shortcut": "conv_shortcut",
}
_RESIDUAL_TO_WAN = {v: k for k, v in _RESIDUAL_TO_DIFFUSERS.items()}


def _residual(rest: str, table: dict[str, str]) -> str | None:
    """Rename the leading part of a residual-block sub-key (`residual.2.weight` -> `conv1.weight`)."""
    for src, dst in table.items():
        if rest == src or rest.startswith(src + "."):
            return dst + rest[len(src):]
    return None


def wan22_vae_key_to_diffusers(key: str) -> str | None:
    """One Wan2.2 VAE key -> its AutoencoderKLWan name, or None when no rule applies."""
    if key.startswith(("conv1.", "conv2.")):  # top-level 1x1x1 convs around the latent
        return ("quant_conv" if key.startswith("conv1.") else "post_quant_conv") + key[5:]
    m = re.fullmatch(r"(encoder|decoder)\.(.+)", key)
    if not m:
        return None
    side, rest = m.groups()
    if rest.startswith("conv1."):
        return f"{side}.conv_in{rest[5:]}"
    if rest == "head.0.gamma":
        return f"{side}.norm_out.gamma"
    if rest.startswith("head.2."):
        return f"{side}.conv_out{rest[6:]}"
    m = re.fullmatch(r"middle\.([02])\.(.+)", rest)
    if m:
        sub = _residual(m.group(2), _RESIDUAL_TO_DIFFUSERS)
        return None if sub is None else f"{side}.mid_block.resnets.{int(m.group(1)) // 2}.{sub}"
    m = re.fullmatch(r"middle\.1\.(norm\.gamma|to_qkv\.(weight|bias)|proj\.(weight|bias))", rest)
    if m:
        return f"{side}.mid_block.attentions.0.{m.group(1)}"
    stage, blocks, sampler = (("downsamples", "down_blocks", "downsampler") if side == "encoder"
                              else ("upsamples", "up_blocks", "upsampler"))
    m = re.fullmatch(rf"{stage}\.(\d+)\.{stage}\.(\d+)\.(.+)", rest)
    if m:
        i, j, sub = m.groups()
        if sub.startswith(("resample.", "time_conv.")):
            return f"{side}.{blocks}.{i}.{sampler}.{sub}"
        sub = _residual(sub, _RESIDUAL_TO_DIFFUSERS)
        return None if sub is None else f"{side}.{blocks}.{i}.resnets.{j}.{sub}"
    return None


def wan22_vae_to_diffusers(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Wan2.2 VAE state dict -> (AutoencoderKLWan state dict, keys no rule applies to)."""
    out, unknown = {}, []
    for key, value in sd.items():
        new = wan22_vae_key_to_diffusers(key)
        if new is None:
            unknown.append(key)
        else:
            out[new] = value
    return out, unknown


def diffusers_to_wan22_vae(sd: dict[str, torch.Tensor], num_res_blocks: int = 2) -> dict[str, torch.Tensor]:
    """Inverse of wan22_vae_to_diffusers (writes Wan-named files, e.g. test fixtures).

    The resample layer's index inside Wan's Sequential is the number of residual blocks in front of
    it: `num_res_blocks` in the encoder, `num_res_blocks + 1` in the decoder.
    """
    out = {}
    for key, value in sd.items():
        m = re.fullmatch(r"(quant_conv|post_quant_conv)\.(.+)", key)
        if m:
            out[("conv1." if m.group(1) == "quant_conv" else "conv2.") + m.group(2)] = value
            continue
        side, rest = key.split(".", 1)
        stage, blocks, sampler = (("downsamples", "down_blocks", "downsampler") if side == "encoder"
                                  else ("upsamples", "up_blocks", "upsampler"))
        sampler_index = num_res_blocks if side == "encoder" else num_res_blocks + 1
        if rest.startswith("conv_in."):
            new = "conv1" + rest[7:]
        elif rest == "norm_out.gamma":
            new = "head.0.gamma"
        elif rest.startswith("conv_out."):
            new = "head.2" + rest[8:]
        elif (m := re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest)):
            new = f"middle.{2 * int(m.group(1))}.{_residual(m.group(2), _RESIDUAL_TO_WAN)}"
        elif rest.startswith("mid_block.attentions.0."):
            new = "middle.1." + rest[len("mid_block.attentions.0."):]
        elif (m := re.fullmatch(rf"{blocks}\.(\d+)\.resnets\.(\d+)\.(.+)", rest)):
            new = f"{stage}.{m.group(1)}.{stage}.{m.group(2)}.{_residual(m.group(3), _RESIDUAL_TO_WAN)}"
        elif (m := re.fullmatch(rf"{blocks}\.(\d+)\.{sampler}\.(.+)", rest)):
            new = f"{stage}.{m.group(1)}.{stage}.{sampler_index}.{m.group(2)}"
        else:
            raise KeyError(key)
        out[f"{side}.{new}"] = value
    return out


# ---- BigVGAN v1 generator: fold weight norm ------------------------------------------------------
_WN_SUFFIXES = {  # suffix -> (role, style)
    ".parametrizations.weight.original0": "g",
    ".parametrizations.weight.original1": "v",
    ".weight_g": "g",
    ".weight_v": "v",
}


def bigvgan_from_upstream(obj) -> dict[str, torch.Tensor]:
    """`best_netG.pt` contents ({"generator": sd} or a bare sd) -> plain-conv state dict.

    Each weight-normed conv's (g, v) pair becomes `weight = torch._weight_norm(v, g, 0)` in fp32,
    exactly what torch's weight-norm parametrization (and so upstream's remove_weight_norm) yields.
    A half pair is kept under its original name so the key check reports it.
    """
    if isinstance(obj, dict) and isinstance(obj.get("generator"), dict):
        obj = obj["generator"]
    sd = unwrap_container(obj)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    out = {}
    for key, value in sd.items():
        for suffix, role in _WN_SUFFIXES.items():
            if key.endswith(suffix):
                pairs.setdefault(key[: -len(suffix)], {})[role] = (key, value)
                break
        else:
            out[key] = value
    for prefix, pair in pairs.items():
        if set(pair) == {"g", "v"}:
            g, v = pair["g"][1].float(), pair["v"][1].float()
            out[prefix + ".weight"] = torch._weight_norm(v, g, 0)
        else:
            for key, value in pair.values():
                out[key] = value
    return out


def mmaudio_vae_from_upstream(obj) -> dict[str, torch.Tensor]:
    """`v1-16.pth` contents -> our MMAudioVAE state dict (same names; containers unwrapped)."""
    return unwrap_container(obj)


# ---- key checking --------------------------------------------------------------------------------
def check_codec_keys(path, what: str, found: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]],
                     *, extra_unknown: list[str] = (), limit: int = 8) -> None:
    """Raise CheckpointError naming missing / unexpected / wrong-shape keys (what = which file this is)."""
    missing = [k for k in expected if k not in found]
    unexpected = list(extra_unknown) + [k for k in found if k not in expected]
    mismatched = [f"{k} {list(found[k].shape)} (expected {list(expected[k])})"
                  for k in expected if k in found and tuple(found[k].shape) != tuple(expected[k])]
    if not (missing or unexpected or mismatched):
        return

    def listing(name, items):
        shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
        return f"{len(items)} {name}: {shown}"
    parts = [f"{path} does not match the {what}"]
    parts += [listing(n, i) for n, i in (("missing keys", missing), ("unexpected keys", unexpected),
                                          ("wrong-shape keys", mismatched)) if i]
    parts.append("check that the file is the right download (upstream layout: <ckpt_dir>/Wan2.2-TI2V-5B/"
                 "Wan2.2_VAE.pth, <ckpt_dir>/MMAudio/ext_weights/{v1-16.pth,best_netG.pt}) "
                 "and re-download it if truncated")
    raise CheckpointError("; ".join(parts))


def read_torch_file(path, what: str):
    """torch.load a .pth/.pt file on CPU (mmap, weights only) with a CheckpointError on failure."""
    from pathlib import Path
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is one user-facing error
        try:  # old-style (non-zip) files cannot be mmapped
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:
            raise CheckpointError(f"{path} could not be read as the {what} ({exc.__class__.__name__}: "
                                  f"{str(exc)[:200]}); re-download it") from exc
