"""`metalchain run`, `metalchain exec` and `metalchain runs list|show`."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from configure.connect import connector
from inventory.errors import InputError, MetalchainError
from inventory.select import select_hosts
from orchestrate import output
from orchestrate.commands.common import json_option, parse_extra
from orchestrate.events import EventLog, read_events
from orchestrate.playbook import Play, Playbook, Step, batches, load_playbook
from orchestrate.progress import make_progress
from orchestrate.registry import build_registry
from orchestrate.runner import (
    DEFAULT_PARALLELISM,
    Runner,
    RunReport,
    last_failed_hosts,
    resume_state,
)


def find_playbook(site: Any, name: str) -> Path:
    for candidate in (Path(name), site.playbooks_dir / name,
                      site.playbooks_dir / f"{name}.yml"):
        if candidate.is_file():
            return candidate.resolve()
    raise InputError(f"playbook not found: {name} (looked in . and {site.playbooks_dir})")


class RunLock:
    """An exclusive lock per playbook, so a cron run never overlaps a running one."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise MetalchainError(f"another run of this playbook is in progress (pid "
                                  f"{holder}; lock {self.path})") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def execute(obj: Any, playbook: Playbook, *, limit: str | None, extra: dict[str, str],
            check: bool, parallel: int, resume: str | None, kind: str,
            on_report: Callable[[RunReport], None] | None = None,
            diff: bool = False) -> RunReport:
    site = obj.site
    store = site.state
    inv = site.inventory
    named = {"failed": last_failed_hosts(store)}
    done: dict[tuple[str, int], str] = {}
    if resume:
        prior = store.get_run(resume)
        if prior is None:
            raise InputError(f"no run '{resume}' in the state store (see: metalchain runs list)")
        if prior["name"] != str(playbook.path):
            raise InputError(f"run {resume} was of {prior['name']}, not {playbook.path}")
        limit = limit or prior["args"].get("limit")
        extra = {**prior["args"].get("extra", {}), **extra}
        check = check or bool(prior["args"].get("check"))
        done = resume_state(store, resume)
        store.reopen_run(resume)
        uid = resume
    else:
        uid = store.start_run(kind, str(playbook.path),
                              {"limit": limit, "extra": extra, "check": check})
    events = EventLog(site.runs_dir / f"{uid}.jsonl", uid)
    progress = make_progress()
    events.subscribe(progress)
    runner = Runner(inv, store, build_registry(),
                    connector(inv, store, site.private_key()), parallelism=parallel,
                    options={"playbooks_dir": site.playbooks_dir, "diff": diff,
                             "vars": {"metalchain_mirror": mirror_var(site)}})
    status = "failed"
    try:
        report = runner.run(playbook, events=events, run_uid=uid, limit=limit,
                            extra_vars=extra, check=check, named=named, done=done,
                            facts=store.all_facts())
        status = "ok" if report.exit_code == 0 else "failed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        progress.close()
        events.close()
        store.end_run(uid, status)
    if on_report:
        on_report(report)
    return report


def mirror_var(site: Any) -> dict[str, Any] | None:
    """What roles need to point hosts at the site's package mirror (None if none is built)."""
    import base64

    from configure.mirror import KEYRING_PATH
    from orchestrate.commands.mirror_cmd import status_doc

    doc = status_doc(site)
    if not doc["built"] or not doc["source"]:
        return None
    keyring = Path(doc["keyring"]).read_bytes() if doc.get("keyring") else b""
    return {"source": doc["source"], "signed": bool(doc["signed"]),
            "keyring_path": KEYRING_PATH,
            "keyring_b64": base64.b64encode(keyring).decode() if keyring else "",
            "url": doc["server"]["url"]}


def report_doc(report: RunReport) -> dict[str, Any]:
    return {
        "run": report.uid, "exit_code": report.exit_code, "counts": report.counts(),
        "stopped": report.stopped_reason or None, "not_run": report.not_run,
        "hosts": {h: {"status": r.status, "changed": r.changed,
                      "steps": [{"play": s.play, "step": s.step, "status": s.outcome.status,
                                 "message": s.outcome.message, "changes": s.outcome.changes,
                                 "attempts": s.attempts, "resumed": s.resumed,
                                 "duration": round(s.duration, 3),
                                 "round_trips": s.outcome.data.get("round_trips")}
                                for s in r.steps]}
                  for h, r in report.hosts.items()},
    }


def print_diffs(report: RunReport) -> None:
    """The per-resource diffs of apply steps (what check mode would change, or did)."""
    for h, r in report.hosts.items():
        for s in r.steps:
            for res in s.outcome.data.get("results", []):
                if res["status"] in ("changed", "unknown", "failed") and (
                        res["changes"] or res["diff"] or res["message"]):
                    output.line(f"--- {h}: {res['role']}/{res['resource']} [{res['status']}]"
                                + (f" ({res['source']})" if res["source"] else ""))
                    for c in res["changes"]:
                        output.line(f"    {c}")
                    if res["message"]:
                        output.line(f"    {res['message']}")
                    if res["diff"]:
                        output.line(res["diff"].rstrip("\n"))


def print_summary(report: RunReport) -> None:
    rows = []
    for h, r in report.hosts.items():
        failed = next((s for s in r.steps if s.outcome.status in ("failed", "unreachable")),
                      None)
        rows.append([h, r.status, len(r.steps), r.changed,
                     f"{failed.step}: {failed.outcome.message}" if failed else ""])
    for h in report.not_run:
        rows.append([h, "not run", 0, 0, ""])
    output.table(f"run {report.uid}", ["host", "status", "steps", "changed", "failure"], rows)
    c = report.counts()
    output.line(f"run {report.uid}: " + ", ".join(f"{k}={v}" for k, v in c.items()))
    if report.stopped_reason:
        output.line(f"stopped: {report.stopped_reason}")


