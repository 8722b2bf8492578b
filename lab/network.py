"""The lab's provisioning network: a network namespace with a bridge, reached from the controller.

Shape (option (a) of LAB-NOTES: the controller stays in the root namespace)::

    root namespace                     | netns <name> (e.g. mclab-demo)
                                       |
    <uplink> 10.77.0.1/24  <== veth ==>  ctl0 --+
             fd6d:6c61:6200::1/64      |        |
                                       |   br0 10.77.0.2/24, fd6d:6c61:6200::2/64
                                       |        +-- tapN (QEMU machines)
                                       |        +-- vh-* (veth peers of fleet hosts)

Decisions, and why:

- **The controller is .1, on the root side of the veth.** The CLI, ``serve``, dnsmasq (bound to
  the uplink), Prometheus and the BMCs on 127.0.0.1 all run as ordinary root-namespace processes
  and reach lab hosts over one connected /24 route; nothing else is routed.
- **The bridge is .2 (and ::2).** Not needed by the controller, but it lets a process that must
  live inside the namespace (a dnsmasq bound to br0, a diagnostic ping) have an address there, and
  the IPv6 address is what dnsmasq's ``constructor:br0`` router advertisements need.
- **Nothing leaves the machine.** The namespace has no default route and IPv4/IPv6 forwarding off;
  the uplink has forwarding off (packets arriving from the lab are never routed on) and ignores
  router advertisements (a lab RA must never install a default route in the root namespace). No
  NAT rule is ever created. ``status()`` reports the forwarding switches so tests can check them.

Every ``ip`` call is an argument list with a timeout. Interface names are at most 15 bytes.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inventory.errors import LabError
from runtime import process

DEFAULT_IPV4 = ipaddress.IPv4Network("10.77.0.0/24")
# Not fd00::/64: this machine's eth0 already uses it.
DEFAULT_IPV6 = ipaddress.IPv6Network("fd6d:6c61:6200::/64")
BRIDGE = "br0"
PEER_IN_NETNS = "ctl0"
IFNAMSIZ = 15  # usable bytes of a Linux interface name
COMMAND_TIMEOUT_S = 15.0

_IFNAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,15}$")
_NETNS_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def run_command(argv: Sequence[str], *, timeout: float = COMMAND_TIMEOUT_S,
                check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (argument list, never a shell) and turn failures into ``LabError``."""
    return process.run(argv, timeout=timeout, check=check, error=LabError)


def check_ifname(name: str) -> str:
    """Reject names the kernel would truncate or refuse (and anything shell-ish)."""
    if not _IFNAME_RE.match(name):
        raise LabError(f"bad interface name {name!r}: 1-{IFNAMSIZ} of [A-Za-z0-9_-]")
    return name


def check_netns(name: str) -> str:
    if not _NETNS_RE.match(name) or name in (".", ".."):
        raise LabError(f"bad network namespace name {name!r}")
    return name


def short_ifname(prefix: str, name: str) -> str:
    """``prefix + name`` if it fits in 15 bytes, else ``prefix`` + a hash of ``name``.

    Deterministic, so a separate process (``lab down``) derives the same name.

    >>> short_ifname("vh-", "node07")
    'vh-node07'
    >>> len(short_ifname("vh-", "a-very-long-host-name"))
    15
    """
    candidate = prefix + name
    if _IFNAME_RE.match(candidate):
        return candidate
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()
    return prefix + digest[: IFNAMSIZ - len(prefix)]


def netns_exists(name: str) -> bool:
    return Path("/run/netns", name).exists()


def links(netns: str | None = None) -> list[dict[str, object]]:
    """``ip -j -d link show`` in the root namespace or in ``netns``."""
    argv = ["ip", "-j", "-d"] + (["-n", netns] if netns else []) + ["link", "show"]
    out = run_command(argv).stdout.strip()
    return json.loads(out) if out else []


def addresses(ifname: str, netns: str | None = None) -> list[str]:
    """The global addresses of one interface as ``addr/prefix`` strings."""
    argv = ["ip", "-j"] + (["-n", netns] if netns else []) + ["addr", "show", "dev", ifname]
    proc = run_command(argv, check=False)
    if proc.returncode != 0 or not proc.stdout.strip():
        return []
    found = []
    for entry in json.loads(proc.stdout):
        for info in entry.get("addr_info", []):
            if info.get("scope") == "global":
                found.append(f"{info['local']}/{info['prefixlen']}")
    return found


def link_kind(link: dict[str, object]) -> str:
    """``bridge``, ``veth``, ``tap``, ``tun`` ... from one ``ip -j -d link`` entry."""
    info = link.get("linkinfo") or {}
    if not isinstance(info, dict):
        return ""
    kind = str(info.get("info_kind", ""))
    data = info.get("info_data") or {}
    if kind == "tun" and isinstance(data, dict) and data.get("type") == "tap":
        return "tap"
    return kind


