"""The vm step against a real libvirtd (qemu:///system) in private namespaces.

libvirtd, virtlogd and a tiny HTTP image store run in their own mount, network and PID
namespaces (``unshare --kill-child``: they all die with the fixture, also when a test fails);
the "hypervisor connection" runs each command there through ``nsenter``. The guest image is a
placeholder qcow2 without an OS: SeaBIOS runs and logs to the serial console, which is all a
domain needs to be "running". SSH into a real guest is the e2e test's part.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from configure.vmstep import VmArgs, VmStep
from inventory.loader import load_inventory
from inventory.secrets import SecretStore
from inventory.state import StateStore
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

PORT = 19801
NEEDED = ("libvirtd", "virtlogd", "virsh", "qemu-img", "qemu-system-x86_64", "unshare",
          "nsenter")

NS_SCRIPT = r"""
set -eu
work=$1
for d in /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt /etc/libvirt \
         /var/lib/metalchain /var/log/metalchain /run/metalchain; do
  mkdir -p "$d"; mount -t tmpfs tmpfs "$d"
done
# libvirt's qemu user, as libvirt-daemon-system makes it (in this namespace's copies only)
cp /etc/passwd "$work/passwd"; cp /etc/group "$work/group"
grep -q '^libvirt-qemu:' "$work/passwd" ||
  echo 'libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin' >> "$work/passwd"
grep -q '^libvirt-qemu:' "$work/group" || echo 'libvirt-qemu:x:64055:' >> "$work/group"
mount --bind "$work/passwd" /etc/passwd; mount --bind "$work/group" /etc/group
# No cgroups or AppArmor to manage in a container; everything else is libvirt's default.
printf 'security_driver = "none"\ncgroup_controllers = [ ]\n' > /etc/libvirt/qemu.conf
: > /etc/libvirt/libvirtd.conf
: > /etc/libvirt/virtlogd.conf
ip link set lo up
ip link add br-guests type bridge; ip link set br-guests up
virtlogd > "$work/virtlogd.log" 2>&1 &
libvirtd > "$work/libvirtd.log" 2>&1 &
python3 -m http.server --bind 127.0.0.1 --directory "$work/store" "$2" \
  > "$work/http.log" 2>&1 &
touch "$work/ready"
wait
"""


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def tail(self, lines: int = 10) -> str:
        return "\n".join((self.stderr or self.stdout).rstrip().splitlines()[-lines:])


class NsConnection:
    """Runs the step's commands inside the namespaces (as root, like ``become``)."""

    host = "node1"

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def run(self, argv, *, timeout, become=False, stdin=None) -> Result:
        p = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-n", "-p", "--", *argv],
                           input=stdin or b"", capture_output=True, timeout=timeout)
        return Result(p.returncode, p.stdout.decode(errors="replace"),
                      p.stderr.decode(errors="replace"))

    def sh(self, script: str, timeout: float = 30) -> str:
        r = self.run(["sh", "-c", script], timeout=timeout)
        if r.exit_code != 0:
            raise AssertionError(f"{script}: exit {r.exit_code}: {r.tail()}")
        return r.stdout


@dataclass
class Ctx:
    conn: NsConnection
    options: dict[str, Any]
    state: Any
    check: bool = False
    host: str = "node1"
    vars: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None

    def connection(self) -> NsConnection:
        return self.conn

    def emit(self, event: str, **fields: Any) -> None:
        pass


INVENTORY = """\
hosts:
  node1:
    address: 10.97.0.11
    ssh: {{host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHv"}}
  vm1:
    vm:
      hypervisor: node1
      image: {image}
      mac: "52:54:00:97:01:01"
      network: {{address: 10.97.0.31/24, gateway: 10.97.0.1}}
      memory_mib: {memory}
      domain_type: qemu
      state: {state}
"""


@dataclass
class Lab:
    conn: NsConnection
    work: Path
    store: StateStore
    index: list[dict[str, Any]]
    sha: str

    def run(self, *, image: str = "placeholder.qcow2", memory: int = 64,
            state: str = "running", replace: bool = False, check: bool = False):
        path = self.work / "inventory.yml"
        path.write_text(INVENTORY.format(image=image, memory=memory, state=state))
        inv = load_inventory(path, SecretStore({}))
        ctx = Ctx(self.conn, {"inventory": inv,
                              "ssh_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIctl mc"},
                  self.store, check=check,
                  vars={"vm_image_store_url": f"http://127.0.0.1:{PORT}",
                        "vm_stop_timeout": 3})
        # The real seed (configure.vmseed's ISO), on a disk no OS reads.
        step = VmStep(index_fetcher=lambda url, timeout: self.index)
        return step.run(ctx, VmArgs(replace=replace))

    def virsh(self, *args: str) -> str:
        return self.conn.sh("virsh -c qemu:///system " + " ".join(args)).strip()


