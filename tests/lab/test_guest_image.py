"""The lab's guest image, booted for real: one QEMU under TCG, the seed ISO as a second virtio
disk, the NIC on a bridge in a network namespace this module creates (10.96.0.0/24, the root
namespace reaches it over a veth as 10.96.0.1).

Checks: the build is reproducible (two caches, same sha256); SSH with strict host-key checking
against the injected key runs ``hostname`` and gets the seed's; a wrong pinned key is refused;
node_exporter answers /metrics on :9100; the guest's systemctl stops and restarts the exporter
the way remediation does; the image is downloadable from the mirror server's /images/.
Boot times (power-on -> exporter, -> sshd) are printed for docs/demo.md.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from configure.mirror_server import MirrorServer
from configure.vmseed import GuestSeed, build_seed_iso
from lab.network import LabNetwork
from provision.guestimage import ensure_guest_image, fetch_exporter_deb
from provision.image import ensure_image
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

NETNS = "mcgi-lab"
UPLINK = "mcgi0"
TAP = "mcgitap0"
SUBNET = "10.96.0.0/24"
GUEST_IP = "10.96.0.31"
CONTROLLER_IP = "10.96.0.1"
MIRROR_PORT = 19781
MAC = "52:54:00:96:00:31"
MEMORY_MIB = 192  # what a nested guest in the demo gets at least
BOOT_TIMEOUT_S = 120.0
MIRROR_DEBS = Path("/var/cache/metalchain/mirror-debs")


def _keypair() -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


def _exporter_deb() -> Path:
    """The mirror's cached .deb when there is one (no download), else apt-get download."""
    cached = sorted(MIRROR_DEBS.glob("prometheus-node-exporter_*_amd64.deb"))
    return cached[-1] if cached else fetch_exporter_deb(MIRROR_DEBS)


class Guest:
    def __init__(self, work: Path, image: Path, seed: GuestSeed, user_key: str) -> None:
        self.work = work
        self.image = image
        self.seed = seed
        self.user_key = user_key
        self.serial = work / "serial.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.powered_on = 0.0
        self.times: dict[str, float] = {}

    def start(self) -> None:
        overlay = self.work / "overlay.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b",
                        str(self.image), str(overlay)], check=True, timeout=30)
        seed_iso = self.work / "seed.iso"
        seed_iso.write_bytes(build_seed_iso(self.seed))
        argv = ["ip", "netns", "exec", NETNS, "qemu-system-x86_64",
                "-accel", "tcg,thread=multi", "-m", str(MEMORY_MIB), "-smp", "1",
                "-nodefaults", "-nographic", "-no-reboot", "-monitor", "none",
                "-serial", f"file:{self.serial}",
                "-drive", f"file={overlay},if=virtio,format=qcow2",
                "-drive", f"file={seed_iso},if=virtio,format=raw,readonly=on",
                "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                "-device", f"virtio-net-pci,netdev=n0,mac={MAC},romfile="]
        self.powered_on = time.monotonic()
        with open(self.work / "qemu.err", "wb") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err,
                                         start_new_session=True)

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)

    def alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"QEMU exited with {self.proc.returncode}: "
                                 f"{(self.work / 'qemu.err').read_text(errors='replace')}"
                                 f"\n--- serial ---\n{self.serial_text()[-3000:]}")

    def serial_text(self) -> str:
        try:
            return self.serial.read_text(errors="replace")
        except OSError:
            return ""

    def metrics(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://{GUEST_IP}:9100/metrics", timeout=3) as resp:
                return resp.read().decode()
        except OSError:
            return None

    def ssh(self, command: str, host_key: str | None = None) -> tuple[int, str]:
        """Run ``command`` as root, trusting only ``host_key`` (default: the injected one)."""
        client = paramiko.SSHClient()
        kind, blob = (host_key or self.seed.host_key_pub).split()[:2]
        client.get_host_keys().add(GUEST_IP, kind, paramiko.PKey.from_type_string(
            kind, base64.b64decode(blob)))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        try:
            client.connect(GUEST_IP, username="root", timeout=10, banner_timeout=20,
                           auth_timeout=20, look_for_keys=False, allow_agent=False,
                           pkey=paramiko.Ed25519Key.from_private_key(io.StringIO(self.user_key)))
            _in, out, _err = client.exec_command(command, timeout=30)
            text = out.read().decode()
            return out.channel.recv_exit_status(), text
        finally:
            client.close()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection((GUEST_IP, port), timeout=2) as sock:
            return port != 22 or sock.recv(8).startswith(b"SSH-")
    except OSError:
        return False


@pytest.fixture(scope="module")
def golden():
    return ensure_image()


@pytest.fixture(scope="module")
def published(golden, tmp_path_factory):
    images = tmp_path_factory.mktemp("images")
    image, _ = ensure_guest_image(images, golden, exporter_deb=_exporter_deb())
    return image


@pytest.fixture(scope="module")
def network():
    net = LabNetwork(NETNS, ipv4=SUBNET, ipv6="fd6d:6c61:6296::/64", uplink=UPLINK)
    with contextlib.suppress(Exception):
        net.down()  # the remains of an interrupted run
    try:
        net.up()
        net.add_tap(TAP)
        yield net
    finally:
        net.down()


@pytest.fixture(scope="module")
def guest(published, network, tmp_path_factory):
    work = tmp_path_factory.mktemp("guest")
    host_private, host_public = _keypair()
    user_private, user_public = _keypair()
    seed = GuestSeed(instance_id="gi-lab-1", hostname="guest-lab-1", mac=MAC,
                     ipv4=f"{GUEST_IP}/24", gateway=CONTROLLER_IP,
                     nameservers=(CONTROLLER_IP,), host_key=host_private,
                     host_key_pub=host_public, authorized_keys=(user_public + " test",))
    vm = Guest(work, published.path, seed, user_private)
    vm.start()
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT_S
        while len(vm.times) < 2:
            vm.alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"guest not up within {BOOT_TIMEOUT_S:g} s ({vm.times}):"
                                     f"\n{vm.serial_text()[-3000:]}")
            if "exporter" not in vm.times and _port_open(9100):
                vm.times["exporter"] = time.monotonic() - vm.powered_on
            if "sshd" not in vm.times and _port_open(22):
                vm.times["sshd"] = time.monotonic() - vm.powered_on
            time.sleep(0.1)
        size = published.image.size
        print(f"\nguest boot: power-on -> exporter {vm.times['exporter']:.1f} s, -> sshd "
              f"{vm.times['sshd']:.1f} s; image {size / 2**20:.1f} MiB "
              f"(virtual {published.virtual_size / 2**20:.0f} MiB), -m {MEMORY_MIB}")
        yield vm
    finally:
        vm.stop()


