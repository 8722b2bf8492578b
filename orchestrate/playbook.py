"""Playbooks: YAML lists of plays that chain stages over host selections.

::

    - name: roll out base config
      hosts: fleet,!fleet03        # a target (see inventory.select)
      serial: 20%                  # batch size: N, N%, or a ramp [1, 10%, 50%]
      max_fail_percentage: 10      # a batch failing more than this stops later batches
      retries: 0                   # per-step defaults
      retry_delay: 2
      steps:
        - name: say hello
          command: {argv: [echo, hello]}
          retries: 2
        - include: common-steps.yml  # a YAML list of steps, inlined at load time

Step arguments may use ``{{ var }}`` with the host's variables (inventory precedence plus
``-e``; plays have no variables of their own, so there are never more than five layers).
Everything is validated before anything runs; errors name file:line.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configure.templating import is_templated
from inventory.errors import InputError, InventoryError
from inventory.yamlsource import LocatedDict, LocatedList, read_yaml_file
from orchestrate.steps import StepKind, StepRegistry

PLAY_KEYS = ("name", "hosts", "serial", "max_fail_percentage", "retries",
             "retry_delay", "steps")
STEP_COMMON_KEYS = ("name", "retries", "delay", "timeout")
_PERCENT = re.compile(r"^(\d{1,3})%$")
MAX_INCLUDE_DEPTH = 10
#: Steps of a whole playbook once its includes are inlined.
MAX_STEPS = 5000


class PlaybookError(InventoryError):
    """A malformed playbook (same file:line rendering as inventory errors)."""


@dataclass(frozen=True)
class Step:
    index: int
    name: str
    kind: str
    args: Any
    retries: int
    delay: float
    timeout: float | None
    file: str
    line: int
    raw: Any = None    # the arguments as written, re-rendered per host when templated

    @property
    def templated(self) -> bool:
        return is_templated(self.raw)


@dataclass(frozen=True)
class Play:
    index: int
    name: str
    hosts: str
    serial: tuple[int | str, ...]
    max_fail_percentage: float | None
    steps: tuple[Step, ...]
    file: str
    line: int
    hosts_line: int = 0    # the line of ``hosts:`` (errors about the target point there)


@dataclass
class Playbook:
    path: Path
    plays: list[Play] = field(default_factory=list)


def _fail(where: LocatedDict | LocatedList, key: Any, message: str) -> PlaybookError:
    return PlaybookError(message, file=where.file, line=where.line_of(key))


def _number(where: LocatedDict, key: str, default: float, minimum: float, maximum: float,
            integer: bool = False) -> float:
    value = where.get(key, default)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not \
            minimum <= value <= maximum:
        what = "an integer" if integer else "a number"
        raise _fail(where, key, f"{key} must be {what} {minimum:g}-{maximum:g}, got {value!r}")
    return value


def _optional_number(where: LocatedDict, key: str, minimum: float,
                     maximum: float) -> float | None:
    """``key``'s number, or None when it is not set (no default stands in for it)."""
    if where.get(key) is None:
        return None
    return _number(where, key, 0, minimum, maximum)


def _name(where: LocatedDict, default: str) -> str:
    name = where.get("name", default)
    if not isinstance(name, str):
        raise _fail(where, "name", "name must be a string")
    return name


def _serial(where: LocatedDict) -> tuple[int | str, ...]:
    raw = where.get("serial")
    if raw is None:
        return ()
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise _fail(where, "serial", "serial must not be an empty list")
    out: list[int | str] = []
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and item >= 1:
            out.append(item)
        elif isinstance(item, str) and (m := _PERCENT.match(item.strip())) and \
                1 <= int(m.group(1)) <= 100:
            out.append(item.strip())
        else:
            raise _fail(where, "serial", f"serial must be a positive count or a percentage "
                                         f"like 20%, got {item!r}")
    return tuple(out)


