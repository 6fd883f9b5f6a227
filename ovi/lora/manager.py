"""LoRAManager: apply, mix, switch and remove LoRAs on a live FusionModel, merged or not, and get the
base weights back bit-exactly.

- **Merged**: W = W0 + sum_i weight_i * (alpha_i / r_i) * B_i @ A_i (+ full deltas), accumulated in fp32
  from a pristine copy of W0 and cast once to the weight's dtype. No per-step cost.
- **Unmerged**: peft's LoRA layers (`inject_adapter_in_model`) wrap the touched Linears; each adapter's
  `scaling` is weight * alpha / r. The factors are assigned by hand rather than by
  `set_peft_model_state_dict`, because peft casts adapters to the base weight's dtype, which for fp8
  storage would quantise them. A layer whose last adapter goes is unwrapped back to the original
  module, so a removed adapter costs nothing. Each adapter's update is added to the base output by one
  fused `addmm` (`FusedLowRankAdd`, peft's own LoRA-variant hook) instead of peft's `B(A(x)) * scaling`
  then `+`: two full passes over the output fewer.
- **Full deltas** (Wan's `diff` / `diff_b`, LightX2V's `diff_m`, conv factors) are merged in both
  modes: unmerged, a full-rank delta would cost a full matmul per step.
- **fp8 storage**: low-rank updates always run unmerged (in the compute dtype, beside the upcast fp8
  matmul). Re-quantising W0 + dW to e4m3 (3 mantissa bits, no scale) would round most of a small
  low-rank update away. A full delta on an fp8 weight is merged into a compute-dtype (bf16) copy of
  that one weight.
- **Pristine copies**: the first time a parameter changes, a CPU copy of it is kept (those parameters
  only). Every later change recomputes from it, and removal copies it back, so switching and removal
  restore the base bit-exactly, never by subtraction. The copy is dropped once the parameter is
  restored.
- **Sharded weights** (FSDP2 DTensors, dim-0 shards): each rank merges into the rows it holds, from a
  pristine copy of its own shard, using its rows of B (or of a full delta); the same rows of the whole
  merged weight, with no communication. Unmerged adapter layers wrap a sharded Linear as they wrap a
  whole one; their small A/B factors are replicated on every rank, not sharded.
"""

from __future__ import annotations

import logging
import re
import warnings
import weakref
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.distributed.tensor import DTensor, distribute_tensor

from ovi.checkpoint.quantize import is_quantized
from ovi.errors import LoRAError
from ovi.lora.adapter import LoRAAdapter, Resolved, base_module, get_param

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveAdapter:
    """How one loaded adapter is applied: its strength, merged or not, which branch, rank/alpha checks."""
    name: str
    weight: float = 1.0
    merge: bool = True
    branch: str | None = None
    rank: int | None = None
    alpha: float | None = None


class _ModelState:
    """What the manager has done to one model."""

    def __init__(self):
        self.active: dict[str, ActiveAdapter] = {}
        self.records: list[dict] = []
        self.resolved: dict[tuple, Resolved] = {}
        self.pristine: dict[str, torch.Tensor] = {}      # parameter path -> CPU copy of its base value
        self.merged: dict[str, tuple] = {}               # parameter path -> what is merged into it now
        self.unmerged: dict[str, dict[str, tuple]] = {}  # module path -> {adapter: (identity, peft name)}
        self.peft_names: dict[str, str] = {}
        self.injected_once = False


