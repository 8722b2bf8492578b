"""`metalchain run`, `metalchain exec`, `metalchain facts` and `metalchain runs list|show`.

Arguments in, output out: the runs themselves are in :mod:`orchestrate.runs` and
:mod:`orchestrate.actions`.
"""

from __future__ import annotations

from typing import Any

import click

from inventory.errors import InputError
from orchestrate import output
from orchestrate.actions import exec_command, exec_results, gather_facts, report_doc
from orchestrate.backend import DEFAULT_PARALLELISM
from orchestrate.commands.common import (
    json_option,
    parse_extra,
    stop_on_signals,
    wait_options,
    wait_seconds,
)
from orchestrate.events import read_events
from orchestrate.runs import RunOptions, load, plan_run, start_run
from orchestrate.stage_summary import chain_line, stage_rows, stage_summary, summary_doc


@click.command()
@click.argument("playbook")
@click.option("--limit", help="Narrow every play's hosts (same syntax as targets; @failed = "
              "the hosts that failed or were not reached in the last run).")
@click.option("-e", "--extra-var", "extra", multiple=True, metavar="KEY=VALUE")
@click.option("--check", is_flag=True, help="Predict changes; change nothing.")
@click.option("--plan", is_flag=True, help="Print what would run where, and stop.")
@click.option("--resume", metavar="RUN_ID", help="Continue a killed run.")
@click.option("--parallel", type=click.IntRange(1, 10_000), default=DEFAULT_PARALLELISM,
              show_default=True, help="Hosts at once.")
@click.option("--retry", is_flag=True, help="provision steps start over nodes that are "
              "provision_failed (as `metalchain provision --retry`).")
@wait_options
@json_option
@click.pass_obj
def run(obj: Any, playbook: str, limit: str | None, extra: tuple[str, ...], check: bool,
        plan: bool, resume: str | None, parallel: int, retry: bool, wait: bool,
        wait_timeout: float | None, as_json: bool) -> None:
    """Run PLAYBOOK (a file, or a name under the site's playbooks/).

    Ctrl-C (or SIGTERM) stops after the steps in progress and prints the summary (exit
    130); a second Ctrl-C aborts them. Then `--limit @failed` runs the hosts that failed
    or were not reached, `--resume RUN_ID` the rest of the run.

    The run ends with a summary per play (stage): its time, its hosts' outcomes, and what
    its steps report (nodes active, roles applied, VMs running, scrape targets up).

    \b
    Examples:
      metalchain run site --plan
      metalchain run site --limit @failed -e release=2.1
      metalchain run site --resume RUN_ID
      metalchain run site --limit @failed --retry
    """
    site = obj.site
    pb = load(site, playbook)
    extra_vars = parse_extra(extra)
    if plan:
        _print_plan(plan_run(site, pb, limit, extra=extra_vars), as_json)
        return
    options = RunOptions(kind="playbook", limit=limit, extra=extra_vars, check=check,
                         parallel=parallel, resume=resume, retry=retry,
                         wait=wait_seconds(wait, wait_timeout))
    with stop_on_signals() as stop:
        report = output.with_progress(lambda on_event: start_run(
            site, pb, options, on_event=on_event, stop=stop))
    if as_json:
        output.emit_json("run.result", {**report_doc(report), **summary_doc(report)})
    else:
        output.print_summary(report)
        _print_stages(report)
    raise click.exceptions.Exit(report.exit_code)


def _print_stages(report: Any) -> None:
    stages = stage_summary(report)
    if not stages:
        return
    output.table("stages", ["stage", "play", "seconds", "hosts", "facts"],
                 stage_rows(stages))
    text = chain_line(stages)
    if text:
        output.line(text)