def test_build_is_reproducible(golden, published, tmp_path):
    again, seconds = ensure_guest_image(tmp_path / "images", golden,
                                        exporter_deb=_exporter_deb(),
                                        guest_cache=tmp_path / "cache")
    assert seconds is not None  # really built again, not taken from the first cache
    assert again.sha256 == published.sha256
    assert hashlib.sha256(again.path.read_bytes()).hexdigest() == published.sha256


def test_ssh_with_the_injected_host_key_runs_hostname(guest):
    status, out = guest.ssh("hostname")
    assert (status, out.strip()) == (0, "guest-lab-1")


def test_a_wrong_pinned_host_key_is_refused(guest):
    _other_private, other_public = _keypair()
    with pytest.raises(paramiko.BadHostKeyException):
        guest.ssh("hostname", host_key=other_public)


def test_node_exporter_answers_with_its_build_info(guest):
    text = wait_for(guest.metrics, 30, "node_exporter /metrics")
    assert "node_exporter_build_info{" in text
    assert "node_memory_MemTotal_bytes" in text


def test_systemctl_stops_and_restarts_the_exporter_like_remediation(guest):
    assert guest.ssh("systemctl is-active -- prometheus-node-exporter") == (0, "active\n")
    assert guest.ssh("systemctl stop prometheus-node-exporter")[0] == 0
    assert guest.ssh("systemctl is-active -- prometheus-node-exporter")[0] == 3
    wait_for(lambda: not _port_open(9100), 15, "the exporter to stop listening")
    status, _ = guest.ssh('sh -c \'systemctl reset-failed -- "$1" 2>/dev/null; '
                          'exec systemctl restart -- "$1"\' restart_service '
                          'prometheus-node-exporter.service')
    assert status == 0
    assert "node_exporter_build_info{" in wait_for(guest.metrics, 30, "exporter back")
    assert guest.ssh("systemctl is-active nosuch")[0] == 5


def test_serial_console_shows_the_guest_stages(guest):
    log = guest.serial_text()
    for stage in ("initramfs", "root /dev/vda1 mounted", "seed /dev/vdb: host guest-lab-1",
                  f"network eth0 {GUEST_IP}/24", "starting prometheus-node-exporter",
                  "starting ssh"):
        assert stage in log, stage
    assert "PRIVATE KEY" not in log


def test_mirror_server_serves_the_image_at_images(published, network, tmp_path):
    release = tmp_path / "mirror" / "releases" / "r1"
    release.mkdir(parents=True)
    (release / "Packages").write_text("")
    (tmp_path / "mirror" / "current").symlink_to("releases/r1")
    images = tmp_path / "mirror" / "images"
    images.mkdir()
    shutil.copyfile(published.path, images / published.path.name)
    with MirrorServer(tmp_path / "mirror" / "current", CONTROLLER_IP, MIRROR_PORT) as server:
        url = f"{server.url}images/{published.path.name}"
        digest = hashlib.sha256()
        with urllib.request.urlopen(url, timeout=30) as resp:
            while chunk := resp.read(1 << 20):
                digest.update(chunk)
        assert digest.hexdigest() == published.sha256
