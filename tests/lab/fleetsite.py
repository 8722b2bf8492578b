"""The metalchain CLI from lab tests, and a lab site with fleet hosts that is torn down also
when a test fails."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from orchestrate.cli import Context
from tests.lab.sshd import METALCHAIN


def metalchain(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """Run the metalchain console script with ``args`` (``timeout``: a ceiling for a hung run)."""
    return subprocess.run([METALCHAIN, *args], capture_output=True, text=True, timeout=timeout)


def invoke(site: Path, command: Any, *args: str) -> tuple[int, str]:
    """A click command of configure/ or orchestrate/commands, in process (CliRunner); its
    exit code and output. An exception other than SystemExit is raised again."""
    result = CliRunner().invoke(command, list(args), obj=Context(site_option=str(site),
                                                                   debug=False))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@contextlib.contextmanager
def fleet_site(root: Path, fleet: int, subnet: str, *, timeout: float = 600) -> Iterator[Path]:
    """`metalchain lab up` at ``root`` with ``fleet`` hosts (no nodes) on ``subnet``; on exit
    the site's mirror server is stopped (if a mirror was built) and the lab purged."""
    try:
        r = metalchain("lab", "up", "--dir", str(root), "--nodes", "0", "--fleet", str(fleet),
                       "--subnet", subnet, timeout=timeout)
        assert r.returncode == 0, r.stderr
        yield root
    finally:
        try:
            if (root / "mirror").is_dir():
                metalchain("--site", str(root), "mirror", "stop", timeout=timeout)
        finally:
            r = metalchain("lab", "down", "--purge", "--dir", str(root), timeout=timeout)
            assert r.returncode == 0, r.stderr
