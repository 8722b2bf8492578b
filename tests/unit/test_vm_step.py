"""The vm step against a fake hypervisor: create, converge, heal, pin, and the private host
key never leaving the seed's stdin."""

from __future__ import annotations

import base64
import json
import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from configure.vmdomain import read_domain
from configure.vmstep import KVM_PROBE, VmArgs, VmStep
from inventory.loader import load_inventory
from inventory.secrets import SecretStore

pytestmark = pytest.mark.unit

SHA = "b" * 64
INVENTORY = """\
hosts:
  node1:
    address: 10.97.0.11
    ssh: {host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHv"}
  store1:
    address: 10.97.0.12
    roles: [image_store]
    ssh: {host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHs"}
  vm1:
    vm:
      hypervisor: node1
      image: lab-guest.qcow2
      mac: "52:54:00:97:01:01"
      network: {address: 10.97.0.31/24, gateway: 10.97.0.1}
"""
INDEX = [{"name": "lab-guest.qcow2", "size": 1, "sha256": SHA, "disk_format": "qcow2",
          "url": "http://10.97.0.12:9292/images/lab-guest.qcow2"}]


@dataclass
class Result:
    exit_code: int
    stdout: str = ""
    stderr: str = ""

    def tail(self, lines: int = 10) -> str:
        return (self.stderr or self.stdout)[-200:]


@dataclass
class FakeHypervisor:
    """Just enough of virsh and the file system for the step's scripts."""

    domains: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)
    calls: list[tuple[list[str], bytes | None]] = field(default_factory=list)
    host: str = "node1"
    fail_act: bool = False

    def run(self, argv, *, timeout, become=False, stdin=None):
        assert timeout > 0
        self.calls.append((list(argv), stdin))
        if argv[:3] == ["sh", "-c", KVM_PROBE]:
            return Result(0, "kvm=no\n")
        if argv[:2] == ["sh", "-c"]:        # staging: sh -c STAGE sh DIR PATH
            self.files[argv[5]] = stdin
            return Result(0)
        script = stdin.decode()
        m = re.search(r"@@(MC[0-9a-f]+) B", script)
        if m:
            return Result(0, self._probe(script, m.group(1)))
        return self._act(script)

    def _probe(self, script: str, token: str) -> str:
        out = []
        for idx, body in re.findall(rf"echo '@@{token} B (\d+)'\n(.*?)\necho '@@{token} E",
                                    script, re.S):
            name = re.search(r"grep -qxF -- (\S+);", body).group(1)
            d = self.domains.get(name)
            lines = ["virsh=ok"]
            if d:
                lines += ["defined=yes", f"domstate={d['state']}",
                          "xml=" + base64.b64encode(d["xml"].encode()).decode(),
                          f"autostart={'enable' if d['autostart'] else 'disable'}"]
            else:
                lines.append("defined=no")
            gdir = f"/var/lib/metalchain/guests/{name}"
            lines.append("overlay=" + ("yes" if f"{gdir}/disk.qcow2" in self.files else "no"))
            lines.append("seed=" + ("yes" if f"{gdir}/seed.iso" in self.files else "no"))
            meta = self.files.get(f"{gdir}/seed.iso.json", b"").decode().strip()
            lines.append(f"seedmeta={meta}")
            lines.append("image=" + ("ok" if f"/var/lib/metalchain/images/{SHA}" in self.files
                                     else "missing"))
            out += [f"@@{token} B {idx}", *lines, f"@@{token} E {idx} 0"]
        out.append(f"@@{token} END")
        return "\n".join(out) + "\n"

    def _act(self, script: str) -> Result:
        if self.fail_act:
            return Result(1, "", "vm1: sha256 0000 does not match the image store's: refused")
        if "sha256sum" in script:
            self.files[f"/var/lib/metalchain/images/{SHA}"] = b"image"
        for overlay in re.findall(r"-b \S+ (\S+disk\.qcow2)", script):
            self.files[overlay] = b"overlay"
        for staged, final in re.findall(r"mv -f -- (\S+\.new) (\S+)", script):
            self.files[final] = self.files.pop(staged)
        m = re.search(r"printf '%s' (\S+) \| base64 -d", script)
        xml = base64.b64decode(m.group(1).strip("'")).decode() if m else None
        for name in re.findall(r"undefine -- (\S+)", script):
            self.domains.pop(name, None)
        if xml is not None and "define --" in script:
            name = re.search(r"<name>(.*?)</name>", xml).group(1)
            self.domains[name] = {"xml": xml, "state": "shut off", "autostart": False}
        for flag, name in re.findall(r"autostart (--disable )?-- (\S+)", script):
            self.domains[name]["autostart"] = not flag
        for name in re.findall(r"(?<!\S)start -- (\S+)", script):
            self.domains[name]["state"] = "running"
        return Result(0)


