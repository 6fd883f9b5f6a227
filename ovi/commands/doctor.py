"""`ovi doctor [CONFIG] [--gpus N --gpu-memory GB]`: what this machine has, and which settings fit.

This machine: Python, torch and its CUDA, each GPU with its free memory, NCCL / gloo, flash-attn, CPU
cores and memory, free disk where checkpoints and outputs go, and whether the config's files are there.

Then, for the config's model (default: the three real configs) on each machine profile (--gpus and
--gpu-memory, else 1x24 GB, 4x24 GB as configs/rtx3090_x4.yaml, 8x80 GB, plus this machine's GPUs):
the settings (sp, FSDP strategy, fsdp offload, shard_text_model, cpu_offload, fp8) whose expected peak
per GPU fits, fastest first, with the expected speed relative to one GPU running NO_SHARD in bf16
without offload. Peaks come from ovi.parallel.memory, the model the FSDP `auto` strategy uses; speeds from its
spec-sheet speed model. Both are estimates (see the footnote it prints); a setting with fsdp offload shows
the bytes it copies from host memory per step beside its speed. With `--gpus 1` the memory profiles and
FSDP offload on that one GPU follow, costed alike (ovi.pipeline.memory_profiles.profile_plan). `--measure`
runs the tiny and mid presets on this machine's CPU and prints measured peak / estimate.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import platform
import shutil
from pathlib import Path

REAL_CONFIGS = ("ovi_720x720_5s", "ovi_960x960_5s", "ovi_960x960_10s")
PROFILES = ((1, 24.0), (4, 24.0), (8, 80.0))
HEADS = 24  # Ulysses splits the real model's 24 heads: sp must divide it
STRATEGY_CHOICES = ("NO_SHARD", "FULL_SHARD", "SHARD_GRAD_OP", "FULL_SHARD+offload")
SHOWN = 3


def add_doctor_parser(subparsers) -> None:
    p = subparsers.add_parser("doctor", help="this machine, and the settings that fit (memory per GPU, speed)")
    p.add_argument("config", nargs="?", default=None, help="a config (default: the three real-weight configs)")
    p.add_argument("--gpus", type=int, default=None, help="plan for this many GPUs (with --gpu-memory)")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GB", help="memory per GPU to plan for")
    p.add_argument("--host-memory", type=float, default=None, metavar="GB",
                   help="host memory to plan the one-GPU memory profiles for (block swap keeps blocks there)")
    p.add_argument("--all", action="store_true", help="list every setting that fits, not the fastest three")
    p.add_argument("--json", action="store_true", help="one JSON object per machine fact and per setting")
    p.add_argument("--measure", action="store_true",
                   help="also run tiny and mid on this CPU and compare measured peaks with the estimates")
    p.add_argument("--queue", metavar="PATH|URL", help="also check a queue database (reachable, "
                   "schema version, runners seen): a SQLite file or a postgresql:// URL")
    p.set_defaults(func=run_doctor)


# ---- this machine ----------------------------------------------------------------------------------
def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _existing(path: Path) -> Path:
    path = path.expanduser().resolve()
    while not path.exists():
        path = path.parent
    return path


def machine_facts(cfg) -> dict:
    import torch
    import torch.distributed as dist

    from ovi.parallel.measure import free_device_memory
    from ovi.parallel.memory import GB
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            gpus.append({"index": i, "name": torch.cuda.get_device_name(i), "free_gb": free / GB,
                         "total_gb": total / GB, "capability": list(torch.cuda.get_device_capability(i))})
    flash = {name: _version(dist_name) if importlib.util.find_spec(module) else None
             for name, module, dist_name in (("flash-attn 2", "flash_attn", "flash-attn"),
                                             ("flash-attn 3", "flash_attn_interface", "flash-attn-3"))}
    disks = {}
    for key in ("ckpt_dir", "output_dir"):
        where = _existing(Path(getattr(cfg, key)))
        disks[key] = {"path": str(getattr(cfg, key)), "free_gb": shutil.disk_usage(where).free / GB}
    nccl = None
    if torch.cuda.is_available() and dist.is_nccl_available():
        nccl = ".".join(map(str, torch.cuda.nccl.version()))
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "gpus": gpus, "nccl": nccl,
            "gloo": dist.is_gloo_available(), "flash_attn": flash, "cpu_cores": os.cpu_count(),
            "host_memory_free_gb": free_device_memory(torch.device("cpu")) / GB, "disk": disks,
            "checkpoints": checkpoint_files(cfg)}


def checkpoint_files(cfg) -> dict[str, bool]:
    from ovi.model.configs import RANDOM_ARCHITECTURES
    from ovi.specs import FP8_CHECKPOINT_FILE, FUSION_DIR, MMAUDIO_VAE_FILE, MMAUDIO_VOCODER_FILE, MODEL_SPECS, T5_DIR
    from ovi.specs import T5_FILE, WAN_VAE_FILE
    root = Path(cfg.ckpt_dir)
    files = {f"{FUSION_DIR}/{MODEL_SPECS[cfg.model_name].checkpoint_file}": True, f"{T5_DIR}/{T5_FILE}": True}
    if cfg.fp8:
        files[f"{FUSION_DIR}/{FP8_CHECKPOINT_FILE}"] = True
    if cfg.model not in RANDOM_ARCHITECTURES:
        files.update({WAN_VAE_FILE: True, MMAUDIO_VAE_FILE: True, MMAUDIO_VOCODER_FILE: True})
    return {name: (root / name).is_file() for name in files}


def print_machine(facts: dict) -> None:
    print("This machine")
    print(f"  python {facts['python']}, torch {facts['torch']}, CUDA "
          f"{facts['cuda'] or 'none (CPU build)'}{'' if facts['cuda_available'] else ', no GPU visible'}")
    for gpu in facts["gpus"]:
        print(f"  GPU {gpu['index']}: {gpu['name']} (sm {gpu['capability'][0]}{gpu['capability'][1]}), "
              f"{gpu['free_gb']:.1f} of {gpu['total_gb']:.1f} GB free")
    print(f"  collectives: nccl {facts['nccl'] or 'not available'}, gloo {'yes' if facts['gloo'] else 'no'}")
    flash = ", ".join(f"{k} {v or 'not installed'}" for k, v in facts["flash_attn"].items())
    print(f"  attention: {flash} (SDPA otherwise)")
    print(f"  CPU: {facts['cpu_cores']} cores, {facts['host_memory_free_gb']:.1f} GB memory available")
    for key, disk in facts["disk"].items():
        print(f"  disk: {disk['free_gb']:.1f} GB free at {key} {disk['path']}")
    missing = [name for name, ok in facts["checkpoints"].items() if not ok]
    print(f"  checkpoints: {'all found' if not missing else 'missing ' + ', '.join(missing)}")


# ---- settings that fit -----------------------------------------------------------------------------
def settings_for(gpus: int) -> list:
    """Every single-node setting on `gpus` GPUs (cfg 1): sp x replicas = gpus, each strategy, offloads, fp8,
    as (ParallelDims, {cpu_offload, fp8})."""
    from ovi.parallel.dims import ParallelDims
    out = []
    for sp in (d for d in range(1, gpus + 1) if gpus % d == 0 and HEADS % d == 0):
        replicas = gpus // sp
        for choice in STRATEGY_CHOICES:
            strategy, _, offload = choice.partition("+")
            if strategy == "NO_SHARD" and replicas > 1:
                continue  # replicas exist only to hold shards
            for shard_text in (False, True) if strategy != "NO_SHARD" else (False,):
                dims = ParallelDims(world_size=gpus, sp=sp, fsdp=1 if strategy == "NO_SHARD" else gpus,
                                    fsdp_strategy=strategy, fsdp_offload=bool(offload), shard_text=shard_text)
                for cpu_offload in (False, True):
                    for fp8 in (False, True):
                        out.append((dims, {"cpu_offload": cpu_offload, "fp8": fp8}))
    return out


def configured_setting(cfg, gpus: int):
    """The setting `cfg` asks for on `gpus` GPUs, as (ParallelDims, {cpu_offload, fp8}) (None when its
    degrees do not fit that many); an `auto` strategy is shown as NO_SHARD (FULL_SHARD with replicas)."""
    from ovi.errors import ConfigError
    from ovi.parallel.dims import ParallelDims
    try:
        dims = ParallelDims.from_config(cfg, gpus)
    except ConfigError:
        return None
    if dims.fsdp_strategy == "auto":
        dims = dims.with_fsdp("NO_SHARD" if dims.per_cfg == dims.sp else "FULL_SHARD", dims.fsdp_offload)
    return dims, {"cpu_offload": cfg.cpu_offload, "fp8": cfg.fp8}


def plan_rows(config_name: str, gpus: int, memory_gb: float) -> list[dict]:
    """One row per setting of `config_name` on gpus x memory_gb (and one for the config as written,
    `configured`): peak, fits, relative speed."""
    import torch

    from ovi.config import load_config
    from ovi.parallel.dims import ParallelDims
    from ovi.parallel.memory import GB, HEADROOM, estimate, param_layout, storage_for
    from ovi.parallel.speed import gpu_profile, step_seconds
    from ovi.pipeline.footprint import workload
    cfg = load_config(config_name)
    load = workload(cfg, torch.bfloat16)
    profile = gpu_profile(memory_gb)
    baseline = step_seconds(cfg.model, load, ParallelDims(world_size=1), profile, cfg.sample_steps)
    configured = configured_setting(cfg, gpus)
    rows = []
    for setting in settings_for(gpus) + ([configured] if configured is not None else []):
        dims, options = setting
        est = estimate(cfg.model, load, dims, **options)
        # fsdp offload copies each rank's shards from host memory for every forward (SHARD_GRAD_OP: once per clip)
        shards = param_layout(cfg.model, storage_for(options["fp8"], torch.bfloat16), torch.bfloat16).total / dims.fsdp
        copies = 0 if not dims.fsdp_offload else shards * (2 / dims.cfg if dims.fsdp_strategy != "SHARD_GRAD_OP"
                                                             else 1 / cfg.sample_steps)
        rows.append({"doctor": "setting", "config": config_name, "model_name": cfg.model_name, "gpus": gpus,
                     "gpu_memory_gb": memory_gb, "gpu_profile": profile.name, "label": est.label(),
                     "sp": dims.sp, "strategy": dims.fsdp_strategy or "NO_SHARD", "fsdp": dims.fsdp,
                     "fsdp_cpu_offload": dims.fsdp_offload, "shard_text_model": dims.shard_text,
                     "cpu_offload": options["cpu_offload"], "fp8": options["fp8"],
                     "peak_gb": est.peak / GB, "phases_gb": {k: v / GB for k, v in est.phases.items()},
                     "fits": est.peak <= HEADROOM * memory_gb * GB, "configured": setting is configured,
                     "offload_bytes_per_step": int(copies),
                     "relative_speed": baseline / step_seconds(cfg.model, load, dims, profile, cfg.sample_steps,
                                                               **options)})
    return rows


def _flags(row: dict) -> str:
    parts = [f"sp {row['sp']}", row["strategy"].lower().replace("_", "-")]
    parts += ["fsdp-offload"] * row["fsdp_cpu_offload"] + ["shard-text"] * row["shard_text_model"]
    parts += ["cpu_offload"] * row["cpu_offload"] + ["fp8"] * row["fp8"]
    return ", ".join(parts)


def _speed(row: dict) -> str:
    """The relative speed, with the bytes fsdp offload copies over the host link per step beside it (the
    speed model counts them as hidden behind compute when the link keeps up: not measured)."""
    copies = row.get("offload_bytes_per_step", 0)
    return f"{row['relative_speed']:.2f}x" + (f" (copies {copies / 1e9:.1f} GB/step)" if copies else "")


def print_table(rows: list[dict], show_all: bool) -> None:
    print()
    print("| model | GPUs | setting (sp, fsdp strategy, offloads, text sharding, fp8) | peak / GPU | speed vs 1 GPU |")
    print("|---|---|---|---|---|")
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model_name"], row["gpus"], row["gpu_memory_gb"]), []).append(row)
    for (model, gpus, memory), group in groups.items():
        machine = f"{gpus}x{memory:g} GB"
        for row in (r for r in group if r["configured"]):
            verdict = "fits" if row["fits"] else "does NOT fit"
            print(f"| {model} | {machine} | {row['config']} as written: {_flags(row)} ({verdict}) | "
                  f"{row['peak_gb']:.1f} GB | {_speed(row)} |")
        group = [r for r in group if not r["configured"]]
        # fastest first; among equals, full precision before fp8, then the smaller peak
        fits = sorted((r for r in group if r["fits"]),
                      key=lambda r: (-round(r["relative_speed"], 2), r["fp8"], r["fsdp_cpu_offload"] + r["cpu_offload"],
                                     r["shard_text_model"], r["peak_gb"]))
        if not fits:
            best = min(group, key=lambda r: r["peak_gb"])
            print(f"| {model} | {machine} | nothing fits; smallest: {_flags(best)} | {best['peak_gb']:.1f} GB | - |")
            continue
        shown = fits if show_all else fits[:SHOWN]
        for row in shown:
            print(f"| {model} | {machine} | {_flags(row)} | {row['peak_gb']:.1f} GB | {_speed(row)} |")
        if len(fits) > len(shown):
            print(f"| {model} | {machine} | ... {len(fits) - len(shown)} more fit (--all) | | |")


def print_footnote() -> None:
    from ovi.parallel.memory import HEADROOM
    from ovi.parallel.speed import NVLINK_CARD, PCIE_CARD
    print(f"\nEstimates (ovi.parallel.memory), not measurements: exact parameter bytes (meta device) + the block "
          f"activation model; a setting fits when its peak is under {HEADROOM:.0%} of the GPU. The codecs' decode "
          f"working memory is a rough guess. Speed: upstream's measured SP scaling, FSDP gathers that prefetch "
          f"cannot hide and per-clip module moves, on '{PCIE_CARD.name}' (<= 48 GB) or '{NVLINK_CARD.name}' "
          f"spec figures. None of this has been checked on a GPU yet (experiments/gpu_check.py does).")


def print_memory_profiles(configs, gpu_memory: float, host_memory: float | None, as_json: bool) -> None:
    """The memory profiles and FSDP offload on one GPU, costed alike (ovi.pipeline.memory_profiles.profile_plan)."""
    from ovi.config import load_config
    from ovi.pipeline.memory_profiles import profile_plan
    rows = [row for name in configs for row in profile_plan(load_config(name), gpu_memory, host_memory)]
    if as_json:
        for row in rows:
            print(json.dumps(row, sort_keys=True))
        return
    print(f"\n| model | memory_profile / FSDP offload (1x{gpu_memory:g} GB) | blocks on GPU | weights | peak GPU | "
          "host needed | moved / step | s / step (copies) | fits |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        blocks = f"{r['blocks'] if r['blocks_on_device'] is None else r['blocks_on_device']}/{r['blocks']}"
        weights = r["quantize"] if r["doctor"] == "memory_profile" else ("fp8" if r["fp8"] else "as stored")
        print(f"| {r['model_name']} | {r['profile']} | {blocks} | {weights} | {r['peak_gb']:.1f} GB | "
              f"{r['host_gb']:.1f} GB | {r['bytes_moved_per_step'] / 1e9:.1f} GB | {r['step_seconds']:.1f} "
              f"({r['transfer_seconds']:.1f}) | {'yes' if r['fits'] else 'no'} |")
    for name in configs:
        model = load_config(name).model_name
        fit = next((r for r in rows if r["model_name"] == model and r["doctor"] == "memory_profile" and r["fits"]),
                   None)
        print(f"{name}: " + (f"memory_profile: {fit['profile']} fits (the least saving one that does)" if fit
                             else "no memory profile fits this GPU"))
    print("fsdp_offload = use_fsdp FULL_SHARD + fsdp_cpu_offload on one rank (+shard_text: shard_text_model "
          "too): every unit is copied from pinned host memory for every forward. s / step = max(compute, "
          "copies) at the spec-sheet rates: an ideal-overlap bound, not measured.")


def measure_cpu(as_json: bool) -> list[dict]:
    """tiny and mid on this CPU: measured peak per rank / the memory model's estimate."""
    import tempfile

    from ovi.bench.fsdp import measure
    from ovi.pipeline.random_checkpoint import make_random_checkpoint
    root = Path(tempfile.mkdtemp(prefix="ovi-doctor-"))
    records = []
    for arch in ("tiny", "mid"):
        make_random_checkpoint(root / arch, arch)
        for world, strategy in ((1, "NO_SHARD"), (2, "FULL_SHARD")):
            record = measure(arch, world, strategy, "sp", 2, root / arch)
            record.pop("latents")
            records.append({"doctor": "measured", **record})
            if not as_json:
                print(f"  {arch} {world} rank(s) {strategy}: measured {record['peak_bytes_per_rank'] / 1e6:.0f} MB, "
                      f"estimate {record['estimated_peak_bytes'] / 1e6:.0f} MB, "
                      f"ratio {record['measured_over_estimate']:.2f}")
    return records


