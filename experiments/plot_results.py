"""Plots from experiments/results/*.jsonl (never from numbers in code) -> experiments/plots/*.png.

    .venv/bin/python experiments/plot_results.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS, PLOTS = HERE / "results", HERE / "plots"


def load(name: str) -> list[dict]:
    path = RESULTS / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_sp(records: list[dict]) -> None:
    archs = sorted({r["config"] for r in records})
    fig, axes = plt.subplots(len(archs), 3, figsize=(13, 3.6 * len(archs)), squeeze=False)
    for row, arch in zip(axes, archs):
        recs = [r for r in records if r["config"] == arch]
        multi = [r for r in recs if r["sp"] > 1]
        labels = [f"{r['scheme']}\nsp={r['sp']}" for r in multi]
        row[0].bar(labels, [r["collectives_per_step"] for r in multi], color="tab:blue")
        row[0].set_title(f"{arch}: collectives / step (rank 0)")
        row[1].bar(labels, [r["bytes_per_step"] / 1e6 for r in multi], color="tab:orange")
        row[1].set_title(f"{arch}: MB sent / step (rank 0)")
        all_labels = [f"{r['scheme']}\nsp={r['sp']}" for r in recs]
        row[2].bar(all_labels, [r["step_seconds"] for r in recs], color="tab:green", label="step")
        row[2].bar(all_labels, [r["comm_seconds_per_step"] for r in recs], color="tab:red", label="in collectives")
        row[2].set_title(f"{arch}: seconds / step ({recs[0]['backend']}, {recs[0]['device']})")
        row[2].legend()
        for ax in row:
            ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(PLOTS / "sp.png", dpi=110)


def plot_pipeline(records: list[dict]) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0.0] * len(records)
    for stage in ("text", "denoise", "decode", "mux"):
        values = [r["stage_seconds"][stage] for r in records]
        ax.bar([f"run {r['run']}" for r in records], values, bottom=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_ylabel("seconds")
    ax.set_title(f"pipeline stages: {records[0]['config']} on {records[0]['device']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(PLOTS / "pipeline.png", dpi=110)


def plot_lora(records: list[dict]) -> None:
    ranks = sorted({r["rank"] for r in records})
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    width = 0.8 / max(1, len(ranks))
    for i, rank in enumerate(ranks):
        recs = [r for r in records if r["rank"] == rank]  # base, merged, unmerged of one run
        xs = [j + i * width for j in range(len(recs))]
        bars = axes[0].bar(xs, [r["step_seconds"] for r in recs], width, label=f"rank {rank}")
        for bar, r in zip(bars, recs):
            axes[0].annotate(f"{r['ratio_to_base']:.3f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                             ha="center", va="bottom", fontsize=7)
        axes[1].bar(xs, [r["switch_seconds"] for r in recs], width, label=f"rank {rank}")
    labels = [r["mode"] for r in records if r["rank"] == ranks[0]]
    for ax, title in zip(axes, ("seconds / denoising step (ratio to base)", "switch seconds")):
        ax.set_xticks([j + width * (len(ranks) - 1) / 2 for j in range(len(labels))], labels)
        ax.set_title(f"{records[0]['config']}: {title} ({records[0]['device']}, {records[0]['threads']} thread)", fontsize=9)
        ax.legend()
    fig.tight_layout()
    fig.savefig(PLOTS / "lora.png", dpi=110)


def plot_fsdp(records: list[dict]) -> None:
    """Per preset: parameter bytes held per rank, measured peak and the memory model's estimate, for
    each strategy and world size (layout sp: SP over all ranks; replicas: FSDP alone)."""
    archs = sorted({r["config"] for r in records})
    fig, axes = plt.subplots(len(archs), 1, figsize=(13, 4.2 * len(archs)), squeeze=False)
    for (ax,), arch in zip(axes, archs):
        recs = [r for r in records if r["config"] == arch]
        labels = [f"{r['strategy']} {r['world_size']}r {r['layout']}" for r in recs]
        x = range(len(recs))
        width = 0.27
        mb = lambda key: [r[key] / 1e6 for r in recs]  # noqa: E731
        ax.bar([i - width for i in x], mb("param_bytes_per_rank"), width, label="parameters held per rank")
        ax.bar(list(x), mb("peak_bytes_per_rank"), width, label="measured peak per rank (allocator)")
        ax.bar([i + width for i in x], mb("estimated_peak_bytes"), width, label="memory-model estimate")
        total = recs[0]["total_param_bytes"] / 1e6
        ax.axhline(total, color="grey", linestyle="--", linewidth=1, label=f"whole model ({total:.0f} MB)")
        ax.set_xticks(list(x), labels, fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("MB")
        ax.set_title(f"{arch}: memory per rank vs FSDP strategy and world size ({recs[0]['device']}, gloo)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / "fsdp.png", dpi=110)


def plot_memory(records: list[dict]) -> None:
    """Per memory profile: measured peak device bytes vs the memory model's estimate, and the bytes block
    swap moved per step (measured and estimated)."""
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4))
    labels = [f"{r['profile']}\n{r['quantize']}, {r['blocks_on_device'] if r['blocks_on_device'] is not None else 'all'}"
              f" on device" for r in records]
    x = range(len(records))
    width = 0.38
    ax.bar([i - width / 2 for i in x], [r["peak_device_bytes"] / 1e6 for r in records], width, label="measured peak")
    ax.bar([i + width / 2 for i in x], [r["estimated_peak_bytes"] / 1e6 for r in records], width, label="estimate")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("MB")
    ax.set_title(f"{records[0]['config']}: peak device memory per profile ({records[0]['device']})")
    ax.legend(fontsize=8)
    bx.bar([i - width / 2 for i in x], [r["bytes_moved_per_step"] / 1e6 for r in records], width, label="measured")
    bx.bar([i + width / 2 for i in x], [r["estimated_bytes_moved_per_step"] / 1e6 for r in records], width,
           label="estimate")
    bx.set_xticks(list(x), labels, fontsize=8)
    bx.set_ylabel("MB per denoising step")
    bx.set_title("host -> device bytes moved (block swap; FSDP offload)")
    bx.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(PLOTS / "memory.png", dpi=110)


def plot_quality(records: list[dict]) -> None:
    """Held-out accuracy and bounce sync of the trained tiny model against sampling steps, with the
    untrained floor and the training data's ceiling as reference lines."""
    trained = sorted((r for r in records if r["weights"] == "trained" and r.get("kind") is None),
                     key=lambda r: r["steps"])
    refs = {r["weights"]: r for r in records if r["weights"] in ("untrained", "data+codec")}
    fig, (acc, sync) = plt.subplots(1, 2, figsize=(11, 4))
    steps = [r["steps"] for r in trained]
    for key, color in (("color", "tab:red"), ("motion", "tab:blue"), ("pitch", "tab:green"), ("shape", "tab:orange")):
        if not all(f"{key}_accuracy" in r for r in trained):  # rows from before the shape score
            continue
        acc.plot(steps, [r[f"{key}_accuracy"] for r in trained], marker="o", color=color, label=f"{key} (trained)")
        if "untrained" in refs and f"{key}_accuracy" in refs["untrained"]:
            acc.axhline(refs["untrained"][f"{key}_accuracy"], color=color, ls=":", lw=1)
    acc.axhline(0.9, color="grey", ls="--", lw=1, label="goal 0.9")
    acc.set_xscale("log", base=2)
    acc.set_xticks(steps, [str(s) for s in steps])
    acc.set_ylim(-0.05, 1.05)
    acc.set_xlabel("sampling steps")
    acc.set_ylabel("held-out accuracy (dotted: untrained floor)")
    acc.legend(fontsize=8)
    sync.plot(steps, [r["sync_error_frames"] for r in trained], marker="o", color="tab:purple", label="trained")
    for name, ls in (("untrained", ":"), ("data+codec", "--")):
        if name in refs and refs[name]["sync_error_frames"] is not None:
            sync.axhline(refs[name]["sync_error_frames"], color="grey", ls=ls, lw=1, label=name)
    sync.set_xscale("log", base=2)
    sync.set_xticks(steps, [str(s) for s in steps])
    sync.set_xlabel("sampling steps")
    sync.set_ylabel("bounce: |contact - click| (frames)")
    sync.legend(fontsize=8)
    fig.suptitle(f"trained tiny Ovi, {trained[0]['held_out_combinations']} held-out combinations x "
                 f"{trained[0]['seeds']} seeds" if trained else "trained tiny Ovi")
    fig.tight_layout()
    fig.savefig(PLOTS / "quality.png", dpi=110)


