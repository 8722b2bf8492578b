"""The interface between remediation and whoever can act on hosts: actions and verifiers.

monitor/ decides *what* to do; it cannot do it (it imports neither configure nor orchestrate).
orchestrate registers implementations here — ``restart_service`` as an ordinary journaled
run, ``apply_role``, ``power_cycle`` through the BMC, ``restart_vm`` for a guest on its
hypervisor, ... — and the engine
(:mod:`monitor.engine`) calls them by name::

    actions = Actions()
    actions.register("restart_service", lambda call: ActionResult(True, "restarted"))
    verifiers = Verifiers()
    verifiers.register("service_active", lambda call: VerifyResult(True, "active"))

An action is one attempt with a time limit (``ActionCall.timeout``) and a ``stop`` event the
engine sets when it shuts down (an action that sees it should end as soon as it safely can).
A verifier is one probe: the engine polls it until it succeeds or the step's verification
timeout passes, so a verifier never loops by itself. Every value in ``args`` and ``labels``
came from an alert or a rule: data, never a template or a shell fragment.

Whatever an implementation raises is turned into a failed result here (:func:`call_action`,
:func:`call_verifier`): a broken action must fail its step, not kill a worker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

#: The actions rules may name (the registry may hold others; these are the documented ones).
KNOWN_ACTIONS = ("restart_service", "apply_role", "power_cycle", "reprovision", "playbook",
                 "restart_vm")
#: The verifications rules may name.
KNOWN_VERIFIERS = ("service_active", "host_ssh", "prometheus")


@dataclass(frozen=True)
class ActionCall:
    target: str
    args: Mapping[str, Any]
    incident_id: int
    timeout: float
    stop: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class ActionResult:
    ok: bool
    message: str = ""
    run_uid: str | None = None


@dataclass(frozen=True)
class VerifyCall:
    target: str
    args: Mapping[str, Any]
    labels: Mapping[str, str]
    timeout: float


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    message: str = ""


Action = Callable[[ActionCall], ActionResult]
Verifier = Callable[[VerifyCall], VerifyResult]
F = TypeVar("F")


class _Registry(Generic[F]):
    what = "entry"

    def __init__(self) -> None:
        self._items: dict[str, F] = {}

    def register(self, name: str, fn: F) -> None:
        """Register (or replace) ``name``."""
        self._items[name] = fn

    def get(self, name: str) -> F | None:
        return self._items.get(name)

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items


class Actions(_Registry[Action]):
    """name -> action."""

    what = "action"


class Verifiers(_Registry[Verifier]):
    """name -> verifier."""

    what = "verification"


def call_action(actions: Actions, name: str, call: ActionCall) -> ActionResult:
    """Run action ``name``; an unknown name or an exception is a failed result."""
    return _call(actions, name, call, ActionResult)


def call_verifier(verifiers: Verifiers, name: str, call: VerifyCall) -> VerifyResult:
    """Run verifier ``name`` once; an unknown name or an exception is a failed probe."""
    return _call(verifiers, name, call, VerifyResult)


def _call(registry: Any, name: str, call: Any, result_type: Any) -> Any:
    what = registry.what
    fn = registry.get(name)
    if fn is None:
        return result_type(False, f"no {what} '{name}' is registered")
    try:
        result = fn(call)
    except Exception as exc:   # a registered implementation's bug is a failed step, logged
        log.warning("%s %s on %s raised", what, name, call.target, exc_info=True)
        return result_type(False, f"{name} failed: {exc.__class__.__name__}: {exc}")
    if not isinstance(result, result_type):
        return result_type(False, f"{name} returned {type(result).__name__}, not a result")
    return result
