"""One host's steps of one play, on the backend side of the runner.

Here the host's variables are computed, its connection is opened (lazily, through the
factory), each step is journaled before (intent) and after (outcome), retried, bounded by its
``timeout:`` and its outcome masked before anything records it. Whatever goes wrong for this
host — a step kind's bug, a state-store error — ends up in this host's report, never as an
exception that would take the other hosts of the batch with it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from configure.templating import render_value
from inventory.errors import InputError, MetalchainError, StateError, TransportError
from inventory.model import Inventory
from inventory.secrets import Masker
from inventory.variables import host_variables
from orchestrate.playbook import Play, Step
from orchestrate.reports import DONE, FAILED, BatchJob, EventSink, HostReport, StepReport
from orchestrate.steps import StepOutcome, StepRegistry
from orchestrate.stop import Stop
from runtime.crashpoint import crash_point

STEP_STRIDE = 1000  # journal step_index = play index * STEP_STRIDE + step index
#: How long the runner waits for a step without a ``timeout:`` before it gives up on the host.
DEFAULT_STEP_BOUND = 4 * 3600.0
MESSAGE_MAX, CHANGES_MAX, OUTPUT_MAX = 2000, 100, 4000


def journal_index(play: Play, step: Step) -> int:
    return play.index * STEP_STRIDE + step.index


def masked(outcome: StepOutcome, mask: Masker) -> StepOutcome:
    """``outcome`` with every known secret value replaced by ``***``."""
    if not mask:
        return outcome
    return StepOutcome(outcome.status, mask.value(outcome.message),
                       mask.value(list(outcome.changes)), mask.value(outcome.output),
                       mask.value(dict(outcome.data)))


class Connections:
    """One connection per host for the whole run, opened on first use, closed at the end."""

    def __init__(self, factory: Callable[[str], Any]) -> None:
        self._factory = factory
        self._open: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, host: str) -> Any:
        with self._lock:
            conn = self._open.get(host)
        if conn is None:
            conn = self._factory(host)   # outside the lock: one slow host blocks no other
            with self._lock:
                conn = self._open.setdefault(host, conn)
        return conn

    def discard(self, host: str) -> None:
        """Close ``host``'s connection (e.g. under a step the runner gave up on)."""
        with self._lock:
            conn = self._open.pop(host, None)
        _close(conn)

    def close_all(self) -> None:
        with self._lock:
            conns, self._open = list(self._open.values()), {}
        for conn in conns:
            _close(conn)


def _close(conn: Any) -> None:
    close = getattr(conn, "close", None)
    if close is None:
        return
    try:
        close()
    except Exception:  # noqa: BLE001, S110 - closing is best effort; the result stands
        pass


