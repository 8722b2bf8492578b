"""`make test`'s two streams (tests/streams.py) together select exactly the tests one pytest
session of README's marker expression selects: none lost, none twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests import streams

pytestmark = pytest.mark.lab


def _collected(args: list[str]) -> list[str]:
    r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args],
                       cwd=streams.ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return [line for line in r.stdout.splitlines() if "::" in line]


def test_the_streams_together_are_the_whole_suite_once(tmp_path: Path):
    whole = _collected(["-m", streams.MARKERS, "-p", "no:cacheprovider", "tests"])
    parts = [_collected(s.args) for s in streams.streams(tmp_path, [])]
    assert all(parts), [len(p) for p in parts]
    together = [t for part in parts for t in part]
    assert len(together) == len(set(together))
    assert sorted(together) == sorted(whole)
