"""The lifecycle states a node can be in, as the store holds them.

Which moves between them are allowed, and how long each may last, is the provisioner's
business (``provision/lifecycle.py``); the store only refuses a state that does not exist.
Members are strings (``NodeState.ACTIVE == "active"``), so they compare, hash, format and
serialise as the values stored before this enum existed.
"""

from __future__ import annotations

from enum import StrEnum

from inventory.errors import StateError


class NodeState(StrEnum):
    ENROLLED = "enrolled"
    POWERING_ON = "powering_on"
    PXE_BOOTING = "pxe_booting"
    INSTALLING = "installing"
    INSTALLED = "installed"
    REBOOTING = "rebooting"
    ACTIVE = "active"
    FAILED = "provision_failed"
    MAINTENANCE = "maintenance"


def node_state(value: object, node: str) -> NodeState:
    """``value`` as a :class:`NodeState`; StateError naming ``node`` and the value if unknown.

    >>> node_state("active", "n1") is NodeState.ACTIVE
    True
    """
    try:
        return NodeState(value)
    except ValueError:
        raise StateError(f"node '{node}': unknown state {value!r} (states: "
                         f"{', '.join(NodeState)})") from None


def stored_state(value: str | None, node: str) -> NodeState | None:
    """A state read from the store (None for a host outside the lifecycle)."""
    return None if value is None else node_state(value, node)