class LoRAManager:
    """Loaded adapters by name, and the set applied to each model (the seed fork's API, plus
    `set_adapters` for a whole set at once and `activate` for a GenerateRequest's `loras`)."""

    def __init__(self, keep_loaded: int = 8):
        self.adapters: dict[str, LoRAAdapter] = {}
        self.keep_loaded = keep_loaded  # adapters `activate` keeps in memory after they go out of use
        self._versions: dict[str, int] = {}
        self._counter = 0
        self._by_request: list[str] = []  # adapters `activate` loaded, least recently used first
        self._states: "weakref.WeakKeyDictionary[nn.Module, _ModelState]" = weakref.WeakKeyDictionary()

    # ---- loading -------------------------------------------------------------------------------
    def load_adapter(self, name: str, path: str | Path) -> LoRAAdapter:
        """Read a LoRA file (any supported key style) under `name`. The same unchanged file is read once."""
        if not isinstance(name, str) or not name:
            raise LoRAError(f"an adapter needs a non-empty name, got {name!r}")
        old = self.adapters.get(name)
        resolved_path = str(Path(path).expanduser())
        if old is not None and old.path == resolved_path and Path(resolved_path).is_file():
            stat = Path(resolved_path).stat()
            if old.stamp == (stat.st_mtime_ns, stat.st_size):
                return old
        adapter = LoRAAdapter.load(name, resolved_path)
        self._counter += 1
        self.adapters[name] = adapter
        self._versions[name] = self._counter
        return adapter

    def unload_adapter(self, name: str) -> None:
        """Forget a loaded adapter (its tensors); refused while a model has it applied."""
        if any(name in state.active for state in self._states.values()):
            raise LoRAError(f"adapter '{name}' is applied to a model; remove it there first")
        self.adapters.pop(name, None)
        self._versions.pop(name, None)
        if name in self._by_request:
            self._by_request.remove(name)

    # ---- the seed fork's calls -----------------------------------------------------------------
    def apply_adapter(self, model: nn.Module, adapter_name: str, rank: int | None = None, alpha: float | None = None,
                      merge: bool = True, weight: float = 1.0, branch: str | None = None) -> dict:
        """Add (or re-apply with new settings) one adapter on top of the model's active set. `rank`, when
        given, must be the file's rank; `alpha` replaces the file's alpha (scale = alpha / rank)."""
        entries = [a for a in self.active_adapters(model) if a.name != adapter_name]
        entries.append(ActiveAdapter(adapter_name, float(weight), bool(merge), branch, rank, alpha))
        records = self.set_adapters(model, entries)
        return next(r for r in records if r["name"] == adapter_name)

    def apply_mixed_adapters(self, model: nn.Module, adapters: dict[str, float], merge: bool = True) -> list[dict]:
        """Make exactly these adapters active with these weights (e.g. {"a": 0.7, "b": 0.3})."""
        if not isinstance(adapters, dict) or not adapters:
            raise LoRAError("apply_mixed_adapters expects a non-empty {adapter name: weight} dict")
        return self.set_adapters(model, [ActiveAdapter(n, float(w), merge) for n, w in adapters.items()])

    def remove_adapter(self, model: nn.Module, name: str) -> None:
        """Take one adapter off the model; the layers it alone touched get their base weights back."""
        entries = self.active_adapters(model)
        if name not in [a.name for a in entries]:
            active = ", ".join(a.name for a in entries) or "none"
            raise LoRAError(f"adapter '{name}' is not applied to this model (active: {active})")
        self.set_adapters(model, [a for a in entries if a.name != name])

    def remove_all(self, model: nn.Module) -> None:
        """The base model again, bit for bit."""
        self.set_adapters(model, [])

    def active_adapters(self, model: nn.Module) -> list[ActiveAdapter]:
        state = self._states.get(model)
        return list(state.active.values()) if state else []

    def records(self, model: nn.Module) -> list[dict]:
        """What is applied: name, path, format, weight, merged, branch, tensors applied, ... (the sidecar's `loras`)."""
        state = self._states.get(model)
        return [dict(r) for r in state.records] if state else []

    # ---- a request's set -----------------------------------------------------------------------
    def activate(self, model: nn.Module, loras) -> list[dict]:
        """Apply a GenerateRequest's `loras` ({path, weight, name, merge[, branch]} dicts) as the whole
        active set: files are read once (again only when they change on disk); only the layers whose
        adapters or weights change are touched."""
        entries, seen = [], {}
        for item in loras:
            name = item.get("name") or Path(item["path"]).stem
            if name in seen and seen[name] != str(item["path"]):
                raise LoRAError(f"two LoRAs are named '{name}' ({seen[name]} and {item['path']}); give one a "
                                f"different name")
            seen[name] = str(item["path"])
            self.load_adapter(name, item["path"])
            if name in self._by_request:
                self._by_request.remove(name)
            self._by_request.append(name)
            entries.append(ActiveAdapter(name, float(item.get("weight", 1.0)), bool(item.get("merge", True)),
                                         item.get("branch")))
        records = self.set_adapters(model, entries)
        # A long-running engine sees many LoRAs: keep only the most recent few that are not in use.
        idle = [n for n in self._by_request if not any(n in st.active for st in self._states.values())]
        for name in idle[: max(0, len(idle) - self.keep_loaded)]:
            self.unload_adapter(name)
        return records

    # ---- the one way a set is applied ----------------------------------------------------------
    def set_adapters(self, model: nn.Module, entries) -> list[dict]:
        """Make `entries` (ActiveAdapter) the model's whole active set. Every adapter is resolved and
        checked before any weight changes, so a bad one leaves the model as it was."""
        entries = list(entries)
        names = [e.name for e in entries]
        for name in names:
            if names.count(name) > 1:
                raise LoRAError(f"adapter '{name}' is listed twice; give it once with its weight")
            if name not in self.adapters:
                loaded = ", ".join(self.adapters) or "none"
                raise LoRAError(f"adapter '{name}' is not loaded (loaded: {loaded}); call load_adapter(name, path) first")
        state = self._states.setdefault(model, _ModelState())
        resolved = {e.name: self._resolve(model, state, e) for e in entries}
        recipes, terms, unmerged, fp8_layers = self._plan(model, state, entries, resolved)
        for param in recipes:
            p = get_param(model, param)
            if isinstance(p, DTensor) and state.pristine.get(param, p).dtype in FP8_DTYPES:
                raise LoRAError(f"{param}: a full delta on an fp8-stored FSDP shard would change the shard's dtype; "
                                f"run this LoRA without fp8 or without FSDP")
        with torch.no_grad():
            self._sync_merged(model, state, recipes, terms)
            self._sync_unmerged(model, state, unmerged)
        state.active = {e.name: e for e in entries}
        state.resolved = {k: v for k, v in state.resolved.items() if k[0] in state.active}
        state.records = [self._record(e, resolved[e.name], fp8_layers.get(e.name, 0)) for e in entries]
        return self.records(model)

    def _identity(self, e: ActiveAdapter) -> tuple:
        return (e.name, self._versions[e.name], e.branch, e.rank, e.alpha)

    def _resolve(self, model, state: _ModelState, e: ActiveAdapter) -> Resolved:
        key = self._identity(e)
        if key not in state.resolved:
            state.resolved[key] = self.adapters[e.name].resolve(model, branch=e.branch, rank=e.rank, alpha=e.alpha)
            log.info("%s", state.resolved[key].report.summary())
        return state.resolved[key]

    def _plan(self, model, state: _ModelState, entries, resolved):
        recipes, terms = defaultdict(list), defaultdict(list)
        unmerged = defaultdict(dict)
        fp8_layers = Counter()
        for e in entries:
            ident, r = self._identity(e), resolved[e.name]
            for module, (down, up, scale) in r.factors.items():
                param = f"{module}.weight"
                coeff = e.weight * scale
                stored = state.pristine.get(param, get_param(model, param))  # the base dtype, even while merged
                fp8 = stored.dtype in FP8_DTYPES or is_quantized(stored)  # a merge would be rounded away
                if e.merge and not fp8:
                    recipes[param].append((ident, e.weight))
                    terms[param].append((up, down, coeff))
                else:
                    unmerged[module][e.name] = (ident, down, up, coeff)
                    fp8_layers[e.name] += int(fp8 and e.merge)
            for param, delta in r.deltas.items():
                recipes[param].append((ident, e.weight))
                terms[param].append((delta, None, e.weight))
        return {k: tuple(v) for k, v in recipes.items()}, terms, unmerged, fp8_layers

    def _record(self, e: ActiveAdapter, r: Resolved, fp8_unmerged: int) -> dict:
        record = {**r.report.to_dict(), "weight": e.weight, "merged": bool(e.merge and not fp8_unmerged),
                  "merge_requested": e.merge}
        if fp8_unmerged:
            record["note"] = (f"{fp8_unmerged} fp8-stored (or quantised) layers run the low-rank update unmerged (re-quantising a "
                              f"merged weight to fp8 would round it away)")
        return record

    # ---- merged: pristine copies, recompute, restore ------------------------------------------
    def _sync_merged(self, model, state: _ModelState, recipes: dict, terms: dict) -> None:
        for param in [p for p in state.merged if p not in recipes]:
            _assign(get_param(model, param), state.pristine.pop(param))
            del state.merged[param]
        for param, recipe in recipes.items():
            if state.merged.get(param) == recipe:
                continue
            p = get_param(model, param)
            if param not in state.pristine:
                state.pristine[param] = _local(p).detach().to("cpu", copy=True)
            pristine = state.pristine[param]
            acc = pristine.to(_local(p).device, torch.float32, copy=True)
            for big, down, coeff in terms[param]:
                big = _rows_held(p, big).to(acc.device, torch.float32)  # B's rows (or a delta's) this rank holds
                if down is None:
                    acc.add_(big, alpha=coeff)
                else:
                    acc.addmm_(big, down.to(acc.device, torch.float32), alpha=coeff)
            dtype = _compute_dtype(model, param) if pristine.dtype in FP8_DTYPES else pristine.dtype
            _assign(p, acc.to(dtype))
            state.merged[param] = recipe

    # ---- unmerged: peft adapter layers ---------------------------------------------------------
    def _sync_unmerged(self, model, state: _ModelState, plan: dict) -> None:
        for module in list(state.unmerged):
            have, want = state.unmerged[module], plan.get(module, {})
            layer = model.get_submodule(module)
            for name, (ident, peft_name) in list(have.items()):
                if name not in want or want[name][0] != ident:
                    del have[name]
                    if have:
                        layer.delete_adapter(peft_name)
            if not have:
                _unwrap(model, module)
                del state.unmerged[module]
        new = defaultdict(dict)
        for module, want in plan.items():
            have = state.unmerged.get(module, {})
            for name, (ident, down, up, coeff) in want.items():
                if name not in have:
                    new[name][module] = (ident, down, up)
        for name, layers in new.items():
            self._inject(model, state, name, layers)
        for module, want in plan.items():
            layer, have = model.get_submodule(module), state.unmerged[module]
            for name, (_, _, _, coeff) in want.items():
                layer.scaling[have[name][1]] = coeff
            layer.set_adapter([have[name][1] for name in want])
            layer.requires_grad_(False)
        if not state.unmerged and state.injected_once and hasattr(model, "peft_config"):
            del model.peft_config  # the attribute inject_adapter_in_model adds; gone with the last adapter

    def _inject(self, model, state: _ModelState, name: str, layers: dict) -> None:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora.layer import Linear as PeftLinear

        peft_name = state.peft_names.setdefault(name, f"ovi_lora_{len(state.peft_names)}")
        ranks = {module: int(down.shape[0]) for module, (_, down, _) in layers.items()}
        common = Counter(ranks.values()).most_common(1)[0][0]
        config = LoraConfig(r=common, lora_alpha=common, lora_dropout=0.0, target_modules=sorted(layers),
                            rank_pattern={re.escape(m): r for m, r in ranks.items() if r != common})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "already found a peft_config": several adapters are intended
            inject_adapter_in_model(config, model, adapter_name=peft_name, low_cpu_mem_usage=True)
        state.injected_once = True
        for module, (ident, down, up) in layers.items():
            layer = model.get_submodule(module)
            base = layer.get_base_layer().weight
            dtype = _compute_dtype(model, f"{module}.weight") if base.dtype in FP8_DTYPES else base.dtype
            layer.lora_A[peft_name].weight = nn.Parameter(down.to(base.device, dtype), requires_grad=False)
            layer.lora_B[peft_name].weight = nn.Parameter(up.to(base.device, dtype), requires_grad=False)
            if isinstance(layer, PeftLinear):
                layer.lora_variant[peft_name] = FusedLowRankAdd()
            state.unmerged.setdefault(module, {})[name] = (ident, peft_name)