class HostWatch:
    """What the batch's waiter knows of one host's thread: the step it is in and until when
    it may run. Everything the thread records goes through :meth:`record` under the lock, so
    once the waiter has given up on the host (``abandoned``), nothing more is recorded."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.lock = threading.Lock()
        self.report = HostReport(host)
        self.started = False
        self.finished = False
        self.abandoned = False
        self.until: float | None = None      # monotonic time the current attempt must end by
        self.limit = 0.0                     # that attempt's bound in seconds
        self.step_timeout = False            # the bound is the step's own ``timeout:``
        self.step: tuple[str, str] | None = None   # (play, step) being run
        self.entry: int | None = None        # its journal entry
        self.step_start = 0.0
        self.attempts = 0
        #: called (without the lock held) when ``until`` changes, to wake the waiter
        self.on_change: Callable[[], None] = lambda: None


@dataclass
class _HostCtx:
    host: str
    vars: Mapping[str, Any]
    check: bool
    _conns: Connections
    _events: EventSink
    _mask: Masker
    _watch: HostWatch
    play: str = ""
    state: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    deadline: float | None = None

    def connection(self) -> Any:
        return self._conns.get(self.host)

    def emit(self, event: str, **fields: Any) -> None:
        with self._watch.lock:
            if self._watch.abandoned:
                return
        self._events.emit(event, host=self.host, **self._mask.value(fields))


class HostRunner:
    """Runs one host's steps of a play. Holds no per-run state: everything per run comes in
    as arguments, so one instance serves concurrent runs."""

    def __init__(self, inventory: Inventory, store: Any, registry: StepRegistry, *,
                 options: Mapping[str, Any] | None = None, mask: Masker | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.inventory = inventory
        self.store = store
        self.registry = registry
        self.options = dict(options or {})
        self.mask = mask or Masker()
        self.sleep = sleep

    def variables(self, host: str, job: BatchJob) -> dict[str, Any]:
        context = self.options.get("vars")
        per_host = self.options.get("host_vars")   # host -> vars, e.g. its event token
        if per_host is not None:
            context = {**(context or {}), **per_host(host)}
        return host_variables(self.inventory, host, facts=job.facts.get(host),
                              extra=job.extra_vars, context=context)

    def run(self, play: Play, host: str, job: BatchJob, events: EventSink,
            conns: Connections, watch: HostWatch, stop: Stop | None = None) -> HostReport:
        """Run ``play``'s steps on ``host``; returns ``watch.report`` (never raises). Once
        ``stop`` is requested, no further step is started (``report.stopped``)."""
        try:
            self._run(play, host, job, events, conns, watch, stop or Stop())
        except Exception as exc:  # noqa: BLE001 - one host's bug must not end the others
            name = watch.step[1] if watch.step else "(before its first step)"
            self._record(watch, events, StepReport(play.name, name, StepOutcome(
                "failed", self.mask.text(f"internal error: {exc.__class__.__name__}: {exc}")),
                watch.attempts, 0.0))
        finally:
            with watch.lock:
                watch.finished = True
        return watch.report

    def _run(self, play: Play, host: str, job: BatchJob, events: EventSink,
             conns: Connections, watch: HostWatch, stop: Stop) -> None:
        ctx = _HostCtx(host, self.variables(host, job), job.check, conns, events, self.mask,
                       watch, play.name, self.store, self.options)
        for step in play.steps:
            idx = journal_index(play, step)
            prior = job.done.get((host, idx))
            if prior in DONE:
                with watch.lock:
                    if watch.abandoned:
                        return
                    watch.report.add(StepReport(play.name, step.name, StepOutcome(
                        prior, "done in the resumed run"), 0, 0.0, resumed=True))
                events.emit("host_step_end", host=host, play=play.name, step=step.name,
                            status=prior, resumed=True, duration=0.0)
                continue
            if stop.stopping:
                with watch.lock:
                    watch.report.stopped = True
                return
            status = self._step(ctx, play, step, events, watch, in_doubt=prior == "intent")
            if status is None or status in FAILED:
                return

    def _step(self, ctx: _HostCtx, play: Play, step: Step, events: EventSink,
              watch: HostWatch, in_doubt: bool) -> str | None:
        """Run one step; returns its status, or None when the runner gave up on the host."""
        kind = self.registry.get(step.kind)
        start = time.monotonic()
        with watch.lock:
            if watch.abandoned:
                return None
            watch.step, watch.entry, watch.step_start, watch.attempts = \
                (play.name, step.name), None, start, 0
        try:
            entry = self.store.journal_intent(events.run_uid, ctx.host,
                                              journal_index(play, step),
                                              f"{play.name} / {step.name}")
        except StateError as exc:
            outcome = StepOutcome("failed", f"state store: could not journal the intent, "
                                            f"step not run: {exc}")
            return self._finish(ctx, play, step, events, watch, None, outcome, 0, start)
        crash_point("run.step_intent")
        with watch.lock:
            watch.entry = entry
        events.emit("host_step_start", host=ctx.host, play=play.name, step=step.name,
                    kind=step.kind, in_doubt=in_doubt)
        recheck = getattr(kind, "recheck", None)
        if in_doubt and recheck is not None:
            outcome = self._bounded(watch, ctx, step, lambda: self._recheck(
                recheck, kind, ctx, step))
            if outcome is not None:
                return self._finish(ctx, play, step, events, watch, entry, outcome, 0, start)
        outcome = StepOutcome("failed", "not run")
        attempts = 0
        for attempt in range(step.retries + 1):
            attempts = attempt + 1
            with watch.lock:
                watch.attempts = attempts
            outcome = self._bounded(watch, ctx, step, lambda: self._attempt(kind, ctx, step))
            if outcome.status not in FAILED or attempt == step.retries:
                break
            with watch.lock:
                if watch.abandoned:
                    return None
            events.emit("host_step_retry", host=ctx.host, play=play.name, step=step.name,
                        attempt=attempts, message=self.mask.text(outcome.message[:MESSAGE_MAX]))
            self.sleep(step.delay)
        return self._finish(ctx, play, step, events, watch, entry, outcome, attempts, start)

    def _bounded(self, watch: HostWatch, ctx: _HostCtx, step: Step,
                 call: Callable[[], Any]) -> Any:
        """Run ``call`` with the step's deadline set: on ``ctx`` (for kinds that bound their
        own calls) and on the watch (for the waiter, which gives up on kinds that do not)."""
        now = time.monotonic()
        ctx.deadline = now + step.timeout if step.timeout is not None else None
        with watch.lock:
            watch.until = now + (step.timeout if step.timeout is not None
                                 else DEFAULT_STEP_BOUND)
            watch.limit = step.timeout if step.timeout is not None else DEFAULT_STEP_BOUND
            watch.step_timeout = step.timeout is not None
        watch.on_change()
        try:
            outcome = call()
        finally:
            with watch.lock:
                watch.until = None
            ctx.deadline = None
        if outcome is not None and step.timeout is not None and \
                time.monotonic() > now + step.timeout:
            late = outcome.message or outcome.status
            return StepOutcome("failed", f"timed out after {step.timeout:g} s: {late}",
                               output=outcome.output, data=outcome.data)
        return outcome

    def _recheck(self, recheck: Any, kind: Any, ctx: _HostCtx, step: Step
                 ) -> StepOutcome | None:
        try:
            if recheck(ctx, self._args(kind, ctx, step)):
                return StepOutcome("ok", "in doubt after a killed run; re-checked: "
                                         "already done")
        except MetalchainError as exc:
            return StepOutcome("unreachable" if isinstance(exc, TransportError)
                               else "failed", f"re-check failed: {exc}")
        return None

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

    def _finish(self, ctx: _HostCtx, play: Play, step: Step, events: EventSink,
                watch: HostWatch, entry: int | None, outcome: StepOutcome, attempts: int,
                start: float) -> str | None:
        crash_point("run.step_done")
        outcome = masked(outcome, self.mask)
        duration = time.monotonic() - start
        with watch.lock:
            if watch.abandoned:
                return None
            if entry is not None:
                try:
                    self.store.journal_outcome(entry, outcome.status, {
                        "message": outcome.message[:MESSAGE_MAX],
                        "changes": outcome.changes[:CHANGES_MAX], "attempts": attempts})
                except StateError as exc:
                    outcome = StepOutcome("failed", self.mask.text(
                        f"state store: could not journal the outcome ({outcome.status}: "
                        f"{outcome.message[:MESSAGE_MAX]}): {exc}"), outcome.changes,
                        outcome.output, outcome.data)
            report = StepReport(play.name, step.name, outcome, attempts, duration)
            watch.report.add(report)
            watch.step = None
        self._emit_end(events, ctx.host, report)
        return outcome.status

    def _record(self, watch: HostWatch, events: EventSink, report: StepReport) -> None:
        with watch.lock:
            if watch.abandoned:
                return
            watch.report.add(report)
        self._emit_end(events, watch.host, report)

    @staticmethod
    def _emit_end(events: EventSink, host: str, r: StepReport) -> None:
        o = r.outcome
        events.emit("host_step_end", host=host, play=r.play, step=r.step, status=o.status,
                    message=o.message[:MESSAGE_MAX], changes=o.changes[:CHANGES_MAX],
                    attempts=r.attempts, duration=round(r.duration, 3),
                    output=o.output[-OUTPUT_MAX:])

    def give_up(self, play: Play, watch: HostWatch, events: EventSink, conns: Connections,
                message: str) -> None:
        """The waiter's side: record ``message`` as the host's failure and ignore whatever
        its thread does from now on. The thread cannot be killed; it is abandoned (a daemon
        thread) and the host's connection is closed under it, which ends most blocked calls."""
        with watch.lock:
            if watch.finished or watch.abandoned:
                return
            watch.abandoned = True
            play_name, step = watch.step or (play.name, "(not started)")
            outcome = StepOutcome("failed", message)
            if watch.entry is not None:
                try:
                    self.store.journal_outcome(watch.entry, "failed", {
                        "message": message, "changes": [], "attempts": watch.attempts})
                except StateError as exc:
                    outcome = StepOutcome("failed", self.mask.text(
                        f"{message}; state store: could not journal it: {exc}"))
            duration = time.monotonic() - watch.step_start if watch.step_start else 0.0
            report = StepReport(play_name, step, outcome, watch.attempts, duration)
            watch.report.add(report)
        if watch.started:
            conns.discard(watch.host)
        self._emit_end(events, watch.host, report)
