"""LoRA adapters for Ovi: read the styles people have (ours, original Wan / kohya / LightX2V, musubi,
diffusers), apply them merged or unmerged, mix and switch them with the base restored bit-exactly,
presets and the Lightning few-step profile, and training (ovi.train.lora)."""

from ovi.lora.adapter import LoadReport, LoRAAdapter, save_native_lora
from ovi.lora.manager import ActiveAdapter, LoRAManager
from ovi.lora.presets import PRESETS, LightningProfile, get_lora_config

__all__ = ["ActiveAdapter", "LightningProfile", "LoRAAdapter", "LoRAManager", "LoadReport", "PRESETS",
           "get_lora_config", "save_native_lora"]
