"""Regional compilation (config `compile`, CLI `--compile`): torch.compile the fused block once.

As diffusers' `compile_repeated_blocks` and kijai's wrapper do, only the repeated block is compiled,
not the whole model: one graph per input shape serves all N fused blocks (the block modules are
arguments of `ovi.model.fusion.fused_block_step`, so their weights are graph inputs and dynamo reuses
the graph across blocks), which keeps compile time at one block's worth. The model's
`fused_block_fn` is swapped for the compiled function; everything around the blocks (embedding,
head, the step cache's decisions) stays eager.

Inductor needs a C++ compiler on the CPU and Triton on a GPU. Where it has neither, or compiling
fails, the block runs eagerly and the sidecar says so (`compile.fallback` gives the reason): a stated
fallback rather than a refusal, because the result is the same, only slower. The first call of each
new shape compiles; `compile.compile_seconds` is the time of those calls, `compile.graphs` how many
graphs dynamo built.

Dynamo keeps at most `torch._dynamo.config.recompile_limit` (8) variants of one function; past that it
runs new variants eagerly and only logs a warning. Every block shares one code object, so many shapes
(or LoRA structures, below) in one process can reach it: `CompiledBlock` watches dynamo's counter of
that event and records it in `compile.fallback` (with our own warning), while variants already compiled
keep running compiled.

With the other features (tests/pipeline/test_compile_features.py): sequence-parallel kernels run inside
the compiled block and their collectives are graph breaks (`torch.compiler.disable` on ovi.parallel.comm's
calls), so each block is a few graphs, still shared by every block; FSDP2 block units (FULL_SHARD, with
SP) are gathered and freed around each block call by ovi.parallel.fsdp's schedule, outside the compiled
function; block swap moves weights under the same graph; an unmerged LoRA changes the block's modules
(peft wrappers), so dynamo compiles one more variant per adapter set; a merged one changes only values
and reuses the graph.
"""

from __future__ import annotations

import logging
import shutil
import time

import torch

from ovi.model.fusion import fused_block_step

log = logging.getLogger(__name__)

BACKEND = "inductor"


def inductor_unavailable(device: torch.device) -> str | None:
    """Why inductor cannot run on `device` here, or None when it can."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton
        return None if has_triton() else "Triton is not installed (inductor's GPU backend needs it)"
    from torch._inductor import config as inductor_config
    cxx = [c for c in inductor_config.cpp.cxx if c] + ["g++", "c++", "clang++"]
    if not any(shutil.which(c) for c in cxx):
        return "no C++ compiler found (inductor's CPU backend needs g++ or clang++; install one or set CXX)"
    return None


RECOMPILE_LIMIT_EVENT = "Dynamo recompile limit exceeded"  # the key dynamo counts under counters["unimplemented"]


def recompile_limit_hits() -> int:
    """How many times dynamo has given up recompiling a function in this process (recompile_limit)."""
    from torch._dynamo.utils import counters
    return sum(n for key, n in counters["unimplemented"].items() if key.startswith(RECOMPILE_LIMIT_EVENT))


class CompiledBlock:
    """Stands in for `fused_block_step`: calls the compiled function, times calls that compiled, falls
    back to eager (recorded) if compiling fails, and records dynamo's recompile-limit fallback."""

    def __init__(self, device: torch.device, backend: str | None = None):
        self.device = device
        self.backend = backend or BACKEND
        self.compiled = torch.compile(fused_block_step, backend=self.backend, dynamic=False)
        self.failed: str | None = None     # compiling raised: every later call runs eager
        self.fallback: str | None = None   # what the sidecar says (a failure, or the recompile limit)
        self.compile_seconds = 0.0
        self.graphs = 0

    def __call__(self, *args):
        if self.failed is not None:
            return fused_block_step(*args)
        from torch._dynamo.utils import counters
        before = counters["stats"]["unique_graphs"]
        # once the fallback is recorded there is nothing more to say: skip the counter scan per call
        limit_hits = recompile_limit_hits() if self.fallback is None else None
        t0 = time.perf_counter()
        try:
            out = self.compiled(*args)
        except Exception as exc:  # any compiler failure: the eager block gives the same result
            self.failed = self.fallback = (f"compiling failed ({type(exc).__name__}: "
                                           f"{str(exc).splitlines()[0][:200]}); ran eager")
            log.warning("regional compile: %s", self.fallback)
            return fused_block_step(*args)
        new = counters["stats"]["unique_graphs"] - before
        if new:
            self.graphs += new
            self.compile_seconds += time.perf_counter() - t0
        if limit_hits is not None and recompile_limit_hits() > limit_hits:
            from torch._dynamo import config as dynamo_config
            self.fallback = (f"dynamo's recompile_limit ({dynamo_config.recompile_limit} variants of one function) was "
                             "reached inside the compiled block: variants past it (new shapes, LoRA structures) run "
                             "eager; raise torch._dynamo.config.recompile_limit or use fewer shapes per process")
            log.warning("regional compile: %s", self.fallback)
        return out

    def record(self) -> dict:
        return {"enabled": True, "backend": "eager" if self.failed else self.backend, "fallback": self.fallback,
                "graphs": self.graphs, "compile_seconds": self.compile_seconds}


class EagerBlock:
    """`compile: false`, or inductor unavailable (then `fallback` says why)."""

    def __init__(self, fallback: str | None = None):
        self.fallback = fallback

    def record(self) -> dict:
        return {"enabled": self.fallback is not None, "backend": "eager", "fallback": self.fallback,
                "graphs": 0, "compile_seconds": 0.0}


def compile_fused_block(model, enabled: bool, device: torch.device):
    """With `enabled`, make `model` run its fused blocks through one compiled function; returns the
    object whose `record()` goes to the sidecar's `compile`."""
    if not enabled:
        return EagerBlock()
    reason = inductor_unavailable(device)
    if reason is not None:
        log.warning("compile: true but %s; running eager", reason)
        return EagerBlock(f"{reason}; ran eager")
    block = CompiledBlock(device)
    model.fused_block_fn = block
    return block
