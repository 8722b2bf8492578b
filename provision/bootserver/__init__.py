"""The boot server: dnsmasq (DHCP/TFTP/RA) and HTTP (iPXE scripts, installer, images, callbacks).

Controller side of ``provision.contract``. It serves what the inventory and the caller say and
decides nothing about the node lifecycle: whether a node installs, its configuration and what
an installer report means are asked of the interfaces in :mod:`.interfaces`.

Example::

    settings = BootSettings.from_site(site)
    with BootServer(settings, provider=lifecycle, tokens=site.state, callbacks=lifecycle,
                    inventory=site.inventory) as boot:
        print(boot.url)                  # http://10.77.0.1:8080
        boot.reload(new_inventory)       # SIGHUP dnsmasq (restart only if its config changed)
"""

from __future__ import annotations

import logging

from inventory.model import Inventory
from provision.bootserver.dnsmasq import Dnsmasq, ReloadKind
from provision.bootserver.http import BootHttpServer, HttpLimits, RequestRecord
from provision.bootserver.interfaces import (
    BootNode,
    BootNodes,
    BootServerError,
    DeployProvider,
    InstallCallbacks,
    NodeConfig,
    TokenStore,
)
from provision.settings import BootSettings

__all__ = [
    "BootHttpServer",
    "BootNode",
    "BootNodes",
    "BootServer",
    "BootServerError",
    "BootSettings",
    "DeployProvider",
    "HttpLimits",
    "InstallCallbacks",
    "NodeConfig",
    "RequestRecord",
    "TokenStore",
]

log = logging.getLogger("metalchain.bootserver")


class BootServer:
    """dnsmasq + HTTP for one provisioning network, started and stopped together.

    HTTP starts first (dnsmasq hands out its URL, and with ``http_port: 0`` the port is only
    known once bound); dnsmasq stops first (no node is sent to a server that is going away).
    ``dhcp=False`` runs the HTTP side alone, e.g. when another DHCP server chains to us.
    """

    def __init__(self, settings: BootSettings, *, provider: DeployProvider, tokens: TokenStore,
                 callbacks: InstallCallbacks, inventory: Inventory | None = None,
                 dhcp: bool = True, limits: HttpLimits | None = None,
                 dnsmasq_binary: str = "dnsmasq") -> None:
        self.settings = settings
        self._nodes = _nodes_of(inventory)
        self.http = BootHttpServer(
            str(settings.address), settings.http_port, installer_dir=settings.installer_dir,
            images_dir=settings.images_dir, provider=provider, tokens=tokens,
            callbacks=callbacks, nodes=self._nodes, kernel_args=settings.kernel_args,
            limits=limits)
        self.dhcp = dhcp
        self._dnsmasq_binary = dnsmasq_binary
        self.dnsmasq: Dnsmasq | None = None

    @property
    def url(self) -> str:
        """The HTTP base URL nodes use (valid after start)."""
        return self.http.url

    def start(self) -> None:
        self.http.start()
        if not self.dhcp:
            return
        try:
            self.dnsmasq = Dnsmasq(self.settings, self.http.url, binary=self._dnsmasq_binary)
            self.dnsmasq.start(self._nodes)
        except BaseException:
            self.stop()
            raise

    def reload(self, inventory: Inventory) -> ReloadKind:
        """Serve ``inventory``'s nodes from now on; returns what dnsmasq had to do.

        The new inventory is validated (static leases inside the subnet, no duplicate IP)
        before anything changes: on error the old nodes keep being served.
        """
        nodes = _nodes_of(inventory)
        kind: ReloadKind = "unchanged"
        if self.dnsmasq is not None:
            kind = self.dnsmasq.reload(nodes)
        self._nodes = nodes
        self.http.set_nodes(nodes)
        return kind

    def stop(self) -> None:
        """Stop dnsmasq, then HTTP; safe to call twice or after a failed start."""
        errors: list[BootServerError] = []
        if self.dnsmasq is not None:
            try:
                self.dnsmasq.stop()
            except BootServerError as exc:
                errors.append(exc)
            self.dnsmasq = None
        try:
            self.http.stop()
        except BootServerError as exc:
            errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> BootServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _nodes_of(inventory: Inventory | None) -> BootNodes:
    return BootNodes() if inventory is None else BootNodes.from_hosts(inventory.hosts.values())
