"""LoRA presets (the seed fork's `get_lora_config`) and the Lightning sampling profile.

Presets name the LoRA each mode expects and how it runs: lightning (rank 4, merged: no per-step cost),
balanced (rank 8, merged), quality (rank 16, unmerged: switchable per request at a small per-step
cost). `alpha` equals the rank (scale 1), the convention our training writes; passing a preset to
`apply_adapter` checks the file's rank and sets that alpha.

The Lightning profile is few-step sampling for distilled LoRAs: an explicit sigma grid (before the
time shift), guidance off (scale 1: one model forward per step), Euler steps, and the shift the LoRA
was distilled for. Defaults follow the 4-step Wan2.2 Lightning recipe (timesteps 1000/750/500/250,
shift 5); a native LoRA may carry its own profile in its header (`lightning`), which then wins. The
engine always uses the profile's solver and guidance; a request's own steps or shift still apply.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ovi.checkpoint.loading import read_metadata
from ovi.errors import CheckpointError, LoRAError
from ovi.lora.keys import NATIVE_TAG

PRESETS = {
    "lightning": {"rank": 4, "alpha": 4.0, "merge": True},
    "balanced": {"rank": 8, "alpha": 8.0, "merge": True},
    "quality": {"rank": 16, "alpha": 16.0, "merge": False},
}


def get_lora_config(preset: str) -> dict:
    """{rank, alpha, merge} of a preset: 'lightning' | 'balanced' | 'quality'."""
    if preset not in PRESETS:
        raise LoRAError(f"unknown LoRA preset {preset!r}; use one of {', '.join(PRESETS)}")
    return dict(PRESETS[preset])


@dataclass(frozen=True)
class LightningProfile:
    steps: int = 4
    sigmas: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)  # one per step, before the shift; the last step ends at 0
    shift: float = 5.0
    solver: str = "euler"
    guidance: float = 1.0                                 # 1 = off: one forward per step

    def __post_init__(self):
        if len(self.sigmas) != self.steps or not all(0 < s <= 1 for s in self.sigmas) or \
                list(self.sigmas) != sorted(self.sigmas, reverse=True):
            raise LoRAError(f"lightning profile: sigmas {list(self.sigmas)} must be {self.steps} decreasing values "
                            f"in (0, 1], one per step")

    def to_dict(self) -> dict:
        return {**asdict(self), "sigmas": list(self.sigmas)}

    @classmethod
    def from_dict(cls, data: dict) -> "LightningProfile":
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "sigmas" in known:
            known["sigmas"] = tuple(float(s) for s in known["sigmas"])
        if "steps" not in known and "sigmas" in known:
            known["steps"] = len(known["sigmas"])
        return cls(**known)

    def grid(self, steps: int) -> tuple[float, ...]:
        """The unshifted sigma grid for `steps` steps: the profile's own for its step count, else uniform."""
        if steps == self.steps:
            return self.sigmas
        return tuple((steps - i) / steps for i in range(steps))


def lightning_profile(lora_paths=()) -> LightningProfile:
    """The profile for a Lightning generation: the first native LoRA in the set whose header carries one
    (a distilled LoRA records the grid and shift it was distilled for), else the default."""
    for path in lora_paths:
        try:
            header = json.loads(read_metadata(path).get(NATIVE_TAG) or "{}")
        except (json.JSONDecodeError, CheckpointError):
            continue  # not ours or unreadable: the LoRA loader reports it when the set is applied
        if isinstance(header, dict) and isinstance(header.get("lightning"), dict):
            return LightningProfile.from_dict(header["lightning"])
    return LightningProfile()
