"""Converging a host: every probe in one round trip, every action in one more.

The probes of all resources (and handlers) of an apply go out as one shell script; decisions
are made here, locally; then the actions go out as one more script that runs them in order,
stops at the first failure, and still runs the handlers owed by what had already changed. A
converged host therefore costs one SSH round trip, a host with changes two.

Output of both scripts is framed by markers carrying a random token, so nothing a probe or a
command prints can be mistaken for a frame. A script also ends with an end marker: a script
that exits non-zero or whose end marker is missing did not finish (sudo refused, killed, out
of memory, connection cut), and what its frames say is all that is known. A missing probe
frame is never read as "absent"; a missing action frame is never read as "skipped by choice".
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from configure.apt_batch import Step, join_installs
from configure.resources.base import Decision, Resource, ResourceSpecError
from configure.resources.files import Line
from inventory.contracts import time_left
from inventory.errors import TransportError
from inventory.secrets import Masker
from runtime.crashpoint import crash_point

OUTPUT_TAIL = 2000
#: Limits of each round trip when the step has no deadline of its own.
PROBE_TIMEOUT_S = 120.0
ACT_TIMEOUT_S = 3600.0


@dataclass
class Item:
    """A resource in an apply, with where it came from."""

    role: str
    resource: Resource
    notify: tuple[str, ...] = ()
    source: str = ""          # file:line of the recipe entry
    handler: str | None = None  # set for handler items: the handler's name


@dataclass
class RoleBlock:
    role: str
    items: list[Item]
    handlers: dict[str, Item] = field(default_factory=dict)


@dataclass
class ItemResult:
    role: str
    identity: str
    status: str                # ok, changed, failed, unknown, skipped
    changes: list[str] = field(default_factory=list)
    diff: str = ""
    message: str = ""
    handler: str | None = None
    source: str = ""


@dataclass
class ConvergeReport:
    results: list[ItemResult]
    round_trips: int
    owed_after: set[tuple[str, str]]
    #: why the host did not finish (a script died, the connection was lost), or ""
    error: str = ""
    #: the error is a lost connection (the host's outcome is "unreachable", not "failed")
    unreachable: bool = False

    @property
    def changed(self) -> int:
        return sum(1 for r in self.results if r.status == "changed")

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def unknown(self) -> list[ItemResult]:
        return [r for r in self.results if r.status == "unknown"]


@dataclass
class RideAlong:
    """A read-only script sent in the probe round trip beside the resources' probes (the
    facts, for instance), and what its output does to the plan: ``revise(stdout)`` returns
    new blocks when the output changes what should be converged, else None."""

    script: str
    revise: Callable[[str], list[RoleBlock] | None]


def _frame_re(token: str) -> re.Pattern[str]:
    return re.compile(rf"^@@{token} (B|E) (\d+)(?: (-?\d+))?$")


def _end_marker(token: str) -> str:
    return f"@@{token} END"


def build_probe_script(keys_scripts: list[tuple[int, str]], token: str) -> str:
    parts = ["exec 2>/dev/null"]
    for idx, script in keys_scripts:
        parts.append(f"echo '@@{token} B {idx}'\n( {script}\n)\necho '@@{token} E {idx} 0'")
    parts.append(f"echo '{_end_marker(token)}'")
    return "\n".join(parts) + "\n"


def parse_frames(output: str, token: str) -> dict[int, tuple[str, int | None]]:
    """{index: (text, rc)} from framed script output; rc None when the frame never closed."""
    frames: dict[int, tuple[str, int | None]] = {}
    pattern = _frame_re(token)
    current: int | None = None
    buf: list[str] = []
    for line in output.splitlines():
        m = pattern.match(line)
        if m and m.group(1) == "B":
            current, buf = int(m.group(2)), []
        elif m and m.group(1) == "E" and current == int(m.group(2)):
            frames[current] = ("\n".join(buf), int(m.group(3)))
            current = None
        elif current is not None:
            buf.append(line)
    if current is not None:
        frames[current] = ("\n".join(buf), None)
    return frames


def script_finished(result: Any, token: str) -> bool:
    """Did a framed script run to its end? Exit status 0 and the end marker printed."""
    return result.exit_code == 0 and _end_marker(token) in result.stdout.splitlines()


def build_act_script(blocks: list[tuple[str, list[tuple[int, str, tuple[int, ...]]],
                                        list[tuple[int, str]]]],
                     forced: Iterable[int], token: str) -> str:
    """One script: per role, the actions (idx, script, handler indexes they notify), then the
    role's handlers (idx, script) that are owed. After a failure no more actions run, but
    owed handlers still do."""
    lines = ["mc_failed=0"]
    lines += [f"mc_owed_{h}=1" for h in forced]
    for _role, actions, handlers in blocks:
        for idx, script, notifies in actions:
            set_owed = "".join(f" mc_owed_{h}=1;" for h in notifies)
            lines.append(
                f"if [ $mc_failed = 0 ]; then echo '@@{token} B {idx}'\n"
                f"( set -e\n{script}\n) </dev/null 2>&1\nmc_rc=$?\n"
                f"echo '@@{token} E {idx} '$mc_rc\n"
                f"if [ $mc_rc = 0 ]; then :;{set_owed} else mc_failed=1; fi\nfi")
        for idx, script in handlers:
            lines.append(
                f"if [ \"${{mc_owed_{idx}:-0}}\" = 1 ]; then echo '@@{token} B {idx}'\n"
                f"( set -e\n{script}\n) </dev/null 2>&1\n"
                f"echo '@@{token} E {idx} '$?\nfi")
    lines.append(f"echo '{_end_marker(token)}'")
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def _how_it_ended(result: Any, mask: Masker) -> str:
    """'exit 137: last lines of stderr' for a script that did not finish. Only stderr: what
    is on stdout inside frames belongs to the resources and is reported with them, and
    stderr is where sudo, the shell and the kernel's OOM messages end up."""
    code = result.exit_code
    how = "killed, no exit status" if code < 0 else f"exit {code}"
    if code == 0:
        how = "exit 0 but its output ended early"
    tail = mask.text("\n".join(result.stderr.rstrip().splitlines()[-5:]))
    return f"{how}: {tail}" if tail else how