class FusedLowRankAdd:
    """peft's vanilla LoRA forward, with the scaled low-rank product added by one `addmm` into the base
    output: result + scaling * (A x) B^T in one pass over the output instead of a multiply and an add
    (the update's thin matmuls are memory-bound, so those passes cost more than their FLOPs). The same
    sum, rounded differently (fused); the manager never merges through peft, so only `forward` is used.
    It has peft's `LoraVariant` methods without subclassing it: peft is imported only once a LoRA runs
    unmerged (`_inject`)."""

    @staticmethod
    def init(module, adapter_name: str, **kwargs) -> None:
        pass

    @staticmethod
    def forward(module, active_adapter: str, x: torch.Tensor, result: torch.Tensor, **kwargs) -> torch.Tensor:
        down = module.lora_A[active_adapter](module.lora_dropout[active_adapter](x))
        up = module.lora_B[active_adapter].weight
        scaling = module.scaling[active_adapter]
        if up.dtype != result.dtype:  # peft casts the result back to the base dtype after the adapters
            return result + module.lora_B[active_adapter](down).to(result.dtype) * scaling
        # Out of place (`addmm_` would save an allocation, but torch's FLOP counter does not count it).
        flat, low = result.reshape(-1, result.shape[-1]), down.reshape(-1, down.shape[-1])
        return torch.addmm(flat, low, up.t(), alpha=scaling).view(result.shape)

    @staticmethod
    def merge_safe(module, active_adapter: str, orig_weight: torch.Tensor) -> torch.Tensor:
        raise LoRAError("ovi's LoRAManager merges adapters itself (merge=True), never through peft")

    merge_unsafe = unmerge = merge_safe


