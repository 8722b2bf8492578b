"""The resource contract shared by every kind."""

from __future__ import annotations

import shlex
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


class ResourceSpecError(ValueError):
    """A resource written wrongly in a recipe (the role loader adds file:line; ``key``, when
    set, is the setting at fault, so the line can be that setting's)."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


def q(value: object) -> str:
    """Quote one value for the remote shell."""
    return shlex.quote(str(value))


def cmd(*argv: object) -> str:
    """One shell command line from an argument list, every argument quoted."""
    return " ".join(q(a) for a in argv)


@dataclass(frozen=True)
class Probe:
    """A read-only shell snippet; its stdout is handed to the resource's ``decide``."""

    key: str
    script: str


@dataclass(frozen=True)
class Action:
    """Shell lines that change the host, run with ``set -e``; ``describe`` is for humans."""

    describe: str
    script: str


@dataclass(frozen=True)
class AptInstall:
    """What a package resource's install action does, so the engine may join it with the
    installs of later package resources into one apt transaction (configure/apt_batch.py).

    ``names`` are the packages this resource found missing; ``update`` says whether it
    refreshes the package lists first; ``check`` is shell that exits 0 when all of ``names``
    are installed."""

    names: tuple[str, ...]
    update: bool
    check: str


@dataclass
class Decision:
    """What ``decide`` found: nothing to do, actions to run, or unknown (check mode only)."""

    actions: list[Action] = field(default_factory=list)
    changes: list[str] = field(default_factory=list)
    diff: str = ""
    unknown: str = ""      # set when the outcome cannot be predicted without acting
    #: set by a package install that may share one apt transaction with others
    apt_install: AptInstall | None = None

    @property
    def changed(self) -> bool:
        return bool(self.actions)


class Resource(ABC):
    """One piece of desired state on one host."""

    kind: str = ""
    #: Short, unique-per-host name: ``file:/etc/hosts``; each kind's ``__init__`` sets it.
    identity: str
    #: keys every kind accepts besides its own
    COMMON = ("name", "notify")
    #: the keys this kind accepts (besides COMMON); None when the kind checks them itself
    KEYS: tuple[str, ...] | None = None
    #: the values of ``state`` this kind accepts, the default first; () for no ``state``
    STATES: tuple[str, ...] = ()

    def __init__(self, spec: Mapping[str, Any]) -> None:
        self.spec = dict(spec)
        self.notify: tuple[str, ...] = ()
        if self.KEYS is not None:
            self.only(spec, self.kind, self.KEYS)
        if self.STATES:
            self.state = state_of(spec, self.kind, self.STATES, self.STATES[0])

    @abstractmethod
    def probes(self) -> list[Probe]: ...

    @abstractmethod
    def decide(self, found: Mapping[str, str]) -> Decision:
        """Pure: ``found`` maps each probe key to its stdout."""

    # -- helpers for subclasses --------------------------------------------------------------

    @staticmethod
    def require(spec: Mapping[str, Any], key: str, kind: str, types: type | tuple[type, ...]
                = str) -> Any:
        if key not in spec or spec[key] is None:
            raise ResourceSpecError(f"{kind}: '{key}' is required")
        value = spec[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in (
                types if isinstance(types, tuple) else (types,))):
            raise ResourceSpecError(f"{kind}: '{key}' has the wrong type ({value!r})")
        return value

    @staticmethod
    def only(spec: Mapping[str, Any], kind: str, allowed: Sequence[str]) -> None:
        import difflib

        for key in spec:
            if key not in allowed and key not in Resource.COMMON:
                close = difflib.get_close_matches(str(key), list(allowed), n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ResourceSpecError(f"{kind}: unknown key '{key}'{hint}; allowed: "
                                        f"{', '.join(allowed)}")


def state_of(spec: Mapping[str, Any], kind: str,
             allowed: tuple[str, ...] = ("present", "absent"), default: str = "present") -> str:
    """The resource's ``state``, one of ``allowed``."""
    state = spec.get("state", default)
    if state not in allowed:
        raise ResourceSpecError(f"{kind}: state must be one of {', '.join(allowed)}, "
                                f"got {state!r}")
    return state


def flag(spec: Mapping[str, Any], key: str, kind: str, default: bool) -> bool:
    """A true/false setting. A rendered template gives the text 'True' or 'False', which
    counts as that; anything else (other text, a number) is refused."""
    value = spec.get(key, default)
    if value is None:
        return default
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if not isinstance(value, bool):
        raise ResourceSpecError(f"{kind}: {key} must be true or false, got "
                                f"{type(value).__name__}", key)
    return value


def mode_string(value: Any, kind: str) -> str | None:
    """'0644' / '644' -> '644' (stat's %a form); None when not given.

    A bare number is refused: YAML reads 0644 as 420 and 644 as six hundred forty-four, so
    a number cannot say which was meant.
    """
    if value is None:
        return None
    if not isinstance(value, str):
        raise ResourceSpecError(f"{kind}: mode must be a quoted string like '0644' "
                                f"(YAML turns an unquoted 0644 into the number {value!r})")
    text = value.strip().lstrip("0") or "0"
    if not all(c in "01234567" for c in text) or len(text) > 4:
        raise ResourceSpecError(f"{kind}: mode {value!r} is not an octal mode like '0644'")
    return text
