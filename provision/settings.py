"""Boot server settings: the ``boot:`` mapping of ``SITE/metalchain.yml``, parsed and checked.

The boot server only ever learns an interface name and addresses from here; it never knows
whether the network behind them is a lab bridge or a datacenter VLAN. Example::

    boot:
      interface: mclab-demo        # where dnsmasq answers DHCP/TFTP (and sends IPv6 RAs)
      address: 10.77.0.1           # the controller's IPv4 on that interface; HTTP listens here
      subnet: 10.77.0.0/24         # node IPs (provision.ip) must be inside it
      gateway: 10.77.0.254         # optional: installed nodes' default route (inside subnet)
      nameservers: [10.77.0.53]    # optional: installed nodes' /etc/resolv.conf
      http_port: 8080
      ipv6_ra: true                # RAs with router lifetime 0: iPXE skips its IPv6 wait
      state_dir: boot              # generated dnsmasq config, leases, pid, log (relative: SITE/)
      installer_dir: boot/installer
      images_dir: boot/images
      token_ttl: 3600

Errors name ``metalchain.yml`` and the key (``boot.address``) with the line when known, so the
operator can fix the file without reading our code.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inventory.errors import InventoryError

SETTINGS_FILE = "metalchain.yml"
BOOT_KEYS = ("interface", "address", "subnet", "gateway", "nameservers", "http_port",
             "ipv6_ra", "state_dir", "images_dir", "installer_dir", "token_ttl", "kernel_args",
             "ipxe_dir", "dnsmasq_user", "timeouts")
DEFAULT_HTTP_PORT = 8080
DEFAULT_TOKEN_TTL = 3600.0
# Where Debian's package `ipxe` puts the binaries we hand to non-iPXE PXE ROMs over TFTP.
DEFAULT_IPXE_DIR = Path("/usr/lib/ipxe")
# The installer logs to the serial console as well as the screen: BMC SOL and the lab's
# serial log are how an operator watches an install.
# quiet: the kernel would otherwise print its command line, deploy token included, on the
# console (and so into console logs).
DEFAULT_KERNEL_ARGS = "console=tty0 console=ttyS0,115200n8 quiet"
# dnsmasq parses DHCP and TFTP packets from the network: it drops root after binding.
DEFAULT_DNSMASQ_USER = "nobody"

_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# Kernel command line words we pass through iPXE: no iPXE expansion ($), no quoting games.
_KARG_RE = re.compile(r"^[A-Za-z0-9_.,:=/+@-]+$")


@dataclass(frozen=True)
class NodeNetwork:
    """The IPv4 configuration an installed node writes for itself: static, never DHCP.

    The address is the inventory's (``provision.ip``, else ``address``), the prefix is
    ``boot.subnet``'s, gateway and name servers are ``boot.gateway``/``boot.nameservers``
    (none by default: the provisioning network has no router). The node keeps this address
    through every reboot, whether or not a controller (and its DHCP server) runs — the way
    MAAS and Ironic hand nodes their network data.

    >>> NodeNetwork(ipaddress.IPv4Network("10.77.0.0/24")).interface("10.77.0.11")
    '10.77.0.11/24'
    """

    subnet: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address | None = None
    nameservers: tuple[ipaddress.IPv4Address, ...] = ()

    def interface(self, ip: str) -> str:
        """``ip`` with the subnet's prefix length; ValueError if it is not inside the subnet."""
        address = ipaddress.IPv4Address(ip)
        if address not in self.subnet:
            raise ValueError(f"{address} is not inside boot.subnet {self.subnet}")
        return f"{address}/{self.subnet.prefixlen}"


