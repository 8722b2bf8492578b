"""The parsers of operator files as fuzz targets, and the property they must keep.

A target writes one fuzzed file into a fresh site (the other files are the repository's
examples) and calls the parser metalchain uses for it. The property (:func:`judge`): the parser
returns, or raises metalchain's own error (:class:`MetalchainError`) whose message names a
file of the site with a line (``.../inventory.yml:12``); never another exception, never a hang
(:data:`SECONDS` per example), never more than :data:`PEAK_BYTES` of memory at once.

Used by tests/unit/test_fuzz_operator_files.py (a few hundred examples in CI) and by
bench/fuzz.py (the same properties at full size).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.fuzzing import Bounded, Hang, bounded, mutated_yaml, raw_bytes

REPO = Path(__file__).resolve().parents[1]
SCAFFOLD = REPO / "orchestrate" / "scaffold"
PLAYBOOKS = REPO / "playbooks"
SECONDS = 10.0
PEAK_BYTES = 256 * 2 ** 20
TRACED_SLOWDOWN = 5

SECRETS = ("bmc-node1: pw1\nbmc-node2: pw2\nbmc-store1: pw3\n"
           "monitor_webhook_token: tok-123456\nmonitor_event_key: key-123456\n")
SETTINGS = """\
inventory: inventory.yml
secrets: secrets.yml
state: state/metalchain.db
ssh_key: keys/id_ed25519
boot:
  interface: eno2
  address: 10.20.0.1
  subnet: 10.20.0.0/24
  gateway: 10.20.0.254
  nameservers: [10.20.0.53]
  kernel_args: "console=tty0 console=ttyS1,115200n8 quiet"
mirror:
  dir: mirror
  address: 10.20.0.1
  port: 8081
monitor:
  receiver_address: 10.20.0.1
  prometheus_port: 9090
  alertmanager_ports: [9093, 9193]
  cluster_ports: [9094, 9194]
  scrape_interval: 15
  webhook_token_secret: monitor_webhook_token
"""
GUEST_INVENTORY = """\
vars: {ntp_server: 10.0.0.1, admin_users: [ops, "ünïcode"]}
groups:
  nodes: {children: [hypervisors], hosts: [node1], roles: [base], vars: {tz: UTC}}
  hypervisors: {roles: [hypervisor]}
