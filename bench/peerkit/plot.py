"""PNG plots of bench/peers.py results (run with the bench's own venv, which has matplotlib).

    /tmp/mc-bench-plot/bin/python -m peerkit.plot --out DIR peers-10.json peers-50.json ...

Writes ``peers-wall-vs-hosts.png`` (median wall time against N, one panel per workload, one
line per tool; log scale) and, for the largest N, ``peers-wall-N.png`` (bars per workload).
Prints the paths it wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .table import TOOLS

COLORS = {"metalchain": "#1b9e77", "ansible": "#d95f02", "pyinfra": "#7570b3"}


def series(docs: list[dict]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """workload -> tool -> [(hosts, median wall s)], sorted by hosts."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for doc in docs:
        for wname, res in doc["results"].items():
            for tool, s in res["tools"].items():
                out.setdefault(wname, {}).setdefault(tool, []).append(
                    (int(doc["hosts"]), float(s["wall_median_s"])))
    for tools in out.values():
        for pts in tools.values():
            pts.sort()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("results", nargs="+", type=Path)
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = [json.loads(p.read_text(encoding="utf-8")) for p in args.results]
    args.out.mkdir(parents=True, exist_ok=True)
    data = series(docs)
    written = []
    fig, axes = plt.subplots(1, len(data), figsize=(4 * len(data), 3.6), squeeze=False)
    for ax, (wname, tools) in zip(axes[0], data.items(), strict=True):
        for tool in TOOLS:
            pts = tools.get(tool)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=tool,
                        color=COLORS[tool])
        ax.set_title(wname)
        ax.set_xlabel("hosts")
        ax.set_yscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("wall time, median (s)")
    axes[0][0].legend()
    fig.tight_layout()
    path = args.out / "peers-wall-vs-hosts.png"
    fig.savefig(path, dpi=110)
    written.append(path)
    biggest = max(docs, key=lambda d: d["hosts"])
    names = list(biggest["results"])
    fig, ax = plt.subplots(figsize=(1.8 * len(names) + 2, 3.6))
    width = 0.27
    for i, tool in enumerate(TOOLS):
        vals = [biggest["results"][w]["tools"].get(tool, {}).get("wall_median_s", 0)
                for w in names]
        ax.bar([x + (i - 1) * width for x in range(len(names))], vals, width, label=tool,
               color=COLORS[tool])
    ax.set_xticks(range(len(names)), names)
    ax.set_yscale("log")
    ax.set_ylabel("wall time, median (s)")
    ax.set_title(f"{biggest['hosts']} hosts")
    ax.legend()
    fig.tight_layout()
    path = args.out / f"peers-wall-{biggest['hosts']}.png"
    fig.savefig(path, dpi=110)
    written.append(path)
    print("\n".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
