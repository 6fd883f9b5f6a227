"""`ovi bench lora`: what a LoRA costs per denoising step, merged and unmerged, and what a switch costs.

On the mid preset (random weights) two random LoRAs of the given rank target every Linear of the video
branch's blocks (attention q/k/v/o, cross-attention, FFN), as a Wan LoRA does. One denoising step's model
work (`Engine.predict`: the guided positive + negative pass) is timed for the three modes - base (no
LoRA), merged, unmerged - interleaved mode by mode, so changes in machine load hit all three alike: each
turn switches the set and runs one untimed step (as the first step of a request after a switch), then
times one. `step_seconds` is the median wall time, `step_seconds_min` the
fastest, `step_cpu_seconds` the median CPU time of this process (with `--threads 1` the measure least
disturbed by other load on a shared machine); `ratio_to_base`, `ratio_to_base_min` and `cpu_ratio_to_base`
compare them with the base of the same run. `flops_per_step` (torch.utils.flop_counter on the real
step, attention included: ovi.bench.pipeline.flop_counter) gives the cost without any timing noise.
`switch_seconds` is the median time to switch the model from one LoRA to
the other in that mode (for base: from a merged LoRA back to the base).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

SIZES = {"tiny": [128, 128], "mid": [256, 448]}
MODES = ("base", "merged", "unmerged")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="mid", help="architecture preset: mid (default) or tiny")
    parser.add_argument("--rank", default="16", help="comma list of LoRA ranks")
    parser.add_argument("--runs", type=int, default=10, help="timed denoising steps per mode (interleaved)")
    parser.add_argument("--switches", type=int, default=5, help="timed switches per mode")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--ckpt-root", default=None, help="where the random checkpoint is made (default: temp)")


def random_lora(path: Path, arch: str, rank: int = 16, seed: int = 0) -> Path:
    """A random native LoRA on the video blocks of an architecture preset (shapes from a meta-device model)."""
    from ovi.model import FusionModel
    from ovi.model.configs import architecture
    with torch.device("meta"):
        model = FusionModel(*architecture(arch))
    return _write_lora(path, model, rank, seed)


def _write_lora(path: Path, model, rank: int, seed: int) -> Path:
    from ovi.lora import save_native_lora
    g = torch.Generator().manual_seed(seed)
    factors = {}
    for name, module in model.video_model.blocks.named_modules():
        if isinstance(module, torch.nn.Linear) and "fusion" not in name:  # Wan's layers; Ovi's fusion ones excluded
            factors[f"video_model.blocks.{name}"] = (torch.randn(rank, module.in_features, generator=g) * 0.01,
                                                     torch.randn(module.out_features, rank, generator=g) * 0.01)
    return save_native_lora(path, factors, model, alpha=float(rank))


def _lora_set(mode: str, path: Path) -> tuple:
    return () if mode == "base" else ({"path": str(path), "weight": 1.0, "merge": mode == "merged"},)


def measure(arch: str, rank: int, runs: int, switches: int, root: Path) -> list[dict]:
    import ovi
    from ovi.bench.pipeline import flop_counter
    from ovi.pipeline.random_checkpoint import make_random_checkpoint
    ckpt = root / arch
    make_random_checkpoint(ckpt, arch)
    cfg = ovi.load_config(model_name=arch, ckpt_dir=str(ckpt), video_frame_height_width=SIZES[arch])
    engine = ovi.Engine.from_config(cfg)
    paths = [random_lora(root / f"{name}_r{rank}.safetensors", arch, rank, seed) for seed, name in enumerate(("a", "b"))]
    plan = engine.plan("a bench clip", seed=0)
    contexts = engine.encode_text(plan)
    video, audio = engine.initial_latents(plan)
    per_step, cpu, flops = {mode: [] for mode in MODES}, {mode: [] for mode in MODES}, {}
    step = lambda: engine.predict(plan, video, audio, 999, contexts, False)  # noqa: E731
    with torch.no_grad():
        for run in range(runs):
            for mode in MODES:
                engine.loras.activate(engine.model, _lora_set(mode, paths[0]))
                if run == 0:
                    with flop_counter() as counter:
                        step()
                    flops[mode] = int(counter.get_total_flops())
                step()  # untimed: the first step after a switch
                t0, c0 = time.perf_counter(), time.process_time()
                step()
                per_step[mode].append(time.perf_counter() - t0)
                cpu[mode].append(time.process_time() - c0)

    switch = {}
    for mode in MODES:
        seconds = []
        for i in range(switches):
            if mode == "base":
                engine.loras.activate(engine.model, _lora_set("merged", paths[0]))
                frm, to = _lora_set("merged", paths[0]), ()
            else:
                frm, to = _lora_set(mode, paths[i % 2]), _lora_set(mode, paths[(i + 1) % 2])
                engine.loras.activate(engine.model, frm)
            t0 = time.perf_counter()
            engine.loras.activate(engine.model, to)
            seconds.append(time.perf_counter() - t0)
        switch[mode] = statistics.median(seconds)
    engine.loras.remove_all(engine.model)

    base, base_min = statistics.median(per_step["base"]), min(per_step["base"])
    base_cpu = statistics.median(cpu["base"])
    layers = engine.loras.adapters["a_r%d" % rank].resolve(engine.model).report.layers
    # `rank` on a base row names the run it belongs to (its ratios are against that base); no LoRA is applied.
    return [{"bench": "lora", "config": arch, "world_size": 1, "mode": mode, "rank": rank,
             "step_seconds": statistics.median(per_step[mode]), "step_seconds_runs": per_step[mode],
             "step_seconds_min": min(per_step[mode]), "ratio_to_base": statistics.median(per_step[mode]) / base,
             "ratio_to_base_min": min(per_step[mode]) / base_min, "step_cpu_seconds": statistics.median(cpu[mode]),
             "cpu_ratio_to_base": statistics.median(cpu[mode]) / base_cpu, "flops_per_step": flops[mode],
             "flops_ratio_to_base": flops[mode] / flops["base"], "switch_seconds": switch[mode],
             "switch_seconds_means": ("merged LoRA -> base" if mode == "base" else f"LoRA a <-> b, both {mode}"),
             "lora_layers": layers, "runs": runs, "passes_per_step": 2, "video_tokens": plan.vid_seq_len,
             "device": str(engine.device), "dtype": str(engine.dtype).replace("torch.", ""),
             "threads": torch.get_num_threads()} for mode in MODES]


def run(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.ckpt_root or tempfile.mkdtemp(prefix="ovi-bench-lora-"))
    for rank in (int(r) for r in str(args.rank).split(",")):
        yield from measure(args.arch, rank, args.runs, args.switches, root)
