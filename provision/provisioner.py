"""Provisioning many nodes at once: power them on into the installer, watch them through the
lifecycle, and make them active once SSH answers with the key pinned for them.

Watching is :mod:`provision.watch` (woken by callbacks, with timeouts on time and a slow
backstop). :func:`reconcile` is the one-shot check ``metalchain provision`` runs first: it
judges every node in progress from the state store alone — time in state, power, SSH — so no
node stays "in progress" because the process that started it went away.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from inventory.errors import BmcError, InputError, MetalchainError
from inventory.model import Host, Inventory
from inventory.state import StateStore
from provision import lifecycle as lc
from provision.deploy import HostKeys, console_tail
from provision.settings import DEFAULT_TOKEN_TTL
from provision.watch import (
    INSTALLED_GRACE,
    POWER_STATES,
    POWER_SYNC_INTERVAL,
    REMOTE_STORE_POLL,
    SSH_STATES,
    NodeChanges,
    NodeWatcher,
    ssh_ok,
)

log = logging.getLogger(__name__)


@dataclass
class NodeResult:
    node: str
    state: str | None = None
    reason: str = ""
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    #: why the node was not started (its state is unchanged: a BMC preflight failed)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and self.state == lc.ACTIVE


class BmcPreflightError(BmcError):
    """The BMC did not answer before anything changed: the node keeps its state."""


def check_startable(host: Host, state: str | None, *, retry: bool, force: bool,
                    overdue: bool) -> None:
    """Refuse what an operator would regret; each message says how to proceed."""
    if host.bmc is None or host.provision is None or not host.provision.mac:
        raise InputError(f"host '{host.name}' needs bmc and provision.mac in the inventory")
    if state == lc.ACTIVE and not force:
        raise InputError(f"host '{host.name}' is active; reinstalling it needs --force")
    if state == lc.FAILED and not retry:
        raise InputError(f"host '{host.name}' is provision_failed; use --retry")
    if state == lc.MAINTENANCE:
        raise InputError(f"host '{host.name}' is in maintenance")
    if state in lc.IN_PROGRESS and not overdue:
        raise InputError(f"host '{host.name}' is already being provisioned ({state})")


def preflight(store: StateStore, hosts: list[Host], timeouts: Mapping[str, float], *,
              retry: bool, force: bool) -> None:
    """Refuse, before anything changes, every host whose state forbids starting it."""
    now = time.time()
    for h in hosts:
        rec = store.node(h.name)
        state = rec.state if rec else None
        late = bool(rec and lc.overdue([(h.name, state, rec.state_since)], now, timeouts))
        check_startable(h, state, retry=retry, force=force, overdue=late)


def timings(store: StateStore, node: str) -> dict[str, float]:
    """Seconds from the last power-on to each later state, from the recorded transitions."""
    ts = store.transitions(node)
    start = max((i for i, t in enumerate(ts) if t.to_state == lc.POWERING_ON), default=None)
    if start is None:
        return {}
    t0 = ts[start].at
    return {t.to_state: round(t.at - t0, 2) for t in ts[start:]}


def reconcile(inventory: Inventory, store: StateStore, timeouts: Mapping[str, float],
              bmc_for: Callable[..., object] | None = None,
              now: Callable[[], float] = time.time) -> list[str]:
    """Judge every node in progress once; returns what was done (for logs).

    A one-shot check (``metalchain provision`` runs it before starting nodes): each node in
    progress costs one BMC session here. ``metalchain serve`` does not call it in a loop; its
    watchers (:mod:`provision.watch`) keep one session per node and wake on callbacks.
    """
    life = lc.Lifecycle(store, timeouts)
    done: list[str] = []
    records = [n for n in store.list_nodes() if n.state in lc.IN_PROGRESS]
    for o in lc.overdue([(n.name, n.state, n.state_since) for n in records], now(), timeouts):
        host = inventory.hosts.get(o.node)
        tail = console_tail(host) if host else ""
        reason = (f"timed out after {o.seconds:g}s in {o.state}"
                  + (f"; console: {tail}" if tail else ""))
        if life.fail(o.node, reason[:4000]):
            done.append(f"{o.node}: {reason}")
    for rec in store.list_nodes():
        host = inventory.hosts.get(rec.name)
        if host is None:
            continue
        if rec.state == lc.INSTALLED and rec.state_since and \
                now() - rec.state_since > INSTALLED_GRACE:
            # The process that got "done" died before moving on; the node reboots anyway.
            try:
                life.move(rec.name, lc.REBOOTING, "installed; rebooting (re-checked)")
            except MetalchainError:
                continue
        if rec.state in SSH_STATES and _ssh_ok(host, store):
            try:
                life.move(rec.name, lc.ACTIVE, "SSH answered with the pinned host key")
                done.append(f"{rec.name}: active")
            except MetalchainError:
                pass
        elif rec.state in POWER_STATES and bmc_for is not None and host.bmc is not None:
            try:
                with bmc_for(host, timeout=3.0) as bmc:  # type: ignore[attr-defined]
                    power = bmc.power_status()
            except BmcError:
                continue
            if power == "off" and life.fail(rec.name, f"powered off while {rec.state}"):
                done.append(f"{rec.name}: powered off while {rec.state}")
    return done


def _ssh_ok(host: Host, store: StateStore) -> bool:
    keys = store.host_keys_of(host.name)
    return ssh_ok(host, keys[0] if keys else None)


class Provisioner:
    """Starts nodes over their BMC and watches each until it leaves the in-progress states.

    ``changes`` is the process's :class:`provision.watch.NodeChanges` when the boot server
    (and so the deploy callbacks) runs in this process: watchers then wake on callbacks. With
    None, the callbacks reach another process (a running ``metalchain serve``) and watchers
    re-read the store every :data:`provision.watch.REMOTE_STORE_POLL` seconds instead.
    """

    def __init__(self, inventory: Inventory, store: StateStore, *, hostkeys: HostKeys,
                 bmc_for: Callable[..., object], timeouts: Mapping[str, float],
                 on_change: Callable[[str, str, str], None] | None = None,
                 changes: NodeChanges | None = None,
                 token_ttl: float = DEFAULT_TOKEN_TTL) -> None:
        self.inventory = inventory
        self.store = store
        self.hostkeys = hostkeys
        self.bmc_for = bmc_for
        self.timeouts = {**lc.DEFAULT_TIMEOUTS, **timeouts}
        self.life = lc.Lifecycle(store, self.timeouts)
        self.on_change = on_change or (lambda node, state, reason: None)
        self.changes = changes if changes is not None else NodeChanges()
        self.store_poll = REMOTE_STORE_POLL if changes is None else POWER_SYNC_INTERVAL
        self.token_ttl = token_ttl

    def provision_one(self, host: Host, deadline: float | None = None) -> NodeResult:
        """Provision one node to active (or failed); ``deadline`` is wall-clock time.

        Many nodes at once run as a run of the ``provision`` step kind
        (:mod:`provision.provision_step`): the runner fans out, bounds and journals them.
        """
        start = time.monotonic()
        node = host.name
        bmc: Any = None
        try:
            # One BMC session for the whole deployment: power on, then the power sync.
            bmc = self.bmc_for(host, timeout=5.0)
            self.bmc_preflight(host, bmc)
            self._start(host, bmc)
            self._watch(host, bmc, deadline)
        except BmcPreflightError as exc:
            # Nothing changed yet (state, pinned key, token): an active node stays active.
            if bmc is not None:
                bmc.close()
                bmc = None
            rec = self.store.node(node)
            state = rec.state if rec else None
            error = f"not started, {node} stays {state or 'not enrolled'}: {exc}"
            return NodeResult(node, state, error, time.monotonic() - start, {}, error=error)
        except BmcError as exc:
            self.life.fail(node, f"BMC: {exc}")
            self.on_change(node, lc.FAILED, f"BMC: {exc}")
        except MetalchainError as exc:
            self.life.fail(node, str(exc))
            self.on_change(node, lc.FAILED, str(exc))
        finally:
            if bmc is not None:
                bmc.close()
        rec = self.store.node(node)
        state = rec.state if rec else None
        if state == lc.FAILED:
            self.hostkeys.discard(node)
        return NodeResult(node, state, rec.reason if rec else "",
                          time.monotonic() - start, timings(self.store, node))

    @staticmethod
    def bmc_preflight(host: Host, bmc: Any) -> None:
        """The BMC answers a ping and an authenticated power-status query, before anything
        changes; raises :class:`BmcPreflightError` saying which failed (the driver's error
        names the host and the BMC address)."""
        where = f"{host.name} (BMC {host.bmc.address}:{host.bmc.port})" if host.bmc else \
            host.name
        if not bmc.ping(timeout=2.0):
            raise BmcPreflightError(f"BMC preflight failed: {where}: does not answer a "
                                    "ping (RMCP, 2 s)")
        try:
            bmc.power_status()
        except BmcError as exc:
            raise BmcPreflightError(f"BMC preflight failed: power status: {exc}") from None

    def _start(self, host: Host, bmc: Any = None) -> None:
        """Enroll, key, token, power on into the network boot (``bmc``: an open driver)."""
        node = host.name
        self.life.enroll(node)
        state = self.life.state(node)
        if state in lc.IN_PROGRESS:   # overdue leftover of an earlier run
            self.life.fail(node, f"abandoned in {state}; starting again")
        pub = self.hostkeys.generate(node)
        self.store.pin_host_key(node, pub, "provision")
        # The deployment's one token, issued before the node can ask for it: every fetch of
        # its iPXE script (iPXE retries) hands out this same token (docs/provision.md).
        self.hostkeys.set_token(node, self.store.issue_deploy_token(node, self.token_ttl))
        self.life.move(node, lc.POWERING_ON, "provisioning started")
        self.on_change(node, lc.POWERING_ON, "")
        if bmc is None:
            with self.bmc_for(host, timeout=5.0) as own:  # type: ignore[attr-defined]
                self._power_on(host, own)
        else:
            self._power_on(host, bmc)

    @staticmethod
    def _power_on(host: Host, bmc: Any) -> None:
        if not bmc.ping(timeout=2.0):
            raise BmcError(f"{host.name} (BMC {host.bmc.address}:{host.bmc.port}): "  # type: ignore[union-attr]
                           "does not answer")
        bmc.set_bootdev("network", persistent=True)
        if bmc.power_status() == "on":
            bmc.power_cycle()
        else:
            bmc.power_on()

    def _watch(self, host: Host, bmc: Any, deadline: float | None) -> None:
        NodeWatcher(host, self.store, timeouts=self.timeouts, changes=self.changes, bmc=bmc,
                    deadline=deadline, store_poll=self.store_poll,
                    power_first=POWER_SYNC_INTERVAL, on_change=self.on_change).run()
