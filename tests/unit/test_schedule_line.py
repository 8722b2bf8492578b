"""A schedule's cron line, read as cron and /bin/sh read it, runs exactly the argv we meant:
site paths with spaces and ``%`` included (cron turns a bare ``%`` into a newline)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from inventory.errors import InputError
from orchestrate.schedule import Schedule, parse_cron, render_cron
from tests.cronline import cron_entry_command

pytestmark = pytest.mark.unit

SITES = ["/srv/site", "/srv/my site", "/srv/100% site", "/srv/a%b%%c d", "/srv/it's $HOME `x`"]


def _entry(text: str) -> str:
    return next(ln for ln in text.splitlines() if ln.startswith("*/15 "))


@pytest.mark.parametrize("site", SITES)
def test_cron_line_runs_the_intended_argv(site):
    s = Schedule(name="drift", site=Path(site), playbook=f"{site}/playbooks/drift.yml",
                 mode="check", when="*/15 * * * *")
    log = Path(site) / "runs" / "schedule-drift.log"
    text = render_cron(s, "/opt/metal chain/bin/metalchain", log)
    argv = shlex.split(cron_entry_command(_entry(text)))
    assert argv == [*s.argv("/opt/metal chain/bin/metalchain"), ">>", str(log), "2>&1"]
    assert "\n" not in cron_entry_command(_entry(text))


@pytest.mark.parametrize("site", SITES)
def test_schedule_file_reads_back(site):
    s = Schedule(name="drift", site=Path(site), playbook=f"{site}/playbooks/drift.yml",
                 mode="fix", when="*/15 * * * *")
    assert parse_cron(render_cron(s, "/usr/bin/metalchain", Path("/tmp/x.log"))) == s


@pytest.mark.parametrize("site", ["/srv/new\nline", "/srv/back\\slash"])
def test_unschedulable_paths_are_refused(site):
    s = Schedule(name="drift", site=Path(site), playbook="p.yml", mode="fix",
                 when="*/15 * * * *")
    with pytest.raises(InputError, match="cannot schedule"):
        render_cron(s, "/usr/bin/metalchain", Path("/tmp/x.log"))


def test_cron_reader_model():
    # The test's model of cron itself: fields and user split off, \% kept, bare % cuts.
    assert cron_entry_command("0 3 * * * root echo a\\%b%stdin") == "echo a%b"
    assert cron_entry_command("*/5\t* * * *  root   ls -l") == "ls -l"
