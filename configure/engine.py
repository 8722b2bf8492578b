"""Converging a host: every probe in one round trip, every action in one more.

The probes of all resources (and handlers) of an apply go out as one shell script; decisions
are made here, locally; then the actions go out as one more script that runs them in order,
stops at the first failure, and still runs the handlers owed by what had already changed. A
converged host therefore costs one SSH round trip, a host with changes two.

Output of both scripts is framed by markers carrying a random token, so nothing a probe or a
command prints can be mistaken for a frame.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from configure.resources.base import Decision, Resource, ResourceSpecError
from inventory.errors import TransportError

OUTPUT_TAIL = 2000


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

    @property
    def changed(self) -> int:
        return sum(1 for r in self.results if r.status == "changed")

    @property
    def failed(self) -> list[ItemResult]:
        return [r for r in self.results if r.status == "failed"]

    @property
    def unknown(self) -> list[ItemResult]:
        return [r for r in self.results if r.status == "unknown"]


def _frame_re(token: str) -> re.Pattern[str]:
    return re.compile(rf"^@@{token} (B|E) (\d+)(?: (-?\d+))?$")


def build_probe_script(keys_scripts: list[tuple[int, str]], token: str) -> str:
    parts = ["exec 2>/dev/null"]
    for idx, script in keys_scripts:
        parts.append(f"echo '@@{token} B {idx}'\n( {script}\n)\necho '@@{token} E {idx} 0'")
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
    lines.append("exit 0")
    return "\n".join(lines) + "\n"


def _scrub(text: str, secrets_: Iterable[str]) -> str:
    for s in secrets_:
        if s:
            text = text.replace(s, "***")
    return text


def converge(conn: Any, blocks: list[RoleBlock], *, check: bool,
             owed: set[tuple[str, str]] | None = None,
             on_owed: Callable[[set[tuple[str, str]]], None] | None = None,
             secret_values: Iterable[str] = (), become: bool = True) -> ConvergeReport:
    """Probe, decide and (unless ``check``) act on one host. ``owed`` are handlers a
    previous, interrupted run still owes; ``on_owed`` is told which handlers are owed before
    anything changes, so an interruption cannot lose them."""
    secret_values = list(secret_values)
    owed = set(owed or ())
    items: list[Item] = []
    for b in blocks:
        items.extend(b.items)
        items.extend(b.handlers.values())
    index = {id(it): n for n, it in enumerate(items)}
    token = "MC" + secrets.token_hex(6)
    round_trips = 0

    probe_scripts = [(index[id(it)], "\n".join(p.script for p in it.resource.probes()) or ":")
                     for it in items]
    found_by_idx: dict[int, tuple[str, int | None]] = {}
    if probe_scripts:
        result = conn.run(["sh", "-s"], stdin=build_probe_script(probe_scripts, token).encode(),
                          timeout=120, become=become)
        round_trips += 1
        if result.exit_code != 0:
            raise TransportError(f"host '{conn.host}': probe script failed (exit "
                                 f"{result.exit_code}): {result.tail(5)}")
        found_by_idx = parse_frames(result.stdout, token)

    decisions: dict[int, Decision | ResourceSpecError] = {}
    for it in items:
        n = index[id(it)]
        text = found_by_idx.get(n, ("", None))[0]
        found = {p.key: text for p in it.resource.probes()}
        try:
            decisions[n] = it.resource.decide(found)
        except ResourceSpecError as exc:
            decisions[n] = exc

    results: dict[int, ItemResult] = {}
    owed_now = set(owed)
    first_failure: int | None = None
    for b in blocks:
        for it in b.items:
            n = index[id(it)]
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
                                    _scrub(d.diff, secret_values), d.unknown, source=it.source)

    def handler_results() -> None:
        for b in blocks:
            for name, it in b.handlers.items():
                n = index[id(it)]
                if (b.role, name) in owed_now:
                    results[n] = ItemResult(b.role, it.resource.identity, "changed",
                                            [f"handler '{name}'"], handler=name,
                                            source=it.source)

    if check:
        handler_results()
        return ConvergeReport([results[k] for k in sorted(results)], round_trips, owed)

    act_blocks = []
    for b in blocks:
        actions = []
        for it in b.items:
            n = index[id(it)]
            if first_failure is not None and n >= first_failure:
                break
            d = decisions[n]
            if isinstance(d, Decision) and d.actions:
                notifies = tuple(index[id(b.handlers[h])] for h in it.notify if h in b.handlers)
                actions.append((n, "\n".join(a.script for a in d.actions), notifies))
        hs = []
        for _name, it in b.handlers.items():
            n = index[id(it)]
            d = decisions[n]
            if isinstance(d, Decision) and d.actions:
                hs.append((n, "\n".join(a.script for a in d.actions)))
        act_blocks.append((b.role, actions, hs))
    forced = [index[id(b.handlers[h])] for b in blocks for (r, h) in owed
              if r == b.role and h in b.handlers]
    anything = any(a for _, a, _ in act_blocks) or forced
    if not anything:
        if first_failure is None:
            return ConvergeReport([results[k] for k in sorted(results)], round_trips, set())
        return ConvergeReport([results[k] for k in sorted(results)], round_trips, owed)

    # Persist what will be owed if every notifying action succeeds, before touching anything.
    if on_owed is not None:
        on_owed(owed_now)
    result = conn.run(["sh", "-s"], stdin=build_act_script(act_blocks, forced, token).encode(),
                      timeout=3600, become=become)
    round_trips += 1
    frames = parse_frames(result.stdout, token)
    ran_handlers: set[tuple[str, str]] = set()
    notified: set[tuple[str, str]] = set(owed)
    stopped = False
    for role, actions, hs in act_blocks:
        b = next(x for x in blocks if x.role == role)
        for n, _script, _notifies in actions:
            text, rc = frames.get(n, ("", None))
            if rc == 0:
                notified.update((role, h) for h in items[n].notify)
            text = _scrub(text, secret_values)
            if rc is None:
                status = "failed" if n in frames else "skipped"
                msg = "interrupted" if n in frames else "not run: an earlier resource failed"
                results[n].status, results[n].message = status, msg
                stopped = True
            elif rc != 0:
                results[n].status = "failed"
                results[n].message = f"exit code {rc}: {text[-OUTPUT_TAIL:]}"
                stopped = True
            elif stopped:
                results[n].status = "skipped"
        for n, _script in hs:
            name = next(k for k, v in b.handlers.items() if index[id(v)] == n)
            if n not in frames:
                continue
            text, rc = frames[n]
            ok = rc == 0
            results[n] = ItemResult(role, items[n].resource.identity,
                                    "changed" if ok else "failed", [f"handler '{name}'"],
                                    message="" if ok else f"exit code {rc}: "
                                    f"{_scrub(text, secret_values)[-OUTPUT_TAIL:]}",
                                    handler=name, source=items[n].source)
            if ok:
                ran_handlers.add((role, name))
    # Resources after the first failure that were never sent are skipped too.
    for n, r in results.items():
        if first_failure is not None and n > first_failure and r.status in ("changed",):
            r.status, r.message = "skipped", "not run: an earlier resource failed"
    remaining = notified - ran_handlers
    return ConvergeReport([results[k] for k in sorted(results)], round_trips, remaining)
