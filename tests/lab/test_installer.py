"""The install path end to end on a QEMU machine, with a stand-in boot server.

The real boot server is not needed: a small stdlib HTTP server implements the node-facing half
of provision/contract.py (iPXE script per MAC, /installer/, /images/, config.env with the token,
progress/done/failed) and records every request. QEMU's user networking lets the guest reach it
on 10.0.2.2 and hands iPXE the script URL as its DHCP boot file, so the machine boots exactly
as on the provisioning network: firmware -> iPXE -> installer -> reboot -> iPXE says `exit`
-> disk. SSH to the installed system goes through a host port forward and must present the
host key the server handed out (strict checking, no trust on first use).
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lab.machine import Machine, MachineSpec
from lab.qmp import qmp_execute
from provision import contract
from provision.diskimage import DiskImage, ensure_disk_image
from provision.image import ensure_image
from provision.initramfs import Installer, ensure_installer

pytestmark = pytest.mark.lab

GUEST_HOST = "10.0.2.2"  # the host's 127.0.0.1 as QEMU user networking shows it to the guest
INSTALL_TIMEOUT = 240.0
SSH_TIMEOUT = 180.0


@dataclass
class NodeRecord:
    """What the stand-in boot server knows and heard about one node."""

    name: str
    mac: str
    token: str
    config: dict[str, str]
    installed: bool = False
    spent: bool = False
    events: list[tuple[float, str, dict[str, str]]] = field(default_factory=list)
    rejected: int = 0

    def stages(self) -> list[str]:
        return [fields.get("stage", "") for _t, kind, fields in self.events
                if kind == "progress"]

    def first(self, kind: str) -> tuple[float, dict[str, str]] | None:
        for t, k, fields in self.events:
            if k == kind:
                return t, fields
        return None


class StandInBootServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, images_dir: Path, installer: Installer) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.images_dir = images_dir
        self.installer = installer
        self.nodes: dict[str, NodeRecord] = {}
        self.lock = threading.Lock()

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def guest_url(self) -> str:
        return f"http://{GUEST_HOST}:{self.port}"

    def ipxe_script(self, mac_hyphens: str) -> str | None:
        node = next((n for n in self.nodes.values()
                     if n.mac.replace(":", "-") == mac_hyphens), None)
        if node is None:
            return None
        if node.installed:
            return "#!ipxe\necho metalchain: installed, booting from disk\nexit\n"
        base = self.guest_url
        args = " ".join([f"{contract.KARG_URL}={base}", f"{contract.KARG_NODE}={node.name}",
                         f"{contract.KARG_TOKEN}={node.token}", "console=ttyS0,115200n8", "quiet",
                         "BOOTIF=01-${net0/mac:hexhyp}"])
        return (f"#!ipxe\nkernel {base}{contract.INSTALLER_KERNEL} {args}\n"
                f"initrd {base}{contract.INSTALLER_INITRD}\nboot\n")


class _Handler(http.server.BaseHTTPRequestHandler):
    server: StandInBootServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep pytest output clean; the records are the log

    def _send(self, code: int, body: bytes = b"", ctype: str = "text/plain") -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _node(self) -> tuple[NodeRecord | None, str]:
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 4 or parts[:2] != [contract.API_VERSION, "nodes"]:
            return None, ""
        return self.server.nodes.get(parts[2]), parts[3]

    def _authorized(self, node: NodeRecord) -> bool:
        ok = (not node.spent and self.headers.get(contract.TOKEN_HEADER) == node.token)
        if not ok:
            node.rejected += 1
        return ok

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path.startswith("/boot/") and path.endswith(".ipxe"):
            script = self.server.ipxe_script(path[len("/boot/"):-len(".ipxe")])
            if script is None:
                return self._send(404)
            return self._send(200, script.encode())
        if path == contract.INSTALLER_KERNEL:
            return self._file(self.server.installer.kernel)
        if path == contract.INSTALLER_INITRD:
            return self._file(self.server.installer.initrd)
        if path.startswith("/images/") and "/" not in path[len("/images/"):]:
            return self._file(self.server.images_dir / path[len("/images/"):])
        node, leaf = self._node()
        if node is None or leaf != "config.env":
            return self._send(404)
        with self.server.lock:
            if not self._authorized(node):
                return self._send(403)
        body = "".join(f"{k}={_sh_quote(v)}\n" for k, v in node.config.items())
        self._send(200, body.encode())

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode("utf-8", errors="replace")
        node, leaf = self._node()
        if node is None or leaf not in ("progress", "done", "failed"):
            return self._send(404)
        with self.server.lock:
            if not self._authorized(node):
                return self._send(403)
            fields = dict(urllib.parse.parse_qsl(raw, keep_blank_values=True))
            node.events.append((time.monotonic(), leaf, fields))
            if leaf in ("done", "failed"):
                node.spent = True
                node.installed = leaf == "done"
        self._send(200, b"ok\n")

    def _file(self, path: Path) -> None:
        try:
            size = path.stat().st_size
            stream = open(path, "rb")
        except OSError:
            return self._send(404)
        with stream:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                shutil.copyfileobj(stream, self.wfile, 1024 * 1024)


def _sh_quote(value: str) -> str:
    return "'" + value.replace("'", "'\\''") + "'"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _keygen(path: Path, comment: str) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment,
                    "-f", str(path)], check=True, timeout=30, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


# --- fixtures -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Artifacts:
    image: DiskImage
    installer: Installer
    images_dir: Path


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    base = tmp_path_factory.mktemp("install-artifacts")
    golden = ensure_image()
    started = time.monotonic()
    image = ensure_disk_image(base / "images", golden)
    image_s = time.monotonic() - started
    started = time.monotonic()
    installer = ensure_installer(base / "installer", golden)
    installer_s = time.monotonic() - started
    print(f"\n[figures] disk image {image.size / 1e6:.0f} MB in {image_s:.1f} s "
          f"(build {image.build_seconds} s); installer: kernel "
          f"{installer.kernel.stat().st_size / 1e6:.1f} MB, initrd "
          f"{installer.initrd.stat().st_size / 1e6:.1f} MB in {installer_s:.2f} s")
    return Artifacts(image=image, installer=installer, images_dir=base / "images")


@pytest.fixture
def boot_server(artifacts: Artifacts):
    server = StandInBootServer(artifacts.images_dir, artifacts.installer)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Node:
    machine: Machine
    record: NodeRecord
    ssh_port: int
    client_key: Path
    known_hosts: Path
    powered_on: float = 0.0


@pytest.fixture
def make_node(tmp_path: Path, boot_server: StandInBootServer, artifacts: Artifacts):
    machines: list[Machine] = []

    def _make(name: str, mac: str, *, image_sha256: str | None = None) -> Node:
        work = tmp_path / name
        work.mkdir()
        host_pub = _keygen(work / "host_key", f"root@{name}")
        client_pub = _keygen(work / "client_key", "metalchain-test")
        ssh_port = _free_port()
        (work / "known_hosts").write_text(f"[127.0.0.1]:{ssh_port} {host_pub}\n")
        image = artifacts.image
        config = {
            "MC_HOSTNAME": name,
            "MC_IMAGE_URL": f"{boot_server.guest_url}/images/{image.name}.raw",
            "MC_IMAGE_SHA256": image_sha256 or image.sha256,
            "MC_IMAGE_SIZE": str(image.size),
            "MC_ROOT_DEVICE": "auto",
            "MC_AUTHORIZED_KEYS": _b64(client_pub + "\n"),
            "MC_HOST_KEY": _b64((work / "host_key").read_text()),
            "MC_HOST_KEY_PUB": _b64(host_pub + "\n"),
            "MC_MAC": mac,
            # QEMU user networking's guest address: the installed system sets it statically.
            "MC_IPV4": "10.0.2.15/24",
            "MC_GATEWAY": "",
            "MC_NAMESERVERS": "",
        }
        token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        record = NodeRecord(name=name, mac=mac, token=token, config=config)
        boot_server.nodes[name] = record
        boot_url = f"{boot_server.guest_url}/boot/{mac.replace(':', '-')}.ipxe"
        netdev = (f"user,id=net0,bootfile={boot_url},"
                  f"hostfwd=tcp:127.0.0.1:{ssh_port}-:22")
        spec = MachineSpec(name=name, workdir=work / "vm", mac=mac, network=None,
                           boot_order="nc", accel="tcg",
                           extra_args=("-netdev", netdev, "-device",
                                       f"virtio-net-pci,netdev=net0,mac={mac}"))
        machine = Machine(spec)
        machines.append(machine)
        machine.start()
        return Node(machine, record, ssh_port, work / "client_key", work / "known_hosts")

    try:
        yield _make
    finally:
        for machine in machines:
            machine.stop()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _power_on(node: Node) -> None:
    node.powered_on = time.monotonic()
    qmp_execute(node.machine.qmp_socket, "cont")


def _wait_for(predicate, timeout: float, what: str, node: Node):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            tail = node.machine.serial_text()[-1500:]
            pytest.fail(f"{what} not within {timeout:.0f} s; events: "
                        f"{[(k, f.get('stage')) for _t, k, f in node.record.events]}; "
                        f"serial tail:\n{tail}")
        time.sleep(0.25)


def _ssh(node: Node, command: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    argv = ["ssh", "-F", "/dev/null", "-p", str(node.ssh_port), "-i", str(node.client_key),
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={node.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=5", "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR",
            "root@127.0.0.1", command]
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              check=False)
    except subprocess.TimeoutExpired:
        return subprocess.CompletedProcess(argv, 255, "", "timeout")


# --- tests --------------------------------------------------------------------------------


def test_install_then_ssh_with_the_pinned_host_key(make_node) -> None:
    node = make_node("node-a", "52:54:00:4d:43:01")
    _power_on(node)
    _wait_for(lambda: "metalchain installer starting" in node.machine.serial_text(),
              INSTALL_TIMEOUT, "installer start", node)
    installer_up = time.monotonic()
    done = _wait_for(lambda: node.record.first("done") or node.record.first("failed"),
                     INSTALL_TIMEOUT, "done or failed", node)
    assert node.record.first("failed") is None, done
    done_at = done[0]
    assert node.record.stages() == list(contract.INSTALL_STAGES)

    _wait_for(lambda: "Booting from Hard Disk" in node.machine.serial_text(),
              INSTALL_TIMEOUT, "the firmware booting the disk", node)
    disk_boot_at = time.monotonic()
    answer: dict[str, subprocess.CompletedProcess[str]] = {}

    def ssh_answers() -> bool:
        result = _ssh(node, "hostname; systemctl is-active ssh systemd-networkd; "
                            "df -B1 --output=size / | tail -1; "
                            "stat -c %a /etc/ssh/ssh_host_ed25519_key")
        answer["last"] = result
        return result.returncode == 0

    _wait_for(ssh_answers, SSH_TIMEOUT, "SSH with the pinned host key", node)
    ssh_at = time.monotonic()
    lines = answer["last"].stdout.split()
    assert lines[0] == "node-a"
    assert lines[1:3] == ["active", "active"]
    assert int(lines[3]) > 3 * 1024**3  # grown from the ~0.5 GB image to the 4 GiB disk
    assert lines[4] == "600"
    serial = node.machine.serial_text()
    assert node.record.token not in serial
    host_key_body = node.record.config["MC_HOST_KEY"]
    assert host_key_body not in serial and "PRIVATE KEY" not in serial
    assert node.record.rejected == 0
    print(f"\n[figures] power-on -> installer start {installer_up - node.powered_on:.1f} s, "
          f"-> done {done_at - node.powered_on:.1f} s, "
          f"-> disk boot {disk_boot_at - node.powered_on:.1f} s, "
          f"-> SSH answering {ssh_at - node.powered_on:.1f} s")
    for t, kind, fields in node.record.events:
        print(f"[figures]   {t - node.powered_on:6.1f} s {kind} {fields.get('stage')}")


def test_wrong_checksum_reports_failed_with_log_tail(make_node) -> None:
    node = make_node("node-b", "52:54:00:4d:43:02", image_sha256="0" * 64)
    _power_on(node)
    _wait_for(lambda: node.record.first("failed") or node.record.first("done"),
              INSTALL_TIMEOUT, "failed", node)
    failed = node.record.first("failed")
    assert failed is not None and node.record.first("done") is None
    fields = failed[1]
    assert fields["stage"] == "verifying"
    assert "checksum mismatch" in fields["message"]
    assert "stage streaming" in fields["log"]
    assert node.record.token not in fields["log"]
    assert "PRIVATE KEY" not in fields["log"]
    # The token is spent: the installer must not have gone on (no done, nothing accepted).
    assert node.record.stages()[-1] == "verifying"
    _wait_for(lambda: "a shell for debugging follows" in node.machine.serial_text(),
              30, "the debug shell", node)
