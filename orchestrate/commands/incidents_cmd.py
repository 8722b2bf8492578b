"""`metalchain incidents list|show` and `metalchain remediation pause|resume|status`.

What an alert became (its timeline: received, decisions with their guard, actions,
verifications, healed or escalated) and the kill switch. Values that came from hosts or
alerts are printed through :func:`runtime.text.printable`: data, never terminal escapes.
"""

from __future__ import annotations

from typing import Any

import click

from inventory.errors import InputError
from inventory.state.incidents import INCIDENT_STATES
from orchestrate import output
from orchestrate.commands.common import json_option
from orchestrate.forget import operator
from orchestrate.remediation import incident_doc, remediation_status, set_paused
from runtime.text import printable


@click.group()
def incidents() -> None:
    """Incidents: alerts and pushed events, and what remediation did with them.

    \b
    Examples:
      metalchain incidents list --state escalated
      metalchain incidents show 12
    """


@incidents.command("list")
@click.option("--state", "states", multiple=True, type=click.Choice(INCIDENT_STATES),
              help="Only incidents in this state (repeatable).")
@click.option("--target", help="Only incidents of this host.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@json_option
@click.pass_obj
def list_(obj: Any, states: tuple[str, ...], target: str | None, limit: int,
          as_json: bool) -> None:
    """Incidents, newest first.

    \b
    Examples:
      metalchain incidents list
      metalchain incidents list --state open --state acting --json
    """
    found = obj.site.state.list_incidents(list(states) or None, target, limit)
    if as_json:
        output.emit_json("incidents.list", {"incidents": [i.to_json() for i in found]})
        return
    ts = output.timestamp
    output.table("incidents", ["id", "state", "alert", "target", "rule", "step", "deliveries",
                               "received", "ended"],
                 [[i.id, i.state, printable(i.alertname), printable(i.target),
                   i.rule, i.step, i.deliveries, ts(i.created_at), ts(i.ended_at)]
                  for i in found])


def _summary(kind: str, detail: dict[str, Any]) -> str:
    keys = {"decision": ("action", "verdict", "guard", "reason"),
            "action_started": ("action", "target", "action_id"),
            "action_finished": ("action", "outcome", "seconds", "run", "message"),
            "verified": ("kind", "message", "attempts", "seconds"),
            "verify_failed": ("kind", "message", "attempts", "seconds"),
            }.get(kind)
    items = [(k, detail[k]) for k in keys if detail.get(k) not in (None, "")] if keys \
        else [(k, v) for k, v in detail.items() if v not in (None, "", [], {})]
    return printable(" ".join(f"{k}={output.cell(v)}" for k, v in items))[:300]


@incidents.command("show")
@click.argument("incident_id", metavar="ID", type=int)
@json_option
@click.pass_obj
def show(obj: Any, incident_id: int, as_json: bool) -> None:
    """One incident: its labels and its timeline, with times.

    \b
    Examples:
      metalchain incidents show 12
      metalchain incidents show 12 --json
    """
    doc = incident_doc(obj.site, incident_id)
    if doc is None:
        raise InputError(f"no incident {incident_id} (see: metalchain incidents list)")
    if as_json:
        output.emit_json("incidents.show", doc)
        return
    inc = doc["incident"]
    output.line(printable(f"incident {inc['id']}: {inc['alertname']} on {inc['target']} — "
                          f"{inc['state']} (rule {inc['rule'] or '-'}, step {inc['step']}, "
                          f"{output.plural(inc['deliveries'], 'delivery', 'deliveries')})"))
    labels = ", ".join(f"{k}={v}" for k, v in sorted(inc["labels"].items()))
    output.line(printable(f"labels: {labels or '-'}"))
    start = inc["created_at"]
    output.table(f"incident {inc['id']}", ["at", "+s", "event", "detail"],
                 [[output.timestamp(e["at"]), f"{e['at'] - start:.3f}", e["kind"],
                   _summary(e["kind"], e["detail"])] for e in doc["timeline"]])


@incidents.command("wait")
@click.option("--target", required=True, help="The host the incident is about.")
@click.option("--alert", "alertname", help="Only an incident of this alert (e.g. VmDown).")
@click.option("--since", type=float, default=None,
              help="Only incidents received at or after this time (epoch seconds; default: "
                   "now, i.e. the next incident).")
@click.option("--timeout", type=click.FloatRange(0, 86400), default=600, show_default=True,
              help="Seconds to wait for it to arrive and end.")
@json_option
@click.pass_obj
def wait(obj: Any, target: str, alertname: str | None, since: float | None, timeout: float,
         as_json: bool) -> None:
    """Wait until the first incident on a host (since a time) has ended; print it. Exit 0
    when it ended healed (or resolved by itself), 1 when it ended otherwise or the timeout
    passed.

    \b
    Examples:
      t=$(date +%s); ...cause a fault...; metalchain incidents wait --target vm1 --since "$t"
      metalchain incidents wait --target node1 --alert ExporterDown --timeout 120 --json
    """
    import time

    from orchestrate.incident_wait import wait_incident

    rec = wait_incident(obj.site.state, target, since=time.time() if since is None else since,
                        timeout=timeout, alertname=alertname)
    if as_json:
        output.emit_json("incidents.wait", {"incident": rec.to_json()})
    else:
        took = (rec.ended_at or rec.updated_at) - rec.created_at
        output.line(printable(f"incident {rec.id}: {rec.alertname} on {rec.target} ended "
                              f"{rec.state} after {took:.1f} s (rule {rec.rule or '-'})"))
    if rec.state not in ("healed", "resolved"):
        raise click.exceptions.Exit(1)


@click.group()
def remediation() -> None:
    """Automatic remediation: the kill switch and what is running.

    \b
    Examples:
      metalchain remediation status
      metalchain remediation pause
    """


@remediation.command()
@json_option
@click.pass_obj
def pause(obj: Any, as_json: bool) -> None:
    """Turn the kill switch on: no new action starts (audited with your name).

    \b
    Examples:
      metalchain remediation pause
    """
    who = operator()
    set_paused(obj.site, True, who)
    if as_json:
        output.emit_json("remediation.pause", {"paused": True, "by": who})
        return
    output.line(f"remediation paused by {printable(who)} (running actions finish)")


@remediation.command()
@json_option
@click.pass_obj
def resume(obj: Any, as_json: bool) -> None:
    """Turn the kill switch off (audited with your name).

    \b
    Examples:
      metalchain remediation resume
    """
    who = operator()
    set_paused(obj.site, False, who)
    if as_json:
        output.emit_json("remediation.resume", {"paused": False, "by": who})
        return
    output.line(f"remediation resumed by {printable(who)}")


@remediation.command()
@json_option
@click.pass_obj
def status(obj: Any, as_json: bool) -> None:
    """Paused or not, dry run, running actions, the last hour's actions, incidents.

    \b
    Examples:
      metalchain remediation status
      metalchain remediation status --json
    """
    doc = remediation_status(obj.site)
    if as_json:
        output.emit_json("remediation.status", doc)
        return
    if doc["paused"]:
        output.line(printable(f"paused by {doc['paused_by']} since "
                              f"{output.timestamp(doc['paused_at'])}"))
    else:
        output.line("active")
    output.line(f"dry run: {'yes' if doc['dry_run'] else 'no'}")
    engine = doc["engine"]
    if engine is not None:
        output.line(printable(f"engine: pid {engine['pid']} on {engine['host']} since "
                              f"{output.timestamp(engine['since'])}"))
    rules = doc["rules"]
    if "error" in rules:
        output.line(printable(f"rules: {rules['error']}"))
    else:
        output.line(printable(f"rules: {rules['file']} ({', '.join(rules['rules']) or '-'})"))
        policy = rules["policy"]
        output.line(f"guards: cooldown {policy['cooldown']:g} s, {policy['rate_count']} "
                    f"actions of a kind per {policy['rate_window']:g} s, "
                    f"{policy['max_concurrent']} at once, fleet cap {policy['fleet_cap']:.0%},"
                    f" flap stop after {policy['flap_count']} in {policy['flap_window']:g} s")
    counts = doc["actions_last_hour"]
    output.line("actions in the last hour: " + (", ".join(
        f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    output.line("incidents: " + (", ".join(
        f"{k} {v}" for k, v in sorted(doc["incidents"].items())) or "none"))
    if doc["running"]:
        output.table("running", ["action", "incident", "target", "step", "since"],
                     [[a["action"], a["incident"], printable(a["target"]), a["step"],
                       output.timestamp(a["started_at"])] for a in doc["running"]])