def _parse_step(data: Any, where: LocatedList, pos: int, index: int, registry: StepRegistry,
                defaults: tuple[int, float]) -> Step:
    if not isinstance(data, dict):
        raise _fail(where, pos, f"a step must be a mapping, got {type(data).__name__}")
    kinds = [k for k in data if k not in STEP_COMMON_KEYS]
    if not kinds:
        raise _fail(data, None, "step has no kind; one of: " + ", ".join(registry.names()))
    if len(kinds) > 1:
        unknown = [k for k in kinds if k not in registry]
        if unknown:
            k = unknown[0]
            close = difflib.get_close_matches(str(k), [*registry.names(), *STEP_COMMON_KEYS],
                                              n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise _fail(data, k, f"unknown step key '{k}'{hint}")
        raise _fail(data, kinds[1], f"a step has exactly one kind, found {', '.join(kinds)}")
    kind_name = kinds[0]
    try:
        kind: StepKind = registry.get(str(kind_name))
    except InputError as exc:
        raise _fail(data, kind_name, str(exc)) from None
    try:
        args = kind.parse(data[kind_name])
    except ValueError as exc:
        raise _fail(data, kind_name, f"{kind_name}: {exc}") from None
    name = _name(data, f"{kind_name}")
    timeout = _optional_number(data, "timeout", 0.1, 86400)
    return Step(index=index, name=name, kind=str(kind_name), args=args,
                retries=int(_number(data, "retries", defaults[0], 0, 100, integer=True)),
                delay=_number(data, "delay", defaults[1], 0, 3600), timeout=timeout,
                file=data.file, line=data.line, raw=data[kind_name])


@dataclass
class _Expansion:
    """What one playbook's includes have expanded to so far: the step count is capped across
    the whole playbook, since includes that fan out multiply (10 files of 4 includes each
    are 714 bytes and 4**9 steps)."""

    steps: int = 0
    files: dict[Path, Any] = field(default_factory=dict)   # each included file read once

    def read(self, path: Path) -> Any:
        if path not in self.files:
            self.files[path] = read_yaml_file(path)
        return self.files[path]


def _chain(chain: tuple[str, ...]) -> str:
    return " -> ".join(chain)


def _steps(where: LocatedDict, registry: StepRegistry, defaults: tuple[int, float], base: Path,
           seen: tuple[Path, ...], expansion: _Expansion) -> list[tuple[Any, LocatedList, int]]:
    """Flatten the steps of a play, inlining includes; returns (data, list, position)."""
    raw = where.get("steps")
    if raw is None:
        raise _fail(where, None, "a play needs 'steps'")
    if not isinstance(raw, list) or not raw:
        raise _fail(where, "steps", "steps must be a non-empty list")
    return _flatten(raw, registry, defaults, base, seen, (), expansion)


def _flatten(raw: LocatedList, registry: StepRegistry, defaults: tuple[int, float], base: Path,
             seen: tuple[Path, ...], chain: tuple[str, ...],
             expansion: _Expansion) -> list[tuple[Any, LocatedList, int]]:
    """``seen``: the files being included (for loops); ``chain``: file:line of each include
    on the way here (for errors)."""
    out: list[tuple[Any, LocatedList, int]] = []
    for pos, item in enumerate(raw):
        if isinstance(item, dict) and "include" in item:
            if set(item) - {"include"}:
                raise _fail(item, None, "an include step takes only 'include: FILE'")
            target = item["include"]
            if not isinstance(target, str):
                raise _fail(item, "include", "include must be a file name")
            here = (*chain, f"{item.file}:{item.line_of('include')}")
            try:
                path = (base / target).resolve()
                found = path.is_file()
            except (OSError, ValueError) as exc:   # a name too long, a NUL byte
                raise _fail(item, "include", f"include: bad file name ({exc})") from None
            if path in seen:
                raise _fail(item, "include", f"include loop: {target} "
                                             f"(via {_chain(here)})")
            if len(chain) >= MAX_INCLUDE_DEPTH:
                raise _fail(item, "include", f"includes nested more than {MAX_INCLUDE_DEPTH}"
                                             f" deep (via {_chain(here)})")
            if not found:
                raise _fail(item, "include", f"included file not found: {path}")
            inc = expansion.read(path)
            if not isinstance(inc, list) or not inc:
                raise PlaybookError("an included file must be a non-empty list of steps",
                                    file=str(path), line=1)
            out.extend(_flatten(inc, registry, defaults, path.parent, (*seen, path), here,
                                expansion))
        else:
            expansion.steps += 1
            if expansion.steps > MAX_STEPS:
                via = f" (via {_chain(chain)})" if chain else ""
                raise _fail(raw, pos, f"the playbook expands to more than {MAX_STEPS} steps"
                                      f"{via}")
            out.append((item, raw, pos))
    return out


def _parse_play(play: Any, doc: LocatedList, i: int, registry: StepRegistry, path: Path,
                errors: list[PlaybookError], expansion: _Expansion) -> Play | None:
    """One play; a bad step is added to ``errors`` (the others are still checked)."""
    if not isinstance(play, dict):
        raise _fail(doc, i, "a play must be a mapping")
    for key in play:
        if key not in PLAY_KEYS:
            close = difflib.get_close_matches(str(key), PLAY_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise _fail(play, key, f"unknown play key '{key}'{hint}")
    hosts = play.get("hosts")
    if not isinstance(hosts, str) or not hosts.strip():
        raise _fail(play, "hosts" if "hosts" in play else None,
                    "a play needs 'hosts': a target such as a group, host, glob or label")
    name = _name(play, f"play {i + 1}")
    mfp = _optional_number(play, "max_fail_percentage", 0, 100)
    defaults = (int(_number(play, "retries", 0, 0, 100, integer=True)),
                _number(play, "retry_delay", 1, 0, 3600))
    serial = _serial(play)
    flat = _steps(play, registry, defaults, path.parent, (path,), expansion)
    steps = []
    bad = False
    for n, (d, where, pos) in enumerate(flat):
        try:
            steps.append(_parse_step(d, where, pos, n, registry, defaults))
        except PlaybookError as exc:
            errors.append(exc)
            bad = True
    if bad:
        return None
    return Play(index=i, name=name, hosts=hosts.strip(), serial=serial,
                max_fail_percentage=mfp, steps=tuple(steps), file=play.file, line=play.line,
                hosts_line=play.line_of("hosts"))


def load_playbook(path: Path, registry: StepRegistry) -> Playbook:
    """Load and validate a playbook; PlaybookError names file:line (several problems: an
    InputError with one line per problem)."""
    path = path.resolve()
    if not path.is_file():
        raise InputError(f"playbook not found: {path}")
    doc = read_yaml_file(path)
    if doc is None:
        raise PlaybookError("the playbook is empty", file=str(path), line=1)
    if not isinstance(doc, list):
        raise PlaybookError("a playbook must be a list of plays", file=str(path), line=1)
    pb = Playbook(path=path)
    errors: list[PlaybookError] = []
    expansion = _Expansion()
    for i, play in enumerate(doc):
        try:
            parsed = _parse_play(play, doc, i, registry, path, errors, expansion)
        except PlaybookError as exc:
            errors.append(exc)
            if expansion.steps > MAX_STEPS:
                break   # every later play would say the same
            continue
        if parsed is not None:
            pb.plays.append(parsed)
    if len(errors) == 1:
        raise errors[0]
    if errors:   # every problem, one line each: one edit fixes them all
        raise InputError("\n".join(str(e) for e in errors))
    if not pb.plays:
        raise PlaybookError("the playbook has no plays", file=str(path), line=1)
    return pb


def batches(hosts: list[str], serial: tuple[int | str, ...]) -> list[list[str]]:
    """Split ``hosts`` into rolling batches; the last serial entry repeats (Ansible's ramp)."""
    if not serial:
        return [hosts] if hosts else []
    out: list[list[str]] = []
    i = 0
    n = 0
    while i < len(hosts):
        spec = serial[min(n, len(serial) - 1)]
        if isinstance(spec, str):
            size = max(1, int(len(hosts) * int(spec.rstrip("%")) / 100))
        else:
            size = spec
        out.append(hosts[i:i + size])
        i += size
        n += 1
    return out
