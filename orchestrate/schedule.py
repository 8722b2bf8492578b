"""Scheduled runs (drift correction): one cron.d file, or one systemd timer, per schedule.

The schedule files are the single source of truth: ``schedule list`` reads them back, so a
schedule removed by hand is gone from the list too. A scheduled run is a ``metalchain run``: in
fix mode it takes the lease of each of its hosts (:mod:`orchestrate.leases`), so it never
changes a host another run is changing; it skips such a host, exits 1 and names the holder in
its log instead of piling up. A check-mode run takes no lease and changes nothing.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from inventory.errors import InputError
from orchestrate.cronspec import check_cron, every_to_cron
from runtime.atomicfile import write_atomic

CRON_DIR = Path("/etc/cron.d")
SYSTEMD_DIR = Path("/etc/systemd/system")
MARK = "# metalchain schedule"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


@dataclass(frozen=True)
class Schedule:
    name: str
    site: Path
    playbook: str
    mode: str            # "check" or "fix"
    when: str            # a 5-field cron expression, or a nickname such as @hourly
    extra: tuple[str, ...] = ()  # -e KEY=VALUE, passed through to `metalchain run`

    def argv(self, metalchain: str) -> list[str]:
        args = [metalchain, "--site", str(self.site), "run", self.playbook]
        if self.mode == "check":
            args.append("--check")
        for pair in self.extra:
            args += ["-e", pair]
        return args


def cron_expression(every: str | None, cron: str | None, *, uneven: bool = False) -> str:
    """``--every 15m|2h|1d`` or ``--cron 'M H DoM Mon DoW'`` -> a checked cron expression.

    An ``--every`` that cron can only approximate (``7m``: see :mod:`orchestrate.cronspec`)
    is refused with the explanation, unless ``uneven`` (then :func:`every_warning` says it).
    """
    if (every is None) == (cron is None):
        raise InputError("give exactly one of --every (e.g. 15m, 2h, 1d) or --cron")
    if cron is not None:
        return check_cron(cron)
    expression, why = every_to_cron(every or "")
    if why is not None and not uneven:
        raise InputError(f"--every {every}: {why}")
    return expression


def every_warning(every: str | None) -> str | None:
    """Why ``--every`` is approximate, or None (also None for ``--cron``)."""
    return None if every is None else every_to_cron(every)[1]


def check_extra(pairs: tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """``-e KEY=VALUE`` options of a schedule, kept as given (they are passed through to the
    scheduled ``metalchain run``, which reads them as ``run -e`` does)."""
    for pair in pairs:
        key, sep, _ = pair.partition("=")
        if not sep or not key:
            raise InputError(f"-e expects KEY=VALUE, got '{pair}'")
    return tuple(pairs)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise InputError(f"schedule name '{name}': use 1-40 lowercase letters, digits, -")
    return name


def cron_file(directory: Path, name: str) -> Path:
    return directory / f"metalchain-{name}"


def cron_command(argv: list[str]) -> str:
    """``argv`` as the command part of a cron line: each argument shell-quoted, then every
    ``%`` escaped as ``\\%`` (cron turns an unescaped ``%`` into a newline and feeds the rest
    to stdin; it drops the backslash of ``\\%`` before handing the line to ``/bin/sh``)."""
    for a in argv:
        if "\n" in a or "\\" in a:
            # a cron line ends at a newline, and a backslash before "%" is ambiguous.
            raise InputError(f"cannot schedule {a!r}: newlines and backslashes are not "
                             "allowed in a scheduled command's paths and -e values")
    return " ".join(shlex.quote(a) for a in argv).replace("%", "\\%")


def render_cron(s: Schedule, metalchain: str, log: Path) -> str:
    command = cron_command(s.argv(metalchain))
    logged = cron_command([str(log)])
    # The metadata line is a comment (cron does not interpret it); values are shell-quoted so
    # a site path with spaces reads back whole.
    meta = " ".join([MARK, *(f"{k}={shlex.quote(v)}" for k, v in (
        ("name", s.name), ("site", str(s.site)), ("playbook", s.playbook), ("mode", s.mode),
        *(("e", pair) for pair in s.extra)))])
    return (f"{meta}\n"
            "SHELL=/bin/sh\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n"
            f"{s.when} root {command} >> {logged} 2>&1\n")


def parse_cron(text: str) -> Schedule | None:
    """Read back a schedule file written by render_cron; None for anything else."""
    lines = text.splitlines()
    if not lines or not lines[0].startswith(MARK):
        return None
    try:
        parts = shlex.split(lines[0][len(MARK):])
    except ValueError:
        return None
    pairs = [part.split("=", 1) for part in parts if "=" in part]
    meta = {k: v for k, v in pairs if k != "e"}
    extra = tuple(v for k, v in pairs if k == "e")
    entry = next((ln for ln in lines[1:] if ln and not ln.startswith("#") and "=" not in
                  ln.split()[0]), None)
    if entry is None or not {"name", "site", "playbook", "mode"} <= set(meta):
        return None
    fields = entry.split()
    when = fields[0] if fields[0].startswith("@") else " ".join(fields[:5])
    return Schedule(name=meta["name"], site=Path(meta["site"]), playbook=meta["playbook"],
                    mode=meta["mode"], when=when, extra=extra)


def install(s: Schedule, directory: Path, metalchain: str, log: Path) -> Path:
    """Write the cron file atomically (cron reads whole files; never a half-written one)."""
    path = cron_file(directory, s.name)
    write_atomic(path, render_cron(s, metalchain, log))
    return path


def installed(directory: Path) -> list[Schedule]:
    out = []
    if directory.is_dir():
        for f in sorted(directory.glob("metalchain-*")):
            s = parse_cron(f.read_text(encoding="utf-8", errors="replace"))
            if s is not None:
                out.append(s)
    return out


def remove(directory: Path, name: str) -> None:
    path = cron_file(directory, check_name(name))
    if not path.exists() or parse_cron(path.read_text(encoding="utf-8")) is None:
        raise InputError(f"no metalchain schedule named '{name}' in {directory}")
    path.unlink()
