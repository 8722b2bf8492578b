"""The ``monitor`` step kind: the site's monitoring stack up, its targets and rules up to
date, and the play's hosts scraped.

::

    - name: monitor everything
      hosts: all                # the hosts that must be monitored
      steps:
        - monitor: {}           # or {wait: 300}: seconds to wait for the targets to be up

The stack runs on the controller, not on the hosts: the controller-side work (``monitor
up``: generate and check the configs, start what is not running, reload what is, rewrite
the file_sd targets) is done once per run, by the first host's step, while the others wait
for it (:class:`RunMonitoring`). Then each host's step waits, up to ``wait`` seconds (and its
step's ``timeout:``), until Prometheus reports every scrape target its roles declare as up,
and fails naming the targets still down. A host whose roles declare no scrape target is
``skipped``. So a play selects the hosts to monitor exactly as any other play selects hosts,
and no host is contacted over SSH.

A step is ``changed`` when its run changed the stack (a component started, a config file or
the targets file rewritten), else ``ok``: a second run reports ``ok``. Its data:
``{"targets_up": n, "targets": m, "down": [...]}`` for the host.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from inventory.contracts import HostContext, StepOutcome
from inventory.errors import InputError, MetalchainError

#: Seconds a monitor step waits by default for its host's targets to be up: a file_sd
#: refresh and a scrape at the default 15 s intervals, with room for a busy controller.
DEFAULT_WAIT = 120.0
#: Seconds between two looks at Prometheus's targets while waiting (shared by all hosts).
POLL_INTERVAL = 1.0


@dataclass(frozen=True)
class MonitorArgs:
    wait: float = DEFAULT_WAIT


def parse_monitor(raw: Any) -> MonitorArgs:
    if raw in (None, {}, True):
        return MonitorArgs()
    if not isinstance(raw, dict):
        raise ValueError("the monitor step takes a mapping like {wait: 120}, or {}")
    unknown = set(raw) - {"wait"}
    if unknown:
        raise ValueError(f"unknown argument '{sorted(unknown)[0]}' (known: wait)")
    wait = raw.get("wait")
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not 0 <= wait <= 3600:
        raise ValueError(f"wait must be a number of seconds 0-3600, got {wait!r}")
    return MonitorArgs(wait=float(wait))


@dataclass(frozen=True)
class Expected:
    """A scrape target a host's roles declare."""

    job: str
    port: int


@dataclass
class HostTargets:
    """One host's declared targets as Prometheus reports them."""

    expected: int
    up: list[str] = field(default_factory=list)
    down: list[str] = field(default_factory=list)   # "job (error)" / "job (not scraped yet)"

    @property
    def all_up(self) -> bool:
        return len(self.up) == self.expected


def host_targets(host: str, expected: Sequence[Expected],
                 active: Sequence[Mapping[str, Any]]) -> HostTargets:
    """Match ``host``'s declared targets with Prometheus's active targets (as
    :func:`monitor.stack.prometheus_targets` returns them: job, host, health, last_error).

    >>> host_targets("a", [Expected("node", 9100)],
    ...              [{"job": "node", "host": "a", "health": "up", "last_error": ""}]).up
    ['node:9100']
    """
    out = HostTargets(expected=len(expected))
    mine = [t for t in active if t.get("host") == host]
    for exp in expected:
        name = f"{exp.job}:{exp.port}"
        found = [t for t in mine if t.get("job") == exp.job
                 and _port(t.get("scrape_url")) in (None, exp.port)]
        if any(t.get("health") == "up" for t in found):
            out.up.append(name)
        elif found:
            err = next((t.get("last_error") for t in found if t.get("last_error")), "")
            out.down.append(f"{name} ({found[0].get('health') or 'unknown'}"
                            + (f": {str(err)[:200]}" if err else "") + ")")
        else:
            out.down.append(f"{name} (not among Prometheus's targets yet)")
    return out


def _port(url: Any) -> int | None:
    """The port of a scrape URL (None when there is none to compare)."""
    try:
        return urllib.parse.urlsplit(str(url)).port if url else None
    except ValueError:
        return None


@dataclass(frozen=True)
class StackUp:
    """What the run's ``monitor up`` did."""

    changes: tuple[str, ...]
    expected: Mapping[str, tuple[Expected, ...]]   # host -> its declared targets

    @property
    def changed(self) -> bool:
        return bool(self.changes)


