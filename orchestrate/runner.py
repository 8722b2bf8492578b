"""The runner: steps over host selections, in parallel, journaled, resumable.

One thread per host of a batch (up to ``parallelism``, default 100); each host runs the play's
steps in order over one connection and stops at its first failed step. Results are collected
per host; nothing aborts the run but ``max_fail_percentage``. Before each host-step the journal
gets an intent, after it the outcome, so ``--resume RUN`` can skip what is known done and
re-check what is in doubt.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from configure.templating import render_value
from inventory.errors import InputError, MetalchainError, TransportError
from inventory.model import Inventory
from inventory.select import select_hosts
from inventory.state import StateStore
from inventory.variables import host_vars
from orchestrate.events import EventLog
from orchestrate.playbook import Play, Playbook, Step, batches
from orchestrate.steps import StepOutcome, StepRegistry

DEFAULT_PARALLELISM = 100
DONE = ("ok", "changed", "skipped")
FAILED = ("failed", "unreachable")
STEP_STRIDE = 1000  # journal step_index = play index * STEP_STRIDE + step index


def journal_index(play: Play, step: Step) -> int:
    return play.index * STEP_STRIDE + step.index


@dataclass
class StepReport:
    play: str
    step: str
    outcome: StepOutcome
    attempts: int
    duration: float
    resumed: bool = False


@dataclass
class HostReport:
    host: str
    status: str = "ok"          # worst outcome over its steps
    steps: list[StepReport] = field(default_factory=list)

    def add(self, report: StepReport) -> None:
        self.steps.append(report)
        order = ("ok", "skipped", "changed", "failed", "unreachable")
        if order.index(report.outcome.status) > order.index(self.status):
            self.status = report.outcome.status

    @property
    def changed(self) -> int:
        return sum(1 for s in self.steps if s.outcome.status == "changed")


@dataclass
class RunReport:
    uid: str
    hosts: dict[str, HostReport] = field(default_factory=dict)
    not_run: list[str] = field(default_factory=list)
    stopped_reason: str = ""

    @property
    def exit_code(self) -> int:
        bad = any(h.status in FAILED for h in self.hosts.values())
        return 1 if bad or self.stopped_reason else 0

    def counts(self) -> dict[str, int]:
        c = {k: 0 for k in ("ok", "changed", "failed", "unreachable", "skipped")}
        for h in self.hosts.values():
            c[h.status] += 1
        c["not_run"] = len(self.not_run)
        return c


class Connections:
    """One connection per host for the whole run, opened on first use, closed at the end."""

    def __init__(self, factory: Callable[[str], Any]) -> None:
        self._factory = factory
        self._open: dict[str, Any] = {}

    def get(self, host: str) -> Any:
        if host not in self._open:
            self._open[host] = self._factory(host)
        return self._open[host]

    def close_all(self) -> None:
        for conn in self._open.values():
            close = getattr(conn, "close", None)
            if close is not None:
                close()
        self._open.clear()


@dataclass
class _HostCtx:
    host: str
    vars: Mapping[str, Any]
    check: bool
    _conns: Connections
    _events: EventLog
    play: str = ""
    state: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    deadline: float | None = None

    def connection(self) -> Any:
        return self._conns.get(self.host)

    def emit(self, event: str, **fields: Any) -> None:
        self._events.emit(event, host=self.host, **fields)


class Runner:
    def __init__(self, inventory: Inventory, store: StateStore, registry: StepRegistry,
                 connect: Callable[[str], Any], *, parallelism: int = DEFAULT_PARALLELISM,
                 sleep: Callable[[float], None] = time.sleep,
                 options: Mapping[str, Any] | None = None) -> None:
        if parallelism < 1:
            raise InputError("parallelism must be at least 1")
        self.inventory = inventory
        self.store = store
        self.registry = registry
        self.connect = connect
        self.parallelism = parallelism
        self.sleep = sleep
        self.options = dict(options or {})
        self._facts: Mapping[str, Mapping[str, Any]] = {}

    def run(self, playbook: Playbook, *, events: EventLog, run_uid: str,
            limit: str | None = None, extra_vars: Mapping[str, Any] | None = None,
            check: bool = False, named: Mapping[str, Sequence[str]] | None = None,
            done: Mapping[tuple[str, int], str] | None = None,
            facts: Mapping[str, Mapping[str, Any]] | None = None) -> RunReport:
        """Run every play. ``done`` maps (host, journal index) -> outcome of a resumed run."""
        report = RunReport(uid=run_uid)
        conns = Connections(self.connect)
        done = done or {}
        self._facts = facts or {}
        events.emit("run_start", playbook=str(playbook.path), limit=limit, check=check,
                    resumed=bool(done))
        excluded: set[str] = set()
        try:
            for play in playbook.plays:
                hosts = [h for h in select_hosts(self.inventory, play.hosts, limit, named,
                                                 self._facts) if h not in excluded]
                events.emit("play_start", play=play.name, hosts=hosts)
                for n, batch in enumerate(batches(hosts, play.serial)):
                    if report.stopped_reason:
                        report.not_run.extend(h for h in batch if h not in report.not_run)
                        continue
                    events.emit("batch_start", play=play.name, batch=n + 1, hosts=batch)
                    results = self._batch(play, batch, conns, events, extra_vars or {},
                                          check, done)
                    failed = [h for h, r in results.items() if r.status in FAILED]
                    for h, r in results.items():
                        merged = report.hosts.setdefault(h, HostReport(h))
                        for s in r.steps:
                            merged.add(s)
                    excluded.update(failed)
                    pct = 100.0 * len(failed) / len(batch) if batch else 0.0
                    events.emit("batch_end", play=play.name, batch=n + 1, failed=failed,
                                failed_percentage=round(pct, 1))
                    if play.max_fail_percentage is not None and pct > play.max_fail_percentage:
                        report.stopped_reason = (
                            f"play '{play.name}': batch {n + 1} failed on {len(failed)} of "
                            f"{len(batch)} hosts ({pct:.0f}% > max_fail_percentage "
                            f"{play.max_fail_percentage:g}%); later batches not run")
                events.emit("play_end", play=play.name)
                if report.stopped_reason:
                    break
        finally:
            conns.close_all()
            events.emit("run_end", counts=report.counts(), exit_code=report.exit_code,
                        stopped=report.stopped_reason or None)
        return report

    def _batch(self, play: Play, batch: list[str], conns: Connections, events: EventLog,
               extra: Mapping[str, Any], check: bool,
               done: Mapping[tuple[str, int], str]) -> dict[str, HostReport]:
        workers = min(self.parallelism, len(batch))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="host") as pool:
            futures = {h: pool.submit(self._host, play, h, conns, events, extra, check, done)
                       for h in batch}
            return {h: f.result() for h, f in futures.items()}

    def _host(self, play: Play, host: str, conns: Connections, events: EventLog,
              extra: Mapping[str, Any], check: bool,
              done: Mapping[tuple[str, int], str]) -> HostReport:
        h = self.inventory.hosts[host]
        magic = {"inventory_hostname": host, "address": h.address,
                 "group_names": self.inventory.groups_of(host), "labels": h.labels,
                 "facts": dict(self._facts.get(host, {})),
                 "roles": self.inventory.roles_of(host),
                 **self.options.get("vars", {})}
        variables = {**magic, **host_vars(self.inventory, host, extra=extra)}
        ctx = _HostCtx(host, variables, check, conns, events, play.name, self.store,
                       self.options)
        report = HostReport(host)
        for step in play.steps:
            idx = journal_index(play, step)
            prior = done.get((host, idx))
            if prior in DONE:
                report.add(StepReport(play.name, step.name, StepOutcome(
                    prior, "done in the resumed run"), 0, 0.0, resumed=True))
                events.emit("host_step_end", host=host, play=play.name, step=step.name,
                            status=prior, resumed=True, duration=0.0)
                continue
            step_report = self._step(ctx, play, step, events, in_doubt=prior == "intent")
            report.add(step_report)
            if step_report.outcome.status in FAILED:
                break
        return report

    def _step(self, ctx: _HostCtx, play: Play, step: Step, events: EventLog,
              in_doubt: bool) -> StepReport:
        kind = self.registry.get(step.kind)
        entry = self.store.journal_intent(events.run_uid, ctx.host, journal_index(play, step),
                                          f"{play.name} / {step.name}")
        events.emit("host_step_start", host=ctx.host, play=play.name, step=step.name,
                    kind=step.kind, in_doubt=in_doubt)
        start = time.monotonic()
        attempts = 0
        outcome = StepOutcome("failed", "not run")
        recheck = getattr(kind, "recheck", None)
        if in_doubt and recheck is not None:
            try:
                if recheck(ctx, self._args(kind, ctx, step)):
                    outcome = StepOutcome("ok", "in doubt after a killed run; re-checked: "
                                                "already done")
                    return self._finish(ctx, play, step, events, entry, outcome, 0, start)
            except MetalchainError as exc:
                outcome = StepOutcome("unreachable" if isinstance(exc, TransportError)
                                      else "failed", f"re-check failed: {exc}")
                return self._finish(ctx, play, step, events, entry, outcome, 0, start)
        for attempt in range(step.retries + 1):
            attempts = attempt + 1
            outcome = self._attempt(kind, ctx, step)
            if outcome.status not in FAILED or attempt == step.retries:
                break
            events.emit("host_step_retry", host=ctx.host, play=play.name, step=step.name,
                        attempt=attempts, message=outcome.message)
            self.sleep(step.delay)
        return self._finish(ctx, play, step, events, entry, outcome, attempts, start)

    @staticmethod
    def _args(kind: Any, ctx: _HostCtx, step: Step) -> Any:
        """The step's arguments for this host: templates rendered, then validated again."""
        if not step.templated:
            return step.args
        rendered = render_value(step.raw, ctx.vars, f"{step.file}:{step.line}")
        try:
            return kind.parse(rendered)
        except ValueError as exc:
            raise InputError(f"{step.file}:{step.line}: after rendering templates: {exc}"
                             ) from None

    def _attempt(self, kind: Any, ctx: _HostCtx, step: Step) -> StepOutcome:
        try:
            return kind.run(ctx, self._args(kind, ctx, step))
        except TransportError as exc:
            return StepOutcome("unreachable", str(exc))
        except MetalchainError as exc:
            return StepOutcome("failed", str(exc))
        except Exception as exc:  # noqa: BLE001 - one host's bug must not end the others
            return StepOutcome("failed", f"internal error in step kind '{step.kind}': "
                                         f"{exc.__class__.__name__}: {exc}")

    def _finish(self, ctx: _HostCtx, play: Play, step: Step, events: EventLog, entry: int,
                outcome: StepOutcome, attempts: int, start: float) -> StepReport:
        duration = time.monotonic() - start
        self.store.journal_outcome(entry, outcome.status, {
            "message": outcome.message[:2000], "changes": outcome.changes[:100],
            "attempts": attempts})
        events.emit("host_step_end", host=ctx.host, play=play.name, step=step.name,
                    status=outcome.status, message=outcome.message[:2000],
                    changes=outcome.changes[:100], attempts=attempts,
                    duration=round(duration, 3), output=outcome.output[-4000:])
        return StepReport(play.name, step.name, outcome, attempts, duration)


def resume_state(store: StateStore, run_uid: str) -> dict[tuple[str, int], str]:
    """(host, journal index) -> last recorded status of a run: outcome, or 'intent' in doubt."""
    state: dict[tuple[str, int], str] = {}
    for e in store.journal_entries(run_uid):
        key = (e.host, e.step_index)
        if state.get(key) in DONE:
            continue
        state[key] = e.status
    return state


def last_failed_hosts(store: StateStore) -> list[str]:
    """Hosts whose last outcome in the most recent finished run was failed or unreachable."""
    for run in store.list_runs(limit=20):
        if run["status"] == "running":
            continue
        last: dict[str, str] = {}
        for e in store.journal_entries(run["uid"]):
            last[e.host] = e.status
        return [h for h, s in last.items() if s in (*FAILED, "intent")]
    return []
