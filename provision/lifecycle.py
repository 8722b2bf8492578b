"""The node lifecycle: states, allowed transitions, per-state timeouts.

::

    enrolled -> powering_on -> pxe_booting -> installing -> installed -> rebooting -> active
                     \\______________\\______________\\___________\\____________\\
                                                                       -> provision_failed(reason)
    provision_failed -> powering_on (--retry);  active -> powering_on (--force)
    any -> maintenance (operator);  maintenance -> enrolled

Every state has a timeout, every transition is recorded with its time and reason (state
store), and a node in progress is never left there: a watcher (``provision`` while it runs,
``serve`` always) fails it when its state's time is up, also across a controller restart,
because the clock starts at the transition recorded in the store, not in memory.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from inventory.errors import InputError, StateError
from inventory.state import NodeState, StateStore

# The states are NodeState members (strings: ACTIVE == "active"); these names are the ones the
# rest of metalchain uses.
ENROLLED = NodeState.ENROLLED
POWERING_ON = NodeState.POWERING_ON
PXE_BOOTING = NodeState.PXE_BOOTING
INSTALLING = NodeState.INSTALLING
INSTALLED = NodeState.INSTALLED
REBOOTING = NodeState.REBOOTING
ACTIVE = NodeState.ACTIVE
FAILED = NodeState.FAILED
MAINTENANCE = NodeState.MAINTENANCE

IN_PROGRESS = (POWERING_ON, PXE_BOOTING, INSTALLING, INSTALLED, REBOOTING)
STATES = (ENROLLED, *IN_PROGRESS, ACTIVE, FAILED, MAINTENANCE)

# Seconds allowed in each in-progress state (measured under TCG, with margin).
DEFAULT_TIMEOUTS: dict[str, float] = {
    POWERING_ON: 30.0,     # BMC accepted power on, waiting for the PXE request
    PXE_BOOTING: 120.0,    # firmware, iPXE, installer kernel until the first progress report
    INSTALLING: 600.0,     # image streamed and verified
    INSTALLED: 30.0,       # done reported, reboot under way
    REBOOTING: 180.0,      # until SSH answers with the pinned host key
}

ALLOWED: dict[NodeState | None, tuple[NodeState, ...]] = {
    None: (ENROLLED, MAINTENANCE),
    ENROLLED: (POWERING_ON, MAINTENANCE),
    POWERING_ON: (PXE_BOOTING, FAILED, MAINTENANCE),
    PXE_BOOTING: (INSTALLING, FAILED, MAINTENANCE),
    INSTALLING: (INSTALLED, FAILED, MAINTENANCE),
    INSTALLED: (REBOOTING, FAILED, MAINTENANCE),
    REBOOTING: (ACTIVE, FAILED, MAINTENANCE),
    ACTIVE: (POWERING_ON, MAINTENANCE),
    FAILED: (POWERING_ON, MAINTENANCE),
    MAINTENANCE: (ENROLLED,),
}


def check_transition(current: str | None, to: str) -> None:
    if to not in ALLOWED.get(current, ()):
        raise StateError(f"no transition from {current or 'new'} to {to}")


def parse_timeouts(raw: Mapping[str, object] | None, source: str) -> dict[str, float]:
    """Operator overrides (``boot.timeouts`` in metalchain.yml) over the defaults."""
    timeouts = dict(DEFAULT_TIMEOUTS)
    for key, value in (raw or {}).items():
        if key not in DEFAULT_TIMEOUTS:
            raise InputError(f"{source}: boot.timeouts.{key}: not a timed state; timed "
                             f"states: {', '.join(DEFAULT_TIMEOUTS)}")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise InputError(f"{source}: boot.timeouts.{key} must be a positive number of "
                             "seconds")
        timeouts[key] = float(value)
    return timeouts


@dataclass(frozen=True)
class Overdue:
    node: str
    state: str
    seconds: float


def overdue(nodes: list[tuple[str, str | None, float | None]], now: float,
            timeouts: Mapping[str, float]) -> list[Overdue]:
    """Pure: which (node, state, since) are past their state's timeout."""
    out = []
    for name, state, since in nodes:
        if state in IN_PROGRESS and since is not None and now - since > timeouts[state]:
            out.append(Overdue(name, state, timeouts[state]))
    return out


class Lifecycle:
    """Transitions through the state store; every one checked and recorded."""

    def __init__(self, store: StateStore, timeouts: Mapping[str, float] | None = None) -> None:
        self.store = store
        self.timeouts = dict(timeouts or DEFAULT_TIMEOUTS)

    def state(self, node: str) -> NodeState | None:
        rec = self.store.node(node)
        return rec.state if rec else None

    def move(self, node: str, to: str, reason: str) -> None:
        """Compare-and-set: the store refuses if another process moved the node meanwhile."""
        current = self.state(node)
        check_transition(current, to)
        self.store.set_node_state(node, to, reason, expect=(current,))

    def fail(self, node: str, reason: str) -> bool:
        """Fail ``node`` if it is still in progress; False if it had already left."""
        current = self.state(node)
        if current not in IN_PROGRESS:
            return False
        try:
            self.store.set_node_state(node, FAILED, reason, expect=(current,))
        except StateError:
            return False
        self.store.revoke_deploy_tokens(node)
        return True

    def enroll(self, node: str) -> None:
        if self.state(node) is None:
            self.move(node, ENROLLED, "enrolled")