@dataclass
class NetworkStatus:
    """What exists of the lab network right now (for ``lab status --json`` and tests)."""

    netns: str
    netns_exists: bool
    uplink: str
    uplink_exists: bool = False
    uplink_addresses: list[str] = field(default_factory=list)
    bridge_exists: bool = False
    bridge_up: bool = False
    bridge_addresses: list[str] = field(default_factory=list)
    bridge_ports: list[str] = field(default_factory=list)
    taps: list[str] = field(default_factory=list)
    forwarding: dict[str, str] = field(default_factory=dict)
    pids: list[int] = field(default_factory=list)

    @property
    def up(self) -> bool:
        return self.netns_exists and self.uplink_exists and self.bridge_up

    def as_dict(self) -> dict[str, object]:
        doc = asdict(self)
        doc["up"] = self.up
        return doc


def _nth_interface(network: ipaddress.IPv4Network | ipaddress.IPv6Network,
                   n: int) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface:
    """Address number ``n`` of ``network``, with its prefix: ``10.77.0.1/24``."""
    return ipaddress.ip_interface(f"{network[n]}/{network.prefixlen}")


class LabNetwork:
    """The provisioning network of one lab.

    ``LabNetwork("mclab-demo").up()`` creates it (idempotent); ``.down()`` removes it and
    everything in it (idempotent). The addresses the rest of the lab needs are attributes:
    ``controller_ipv4`` (where the boot server listens), ``ipv4`` (the /24 hosts live in).
    """

    def __init__(self, netns: str, *, ipv4: str | ipaddress.IPv4Network = DEFAULT_IPV4,
                 ipv6: str | ipaddress.IPv6Network = DEFAULT_IPV6, bridge: str = BRIDGE,
                 uplink: str | None = None) -> None:
        self.netns = check_netns(netns)
        self.ipv4 = ipaddress.IPv4Network(ipv4)
        self.ipv6 = ipaddress.IPv6Network(ipv6)
        if self.ipv4.num_addresses < 8:
            raise LabError(f"lab IPv4 network {self.ipv4} is too small")
        self.bridge = check_ifname(bridge)
        # The root-side veth end: named after the namespace when that fits, so `ip link`
        # in the root namespace shows which lab it belongs to.
        if uplink is None:
            uplink = netns if _IFNAME_RE.match(netns) else short_ifname("mc", netns)
        self.uplink = check_ifname(uplink)
        # The controller is .1 (::1) of each network, the bridge .2 (::2).
        self.controller_ipv4 = _nth_interface(self.ipv4, 1)
        self.bridge_ipv4 = _nth_interface(self.ipv4, 2)
        self.controller_ipv6 = _nth_interface(self.ipv6, 1)
        self.bridge_ipv6 = _nth_interface(self.ipv6, 2)

    # Lifecycle -------------------------------------------------------------------------

    def up(self) -> NetworkStatus:
        """Create whatever is missing; leave what exists. Returns the resulting status."""
        self._refuse_overlap()
        if not netns_exists(self.netns):
            run_command(["ip", "netns", "add", self.netns])
        self._ns_sysctl("net.ipv4.ip_forward", "0")
        self._ns_sysctl("net.ipv4.conf.all.forwarding", "0")
        self._ns_sysctl("net.ipv6.conf.all.forwarding", "0")
        self._ip_ns("link", "set", "lo", "up")
        names = {str(link["ifname"]) for link in links(self.netns)}
        if self.bridge not in names:
            self._ip_ns("link", "add", self.bridge, "type", "bridge")
        self._ip_ns("addr", "replace", str(self.bridge_ipv4), "dev", self.bridge)
        self._ip_ns("-6", "addr", "replace", str(self.bridge_ipv6), "dev", self.bridge, "nodad")
        self._ip_ns("link", "set", self.bridge, "up")
        self._ensure_uplink(names)
        return self.status()

    def down(self) -> None:
        """Remove the namespace, the uplink, the bridge and every tap. Safe to repeat.

        Refuses while processes still live in the namespace (dnsmasq, QEMU): deleting the
        name would not free it, and the uplink would survive attached to an orphan.
        """
        if netns_exists(self.netns):
            pids = self._pids()
            if pids:
                raise LabError(f"processes still run in network namespace {self.netns}: "
                               f"{', '.join(map(str, pids))}; stop them first")
        if Path("/sys/class/net", self.uplink).exists():
            run_command(["ip", "link", "del", self.uplink])
        if netns_exists(self.netns):
            for link in links(self.netns):
                if link_kind(link) in ("tap", "tun", "veth", "bridge"):
                    self._ip_ns("link", "del", str(link["ifname"]), check=False)
            run_command(["ip", "netns", "del", self.netns])
        if netns_exists(self.netns) or Path("/sys/class/net", self.uplink).exists():
            raise LabError(f"lab network {self.netns} is still present after teardown")

    def add_tap(self, name: str) -> str:
        """Create tap ``name`` in the namespace, attached to the bridge and up. Idempotent.

        QEMU, started inside the namespace, opens it with
        ``-netdev tap,ifname=NAME,script=no,downscript=no``.
        """
        check_ifname(name)
        if not netns_exists(self.netns):
            raise LabError(f"lab network {self.netns} is not up")
        existing = {str(link["ifname"]): link for link in links(self.netns)}
        if name in existing and link_kind(existing[name]) != "tap":
            raise LabError(f"{name} exists in {self.netns} and is not a tap")
        if name not in existing:
            self._ip_ns("tuntap", "add", "dev", name, "mode", "tap")
        self._ip_ns("link", "set", name, "master", self.bridge, "up")
        return name

    def remove_tap(self, name: str) -> None:
        check_ifname(name)
        if netns_exists(self.netns) and name in {str(x["ifname"]) for x in links(self.netns)}:
            self._ip_ns("link", "del", name)

    def status(self) -> NetworkStatus:
        st = NetworkStatus(netns=self.netns, netns_exists=netns_exists(self.netns),
                           uplink=self.uplink)
        st.uplink_exists = Path("/sys/class/net", self.uplink).exists()
        if st.uplink_exists:
            st.uplink_addresses = addresses(self.uplink)
            st.forwarding["root.ipv4.uplink"] = _read_sysctl(
                f"net/ipv4/conf/{self.uplink}/forwarding")
            st.forwarding["root.ipv6.uplink.accept_ra"] = _read_sysctl(
                f"net/ipv6/conf/{self.uplink}/accept_ra")
        st.forwarding["root.ipv4.ip_forward"] = _read_sysctl("net/ipv4/ip_forward")
        if not st.netns_exists:
            return st
        ns_links = links(self.netns)
        for link in ns_links:
            name = str(link["ifname"])
            if name == self.bridge:
                st.bridge_exists = True
                st.bridge_up = "UP" in (link.get("flags") or [])
            if link.get("master") == self.bridge:
                st.bridge_ports.append(name)
            if link_kind(link) == "tap":
                st.taps.append(name)
        if st.bridge_exists:
            st.bridge_addresses = addresses(self.bridge, self.netns)
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            proc = run_command(["ip", "netns", "exec", self.netns, "sysctl", "-n", key],
                               check=False)
            st.forwarding[f"netns.{key}"] = proc.stdout.strip()
        st.pids = self._pids()
        return st

    # Internals -------------------------------------------------------------------------

    def _ensure_uplink(self, ns_names: set[str]) -> None:
        root_has = Path("/sys/class/net", self.uplink).exists()
        if root_has and PEER_IN_NETNS not in ns_names:
            # A half pair (e.g. the namespace was recreated): start the pair over.
            run_command(["ip", "link", "del", self.uplink])
            root_has = False
        if not root_has:
            if PEER_IN_NETNS in ns_names:
                self._ip_ns("link", "del", PEER_IN_NETNS)
            run_command(["ip", "link", "add", self.uplink, "type", "veth",
                         "peer", "name", PEER_IN_NETNS, "netns", self.netns])
        self._ip_ns("link", "set", PEER_IN_NETNS, "master", self.bridge, "up")
        # Before the addresses exist: never forward what arrives from the lab, never take a
        # default route from a lab router advertisement.
        _write_sysctl(f"net/ipv4/conf/{self.uplink}/forwarding", "0")
        _write_sysctl(f"net/ipv6/conf/{self.uplink}/accept_ra", "0")
        _write_sysctl(f"net/ipv6/conf/{self.uplink}/autoconf", "0")
        run_command(["ip", "addr", "replace", str(self.controller_ipv4), "dev", self.uplink])
        run_command(["ip", "-6", "addr", "replace", str(self.controller_ipv6), "dev",
                     self.uplink, "nodad"])
        run_command(["ip", "link", "set", self.uplink, "up"])

    def _refuse_overlap(self) -> None:
        """Refuse a lab /24 that is already routed (or partly routed) by something else.

        A broader route (e.g. 10.0.0.0/8 via eth0) is allowed: the lab's connected /24 is
        more specific and wins for lab addresses only.
        """
        out = run_command(["ip", "-j", "-4", "route", "show", "table", "main"]).stdout
        for route in json.loads(out) if out.strip() else []:
            dst, dev = route.get("dst", ""), route.get("dev")
            if dst == "default" or dev == self.uplink:
                continue
            net = ipaddress.ip_network(dst, strict=False)
            if net.overlaps(self.ipv4) and net.prefixlen >= self.ipv4.prefixlen:
                raise LabError(f"{self.ipv4} is already routed via {dev} ({dst}); "
                               f"pick another lab network")

    def _pids(self) -> list[int]:
        proc = run_command(["ip", "netns", "pids", self.netns], check=False)
        return [int(p) for p in proc.stdout.split() if p.isdigit()]

    def _ip_ns(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run_command(["ip", "-n", self.netns, *args], check=check)

    def _ns_sysctl(self, key: str, value: str) -> None:
        run_command(["ip", "netns", "exec", self.netns, "sysctl", "-q", "-w", f"{key}={value}"])


def _write_sysctl(path: str, value: str) -> None:
    try:
        with open(os.path.join("/proc/sys", path), "w", encoding="ascii") as handle:
            handle.write(value)
    except OSError as exc:
        raise LabError(f"cannot set /proc/sys/{path}: {exc}") from exc


def _read_sysctl(path: str) -> str:
    try:
        with open(os.path.join("/proc/sys", path), encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""
