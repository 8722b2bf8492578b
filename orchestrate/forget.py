"""Forgetting a host that left the inventory: its keys, facts, drift, owed handlers and
deploy tokens leave the state store; its history (journal, transitions) stays readable.

The rule of who may be forgotten lives here, between the inventory and the store: a host
still in the inventory would be recreated, half-known, by its next run, so it is refused
unless forced (e.g. a host reinstalled under the same name whose old keys must go).
"""

from __future__ import annotations

import getpass
from typing import Any

from inventory.errors import InputError
from inventory.state.nodes import Forgotten


def operator() -> str:
    """Who is acting, for the audit log."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def forget_host(site: Any, host: str, *, force: bool = False) -> Forgotten:
    """Remove ``host`` from the state store (see :meth:`StateStore.forget_node`).

    InputError (exit 2) if ``host`` is still in the inventory and ``force`` is not given, or
    if the store does not know it; ``LeaseHeld`` (exit 1) while a lease on it exists.
    """
    in_inventory = host in site.inventory.hosts
    if in_inventory and not force:
        raise InputError(f"'{host}' is still in the inventory ({site.inventory.host(host).file}"
                         f":{site.inventory.host(host).line}); remove it there first, or "
                         "pass --force to forget its state anyway")
    return site.state.forget_node(host, actor=operator(),
                                  detail={"in_inventory": in_inventory, "forced": force})