def _local(p: torch.Tensor) -> torch.Tensor:
    """What this rank stores of a parameter: its local shard for a DTensor (FSDP), else the tensor."""
    return p.to_local() if isinstance(p, DTensor) else p


def _rows_held(p: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """This rank's rows of `full` (a tensor with `p`'s dim 0), laid out as DTensor `p` is sharded; each rank
    takes its own chunk, no communication. `full` itself for an unsharded `p`."""
    if not isinstance(p, DTensor):
        return full
    return distribute_tensor(full.to(p.device), p.device_mesh, p.placements, src_data_rank=None).to_local()


def _assign(p: nn.Parameter, value: torch.Tensor) -> None:
    """Set a parameter's value (this rank's shard of a DTensor): in place when the dtype is unchanged
    (storage kept, so FSDP gathers the new rows), else rebind its data."""
    local = _local(p)
    if local.dtype == value.dtype and local.shape == value.shape:
        local.copy_(value)
    else:  # an fp8 weight gets (or gives back) a merged bf16 copy; set_adapters refuses this for shards
        p.data = value.to(p.device)


def _unwrap(model: nn.Module, module: str) -> None:
    parent, _, child = module.rpartition(".")
    owner = model.get_submodule(parent) if parent else model
    setattr(owner, child, base_module(model, module))


def _compute_dtype(model: nn.Module, param: str) -> torch.dtype:
    """The dtype a branch computes in (bf16 for fp8 storage): where fp8-stored weights get their LoRA."""
    branch = model.get_submodule(param.split(".", 1)[0]) if "." in param else model
    resolve = getattr(branch, "resolve_compute_dtype", None)
    return resolve() if resolve is not None else torch.bfloat16
