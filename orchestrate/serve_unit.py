"""The systemd unit that runs ``metalchain serve`` on a real controller.

The shipped unit (``orchestrate/scaffold/metalchain-serve.service``) names a default
installation (``/usr/local/bin/metalchain``) and site (``/etc/metalchain/site``);
:func:`render_serve_unit` puts a real one in their place, which ``metalchain init`` does
for the site it creates. Only the two lines that name them change: ``ExecStart=`` and
``ReadWritePaths=``; everything else (capabilities, sandboxing, signals) is the shipped text.

Example::

    text = render_serve_unit(Path("/opt/metalchain/bin/metalchain"), Path("/srv/site"))
    # ExecStart=/opt/metalchain/bin/metalchain --site /srv/site serve --no-images
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from importlib.resources import files
from pathlib import Path

from inventory.errors import InputError

UNIT_NAME = "metalchain-serve.service"
DEFAULT_EXECUTABLE = Path("/usr/local/bin/metalchain")
DEFAULT_SITE = Path("/etc/metalchain/site")
SERVE_ARGS = ("serve", "--no-images")

# What a path may hold to be written into a unit unambiguously: no quotes, backslashes,
# '$' (environment expansion in ExecStart=) or control characters. A space is quoted, a '%'
# (systemd's specifiers) doubled.
_UNIT_PATH = re.compile(r"^/[A-Za-z0-9/._+@:,=~% -]*$")


def shipped_unit() -> str:
    """The unit as shipped in the package."""
    return (files("orchestrate") / "scaffold" / UNIT_NAME).read_text(encoding="utf-8")


def unit_word(path: Path) -> str:
    """``path`` as one word of a unit file line (ExecStart=, ReadWritePaths=).

    >>> unit_word(Path("/srv/my site/100%"))
    '"/srv/my site/100%%"'
    """
    text = str(path)
    if not _UNIT_PATH.match(text):
        raise InputError(f"{text!r} cannot be written into a systemd unit: it must be an "
                         "absolute path of letters, digits, spaces and /._+@:,=~%- only")
    text = text.replace("%", "%%")
    return f'"{text}"' if " " in text else text


def render_serve_unit(executable: Path, site: Path, template: str | None = None) -> str:
    """The serve unit for ``site`` (absolute) run by ``executable`` (absolute)."""
    text = shipped_unit() if template is None else template
    exec_start = " ".join([unit_word(executable), "--site", unit_word(site), *SERVE_ARGS])
    out: list[str] = []
    seen = {"ExecStart": 0, "ReadWritePaths": 0}
    for line in text.splitlines(keepends=True):
        key = line.split("=", 1)[0]
        if key == "ExecStart":
            line = f"ExecStart={exec_start}\n"
        elif key == "ReadWritePaths":
            line = f"ReadWritePaths={unit_word(site)}\n"
        if key in seen:
            seen[key] += 1
        out.append(line)
    if seen != {"ExecStart": 1, "ReadWritePaths": 1}:
        raise InputError(f"the serve unit template must have one ExecStart= and one "
                         f"ReadWritePaths= line, not {seen}")
    return "".join(out)


def installed_executable() -> Path | None:
    """The ``metalchain`` of the running installation: next to this Python (a virtualenv's
    bin/), else the one on PATH. Never resolved through symlinks: a virtualenv's python is
    a symlink to the system's, whose directory holds no metalchain."""
    beside = Path(os.path.abspath(sys.executable)).parent / "metalchain"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    found = shutil.which("metalchain")
    return Path(os.path.abspath(found)) if found else None
