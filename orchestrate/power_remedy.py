"""The ``power_cycle`` remediation: bring a node back through its BMC, then prove it is back.

What "power cycle" means depends on what the BMC says first: a node that is **off** is powered
**on** (a chassis cycle of an off node is refused by many BMCs, and "on" is what it needs); a
node that is **on** but hung (the reason we are asked) is **cycled** (the driver's
``power_cycle``: off, wait until off, on, wait until on, each step idempotent, so a lost IPMI
reply never cycles it twice; provision/bmc.py, "Repeated requests"). The BMC action is an
ordinary run (kind ``remediation``) of the ``power`` step, so it is journaled, takes the
node's lease (serve's BMC poller leaves a leased node alone: one BMC session at a time) and
shows in ``runs list``. ``if_on="leave"`` (the shipped rule for ``NodePoweredOff``) does not
cycle a node that is on again by the time we act (someone or something powered it on: cycling
it would cut its boot short); it is only verified. Then the verification, bounded by what is
left of ``timeout``: the node answers SSH with its pinned host key (the contract that made it
``active``) and the state store still has it ``active``.
"""

from __future__ import annotations

import time
from typing import Any

from inventory.errors import MetalchainError
from orchestrate.reports import FAILED
from orchestrate.runs import RunOptions, single_step_playbook, start_run
from orchestrate.stop import Stop
from provision import lifecycle as lc

#: Seconds the BMC status read and the power step may take (within ``timeout``).
BMC_TIMEOUT = 30.0
#: Seconds between two SSH probes while waiting for the node to come back.
PROBE_INTERVAL = 1.0
#: Seconds to wait for a lease another run holds on the node.
LEASE_WAIT = 10.0


#: What ``power_cycle`` does to a node its BMC says is on: cycle it (a hung node) or leave it
#: (only verify it: the node was reported off and is on again).
IF_ON = ("cycle", "leave")


def power_cycle_node(site: Any, host: str, timeout: float, stop: Stop | None = None,
                     *, if_on: str = "cycle") -> tuple[bool, str, str | None]:
    """Power ``host`` on (if off) or cycle it (if on; with ``if_on="leave"`` leave it as it
    is), then wait until it answers SSH with its pinned key and is ``active``; returns
    ``(ok, message, run_uid)`` (``run_uid`` None when no run was started: no BMC, BMC silent,
    node not in a state to act on, on and left).

    Example::

        ok, message, run = power_cycle_node(site, "node1", timeout=180)
        # (True, "powered on (it was off); active, SSH answered with the pinned key 31.2 s
        #  after the power step", "3f2a...")
    """
    if if_on not in IF_ON:
        return False, f"if_on must be one of {', '.join(IF_ON)}, not {str(if_on)[:40]!r}", None
    start = time.monotonic()
    deadline = start + timeout
    node = site.inventory.hosts.get(host)
    if node is None:
        return False, f"{host} is not in the inventory", None
    if node.bmc is None:
        return False, f"{host} has no BMC in the inventory: cannot power-cycle it", None
    rec = site.state.node(host)
    state = rec.state if rec else None
    if state in lc.IN_PROGRESS:
        return False, f"{host} is {state}: the provisioner owns its power now", None
    pinned = site.state.host_keys_of(host)
    address = node.address or (node.provision.ip if node.provision else None)
    if not pinned or not address:
        return False, f"{host} has no pinned host key or no address: cannot verify it", None
    try:
        power = _power_status(node, min(BMC_TIMEOUT, timeout))
    except MetalchainError as exc:
        return False, f"cannot read the power state: {exc}", None
    action = "on" if power == "off" else "cycle"
    uid = None
    if action == "cycle" and if_on == "leave":
        done = "not cycled (it is on again)"
    else:
        ok, message, uid = _power_run(site, host, action, min(BMC_TIMEOUT, _left(deadline)),
                                      stop)
        if not ok:
            return False, message, uid
        done = "powered on (it was off)" if action == "on" else "power-cycled (it was on)"
    acted = time.monotonic()
    why = _wait_back(site, host, address, node.ssh.port, pinned[0], deadline, stop)
    if why:
        return False, f"{done}, but {why}", uid
    return True, (f"{done}; active, SSH answered with the pinned key "
                  f"{time.monotonic() - acted:.1f} s after the power step"), uid


def _left(deadline: float) -> float:
    return max(1.0, deadline - time.monotonic())


def _power_status(node: Any, timeout: float) -> str:
    from provision.drivers import driver_for

    with driver_for(node, timeout=timeout) as bmc:
        return bmc.power_status(timeout=timeout)


def _power_run(site: Any, host: str, action: str, timeout: float, stop: Stop | None
               ) -> tuple[bool, str, str | None]:
    from provision.power_step import parse_power

    pb = single_step_playbook("@power_cycle", "power", parse_power({"action": action}),
                              f"power_cycle: power {action}", timeout=timeout)
    report = start_run(site, pb, RunOptions(kind="remediation", parallel=1,
                                            named={"power_cycle": [host]},
                                            wait=min(LEASE_WAIT, timeout)), stop=stop)
    if host in report.held:
        return False, f"not powered {action}: {report.held[host]}", report.uid
    outcome = report.first_outcome(host)
    if outcome is None:
        return False, f"power {action} did not run ({report.interrupted or 'not run'})", \
            report.uid
    if outcome.status in FAILED:
        return False, f"power {action} failed: {outcome.message}", report.uid
    return True, str(outcome.message), report.uid


def _wait_back(site: Any, host: str, address: str, port: int, pinned: str, deadline: float,
               stop: Stop | None) -> str:
    """"" once ``host`` answers SSH with ``pinned`` and is active; else why not (at the
    deadline, or when ``stop`` is requested)."""
    from provision.sshcheck import ssh_answers_with

    why = "no SSH answer yet"
    while True:
        if stop is not None and stop.stopping:
            return f"stopped while waiting for it ({why})"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return f"it did not come back within the timeout: {why}"
        ok, reason = ssh_answers_with(address, pinned, port=port,
                                      timeout=max(0.5, min(3.0, remaining)))
        if ok:
            rec = site.state.node(host)
            state = rec.state if rec else None
            if state == lc.ACTIVE:
                return ""
            why = f"SSH answers but the node is {state or 'not in the store'}, not active"
        else:
            why = reason or "no SSH answer"
        time.sleep(max(0.0, min(PROBE_INTERVAL, deadline - time.monotonic())))
