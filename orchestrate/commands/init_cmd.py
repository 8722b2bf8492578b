"""`metalchain init DIR`: scaffold an example site."""

from __future__ import annotations

import os
import secrets as pysecrets
import sys
from importlib.resources import files
from pathlib import Path

import click

from inventory.errors import InputError
from orchestrate import output
from orchestrate.serve_unit import UNIT_NAME, installed_executable, render_serve_unit

SCAFFOLD_FILES = ("inventory.yml", "playbooks/site.yml")


def _secrets_text() -> str:
    lines = ["# Secrets of this site: name: value. Keep this file mode 0600; the inventory",
             "# refers to entries as {secret: NAME}. Values here are generated examples.",
             ""]
    for name in ("bmc-node1", "bmc-node2", "bmc-store1"):
        lines.append(f"{name}: {pysecrets.token_urlsafe(12)}")
    return "\n".join(lines) + "\n"


def write_secrets_file(path: Path, text: str) -> None:
    """Create ``path`` with mode 0600 from the first byte (never world-readable, even briefly)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


@click.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def init(directory: Path) -> None:
    """Create an example site in DIRECTORY (inventory, secrets, playbooks).

    \b
    Examples:
      metalchain init mysite
    """
    if directory.exists() and any(directory.iterdir()):
        raise InputError(f"{directory} exists and is not empty; choose a new directory")
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "playbooks").mkdir(exist_ok=True)
    (directory / "state").mkdir(exist_ok=True)
    scaffold = files("orchestrate") / "scaffold"
    for rel in SCAFFOLD_FILES:
        (directory / rel).write_text((scaffold / rel).read_text(encoding="utf-8"),
                                     encoding="utf-8")
    write_secrets_file(directory / "secrets.yml", _secrets_text())
    output.line(f"created site {directory}")
    output.line(f"  inventory: {directory / 'inventory.yml'}")
    output.line(f"  secrets:   {directory / 'secrets.yml'} (mode 0600)")
    output.line(f"  playbooks: {directory / 'playbooks'}")
    _write_serve_unit(directory)


def _write_serve_unit(directory: Path) -> None:
    """SITE/metalchain-serve.service: the systemd unit for this site and installation."""
    executable = installed_executable()
    if executable is None:
        output.line(f"  no {UNIT_NAME}: no metalchain executable found next to "
                   f"{sys.executable} or on PATH")
        return
    try:
        text = render_serve_unit(executable, Path(os.path.abspath(directory)))
    except InputError as exc:
        output.line(f"  no {UNIT_NAME}: {exc}")
        return
    (directory / UNIT_NAME).write_text(text, encoding="utf-8")
    output.line(f"  serve unit: {directory / UNIT_NAME} (install -m 0644 it into "
               "/etc/systemd/system/)")
