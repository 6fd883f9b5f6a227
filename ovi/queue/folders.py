"""The named things a queued request may point at: configs, LoRAs and uploaded images.

A REST client never names a server path. It names a config, a LoRA or an upload, and the folders the
server was started with say where each lives. The Runner resolves those names the same way when the
job runs, so `ovi queue serve` and a separate `ovi queue run` on the same database agree: both default
to folders beside the database (`<db folder>/configs`, `loras`, `uploads`).

Requests made on this machine (CLI, Python) may still carry absolute paths; those are left alone.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ovi.config import shipped_configs
from ovi.request import GenerateRequest

# A name: one path component, no leading dot (so never '.', '..' or a hidden file).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
CONFIG_SUFFIX = ".yaml"
LORA_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")


def is_name(value) -> bool:
    """True for a plain file name (what REST accepts where the CLI takes a path)."""
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None


def _strip(name: str, suffixes: tuple[str, ...]) -> str:
    for suffix in suffixes:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass(frozen=True)
class ServerFolders:
    """Where a server's named configs (`NAME.yaml`), LoRAs (`NAME.safetensors|.pt|.pth|.bin`) and
    uploaded images live."""

    configs: Path
    loras: Path
    uploads: Path

    @classmethod
    def beside(cls, db_path: str | os.PathLike, *, configs=None, loras=None,
               uploads=None) -> "ServerFolders":
        """The folders of a queue database: the given ones, else `<db folder>/{configs,loras,uploads}`."""
        base = Path(db_path).resolve().parent
        return cls(configs=Path(configs or base / "configs").resolve(),
                   loras=Path(loras or base / "loras").resolve(),
                   uploads=Path(uploads or base / "uploads").resolve())

    # -- lookups: a path inside the folder, or None -------------------------------------------------
    def config_path(self, name: str) -> Path | None:
        if not is_name(name):
            return None
        return self._inside(self.configs, _strip(name, (CONFIG_SUFFIX,)) + CONFIG_SUFFIX)

    def lora_path(self, name: str) -> Path | None:
        if not is_name(name):
            return None
        for candidate in (name, *(_strip(name, LORA_SUFFIXES) + s for s in LORA_SUFFIXES)):
            path = self._inside(self.loras, candidate)
            if path is not None:
                return path
        return None

    def upload_path(self, name: str) -> Path | None:
        return self._inside(self.uploads, name) if is_name(name) else None

    @staticmethod
    def _inside(folder: Path, name: str) -> Path | None:
        path = folder / name
        return path if path.exists() else None

    # -- listings (what a client may choose from) ---------------------------------------------------
    def config_names(self) -> list[str]:
        """Names a request's `config` may take: the server's folder, then the shipped configs."""
        own = sorted(p.stem for p in self.configs.glob("*" + CONFIG_SUFFIX)) if self.configs.is_dir() else []
        return own + [name for name in shipped_configs() if name not in own]

    def lora_names(self) -> list[str]:
        if not self.loras.is_dir():
            return []
        return sorted({_strip(p.name, LORA_SUFFIXES) for p in self.loras.iterdir()
                       if is_name(p.name) and (p.is_dir() or p.suffix in LORA_SUFFIXES)})

    def has_config(self, name: str) -> bool:
        return self.config_path(name) is not None or (is_name(name) and name in shipped_configs())

    # -- what the Runner runs -----------------------------------------------------------------------
    def resolve_config(self, config: str | None) -> str | None:
        """A config name with a file in the configs folder -> that file; anything else unchanged
        (a shipped name or a path made on this machine)."""
        path = self.config_path(config) if config else None
        return str(path) if path is not None else config

    def resolve(self, request: GenerateRequest) -> GenerateRequest:
        """The request with its image and LoRA names turned into paths in these folders (names with
        no such file, and paths, stay as they are). Per-clip fields are otherwise untouched."""
        changes = {}
        if isinstance(request.image, str) and self.upload_path(request.image) is not None:
            changes["image"] = str(self.upload_path(request.image))
        loras = tuple({**lora, "path": str(self.lora_path(lora["path"]))}
                      if self.lora_path(lora["path"]) is not None else lora for lora in request.loras)
        if loras != request.loras:
            changes["loras"] = loras
        return dataclasses.replace(request, **changes) if changes else request
