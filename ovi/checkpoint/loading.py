"""Reading, checking and loading Ovi fusion checkpoints (safetensors bf16/fp32/fp8, or .pt).

The model is built on the meta device and filled with `load_state_dict(assign=True)`, so weights
are allocated once, tensor by tensor, already in their storage dtype on the target device.
Sharded loading (FSDP) uses the two halves separately: `meta_fusion_model` builds the empty model in
its storage dtypes, ovi.parallel shards it, and `read_rows` fills each rank's shards with only its
rows of each tensor (safetensors slices), so no process ever holds the whole model.
Dtype policy: `storage` is the dtype weights are kept in (fp32, bf16 or fp8 e4m3); the compute
dtype is fp32/bf16 and fp8 layers are upcast one layer at a time as they run (see ovi.model.layers).
fp8 rule (upstream PR #11): every tensor except those with "norm" or "bias" in its name is fp8.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ovi.checkpoint.adapter import (
    describe_foreign_keys,
    fusion_key,
    fusion_keys_from_upstream,
    unwrap_container,
)
from ovi.errors import CheckpointError
from ovi.model import FusionModel
from ovi.model.configs import ARCHITECTURES
from ovi.model.configs import architecture as architecture_configs
from ovi.specs import FUSION_DIR

FP8 = torch.float8_e4m3fn
_ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
              "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
              "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


def keeps_high_precision(name: str) -> bool:
    return "norm" in name or "bias" in name


# ---- reading -------------------------------------------------------------------------------------
def _safetensors_header(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise ValueError("file shorter than the 8-byte header length")
            (n,) = struct.unpack("<Q", raw)
            size = path.stat().st_size
            if n > size - 8:
                raise ValueError(f"header claims {n} bytes but the file has {size}")
            header = json.loads(f.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end > size:
            raise ValueError(f"tensor data ends at byte {8 + n + end} but the file has {size} (truncated download?)")
        return header
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc}); re-download or re-convert it") from exc


def read_metadata(path: str | Path) -> dict[str, str]:
    """The string metadata of a safetensors header ({} for other files or none)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"file not found: {path}")
    if path.suffix != ".safetensors":
        return {}
    return dict(_safetensors_header(path).get("__metadata__") or {})


def read_shapes(path: str | Path) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Key -> (shape, dtype) without loading tensor data where the format allows it."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        header = _safetensors_header(path)
        return {k: (tuple(v["shape"]), _ST_DTYPES.get(v["dtype"], v["dtype"]))
                for k, v in header.items() if k != "__metadata__"}
    sd = read_state_dict(path, device="meta")
    return {k: (tuple(v.shape), v.dtype) for k, v in sd.items()}


def read_state_dict(path: str | Path, device="cpu") -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        _safetensors_header(path)  # clear error for truncated/corrupt files before safetensors' own
        from safetensors.torch import load_file
        return fusion_keys_from_upstream(load_file(str(path), device="cpu" if str(device) == "meta" else str(device)))
    try:
        obj = torch.load(path, map_location="cpu" if str(device) == "meta" else device,
                         weights_only=True, mmap=str(device) in ("cpu", "meta"))
        return fusion_keys_from_upstream(unwrap_container(obj))
    except Exception as exc:
        raise CheckpointError(f"{path} could not be read as a torch checkpoint ({exc.__class__.__name__}: "
                              f"{str(exc)[:200]}); expected a .safetensors or .pt state dict") from exc


# ---- checking ------------------------------------------------------------------------------------
def expected_shapes(architecture: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = FusionModel(*architecture_configs(architecture))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@dataclass
class KeyReport:
    path: str
    architecture: str
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple, tuple]] = field(default_factory=list)  # (key, found, expected)
    dtypes: dict[str, int] = field(default_factory=dict)
    looks_like: str | None = None

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self, limit: int = 8) -> str:
        if self.ok:
            dt = ", ".join(f"{n} {d}" for d, n in sorted(self.dtypes.items()))
            return f"{self.path}: OK, a '{self.architecture}' Ovi fusion checkpoint ({dt})"
        parts = [f"{self.path} does not match the '{self.architecture}' Ovi fusion model"]
        if self.looks_like:
            parts.append(f"it looks like {self.looks_like}")

        def listing(name, items):
            shown = ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
            parts.append(f"{len(items)} {name}: {shown}")
        if self.missing:
            listing("missing keys", self.missing)
        if self.unexpected:
            listing("unexpected keys", self.unexpected)
        if self.mismatched:
            listing("wrong-shape keys", [f"{k} {list(f)} (expected {list(e)})" for k, f, e in self.mismatched])
        return "; ".join(parts)


