"""Shared fixtures: a site on disk and an in-process CLI runner."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from orchestrate.cli import main


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run `metalchain ARGS` in-process through the same entry point as the console script."""

    def _run(*args: str) -> CliResult:
        code = main(list(args))
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return _run


def write_site(root: Path, inventory: str | bytes, secrets: str = "bmc-ok: pw\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    inv = root / "inventory.yml"
    if isinstance(inventory, bytes):
        inv.write_bytes(inventory)
    else:
        inv.write_text(inventory, encoding="utf-8")
    sec = root / "secrets.yml"
    sec.write_text(secrets, encoding="utf-8")
    os.chmod(sec, 0o600)
    return root
