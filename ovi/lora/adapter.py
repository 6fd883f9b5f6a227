"""One LoRA file: read, checked, and resolved onto a FusionModel's layers.

`LoRAAdapter.load(name, path)` reads a file in any supported key style (ovi.lora.keys) into low-rank
factors per layer (A, B, alpha) and full deltas per parameter. `resolve(model, ...)` maps those onto
the model's real modules for a branch, checks every shape, and returns what to apply plus a
`LoadReport` (tensors applied, tensors ignored by name). Errors name the key, the shapes and the
likely cause: no key matches, a wrong shape (a different base model), a rank that is not the one asked
for, or a native file made for another architecture.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ovi.checkpoint.adapter import wan_param_to_ovi
from ovi.checkpoint.loading import read_metadata, read_state_dict, save_state_dict
from ovi.errors import CheckpointError, LoRAError
from ovi.lora import keys as K
from ovi.model.configs import ARCHITECTURES

# A LoRA naming one Wan backbone applies to the video branch by default (Ovi's video branch is
# Wan2.2-TI2V-5B); ours say which in their header, or name Ovi's layers in full.
BRANCHES = ("video", "audio", "both")
_BRANCH_MODULES = {"video": ("video_model",), "audio": ("audio_model",), "both": ("video_model", "audio_model")}


@dataclass
class Factors:
    """One layer's low-rank update: delta W = (alpha / r) * up @ down."""
    down: torch.Tensor          # A [r, in]
    up: torch.Tensor            # B [out, r]
    alpha: float | None
    keys: list[str] = field(default_factory=list)

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass
class Resolved:
    """What one adapter changes in one model, in the model's own names."""
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]]  # Linear module path -> (A, B, scale)
    deltas: dict[str, torch.Tensor]                              # parameter path -> full delta
    report: "LoadReport"


@dataclass
class LoadReport:
    name: str
    path: str
    format: str
    branch: str
    ranks: list[int]
    applied: list[str] = field(default_factory=list)   # file keys used
    ignored: list[str] = field(default_factory=list)   # file keys naming layers this model does not have
    layers: int = 0                                      # modules / parameters changed

    def summary(self) -> str:
        text = (f"LoRA '{self.name}' ({self.format}, rank {'/'.join(map(str, self.ranks)) or '-'}, {self.branch}): "
                f"{len(self.applied)} tensors applied to {self.layers} layers")
        if self.ignored:
            shown = ", ".join(self.ignored[:6]) + (f", ... ({len(self.ignored) - 6} more)" if len(self.ignored) > 6 else "")
            text += f"; {len(self.ignored)} ignored (no such layer in Ovi): {shown}"
        return text

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "format": self.format, "branch": self.branch,
                "ranks": self.ranks, "tensors_applied": len(self.applied), "layers": self.layers,
                "ignored": list(self.ignored)}


def model_signature(model) -> dict:
    """The architecture facts a native LoRA records and is checked against."""
    sig = {}
    for branch in ("video", "audio"):
        cfg = getattr(model, f"{branch}_config")
        sig[branch] = {k: cfg.get(k) for k in ("dim", "ffn_dim", "num_layers", "in_dim", "out_dim")}
    return sig


def architecture_name(model) -> str:
    """The preset name whose dims the model has ('tiny', 'mid', 'ovi'), else 'custom'."""
    sig = model_signature(model)
    for name, (video, audio) in ARCHITECTURES.items():
        preset = {"video": {k: video.get(k) for k in sig["video"]}, "audio": {k: audio.get(k) for k in sig["audio"]}}
        if preset == sig:
            return name
    return "custom"


