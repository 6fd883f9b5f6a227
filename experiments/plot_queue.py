"""Plot experiments/results/queue.jsonl (`ovi bench queue`): submits/s and claim-to-start latency per
store and runner count -> experiments/plots/queue.png.

    .venv/bin/python experiments/run_bench.py queue && .venv/bin/python experiments/plot_queue.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent


def main() -> None:
    records = [json.loads(line) for line in (HERE / "results" / "queue.jsonl").read_text().splitlines()
               if line.strip()]
    configs = list(dict.fromkeys(r["config"] for r in records))
    counts = sorted({r.get("runners", 1) for r in records})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / len(counts)
    for k, n in enumerate(counts):
        rows = {r["config"]: r for r in records if r.get("runners", 1) == n}
        xs = [i + k * width for i in range(len(configs))]
        ax1.bar(xs, [rows[c]["claims_per_second"] if c in rows and "claims_per_second" in rows[c] else 0
                     for c in configs], width, label=f"{n} runner(s)")
        ax2.bar(xs, [rows[c]["claim_latency_seconds"] * 1e3 if c in rows else 0 for c in configs], width,
                label=f"{n} runner(s)")
    submits = {r["config"]: r["submits_per_second"] for r in records if r.get("runners", 1) == counts[0]}
    for ax in (ax1, ax2):
        ax.set_xticks([i + width * (len(counts) - 1) / 2 for i in range(len(configs))])
        ax.set_xticklabels([f"{c}\n{submits.get(c, 0):,.0f} submits/s" for c in configs], fontsize=8)
        ax.legend()
    ax1.set_ylabel("jobs claimed + finished per second (all runners)")
    ax2.set_ylabel("median claim-to-start latency (ms)")
    fig.suptitle(f"ovi bench queue ({records[0].get('cpus')} CPUs, {records[0].get('host', '')})")
    fig.tight_layout()
    out = HERE / "plots" / "queue.png"
    fig.savefig(out, dpi=110)
    print(out)


if __name__ == "__main__":
    main()
