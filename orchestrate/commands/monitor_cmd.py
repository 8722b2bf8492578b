"""`metalchain monitor up|down|status|refresh`: the site's Prometheus and Alertmanagers.

The logic is in :mod:`orchestrate.monitoring` (site) and :mod:`monitor.stack` (processes).
"""

from __future__ import annotations

from typing import Any

import click

from orchestrate import output
from orchestrate.commands.common import json_option
from orchestrate.monitoring import monitor_down, monitor_status, monitor_up, refresh_targets

__all__ = ["monitor"]


def _shown(value: Any) -> str:
    """A value from Prometheus (labels, errors) made safe for a terminal: no control
    characters or escape sequences."""
    text = output.cell(value)
    return "".join(c if c.isprintable() else "?" for c in text)


@click.group()
def monitor() -> None:
    """Prometheus and two clustered Alertmanagers for the site's hosts.

    Settings: the `monitor:` mapping of metalchain.yml (ports, intervals, the receiver's
    address); the webhook's bearer token: the secret `monitor_webhook_token` in secrets.yml.

    \b
    Examples:
      metalchain monitor up
      metalchain monitor status --json
      metalchain monitor down
    """


@monitor.command()
@json_option
@click.pass_obj
def up(obj: Any, as_json: bool) -> None:
    """Generate prometheus.yml, the alert rules (playbooks/alerts.yml) and alertmanager.yml,
    check them with promtool and amtool, and start (or reload) the stack.

    \b
    Examples:
      metalchain monitor up
      metalchain --site lab monitor up --json
    """
    doc = monitor_up(obj.site)
    if as_json:
        output.emit_json("monitor.up", doc)
        return
    for name, pid in doc["pids"].items():
        output.line(f"{name}: pid {pid}")
    output.line(f"prometheus {doc['prometheus']}, alertmanagers "
               f"{', '.join(doc['alertmanagers'])}; webhook to {doc['webhook']}")
    output.line(f"{output.plural(len(doc['alerts']), 'alert')} from {doc['alerts_file']}; "
               f"targets in {doc['targets_file']}")


@monitor.command()
@json_option
@click.pass_obj
def down(obj: Any, as_json: bool) -> None:
    """Stop Prometheus and both Alertmanagers (nothing is left running).

    \b
    Examples:
      metalchain monitor down
    """
    stopped = monitor_down(obj.site)
    if as_json:
        output.emit_json("monitor.down", {"stopped": stopped})
        return
    output.line(f"stopped: {', '.join(stopped)}" if stopped else "the stack was not running")


@monitor.command()
@json_option
@click.pass_obj
def refresh(obj: Any, as_json: bool) -> None:
    """Write the file_sd targets from the inventory now (Prometheus picks them up itself).

    \b
    Examples:
      metalchain monitor refresh
    """
    path = refresh_targets(obj.site)
    if as_json:
        output.emit_json("monitor.refresh", {"targets_file": str(path)})
        return
    output.line(f"targets: {path}")


@monitor.command(epilog="Exit codes: 0 the stack runs, every target is up and no alert "
                        "fires; 1 a target is down, an alert fires, or the stack is not "
                        "(fully) running.")
@json_option
@click.pass_obj
def status(obj: Any, as_json: bool) -> None:
    """Targets up/down and firing alerts, from Prometheus's HTTP API, and the Alertmanagers'
    cluster peers.

    \b
    Examples:
      metalchain monitor status
      metalchain monitor status --json
    """
    st = monitor_status(obj.site)
    if as_json:
        output.emit_json("monitor.status", st.to_json())
        raise click.exceptions.Exit(st.exit_code)
    for name, pid in st.running.items():
        output.line(f"{name}: {'pid ' + str(pid) if pid else 'not running'}")
    for am in st.alertmanagers:
        output.line(f"{am['name']}: cluster {_shown(am['cluster_status'])}, peers "
                   f"{_shown(am['peers'])}")
    if st.targets:
        output.table("targets", ["job", "host", "instance", "health", "error"],
                     [[_shown(t["job"]), _shown(t["host"]), _shown(t["instance"]),
                       _shown(t["health"]), _shown(t["last_error"] or "-")]
                      for t in st.targets])
    output.line(f"targets: {len(st.targets) - len(st.down)} up, {len(st.down)} down")
    if st.firing:
        output.table("firing alerts", ["alert", "host", "unit", "severity", "since"],
                     [[_shown(a["name"]), _shown(a["host"]), _shown(a["unit"] or "-"),
                       _shown(a["severity"]), _shown(a["active_at"])] for a in st.firing])
    output.line(f"alerts firing: {len(st.firing)}")
    for err in st.errors:
        output.line(f"error: {_shown(err)}", err=True)
    raise click.exceptions.Exit(st.exit_code)