def compare(path, found: dict[str, tuple[tuple, torch.dtype]], architecture: str) -> KeyReport:
    expected = expected_shapes(architecture)
    report = KeyReport(str(path), architecture)
    report.missing = [k for k in expected if k not in found]
    report.unexpected = [k for k in found if k not in expected]
    report.mismatched = [(k, found[k][0], expected[k]) for k in expected if k in found and found[k][0] != expected[k]]
    for shape_dtype in found.values():
        name = str(shape_dtype[1]).replace("torch.", "")
        report.dtypes[name] = report.dtypes.get(name, 0) + 1
    if not report.ok:
        report.looks_like = describe_foreign_keys(found)
    return report


def inspect_checkpoint(path: str | Path, architecture: str | None = None) -> KeyReport:
    """Compare a file against an architecture (or the closest known one when None)."""
    found = read_shapes(path)
    names = [architecture] if architecture else list(ARCHITECTURES)
    reports = [compare(path, found, name) for name in names]
    return min(reports, key=lambda r: len(r.missing) + len(r.unexpected) + len(r.mismatched))


# ---- loading -------------------------------------------------------------------------------------
def storage_dtype_for(name: str, source: torch.dtype, storage: torch.dtype) -> torch.dtype:
    if storage == FP8:
        if keeps_high_precision(name):
            return source if source != FP8 else torch.bfloat16
        return FP8
    return storage


def load_fusion_model(path: str | Path, architecture: str, *, storage: torch.dtype = torch.float32,
                      compute: torch.dtype | None = None, device="cpu", after_block=None) -> FusionModel:
    """Build on meta, check keys, then assign tensors (cast to their storage dtype) on `device`.

    storage=FP8 keeps matrices in float8_e4m3fn (converting a bf16/fp32 file on the fly if needed)
    and norms/biases in bf16; compute defaults to bf16 then, else to the storage dtype.
    A safetensors file is streamed: memory-mapped and assigned one fused block (video block i + audio
    block i) at a time, each tensor cast as it is read, so the host never holds the file's dtype copy
    of the whole model; `after_block(model, i)` runs once block i is in place (e.g. quantising it,
    ovi.checkpoint.quantize, so the host peak is the quantised model plus one block).
    """
    checked_shapes(path, architecture)
    with torch.device("meta"):
        model = FusionModel(*architecture_configs(architecture))
    if Path(path).suffix == ".safetensors":
        _stream_safetensors(model, Path(path), storage, device, after_block)
    else:
        sd = read_state_dict(path, device="cpu")
        for key in list(sd):
            sd[key] = sd[key].to(device=device, dtype=storage_dtype_for(key, sd[key].dtype, storage))
        model.load_state_dict(sd, strict=True, assign=True)
        for i in range(model.num_blocks) if after_block else ():
            after_block(model, i)
    if compute is None:
        compute = torch.bfloat16 if storage == FP8 else storage
    model.set_compute_dtype(compute)
    return model.eval().requires_grad_(False)


_BLOCK_KEY = re.compile(r"^(?:video|audio)_model\.blocks\.(\d+)\.")


def _stream_safetensors(model: FusionModel, path: Path, storage: torch.dtype, device, after_block) -> None:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt", device="cpu") as f:
        names = {fusion_key(k): k for k in f.keys()}
        groups: dict[int | None, list[str]] = {None: []}
        for key in names:
            match = _BLOCK_KEY.match(key)
            groups.setdefault(int(match.group(1)) if match else None, []).append(key)
        for i in sorted(groups, key=lambda g: -1 if g is None else g):
            part = {}
            for key in groups[i]:
                t = f.get_tensor(names[key])
                part[key] = t.to(device=device, dtype=storage_dtype_for(key, t.dtype, storage))
            model.load_state_dict(part, strict=False, assign=True)
            del part
            if i is not None and after_block is not None:
                after_block(model, i)
    left = [name for name, p in model.named_parameters() if p.is_meta]
    if left:
        raise CheckpointError(f"{path}: {len(left)} parameters were not in the file (first: {left[0]})")