def _ns_init(unshare_pid: int) -> int:
    children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    return int(children[0])


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    missing = [t for t in NEEDED if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt-get install libvirt-daemon "
                    "libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils)")
    work = tmp_path_factory.mktemp("vmlab")
    images = work / "store" / "images"
    images.mkdir(parents=True)
    image = images / "placeholder.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True,
                   timeout=30)
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    url = f"http://127.0.0.1:{PORT}/images/"
    index = [{"name": "placeholder.qcow2", "size": image.stat().st_size, "sha256": sha,
              "disk_format": "qcow2", "url": url + "placeholder.qcow2"},
             # served, but its registered checksum is not the file's
             {"name": "tampered.qcow2", "size": image.stat().st_size, "sha256": "0" * 64,
              "disk_format": "qcow2", "url": url + "placeholder.qcow2"}]
    (work / "ns.sh").write_text(NS_SCRIPT)
    proc = subprocess.Popen(
        ["unshare", "--mount", "--net", "--pid", "--fork", "--mount-proc", "--kill-child",
         "--propagation", "private", "sh", str(work / "ns.sh"), str(work), str(PORT)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = StateStore(f"sqlite:///{work}/state.db")
    try:
        wait_for(lambda: (work / "ready").exists() or proc.poll() is not None, 30,
                 "the namespaces to be set up")
        conn = NsConnection(_ns_init(proc.pid))
        wait_for(lambda: conn.run(["virsh", "-c", "qemu:///system", "list"],
                                  timeout=10).exit_code == 0, 30, "libvirtd to answer")
        # The image store too: "ready" is written when it was started, not when it listens
        # (a first download that found it not yet listening failed CI's run).
        probe = ("import urllib.request; urllib.request.urlopen("
                 f"'http://127.0.0.1:{PORT}/images/placeholder.qcow2', timeout=5).read(1)")
        wait_for(lambda: conn.run(["python3", "-c", probe], timeout=10).exit_code == 0, 30,
                 "the image store to answer")
        yield Lab(conn, work, store, index, sha)
    finally:
        store.close()
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _qemu_pid(lab: Lab) -> int:
    return int(lab.conn.sh("cat /run/libvirt/qemu/vm1.pid").strip())


def test_creates_a_running_guest_on_the_verified_image(lab):
    checked = lab.run(check=True)
    assert checked.status == "changed" and "create guest vm1" in " ".join(checked.changes)
    assert "vm1" not in lab.virsh("list --all --name")

    out = lab.run()
    assert out.status == "changed", out.message
    assert out.data["vm"]["state"] == "running"
    assert lab.virsh("domstate vm1") == "running"
    assert lab.virsh("dominfo vm1").count("Autostart:      enable") == 1
    overlay = "/var/lib/metalchain/guests/vm1/disk.qcow2"
    info = json.loads(lab.conn.sh(f"qemu-img info -U --output=json {overlay}"))
    backing = info["full-backing-filename"]
    assert backing == f"/var/lib/metalchain/images/{lab.sha}"
    assert lab.conn.sh(f"sha256sum {backing}").split()[0] == lab.sha
    seed = "/var/lib/metalchain/guests/vm1/seed.iso"
    assert lab.conn.sh(f"stat -c %a {seed}").strip() == "600"
    assert lab.conn.sh(f"dd if={seed} bs=1 skip=32769 count=5 2>/dev/null") == "CD001"
    # the serial console is logged on the hypervisor
    wait_for(lambda: "SeaBIOS" in lab.conn.sh(
        "cat /var/log/metalchain/guests/vm1.console.log 2>/dev/null || true"), 60,
        "SeaBIOS on the guest's console log")
    # the pin is the key the seed carries
    meta = json.loads(lab.conn.sh("cat /var/lib/metalchain/guests/vm1/seed.iso.json"))
    assert lab.store.host_keys_of("vm1") == [meta["host_key_pub"]]


def test_second_run_changes_nothing(lab):
    pin = lab.store.host_keys_of("vm1")
    pid = _qemu_pid(lab)
    start = time.monotonic()
    out = lab.run()
    assert out.status == "ok", out.message
    assert time.monotonic() - start < 10
    assert lab.store.host_keys_of("vm1") == pin and _qemu_pid(lab) == pid


def test_a_killed_guest_is_started_again(lab):
    pin = lab.store.host_keys_of("vm1")
    old = _qemu_pid(lab)
    lab.conn.sh(f"kill -9 {old}")
    wait_for(lambda: lab.virsh("domstate vm1") == "shut off", 30, "libvirt to see it die")
    out = lab.run()
    assert out.status == "changed" and out.data["vm"]["state"] == "running", out.message
    assert _qemu_pid(lab) != old and lab.store.host_keys_of("vm1") == pin


def test_changed_spec_needs_replace_then_rebuilds_with_a_new_pin(lab):
    pin = lab.store.host_keys_of("vm1")
    refused = lab.run(memory=96)
    assert refused.status == "failed" and "needs replace" in refused.message
    assert "memory_mib: 64 -> 96" in refused.data["diff"]
    assert "65536 KiB" in lab.virsh("dominfo vm1")
    out = lab.run(memory=96, replace=True)
    assert out.status == "changed", out.message
    assert "98304 KiB" in lab.virsh("dominfo vm1") and lab.virsh("domstate vm1") == "running"
    assert lab.store.host_keys_of("vm1") != pin


def test_stopped_and_absent(lab):
    out = lab.run(memory=96, state="stopped")
    assert out.status == "changed" and out.data["vm"]["state"] == "stopped", out.message
    assert lab.virsh("domstate vm1") == "shut off"
    out = lab.run(memory=96, state="absent")
    assert out.status == "changed" and out.data["vm"]["state"] == "absent", out.message
    assert "vm1" not in lab.virsh("list --all --name")
    assert lab.conn.sh("ls -A /var/lib/metalchain/guests").strip() == ""
    assert lab.sha in lab.conn.sh("ls /var/lib/metalchain/images")    # the shared base stays


def test_an_image_whose_checksum_does_not_match_is_refused_and_deleted(lab):
    out = lab.run(image="tampered.qcow2")
    assert out.status == "failed" and "does not match the image store's" in out.message
    assert "0" * 64 not in lab.conn.sh("ls -a /var/lib/metalchain/images")
    assert ".part" not in lab.conn.sh("ls -a /var/lib/metalchain/images")
    assert "vm1" not in lab.virsh("list --all --name")
    assert os.path.exists(lab.work / "state.db")