@click.command()
@click.argument("playbook")
@click.option("--limit", help="Narrow every play's hosts (same syntax as targets; @failed).")
@click.option("-e", "--extra-var", "extra", multiple=True, metavar="KEY=VALUE")
@click.option("--check", is_flag=True, help="Predict changes; change nothing.")
@click.option("--plan", is_flag=True, help="Print what would run where, and stop.")
@click.option("--resume", metavar="RUN_ID", help="Continue a killed run.")
@click.option("--parallel", type=click.IntRange(1, 10_000), default=DEFAULT_PARALLELISM,
              show_default=True, help="Hosts at once.")
@json_option
@click.pass_obj
def run(obj: Any, playbook: str, limit: str | None, extra: tuple[str, ...], check: bool,
        plan: bool, resume: str | None, parallel: int, as_json: bool) -> None:
    """Run PLAYBOOK (a file, or a name under the site's playbooks/)."""
    site = obj.site
    pb = load_playbook(find_playbook(site, playbook), build_registry())
    if plan:
        _plan(site, pb, limit, as_json)
        return
    with RunLock(site.runs_dir / f".lock-{pb.path.stem}"):
        report = execute(obj, pb, limit=limit, extra=parse_extra(extra), check=check,
                         parallel=parallel, resume=resume, kind="playbook")
    if as_json:
        output.emit_json("run.result", report_doc(report))
    else:
        print_summary(report)
    raise click.exceptions.Exit(report.exit_code)


def _plan(site: Any, pb: Playbook, limit: str | None, as_json: bool) -> None:
    named = {"failed": last_failed_hosts(site.state)}
    facts = site.state.all_facts()
    plays = []
    for play in pb.plays:
        hosts = select_hosts(site.inventory, play.hosts, limit, named, facts)
        plays.append({"play": play.name, "hosts": hosts,
                      "batches": batches(hosts, play.serial),
                      "max_fail_percentage": play.max_fail_percentage,
                      "steps": [{"name": s.name, "kind": s.kind, "retries": s.retries,
                                 "source": f"{s.file}:{s.line}"} for s in play.steps]})
    if as_json:
        output.emit_json("run.plan", {"playbook": str(pb.path), "plays": plays})
        return
    for p in plays:
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
    """Run COMMAND on every host of TARGET in parallel: metalchain exec fleet -- hostname"""
    from configure.command import CommandArgs

    args = CommandArgs(command=tuple(command), timeout=timeout, become=become)
    pb = _single_step_playbook(target, "command", args, " ".join(command)[:60])
    report = execute(obj, pb, limit=limit, extra={}, check=False, parallel=parallel,
                     resume=None, kind="exec")
    results = {}
    for h, r in report.hosts.items():
        s = r.steps[0] if r.steps else None
        data = s.outcome.data if s else {}
        results[h] = {"status": r.status, "exit_code": data.get("exit_code"),
                      "stdout": data.get("stdout", s.outcome.output if s else ""),
                      "stderr": data.get("stderr", ""),
                      "message": s.outcome.message if s else ""}
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
        output.line(f"exec {report.uid}: {len(results)} hosts, "
                    + ", ".join(f"{k}={v}" for k, v in c.items() if v))
    raise click.exceptions.Exit(report.exit_code)


def _single_step_playbook(target: str, kind: str, args: Any, name: str) -> Playbook:
    step = Step(index=0, name=name, kind=kind, args=args, retries=0, delay=0, timeout=None,
                file=f"<{kind}>", line=0)
    play = Play(index=0, name=kind, hosts=target, serial=(), max_fail_percentage=None,
                steps=(step,), file=f"<{kind}>", line=0)
    return Playbook(path=Path(f"<{kind}>"), plays=[play])


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
    """Gather (or with --cached, show) the facts of TARGET's hosts."""
    store = obj.site.state
    hosts = select_hosts(obj.site.inventory, target, limit, {"failed": last_failed_hosts(store)},
                         store.all_facts())
    code = 0
    if not cached:
        pb = _single_step_playbook(target, "gather_facts", None, "gather facts")
        report = execute(obj, pb, limit=limit, extra={}, check=False, parallel=parallel,
                         resume=None, kind="facts")
        for h, r in report.hosts.items():
            if r.steps and "facts" in r.steps[0].outcome.data:
                store.save_facts(h, r.steps[0].outcome.data["facts"])
        code = report.exit_code
    known = store.all_facts()
    doc = {h: known.get(h) for h in hosts}
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
    """Past runs and their journals."""


@runs.command("list")
@click.option("--limit", "count", type=click.IntRange(1, 10_000), default=20, show_default=True)
@json_option
@click.pass_obj
def runs_list(obj: Any, count: int, as_json: bool) -> None:
    """The most recent runs."""
    items = obj.site.state.list_runs(limit=count)
    if as_json:
        output.emit_json("runs.list", {"runs": items})
        return
    from orchestrate.commands.state_cmd import _ts

    output.table("runs", ["run", "kind", "status", "started", "ended", "playbook"],
                 [[r["uid"], r["kind"], r["status"], _ts(r["started_at"]), _ts(r["ended_at"]),
                   r["name"]] for r in items])


@runs.command("show")
@click.argument("run_id")
@json_option
@click.pass_obj
def runs_show(obj: Any, run_id: str, as_json: bool) -> None:
    """A run's journal: every host-step with intent and outcome."""
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
    output.table("journal", ["host", "step", "status", "message"],
                 [[e.host, e.step, e.status, e.detail.get("message", "")] for e in entries])
