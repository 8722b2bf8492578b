"""The lab as a whole: bare-metal nodes with BMCs, a provisioning network, an SSH fleet — and
the ordinary site (inventory, secrets, keys, pinned host keys) that describes them.

Everything the lab runs is recorded in ``SITE/lab/lab.json`` (written atomically), so ``lab
down`` in another process, or after a crash, finds and removes all of it. Nothing outside lab/
knows the lab exists: the inventory it writes is the same kind an operator writes by hand.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets as pysecrets
import shutil
import socket
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from configure.resources.base import ResourceSpecError
from configure.resources.names import package
from inventory.errors import InputError, InventoryError, LabError
from inventory.state import StateStore
from inventory.yamlsource import read_yaml_file
from lab import fleet as fleetmod
from lab.bmc import BmcProcessSpec, bmc_pid, start_bmc, stop_bmc
from lab.machine import Machine, MachineSpec, TapNetwork
from lab.network import LabNetwork, netns_exists
from provision.bootserver.dnsmasq import stop_orphan
from provision.bootserver.interfaces import BootServerError
from provision.guestimage import STORE_NAME as GUEST_STORE_NAME
from provision.image import DEFAULT_PACKAGES, ImageSpec
from runtime import process
from runtime.atomicfile import write_atomic
from runtime.jsondoc import write_json
from runtime.private import private_dir

INVENTORY_HEADER = "# Written by `metalchain lab up`: the lab's inventory. lab up rewrites it.\n"
SETTINGS_HEADER = "# Written by `metalchain lab up`: the lab's settings. lab up rewrites it.\n"
BMC_USER = "admin"
FIRST_NODE_HOST = 11
FIRST_FLEET_HOST = 100
FIRST_BMC_PORT = 6230
#: Each lab's BMC ports start at FIRST_BMC_PORT + BMC_PORT_STRIDE * (a number from its netns
#: name, below BMC_PORT_SLOTS): labs set up at the same moment (before either BMC has bound
#: its port), or one whose BMC is down for a while, do not take each other's ports.
BMC_PORT_STRIDE = 8
BMC_PORT_SLOTS = 200
NODE_IMAGE = "debian-12"
FIRST_GUEST_HOST = 200
GUEST_MEMORY_MIB = 256
#: the roles of the whole chain (playbooks/site.yml), by group, for `lab up --chain`
CHAIN_ROLES = {"nodes": ["base", "node_exporter"], "hypervisors": ["hypervisor"],
               "fleet": ["base", "node_exporter"], "storage": ["image_store"],
               "guests": ["lab_guest"]}


@dataclass
class NodeConfig:
    name: str
    mac: str
    ip: str
    tap: str
    bmc_port: int


@dataclass
class LabConfig:
    name: str
    netns: str
    ipv4: str
    ipv6: str
    memory_mib: int = 1024
    #: vCPUs per node (an emulated hypervisor running a guest wants one for the guest)
    cpus: int = 1
    disk_gib: int = 4
    http_port: int = 0
    nodes: list[NodeConfig] = field(default_factory=list)
    fleet: int = 0
    #: the whole chain's inventory (roles, an image store, guests): ``lab up --chain``
    chain: bool = False
    vms: int = 0
    #: the image store's catalogue (``image_store_images``), set once the guest image is
    #: published
    images: list[dict[str, str]] = field(default_factory=list)
    #: Debian packages the fleet's image has on top of the golden image's (``lab up
    #: --fleet-package``): e.g. python3 for a peer tool's benchmark. Another image variant,
    #: cached by its own content hash; the same image for every fleet host.
    fleet_packages: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LabConfig:
        nodes = [NodeConfig(**n) for n in data.pop("nodes", [])]
        return cls(nodes=nodes, **data)


def guest_hypervisors(config: LabConfig) -> dict[str, str]:
    """The lab's guests (``vm1`` ...) and the node each runs on, spread over the nodes."""
    if not config.nodes:
        return {}
    return {f"vm{i}": config.nodes[(i - 1) % len(config.nodes)].name
            for i in range(1, config.vms + 1)}


