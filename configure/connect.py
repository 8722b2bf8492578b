"""From inventory + state store to an SSH connection for a host.

The contract with provision: configure only talks to hosts that are ``active`` (their
install called back and their host key is pinned) or to unmanaged hosts whose key is pinned in
the state store or the inventory. Nothing here ever trusts a key on first use.
"""

from __future__ import annotations

from pathlib import Path

from configure.ssh import SshConnection, SshTarget
from inventory.errors import TransportError
from inventory.model import Inventory, SshSettings
from inventory.state import StateStore

CONNECTABLE_STATES = ("active", "maintenance")


def ssh_target(inv: Inventory, store: StateStore, host: str,
               private_key: Path | None) -> SshTarget:
    h = inv.host(host)
    if h.address is None:
        raise TransportError(f"host '{host}': no address (set address or provision.ip)")
    record = store.node(host)
    if h.managed and (record is None or record.state not in CONNECTABLE_STATES):
        state = record.state if record and record.state else "not provisioned"
        raise TransportError(f"host '{host}' is {state}, not active: provision it first "
                             "(metalchain provision)")
    keys = store.host_keys_of(host)
    if not keys and h.ssh.host_key:
        keys = [h.ssh.host_key]
    if not keys:
        raise TransportError(f"host '{host}': no pinned SSH host key in the state store or "
                             "the inventory (ssh.host_key); refusing to connect")
    return SshTarget(host=host, address=h.address, pinned_keys=tuple(keys), user=h.ssh.user,
                     port=h.ssh.port, private_key=private_key,
                     proxy_command=h.ssh.proxy_command, **keepalives(h.ssh))


def keepalives(ssh: SshSettings) -> dict[str, float]:
    """The host's ``ssh.keepalive_*`` and ``ssh.connect_timeout`` where the inventory sets them
    (else SshTarget's)."""
    found = {"keepalive_interval": ssh.keepalive_interval,
             "keepalive_timeout": ssh.keepalive_timeout,
             "connect_timeout": ssh.connect_timeout}
    return {k: float(v) for k, v in found.items() if v is not None}


def connector(inv: Inventory, store: StateStore, private_key: Path | None,
              connect_timeout: float | None = None):
    """A factory host -> SshConnection (connected lazily by the first command)."""

    def make(host: str) -> SshConnection:
        return SshConnection(ssh_target(inv, store, host, private_key), connect_timeout)

    return make
