"""The heal-time figure of bench/heal_latency.py: fault -> healed per path and interval
setting, a box of the trials with the median and p95 marked (log scale: 0.5 s to minutes).

Runs in the benchmark's own venv (matplotlib; heal_latency.py --plot makes it under /tmp),
never the project's: ``VENV/bin/python bench/heal_plot.py FIGURES.json OUT.png``.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(1, math.ceil(0.95 * len(ordered))) - 1]


def main(src: Path, out: Path) -> None:
    doc = json.loads(src.read_text(encoding="utf-8"))
    rows = [(row["label"], row["fault_to_healed_values"]) for row in doc["heal_rows"]]
    if not rows:
        raise SystemExit(f"{src}: no heal_rows with per-trial values")
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    ax.boxplot([v for _, v in rows], vert=True, whis=(0, 100), widths=0.5)
    for i, (_label, values) in enumerate(rows, start=1):
        med, top = statistics.median(values), p95(values)
        ax.scatter([i] * len(values), values, s=8, alpha=0.4, color="tab:blue")
        ax.scatter([i], [top], marker="v", color="tab:red", zorder=3,
                   label="p95" if i == 1 else None)
        ax.annotate(f"median {med:.1f} s\np95 {top:.1f} s", (i, top), textcoords="offset points",
                    xytext=(0, 8), ha="center", fontsize=8)
    ax.set_xticks(range(1, len(rows) + 1), [label for label, _ in rows], fontsize=8)
    ax.set_yscale("log")
    # room above the highest label (log scale)
    ax.set_ylim(top=max(max(v) for _, v in rows) * 3)
    ax.set_ylabel("fault -> healed (s, log scale)")
    ax.set_title(f"restart_service, fault -> healed ({doc.get('trials')} trials each; "
                 f"{doc.get('machine', {}).get('date', '')})", fontsize=9)
    ax.grid(axis="y", which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: heal_plot.py FIGURES.json OUT.png")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
