"""Types shared across stages: what a step gets (a host context) and returns (an outcome).

They live in the bottom layer so provision/, configure/ and monitor/ can implement step kinds
without importing orchestrate/, which registers and runs them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

OUTCOMES = ("ok", "changed", "failed", "unreachable", "skipped")


@dataclass
class StepOutcome:
    status: str                     # one of OUTCOMES
    message: str = ""
    changes: list[str] = field(default_factory=list)
    output: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.status not in OUTCOMES:
            raise ValueError(f"unknown step outcome {self.status!r}")


class HostContext(Protocol):
    """What a step gets for one host: its name, vars, connection and run settings."""

    host: str
    vars: Mapping[str, Any]
    check: bool
    #: the state store (inventory.state.StateStore): owed handlers, drift
    state: Any
    #: run-wide options: playbooks_dir (Path | None), diff (bool), inventory (the Inventory,
    #: for kinds that need more of the host than its vars, e.g. its BMC), vars (context vars)
    options: Mapping[str, Any]
    #: ``time.monotonic()`` by which this step must end (the step's ``timeout:``), or None
    deadline: float | None

    def connection(self) -> Any: ...

    def emit(self, event: str, **fields: Any) -> None: ...


def time_left(deadline: float | None, default: float) -> float:
    """Seconds a call may take: what is left until ``deadline``, else ``default``.

    Never less than a small positive value, so a call that starts just before the deadline
    fails at once with its own timeout error instead of getting an invalid timeout.
    """
    if deadline is None:
        return default
    import time

    return max(0.01, min(default, deadline - time.monotonic()))
