"""Waiting for an incident to end: what an operator (or the demo, or a script after a
maintenance) does after a fault — "tell me when the incident on vm1 is over, and how".

    rec = wait_incident(site.state, "vm1", since=t0, timeout=600, alertname="VmDown")

The first incident on ``target`` received at or after ``since`` (epoch seconds), optionally
of one alert, is followed until it leaves ``open``/``acting``. Nothing here acts on it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from inventory.errors import MetalchainError
from inventory.state.incidents import UNFINISHED, IncidentRecord


class IncidentWaitTimeout(MetalchainError):
    """No incident appeared, or it did not end, within the timeout (exit code 1)."""


def first_incident(store: Any, target: str, since: float, alertname: str | None = None
                   ) -> IncidentRecord | None:
    """The oldest incident on ``target`` received at or after ``since``."""
    found = [i for i in store.list_incidents(target=target, limit=1000)
             if i.created_at >= since and (alertname is None or i.alertname == alertname)]
    return min(found, key=lambda i: i.id) if found else None


def wait_incident(store: Any, target: str, *, since: float, timeout: float,
                  alertname: str | None = None, poll: float = 0.5,
                  clock: Callable[[], float] = time.monotonic,
                  sleep: Callable[[float], None] = time.sleep) -> IncidentRecord:
    """Block until the first matching incident has ended; return it (any end state)."""
    deadline = clock() + timeout
    what = f"an incident on {target}" + (f" ({alertname})" if alertname else "")
    rec: IncidentRecord | None = None
    while True:
        rec = first_incident(store, target, since, alertname)
        if rec is not None and rec.state not in UNFINISHED:
            return rec
        if clock() >= deadline:
            seen = ("none arrived" if rec is None else
                    f"incident {rec.id} is still {rec.state} (step {rec.step})")
            raise IncidentWaitTimeout(f"waited {timeout:g} s for {what} to end: {seen}")
        sleep(poll)