class LoRAAdapter:
    """A LoRA file's contents in a style-neutral form (owners still in the style's names)."""

    def __init__(self, name: str, path: str, fmt: str, metadata: dict[str, str], factors: dict[str, Factors],
                 deltas: dict[str, tuple[torch.Tensor, str]], stamp=None):
        self.name, self.path, self.format, self.metadata = name, path, fmt, metadata
        self.factors, self.deltas = factors, deltas
        self.stamp = stamp  # (mtime_ns, size) of the file when read: a changed file is read again

    # ---- reading -------------------------------------------------------------------------------
    @classmethod
    def load(cls, name: str, path: str | Path) -> "LoRAAdapter":
        path = Path(path).expanduser()
        if not path.is_file():
            raise LoRAError(f"LoRA '{name}': file not found: {path}; fix the path (LoRA entries take "
                            f"PATH[:WEIGHT])")
        try:
            metadata = read_metadata(path)
            tensors = read_state_dict(path)
        except CheckpointError as exc:
            raise LoRAError(f"LoRA '{name}': {exc}") from None
        fmt = K.detect_format(tensors, metadata)
        factors, deltas, unsupported, parts = {}, {}, [], {}
        for key, tensor in tensors.items():
            split = K.split_key(key)
            if split is None:
                unsupported.append(key)
                continue
            owner, part = split
            if part.startswith("delta:"):
                param = part.split(":", 1)[1]
                # A Wan raw parameter (`blocks.N.modulation`) may come as `<param>.diff`: the owner is the parameter.
                raw = param == "weight" and owner.rsplit(".", 1)[-1] == "modulation"
                deltas[owner if raw else f"{owner}.{param}"] = (tensor, key)
            else:
                parts.setdefault(owner, {})[part] = (tensor, key)
        if unsupported:
            raise LoRAError(f"LoRA '{name}' ({path}): {len(unsupported)} tensors of a kind this loader does not "
                            f"apply (DoRA / LoHa / LoKr / LoCon-mid are not supported): {', '.join(unsupported[:5])}")
        for owner, found in parts.items():
            if "down" not in found or "up" not in found:
                have = ", ".join(key for _, key in found.values())
                missing = "lora_up/lora_B" if "up" not in found else "lora_down/lora_A"
                raise LoRAError(f"LoRA '{name}' ({path}): {have} has no matching {missing} tensor; the file is "
                                f"incomplete")
            (down, down_key), (up, up_key) = found["down"], found["up"]
            alpha = found.get("alpha")
            if down.shape[0] != up.shape[1]:
                raise LoRAError(f"LoRA '{name}' ({path}): rank mismatch in {owner}: {down_key} {list(down.shape)} "
                                f"has rank {down.shape[0]} but {up_key} {list(up.shape)} has rank {up.shape[1]}")
            keys = [down_key, up_key] + ([alpha[1]] if alpha else [])
            factors[owner] = Factors(down, up, float(alpha[0]) if alpha else None, keys)
        stat = os.stat(path)
        adapter = cls(name, str(path), fmt, metadata, factors, deltas, (stat.st_mtime_ns, stat.st_size))
        file_alpha = adapter.native_info.get("alpha")
        if file_alpha is not None:
            for f in factors.values():  # one alpha for the whole file unless a layer carries its own
                if f.alpha is None:
                    f.alpha = float(file_alpha)
        return adapter

    @property
    def ranks(self) -> list[int]:
        return sorted({f.rank for f in self.factors.values()})

    @property
    def native_info(self) -> dict:
        """Our header (rank, alpha, base_model, base_signature, branch, targets, lightning, training)."""
        try:
            info = json.loads(self.metadata.get(K.NATIVE_TAG) or "{}")
        except json.JSONDecodeError:
            raise LoRAError(f"LoRA '{self.name}' ({self.path}): its '{K.NATIVE_TAG}' header is not JSON") from None
        return info if isinstance(info, dict) else {}

    # ---- resolving -----------------------------------------------------------------------------
    def resolve(self, model: nn.Module, *, branch: str | None = None, rank: int | None = None,
                alpha: float | None = None) -> Resolved:
        """Map this file onto `model` for `branch` (video | audio | both; None: the file's default)."""
        where = f"LoRA '{self.name}' ({self.path})"
        full_names = self.names_branches()
        if full_names and branch is not None and branch != full_names:
            raise LoRAError(f"{where}: its keys name Ovi's layers in full ({full_names} branch); branch {branch!r} "
                            f"cannot move them; leave branch unset")
        branch = full_names or branch or self.native_info.get("branch") or "video"
        if branch not in BRANCHES:
            raise LoRAError(f"{where}: branch {branch!r} must be one of {', '.join(BRANCHES)}")
        self._check_base(model, where)
        if rank is not None and self.ranks and self.ranks != [rank]:
            raise LoRAError(f"{where}: the file's rank is {'/'.join(map(str, self.ranks))} but rank={rank} was asked; "
                            f"pass rank=None to use the file's rank (a preset's rank names the LoRA it expects)")
        report = LoadReport(self.name, self.path, self.format, branch, self.ranks)
        factors, deltas = {}, {}
        musubi = {prefix: K.musubi_lookup(module_names(model.get_submodule(prefix)))
                  for prefix in _BRANCH_MODULES[branch]} if self.format == "musubi" else {}
        for owner, f in self.factors.items():
            targets = self._targets(model, owner, branch, where, musubi)
            if not targets:
                report.ignored.extend(f.keys)
                continue
            for target in targets:
                module = base_module(model, target)
                down, up = self._checked_factors(f, module, target, where)
                scale = (alpha if alpha is not None else (f.alpha if f.alpha is not None else f.rank)) / f.rank
                if isinstance(module, nn.Linear):
                    factors[target] = (down, up, scale)
                else:  # e.g. a conv patch embedding: applied as a full delta in every mode
                    deltas[f"{target}.weight"] = scale * (up.float() @ down.float()).view(module.weight.shape)
            report.applied.extend(f.keys)
        for param_path, (delta, key) in self.deltas.items():
            owner, _, pname = param_path.rpartition(".")
            targets = self._targets(model, owner, branch, where, musubi, param=pname)
            if not targets:
                report.ignored.append(key)
                continue
            for target in targets:
                expected = tuple(get_param(model, target).shape)
                if tuple(delta.shape) != expected:
                    raise LoRAError(f"{where}: {key} has shape {list(delta.shape)} but {target} is "
                                    f"{list(expected)}; {_base_hint(delta.shape, expected)}")
                deltas[target] = delta
            report.applied.append(key)
        if not report.applied:
            shown = ", ".join(report.ignored[:4])
            raise LoRAError(f"{where}: no tensor matches a layer of this model ({self.format} key style, {branch} "
                            f"branch); its keys name layers Ovi does not have, e.g. {shown}")
        report.layers = len(factors) + len(deltas)
        return Resolved(factors, deltas, report)

    def names_branches(self) -> str | None:
        """For a native file with full Ovi names: the branch its keys name (video | audio | both)."""
        owners = list(self.factors) + [p.rpartition(".")[0] for p in self.deltas]
        if not owners or not all(K.has_branch_prefix(o) for o in owners):
            return None
        seen = {o.split(".", 1)[0] for o in owners}
        return "both" if len(seen) == 2 else seen.pop().removesuffix("_model")

    def _targets(self, model: nn.Module, owner: str, branch: str, where: str, musubi: dict,
                 param: str | None = None) -> list[str]:
        """The model paths (modules, or parameters when `param`) an owner names: one per branch, [] if none.
        `musubi`: per branch, underscore name -> module path (musubi keys are split against real names)."""
        if K.has_branch_prefix(owner):
            candidates = [owner]
        else:
            candidates = []
            index = K.block_index(owner)  # on the style's own name: a musubi name past the end maps to nothing
            for prefix in _BRANCH_MODULES[branch]:
                blocks = len(model.get_submodule(prefix).blocks)
                if index is not None and index >= blocks:
                    raise LoRAError(f"{where}: names block {index} but the {prefix} branch has {blocks} blocks; "
                                    f"this LoRA was made for a different base model")
                mapped = K.owner_to_ovi(owner, self.format, musubi.get(prefix, {}))
                if mapped is None:
                    continue
                if param is not None and self.format != "native":  # Wan's raw block modulation sits one level deeper
                    mapped = wan_param_to_ovi(f"{mapped}.{param}").rpartition(".")[0]
                candidates.append(f"{prefix}.{mapped}")
        found = []
        for path in candidates:
            try:
                module = base_module(model, path)
            except AttributeError:
                continue
            if param is None:
                found.append(path)
            elif isinstance(getattr(module, param, None), nn.Parameter):
                found.append(f"{path}.{param}")
            else:
                raise LoRAError(f"{where}: a delta for {path}.{param}, which {type(module).__name__} does not have")
        return found

    @staticmethod
    def _checked_factors(f: Factors, module: nn.Module, target: str, where: str):
        """(A [r, fan_in], B [out, r]) for `module`, or LoRAError naming the key and the shapes."""
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            raise LoRAError(f"{where}: {f.keys[0]} is a low-rank update but {target} ({type(module).__name__}) "
                            f"has no weight matrix")
        fan_in = math.prod(weight.shape[1:])  # from the shape: indexing a sharded (DTensor) weight would gather it
        checks = ((f.down, (f.rank, fan_in), f.keys[0], "A / lora_down"),
                  (f.up, (weight.shape[0], f.rank), f.keys[1], "B / lora_up"))
        for tensor, expected, key, what in checks:
            flat = tuple(tensor.flatten(1).shape) if tensor.dim() > 1 else tuple(tensor.shape)
            if flat != expected:
                raise LoRAError(f"{where}: {key} has shape {list(tensor.shape)} but {target} ({what}) needs "
                                f"{list(expected)}; {_base_hint(tensor.shape, expected)}")
        return f.down.flatten(1), f.up.flatten(1)

    def _check_base(self, model, where: str) -> None:
        made_for = self.native_info.get("base_signature")
        if not made_for:
            return
        here = model_signature(model)
        if made_for != here:
            base = self.native_info.get("base_model", "another model")
            raise LoRAError(f"{where}: made for base model '{base}' {json.dumps(made_for)} but this model is "
                            f"'{architecture_name(model)}' {json.dumps(here)}; use a LoRA trained on this architecture")