class RunMonitoring:
    """The monitoring of one run, shared by its ``monitor`` steps: ``monitor up`` at most
    once (the first step does it, the others wait for it), and one look at Prometheus's
    targets per :data:`POLL_INTERVAL` however many hosts wait. Nothing runs until a step
    asks. ``up``/``fetch`` replace the real calls (tests)."""

    def __init__(self, site: Any, *, up: Callable[[], StackUp] | None = None,
                 fetch: Callable[[], list[dict[str, Any]]] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.site = site
        self._up_call = up or self._monitor_up
        self._fetch = fetch or self._prometheus_targets
        self._clock = clock
        self._lock = threading.Lock()
        self._result: StackUp | None = None
        self._error: str | None = None
        self._poll_lock = threading.Lock()
        self._seen: list[dict[str, Any]] = []
        self._seen_at: float | None = None

    def ensure_up(self) -> StackUp:
        """The stack up (once per run); raises :class:`MetalchainError` with the reason, the
        same for every step, when it could not be brought up."""
        with self._lock:
            if self._result is None and self._error is None:
                try:
                    self._result = self._up_call()
                except MetalchainError as exc:
                    self._error = str(exc)
            if self._error is not None:
                raise MetalchainError(f"monitoring stack not up: {self._error}")
            if self._result is None:   # an up() that returned nothing
                raise MetalchainError("monitoring stack not up")
            return self._result

    def targets(self) -> list[dict[str, Any]]:
        """Prometheus's active targets, at most :data:`POLL_INTERVAL` old."""
        with self._poll_lock:
            now = self._clock()
            if self._seen_at is None or now - self._seen_at >= POLL_INTERVAL:
                self._seen = self._fetch()
                self._seen_at = now
            return self._seen

    def running(self) -> dict[str, int | None]:
        from monitor import stack
        from orchestrate.monitoring import settings_of

        settings = settings_of(self.site)
        return stack.running(settings, stack.layout(settings))

    # -- the real calls --------------------------------------------------------------------

    def _monitor_up(self) -> StackUp:
        from monitor import stack
        from orchestrate.monitoring import monitor_up, scrape_hosts, settings_of

        settings = settings_of(self.site)
        lay = stack.layout(settings)
        was = stack.running(settings, lay)
        before = _read(lay.targets_file)
        doc = monitor_up(self.site)
        changes = [f"started {name}" for name, pid in was.items() if pid is None]
        changes += [f"rewrote {path}" for path in doc["changed"]]
        if _read(lay.targets_file) != before:
            changes.append(f"rewrote {lay.targets_file}")
        expected = {}
        for h in scrape_hosts(self.site):
            seen: dict[tuple[str, int], None] = {}
            for t in h.targets:
                seen.setdefault((t.job, t.port))
            expected[h.name] = tuple(Expected(job, port) for job, port in seen)
        return StackUp(tuple(changes), expected)

    def _prometheus_targets(self) -> list[dict[str, Any]]:
        from monitor import stack
        from orchestrate.monitoring import settings_of

        return stack.prometheus_targets(settings_of(self.site))


def _read(path: Any) -> str | None:
    try:
        return str(path.read_text(encoding="utf-8"))
    except OSError:
        return None


class MonitorStep:
    name = "monitor"
    description = ("the monitoring stack up with its targets and rules up to date; waits "
                   "until the host's scrape targets are up")
    parse = staticmethod(parse_monitor)

    def __init__(self, *, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.sleep = sleep
        self.clock = clock

    def run(self, ctx: HostContext, args: MonitorArgs) -> StepOutcome:
        mon: RunMonitoring | None = ctx.options.get("monitoring")
        if mon is None:
            raise InputError("the monitor step needs the run's monitoring (runs started by "
                             "orchestrate.runs.start_run have one)")
        if ctx.check:
            return self._check(mon)
        try:
            up = mon.ensure_up()
        except MetalchainError as exc:
            return StepOutcome("failed", str(exc)[:2000])
        expected = up.expected.get(ctx.host, ())
        if not expected:
            return StepOutcome("skipped", "no scrape target: none of its roles declares one "
                               "(or they have not been applied)",
                               data={"targets_up": 0, "targets": 0})
        until = self.clock() + args.wait
        if ctx.deadline is not None:
            until = min(until, ctx.deadline - 1.0)
        while True:
            try:
                seen = host_targets(ctx.host, expected, mon.targets())
            except MetalchainError as exc:
                return StepOutcome("failed", f"Prometheus: {exc}"[:2000])
            left = until - self.clock()
            if seen.all_up or left <= 0:
                break
            self.sleep(min(POLL_INTERVAL, left))
        data = {"targets_up": len(seen.up), "targets": seen.expected, "down": seen.down}
        if not seen.all_up:
            return StepOutcome("failed", f"{len(seen.down)} of {seen.expected} scrape "
                               f"targets not up after {args.wait:g} s: "
                               + "; ".join(seen.down), data=data)
        message = f"{len(seen.up)} of {seen.expected} scrape targets up"
        if up.changed:
            return StepOutcome("changed", message, changes=list(up.changes), data=data)
        return StepOutcome("ok", message, data=data)

    @staticmethod
    def _check(mon: RunMonitoring) -> StepOutcome:
        try:
            stopped = [name for name, pid in mon.running().items() if pid is None]
        except MetalchainError as exc:
            return StepOutcome("failed", str(exc)[:2000])
        if stopped:
            return StepOutcome("changed", "would start " + ", ".join(stopped),
                               changes=[f"start {n}" for n in stopped])
        return StepOutcome("ok", "the monitoring stack runs (check mode: its configs and "
                           "targets are not compared)")