def _connection_lost(exc: TransportError, deadline: float | None, what: str,
                     lost: str) -> tuple[str, bool]:
    """(message, unreachable) for a round trip that raised instead of returning: out of the
    step's time is a failure, anything else the host not answering."""
    if deadline is not None and time.monotonic() >= deadline:
        return f"the step's time ran out during the {what}: {exc}", False
    return f"{lost}: {exc}", True


class _Plan:
    """The items of an apply, numbered: the number is the frame index in both scripts."""

    def __init__(self, blocks: list[RoleBlock]) -> None:
        self.blocks = blocks
        self.items: list[Item] = []
        for b in blocks:
            self.items.extend(b.items)
            self.items.extend(b.handlers.values())
        self._index = {id(it): n for n, it in enumerate(self.items)}

    def n(self, item: Item) -> int:
        return self._index[id(item)]

    def label(self, n: int) -> str:
        it = self.items[n]
        return f"{it.role}/{it.resource.identity}"


def converge(conn: Any, blocks: list[RoleBlock], *, check: bool,
             owed: set[tuple[str, str]] | None = None,
             on_owed: Callable[[set[tuple[str, str]]], None] | None = None,
             secret_values: Iterable[str] = (), become: bool = True,
             deadline: float | None = None,
             ride_along: RideAlong | None = None) -> ConvergeReport:
    """Probe, decide and (unless ``check``) act on one host. ``owed`` are handlers a
    previous, interrupted run still owes; ``on_owed`` is told which handlers are owed before
    anything changes, so an interruption cannot lose them. ``deadline`` (``time.monotonic()``
    by which the step must end) bounds each round trip; without it they get
    ``PROBE_TIMEOUT_S`` / ``ACT_TIMEOUT_S``. ``ride_along`` goes out with the probes and may
    revise the plan (then the new plan is probed again: one more round trip).

    Never raises for a script that died or a lost connection: the report says what is known
    (``error``, ``unreachable``, and each resource's status)."""
    secret_values = list(secret_values)
    mask = Masker(secret_values)
    owed = set(owed or ())
    plan = _Plan(blocks)
    items = plan.items
    token = "MC" + secrets.token_hex(6)
    round_trips = 0

    probe_scripts = [(plan.n(it), "\n".join(p.script for p in it.resource.probes()) or ":")
                     for it in items]
    extra_idx = len(items)
    if ride_along is not None:
        probe_scripts.append((extra_idx, ride_along.script))
    # Identical probes (a service and its handler, two lines in one file) run once: every
    # probe reads, none changes anything, so one answer serves all of them.
    first_of: dict[str, int] = {}
    same_as: dict[int, int] = {}
    unique: list[tuple[int, str]] = []
    for n, script in probe_scripts:
        if script in first_of:
            same_as[n] = first_of[script]
        else:
            first_of[script] = n
            unique.append((n, script))
    found_by_idx: dict[int, tuple[str, int | None]] = {}
    if probe_scripts:
        try:
            result = conn.run(["sh", "-s"],
                              stdin=build_probe_script(unique, token).encode(),
                              timeout=time_left(deadline, PROBE_TIMEOUT_S), become=become)
        except TransportError as exc:
            message, unreachable = _connection_lost(exc, deadline, "probe script",
                                                   "no answer to the probe script")
            return _unprobed(plan, {}, message, unreachable, round_trips + 1, owed)
        round_trips += 1
        found_by_idx = parse_frames(result.stdout, token)
        for n, first in same_as.items():
            if first in found_by_idx:
                found_by_idx[n] = found_by_idx[first]
        incomplete = [n for n, _ in probe_scripts if found_by_idx.get(n, ("", None))[1] is None]
        if not script_finished(result, token) or incomplete:
            message = (f"host '{conn.host}': the probe script did not finish "
                       f"({_how_it_ended(result, mask)})")
            if any(n in found_by_idx for n in incomplete):
                cut = next(n for n in incomplete if n in found_by_idx)
                message += (f"; interrupted while probing {plan.label(cut)}"
                            if cut < extra_idx else "; interrupted while reading facts")
            return _unprobed(plan, found_by_idx, message, False, round_trips, owed)
        if ride_along is not None:
            revised = ride_along.revise(found_by_idx[extra_idx][0])
            if revised is not None:
                again = converge(conn, revised, check=check, owed=owed, on_owed=on_owed,
                                 secret_values=secret_values, become=become,
                                 deadline=deadline)
                again.round_trips += round_trips
                return again

    decisions: dict[int, Decision | ResourceSpecError] = {}
    # Every probe ran before any action: a line resource after another on the same file
    # decides from what the earlier one's edit leaves (its own guard then expects that too).
    edited: dict[str, str] = {}
    for it in items:
        n = plan.n(it)
        text = found_by_idx[n][0] if probe_scripts else ""
        found = {p.key: text for p in it.resource.probes()}
        line_path = it.resource.path if isinstance(it.resource, Line) else None
        if line_path in edited:
            found = {key: edited[line_path] for key in found}
        try:
            decisions[n] = it.resource.decide(found)
            if line_path is not None and decisions[n].changed:
                edited[line_path] = it.resource.leaves(found)
        except ResourceSpecError as exc:
            decisions[n] = exc
        except (ValueError, LookupError, TypeError) as exc:
            # decide() parses what the host printed: a malformed answer fails this item,
            # as the host's problem, not the run.
            decisions[n] = ResourceSpecError(f"malformed answer from host '{conn.host}': "
                                             f"{exc.__class__.__name__}: {str(exc)[:200]!r}")

    results: dict[int, ItemResult] = {}
    owed_now = set(owed)
    first_failure: int | None = None
    for b in blocks:
        for it in b.items:
            n = plan.n(it)
            d = decisions[n]
            if isinstance(d, ResourceSpecError):
                results[n] = ItemResult(b.role, it.resource.identity, "failed",
                                        message=f"{it.source}: {d}", source=it.source)
                if first_failure is None:
                    first_failure = n
                continue
            if d.changed and first_failure is None:
                owed_now.update((b.role, h) for h in it.notify)
            status = "unknown" if d.unknown and check else ("changed" if d.changed else "ok")
            results[n] = ItemResult(b.role, it.resource.identity, status, d.changes,
                                    mask.text(d.diff), d.unknown, source=it.source)

    def report(trips: int, owed_after: set[tuple[str, str]], error: str = "",
               unreachable: bool = False) -> ConvergeReport:
        return ConvergeReport([results[k] for k in sorted(results)], trips, owed_after,
                              error, unreachable)

    if check:
        for b in blocks:
            for name, it in b.handlers.items():
                if (b.role, name) in owed_now:
                    results[plan.n(it)] = ItemResult(b.role, it.resource.identity, "changed",
                                                     [f"handler '{name}'"], handler=name,
                                                     source=it.source)
        return report(round_trips, owed)

    # The package installs of the apply share one apt transaction where that is safe.
    steps = []
    for b in blocks:
        for it in b.items:
            n = plan.n(it)
            if first_failure is not None and n >= first_failure:
                break
            d = decisions[n]
            if isinstance(d, Decision):
                steps.append(Step(n, plan.label(n), it.resource, d))
        steps += [Step(plan.n(it), plan.label(plan.n(it)), it.resource, d, handler=True)
                  for it in b.handlers.values()
                  if isinstance(d := decisions[plan.n(it)], Decision)]
    decisions.update(join_installs(steps))

    act_blocks = []
    for b in blocks:
        actions = []
        for it in b.items:
            n = plan.n(it)
            if first_failure is not None and n >= first_failure:
                break
            d = decisions[n]
            if isinstance(d, Decision) and d.actions:
                notifies = tuple(plan.n(b.handlers[h]) for h in it.notify if h in b.handlers)
                actions.append((n, "\n".join(a.script for a in d.actions), notifies))
        hs = []
        for _name, it in b.handlers.items():
            n = plan.n(it)
            d = decisions[n]
            if isinstance(d, Decision) and d.actions:
                hs.append((n, "\n".join(a.script for a in d.actions)))
        act_blocks.append((b.role, actions, hs))
    forced = [plan.n(b.handlers[h]) for b in blocks for (r, h) in owed
              if r == b.role and h in b.handlers]
    # Resources after the first failure are never sent.
    for n, r in results.items():
        if first_failure is not None and n > first_failure and r.status == "changed":
            r.status, r.message = "skipped", "not run: an earlier resource failed"
    anything = any(a for _, a, _ in act_blocks) or forced
    if not anything:
        return report(round_trips, set() if first_failure is None else owed)

    sent = [n for _, actions, _ in act_blocks for n, _s, _h in actions]
    if deadline is not None and time.monotonic() >= deadline:
        for n in sent:
            results[n].status = "skipped"
            results[n].message = "not run: the step's time ran out before acting"
        return report(round_trips, owed, f"host '{conn.host}': the step's time ran out "
                                         "before the action script was sent; nothing changed")

    # Persist what will be owed if every notifying action succeeds, before touching anything.
    if on_owed is not None:
        on_owed(owed_now)
    crash_point("apply.before_act")
    try:
        result = conn.run(["sh", "-s"], stdin=build_act_script(act_blocks, forced, token).encode(),
                          timeout=time_left(deadline, ACT_TIMEOUT_S), become=become)
    except TransportError as exc:
        message, unreachable = _connection_lost(exc, deadline, "action script",
                                               "connection lost during the action script")
        for n in sent:
            results[n].status = "failed"
            results[n].message = "in doubt: the action script was sent, its outcome is unknown"
        # Whatever the lost script notified may have changed: those handlers stay owed.
        return report(round_trips + 1, owed_now, message, unreachable)
    crash_point("apply.after_act")
    round_trips += 1
    finished = script_finished(result, token)
    died = "" if finished else _how_it_ended(result, mask)
    frames = parse_frames(result.stdout, token)
    ran_handlers: set[tuple[str, str]] = set()
    notified: set[tuple[str, str]] = set(owed)
    interrupted: int | None = None
    failed_before = False   # an action failed: the script skips the rest on purpose
    for role, actions, hs in act_blocks:
        b = next(x for x in blocks if x.role == role)
        for n, _script, _notifies in actions:
            if n not in frames:
                if not failed_before and finished:
                    # A finished script prints every frame it was not told to skip.
                    finished, died = False, "its output ended early"
                results[n].status = "skipped"
                results[n].message = ("not run: an earlier resource failed" if failed_before
                                      else f"not run: the action script died ({died})")
                continue
            text, rc = frames[n]
            text = mask.text(text)
            if rc is None:
                results[n].status, results[n].message = "failed", "interrupted"
                interrupted = n
            elif rc != 0:
                results[n].status = "failed"
                results[n].message = f"exit code {rc}: {text[-OUTPUT_TAIL:]}"
                failed_before = True
            else:
                notified.update((role, h) for h in items[n].notify)
        for n, _script in hs:
            name = next(k for k, v in b.handlers.items() if plan.n(v) == n)
            if n not in frames:
                if not finished and (role, name) in notified:
                    results[n] = ItemResult(role, items[n].resource.identity, "skipped",
                                            [f"handler '{name}'"],
                                            message=f"not run: the action script died ({died})",
                                            handler=name, source=items[n].source)
                continue
            text, rc = frames[n]
            ok = rc == 0
            if rc is None:
                interrupted = n
            message = "" if ok else ("interrupted" if rc is None else
                                     f"exit code {rc}: "
                                     f"{mask.text(text)[-OUTPUT_TAIL:]}")
            results[n] = ItemResult(role, items[n].resource.identity,
                                    "changed" if ok else "failed", [f"handler '{name}'"],
                                    message=message, handler=name, source=items[n].source)
            if ok:
                ran_handlers.add((role, name))
    error = ""
    if not finished:
        where = f" while running {plan.label(interrupted)}" if interrupted is not None else ""
        error = f"host '{conn.host}': the action script did not finish{where} ({died})"
    return report(round_trips, notified - ran_handlers, error)


def _unprobed(plan: _Plan, frames: dict[int, tuple[str, int | None]], message: str,
              unreachable: bool, round_trips: int,
              owed: set[tuple[str, str]]) -> ConvergeReport:
    """The report of a host whose probe round trip did not complete: nothing was decided
    and nothing changed; the resource whose probe was cut is failed, the others skipped."""
    results = []
    for n, it in enumerate(plan.items):
        if it.handler is not None:
            continue
        text_rc = frames.get(n)
        if text_rc is not None and text_rc[1] is None:
            status, why = "failed", "interrupted while probing"
        else:
            status, why = "skipped", "not run: the probe did not finish"
        results.append(ItemResult(it.role, it.resource.identity, status, message=why,
                                  source=it.source))
    return ConvergeReport(results, round_trips, set(owed), message, unreachable)