class FakeStore:
    def __init__(self):
        self.pins: dict[str, list[str]] = {}

    def pin_host_key(self, name, public_key, source):
        self.pins[name] = [k for k in self.pins.get(name, []) if k.split()[0] !=
                           public_key.split()[0]] + [public_key]

    def host_keys_of(self, name):
        return list(self.pins.get(name, []))


@dataclass
class Ctx:
    conn: FakeHypervisor
    options: dict[str, Any]
    state: FakeStore
    check: bool = False
    host: str = "node1"
    vars: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def connection(self):
        return self.conn

    def emit(self, event, **fields):
        self.events.append((event, fields))


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, s):
        self.now += s


@pytest.fixture()
def world(tmp_path):
    path = tmp_path / "inventory.yml"
    path.write_text(INVENTORY, encoding="utf-8")
    inv = load_inventory(path, SecretStore({}))
    seeds: list[dict[str, Any]] = []
    probed: list[tuple[str, str]] = []
    clock = Clock()

    def seed_builder(fields):
        seeds.append(fields)
        return b"ISO:" + "".join(fields["host_key"].splitlines()[2:-1]).encode()

    def probe(address, pinned, port=22, timeout=3.0):
        probed.append((address, pinned))
        return clock.now >= 5, "connection refused"

    step = VmStep(host_key_probe=probe, seed_builder=seed_builder,
                  index_fetcher=lambda url, timeout: INDEX, clock=clock, sleep=clock.sleep)
    hv = FakeHypervisor()
    ctx = Ctx(hv, {"inventory": inv, "ssh_public_key": "ssh-ed25519 AAAAcontroller mc\n"},
              FakeStore())
    return step, ctx, seeds, probed


def test_first_run_creates_pins_waits_and_second_run_changes_nothing(world):
    step, ctx, seeds, probed = world
    out = step.run(ctx, VmArgs())
    assert out.status == "changed", out.message
    vm = out.data["vm"]
    assert vm["state"] == "running" and vm["name"] == "vm1" and vm["domain_type"] == "qemu"
    assert vm["ssh_seconds"] == 5.0
    pin = ctx.state.host_keys_of("vm1")
    assert pin == [seeds[0]["host_key_pub"]] and probed[-1] == ("10.97.0.31", pin[0])
    assert seeds[0]["authorized_keys"] == ("ssh-ed25519 AAAAcontroller mc",)
    assert seeds[0]["ipv4"] == "10.97.0.31/24" and seeds[0]["mac"] == "52:54:00:97:01:01"
    assert read_domain(ctx.conn.domains["vm1"]["xml"]).hash is not None
    # the store's URL came from the image_store host, the checksum from its index
    act = ctx.conn.calls[-2][1].decode()
    assert "http://10.97.0.12:9292/images/lab-guest.qcow2" in act and SHA in act

    calls = len(ctx.conn.calls)
    again = step.run(ctx, VmArgs())
    assert again.status == "ok", again.message
    assert len(seeds) == 1 and ctx.state.host_keys_of("vm1") == pin
    assert len(ctx.conn.calls) - calls == 2          # KVM verdict + one probe


def test_private_key_only_on_the_seeds_stdin(world):
    step, ctx, seeds, _ = world
    out = step.run(ctx, VmArgs())
    secret = seeds[0]["host_key"]
    assert "PRIVATE KEY" in secret
    # the lines past the first carry the key's private bytes (the first is a fixed header)
    body = "".join(secret.splitlines()[2:-1])[:40]
    carriers = [stdin for argv, stdin in ctx.conn.calls if stdin and body.encode() in stdin]
    assert len(carriers) == 1 and carriers[0].startswith(b"ISO:")
    for argv, _stdin in ctx.conn.calls:
        assert body not in " ".join(argv)
    dumped = json.dumps([out.message, out.changes, out.output, out.data, ctx.events],
                        default=str)
    assert body not in dumped and body not in str(ctx.state.pins)
    staged = [argv[5] for argv, _ in ctx.conn.calls
              if argv[:2] == ["sh", "-c"] and argv[2] != KVM_PROBE]
    assert staged[0].endswith("seed.iso.new")


def test_killed_guest_is_started_again_without_a_new_key(world):
    step, ctx, seeds, _ = world
    step.run(ctx, VmArgs())
    ctx.conn.domains["vm1"]["state"] = "shut off"      # its qemu was killed
    out = step.run(ctx, VmArgs(guests=("vm1",)))
    assert out.status == "changed" and out.data["vm"]["state"] == "running"
    assert len(seeds) == 1


