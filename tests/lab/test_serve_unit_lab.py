"""The serve unit `metalchain init` writes, checked against real components: systemd's own
verifier, and the real `metalchain serve` started from the unit's ExecStart= with only the
unit's CapabilityBoundingSet= (as systemd would), on a provisioning network this test makes
(two network namespaces and a veth pair): a DHCP client gets its static lease, TFTP hands out
iPXE, the per-MAC iPXE script answers, SIGHUP reloads dnsmasq's hosts, SIGTERM stops serve and
its dnsmasq well inside TimeoutStopSec=.

This machine has no systemd as PID 1, so the unit itself is never started here: the
sandboxing directives are checked by `systemd-analyze verify`, the capabilities for real.
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from orchestrate.serve_unit import UNIT_NAME
from tests.unit.test_serve_unit import one, parse_unit
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
SUBNET_PREFIX = "10.102.0"
CONTROLLER = f"{SUBNET_PREFIX}.1"
NODE_IP = f"{SUBNET_PREFIX}.50"
NODE_MAC = "52:54:00:66:02:50"
NEW_MAC = "52:54:00:66:02:51"
HTTP_PORT = 20280
RECEIVER_PORT = 20295
TAG = f"mcu{os.getpid() % 10000}"
SERVER_NS, CLIENT_NS = f"{TAG}s", f"{TAG}c"
SERVER_IF, CLIENT_IF = f"{TAG}s0", f"{TAG}c0"
# serve's own stop: remediation 10 s, dnsmasq 5 + 5 s; the unit allows more.
STOP_LIMIT_S = 30.0


def run(*argv: str, timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=check)


def in_client(*argv: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", CLIENT_NS, *argv, timeout=timeout, check=False)


def status_field(pid: int, name: str) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} in /proc/{pid}/status")


def cap_mask(names: list[str]) -> int:
    numbers = {"CAP_CHOWN": 0, "CAP_KILL": 5, "CAP_SETGID": 6, "CAP_SETUID": 7,
               "CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}
    return sum(1 << numbers[n] for n in names)


@pytest.fixture(scope="module")
def network() -> Iterator[None]:
    for tool in ("ip", "setpriv", "dnsmasq", "busybox"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    try:
        run("ip", "netns", "add", SERVER_NS)
        run("ip", "netns", "add", CLIENT_NS)
        run("ip", "link", "add", SERVER_IF, "netns", SERVER_NS, "type", "veth", "peer", "name",
            CLIENT_IF, "netns", CLIENT_NS, "address", NODE_MAC)
        run("ip", "-n", SERVER_NS, "addr", "add", f"{CONTROLLER}/24", "dev", SERVER_IF)
        for ns, dev in ((SERVER_NS, SERVER_IF), (SERVER_NS, "lo"), (CLIENT_NS, CLIENT_IF),
                        (CLIENT_NS, "lo")):
            run("ip", "-n", ns, "link", "set", dev, "up")
        yield
    finally:
        for ns in (SERVER_NS, CLIENT_NS):   # deleting a namespace deletes its veth end
            run("ip", "netns", "delete", ns, check=False)


@pytest.fixture(scope="module")
def site() -> Iterator[Path]:
    # Not under pytest's 0700 tmp dirs: dnsmasq drops to 'nobody' and must enter the site.
    parent = Path(tempfile.mkdtemp(prefix="mc-serve-unit-", dir="/tmp"))
    try:
        parent.chmod(0o755)
        root = parent / "site"
        run(str(VENV_BIN / "metalchain"), "init", str(root))
        (root / "keys").mkdir()
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / "keys/id_ed25519"))
        (root / "metalchain.yml").write_text(
            f"boot:\n  interface: {SERVER_IF}\n  address: {CONTROLLER}\n"
            f"  subnet: {SUBNET_PREFIX}.0/24\n  http_port: {HTTP_PORT}\n"
            f"monitor:\n  receiver_port: {RECEIVER_PORT}\n", encoding="utf-8")
        write_inventory(root, [("node1", NODE_MAC, NODE_IP)])
        yield root
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def write_inventory(root: Path, nodes: list[tuple[str, str, str]]) -> None:
    lines = ["hosts:"]
    for i, (name, mac, ip) in enumerate(nodes):
        lines += [f"  {name}:",
                  f"    bmc: {{address: 127.0.0.1, port: {20231 + i}, username: admin, "
                  "password: {secret: bmc-node1}}",
                  f'    provision: {{mac: "{mac}", ip: {ip}, image: debian-12}}']
    (root / "inventory.yml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_systemd_analyze_verifies_the_unit_init_wrote(site):
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (package systemd)")
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "mc-probe.service"
        probe.write_text("[Service]\nExecStart=/bin/true\n", encoding="utf-8")
        proc = run(tool, "verify", "--man=no", str(probe), check=False)
        if proc.returncode != 0 or proc.stderr.strip():
            pytest.skip(f"systemd-analyze verify cannot run here: {proc.stderr.strip()}")
    unit = site / UNIT_NAME
    proc = run(tool, "verify", "--man=no", str(unit), check=False)
    assert proc.returncode == 0 and proc.stderr.strip() == "" and proc.stdout.strip() == "", (
        proc.returncode, proc.stdout, proc.stderr)
    # ... and the verifier is not blind: a wrong directive in the same unit is reported.
    with tempfile.TemporaryDirectory() as tmp:
        broken = Path(tmp) / UNIT_NAME
        broken.write_text(unit.read_text().replace("ProtectSystem=strict",
                                                   "ProtectSystem=stricter"))
        proc = run(tool, "verify", "--man=no", str(broken), check=False)
        assert "stricter" in proc.stderr, proc.stderr


def test_serve_with_the_units_capabilities_serves_reloads_and_stops(network, site, tmp_path):
    unit = parse_unit((site / UNIT_NAME).read_text(encoding="utf-8"))
    caps = one(unit, "Service", "CapabilityBoundingSet").split()
    argv = [a.replace("%%", "%") for a in shlex.split(one(unit, "Service", "ExecStart"))]
    bounding = "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    log = (tmp_path / "serve.out").open("wb")
    proc = subprocess.Popen(["ip", "netns", "exec", SERVER_NS, "setpriv",
                             f"--bounding-set={bounding}", "--inh-caps=-all", "--no-new-privs",
                             "--", *argv], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    out = tmp_path / "serve.out"
    dnsmasq_pid: int | None = None
    try:
        wait_for(lambda: proc.poll() is not None or b"serving " in out.read_bytes(), 60,
                 "serve's 'serving' line")
        assert proc.poll() is None, out.read_text(errors="replace")
        # ip netns exec and setpriv exec: the pid is serve's, bounded as the unit says.
        assert int(status_field(proc.pid, "CapBnd"), 16) == cap_mask(caps)
        pid_file = site / "boot" / "dnsmasq.pid"
        dnsmasq_pid = int(pid_file.read_text().strip())
        nobody = pwd.getpwnam("nobody").pw_uid
        assert status_field(dnsmasq_pid, "Uid").split()[0] == str(nobody)

        dhcp = in_client("busybox", "udhcpc", "-i", CLIENT_IF, "-n", "-q", "-t", "5", "-T", "1",
                         "-s", "/bin/true")
        assert f"lease of {NODE_IP} obtained from {CONTROLLER}" in dhcp.stdout + dhcp.stderr, (
            dhcp.stdout, dhcp.stderr)
        run("ip", "-n", CLIENT_NS, "addr", "add", f"{NODE_IP}/24", "dev", CLIENT_IF)
        got = tmp_path / "undionly.kpxe"
        tftp = in_client("busybox", "tftp", "-g", "-r", "undionly.kpxe", "-l", str(got),
                         CONTROLLER)
        assert tftp.returncode == 0, tftp.stderr
        assert got.read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()
        mac_hyphens = NODE_MAC.replace(":", "-")
        script = in_client("busybox", "wget", "-q", "-O-",
                           f"http://{CONTROLLER}:{HTTP_PORT}/boot/{mac_hyphens}.ipxe")
        assert script.stdout.startswith("#!ipxe") and "exit" in script.stdout, script

        # SIGHUP (the unit's ExecReload=): a new node reaches dnsmasq's hosts file, and
        # dnsmasq (running as nobody) re-reads it: serve could signal it.
        dnsmasq_log = site / "boot" / "dnsmasq.log"
        reads = dnsmasq_log.read_text().count("read " + str(site / "boot" / "dhcp-hosts"))
        write_inventory(site, [("node1", NODE_MAC, NODE_IP),
                               ("node2", NEW_MAC, f"{SUBNET_PREFIX}.51")])
        os.kill(proc.pid, signal.SIGHUP)
        wait_for(lambda: proc.poll() is not None or dnsmasq_log.read_text().count(
            "read " + str(site / "boot" / "dhcp-hosts")) > reads, 20,
            "dnsmasq re-reading its hosts file after serve's SIGHUP")
        # (without CAP_KILL serve dies here: "internal error: PermissionError")
        assert proc.poll() is None, out.read_text(errors="replace")
        assert NEW_MAC in (site / "boot" / "dhcp-hosts").read_text()
        assert int(pid_file.read_text().strip()) == dnsmasq_pid   # reloaded, not restarted

        # SIGTERM (the unit's KillSignal=, sent to serve alone: KillMode=mixed).
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=STOP_LIMIT_S)
        took = time.monotonic() - started
        print(f"serve stopped {took:.1f} s after SIGTERM (exit {code})")
        assert code == 0, out.read_text(errors="replace")
        wait_for(lambda: not Path(f"/proc/{dnsmasq_pid}").exists(), 5, "dnsmasq gone")
        assert not (site / "boot" / "serve.json").exists()
        text = out.read_text(errors="replace")
        assert "Traceback" not in text and "Operation not permitted" not in text, text
        assert not re.search(r"dnsmasq.*(failed|cannot)", dnsmasq_log.read_text()), \
            dnsmasq_log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if dnsmasq_pid is not None and Path(f"/proc/{dnsmasq_pid}").exists():
            os.kill(dnsmasq_pid, signal.SIGKILL)
        log.close()
