"""What every benchmark script shares: timed commands whose failures say what failed, and the
figures printed (and optionally written) as one JSON document."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from runtime import process
from runtime.jsondoc import json_text, write_json

METALCHAIN = str(Path(sys.executable).parent / "metalchain")
#: How much of a failed command's stdout and stderr an error shows.
OUTPUT_TAIL = 3000


class BenchError(RuntimeError):
    """A step of the benchmark failed; the message says which and shows the output's tail."""


def run(argv: list[str], timeout: float, cwd: Path | None = None
        ) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run ``argv``; return its wall time and the completed process, whatever its status."""
    start = time.monotonic()
    r = process.run(argv, timeout=timeout, cwd=cwd, check=False, error=BenchError)
    return time.monotonic() - start, r


def must(argv: list[str], timeout: float, cwd: Path | None = None
         ) -> tuple[float, subprocess.CompletedProcess[str]]:
    """:func:`run`, and a :class:`BenchError` with the output's tail if it exits non-zero."""
    took, r = run(argv, timeout, cwd)
    if r.returncode != 0:
        raise BenchError(f"failed ({r.returncode}): {' '.join(argv)}\n"
                         f"{r.stdout[-OUTPUT_TAIL:]}\n{r.stderr[-OUTPUT_TAIL:]}")
    return took, r


def report(figures: dict[str, Any], json_path: Path | None) -> None:
    """Print the figures as one JSON document; also write it to ``json_path`` if given."""
    sys.stdout.write(json_text(figures))
    if json_path is not None:
        write_json(json_path, figures)
