"""The runner: steps over host selections, in parallel, journaled, resumable.

The runner walks the plays and their batches (``serial``), stops at ``max_fail_percentage``
and merges per-host results; the hosts of a batch run on a :class:`orchestrate.backend.Backend`
(in-process threads by default). Each host runs the play's steps in order over one connection
and stops at its first failed step. Nothing aborts the run but ``max_fail_percentage``.
Before each host-step the journal gets an intent, after it the outcome, so ``--resume RUN``
can skip what is known done and re-check what is in doubt.

The runner keeps no per-run state on the instance: one runner may serve runs concurrently.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from inventory.model import Inventory
from inventory.select import select_play_hosts
from orchestrate.backend import DEFAULT_PARALLELISM, Backend
from orchestrate.hostrun import STEP_STRIDE, journal_index
from orchestrate.playbook import Playbook, batches
from orchestrate.reports import (
    DONE,
    FAILED,
    BatchJob,
    EventSink,
    HostReport,
    PlayRun,
    RunReport,
    StepReport,
)
from orchestrate.stop import Stop, announce
from runtime.text import plural

__all__ = ["DEFAULT_PARALLELISM", "DONE", "FAILED", "STEP_STRIDE", "HostReport", "RunReport",
           "Runner", "StepReport", "failed_set", "journal_index", "last_failed_hosts",
           "resume_state", "run_outcome"]

#: Run kinds that do not count for ``@failed`` (they change no configuration).
NOT_FOR_FAILED = ("power", "verify")


class Runner:
    def __init__(self, inventory: Inventory, backend: Backend) -> None:
        self.inventory = inventory
        self.backend = backend

    def run(self, playbook: Playbook, *, events: EventSink, run_uid: str,
            limit: str | None = None, extra_vars: Mapping[str, Any] | None = None,
            check: bool = False, named: Mapping[str, Sequence[str]] | None = None,
            done: Mapping[tuple[str, int], str] | None = None,
            facts: Mapping[str, Mapping[str, Any]] | None = None,
            stop: Stop | None = None, exclude: Sequence[str] = ()) -> RunReport:
        """Run every play. ``done`` maps (host, journal index) -> outcome of a resumed run;
        ``exclude``: hosts not to run (held by another run), though selected.
        Once ``stop`` is requested, nothing new starts: the hosts never reached are listed
        in ``not_run``, those stopped between steps in ``incomplete``."""
        stop = stop or Stop()
        start = time.monotonic()
        report = RunReport(uid=run_uid, check=check)
        job = BatchJob(run_uid=run_uid, extra_vars=dict(extra_vars or {}), check=check,
                       done=dict(done or {}), facts=dict(facts or {}))
        events.emit("run_start", playbook=str(playbook.path), limit=limit, check=check,
                    resumed=bool(done))
        excluded: set[str] = set(exclude)
        try:
            for play in playbook.plays:
                hosts = [h for h in select_play_hosts(self.inventory, play.hosts, limit, named,
                                                      job.facts) if h not in excluded]
                if stop.stopping:
                    announce(stop, events, {})
                    _not_reached(report, hosts)
                    continue
                events.emit("play_start", play=play.name, hosts=hosts)
                played = PlayRun(play.index, play.name, list(hosts))
                report.plays.append(played)
                play_start = time.monotonic()
                for n, batch in enumerate(batches(hosts, play.serial)):
                    if report.stopped_reason:
                        report.not_run.extend(h for h in batch if h not in report.not_run)
                        continue
                    if stop.stopping:
                        announce(stop, events, {})
                        _not_reached(report, batch)
                        continue
                    events.emit("batch_start", play=play.name, batch=n + 1, hosts=batch)
                    results = self.backend.run_batch(play, batch, job, events, stop)
                    failed = [h for h, r in results.items() if r.status in FAILED]
                    for h, r in results.items():
                        if r.stopped and not r.steps:
                            _not_reached(report, [h])
                            continue
                        merged = report.hosts.setdefault(h, HostReport(h))
                        for s in r.steps:
                            merged.add(s)
                        if r.stopped:
                            _not_reached(report, [h])
                    excluded.update(failed)
                    pct = 100.0 * len(failed) / len(batch) if batch else 0.0
                    events.emit("batch_end", play=play.name, batch=n + 1, failed=failed,
                                failed_percentage=round(pct, 1))
                    if play.max_fail_percentage is not None and pct > play.max_fail_percentage:
                        report.stopped_reason = (
                            f"play '{play.name}': batch {n + 1} failed on {len(failed)} of "
                            f"{plural(len(batch), 'host')} ({pct:.0f}% > max_fail_percentage "
                            f"{play.max_fail_percentage:g}%); later batches not run")
                played.seconds = time.monotonic() - play_start
                events.emit("play_end", play=play.name)
                if report.stopped_reason:
                    break
        finally:
            self.backend.end_run(run_uid)
            report.duration = time.monotonic() - start
            if stop.stopping:
                report.interrupted = "aborted" if stop.aborting else "interrupted"
                # a host stopped in play 1 that a later play would have run is incomplete
                report.incomplete.extend(h for h in report.not_run if h in report.hosts
                                         and h not in report.incomplete)
                report.not_run[:] = [h for h in report.not_run if h not in report.hosts]
            events.emit("run_end", counts=report.counts(), exit_code=report.exit_code,
                        stopped=report.stopped_reason or None,
                        interrupted=report.interrupted or None, not_run=report.not_run,
                        incomplete=report.incomplete)
        return report


def _not_reached(report: RunReport, hosts: Sequence[str]) -> None:
    """Record ``hosts`` as not (fully) run because of a stop request."""
    for h in hosts:
        if h in report.hosts:
            if h not in report.incomplete:
                report.incomplete.append(h)
        elif h not in report.not_run:
            report.not_run.append(h)


def resume_state(store: Any, run_uid: str) -> dict[tuple[str, int], str]:
    """(host, journal index) -> last recorded status of a run: outcome, or 'intent' in doubt."""
    state: dict[tuple[str, int], str] = {}
    for e in store.journal_entries(run_uid):
        key = (e.host, e.step_index)
        if state.get(key) in DONE:
            continue
        state[key] = e.status
    return state


def last_failed_hosts(store: Any) -> list[str]:
    """``@failed``: the hosts that failed or were not reached in the most recent finished
    run — last outcome failed, unreachable or in doubt, plus the hosts it never ran (a batch
    stopped by ``max_fail_percentage``, a stop request) or stopped between two steps. Power
    and verify runs do not count: ``@failed`` is about configuration runs. A run still
    running is skipped; one whose process is gone counts (as ``interrupted``)."""
    for run in store.list_runs(limit=50):
        if run["status"] == "running" or run["kind"] in NOT_FOR_FAILED:
            continue
        last: dict[str, str] = {}
        for e in store.journal_entries(run["uid"]):
            last[e.host] = e.status
        return failed_set(last, run.get("outcome"))
    return []


def failed_set(last: Mapping[str, str], outcome: Mapping[str, Any] | None) -> list[str]:
    """The ``@failed`` hosts of one run from each host's last journal status and the run's
    recorded outcome (``not_run``, ``incomplete``), in that order, each once. A run killed
    before it recorded its end has only ``planned``: its hosts without a journal entry were
    not reached.

    >>> failed_set({"a": "ok", "b": "failed", "c": "intent"}, {"not_run": ["d"]})
    ['b', 'c', 'd']
    """
    outcome = outcome or {}
    hosts = [h for h, s in last.items() if s in (*FAILED, "intent")]
    if "not_run" in outcome:
        unreached = [*outcome["not_run"], *outcome.get("incomplete", ())]
    else:
        unreached = [h for h in outcome.get("planned", ()) if h not in last]
    hosts.extend(h for h in unreached if h not in hosts)
    return hosts


def run_outcome(report: RunReport) -> dict[str, Any]:
    """What the state store keeps of a finished run besides its journal (see
    :func:`failed_set`)."""
    return {"counts": report.counts(), "not_run": list(report.not_run),
            "incomplete": list(report.incomplete), "stopped": report.stopped_reason or None,
            "interrupted": report.interrupted or None}
