"""The shipped systemd unit for `metalchain serve` and the copy `metalchain init` writes."""

from __future__ import annotations

import shlex
import stat
from pathlib import Path

import pytest

from inventory.errors import InputError
from orchestrate.serve_unit import (
    DEFAULT_EXECUTABLE,
    DEFAULT_SITE,
    UNIT_NAME,
    render_serve_unit,
    shipped_unit,
    unit_word,
)

pytestmark = pytest.mark.unit

# What serve and its dnsmasq use (measured: docs/real-hardware.md, "The serve unit").
CAPABILITIES = {"CAP_NET_BIND_SERVICE", "CAP_NET_RAW", "CAP_NET_ADMIN", "CAP_SETUID",
                "CAP_SETGID", "CAP_CHOWN", "CAP_KILL"}


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (a key may repeat), as systemd reads a unit file: comments
    start with # or ;, a trailing backslash continues a line."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        logical.append(line)
    for line in logical:
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"a key before the first section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}: {values}"
    return values[0]


def test_shipped_unit_has_what_serve_relies_on():
    unit = parse_unit(shipped_unit())
    assert set(unit) == {"Unit", "Service", "Install"}
    assert "network-online.target" in one(unit, "Unit", "After").split()
    assert "network-online.target" in one(unit, "Unit", "Wants").split()
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv == [str(DEFAULT_EXECUTABLE), "--site", str(DEFAULT_SITE), "serve", "--no-images"]
    assert one(unit, "Service", "ReadWritePaths") == str(DEFAULT_SITE)
    # serve stops on SIGTERM and reloads on SIGHUP (orchestrate/commands/provision_cmd.py)
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Service", "KillMode") == "mixed"
    assert int(one(unit, "Service", "TimeoutStopSec")) >= 30
    assert one(unit, "Service", "Restart") == "on-failure"
    assert set(one(unit, "Service", "CapabilityBoundingSet").split()) == CAPABILITIES
    assert one(unit, "Service", "ProtectSystem") == "strict"
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert one(unit, "Service", "User") == "root"
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_render_replaces_only_the_executable_and_the_site():
    text = render_serve_unit(Path("/opt/mc/bin/metalchain"), Path("/srv/site-a"))
    unit, shipped = parse_unit(text), parse_unit(shipped_unit())
    assert shlex.split(one(unit, "Service", "ExecStart")) == [
        "/opt/mc/bin/metalchain", "--site", "/srv/site-a", "serve", "--no-images"]
    assert one(unit, "Service", "ReadWritePaths") == "/srv/site-a"
    for section, keys in shipped.items():
        for key, values in keys.items():
            if key not in ("ExecStart", "ReadWritePaths"):
                assert unit[section][key] == values, (section, key)


def test_a_site_path_with_a_space_and_a_percent_is_quoted_and_escaped():
    text = render_serve_unit(Path("/usr/bin/metalchain"), Path("/srv/my site/100%"))
    unit = parse_unit(text)
    assert one(unit, "Service", "ReadWritePaths") == '"/srv/my site/100%%"'
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert argv[1:3] == ["--site", "/srv/my site/100%%"]     # %% is systemd's literal %


@pytest.mark.parametrize("path", ["relative/site", "/srv/a$b", '/srv/"q"', "/srv/a\\b",
                                  "/srv/a\nb", "/srv/ä"])
def test_paths_a_unit_cannot_hold_are_refused(path):
    with pytest.raises(InputError, match="cannot be written into a systemd unit"):
        unit_word(Path(path))


def test_a_template_without_its_lines_is_refused():
    with pytest.raises(InputError, match="one ExecStart="):
        render_serve_unit(Path("/usr/bin/metalchain"), Path("/srv/s"),
                          template="[Service]\nExecStart=/bin/true\n")


def test_init_writes_the_unit_for_the_new_site(tmp_path, run_cli):
    site = tmp_path / "site"
    r = run_cli("init", str(site))
    assert r.code == 0, r.err
    path = site / UNIT_NAME
    assert f"serve unit: {path}" in r.out
    assert stat.S_IMODE(path.stat().st_mode) & 0o022 == 0
    unit = parse_unit(path.read_text(encoding="utf-8"))
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert Path(argv[0]).is_absolute() and Path(argv[0]).name == "metalchain"
    assert Path(argv[0]).is_file()
    assert argv[1:] == ["--site", str(site.absolute()), "serve", "--no-images"]
    assert one(unit, "Service", "ReadWritePaths") == str(site.absolute())