def test_changed_spec_fails_with_diff_until_replace(world, tmp_path):
    step, ctx, seeds, _ = world
    step.run(ctx, VmArgs())
    old_pin = ctx.state.host_keys_of("vm1")
    path = tmp_path / "inventory.yml"
    path.write_text(INVENTORY.replace("gateway: 10.97.0.1}", "gateway: 10.97.0.1}\n"
                                      "      memory_mib: 512"), encoding="utf-8")
    ctx.options["inventory"] = load_inventory(path, SecretStore({}))
    ctx.check = True
    checked = step.run(ctx, VmArgs())
    assert checked.status == "failed" and "needs replace" in checked.message
    assert "memory_mib: 256 -> 512" in checked.data["diff"]
    ctx.check = False
    assert step.run(ctx, VmArgs()).status == "failed"
    assert len(seeds) == 1
    out = step.run(ctx, VmArgs(replace=True))
    assert out.status == "changed", out.message
    assert len(seeds) == 2 and ctx.state.host_keys_of("vm1") != old_pin
    assert ctx.state.host_keys_of("vm1") == [seeds[1]["host_key_pub"]]


def test_check_mode_changes_nothing(world):
    step, ctx, seeds, _ = world
    ctx.check = True
    out = step.run(ctx, VmArgs())
    assert out.status == "changed" and "would change" in out.message
    assert not seeds and not ctx.state.pins and not ctx.conn.domains


def test_lost_pin_is_restored_from_the_seed_on_the_hypervisor(world):
    step, ctx, seeds, _ = world
    step.run(ctx, VmArgs())
    ctx.state.pins.clear()
    out = step.run(ctx, VmArgs())
    assert out.status == "changed"
    assert ctx.state.host_keys_of("vm1") == [seeds[0]["host_key_pub"]]


def test_guest_ssh_that_never_answers_fails_bounded(world):
    step, ctx, _, _ = world
    step.host_key_probe = lambda *a, **k: (False, "connection refused")
    ctx.vars = {"vm_boot_timeout": 30}
    out = step.run(ctx, VmArgs())
    assert out.status == "failed" and "within 30 s" in out.message
    assert "vm1.console.log" in out.message


def test_guests_of_another_hypervisor_are_refused(world):
    step, ctx, _, _ = world
    from inventory.errors import InputError

    with pytest.raises(InputError, match="not a guest"):
        step.run(ctx, VmArgs(guests=("store1",)))


@pytest.mark.parametrize("raw", [[], "x", {"guest": ["a"]}, {"guests": []},
                                 {"replace": "yes"}])
def test_bad_args_are_refused(raw):
    with pytest.raises(ValueError):
        VmStep().parse(raw)


def test_args_parse():
    assert VmStep().parse(None) == VmArgs()
    assert VmStep().parse({"guests": ["vm1"], "replace": True}) == VmArgs(("vm1",), True)


def test_no_pin_for_a_guest_whose_creation_failed(world):
    step, ctx, seeds, _ = world
    ctx.conn.fail_act = True
    out = step.run(ctx, VmArgs())
    assert out.status == "failed" and "does not match" in out.message
    assert len(seeds) == 1 and not ctx.state.pins
    ctx.conn.fail_act = False
    assert step.run(ctx, VmArgs()).status == "changed"
    assert len(seeds) == 2 and ctx.state.host_keys_of("vm1") == [seeds[1]["host_key_pub"]]


def test_the_real_seed_builder_takes_the_steps_fields(world):
    from configure.vmstep import vmseed_iso

    step, ctx, seeds, _ = world
    step.run(ctx, VmArgs())
    iso = vmseed_iso(seeds[0])
    assert iso[0x8001:0x8006] == b"CD001"        # an ISO 9660 volume
    assert b"cidata" in iso[0x8000:0x8800].lower()


def test_a_new_guest_is_pinned_only_after_its_boot_was_waited_for(world):
    """serve watches a guest from its pin on: a guest still booting must not be pinned yet
    (else it is 'down' and remediated while it boots). The wait uses the new key."""
    step, ctx, seeds, probed = world
    pinned_while_probing: list[list[str]] = []
    inner = step.host_key_probe

    def probe(address, key, port=22, timeout=3.0):
        pinned_while_probing.append(ctx.state.host_keys_of("vm1"))
        return inner(address, key, port=port, timeout=timeout)

    step.host_key_probe = probe
    out = step.run(ctx, VmArgs())
    assert out.status == "changed", out.message
    assert pinned_while_probing and all(p == [] for p in pinned_while_probing)
    assert {k for _, k in probed} == {seeds[0]["host_key_pub"]}
    assert ctx.state.host_keys_of("vm1") == [seeds[0]["host_key_pub"]]
