"""The inventory model: hosts, groups, BMCs, provisioning data. Plain, immutable data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from inventory.secrets import Secret

ALL_GROUP = "all"


@dataclass(frozen=True)
class Bmc:
    """Where and how to reach a machine's baseboard management controller."""

    address: str
    username: str
    password: Secret
    port: int = 623
    driver: str = "ipmi"

    def describe(self) -> str:
        return f"{self.driver}://{self.address}:{self.port}"


@dataclass(frozen=True)
class Provisioning:
    """What the boot server needs to install a machine."""

    mac: str | None = None
    ip: str | None = None
    image: str | None = None
    #: a file where the machine's serial console is captured (a console server's log);
    #: its tail explains a failed install
    console_log: str | None = None


VM_STATES = ("running", "stopped", "absent")
VM_DOMAIN_TYPES = ("auto", "kvm", "qemu")


@dataclass(frozen=True)
class VmNetwork:
    """A guest's static IPv4 network, handed to it in its cloud-init style seed."""

    address: str                      #: CIDR, e.g. ``10.77.0.31/24``
    gateway: str | None = None
    nameservers: tuple[str, ...] = ()

    @property
    def ip(self) -> str:
        return self.address.split("/", 1)[0]


@dataclass(frozen=True)
class VmSpec:
    """A host that is a guest: which hypervisor holds it and what it is made of.

    The ``vm`` resource turns this into a libvirt domain on ``hypervisor``, with a qcow2
    overlay on ``image`` (a name in the site's image store) and a seed with ``hostname``,
    ``network``, the controller's SSH key and a host key the controller generated.
    """

    hypervisor: str
    image: str
    mac: str
    network: VmNetwork
    vcpus: int = 1
    memory_mib: int = 256
    disk_mib: int = 2048
    hostname: str | None = None
    ssh_authorized_keys: tuple[str, ...] = ()
    state: str = "running"            #: running | stopped | absent
    autostart: bool = True
    domain_type: str = "auto"         #: auto (kvm where a test launch proves it) | kvm | qemu
    #: where the hypervisor logs the guest's serial console (default chosen by the resource)
    console_log: str | None = None


#: SSH keepalives when the inventory sets none (configure/ssh.py explains them): one every 5 s,
#: the host lost after 20 s without an answer.
SSH_KEEPALIVE_INTERVAL = 5
SSH_KEEPALIVE_TIMEOUT = 20


@dataclass(frozen=True)
class SshSettings:
    """How configure/ and orchestrate/ reach the host over SSH."""

    user: str = "root"
    port: int = 22
    host_key: str | None = None
    proxy_command: str | None = None
    #: Seconds between SSH keepalives (0: none) and without an answer before the host is
    #: unreachable; None: SSH_KEEPALIVE_INTERVAL and SSH_KEEPALIVE_TIMEOUT.
    keepalive_interval: int | None = None
    keepalive_timeout: int | None = None
    #: Seconds to connect and get the server's identification and authentication done;
    #: None: configure/ssh.py's DEFAULT_CONNECT_TIMEOUT.
    connect_timeout: int | None = None


@dataclass(frozen=True, kw_only=True)
class Located:
    """Where an inventory entry is written: its file and line, and the line of each key (for
    errors that name file:line)."""

    file: str = ""
    line: int = 0
    key_lines: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def line_of(self, key: str) -> int:
        return self.key_lines.get(key, self.line)


@dataclass(frozen=True)
class Host(Located):
    name: str
    address: str | None
    groups: tuple[str, ...]
    roles: tuple[str, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    bmc: Bmc | None = None
    provision: Provisioning | None = None
    ssh: SshSettings = field(default_factory=SshSettings)
    vm: VmSpec | None = None

    @property
    def is_vm(self) -> bool:
        """A guest on one of the inventory's hypervisors (no BMC, no node lifecycle)."""
        return self.vm is not None

    @property
    def managed(self) -> bool:
        """A host with a BMC or provisioning data goes through the node lifecycle."""
        return self.bmc is not None or self.provision is not None


@dataclass(frozen=True)
class Group(Located):
    name: str
    children: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    roles: tuple[str, ...] = ()
    vars: dict[str, Any] = field(default_factory=dict)


@dataclass
class Inventory:
    """The validated inventory: look-ups, membership and ordering; no I/O."""

    hosts: dict[str, Host]
    groups: dict[str, Group]
    all_vars: dict[str, Any]
    sources: list[str]
    all_vars_source: str = ""

    def host(self, name: str) -> Host:
        from inventory.errors import InputError

        try:
            return self.hosts[name]
        except KeyError:
            raise InputError(f"no host named '{name}' in the inventory") from None

    def guests_of(self, hypervisor: str) -> list[Host]:
        """The VM hosts whose ``vm.hypervisor`` is ``hypervisor``, in inventory order."""
        return [h for h in self.hosts.values() if h.vm and h.vm.hypervisor == hypervisor]

    def group_hosts(self, group: str) -> list[str]:
        """Every host in ``group`` or one of its descendants, in inventory order."""
        if group == ALL_GROUP:
            return list(self.hosts)
        members: set[str] = set()
        for g in self.descendants(group):
            members.update(self.groups[g].hosts)
        members.update(h.name for h in self.hosts.values()
                       if any(g in self.descendants(group) for g in h.groups))
        return [h for h in self.hosts if h in members]

    def descendants(self, group: str) -> list[str]:
        """``group`` followed by all groups below it (validated acyclic)."""
        out: list[str] = []
        stack = [group]
        while stack:
            g = stack.pop()
            if g in out:
                continue
            out.append(g)
            stack.extend(reversed(self.groups[g].children))
        return out

    def groups_of(self, host: str) -> list[str]:
        """The groups ``host`` belongs to, directly or through children, parents first.

        Ordered by depth (distance from the top), then by name: the order in which their
        variables are applied, so a child group's value overrides its parent's.
        """
        direct = {g for g in self.groups if host in self.groups[g].hosts}
        direct.update(self.hosts[host].groups)
        parents: dict[str, set[str]] = {g: set() for g in self.groups}
        for g in self.groups.values():
            for child in g.children:
                parents[child].add(g.name)
        found: set[str] = set()
        stack = list(direct)
        while stack:
            g = stack.pop()
            if g not in found:
                found.add(g)
                stack.extend(parents[g])
        return sorted(found, key=lambda g: (self.depth(g), g))

    def roles_of(self, host: str) -> list[str]:
        """Roles of ``host``: its groups' roles (parents first), then its own; no repeats."""
        roles: list[str] = []
        for g in self.groups_of(host):
            roles.extend(r for r in self.groups[g].roles if r not in roles)
        roles.extend(r for r in self.hosts[host].roles if r not in roles)
        return roles

    def depth(self, group: str) -> int:
        """Length of the longest parent chain above ``group`` (a top-level group has 0)."""
        parents = [g.name for g in self.groups.values() if group in g.children]
        return 0 if not parents else 1 + max(self.depth(p) for p in parents)