def run_doctor(args) -> int:
    from ovi.config import load_config
    from ovi.errors import InputError
    if (args.gpus is None) != (args.gpu_memory is None):
        raise InputError("give --gpus and --gpu-memory together (e.g. --gpus 4 --gpu-memory 24)")
    if args.gpus is not None and (args.gpus < 1 or args.gpu_memory <= 0):
        raise InputError("--gpus must be at least 1 and --gpu-memory a positive number of GB")
    if args.queue:  # first: a bad queue URL is one clear line (exit 2) before anything else prints
        from ovi.queue.check import check_queue, format_queue_report
        report = check_queue(args.queue)
        print(json.dumps({"doctor": "queue", **report}, sort_keys=True) if args.json
              else format_queue_report(report))
    cfg = load_config(args.config or REAL_CONFIGS[0])
    facts = machine_facts(cfg)
    profiles = [(args.gpus, args.gpu_memory)] if args.gpus else list(PROFILES)
    if args.gpus is None and facts["gpus"]:
        profiles.append((len(facts["gpus"]), min(g["free_gb"] for g in facts["gpus"])))
    rows = [row for name in ([args.config] if args.config else REAL_CONFIGS)
            for gpus, memory in profiles for row in plan_rows(name, gpus, memory)]
    if args.json:
        print(json.dumps({"doctor": "machine", **facts}, sort_keys=True))
        for row in rows:
            print(json.dumps(row, sort_keys=True))
    else:
        print_machine(facts)
        print_table(rows, args.all)
        print_footnote()
    if args.gpus == 1:  # one GPU: the memory profiles (ovi.pipeline.memory_profiles)
        print_memory_profiles([args.config] if args.config else REAL_CONFIGS, args.gpu_memory, args.host_memory,
                              args.json)
    if args.measure:
        if not args.json:
            print("\nMeasured on this CPU (one clip, 2 steps, gloo ranks; peak = torch's allocator peak from "
                  "torch.profiler's allocation events, as `ovi bench fsdp` measures it)")
        for record in measure_cpu(args.json):
            if args.json:
                print(json.dumps(record, sort_keys=True))
    return 0
