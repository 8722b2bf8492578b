"""What the boot server asks of its caller, and the snapshot of nodes it serves.

The boot server decides nothing about the node lifecycle. It asks a :class:`DeployProvider`
whether a node should boot the installer now and what goes into its ``config.env``; it checks
and spends tokens through a :class:`TokenStore` (``inventory.state.StateStore`` is one); it hands
accepted installer reports to :class:`InstallCallbacks`. provision/lifecycle.py implements the
provider and the callbacks; tests implement small fakes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from inventory.errors import InventoryError, MetalchainError
from inventory.model import Host

_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


@dataclass(frozen=True)
class NodeConfig:
    """The values of a node's ``config.env`` (see ``provision.contract.CONFIG_KEYS``).

    ``image_url`` may be absolute or a path such as ``/images/debian-12.raw``, which the boot
    server completes with its own base URL (the provider need not know the port chosen at
    start). Keys are text; the server base64-encodes them as the contract says.
    """

    hostname: str
    image_url: str
    image_sha256: str
    image_size: int
    authorized_keys: str
    host_key: str = field(repr=False)
    host_key_pub: str
    mac: str
    #: the installed system's static IPv4 address with prefix ("10.77.0.11/24")
    ipv4: str
    gateway: str = ""
    nameservers: tuple[str, ...] = ()
    root_device: str = "auto"


@runtime_checkable
class DeployProvider(Protocol):
    """Answers the per-node questions of the boot flow; implemented by the lifecycle."""

    def install_token(self, node: str) -> str | None:
        """The deploy token if ``node`` should boot the installer now, else None.

        "Now" means: the node is in a provisioning state (powering_on, pxe_booting, ...)
        and a token was issued for this deployment. The server also checks the token
        against the :class:`TokenStore`, so a stale answer still yields ``exit``.
        """
        ...

    def node_config(self, node: str) -> NodeConfig | None:
        """The node's installer configuration, or None if it is not being deployed."""
        ...


@runtime_checkable
class TokenStore(Protocol):
    """One-time deploy tokens (``inventory.state.StateStore`` implements this)."""

    def check_deploy_token(self, name: str, token: str) -> bool: ...

    def spend_deploy_token(self, name: str, token: str) -> bool: ...


@runtime_checkable
class InstallCallbacks(Protocol):
    """Accepted installer reports. Each accepted request calls exactly one method once.

    Called on an HTTP worker thread; implementations must be thread-safe and quick (record
    the event and return; the installer waits for the answer).
    """

    def on_progress(self, node: str, stage: str, message: str) -> None: ...

    def on_done(self, node: str) -> None: ...

    def on_failed(self, node: str, stage: str, message: str, log: str) -> None: ...


@dataclass(frozen=True)
class BootNode:
    """A host the boot server knows: name, MAC and (static) IPv4 address."""

    name: str
    mac: str
    ip: str | None = None
    image: str | None = None

    @property
    def mac_hyphens(self) -> str:
        return self.mac.replace(":", "-")


@dataclass(frozen=True)
class BootNodes:
    """An immutable snapshot of the nodes with provisioning data, swapped whole on reload."""

    by_name: Mapping[str, BootNode] = field(default_factory=dict)
    by_mac: Mapping[str, BootNode] = field(default_factory=dict)

    @classmethod
    def of(cls, nodes: Iterable[BootNode]) -> BootNodes:
        by_name: dict[str, BootNode] = {}
        by_mac: dict[str, BootNode] = {}
        for node in nodes:
            if not _MAC_RE.match(node.mac):
                raise InventoryError(f"MAC {node.mac!r} is not lower-case aa:bb:cc:dd:ee:ff",
                                     host=node.name)
            if node.name in by_name or node.mac in by_mac:
                raise InventoryError(f"duplicate node name or MAC {node.mac}", host=node.name)
            by_name[node.name] = node
            by_mac[node.mac] = node
        return cls(by_name, by_mac)

    @classmethod
    def from_hosts(cls, hosts: Iterable[Host]) -> BootNodes:
        """Hosts with ``provision.mac``; the IP is ``provision.ip``, else the host's address."""
        nodes = []
        for host in hosts:
            prov = host.provision
            if prov is None or not prov.mac:
                continue
            nodes.append(BootNode(host.name, prov.mac, prov.ip or host.address, prov.image))
        return cls.of(nodes)

    def __len__(self) -> int:
        return len(self.by_name)


class BootServerError(MetalchainError):
    """The boot server could not start, reload or stop (dnsmasq, HTTP, files)."""