def plot_lora_quality(distill: list[dict], training: list[dict]) -> None:
    """Left: the quality bench's accuracies for the full-step model and the 4-step variants (distilled
    Lightning LoRA or not). Right: a new colour taught by a LoRA, before / after, on held-out prompts in
    that colour and on the bench's own held-out set (the colours the model knew)."""
    keys = ("color_accuracy", "motion_accuracy", "pitch_accuracy")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    panels = ((axes[0], [r for r in distill if r["phase"] == "eval"], lambda r: f"{r['variant']}\n{r['steps']} steps, latent RMS to\nthe full-step clip {r['video_latent_rms_to_full']:.3f}"),
              (axes[1], [r for r in training if r["phase"] in ("before", "after")], lambda r: f"{r['phase']}\n{r['set'].split(',')[0]}\nsync {r['sync_error_frames']:.2f} frames"))
    for ax, rows, label in panels:
        if not rows:
            ax.set_visible(False)
            continue
        width = 0.8 / len(keys)
        for i, key in enumerate(keys):
            xs = [j + (i - 1) * width for j in range(len(rows))]
            bars = ax.bar(xs, [r[key] for r in rows], width, label=key.replace("_", " "))
            for bar, r in zip(bars, rows):
                ax.annotate(f"{r[key]:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                            va="bottom", fontsize=6)
        ax.set_xticks(range(len(rows)), [label(r) for r in rows], fontsize=7)
        ax.set_ylim(0, 1.25)
        ax.legend(fontsize=7, loc="upper center", ncol=3)
    if distill:
        clips = distill[-1].get("n_clips")
        axes[0].set_title(f"distilled 4-step Lightning LoRA vs the full-step model ({clips} held-out clips each)", fontsize=9)
    if training:
        axes[1].set_title(f"a LoRA teaches a new {training[0]['attribute']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(PLOTS / "lora_quality.png", dpi=110)


def plot_long(records: list[dict]) -> None:
    """`ovi bench long`: direction per window (one line per method and window count), and the seam figures."""
    records = [r for r in records if r.get("kind") != "extend_turn"]
    methods = list(dict.fromkeys(r["method"] for r in records))
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for r in records:
        style = "-" if r["windows"] == max(x["windows"] for x in records) else "--"
        axes[0].plot(range(1, r["windows"] + 1), r["direction_accuracy_per_window"], style, marker="o",
                     label=f"{r['method']} {r['windows']}w")
    axes[0].set(title="direction accuracy per window", xlabel="window", ylim=(-0.05, 1.05))
    axes[0].legend(fontsize=7)
    counts = sorted({r["windows"] for r in records})
    width = 0.8 / len(methods)
    for panel, key, title in ((1, "seam_jump_ratio", "seam jump / median step (1 = no seam)"),
                              (2, "audio_seam_db", "audio level step at seams (dB)"),
                              (3, "bounce_sync_frames", "bounce contact-click offset (frames)")):
        for i, method in enumerate(methods):
            values = [next((r[key] for r in records if r["method"] == method and r["windows"] == n), None) or 0
                      for n in counts]
            axes[panel].bar([c + i * width for c in range(len(counts))], values, width, label=method)
        if key == "audio_seam_db":
            within = [r["audio_step_db_within"] for r in records if r.get("audio_step_db_within") is not None]
            if within:
                axes[panel].axhline(sum(within) / len(within), color="k", ls=":", label="within a window")
        axes[panel].set_xticks([c + 0.4 - width / 2 for c in range(len(counts))], [f"{n} windows" for n in counts])
        axes[panel].set_title(title)
        axes[panel].legend(fontsize=7)
    fig.suptitle(f"long clips, trained tiny model, {records[0]['held_out_combinations']} held-out prompts "
                 f"({records[0]['steps']} steps)")
    fig.tight_layout()
    fig.savefig(PLOTS / "long.png", dpi=110)


def plot_cpu_goals(records: list[dict]) -> None:
    """Goal (b): each run's per-turn FLOP utilisation in CPU time (step FLOP/s / interleaved matmul peak),
    eager and compiled, against the 0.75 target."""
    fig, ax = plt.subplots(figsize=(7, 3.8))
    labels, series = [], []
    for r in (r for r in records if "cpu_utilisation_per_turn" in r):
        tag = r["label"].split(":")[0].split(" (")[0] or r["commit"]  # e.g. "before", "this branch"
        labels.append(f"{tag}\neager")
        series.append(r["cpu_utilisation_per_turn"])
        if r.get("compiled_cpu_utilisation_per_turn"):
            labels.append(f"{tag}\ncompiled")
            series.append(r["compiled_cpu_utilisation_per_turn"])
    ax.boxplot(series)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.axhline(records[-1]["target"], color="tab:red", linestyle="--", label=f"goal {records[-1]['target']}")
    ax.set_ylabel("achieved FLOP/s / matmul peak (CPU time)")
    ax.set_title(f"mid, one denoising step, {records[-1]['threads']} thread, interleaved turns", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(PLOTS / "cpu_goals.png", dpi=110)


def main() -> int:
    PLOTS.mkdir(parents=True, exist_ok=True)
    for name, plot in (("sp", plot_sp), ("pipeline", plot_pipeline), ("fsdp", plot_fsdp), ("quality", plot_quality),
                       ("lora", plot_lora), ("memory", plot_memory), ("long", plot_long),
                       ("cpu_goals", plot_cpu_goals)):
        records = load(name)
        if records:
            plot(records)
            print(f"wrote {PLOTS / (name + '.png')} from {len(records)} records")
    distill, training = load("lightning_distill"), load("lora_training")
    if distill or training:
        plot_lora_quality(distill, training)
        print(f"wrote {PLOTS / 'lora_quality.png'} from {len(distill) + len(training)} records")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
