"""Medians, ratios against metalchain, and the printed table."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

TOOLS = ("metalchain", "ansible", "pyinfra")


def summarize(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One tool's timed runs of one workload: medians of wall, CPU and peak RSS."""
    walls = [r["wall_s"] for r in runs]
    return {
        "runs": len(runs),
        "wall_s": [round(w, 3) for w in walls],
        "wall_median_s": round(statistics.median(walls), 3),
        "cpu_median_s": round(statistics.median(r["cpu_s"] for r in runs), 3),
        "peak_rss_mb": round(max(r["peak_rss_mb"] for r in runs), 1),
        "sessions_per_host": _spread([r["sessions_per_host"] for r in runs]),
        "commands_per_host": _spread([r["commands_per_host"] for r in runs]),
        "changed": sorted({r["changed_total"] for r in runs}),
    }


def _spread(cells: Sequence[Mapping[str, int]]) -> dict[str, int]:
    return {"min": min(c["min"] for c in cells), "max": max(c["max"] for c in cells)}


def ratios(summary: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Each peer's median wall time over metalchain's (how many times faster metalchain is).

    >>> ratios({"metalchain": {"wall_median_s": 2.0}, "pyinfra": {"wall_median_s": 9.0}})
    {'pyinfra': 4.5}
    """
    base = summary["metalchain"]["wall_median_s"]
    return {t: round(s["wall_median_s"] / base, 2) for t, s in summary.items()
            if t != "metalchain" and base > 0}


def _cell(spread: Mapping[str, int]) -> str:
    return str(spread["min"]) if spread["min"] == spread["max"] else \
        f"{spread['min']}-{spread['max']}"


def render(results: Mapping[str, Mapping[str, Any]]) -> str:
    """The table: one row per (workload, tool); ``results[workload]["tools"][tool]`` are
    :func:`summarize` outputs, ``results[workload]["ratios"]`` :func:`ratios`."""
    head = ("workload", "tool", "wall med s", "x metalchain", "cpu s", "peak RSS MB",
            "ssh/host", "cmds/host", "changed")
    rows = [head]
    for wname, res in results.items():
        for tool in TOOLS:
            s = res["tools"].get(tool)
            if s is None:
                continue
            ratio = "1" if tool == "metalchain" else str(res["ratios"].get(tool, "-"))
            rows.append((wname, tool, f"{s['wall_median_s']:.2f}", ratio,
                         f"{s['cpu_median_s']:.2f}", f"{s['peak_rss_mb']:.0f}",
                         _cell(s["sessions_per_host"]), _cell(s["commands_per_host"]),
                         ",".join(str(c) for c in s["changed"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"