def default_netns(site_root: Path) -> str:
    """One namespace name per site directory, short enough to name the uplink too."""
    return "mclab-" + hashlib.sha256(str(site_root.resolve()).encode()).hexdigest()[:6]


def _udp_port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def first_bmc_port(netns: str) -> int:
    """Where the BMC ports of the lab ``netns`` start (then the next free ones).

    >>> first_bmc_port("mclab-a") == first_bmc_port("mclab-a") != first_bmc_port("mclab-b")
    True
    """
    digest = hashlib.sha256(f"bmc\0{netns}".encode()).digest()
    return FIRST_BMC_PORT + BMC_PORT_STRIDE * (int.from_bytes(digest[:4], "big")
                                               % BMC_PORT_SLOTS)


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Lab:
    """The lab of one site directory."""

    def __init__(self, site_root: Path) -> None:
        self.root = site_root.resolve()
        self.dir = self.root / "lab"
        self.config_path = self.dir / "lab.json"
        self.key_path = self.root / "keys" / "id_ed25519"
        self.secrets_path = self.root / "secrets.yml"
        self.inventory_path = self.root / "inventory.yml"

    # -- configuration ---------------------------------------------------------------------

    def load(self) -> LabConfig | None:
        if not self.config_path.exists():
            return None
        try:
            return LabConfig.from_dict(json.loads(self.config_path.read_text("utf-8")))
        except (ValueError, TypeError) as exc:
            raise LabError(f"{self.config_path}: unreadable lab record: {exc}") from None

    def save(self, config: LabConfig) -> None:
        write_json(self.config_path, asdict(config))

    def plan(self, nodes: int, fleet: int, *, ipv4: str | None, name: str | None,
             memory_mib: int, disk_gib: int, chain: bool = False, vms: int = 0,
             fleet_packages: Sequence[str] = (), cpus: int = 1) -> LabConfig:
        """The configuration for ``nodes``/``fleet``, keeping what an earlier run chose."""
        old = self.load()
        netns = old.netns if old else (f"mclab-{name}" if name else default_netns(self.root))
        net = LabNetwork(netns, ipv4=ipv4 or (old.ipv4 if old else "10.77.0.0/24"))
        if old and ipv4 and ipv4 != old.ipv4:
            raise LabError(f"this lab uses {old.ipv4}; run lab down --purge to change it")
        if nodes > FIRST_FLEET_HOST - FIRST_NODE_HOST:
            raise LabError(f"at most {FIRST_FLEET_HOST - FIRST_NODE_HOST} nodes")
        if vms and not chain:
            raise LabError("guests (--vms) are part of the chain's inventory: add --chain")
        if vms and not nodes:
            raise LabError("guests (--vms) need at least one node to be their hypervisor")
        try:
            extra = sorted({package(p, "lab up", "--fleet-package") for p in fleet_packages})
        except ResourceSpecError as exc:
            raise InputError(str(exc)) from None
        if old and old.fleet and fleet and extra != sorted(old.fleet_packages):
            raise LabError(f"this lab's fleet runs the image with extra packages "
                           f"{old.fleet_packages or 'none'}; run lab down to change them")
        if vms > 250 - FIRST_GUEST_HOST:
            raise LabError(f"at most {250 - FIRST_GUEST_HOST} guests")
        tag = hashlib.sha256(netns.encode()).digest()
        kept = {n.name: n for n in (old.nodes if old else [])}
        used_ports = {n.bmc_port for n in kept.values()}
        port = first_bmc_port(netns)
        out: list[NodeConfig] = []
        for i in range(1, nodes + 1):
            nname = f"node{i}"
            if nname in kept:
                out.append(kept[nname])
                continue
            while port in used_ports or not _udp_port_free(port):
                port += 1
            used_ports.add(port)
            out.append(NodeConfig(
                name=nname, mac=f"52:54:{tag[0]:02x}:{tag[1]:02x}:00:{i:02x}",
                ip=str(net.ipv4[FIRST_NODE_HOST + i - 1]), tap=f"tap{i}", bmc_port=port))
        http_port = old.http_port if old and old.http_port else _free_tcp_port()
        return LabConfig(name=netns.removeprefix("mclab-"), netns=netns, ipv4=str(net.ipv4),
                         ipv6=str(net.ipv6), memory_mib=memory_mib, cpus=cpus,
                         disk_gib=disk_gib,
                         nodes=out, fleet=fleet, http_port=http_port, chain=chain, vms=vms,
                         images=old.images if old else [], fleet_packages=extra)

    def network(self, config: LabConfig) -> LabNetwork:
        return LabNetwork(config.netns, ipv4=config.ipv4, ipv6=config.ipv6)

    # -- pieces ------------------------------------------------------------------------------

    def machine(self, config: LabConfig, node: NodeConfig) -> Machine:
        return Machine(MachineSpec(
            name=node.name, workdir=self.dir / "nodes" / node.name, mac=node.mac,
            network=TapNetwork(node.tap), netns=config.netns, memory_mib=config.memory_mib,
            cpus=config.cpus,
            disk_bytes=config.disk_gib * 1024**3))

    def bmc_spec(self, node: NodeConfig) -> BmcProcessSpec:
        d = self.dir / "nodes" / node.name
        return BmcProcessSpec(name=node.name, port=node.bmc_port, qmp_socket=d / "bmc-qmp.sock",
                              state_file=d / "bmc-state.json", user=BMC_USER,
                              password_file=d / "bmc.pass", pidfile=d / "bmc.pid",
                              logfile=d / "bmc.log")

    def ensure_key(self) -> str:
        """The controller's SSH key pair (generated once); returns the public key line."""
        private_dir(self.key_path.parent)     # the site's private keys: 0700
        if not self.key_path.exists():
            process.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C",
                         "metalchain-controller", "-f", str(self.key_path)],
                        timeout=30, error=LabError)
        return self.key_path.with_suffix(".pub").read_text("utf-8").strip()

    def ensure_secrets(self, config: LabConfig) -> dict[str, str]:
        """BMC passwords in the site's secrets file (kept across runs), one per node."""
        current: dict[str, str] = {}
        if self.secrets_path.exists():
            try:
                data = read_yaml_file(self.secrets_path) or {}
            except InventoryError as exc:
                # Never yaml's own message: it may quote the offending line of the secrets file.
                where = f":{exc.line}" if exc.line else ""
                raise LabError(f"{self.secrets_path}{where}: not valid YAML") from None
            if not isinstance(data, dict):
                raise LabError(f"{self.secrets_path}: not a mapping of name: value")
            current = {str(k): str(v) for k, v in data.items()}
        changed = False
        for node in config.nodes:
            key = f"bmc-{node.name}"
            if key not in current:
                current[key] = pysecrets.token_urlsafe(12)  # 16 chars: IPMI allows 20 bytes
                changed = True
        # The chain's monitoring: Alertmanager's webhook token and the pushed events' site key
        # (monitor/settings.py's default secret names).
        for key in (("monitor_webhook_token", "monitor_event_key") if config.chain else ()):
            if key not in current:
                current[key] = pysecrets.token_urlsafe(32)
                changed = True
        if changed or not self.secrets_path.exists():
            body = "# Secrets of this site (mode 0600). Generated by lab up.\n"
            body += yaml.safe_dump(current, sort_keys=True)
            write_atomic(self.secrets_path, body, 0o600)
        return current

    def write_inventory(self, config: LabConfig, fleet_records: list[fleetmod.HostRecord]
                        ) -> None:
        if self.inventory_path.exists() and not self.inventory_path.read_text(
                "utf-8").startswith(INVENTORY_HEADER):
            raise LabError(f"{self.inventory_path} exists and was not written by lab up; "
                           "use an empty directory for the lab")
        hosts: dict[str, Any] = {}
        for node in config.nodes:
            hosts[node.name] = {
                # Every lab node is a hypervisor of the chain (playbooks/site.yml).
                "groups": ["nodes", "hypervisors"],
                "bmc": {"address": "127.0.0.1", "port": node.bmc_port, "username": BMC_USER,
                        "password": {"secret": f"bmc-{node.name}"}},
                "provision": {"mac": node.mac, "ip": node.ip, "image": NODE_IMAGE,
                              "console_log": str(self.dir / "nodes" / node.name /
                                                 "serial.log")},
            }
        for rec in sorted(fleet_records, key=lambda r: r.name):
            key_type, key_b64 = rec.host_key.split()[:2]
            hosts[rec.name] = {"groups": ["fleet"], "address": rec.address,
                               "ssh": {"user": "root", "host_key": f"{key_type} {key_b64}"}}
        # playbooks/site.yml's groups, always there (empty ones select no host)
        groups: dict[str, Any] = {"nodes": {}, "hypervisors": {}, "fleet": {}, "guests": {}}
        doc: dict[str, Any] = {"groups": groups, "hosts": hosts}
        if config.chain:
            self._chain_inventory(config, doc, [r.name for r in sorted(
                fleet_records, key=lambda r: r.name)])
        write_atomic(self.inventory_path, INVENTORY_HEADER + yaml.safe_dump(
            doc, sort_keys=False, default_flow_style=False))
        self.write_settings(config)

    def _chain_inventory(self, config: LabConfig, doc: dict[str, Any], fleet: list[str]
                         ) -> None:
        """The whole chain's inventory: every group's roles, the first fleet host as the
        image store (with the published guest image), and ``config.vms`` guests spread
        over the nodes, on the provisioning network."""
        # The lab's nodes are emulated (TCG): no hardware virtualization to demand.
        doc["vars"] = {"hypervisor_require_kvm": False}
        groups = doc["groups"]
        for group, roles in CHAIN_ROLES.items():
            groups.setdefault(group, {})["roles"] = list(roles)
        if fleet:
            groups["storage"]["hosts"] = fleet[:1]
            groups["storage"]["vars"] = {"image_store_images": list(config.images)}
        else:
            del groups["storage"]
        net = self.network(config)
        tag = hashlib.sha256(config.netns.encode()).digest()
        for i, (guest, hypervisor) in enumerate(guest_hypervisors(config).items(), start=1):
            ip = net.ipv4[FIRST_GUEST_HOST + i - 1]
            doc["hosts"][guest] = {
                "groups": ["guests"],
                "labels": {"service": "demo"},
                "vm": {"hypervisor": hypervisor, "image": GUEST_STORE_NAME,
                       "mac": f"52:54:{tag[0]:02x}:{tag[1]:02x}:01:{i:02x}",
                       "network": {"address": f"{ip}/{net.ipv4.prefixlen}",
                                   "gateway": str(net.controller_ipv4.ip)},
                       "memory_mib": GUEST_MEMORY_MIB, "disk_mib": 512},
                # Emulated twice (KVM on the SVM of an emulated node) and sharing its
                # hypervisor's vCPUs: in CI its sshd once took 20.7 s to send its banner.
                "ssh": {"connect_timeout": 30},
            }

    def set_images(self, images: list[dict[str, str]]) -> None:
        """Record the image store's catalogue and rewrite the inventory with it."""
        config = self.load()
        if config is None:
            raise LabError(f"no lab in {self.root}")
        config.images = list(images)
        self.save(config)
        self.write_inventory(config, fleetmod.load_records(self.dir))

    def write_settings(self, config: LabConfig) -> None:
        """The boot server's settings for the lab's provisioning network (metalchain.yml)."""
        settings = self.root / "metalchain.yml"
        if settings.exists() and not settings.read_text("utf-8").startswith(SETTINGS_HEADER):
            raise LabError(f"{settings} exists and was not written by lab up")
        net = self.network(config)
        boot = {"interface": net.uplink, "address": str(net.controller_ipv4.ip),
                "subnet": config.ipv4, "http_port": config.http_port,
                # dnsmasq drops to 'nobody', who cannot enter a site under /root or /tmp/xyz
                # made 0700: its state lives where it can read it.
                "state_dir": str(boot_state_dir(config.netns))}
        doc: dict[str, Any] = {"boot": boot}
        if config.chain:
            # Emulated nodes pay for every scrape: node_exporter under TCG costs ~0.8 s of CPU
            # per scrape (every 2 s it took 40% of a node), so scrape every 10 s; BMC polls
            # get 5 s to answer. SSH reach probes run at their default pace (15 s) and give
            # a guest, emulated twice and sharing its hypervisor's vCPUs, 20 s for its banner
            # (in CI, with the other test stream on the same two CPUs, one took 20.7 s).
            doc["monitor"] = {"scrape_interval": 10, "evaluation_interval": 5,
                              "bmc_poll_timeout": 5, "reach_probe_timeout": 20}
        write_atomic(settings, SETTINGS_HEADER + yaml.safe_dump(doc, sort_keys=False))

    def record_state(self, config: LabConfig, fleet_records: list[fleetmod.HostRecord], *,
                     blank: list[str] | None = None) -> None:
        """Pin the fleet's keys and enroll new nodes. A node whose disk lab up just created
        (a new lab, or one purged) is a blank machine: whatever the store knew of an earlier
        one of that name (active, its pinned key) and of the guests it held is forgotten, so
        the chain installs it again instead of calling it active but unreachable."""
        store = StateStore.open_file(self.root / "state" / "metalchain.db")
        try:
            gone = set(blank or ())
            stale = [n for n in sorted(gone) if store.node(n) is not None] + [
                g for g, hv in guest_hypervisors(config).items()
                if hv in gone and store.node(g) is not None]
            for name in stale:
                store.forget_node(name, actor="lab", detail={
                    "reason": "lab up: a new blank disk (an earlier machine was purged)"})
            for rec in fleet_records:
                key = " ".join(rec.host_key.split()[:2])
                if key not in store.host_keys_of(rec.name):
                    store.pin_host_key(rec.name, key, "lab")
            for node in config.nodes:
                if store.node(node.name) is None or store.node(node.name).state is None:
                    store.set_node_state(node.name, "enrolled", "created by lab up")
        finally:
            store.close()

    # -- lifecycle ---------------------------------------------------------------------------

    def check_owned(self) -> None:
        """Refuse before starting anything if the site's files are not the lab's to rewrite."""
        for path, header in ((self.inventory_path, INVENTORY_HEADER),
                             (self.root / "metalchain.yml", SETTINGS_HEADER)):
            if path.exists() and not path.read_text("utf-8").startswith(header):
                raise InputError(f"{path} exists and was not written by lab up; use an empty "
                                 "directory for the lab")

    def up(self, config: LabConfig, *, fleet_timeout: float = 300.0) -> dict[str, Any]:
        self.check_owned()
        self.dir.mkdir(parents=True, exist_ok=True)
        old = self.load()
        self.save(config)  # recorded before anything starts, so lab down can always clean up
        pub = self.ensure_key()
        passwords = self.ensure_secrets(config)
        net = self.network(config)
        net.up()
        wanted = {n.name for n in config.nodes}
        for node in (old.nodes if old else []):
            if node.name not in wanted:
                self._stop_node(config, node)
        blank: list[str] = []
        for node in config.nodes:
            net.add_tap(node.tap)
            machine = self.machine(config, node)
            if not machine.disk.exists():
                blank.append(node.name)
            machine.start()
            spec = self.bmc_spec(node)
            write_atomic(spec.password_file, passwords[f"bmc-{node.name}"] + "\n", 0o600)
            start_bmc(spec)
        records = self._fleet_up(config, net, pub, fleet_timeout)
        self.write_inventory(config, records)
        self.record_state(config, records, blank=blank)
        return {"nodes": [n.name for n in config.nodes], "fleet": [r.name for r in records]}

    def _fleet_up(self, config: LabConfig, net: LabNetwork, pub: str,
                  timeout: float) -> list[fleetmod.HostRecord]:
        specs = fleetmod.plan_hosts(config.fleet, net.ipv4, prefix="fleet",
                                    first=FIRST_FLEET_HOST)
        running = {r.name for r in fleetmod.load_records(self.dir)}
        extra = sorted(running - {s.name for s in specs})
        if not specs and not running:
            return []
        from provision.image import ensure_image

        rootfs = ensure_image(fleet_image_spec(config.fleet_packages)).rootfs if specs \
            else Path("/")
        fl = fleetmod.Fleet(self.dir, net, rootfs, [pub])
        if extra:
            fl.stop(extra)
        if specs:
            fl.start(specs, timeout=timeout).check()
        return [r for r in fleetmod.load_records(self.dir) if r.name in {s.name for s in specs}]

    def _stop_node(self, config: LabConfig, node: NodeConfig) -> None:
        stop_bmc(self.bmc_spec(node).pidfile)
        self.machine(config, node).stop()

    def down(self, *, purge: bool = False) -> None:
        """Stop everything the lab runs and remove its network. Idempotent."""
        config = self.load()
        errors: list[str] = []
        try:
            fleetmod.stop_all(self.dir)
        except LabError as exc:
            errors.append(str(exc))
        for node in (config.nodes if config else []):
            try:
                self._stop_node(config, node)  # type: ignore[arg-type]
            except LabError as exc:
                errors.append(str(exc))
        if config is not None:
            # A controller killed while it served the lab (SIGKILL: no atexit) leaves its
            # dnsmasq behind; nothing else would stop it once the lab is gone.
            try:
                stop_orphan(boot_state_dir(config.netns))
            except (BootServerError, OSError) as exc:
                errors.append(str(exc))
        if config is not None and netns_exists(config.netns):
            try:
                self.network(config).down()
            except LabError as exc:
                errors.append(str(exc))
        if errors:
            raise LabError("lab down left something behind: " + "; ".join(errors))
        if purge:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(self.dir)

    def node_processes(self) -> dict[str, dict[str, int | None]]:
        """Each node's live QEMU and BMC pids (None for a process that is not running)."""
        config = self.load()
        out: dict[str, dict[str, int | None]] = {}
        for node in (config.nodes if config else []):
            out[node.name] = {"qemu": self.machine(config, node).pid(),  # type: ignore[arg-type]
                              "bmc": bmc_pid(self.bmc_spec(node).pidfile)}
        return out