hosts:
  node1:
    address: 10.77.0.11
    groups: [hypervisors]
    labels: {rack: r1}
    ssh: {user: root, port: 22, host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBmx"}
    bmc: {address: 127.0.0.1, port: 6230, username: admin, password: {secret: bmc-node1}}
    provision: {mac: "52:54:00:00:00:01", ip: 10.77.0.11, image: debian-12}
  vm1:
    vm:
      hypervisor: node1
      image: lab-guest.qcow2
      mac: "52:54:00:00:01:01"
      network: {address: 10.77.0.31/24, gateway: 10.77.0.1, nameservers: [10.77.0.1]}
      vcpus: 1
      memory_mib: 256
      disk_mib: 2048
      state: running
"""


def _text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _site(root: Path) -> Path:
    """A site from the scaffold: inventory, secrets (0600), playbooks, settings."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(SCAFFOLD / "inventory.yml", root / "inventory.yml")
    (root / "secrets.yml").write_text(SECRETS, encoding="utf-8")
    os.chmod(root / "secrets.yml", 0o600)
    (root / "playbooks").mkdir(exist_ok=True)
    return root


def _write(path: Path, data: bytes, mode: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if mode is not None:
        os.chmod(path, mode)
    return path


# -- the targets: each gets a fresh directory and the fuzzed bytes ------------------------------

def parse_inventory(root: Path, data: bytes) -> Any:
    from inventory.loader import load_inventory
    from inventory.secrets import SecretStore

    site = _site(root)
    _write(site / "inventory.yml", data)
    return load_inventory(site / "inventory.yml", SecretStore.load(site / "secrets.yml",
                                                                   environ={}))


def parse_secrets(root: Path, data: bytes) -> Any:
    from inventory.loader import load_inventory
    from inventory.secrets import SecretStore

    site = _site(root)
    _write(site / "secrets.yml", data, 0o600)
    store = SecretStore.load(site / "secrets.yml", environ={})
    return load_inventory(site / "inventory.yml", store)


def parse_settings(root: Path, data: bytes) -> Any:
    from inventory.site import Site
    from monitor.settings import MonitorSettings
    from orchestrate import mirror_site
    from provision.settings import BootSettings

    site_dir = _site(root)
    _write(site_dir / "metalchain.yml", data)
    site = Site.open(site_dir, environ={})
    try:
        out: list[Any] = [site.state_url]
        if "boot" in site.settings:
            out.append(BootSettings.from_site(site))
        out.append(MonitorSettings.from_site(site))
        out += [mirror_site.mirror_dir(site), mirror_site.default_address(site),
                mirror_site.default_port(site)]
        return out
    finally:
        site.close()


def parse_playbook(root: Path, data: bytes) -> Any:
    from orchestrate.playbook import load_playbook
    from orchestrate.registry import build_registry

    site = _site(root)
    (site / "playbooks" / "common.yml").write_text("- command: {argv: [echo, hi]}\n")
    path = _write(site / "playbooks" / "site.yml", data)
    return load_playbook(path, build_registry())


HOST_VARS = {"inventory_hostname": "node1", "address": "10.77.0.11",
             "ntp_server": "10.0.0.1", "metalchain_mirror": None, "groups": {},
             "hostvars": {}, "timezone": "UTC"}
ROLE_FILES = ("recipe.yml", "defaults.yml", "handlers.yml", "meta.yml")


def _role(root: Path, role: str, fuzzed: str, data: bytes) -> Any:
    from configure.roles import blocks_for_host, load_role

    roles = root / "roles"
    shutil.copytree(PLAYBOOKS / "roles" / role, roles / role)
    _write(roles / role / fuzzed, data)
    loaded = load_role(role, [roles])
    # Rendered for a host with the variables the shipped roles read (a role's own defaults
    # underneath); what a mutation leaves undefined is an error naming the template's line.
    return blocks_for_host([loaded], {**HOST_VARS, "facts": {"virtualization": "none"}})


def role_target(fuzzed: str) -> Callable[[Path, bytes], Any]:
    def target(root: Path, data: bytes, role: str = "base") -> Any:
        return _role(root, role, fuzzed, data)
    return target


def parse_remediation(root: Path, data: bytes) -> Any:
    from monitor.rules import load_rules

    return load_rules(_write(root / "playbooks" / "remediation.yml", data))


def parse_alerts(root: Path, data: bytes) -> Any:
    from monitor.alerts import load_alerts_file

    return load_alerts_file(_write(root / "playbooks" / "alerts.yml", data))


@dataclass(frozen=True)
class Target:
    name: str
    call: Callable[[Path, bytes], Any]
    seeds: tuple[str, ...]

    def inputs(self) -> st.SearchStrategy[bytes]:
        """Mostly mutated example files; one example in five raw bytes."""
        return st.one_of(mutated_yaml(self.seeds), mutated_yaml(self.seeds),
                         mutated_yaml(self.seeds), mutated_yaml(self.seeds), raw_bytes())


def _roles_text(name: str) -> tuple[str, ...]:
    return tuple(_text(p / name) for p in sorted((PLAYBOOKS / "roles").iterdir())
                 if (p / name).is_file())


def targets() -> list[Target]:
    return [
        Target("inventory", parse_inventory, (_text(SCAFFOLD / "inventory.yml"),
                                              GUEST_INVENTORY)),
        Target("secrets", parse_secrets, (SECRETS,)),
        Target("settings", parse_settings, (SETTINGS,)),
        Target("playbook", parse_playbook, (_text(PLAYBOOKS / "site.yml"),
                                            _text(SCAFFOLD / "playbooks" / "site.yml"),
                                            "- hosts: all\n  serial: [1, 50%]\n  steps:\n"
                                            "    - include: common.yml\n"
                                            "    - command: {argv: [id]}\n      retries: 2\n")),
        Target("role_recipe", role_target("recipe.yml"), (_text(PLAYBOOKS / "roles" / "base" /
                                                                "recipe.yml"),)),
        Target("role_defaults", role_target("defaults.yml"), _roles_text("defaults.yml")),
        Target("role_handlers", role_target("handlers.yml"), _roles_text("handlers.yml")),
        Target("role_meta", role_target("meta.yml"), _roles_text("meta.yml")),
        Target("remediation", parse_remediation, (_text(PLAYBOOKS / "remediation.yml"),)),
        Target("alerts", parse_alerts, (_text(PLAYBOOKS / "alerts.yml"),)),
    ]


# -- the property --------------------------------------------------------------------------

@dataclass
class Verdict:
    ok: bool             # the property held
    outcome: str         # "accepted", "rejected", or what went wrong
    detail: str
    seconds: float
    peak_bytes: int


def judge(target: Target, root: Path, data: bytes, *, seconds: float = SECONDS,
          peak_bytes: int = PEAK_BYTES, trace_memory: bool = True) -> Verdict:
    from inventory.errors import MetalchainError

    # tracemalloc makes a big parse up to 10 times slower: a traced example gets longer.
    run: Bounded = bounded(lambda: target.call(root, data),
                           seconds=seconds * (TRACED_SLOWDOWN if trace_memory else 1),
                           trace_memory=trace_memory)

    def verdict(ok: bool, outcome: str, detail: str = "") -> Verdict:
        return Verdict(ok, outcome, detail, run.seconds, run.peak_bytes)

    if trace_memory and run.peak_bytes > peak_bytes:
        return verdict(False, "memory", f"peak {run.peak_bytes} bytes")
    error = run.error
    if error is None:
        return verdict(True, "accepted")
    if isinstance(error, Hang):
        return verdict(False, "hang", str(error))
    if not isinstance(error, MetalchainError):
        return verdict(False, "unhandled", f"{error.__class__.__name__}: {error}"[:500])
    message = str(error)
    if not re.search(re.escape(str(root)) + r"/[^\n]*?:\d+", message):
        return verdict(False, "no file:line", message[:500])
    return verdict(True, "rejected")


# -- a systematic complement: every value of every example file replaced by each odd value ----

SWEEP_VALUES: tuple[Any, ...] = (None, True, 0, -1, 2 ** 64, 1.5, float("nan"), "", "x",
                                 "\x00", "a" * 300, "{{ 7*7 }}", "-x", [], [1], ["x"], {},
                                 {"a": 1}, {"secret": "nope"}, [[[]]])


def sweep(target: Target) -> list[tuple[str, bytes]]:
    """``(where, file)`` for every path of every seed of ``target`` and every one of
    :data:`SWEEP_VALUES` put there, plus the path removed: type confusion, value by value."""
    import copy

    import yaml

    out: list[tuple[str, bytes]] = []
    for n, text in enumerate(target.seeds):
        doc = yaml.safe_load(text)

        def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
            found = [prefix]
            items = node.items() if isinstance(node, dict) else \
                enumerate(node) if isinstance(node, list) else ()
            for k, v in items:
                found += paths(v, (*prefix, k))
            return found

        for path in paths(doc)[1:]:
            for value in (*SWEEP_VALUES, "<drop>"):
                mutated = copy.deepcopy(doc)
                parent = mutated
                for step in path[:-1]:
                    parent = parent[step]
                if value == "<drop>":
                    del parent[path[-1]]
                else:
                    parent[path[-1]] = value
                data = yaml.safe_dump(mutated, allow_unicode=True, sort_keys=False)
                out.append((f"seed {n} {'.'.join(map(str, path))} = {value!r:.20}",
                            data.encode("utf-8")))
    return out
