"""`metalchain schedule add|list|remove`: recurring runs (drift correction) via cron.d."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from orchestrate import output, schedule
from orchestrate.commands.common import json_option
from orchestrate.runs import find_playbook
from runtime.private import open_private, private_dir

dir_option = click.option("--cron-dir", type=click.Path(file_okay=False, path_type=Path),
                          default=schedule.CRON_DIR, show_default=True,
                          help="Where schedule files go.")


@click.group("schedule")
def schedule_group() -> None:
    """Run a playbook on a schedule (e.g. drift correction every 15 minutes).

    \b
    Examples:
      metalchain schedule add drift --playbook drift --every 15m
      metalchain schedule list
    """


@schedule_group.command("add")
@click.argument("name")
@click.option("--playbook", required=True, help="Playbook file or name under playbooks/.")
@click.option("--mode", type=click.Choice(["check", "fix"]), default="check", show_default=True,
              help="check: report drift only; fix: converge.")
@click.option("--every", help="Interval: 15m, 2h, 1d (one that cron repeats exactly: "
                               "minutes dividing 60, hours dividing 24, 1d).")
@click.option("--cron", "cron_expr",
              help="A cron expression instead of --every: 5 fields (minute 0-59, hour 0-23, "
                   "day of month 1-31, month 1-12 or jan-dec, day of week 0-7 or sun-sat; "
                   "lists, ranges, */steps) or @hourly, @daily, @weekly, ...")
@click.option("--uneven", is_flag=True,
              help="Accept an --every that cron can only approximate (e.g. 7m), with a "
                   "warning, instead of refusing it.")
@click.option("-e", "--extra-var", "extra", multiple=True, metavar="KEY=VALUE",
              help="Passed to the scheduled run as -e KEY=VALUE (repeatable; not for "
                   "secrets: the cron file and the process list show it).")
@dir_option
@click.pass_obj
def add(obj: Any, name: str, playbook: str, mode: str, every: str | None,
        cron_expr: str | None, uneven: bool, extra: tuple[str, ...], cron_dir: Path) -> None:
    """Install schedule NAME.

    \b
    Examples:
      metalchain schedule add drift --playbook drift --mode fix --every 15m
      metalchain schedule add nightly --playbook site --cron '0 3 * * *' -e release=2.1
    """
    site = obj.site
    pb = find_playbook(site, playbook)
    s = schedule.Schedule(name=schedule.check_name(name), site=site.root, playbook=str(pb),
                          mode=mode, when=schedule.cron_expression(every, cron_expr,
                                                                   uneven=uneven),
                          extra=schedule.check_extra(extra))
    why = schedule.every_warning(every)
    if why is not None:
        output.line(f"warning: {why}", err=True)
    metalchain = str(Path(sys.executable).parent / "metalchain")
    log = site.runs_dir / f"schedule-{name}.log"
    private_dir(site.runs_dir)
    open_private(log, "a").close()   # cron's >> keeps the mode: the log holds host output
    path = schedule.install(s, cron_dir, metalchain, log)
    extras = "".join(f" -e {shlex.quote(pair)}" for pair in s.extra)
    output.line(f"installed {path}: '{s.when}' {mode} {pb}{extras} (log: {log})")


@schedule_group.command("list")
@dir_option
@json_option
@click.pass_obj
def list_(obj: Any, cron_dir: Path, as_json: bool) -> None:
    """Schedules installed for any site.

    \b
    Examples:
      metalchain schedule list --json
    """
    items = schedule.installed(cron_dir)
    if as_json:
        output.emit_json("schedule.list", {"schedules": [
            {"name": s.name, "site": str(s.site), "playbook": s.playbook, "mode": s.mode,
             "when": s.when, "extra": list(s.extra)} for s in items]})
        return
    output.table("schedules", ["name", "when", "mode", "playbook", "extra", "site"],
                 [[s.name, s.when, s.mode, s.playbook, " ".join(s.extra) or "-", s.site]
                  for s in items])


@schedule_group.command("remove")
@click.argument("name")
@dir_option
def remove(name: str, cron_dir: Path) -> None:
    """Remove schedule NAME.

    \b
    Examples:
      metalchain schedule remove drift
    """
    schedule.remove(cron_dir, name)
    output.line(f"removed schedule {name}")