def fleet_image_spec(extra_packages: Sequence[str]) -> ImageSpec:
    """The fleet's image: the golden image, plus ``extra_packages`` when there are any.

    >>> fleet_image_spec([]) == ImageSpec()
    True
    >>> "python3" in fleet_image_spec(["python3"]).packages
    True
    """
    if not extra_packages:
        return ImageSpec()
    return ImageSpec(packages=tuple(dict.fromkeys((*DEFAULT_PACKAGES, *extra_packages))))


def boot_state_dir(netns: str) -> Path:
    """The boot server's state directory ``lab up`` gives the lab's site: dnsmasq drops to
    'nobody', who cannot enter a site under /root or a 0700 directory, so it is under /run."""
    return Path("/run/metalchain") / netns / "boot"


def node_problem(power: str, bmc_error: str | None, qemu_pid: int | None,
                 bmc_pid: int | None) -> str | None:
    """Why a lab node is unhealthy, in one line for ``lab status``, or None when its BMC
    answered with a power state. The dead process comes first (the cause), then what the
    BMC client saw (the symptom).

    >>> node_problem("unknown", "node2 (BMC 127.0.0.1:6232): no answer within 3 s", 41, None)
    'BMC process not running (lab up restarts it); node2 (BMC 127.0.0.1:6232): no answer within 3 s'
    """
    parts = []
    if bmc_pid is None:
        parts.append("BMC process not running (lab up restarts it)")
    if qemu_pid is None:
        parts.append("QEMU not running (lab up restarts it)")
    if power not in ("on", "off"):
        parts.append(bmc_error or f"BMC reported power state {power!r}")
    return "; ".join(parts) or None