def checked_shapes(path: str | Path, architecture: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """The file's key -> (shape, dtype), after checking it fits `architecture` (CheckpointError if not)."""
    found = read_shapes(path)
    report = compare(path, found, architecture)
    if not report.ok:
        raise CheckpointError(report.summary())
    return found


def meta_fusion_model(path: str | Path, architecture: str, storage: torch.dtype) -> FusionModel:
    """The model on the meta device, each parameter in the dtype `load_fusion_model` would store it
    in (for fp8: the file's dtype decides norms/biases). Checks the file's keys and shapes first."""
    found = checked_shapes(path, architecture)
    with torch.device("meta"):
        model = FusionModel(*architecture_configs(architecture))
    for name, param in list(model.named_parameters()):
        owner, _, leaf = name.rpartition(".")
        target = storage_dtype_for(name, found[name][1], storage)
        setattr(model.get_submodule(owner), leaf,
                torch.nn.Parameter(torch.empty_like(param, dtype=target), requires_grad=False))
    return model.eval()


@dataclass
class RowReads:
    """What `read_rows` took from the file: bytes, tensors, and the largest single read."""
    bytes_read: int = 0
    tensors: int = 0
    largest_read: int = 0

    def fill(self, dest: torch.Tensor, part: torch.Tensor) -> None:
        """Copy `part` (rows just read) into `dest`, cast to its dtype, and count the read."""
        nbytes = part.numel() * part.element_size()
        self.bytes_read += nbytes
        self.tensors += 1
        self.largest_read = max(self.largest_read, nbytes)
        dest.copy_(part.to(dest.dtype))


def read_rows(path: str | Path, targets: dict[str, tuple[torch.Tensor, int]]) -> RowReads:
    """Fill each `targets[key] = (destination, first_row)` with the file's rows first_row ..
    first_row + len(destination) of tensor `key` (dim 0), cast to the destination's dtype (and device).

    A safetensors file is read slice by slice (`get_slice`: only those rows leave the disk); a .pt file
    is memory-mapped, so only the pages holding those rows are touched."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return read_rows_from(read_state_dict(path, device="meta"), targets)  # memory-mapped
    reads = RowReads()
    from safetensors import safe_open
    with safe_open(str(path), framework="pt", device="cpu") as f:
        names = {fusion_key(k): k for k in f.keys()}
        for key, (dest, start) in targets.items():
            if dest.shape[0]:
                reads.fill(dest, f.get_slice(names[key])[start:start + dest.shape[0]])
    return reads


def read_rows_from(state_dict: dict[str, torch.Tensor], targets: dict[str, tuple[torch.Tensor, int]]) -> RowReads:
    """`read_rows` from a state dict whose tensors are memory-mapped (torch.load(mmap=True)): slicing
    rows touches only the pages that hold them."""
    reads = RowReads()
    for key, (dest, start) in targets.items():
        if dest.shape[0]:
            reads.fill(dest, state_dict[key][start:start + dest.shape[0]])
    return reads


def fusion_checkpoint_path(ckpt_dir: str | Path, checkpoint_file: str) -> Path:
    path = Path(ckpt_dir) / FUSION_DIR / checkpoint_file
    if not path.is_file():
        raise CheckpointError(
            f"Ovi checkpoint not found at {path}; expected the upstream layout <ckpt_dir>/Ovi/{checkpoint_file} "
            "(set ckpt_dir, or run `ovi checkpoint make-tiny DIR` for a tiny test checkpoint)")
    return path


def save_state_dict(sd: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically (temp + rename), with an optional string metadata header."""
    from safetensors.torch import save_file
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


def convert_checkpoint(src: str | Path, dst: str | Path, storage: torch.dtype) -> None:
    """Re-save a checkpoint with another storage dtype (e.g. bf16 -> fp8 with upstream's rule)."""
    sd = read_state_dict(src)
    save_state_dict({k: v.to(storage_dtype_for(k, v.dtype, storage)) for k, v in sd.items()}, dst)
