"""Plots of the speed results (from experiments/results/*.jsonl, never from numbers in code):

- step_cache_pareto.png: forwards saved vs colour / motion / pitch accuracy, bounce sync error and latent
  distance to the uncached run, one line per method, each point labelled with its threshold;
- compile.png: steady-state CPU seconds per step, eager vs compiled vs compiled + TeaCache, and the
  compile seconds, per config.

    .venv/bin/python experiments/plot_step_cache.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS, PLOTS = HERE / "results", HERE / "plots"
PANELS = (("color_accuracy", "colour accuracy"), ("motion_accuracy", "motion accuracy"),
          ("pitch_accuracy", "pitch accuracy"), ("sync_error_frames", "bounce sync error (frames)"),
          ("video_latent_distance", "video latent distance (rel. L2)"),
          ("audio_latent_distance", "audio latent distance (rel. L2)"))


def load(name: str) -> list[dict]:
    path = RESULTS / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def plot_pareto(rows: list[dict]) -> None:
    ref = next(r for r in rows if r["method"] == "none")
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (key, title) in zip(axes.flat, PANELS):
        for method in ("teacache", "magcache", "fbcache"):
            pts = sorted((r["forwards_saved"], r[key], r["threshold"]) for r in rows if r["method"] == method)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=method)
            for x, y, th in pts:
                ax.annotate(f"{th:g}", (x, y), fontsize=7, xytext=(2, 3), textcoords="offset points")
        ax.plot([0], [ref[key]], "k*", markersize=12, label="no cache")
        if key.endswith("accuracy"):
            ax.axhline(0.95 * ref[key], color="grey", ls="--", lw=0.8, label="0.95 x uncached")
            ax.set_ylim(-0.05, 1.05)
        if key == "sync_error_frames":
            ax.axhline(1.0, color="grey", ls="--", lw=0.8, label="1 frame")
        ax.axvline(0.30, color="tab:red", ls=":", lw=0.8)
        ax.set_xlabel("forwards saved (fraction of 16 per clip)")
        ax.set_title(title)
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"Step caching on the trained default ({ref['steps']} steps, {ref['n_clips']} held-out clips; "
                 "labels: threshold; red: the 30% goal)")
    fig.tight_layout()
    fig.savefig(PLOTS / "step_cache_pareto.png", dpi=110)
    plt.close(fig)


def plot_compile(rows: list[dict]) -> None:
    configs = list(dict.fromkeys(r["config"] for r in rows))
    fig, axes = plt.subplots(1, len(configs), figsize=(6 * len(configs), 4), squeeze=False)
    for ax, config in zip(axes[0], configs):
        recs = [r for r in rows if r["config"] == config]
        bars = ax.bar([r["mode"] for r in recs], [r["step_cpu_seconds"] for r in recs],
                      color=["tab:grey", "tab:blue", "tab:green"][: len(recs)])
        for bar, r in zip(bars, recs):
            note = f"compile {r['compile_seconds']:.0f} s" if r["compile_seconds"] else ""
            ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", fontsize=8,
                        xytext=(0, 3), textcoords="offset points")
        ax.set_title(f"{config}: CPU s / step (1 thread)")
    fig.tight_layout()
    fig.savefig(PLOTS / "compile.png", dpi=110)
    plt.close(fig)


def main():
    PLOTS.mkdir(exist_ok=True)
    if rows := load("step_cache_sweep"):
        plot_pareto(rows)
    if rows := load("compile"):
        plot_compile(rows)


if __name__ == "__main__":
    main()
