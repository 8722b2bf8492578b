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


def test_cron_reader_model_reads_nicknames():
    assert cron_entry_command("@hourly root echo hi") == "echo hi"


EXTRAS = ["who=ops team", "pct=100%", "q=it's \"$HOME\" `x`", "eq=a=b", "flag=false"]


def test_extra_vars_reach_the_scheduled_run_quoted():
    s = Schedule(name="drift", site=Path("/srv/my site"), playbook="/srv/my site/p.yml",
                 mode="fix", when="*/15 * * * *", extra=tuple(EXTRAS))
    text = render_cron(s, "/usr/bin/metalchain", Path("/tmp/x.log"))
    argv = shlex.split(cron_entry_command(_entry(text)))
    assert argv[:argv.index(">>")] == ["/usr/bin/metalchain", "--site", "/srv/my site", "run",
                                       "/srv/my site/p.yml",
                                       *[a for pair in EXTRAS for a in ("-e", pair)]]
    assert parse_cron(text) == s


def test_nickname_schedule_reads_back():
    s = Schedule(name="hourly", site=Path("/srv/site"), playbook="p.yml", mode="check",
                 when="@hourly")
    text = render_cron(s, "/usr/bin/metalchain", Path("/tmp/x.log"))
    assert parse_cron(text) == s
    entry = next(ln for ln in text.splitlines() if ln.startswith("@hourly "))
    assert shlex.split(cron_entry_command(entry))[:4] == ["/usr/bin/metalchain", "--site",
                                                          "/srv/site", "run"]


@pytest.mark.parametrize("pair", ["novalue", "=x", ""])
def test_malformed_extra_vars_are_refused(pair):
    from orchestrate.schedule import check_extra

    with pytest.raises(InputError, match="-e expects KEY=VALUE"):
        check_extra((pair,))


def test_extra_var_with_a_newline_is_refused():
    s = Schedule(name="drift", site=Path("/srv/site"), playbook="p.yml", mode="fix",
                 when="*/15 * * * *", extra=("x=a\nb",))
    with pytest.raises(InputError, match="cannot schedule"):
        render_cron(s, "/usr/bin/metalchain", Path("/tmp/x.log"))