def _base_hint(found, expected) -> str:
    widths = [w for w in found if w in K.WAN_WIDTHS and w not in expected]
    if widths:
        return f"this LoRA was made for a different base model ({K.WAN_WIDTHS[widths[0]]}, width {widths[0]})"
    return "this LoRA was made for a different base model (or another layer layout)"


def module_names(root: nn.Module) -> list[str]:
    """Module paths under `root`, with peft's wrapper internals left out (so names stay the model's own)."""
    return [n for n, _ in root.named_modules()
            if n and not any(part == "base_layer" or part.startswith("lora_") for part in n.split("."))]


def base_module(model: nn.Module, path: str) -> nn.Module:
    """The module at `path`, looking through a peft adapter wrapper to the layer it wraps."""
    module = model.get_submodule(path)
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def get_param(model: nn.Module, path: str) -> nn.Parameter:
    owner, _, name = path.rpartition(".")
    return getattr(base_module(model, owner), name)


# ---- writing the native format ---------------------------------------------------------------------
def save_native_lora(path: str | Path, factors: dict[str, tuple[torch.Tensor, torch.Tensor]], model: nn.Module, *,
                     alpha: float, branch: str | None = None, dtype: torch.dtype = torch.float32,
                     extra: dict | None = None) -> Path:
    """Write `factors` ({module path: (A [r, in], B [out, r])}, full Ovi names or backbone-relative with
    `branch`) as a native LoRA: peft key names + an `ovi_lora` JSON header (rank, alpha, base model and
    its signature, branch, targets, plus `extra`, e.g. a lightning profile or training settings)."""
    ranks = sorted({int(a.shape[0]) for a, _ in factors.values()})
    tensors = {}
    for module, (down, up) in factors.items():
        tensors[f"{module}.lora_A.weight"] = down.detach().to("cpu", dtype)
        tensors[f"{module}.lora_B.weight"] = up.detach().to("cpu", dtype)
    info = {"version": 1, "rank": ranks[0] if len(ranks) == 1 else ranks, "alpha": float(alpha),
            "base_model": architecture_name(model), "base_signature": model_signature(model),
            "targets": sorted(factors), **({"branch": branch} if branch else {}), **(extra or {})}
    path = Path(path)
    save_state_dict(tensors, path, metadata={K.NATIVE_TAG: json.dumps(info)})
    return path
