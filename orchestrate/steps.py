"""Step kinds: what a playbook step can do. Each stage registers its own kinds; orchestrate
knows none of them by name.

A kind validates its arguments before anything runs (``parse``), runs on one host with that
host's connection (``run``), and may tell whether a step whose outcome was lost (a killed run)
already took effect (``recheck``), so ``--resume`` does not repeat it.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, Protocol

from inventory.contracts import OUTCOMES, HostContext, StepOutcome
from inventory.errors import InputError

__all__ = ["OUTCOMES", "HostContext", "Recheck", "StepKind", "StepOutcome", "StepRegistry"]

class StepKind(Protocol):
    name: str
    description: str

    def parse(self, args: Any) -> Any:
        """Validate the step's arguments; raise ValueError with a message on bad input."""

    def run(self, ctx: HostContext, args: Any) -> StepOutcome: ...


Recheck = Callable[[HostContext, Any], bool]


class StepRegistry:
    """Name -> step kind. Built explicitly (no import-time registration)."""

    def __init__(self) -> None:
        self._kinds: dict[str, StepKind] = {}

    def register(self, kind: StepKind) -> None:
        if kind.name in self._kinds:
            raise ValueError(f"step kind '{kind.name}' registered twice")
        self._kinds[kind.name] = kind

    def get(self, name: str) -> StepKind:
        try:
            return self._kinds[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._kinds), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InputError(f"unknown step kind '{name}'{hint}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._kinds

    def names(self) -> list[str]:
        return sorted(self._kinds)
