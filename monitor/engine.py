"""The remediation engine: incidents -> rule -> guards -> a ladder of verified actions.

The receiver writes every notification to the state store, answers, and then calls
:meth:`Remediator.on_ingested`, which only queues the incident ids and wakes a worker; there
is no polling loop (a slow backstop re-reads the store for what a wake-up may have missed).
A worker takes one incident at a time:

1. no rule matches -> ``unmatched``; its alert already resolved -> ``resolved``;
2. claim it: ``open -> acting`` by compare-and-set in the store, so two workers (or two
   deliveries of one alert) never both act on it;
3. for each step of the rule's ladder: gather a :class:`~monitor.guards.Situation` from the
   store (actions running and recent, incidents per target, group sizes), ask
   :func:`~monitor.guards.decide` (the kill switch, ``paused``, is read from the store at every
   decision), and record the decision in the incident's timeline and the audit log (actor
   ``remediation``, with timings). ``act``: record the action as running, call it, record
   how it ended, then poll the step's verification until it passes or its timeout; passed ->
   ``healed``; failed -> the next step **at once** (Alertmanager would not ask again before
   its ``repeat_interval``); the ladder exhausted -> ``escalated`` and the pager.
   ``dry_run`` / ``suppressed`` / ``escalate`` / ``needs_approval`` end the incident so
   (``needs_approval`` and flap stops as ``escalated``: a human must look), except that the
   concurrency and fleet-cap guards, and an action already running on the same host, only
   *defer* it: it waits, still ``acting``, until an action ends and is decided again; so does
   the lease guard (another run is changing the host), looked at again every few seconds.
   Before a ladder's next step the incident is read again: an alert resolved meanwhile ends
   it ``resolved`` instead of taking the heavier step. A first step that cycles a machine or
   a guest (:data:`LOOK_FIRST`) probes its verification once before it acts: a host that
   answers again (it only missed its probes while busy) is not cycled; its incident waits,
   ``acting``, for its alert to resolve (``look_again_after`` s: how long a stale alert takes
   to resolve) and ends ``healed`` with nothing done when it does, or when a second look
   still finds the host healthy; a host that fails the second look (the fault became real
   meanwhile: the alert, still firing, would not be sent again) is acted on. After
   a cooldown refusal the step's verification is asked first (polled no longer than the
   cooldown has left to run): the same failure seen by both
   paths (a pushed event, then the Prometheus alert) ends ``healed`` with nothing done; a
   host still failing waits, ``acting``, until its cooldown ends and is decided again then
   (a cooldown spaces actions on a host out, it never drops a fault). An incident that
   waited ends ``resolved``, with nothing done, if its alert resolved meanwhile.
   Incidents of one host a few seconds apart count once for the flap guard.

The decision and the start of the action are made under one lock, so the concurrency and
fleet-cap guards count every action this engine runs (they read the store, where a
started action is ``running``).

A restarted engine (:meth:`Remediator.pickup`, called by :meth:`start`) marks actions a dead
process left ``running`` as ``interrupted`` and continues every ``open`` and ``acting``
incident. An interrupted step is **verified first** — the action may have done its job before
the process died — and run again only if that verification fails (once: cut short twice, the
ladder goes on), so a SIGKILL between the answer to Alertmanager and the end of the action
still ends with exactly one action on the host when it had taken effect.

Timings: every decision records ``decided_ms`` and ``since_received``; actions their seconds;
verifications their attempts and seconds; the end ``since_received``. ``observers`` get the
same as ``(kind, detail)`` for metrics. The engine's own part of a heal is milliseconds (a
few store writes): nothing sleeps between steps, and verification polls start at 50 ms.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from inventory.errors import MetalchainError
from inventory.state.incidents import IncidentRecord, Ingested
from inventory.state.leases import HELD, Owner, lease_claim, owner_alive
from monitor.actions import (
    ActionCall,
    Actions,
    Verifiers,
    VerifyCall,
    VerifyResult,
    call_action,
    call_verifier,
)
from monitor.guards import (
    ACT,
    DRY_RUN,
    ESCALATE,
    NEEDS_APPROVAL,
    ActionRequest,
    Decision,
    PastAction,
    Situation,
    decide,
)
from monitor.rules import MissingValue, Pager, Rule, RuleSet, RuleStep, substitute
from runtime.crashpoint import crash_point
from runtime.pidfile import process_stat, same_process

log = logging.getLogger(__name__)

ACTOR = "remediation"
#: Guards whose refusal only makes an incident wait: for a free slot (decided again when an
#: action ends), or for another run's lease on the host (looked at every LEASE_RECHECK s).
DEFER_GUARDS = frozenset({"concurrency", "fleet_cap", "lease"})
LEASE_RECHECK = 5.0
#: First steps whose verification is asked once before they act (they cycle a machine or a
#: guest: not done on a signal that is already stale), and that probe's longest wait.
LOOK_FIRST = frozenset({"power_cycle", "reprovision", "restart_vm"})
LOOK_FIRST_TIMEOUT = 10.0
#: Default seconds a host found healthy by that look waits for its alert to resolve before it
#: is looked at again (serve derives it from the monitor's intervals: stale_alert_seconds).
LOOK_AGAIN_AFTER = 60.0
#: Seconds between two reads of the store for incidents a wake-up missed.
BACKSTOP_INTERVAL = 60.0
#: First and longest pause between two probes of a step's verification.
VERIFY_FIRST_PAUSE = 0.05
VERIFY_MAX_PAUSE = 1.0

#: Incidents of one target starting this close together are one failure for the flap guard
#: (the pushed event and the Prometheus alert of one unit failure, a few seconds apart).
FLAP_MERGE = 10.0

Pages = Callable[[Pager, Mapping[str, Any]], None]


class RemediationBusy(MetalchainError):
    """Another live remediation engine works on this state store (its pickup would take
    over that engine's running actions)."""


def merged_starts(times: Iterable[float], within: float = FLAP_MERGE) -> list[float]:
    """Start times with those less than ``within`` seconds after the previous kept one
    dropped.

    >>> merged_starts([100.0, 101.5, 103.0, 200.0])
    [100.0, 200.0]
    """
    kept: list[float] = []
    for t in sorted(times):
        if not kept or t - kept[-1] >= within:
            kept.append(t)
    return kept


def post_page(pager: Pager, doc: Mapping[str, Any]) -> None:
    """POST ``doc`` as JSON to the pager's URL (raises on an error or a non-2xx answer)."""
    if not pager.url.startswith(("http://", "https://")):
        raise ValueError("the pager's URL is not http(s)")
    body = json.dumps(doc, default=str).encode("utf-8")
    req = urllib.request.Request(pager.url, data=body, method="POST",  # noqa: S310 - checked
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=pager.timeout) as resp:  # noqa: S310 - checked
        if not 200 <= resp.status < 300:
            raise OSError(f"pager answered {resp.status}")


@dataclass(frozen=True)
class _Outcome:
    """How one step ended for the ladder: ``next`` step, ``done`` (terminal), ``defer``,
    ``stopped`` (the engine is shutting down; the incident stays ``acting``)."""

    kind: str


_NEXT, _DONE, _DEFER, _STOPPED = (_Outcome(k) for k in ("next", "done", "defer", "stopped"))


class Remediator:
    """See the module docstring. ``group_sizes_fn()``: group -> number of hosts;
    ``groups_of_fn(target)``: the groups of a host (both for the fleet cap)."""

    def __init__(self, store: Any, rules: RuleSet, actions: Actions, verifiers: Verifiers,
                 *, clock: Callable[[], float] = time.time,
                 group_sizes_fn: Callable[[], Mapping[str, int]] | None = None,
                 groups_of_fn: Callable[[str], Iterable[str]] | None = None,
                 workers: int = 4, backstop: float = BACKSTOP_INTERVAL,
                 pages: Pages | None = None, flap_merge: float = FLAP_MERGE,
                 look_again_after: float = LOOK_AGAIN_AFTER) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.store = store
        self.rules = rules
        self.actions = actions
        self.verifiers = verifiers
        self.clock = clock
        self.group_sizes_fn = group_sizes_fn or dict
        self.groups_of_fn = groups_of_fn or (lambda _t: ())
        self.workers = workers
        self.backstop = backstop
        self.pages = pages or post_page
        self.flap_merge = flap_merge
        self.look_again_after = look_again_after
        self._cond = threading.Condition()
        self._queue: deque[int] = deque()
        self._queued: set[int] = set()
        self._busy: set[int] = set()
        self._again: set[int] = set()
        self._owned: set[int] = set()      # acting incidents this engine continues
        self._deferred: dict[int, None] = {}   # ... waiting for a free slot, oldest first
        self._defer_logged: dict[int, int] = {}   # incident -> step whose wait is recorded
        self._wakes: dict[int, float] = {}  # ... waiting out a cooldown or a lease: wake-up
        self._looking: set[int] = set()    # ... found healthy, waiting for their alert to end
        self._wake = threading.Event()     # the backstop's timer: a wake-up was added
        self._running = 0                  # actions this engine has running
        self._dups: set[int] = set()
        self._decide_lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._picked_up = False
        #: Called as ``observer(kind, detail)`` for every ``decision``, ``action`` (ended,
        #: with its outcome and seconds) and ``ended`` incident (with its state): metrics.
        self.observers: list[Callable[[str, Mapping[str, Any]], None]] = []

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Pick up what a previous process left, then start the workers and the backstop.
        :class:`RemediationBusy` if another engine of this machine still runs on the store."""
        if self._threads:
            return
        self._claim()
        self.pickup()
        for n in range(self.workers):
            t = threading.Thread(target=self._work, name=f"remediation-{n}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._backstop, name="remediation-backstop", daemon=True)
        t.start()
        self._threads.append(t)

    def _claim(self) -> None:
        """Record this process as the store's engine, unless a live one of this machine is
        recorded (an engine on another machine cannot be checked from here: one engine per
        site is the rule, ``metalchain serve`` keeps to it)."""
        stat = process_stat(os.getpid())
        me = {"host": socket.gethostname(), "pid": os.getpid(),
              "start": stat.start if stat else 0}
        prior = self.store.remediation_setting("engine")
        if isinstance(prior, dict) and prior.get("host") == me["host"] \
                and prior.get("pid") != me["pid"]:
            try:
                pid, start = int(prior["pid"]), int(prior["start"])
            except (KeyError, TypeError, ValueError):
                pid, start = 0, 0
            if pid and same_process(pid, start):
                raise RemediationBusy(f"a remediation engine already runs on this state store "
                                      f"(pid {pid} on {me['host']}); stop it first")
        if prior != me:
            self.store.set_remediation_setting("engine", me, actor=ACTOR)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the workers (actions in progress are told through ``ActionCall.stop``; one
        that ends because of it is recorded ``interrupted`` and picked up next start).
        Returns whether every thread ended within ``timeout``."""
        self._stopping.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t for t in self._threads if t.is_alive()]
        self._threads = alive
        if not alive:
            self._release_claim()
        return not alive

    def _release_claim(self) -> None:
        try:
            mine = self.store.remediation_setting("engine")
            if isinstance(mine, dict) and mine.get("pid") == os.getpid() \
                    and mine.get("host") == socket.gethostname():
                self.store.set_remediation_setting("engine", None, actor=ACTOR)
        except MetalchainError:   # the store is gone: the next start sees a dead pid
            log.warning("could not release the remediation engine's record", exc_info=True)

    def pickup(self) -> int:
        """Take over what a dead process left: its ``running`` actions become
        ``interrupted``, its ``acting`` incidents are continued (an interrupted step verified
        first), its ``open`` ones queued. Returns how many incidents were queued."""
        if self._picked_up:
            return 0
        self._picked_up = True
        interrupted = self.store.interrupt_running_actions(
            "the controller stopped while it ran")
        # Their runs' host leases too: an interrupted action whose effect is verified below
        # is never run again, so no run of this machine would take those leases over.
        self.store.release_orphaned_leases(ACTOR)
        by_incident: dict[int, list[int]] = {}
        for act in interrupted:
            by_incident.setdefault(act.incident_id, []).append(act.id)
        n = 0
        for inc in self.store.unfinished_incidents():
            if inc.state == "acting":
                detail = {"step": inc.step, "interrupted_actions": by_incident.get(inc.id, [])}
                self.store.add_incident_event(inc.id, "picked_up", detail)
                self.store.record_audit(ACTOR, "remediation picked_up", inc.target,
                                        {"incident": inc.id, **detail})
                with self._cond:
                    self._owned.add(inc.id)
            self._push(inc.id)
            n += 1
        return n

    def on_ingested(self, items: Iterable[Ingested]) -> None:
        """What the receiver calls after a notification is committed (and answered)."""
        for item in items:
            if item.resolved:
                # The store ended it if it was open; a running ladder verifies. One found
                # healthy and waiting for exactly this is ended now, not at its wake-up.
                with self._cond:
                    looking = item.incident_id in self._looking
                    if looking:
                        self._looking.discard(item.incident_id)
                        self._wakes.pop(item.incident_id, None)
                if looking:
                    self._push(item.incident_id)
                continue
            if not item.new:
                with self._cond:
                    self._dups.add(item.incident_id)
            self._push(item.incident_id)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or being worked on (tests, benchmarks, shutdown)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def _notify(self, kind: str, detail: Mapping[str, Any]) -> None:
        for observer in list(self.observers):
            try:
                observer(kind, detail)
            except Exception:   # an observer's bug must not stop remediation
                log.exception("remediation observer failed")

    # -- the queue ---------------------------------------------------------------------------

    def _push(self, incident_id: int) -> None:
        with self._cond:
            if incident_id in self._busy:
                self._again.add(incident_id)
            elif incident_id not in self._queued:
                self._queued.add(incident_id)
                self._queue.append(incident_id)
                self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if self._stopping.is_set():
                    return
                incident_id = self._queue.popleft()
                self._queued.discard(incident_id)
                self._busy.add(incident_id)
            try:
                self.process(incident_id)
            except Exception:   # one incident's bug must not end the worker: logged, next
                log.exception("remediation of incident %s failed", incident_id)
            finally:
                with self._cond:
                    self._busy.discard(incident_id)
                    again = incident_id in self._again
                    self._again.discard(incident_id)
                    self._cond.notify_all()
                if again and not self._stopping.is_set():
                    self._push(incident_id)

    def _backstop(self) -> None:
        """Every ``backstop`` seconds: the waiting incidents decided again, the open ones a
        wake-up missed queued. In between: incidents whose cooldown wait is over, on time."""
        swept = time.monotonic()
        while not self._stopping.is_set():
            now = time.monotonic()
            with self._cond:
                due = [i for i, at in self._wakes.items() if at <= now]
                for incident_id in due:
                    del self._wakes[incident_id]
                nearest = min(self._wakes.values(), default=None)
            for incident_id in due:
                self._push(incident_id)
            if now - swept >= self.backstop:
                swept = now
                try:
                    self._release_deferred()
                    for inc in self.store.unfinished_incidents():
                        if inc.state == "open":
                            self._push(inc.id)
                except Exception:
                    log.exception("remediation backstop failed")
            pause = swept + self.backstop - now
            if nearest is not None:
                pause = min(pause, nearest - now)
            self._wake.wait(max(0.0, pause))
            self._wake.clear()

    def _release_deferred(self, limit: int | None = None) -> None:
        """Queue the oldest waiting incidents again: ``limit`` of them (about as many as
        there are free slots, so a storm is not decided again in full at every action's
        end), or all (the backstop)."""
        with self._decide_lock, self._cond:
            waiting = list(self._deferred)[:limit] if limit is not None \
                else list(self._deferred)
            for incident_id in waiting:
                del self._deferred[incident_id]
        for incident_id in waiting:
            self._push(incident_id)

    # -- one incident ------------------------------------------------------------------------

    def process(self, incident_id: int) -> None:
        """Work on one incident now, in this thread (what a worker does with a queued id)."""
        inc = self.store.incident(incident_id)
        if inc is None:
            return
        with self._cond:
            duplicate = incident_id in self._dups
            self._dups.discard(incident_id)
            owned = incident_id in self._owned
            if inc.state == "acting" and owned:
                self._owned.discard(incident_id)
                self._looking.discard(incident_id)
        if inc.state == "open":
            self._begin(inc)
        elif inc.state == "acting" and owned:
            rule = self.rules.rule(inc.rule)
            if rule is None:
                self._end(inc, "escalated", "escalated",
                          f"its rule '{inc.rule}' is no longer in the rules")
                return
            if rule.escalate:
                self._page_only(inc, rule)
                return
            # Continued (picked up, or waited for a slot): an action this step already ran
            # (or that was cut short) is looked at, and verified, before anything runs again.
            self._ladder(inc, rule, inc.step, resume=True)
        elif duplicate:
            self.store.record_audit(ACTOR, "remediation deduplicated", inc.target,
                                    {"incident": inc.id, "state": inc.state,
                                     "deliveries": inc.deliveries})

    def _labels(self, inc: IncidentRecord) -> dict[str, str]:
        return {**inc.labels, "alertname": inc.alertname}

    def _begin(self, inc: IncidentRecord) -> None:
        since = round(time.time() - inc.created_at, 3)
        if inc.alert_status == "resolved":
            self.store.update_incident(inc.id, event="nothing_to_do", state="resolved",
                                       detail={"reason": "its alert resolved"},
                                       expect=["open"])
            return
        rule = self.rules.match(self._labels(inc))
        if rule is None:
            if self.store.update_incident(inc.id, event="unmatched", state="unmatched",
                                          detail={"since_received": since}, expect=["open"]):
                self.store.record_audit(ACTOR, "remediation unmatched", inc.target,
                                        {"incident": inc.id, "alertname": inc.alertname})
            return
        if not self.store.update_incident(inc.id, event="claimed", state="acting",
                                          rule=rule.name, step=0, expect=["open"],
                                          detail={"rule": rule.name,
                                                  "since_received": since}):
            return   # another worker (or process) has it
        crash_point("serve.claimed")
        if rule.escalate:
            self._page_only(inc, rule)
            return
        self._ladder(inc, rule, 0, resume=False)

    def _page_only(self, inc: IncidentRecord, rule: Rule) -> None:
        """A rule with ``escalate:`` instead of steps: no guard to ask, no action; the
        decision is recorded like any other, then the incident goes to a human."""
        detail = {"step": None, "action": None, "verdict": ESCALATE, "guard": "rule",
                  "reason": rule.escalate, "deferred": False, "decided_ms": 0.0,
                  "since_received": round(time.time() - inc.created_at, 3)}
        self.store.add_incident_event(inc.id, "decision", detail)
        self.store.record_audit(ACTOR, f"remediation {ESCALATE}", inc.target,
                                {"incident": inc.id, **detail})
        self._notify("decision", detail)
        self._end(inc, "escalated", "escalated", rule.escalate, guard="rule")

    def _ladder(self, inc: IncidentRecord, rule: Rule, first: int, *, resume: bool) -> None:
        for index in range(first, len(rule.steps)):
            if index > first:
                fresh = self.store.incident(inc.id)
                if fresh is not None and fresh.alert_status == "resolved":
                    # The source says healthy while our verification said not (a slow host,
                    # a short timeout): the heavier next step is not taken on a resolved alert.
                    self._end(inc, "resolved", "nothing_to_do", f"its alert resolved; step "
                              f"{index} ({rule.steps[index].action}) not taken", step=index)
                    return
            outcome = self._step(inc, rule, index, resume=resume and index == first)
            if outcome is not _NEXT:
                return
        self._end(inc, "escalated", "escalated",
                  f"every step of rule '{rule.name}' failed: a human must look",
                  step=len(rule.steps))

    def _step(self, inc: IncidentRecord, rule: Rule, index: int, *, resume: bool) -> _Outcome:
        step = rule.steps[index]
        labels = self._labels(inc)
        try:
            args = substitute(step.args, inc.target, labels)
            vargs = substitute(step.verify.args, inc.target, labels) \
                if step.verify is not None and step.verify.args is not None else args
        except MissingValue as exc:
            return self._step_failed(inc, index, step, f"cannot fill in its arguments: {exc}")
        seen: str | None = None   # this step's earlier look found the host healthy
        if resume:
            prior = [a for a in self.store.actions(incident_id=inc.id) if a.step == index]
            last = prior[-1] if prior else None
            if last is not None and last.outcome == "failed":
                return self._step_failed(inc, index, step, "its action had failed")
            if last is not None and step.verify is None:
                if last.outcome == "ok":
                    return self._healed(inc, index, step, None)
                return self._step_failed(inc, index, step, "its action was cut short and the "
                                                           "step has no verification")
            if last is not None:
                checked = self._verify(inc, index, step, vargs, after="pickup")
                if checked is not None and checked.ok:
                    return self._healed(inc, index, step, checked)
                if self._stopping.is_set():
                    return _STOPPED
                why = checked.message if checked is not None else ""
                if last.outcome == "ok":
                    return self._step_failed(inc, index, step, f"verification failed: {why}")
                if sum(a.outcome == "interrupted" for a in prior) > 1:
                    return self._step_failed(inc, index, step, "its action was cut short "
                                                               f"twice; not in effect: {why}")
                # cut short once and not in effect: run it again (below)
            if not prior and step.action in LOOK_FIRST:
                seen = self._looked_healthy(inc.id, index)
            if not prior and inc.alert_status == "resolved":
                if seen is not None:
                    return self._end(inc, "healed", "healed", f"healthy when looked at "
                                     f"before {step.action}, and its alert resolved: nothing "
                                     f"done ({seen})", step=index, action=None, verified=True)
                # It waited (a slot, a cooldown, a restart) and its alert ended meanwhile.
                return self._end(inc, "resolved", "nothing_to_do", "its alert resolved while "
                                 "it waited; nothing done", step=index)
        if index == 0 and step.action in LOOK_FIRST and step.verify is not None \
                and not (resume and prior):
            # A disruptive first step on a signal that may already be stale (a slow host
            # missed its probes, the alert's resolution not delivered yet): look once first.
            again = seen is not None
            looked = self._verify(inc, index, step, vargs, after="again" if again else "before",
                                  limit=min(step.verify.timeout, LOOK_FIRST_TIMEOUT), once=True)
            if looked is not None and looked.ok:
                if not again and self.look_again_after > 0:
                    return self._wait_look(inc, index, step, looked)
                return self._end(inc, "healed", "healed", "healthy when looked at "
                                 + ("again, its alert still firing" if again
                                    else f"before {step.action}")
                                 + f", nothing done: {looked.message}",
                                 step=index, action=None, verified=True)
            if self._stopping.is_set():
                return _STOPPED
        decision, action_id, deferred = self._decide(inc, index, step, args)
        if decision.verdict == ACT and action_id is not None:
            return self._act(inc, index, step, args, vargs, action_id)
        if decision.verdict == DRY_RUN:
            return self._end(inc, "dry_run", "dry_run", decision.reason)
        if deferred:
            return _DEFER
        if decision.guard == "cooldown":
            # The host was acted on moments ago (often: the same failure seen by the other
            # path, pushed event and Prometheus): if it is healthy, nothing is left to do.
            # Polled no longer than the cooldown lasts (it is decided again when it ends):
            # a step's verification may wait minutes for a host that is really down.
            left = self._cooldown_until(inc, self.clock()) - self.clock()
            checked = self._verify(inc, index, step, vargs, after="cooldown",
                                   limit=min(step.verify.timeout, max(0.0, left))) \
                if step.verify is not None else None
            if checked is not None and checked.ok:
                return self._end(inc, "healed", "healed", f"already healthy, nothing done "
                                 f"({decision.reason}): {checked.message}", step=index,
                                 action=None, verified=True)
            if self._stopping.is_set():
                return _STOPPED
            # Still failing: a cooldown spaces actions on a host out, it does not drop the
            # fault (Alertmanager would not ask again before its repeat_interval).
            return self._wait_cooldown(inc, index, checked)
        if decision.verdict in (ESCALATE, NEEDS_APPROVAL):
            return self._end(inc, "escalated", "escalated", decision.reason,
                             guard=decision.guard)
        return self._end(inc, "suppressed", "suppressed", decision.reason,
                         guard=decision.guard)

    def _wait_cooldown(self, inc: IncidentRecord, index: int,
                       checked: VerifyResult | None) -> _Outcome:
        """The incident waits, still ``acting``, until its host's cooldown ends, and is then
        decided again (or ends ``resolved`` if its alert resolved meanwhile)."""
        now = self.clock()
        until = self._cooldown_until(inc, now)
        detail = {"step": index, "reason": "still failing: decided again when the host's "
                                           "cooldown ends", "until": round(until, 3),
                  "seconds": round(max(0.0, until - now), 3),
                  "since_received": round(time.time() - inc.created_at, 3)}
        if checked is not None:
            detail["verification"] = checked.message
        self.store.add_incident_event(inc.id, "waiting", detail)
        with self._cond:
            self._owned.add(inc.id)
            self._wakes[inc.id] = time.monotonic() + max(0.0, until - now)
        self._wake.set()
        return _DEFER

    def _cooldown_until(self, inc: IncidentRecord, now: float) -> float:
        """When the cooldown of ``inc``'s host ends (the latest action on it, by another
        incident, plus the policy's cooldown); ``now`` if no action is that recent (the
        cooldown ended, e.g. while its verification was polled: not a whole cooldown more)."""
        starts = [a.started_at for a in self._situation(inc, self.rules.policy, now).actions
                  if a.target == inc.target]
        return max(starts) + self.rules.policy.cooldown if starts else now

    def _wait_look(self, inc: IncidentRecord, index: int, step: RuleStep,
                   looked: VerifyResult) -> _Outcome:
        """A host found healthy before a disruptive first step: the incident waits,
        ``acting``, for its alert to resolve (ended at once when the resolution arrives) and
        is looked at again after ``look_again_after`` s if it does not."""
        wait = self.look_again_after
        self.store.add_incident_event(inc.id, "waiting", {
            "step": index, "reason": f"healthy when looked at before {step.action}: waiting "
                                     f"for its alert to resolve, looked at again in {wait:g} s",
            "seconds": round(wait, 3), "verification": looked.message,
            "since_received": round(time.time() - inc.created_at, 3)})
        with self._cond:
            self._owned.add(inc.id)
            self._looking.add(inc.id)
            self._wakes[inc.id] = time.monotonic() + wait
        self._wake.set()
        return _DEFER

    def _looked_healthy(self, incident_id: int, index: int) -> str | None:
        """The message of this step's look before it acted, if that look found the host
        healthy (the incident then waited for its alert to resolve); else None."""
        for event in self.store.incident_timeline(incident_id):
            d = event.get("detail") or {}
            if event.get("kind") == "verified" and d.get("after") == "before" \
                    and d.get("step") == index:
                return str(d.get("message", ""))
        return None

    def _situation(self, inc: IncidentRecord, policy: Any, now: float) -> Situation:
        horizon = max(policy.cooldown, policy.rate_window)
        # The incident's own earlier steps are one remediation, not a second one on the host:
        # they count for no guard (else the cooldown would stop every ladder at step 2).
        past = [PastAction(a.target, a.action, a.started_at, a.ended_at, a.groups)
                for a in self.store.actions(since=now - horizon, running=True)
                if a.incident_id != inc.id]
        starts = self.store.incident_starts(now - policy.flap_window)
        # Leases held by a live run (remediation's own runs are its running actions above).
        nobody = Owner.this_process("", "")
        changing = {lease.host: lease.describe() for lease in self.store.list_leases()
                    if lease_claim(lease, nobody, time.time(), owner_alive) == HELD}
        return Situation(actions=past,
                         incidents={t: merged_starts(v, self.flap_merge)
                                    for t, v in starts.items()},
                         group_sizes=dict(self.group_sizes_fn()), changing=changing)

    def _decide(self, inc: IncidentRecord, index: int, step: RuleStep,
                args: Mapping[str, Any]) -> tuple[Decision, int | None, bool]:
        """The guards' decision, recorded; the action's id when it acts (started under the
        same lock); whether the incident waits (deferred) instead of ending."""
        t0 = time.monotonic()
        with self._decide_lock:
            paused = bool(self.store.remediation_setting("paused", False))
            dry = bool(self.store.remediation_setting("dry_run", False))
            policy = replace(self.rules.policy, kill_switch=paused,
                             dry_run=self.rules.policy.dry_run or dry)
            now = self.clock()
            situation = self._situation(inc, policy, now)
            groups = tuple(self.groups_of_fn(inc.target))
            decision = decide(ActionRequest(inc.target, step.action, groups,
                                            approved=step.allow), situation, policy, now)
            # A slot that frees itself (concurrency, fleet cap, an action running on this very
            # host) is waited for: the incident is decided again when an action ends.
            busy = any(a.running and a.target == inc.target for a in situation.actions)
            deferred = decision.guard in DEFER_GUARDS or (decision.guard == "cooldown"
                                                         and busy)
            detail = {"step": index, "action": step.action, "verdict": decision.verdict,
                      "guard": decision.guard or None, "reason": decision.reason,
                      "deferred": deferred,
                      "decided_ms": round((time.monotonic() - t0) * 1000, 2),
                      "since_received": round(time.time() - inc.created_at, 3)}
            # A wait is recorded once per step, not at every retry (a storm would write
            # each waiting incident's refusal again at every action's end).
            if not (deferred and self._defer_logged.get(inc.id) == index):
                self.store.add_incident_event(inc.id, "decision", detail)
                self.store.record_audit(ACTOR, f"remediation {decision.verdict}", inc.target,
                                        {"incident": inc.id, **detail})
                self._notify("decision", detail)
            if deferred:
                self._defer_logged[inc.id] = index
            else:
                self._defer_logged.pop(inc.id, None)
            action_id = None
            if decision.verdict == ACT:
                action_id = self.store.start_action(inc.id, inc.target, step.action, index,
                                                    groups, {"args": dict(args)})
                self._running += 1
            elif deferred:
                with self._cond:
                    self._owned.add(inc.id)
                    if decision.guard == "lease":
                        self._wakes[inc.id] = time.monotonic() + LEASE_RECHECK
                    else:
                        self._deferred[inc.id] = None
                self._wake.set()
        return decision, action_id, deferred

    def _act(self, inc: IncidentRecord, index: int, step: RuleStep, args: Mapping[str, Any],
             vargs: Mapping[str, Any], action_id: int) -> _Outcome:
        crash_point("serve.action_started")
        call = ActionCall(target=inc.target, args=dict(args), incident_id=inc.id,
                          timeout=step.timeout, stop=self._stopping)
        t0 = time.monotonic()
        result = call_action(self.actions, step.action, call)
        crash_point("serve.action_done")
        stopped = self._stopping.is_set() and not result.ok
        outcome = "interrupted" if stopped else ("ok" if result.ok else "failed")
        self.store.finish_action(action_id, outcome, run_uid=result.run_uid,
                                 detail={"message": result.message})
        with self._decide_lock:
            self._running -= 1
            free = max(1, self.rules.policy.max_concurrent - self._running)
        self._release_deferred(free)
        self._notify("action", {"action": step.action, "outcome": outcome,
                                "seconds": time.monotonic() - t0})
        if stopped:
            return _STOPPED
        if not result.ok:
            return self._step_failed(inc, index, step, f"{step.action} failed: "
                                                       f"{result.message}")
        checked = self._verify(inc, index, step, vargs, after="action")
        if checked is None or checked.ok:
            return self._healed(inc, index, step, checked)
        if self._stopping.is_set():
            return _STOPPED
        return self._step_failed(inc, index, step, f"verification failed: {checked.message}")

    def _verify(self, inc: IncidentRecord, index: int, step: RuleStep,
                args: Mapping[str, Any], *, after: str, limit: float | None = None,
                once: bool = False) -> VerifyResult | None:
        """Poll the step's verification until it passes or its timeout (``limit`` if given;
        ``once``: a single probe). None: the step has none. Records one ``verified`` or
        ``verify_failed`` event."""
        if step.verify is None:
            return None
        kind = step.verify.kind
        limit = step.verify.timeout if limit is None else limit
        t0 = time.monotonic()
        deadline = t0 + limit
        pause = VERIFY_FIRST_PAUSE
        attempts = 0
        while True:
            left = deadline - time.monotonic()
            result = call_verifier(self.verifiers, kind, VerifyCall(
                target=inc.target, args=dict(args), labels=self._labels(inc),
                timeout=max(left, 1.0)))
            attempts += 1
            left = deadline - time.monotonic()
            if result.ok or once or left <= 0 or self._stopping.is_set():
                break
            if self._stopping.wait(min(pause, left)):
                break
            pause = min(pause * 2, VERIFY_MAX_PAUSE)
        self.store.add_incident_event(
            inc.id, "verified" if result.ok else "verify_failed",
            {"step": index, "kind": kind, "after": after, "message": result.message,
             "attempts": attempts, "seconds": round(time.monotonic() - t0, 3),
             "timeout": limit})
        return result

    # -- endings -----------------------------------------------------------------------------

    def _step_failed(self, inc: IncidentRecord, index: int, step: RuleStep,
                     reason: str) -> _Outcome:
        self.store.update_incident(inc.id, event="step_failed", step=index + 1,
                                   detail={"step": index, "action": step.action,
                                           "reason": reason}, expect=["acting"])
        self.store.record_audit(ACTOR, "remediation step_failed", inc.target,
                                {"incident": inc.id, "step": index, "action": step.action,
                                 "reason": reason})
        return _NEXT

    def _healed(self, inc: IncidentRecord, index: int, step: RuleStep,
                checked: VerifyResult | None) -> _Outcome:
        how = checked.message if checked is not None else "no verification configured"
        return self._end(inc, "healed", "healed", how, step=index, action=step.action,
                         verified=checked is not None)

    def _end(self, inc: IncidentRecord, state: str, event: str, reason: str,
             **extra: Any) -> _Outcome:
        detail = {"reason": reason, **extra,
                  "since_received": round(time.time() - inc.created_at, 3)}
        if not self.store.update_incident(inc.id, event=event, state=state, detail=detail,
                                          expect=["acting", "open"]):
            return _DONE
        self.store.record_audit(ACTOR, f"remediation {event}", inc.target,
                                {"incident": inc.id, **detail})
        self._notify("ended", {"state": state, **detail})
        if state == "escalated":
            self._page(inc, reason)
        return _DONE

    def _page(self, inc: IncidentRecord, reason: str) -> None:
        pager = self.rules.pager
        if pager is None:
            return
        doc = {"incident": inc.id, "target": inc.target, "alertname": inc.alertname,
               "state": "escalated", "reason": reason, "labels": inc.labels}
        try:
            self.pages(pager, doc)
        except Exception as exc:  # noqa: BLE001 - a pager down must not stop remediation
            log.warning("paging for incident %s failed: %s", inc.id, exc)
            self.store.add_incident_event(inc.id, "page_failed", {"error": str(exc)[:300]})
            return
        self.store.add_incident_event(inc.id, "paged", {})   # the URL may hold a token