@dataclass(frozen=True)
class BootSettings:
    """Where and how the boot server runs. Build it with :meth:`from_mapping`."""

    interface: str
    address: ipaddress.IPv4Address
    subnet: ipaddress.IPv4Network
    state_dir: Path
    images_dir: Path
    installer_dir: Path
    http_port: int = DEFAULT_HTTP_PORT
    ipv6_ra: bool = True
    token_ttl: float = DEFAULT_TOKEN_TTL
    kernel_args: tuple[str, ...] = tuple(DEFAULT_KERNEL_ARGS.split())
    ipxe_dir: Path = DEFAULT_IPXE_DIR
    dnsmasq_user: str = DEFAULT_DNSMASQ_USER
    #: per-state provisioning timeouts (seconds), see provision.lifecycle
    timeouts: Mapping[str, float] = field(default_factory=dict)
    #: installed nodes' default route and name servers (NodeNetwork)
    gateway: ipaddress.IPv4Address | None = None
    nameservers: tuple[ipaddress.IPv4Address, ...] = ()

    @property
    def node_network(self) -> NodeNetwork:
        """What installed nodes write as their static network configuration."""
        return NodeNetwork(self.subnet, self.gateway, self.nameservers)

    @property
    def base_url(self) -> str:
        """The HTTP base URL nodes use (with the configured port; 0 means "chosen at start")."""
        return f"http://{self.address}:{self.http_port}"

    @classmethod
    def from_site(cls, site: Any) -> BootSettings:
        """Settings of an open :class:`inventory.site.Site` (its ``boot:`` mapping)."""
        source = str(site.settings_file) if site.settings_file else SETTINGS_FILE
        if "boot" not in site.settings:
            raise InventoryError("no 'boot' settings: the boot server needs at least "
                                 "boot.interface, boot.address and boot.subnet", file=source)
        return cls.from_mapping(site.settings["boot"], site_root=site.root, source=source)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, site_root: Path,
                     source: str = SETTINGS_FILE) -> BootSettings:
        """Parse and validate a ``boot:`` mapping; relative paths are relative to the site."""
        check = _Checker(data, source)
        if not isinstance(data, Mapping):
            raise check.error(None, "boot must be a mapping")
        for key in data:
            if key not in BOOT_KEYS:
                raise check.error(key, f"unknown key; allowed: {', '.join(BOOT_KEYS)}")

        interface = check.string("interface", required=True)
        if not _IFNAME_RE.match(interface) or interface in (".", ".."):
            raise check.error("interface", f"{interface!r} is not an interface name "
                              "(1-15 of letters, digits, '_', '.', '-')")
        address_text = check.string("address", required=True)
        try:
            address = ipaddress.IPv4Address(address_text)
        except ValueError:
            raise check.error("address", f"{address_text!r} is not an IPv4 address") from None
        if address.is_unspecified or address.is_multicast:
            raise check.error("address", f"{address} cannot be a listening address")
        subnet_text = check.string("subnet", required=True)
        try:
            subnet = ipaddress.IPv4Network(subnet_text, strict=True)
        except ValueError as exc:
            raise check.error("subnet", f"{subnet_text!r} is not an IPv4 network "
                              f"in CIDR form ({exc})") from None
        if address not in subnet:
            raise check.error("address", f"{address} is not inside boot.subnet {subnet}")

        gateway = None
        if "gateway" in data:
            gateway = check.ipv4("gateway")
            if gateway not in subnet or gateway in (subnet.network_address,
                                                    subnet.broadcast_address):
                raise check.error("gateway", f"{gateway} is not a usable address of "
                                  f"boot.subnet {subnet}")
        nameservers = check.ipv4_list("nameservers")

        port = check.integer("http_port", DEFAULT_HTTP_PORT)
        if not 0 <= port <= 65535:
            raise check.error("http_port", f"{port} is not a TCP port (0 = any free port)")
        ttl = check.number("token_ttl", DEFAULT_TOKEN_TTL)
        if ttl <= 0:
            raise check.error("token_ttl", "must be a positive number of seconds")
        ipv6_ra = check.boolean("ipv6_ra", True)

        kernel_args_text = check.string("kernel_args", default=DEFAULT_KERNEL_ARGS)
        kernel_args = tuple(kernel_args_text.split())
        for word in kernel_args:
            if not _KARG_RE.match(word) or word.startswith("mc."):
                raise check.error("kernel_args", f"{word!r} is not allowed (plain words "
                                  "only; mc.* parameters are set by metalchain)")
        user = check.string("dnsmasq_user", default=DEFAULT_DNSMASQ_USER)
        if not _USER_RE.match(user):
            raise check.error("dnsmasq_user", f"{user!r} is not a user name")

        state_dir = check.path("state_dir", site_root, "boot")
        raw_timeouts = data.get("timeouts")
        if raw_timeouts is not None and not isinstance(raw_timeouts, Mapping):
            raise check.error("timeouts", "must be a mapping of state: seconds")
        from provision.lifecycle import parse_timeouts

        return cls(
            timeouts=parse_timeouts(raw_timeouts, source),
            interface=interface, address=address, subnet=subnet, http_port=port,
            gateway=gateway, nameservers=nameservers,
            ipv6_ra=ipv6_ra, token_ttl=ttl, kernel_args=kernel_args, dnsmasq_user=user,
            state_dir=state_dir,
            images_dir=check.path("images_dir", site_root, "boot/images"),
            installer_dir=check.path("installer_dir", site_root, "boot/installer"),
            ipxe_dir=check.path("ipxe_dir", site_root, str(DEFAULT_IPXE_DIR)),
        )


class _Checker:
    """Typed look-ups in the mapping whose errors say file, line and ``boot.KEY``."""

    def __init__(self, data: Mapping[str, Any], source: str) -> None:
        self.data = data
        self.source = source

    def error(self, key: str | None, message: str) -> InventoryError:
        line_of = getattr(self.data, "line_of", None)
        line = line_of(key) if callable(line_of) and key is not None else None
        where = f"boot.{key}: " if key else "boot: "
        return InventoryError(where + message, file=self.source, line=line or None,
                              key=f"boot.{key}" if key else "boot")

    def string(self, key: str, *, required: bool = False, default: str = "") -> str:
        if key not in self.data:
            if required:
                raise self.error(key, "is required")
            return default
        value = self.data[key]
        if not isinstance(value, str) or not value.strip():
            raise self.error(key, "must be a non-empty string")
        return value.strip()

    def ipv4(self, key: str) -> ipaddress.IPv4Address:
        text = self.string(key, required=True)
        try:
            return ipaddress.IPv4Address(text)
        except ValueError:
            raise self.error(key, f"{text!r} is not an IPv4 address") from None

    def ipv4_list(self, key: str) -> tuple[ipaddress.IPv4Address, ...]:
        value = self.data.get(key, [])
        if not isinstance(value, list):
            raise self.error(key, "must be a list of IPv4 addresses")
        out = []
        for item in value:
            try:
                out.append(ipaddress.IPv4Address(str(item).strip()))
            except ValueError:
                raise self.error(key, f"{item!r} is not an IPv4 address") from None
        return tuple(out)

    def integer(self, key: str, default: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"must be an integer, not {value!r}")
        return value

    def number(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(key, f"must be a number, not {value!r}")
        return float(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, not {value!r}")
        return value

    def path(self, key: str, root: Path, default: str) -> Path:
        text = self.string(key, default=default)
        if "\n" in text or "\0" in text:
            raise self.error(key, "must be a path on one line")
        path = Path(text).expanduser()
        return path if path.is_absolute() else root / path
