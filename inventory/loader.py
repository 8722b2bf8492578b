"""Loading and validating an operator's inventory (one YAML file or a directory of them).

Format (every top-level key optional)::

    vars:               # variables of the implicit group 'all'
      ntp_server: 10.0.0.1
    groups:
      nodes:
        children: [hypervisors]
        hosts: [node1]
        roles: [base]
        vars: {...}
    hosts:
      node1:
        address: 10.77.0.11          # SSH address; defaults to provision.ip
        groups: [nodes]
        roles: [hypervisor]
        labels: {rack: r1}
        vars: {...}
        bmc: {address: 127.0.0.1, port: 6230, username: admin, password: {secret: bmc-node1}}
        provision: {mac: "52:54:00:00:00:01", ip: 10.77.0.11, image: debian-12}
        ssh: {user: root, port: 22, host_key: "ssh-ed25519 AAAA..."}
      vm1:                           # a guest: no bmc/provision; address = vm.network's IP
        vm:
          hypervisor: node1          # an inventory host
          image: lab-guest.qcow2     # a name in the site's image store
          mac: "52:54:00:00:01:01"
          network: {address: 10.77.0.31/24, gateway: 10.77.0.1, nameservers: [10.77.0.1]}
          vcpus: 1
          memory_mib: 256
          disk_mib: 2048
          state: running             # running | stopped | absent

Every error is an InventoryError naming file, line and key.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from inventory.errors import InventoryError, SecretError
from inventory.model import (
    ALL_GROUP,
    SSH_KEEPALIVE_INTERVAL,
    SSH_KEEPALIVE_TIMEOUT,
    VM_DOMAIN_TYPES,
    VM_STATES,
    Bmc,
    Group,
    Host,
    Inventory,
    Provisioning,
    SshSettings,
    VmNetwork,
    VmSpec,
)
from inventory.secrets import SecretStore, is_secret_ref
from inventory.yamlsource import LocatedDict, LocatedList, read_yaml_file

TOP_KEYS = ("vars", "groups", "hosts")
HOST_KEYS = ("address", "groups", "roles", "labels", "vars", "bmc", "provision", "ssh", "vm")
GROUP_KEYS = ("children", "hosts", "roles", "vars")
BMC_KEYS = ("address", "port", "username", "password", "driver")
BMC_DRIVERS = ("ipmi",)
IPMI_PASSWORD_MAX = 20
PROVISION_KEYS = ("mac", "ip", "image", "console_log")
SSH_KEYS = ("user", "port", "host_key", "proxy_command", "keepalive_interval",
            "keepalive_timeout", "connect_timeout")
VM_KEYS = ("hypervisor", "image", "mac", "network", "vcpus", "memory_mib", "disk_mib",
           "hostname", "ssh_authorized_keys", "state", "autostart", "domain_type",
           "console_log")
VM_NETWORK_KEYS = ("address", "gateway", "nameservers")
_AUTHORIZED_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) "
                             r"[A-Za-z0-9+/=]+( [^\x00-\x1f\x7f]*)?$")
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

_HOST_LABEL = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,62}$")
_ROLE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_LABEL_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-/]{0,62}$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_HOST_KEY = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/=]+$")


def valid_hostname(name: str) -> bool:
    """RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens."""
    return (isinstance(name, str) and 0 < len(name) <= 253
            and all(_HOST_LABEL.match(label) for label in name.split(".")))


def normalize_mac(value: str) -> str | None:
    """``52-54-00-AB-cd-01`` -> ``52:54:00:ab:cd:01``; None when it is not a MAC."""
    mac = value.strip().lower().replace("-", ":")
    return mac if _MAC.match(mac) else None


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return repr(value) if len(value) <= 40 else repr(value[:37] + "...")
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


class _Checker:
    """Field checks bound to one mapping's file/line/host context."""

    def __init__(self, data: LocatedDict, prefix: str, host: str | None) -> None:
        self.data = data
        self.prefix = prefix
        self.host = host

    def fail(self, key: str | None, message: str) -> InventoryError:
        line = self.data.line_of(key) if key is not None else self.data.line
        return InventoryError(message, file=self.data.file, line=line, host=self.host,
                              key=self.path(key))

    def path(self, key: str | None) -> str:
        if key is None:
            return self.prefix
        return f"{self.prefix}.{key}" if self.prefix else key

    def only_keys(self, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for key in self.data:
            if key not in allowed:
                hint = difflib.get_close_matches(str(key), allowed, n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise self.fail(key, f"unknown key '{self.path(str(key))}'{suggestion}; "
                                     f"allowed: {', '.join(allowed)}")

    def string(self, key: str, *, required: bool = False, check: Callable[[str], bool] | None
               = None, what: str = "a string") -> str | None:
        if key not in self.data or self.data[key] is None:
            if required:
                raise self.fail(None, f"{self.path(key)} is required")
            return None
        value = self.data[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and check is None:
            value = str(value)
        if not isinstance(value, str) or (check is not None and not check(value)):
            raise self.fail(key, f"{self.path(key)} must be {what}, got {_describe(value)}")
        return value

    def port(self, key: str, default: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise self.fail(key, f"{self.path(key)} must be an integer 1-65535, "
                                 f"got {_describe(value)}")
        return value

    def integer(self, key: str, default: int, minimum: int, maximum: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not (
                minimum <= value <= maximum):
            raise self.fail(key, f"{self.path(key)} must be an integer {minimum}-{maximum}, "
                                 f"got {_describe(value)}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.fail(key, f"{self.path(key)} must be true or false, "
                                 f"got {_describe(value)}")
        return value

    def mapping(self, key: str) -> LocatedDict:
        value = self.data.get(key)
        if value is None:
            empty = LocatedDict()
            empty.file, empty.line = self.data.file, self.data.line_of(key)
            return empty
        if not isinstance(value, dict):
            raise self.fail(key, f"{self.path(key)} must be a mapping, got {_describe(value)}")
        return value

    def names(self, key: str, pattern: re.Pattern[str] | Callable[[str], bool], what: str
              ) -> tuple[str, ...]:
        value = self.data.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise self.fail(key, f"{self.path(key)} must be a list of {what}s, "
                                 f"got {_describe(value)}")
        ok = pattern.match if isinstance(pattern, re.Pattern) else pattern
        seen: list[str] = []
        for item in value:
            if not isinstance(item, str) or not ok(item):
                raise self.fail(key, f"{self.path(key)}: {_describe(item)} is not a valid {what}")
            if item in seen:
                raise self.fail(key, f"{self.path(key)}: '{item}' is listed twice")
            seen.append(item)
        return tuple(seen)


def _ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _address(value: str) -> bool:
    return _ip(value) or valid_hostname(value)


class _Resolver:
    """Turns secret references anywhere in a value into Secret objects, with file:line."""

    def __init__(self, secrets: SecretStore) -> None:
        self.secrets = secrets

    def resolve(self, value: Any, where: LocatedDict | LocatedList, key: Any, host: str | None,
                path: str) -> Any:
        if is_secret_ref(value):
            try:
                return self.secrets.resolve(value)
            except SecretError as exc:
                raise InventoryError(f"{path}: {exc}", file=where.file, line=where.line_of(key),
                                     host=host, key=path) from None
        if isinstance(value, dict):
            return {k: self.resolve(v, value, k, host, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v, value, i, host, f"{path}[{i}]") for i, v in enumerate(value)]
        return value


def _vars(c: _Checker, resolver: _Resolver) -> dict[str, Any]:
    data = c.mapping("vars")
    out: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise InventoryError(f"{c.path('vars')}: {_describe(key)} is not a valid variable "
                                 "name (letters, digits, _)", file=data.file,
                                 line=data.line_of(key), host=c.host, key=c.path("vars"))
        out[key] = resolver.resolve(value, data, key, c.host, f"{c.path('vars')}.{key}")
    return out


def _check_keepalives(ssh: SshSettings, s: _Checker, name: str) -> None:
    """The keepalive timeout, set or the default, must cover at least one interval (else a
    host would be declared lost before the next keepalive was even sent)."""
    interval = SSH_KEEPALIVE_INTERVAL if ssh.keepalive_interval is None \
        else ssh.keepalive_interval
    timeout = SSH_KEEPALIVE_TIMEOUT if ssh.keepalive_timeout is None else ssh.keepalive_timeout
    if interval and timeout < interval:
        default = "" if ssh.keepalive_timeout is not None else ", the default"
        raise s.fail("keepalive_timeout" if ssh.keepalive_timeout is not None
                     else "keepalive_interval",
                     f"host '{name}': ssh.keepalive_timeout ({timeout} s{default}) is shorter "
                     f"than ssh.keepalive_interval ({interval} s)")


def _host(name: Any, data: Any, where: LocatedDict, resolver: _Resolver) -> Host:
    if not isinstance(name, str) or not valid_hostname(name):
        raise InventoryError(f"host name {_describe(name)} is not a valid RFC 1123 host name",
                             file=where.file, line=where.line_of(name), key="hosts")
    if data is None:
        data = LocatedDict()
        data.file, data.line = where.file, where.line_of(name)
    if not isinstance(data, dict):
        raise InventoryError(f"must be a mapping, got {_describe(data)}", file=where.file,
                             line=where.line_of(name), host=name)
    c = _Checker(data, "", name)
    c.only_keys(HOST_KEYS)
    labels_map = c.mapping("labels")
    labels: dict[str, str] = {}
    for k, v in labels_map.items():
        if not isinstance(k, str) or not _LABEL_KEY.match(k):
            raise InventoryError(f"labels: {_describe(k)} is not a valid label name",
                                 file=data.file, line=labels_map.line_of(k), host=name,
                                 key="labels")
        if isinstance(v, bool) or not isinstance(v, (str, int, float)):
            raise InventoryError(f"labels.{k} must be a string, got {_describe(v)}",
                                 file=data.file, line=labels_map.line_of(k), host=name,
                                 key=f"labels.{k}")
        labels[k] = str(v)

    bmc = None
    if "bmc" in data:
        bd = c.mapping("bmc")
        b = _Checker(bd, "bmc", name)
        b.only_keys(BMC_KEYS)
        pw = bd.get("password")
        if pw is None:
            raise b.fail(None, "bmc.password is required (a secret reference: "
                               "{secret: NAME} or {env: VARIABLE})")
        if not is_secret_ref(pw):
            # Never echo the value: it may be a password typed in by mistake.
            raise b.fail("password", "bmc.password must be a secret reference ({secret: NAME} "
                                     "or {env: VARIABLE}), not a literal value")
        password = resolver.resolve(pw, bd, "password", name, "bmc.password")
        driver = b.string("driver", check=lambda d: d in BMC_DRIVERS,
                          what=f"one of {', '.join(BMC_DRIVERS)}") or "ipmi"
        if driver == "ipmi" and len(password.reveal().encode("utf-8")) > IPMI_PASSWORD_MAX:
            # Says how long it may be, never what it is.
            raise b.fail("password", f"bmc.password: IPMI 2.0 passwords are at most "
                                     f"{IPMI_PASSWORD_MAX} bytes ({password.ref} is longer)")
        bmc = Bmc(
            address=b.string("address", required=True, check=_address,
                             what="an IP address or host name") or "",
            username=b.string("username", required=True) or "",
            password=password,
            port=b.port("port", 623),
            driver=driver,
        )

    prov = None
    if "provision" in data:
        pd = c.mapping("provision")
        p = _Checker(pd, "provision", name)
        p.only_keys(PROVISION_KEYS)
        mac = p.string("mac", check=lambda m: normalize_mac(m) is not None,
                       what="a MAC address like 52:54:00:12:34:56")
        prov = Provisioning(
            mac=normalize_mac(mac) if mac else None,
            ip=p.string("ip", check=_ip, what="an IP address"),
            image=p.string("image"),
            console_log=p.string("console_log", check=lambda c: c.startswith("/"),
                                 what="an absolute path"),
        )

    sd = c.mapping("ssh")
    s = _Checker(sd, "ssh", name)
    s.only_keys(SSH_KEYS)
    ssh = SshSettings(
        user=s.string("user") or "root",
        port=s.port("port", 22),
        host_key=s.string("host_key", check=lambda k: bool(_HOST_KEY.match(k.strip())),
                          what="a public key line like 'ssh-ed25519 AAAA...'"),
        proxy_command=s.string("proxy_command"),
        keepalive_interval=s.integer("keepalive_interval", 0, 0, 3600)
        if "keepalive_interval" in sd else None,
        keepalive_timeout=s.integer("keepalive_timeout", 1, 1, 86400)
        if "keepalive_timeout" in sd else None,
        connect_timeout=s.integer("connect_timeout", 1, 1, 600)
        if "connect_timeout" in sd else None,
    )
    _check_keepalives(ssh, s, name)
    vm = _vm(c, name) if "vm" in data else None
    if vm is not None and (bmc is not None or prov is not None):
        raise c.fail("vm", "a host with a vm section is a guest: it has no bmc or provision "
                           "section (its hypervisor powers it through libvirt)")
    address = c.string("address", check=_address, what="an IP address or host name")
    if address is None and prov is not None:
        address = prov.ip
    if address is None and vm is not None:
        address = vm.network.ip
    return Host(
        name=name,
        address=address,
        groups=c.names("groups", _GROUP_NAME, "group name"),
        roles=c.names("roles", _ROLE_NAME, "role name"),
        labels=labels,
        vars=_vars(c, resolver),
        bmc=bmc,
        provision=prov,
        ssh=ssh,
        vm=vm,
        file=data.file,
        line=where.line_of(name),
        key_lines={str(k): v for k, v in data.key_lines.items()},
    )


def _cidr(value: str) -> bool:
    if "/" not in value:
        return False
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        return False
    return iface.version == 4 and iface.ip != iface.network.network_address


def _vm(c: _Checker, name: str) -> VmSpec:
    vd = c.mapping("vm")
    v = _Checker(vd, "vm", name)
    v.only_keys(VM_KEYS)
    mac = v.string("mac", required=True, check=lambda m: normalize_mac(m) is not None,
                   what="a MAC address like 52:54:00:12:34:56") or ""
    if "network" not in vd:
        raise c.fail("vm", "vm.network is required ({address: IP/PREFIX, gateway: IP})")
    nd = v.mapping("network")
    n = _Checker(nd, "vm.network", name)
    n.only_keys(VM_NETWORK_KEYS)
    network = VmNetwork(
        address=n.string("address", required=True, check=_cidr,
                         what="an IPv4 address with its prefix, like 10.77.0.31/24") or "",
        gateway=n.string("gateway", check=_ip, what="an IP address"),
        nameservers=n.names("nameservers", _ip, "IP address"),
    )
    keys = v.names("ssh_authorized_keys", lambda k: bool(_AUTHORIZED_KEY.match(k.strip())),
                   "public key line like 'ssh-ed25519 AAAA...'")
    return VmSpec(
        hypervisor=v.string("hypervisor", required=True, check=valid_hostname,
                            what="a host name") or "",
        image=v.string("image", required=True, check=lambda i: bool(_IMAGE_NAME.match(i)),
                       what="an image name (letters, digits, . _ -)") or "",
        mac=normalize_mac(mac) or "",
        network=network,
        vcpus=v.integer("vcpus", 1, 1, 64),
        memory_mib=v.integer("memory_mib", 256, 64, 1024 * 1024),
        disk_mib=v.integer("disk_mib", 2048, 64, 64 * 1024 * 1024),
        hostname=v.string("hostname", check=valid_hostname, what="an RFC 1123 host name"),
        ssh_authorized_keys=tuple(k.strip() for k in keys),
        state=v.string("state", check=lambda s: s in VM_STATES,
                       what=f"one of {', '.join(VM_STATES)}") or "running",
        autostart=v.boolean("autostart", True),
        domain_type=v.string("domain_type", check=lambda t: t in VM_DOMAIN_TYPES,
                             what=f"one of {', '.join(VM_DOMAIN_TYPES)}") or "auto",
        console_log=v.string("console_log", check=lambda p: p.startswith("/"),
                             what="an absolute path"),
    )


def _group(name: Any, data: Any, where: LocatedDict, resolver: _Resolver) -> Group:
    if not isinstance(name, str) or not _GROUP_NAME.match(name):
        raise InventoryError(f"group name {_describe(name)} is not valid (letters, digits, _ "
                             "and -, starting with a letter or _)", file=where.file,
                             line=where.line_of(name), key="groups")
    if name == ALL_GROUP:
        raise InventoryError("'all' is the implicit group of every host; put its variables "
                             "under the top-level 'vars' key", file=where.file,
                             line=where.line_of(name), key="groups.all")
    if data is None:
        data = LocatedDict()
        data.file, data.line = where.file, where.line_of(name)
    if not isinstance(data, dict):
        raise InventoryError(f"group '{name}' must be a mapping, got {_describe(data)}",
                             file=where.file, line=where.line_of(name), key=f"groups.{name}")
    c = _Checker(data, f"groups.{name}", None)
    c.only_keys(GROUP_KEYS)
    return Group(
        name=name,
        children=c.names("children", _GROUP_NAME, "group name"),
        hosts=c.names("hosts", valid_hostname, "host name"),
        roles=c.names("roles", _ROLE_NAME, "role name"),
        vars=_vars(c, resolver),
        file=data.file,
        line=where.line_of(name),
        key_lines={str(k): v for k, v in data.key_lines.items()},
    )


def inventory_files(path: Path) -> list[Path]:
    """The YAML files making up an inventory at ``path`` (a file, or a directory's *.yml)."""
    if path.is_dir():
        files = sorted(p for p in path.iterdir()
                       if p.suffix in (".yml", ".yaml") and p.is_file()
                       and not p.name.startswith("."))
        if not files:
            raise InventoryError("no *.yml or *.yaml files in the inventory directory",
                                 file=str(path))
        return files
    if not path.exists():
        raise InventoryError("inventory not found", file=str(path))
    return [path]


def load_inventory(path: Path, secrets: SecretStore) -> Inventory:
    """Load and validate the inventory at ``path``; raise InventoryError on the first problem."""
    resolver = _Resolver(secrets)
    hosts: dict[str, Host] = {}
    groups: dict[str, Group] = {}
    all_vars: dict[str, Any] = {}
    all_vars_source = ""
    sources: list[str] = []
    for file in inventory_files(path):
        sources.append(str(file))
        doc = read_yaml_file(file)
        if doc is None:
            raise InventoryError("the inventory file is empty (expected a mapping with "
                                 "'hosts', 'groups' or 'vars')", file=str(file), line=1)
        if not isinstance(doc, dict):
            raise InventoryError(f"the inventory must be a mapping with 'hosts', 'groups' or "
                                 f"'vars', got {_describe(doc)}", file=str(file), line=1)
        top = _Checker(doc, "", None)
        top.only_keys(TOP_KEYS)
        if "vars" in doc:
            if all_vars_source:
                raise top.fail("vars", f"top-level vars are already defined in "
                                       f"{all_vars_source}")
            all_vars = _vars(top, resolver)
            all_vars_source = f"{file}:{doc.line_of('vars')}"
        for name, gdata in top.mapping("groups").items():
            gmap = top.mapping("groups")
            if name in groups:
                other = groups[name]
                raise InventoryError(f"group '{name}' is defined twice (also at "
                                     f"{other.file}:{other.line})", file=str(file),
                                     line=gmap.line_of(name), key=f"groups.{name}")
            groups[name] = _group(name, gdata, gmap, resolver)
        hmap = top.mapping("hosts")
        for name, hdata in hmap.items():
            if name in hosts:
                other_host = hosts[name]
                raise InventoryError(f"host '{name}' is defined twice (also at "
                                     f"{other_host.file}:{other_host.line})", file=str(file),
                                     line=hmap.line_of(name), host=name)
            hosts[name] = _host(name, hdata, hmap, resolver)
    inv = Inventory(hosts=hosts, groups=groups, all_vars=all_vars, sources=sources,
                    all_vars_source=all_vars_source)
    _check_references(inv)
    _check_unique(inv)
    return inv


def _check_references(inv: Inventory) -> None:
    for host in inv.hosts.values():
        for g in host.groups:
            if g not in inv.groups and g != ALL_GROUP:
                raise InventoryError(f"groups: unknown group '{g}'{_hint(g, inv.groups)}",
                                     file=host.file, line=host.line_of("groups"),
                                     host=host.name, key="groups")
    for group in inv.groups.values():
        if group.name in inv.hosts:
            raise InventoryError(f"group '{group.name}' has the same name as a host; targets "
                                 "could not tell them apart", file=group.file, line=group.line,
                                 key=f"groups.{group.name}")
        for child in group.children:
            if child not in inv.groups:
                raise InventoryError(f"groups.{group.name}.children: unknown group '{child}'"
                                     f"{_hint(child, inv.groups)}", file=group.file,
                                     line=group.line_of("children"),
                                     key=f"groups.{group.name}.children")
        for h in group.hosts:
            if h not in inv.hosts:
                raise InventoryError(f"groups.{group.name}.hosts: unknown host '{h}'"
                                     f"{_hint(h, inv.hosts)}", file=group.file,
                                     line=group.line_of("hosts"), key=f"groups.{group.name}.hosts")
    _check_cycles(inv)
    _check_guests(inv)


def _check_guests(inv: Inventory) -> None:
    """A guest's hypervisor is an inventory host that is not itself a guest."""
    for host in inv.hosts.values():
        if host.vm is None:
            continue
        hv = host.vm.hypervisor
        line = host.line_of("vm")
        if hv == host.name:
            raise InventoryError("vm.hypervisor: a guest cannot be its own hypervisor",
                                 file=host.file, line=line, host=host.name, key="vm.hypervisor")
        if hv not in inv.hosts:
            raise InventoryError(f"vm.hypervisor: unknown host '{hv}'{_hint(hv, inv.hosts)}",
                                 file=host.file, line=line, host=host.name, key="vm.hypervisor")
        if inv.hosts[hv].vm is not None:
            raise InventoryError(f"vm.hypervisor: '{hv}' is itself a guest; nested guests are "
                                 "not supported", file=host.file, line=line, host=host.name,
                                 key="vm.hypervisor")


def _hint(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_cycles(inv: Inventory) -> None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for child in inv.groups[name].children:
            if state.get(child) == 1:
                cycle = " -> ".join([*path[path.index(child):], child])
                g = inv.groups[name]
                raise InventoryError(f"groups.{name}.children: cycle in group children: "
                                     f"{cycle}", file=g.file, line=g.line_of("children"),
                                     key=f"groups.{name}.children")
            if state.get(child) is None:
                visit(child, [*path, child])
        state[name] = 2

    for name in inv.groups:
        if name not in state:
            visit(name, [name])


def _check_unique(inv: Inventory) -> None:
    seen: dict[tuple[str, str], Host] = {}

    def claim(kind: str, value: str | None, host: Host, key: str) -> None:
        if value is None:
            return
        other = seen.get((kind, value))
        if other is not None and other.name != host.name:
            raise InventoryError(f"{key}: {kind} {value} is also used by host '{other.name}' "
                                 f"({other.file}:{other.line})", file=host.file,
                                 line=host.line_of(key.split(".")[0]), host=host.name, key=key)
        seen[(kind, value)] = host

    for host in inv.hosts.values():
        if host.provision:
            claim("MAC", host.provision.mac, host, "provision.mac")
            claim("IP", host.provision.ip, host, "provision.ip")
        if host.vm:
            claim("MAC", host.vm.mac, host, "vm.mac")
            claim("IP", host.vm.network.ip, host, "vm.network")
        own_ip = (host.provision.ip if host.provision else
                  host.vm.network.ip if host.vm else None)
        # One SSH endpoint per host: an address:port, so hosts behind one NAT address on
        # ports of their own are fine, two hosts at one endpoint are not.
        reach = host.address or own_ip
        if reach and (_ip(reach) or reach != own_ip):
            claim("SSH endpoint", f"{reach}:{host.ssh.port}", host,
                  "address" if host.address else
                  ("provision.ip" if host.provision else "vm.network"))
        if host.bmc:
            claim("BMC", f"{host.bmc.address}:{host.bmc.port}", host, "bmc")
