"""Start-up of the `metalchain` command: wall time of a few commands that do little else,
median of ``--repeat`` runs each (interpreter start, imports, click, opening the site).

Usage (from the repository; a throw-away site is made with `metalchain init`):
    .venv/bin/python bench/startup.py [--repeat 9] [--json FILE]
    .venv/bin/python -X importtime -c "import orchestrate.commands.apply_cmd" 2>&1 \
        | sort -t'|' -k2 -n | tail

``--cli MODULE`` times another copy of the CLI module (e.g. an older orchestrate/cli.py copied
into the repository as cli_old.py) in the same run, interleaved, for a before/after ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METALCHAIN = ROOT / ".venv" / "bin" / "metalchain"


def commands(site: Path) -> dict[str, list[str]]:
    return {"--version": ["--version"],
            "inventory list": ["--site", str(site), "inventory", "list"],
            "apply --help": ["apply", "--help"]}


def once(module: str, args: list[str]) -> float:
    code = f"import sys; sys.argv = ['metalchain', *{args!r}]; import {module} as m; " \
           "sys.exit(m.main())"
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                       timeout=120, check=False)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{module} {' '.join(args)} exited {r.returncode}: "
                         f"{r.stderr.decode()[-500:]}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--cli", action="append", default=[],
                    help="Another CLI module to time beside orchestrate.cli.")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    modules = ["orchestrate.cli", *args.cli]
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        subprocess.run([str(METALCHAIN), "init", str(site)], check=True, timeout=120,
                       capture_output=True)
        figures: dict[str, dict[str, float]] = {}
        for name, argv in commands(site).items():
            runs: dict[str, list[float]] = {m: [] for m in modules}
            for _ in range(args.repeat):
                for m in modules:     # interleaved: a noisy moment hits both
                    runs[m].append(once(m, argv))
            figures[name] = {m: round(statistics.median(v), 3) for m, v in runs.items()}
    print(f"{'command':16s} " + " ".join(f"{m:>18s}" for m in modules))
    for name, row in figures.items():
        print(f"{name:16s} " + " ".join(f"{row[m]:>16.2f} s" for m in modules))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