def _print_plan(doc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        output.emit_json("run.plan", doc)
        return
    for p in doc["plays"]:
        output.line(f"play: {p['play']}")
        for i, b in enumerate(p["batches"], 1):
            output.line(f"  batch {i}: {', '.join(b)}")
        for s in p["steps"]:
            output.line(f"  step: {s['name']} [{s['kind']}] ({s['source']})")


@click.command("exec", context_settings={"ignore_unknown_options": True})
@click.argument("target")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--limit", help="Narrow the target.")
@click.option("--parallel", type=click.IntRange(1, 10_000), default=DEFAULT_PARALLELISM,
              show_default=True)
@click.option("--timeout", type=click.FloatRange(0.1, 86400), default=600, show_default=True,
              help="Seconds per host.")
@click.option("--become", is_flag=True, help="Run with sudo when the SSH user is not root.")
@json_option
@click.pass_obj
def exec_(obj: Any, target: str, command: tuple[str, ...], limit: str | None, parallel: int,
          timeout: float, become: bool, as_json: bool) -> None:
    """Run COMMAND on every host of TARGET in parallel: metalchain exec fleet -- hostname

    \b
    Examples:
      metalchain exec fleet -- hostname
      metalchain exec 'node*' --timeout 30 -- systemctl is-active ssh
    """
    with stop_on_signals() as stop:
        report = output.with_progress(lambda on_event: exec_command(
            obj.site, target, command, limit=limit, parallel=parallel, timeout=timeout,
            become=become, on_event=on_event, stop=stop))
    results = exec_results(report)
    if as_json:
        output.emit_json("exec.result", {"run": report.uid, "command": list(command),
                                         "exit_code": report.exit_code, "hosts": results})
    else:
        for h, r in results.items():
            if r["status"] in ("failed", "unreachable") and r["exit_code"] is None:
                output.line(f"{h} | {r['status'].upper()} | {r['message']}")
                continue
            output.line(f"{h} | rc={r['exit_code']} >>")
            text = (r["stdout"] or "") + (r["stderr"] or "")
            for ln in text.rstrip("\n").splitlines():
                output.line(f"  {ln}")
        c = report.counts()
        output.line(f"exec {report.uid}: {output.plural(len(results), 'host')}: "
                    + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in c.items() if v))
        if report.interrupted:
            output.line(output.interrupted_line(report))
    raise click.exceptions.Exit(report.exit_code)


@click.command()
@click.argument("target")
@click.option("--limit", help="Narrow the target.")
@click.option("--parallel", type=click.IntRange(1, 10_000), default=DEFAULT_PARALLELISM,
              show_default=True)
@click.option("--cached", is_flag=True, help="Show the stored facts; contact no host.")
@json_option
@click.pass_obj
def facts(obj: Any, target: str, limit: str | None, parallel: int, cached: bool,
          as_json: bool) -> None:
    """Gather (or with --cached, show) the facts of TARGET's hosts.

    \b
    Examples:
      metalchain facts all
      metalchain facts node1 --cached --json
    """
    if cached:
        doc, code = gather_facts(obj.site, target, limit=limit, cached=True)
    else:
        doc, code = output.with_progress(lambda on_event: gather_facts(
            obj.site, target, limit=limit, parallel=parallel, on_event=on_event))
    if as_json:
        output.emit_json("facts", {"hosts": doc})
    else:
        output.table("facts", ["host", "os", "kernel", "cpus", "memory_mb", "ipv4"],
                     [[h, (f or {}).get("os_pretty"), (f or {}).get("kernel"),
                       (f or {}).get("cpus"), (f or {}).get("memory_mb"),
                       (f or {}).get("ipv4")] for h, f in doc.items()])
    raise click.exceptions.Exit(code)


@click.group()
def runs() -> None:
    """Past runs and their journals.

    \b
    Examples:
      metalchain runs list
      metalchain runs show RUN_ID
    """


@runs.command("list")
@click.option("--limit", "count", type=click.IntRange(1, 10_000), default=20, show_default=True)
@json_option
@click.pass_obj
def runs_list(obj: Any, count: int, as_json: bool) -> None:
    """The most recent runs.

    \b
    Examples:
      metalchain runs list --limit 5
    """
    items = obj.site.state.list_runs(limit=count)
    if as_json:
        output.emit_json("runs.list", {"runs": items})
        return
    ts = output.timestamp
    output.table("runs", ["run", "kind", "status", "started", "ended", "playbook"],
                 [[r["uid"], r["kind"], r["status"], ts(r["started_at"]), ts(r["ended_at"]),
                   r["name"]] for r in items])


@runs.command("show")
@click.argument("run_id")
@json_option
@click.pass_obj
def runs_show(obj: Any, run_id: str, as_json: bool) -> None:
    """A run's journal: every host-step with intent and outcome.

    \b
    Examples:
      metalchain runs show RUN_ID --json
    """
    store = obj.site.state
    r = store.get_run(run_id)
    if r is None:
        raise InputError(f"no run '{run_id}' in the state store (see: metalchain runs list)")
    entries = store.journal_entries(run_id)
    log = obj.site.runs_dir / f"{run_id}.jsonl"
    events = read_events(log) if log.exists() else []
    if as_json:
        output.emit_json("runs.show", {"run": r, "journal": [
            {"host": e.host, "step": e.step, "status": e.status, "started_at": e.started_at,
             "ended_at": e.ended_at, "detail": e.detail} for e in entries],
            "event_log": str(log), "events": len(events)})
        return
    output.line(f"run {r['uid']} ({r['kind']} {r['name']}): {r['status']}")
    outcome = r.get("outcome") or {}
    for key, label in (("not_run", "not run"), ("incomplete", "stopped between steps")):
        if outcome.get(key):
            output.line(f"{label}: {', '.join(outcome[key])}")
    output.table("journal", ["host", "step", "status", "message"],
                 [[e.host, e.step, e.status, e.detail.get("message", "")] for e in entries])
