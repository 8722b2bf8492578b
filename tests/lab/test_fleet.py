"""Lab tests for the provisioning network and the SSH fleet (real namespaces, systemd, sshd).

They use their own /24 and namespace names so they can run next to a lab brought up with the
defaults. Every fixture tears down what it started, also when the test fails.
Run with ``-s`` to see the measured bring-up times and memory (recorded in docs/lab.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from inventory.errors import LabError
from lab.fleet import (
    Fleet,
    HostRecord,
    cgroup_memory_bytes,
    cgroup_pids,
    known_hosts_lines,
    plan_hosts,
)
from lab.network import LabNetwork
from provision.image import GoldenImage, ensure_image

pytestmark = pytest.mark.lab

NETNS = "mclab-tfleet"
IPV4 = "10.77.250.0/24"
IPV6 = "fd6d:6c61:62fa::/64"


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15,
                          check=True).stdout


@pytest.fixture(scope="session")
def golden() -> GoldenImage:
    # Cached in the default cache dir: built once (~30 s), reused by later runs.
    return ensure_image()


@pytest.fixture(scope="session")
def controller_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    key = tmp_path_factory.mktemp("controller") / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "controller",
                    "-f", str(key)], check=True, timeout=30)
    return key


@pytest.fixture
def network() -> Iterator[LabNetwork]:
    net = LabNetwork(NETNS, ipv4=IPV4, ipv6=IPV6)
    try:
        net.up()
        yield net
    finally:
        net.down()


@pytest.fixture
def fleet(tmp_path: Path, network: LabNetwork, golden: GoldenImage,
          controller_key: Path) -> Iterator[Fleet]:
    pub = controller_key.with_suffix(".pub").read_text(encoding="utf-8")
    lab = Fleet(tmp_path / "lab", network, golden.rootfs, [pub])
    try:
        yield lab
    finally:
        lab.stop()


def ssh(key: Path, known_hosts: Path, address: str, *command: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-i", str(key), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ConnectTimeout=10",
         "-o", "LogLevel=ERROR", f"root@{address}", *command],
        capture_output=True, text=True, timeout=30, check=False)


def used_memory_bytes() -> int:
    out = subprocess.run(["free", "-b"], capture_output=True, text=True, timeout=10,
                         check=True).stdout
    return int(out.splitlines()[1].split()[2])


def pss_bytes(records: list[HostRecord]) -> int:
    total = 0
    pids = {p for r in records for c in r.cgroups for p in cgroup_pids(Path(c))}
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            continue
    return total


def assert_nothing_left(lab_dir: Path, records: list[HostRecord]) -> None:
    netns = ip("netns", "list")
    links = ip("-o", "link", "show")
    mounts = Path("/proc/mounts").read_text()
    assert NETNS not in netns, netns
    assert not any(r.netns in netns for r in records), netns
    assert NETNS not in links, links
    assert str(lab_dir) not in mounts
    found = subprocess.run(["pgrep", "-f", str(lab_dir)], capture_output=True, text=True,
                           timeout=10, check=False)
    assert found.stdout.strip() == "", found.stdout
    for record in records:
        for cgroup in record.cgroups:
            assert not os.path.exists(cgroup), cgroup
        assert not os.path.exists(f"/proc/{record.init_pid}") or \
            "State:\tZ" not in Path(f"/proc/{record.init_pid}/status").read_text()


def bring_up_and_check(fleet: Fleet, network: LabNetwork, controller_key: Path, count: int,
                       timeout: float) -> None:
    hosts = plan_hosts(count, network.ipv4)
    before = used_memory_bytes()
    result = fleet.start(hosts, timeout=timeout)
    result.check()
    records = [result.hosts[h.name] for h in hosts]
    after = used_memory_bytes()
    known = Path(fleet.lab_dir, "known_hosts")
    known.write_text("\n".join(known_hosts_lines(records)) + "\n", encoding="utf-8")
    started = time.monotonic()
    for record in records:
        answer = ssh(controller_key, known, record.address, "hostname")
        assert answer.returncode == 0, (record.name, answer.stderr)
        assert answer.stdout.strip() == record.name
    ssh_seconds = time.monotonic() - started
    cgroup_total = sum(cgroup_memory_bytes(r) or 0 for r in records)
    print(f"\n[fleet] {count} hosts answered SSH (pinned key) {result.seconds:.1f} s after "
          f"start; free 'used' +{(after - before) / 2**20:.0f} MiB; PSS "
          f"{pss_bytes(records) / 2**20:.0f} MiB; cgroup memory {cgroup_total / 2**20:.0f} MiB; "
          f"{count} sequential ssh logins {ssh_seconds:.1f} s")


def test_network_up_down_leaves_nothing() -> None:
    net = LabNetwork(NETNS, ipv4=IPV4, ipv6=IPV6)
    try:
        first = net.up()
        again = net.up()
        assert first.up and again.up
        net.add_tap("tap0")
        net.add_tap("tap0")
        st = net.status()
        assert st.taps == ["tap0"]
        assert set(st.bridge_ports) == {"ctl0", "tap0"}
        assert st.uplink_addresses == ["10.77.250.1/24", "fd6d:6c61:62fa::1/64"]
        assert st.bridge_addresses == ["10.77.250.2/24", "fd6d:6c61:62fa::2/64"]
        assert st.forwarding["root.ipv4.uplink"] == "0"
        assert st.forwarding["root.ipv6.uplink.accept_ra"] == "0"
        assert st.forwarding["netns.net.ipv4.ip_forward"] == "0"
        assert st.forwarding["netns.net.ipv6.conf.all.forwarding"] == "0"
        assert "default" not in ip("-n", NETNS, "route", "show")
        assert "default" not in ip("-n", NETNS, "-6", "route", "show")
        # The root namespace reaches the lab only through the connected /24.
        assert ip("route", "show", "dev", net.uplink).split() == [
            "10.77.250.0/24", "proto", "kernel", "scope", "link", "src", "10.77.250.1"]
        # A second lab on the same /24 is refused instead of shadowing this one.
        with pytest.raises(LabError, match="already routed"):
            LabNetwork("mclab-tclash", ipv4=IPV4, ipv6=IPV6).up()
    finally:
        net.down()
    net.down()  # idempotent
    assert NETNS not in ip("netns", "list")
    links = ip("-o", "link", "show")
    assert net.uplink not in links and "tap0" not in links
    assert not net.status().up


def test_golden_image_is_cached_and_has_no_host_keys(golden: GoldenImage) -> None:
    started = time.monotonic()
    again = ensure_image()
    assert again.path == golden.path and again.build_seconds is None
    assert time.monotonic() - started < 2
    print(f"\n[image] {golden.path.name}: built in {golden.info['build_seconds']} s, "
          f"{int(golden.info['size_bytes']) / 2**20:.0f} MiB")
    assert not list((golden.rootfs / "etc/ssh").glob("ssh_host_*"))
    assert os.readlink(golden.rootfs / "etc/systemd/system/getty@.service") == "/dev/null"
    assert (golden.rootfs / "etc/systemd/system/multi-user.target.wants/"
            "systemd-networkd.service").is_symlink()
    assert (golden.rootfs / "etc/machine-id").read_text() == ""


def test_ten_hosts_answer_ssh_with_pinned_keys(fleet: Fleet, network: LabNetwork,
                                               controller_key: Path) -> None:
    bring_up_and_check(fleet, network, controller_key, 10, timeout=180)
    records = fleet.records()
    # Each host has its own key: another host's key for this address is refused.
    wrong = Path(fleet.lab_dir, "wrong_known_hosts")
    wrong.write_text(f"{records[0].address} {records[1].host_key}\n", encoding="utf-8")
    refused = ssh(controller_key, wrong, records[0].address, "hostname")
    assert refused.returncode != 0
    assert "host key" in refused.stderr.lower() or "HOST IDENTIFICATION" in refused.stderr
    # No default route inside a host, and systemd came up clean.
    known = Path(fleet.lab_dir, "known_hosts")
    routes = ssh(controller_key, known, records[0].address, "ip", "-4", "route", "show",
                 "default")
    assert routes.returncode == 0 and routes.stdout.strip() == ""
    state = ssh(controller_key, known, records[0].address, "systemctl", "is-system-running")
    assert state.stdout.strip() == "running", state.stdout
    statuses = fleet.status()
    assert all(s.init_alive and s.ssh_ok for s in statuses), statuses
    # A separate process (what `lab down` is) tears the fleet down from the JSON records.
    down = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; "
                           "from lab.fleet import stop_all; stop_all(Path(sys.argv[1]))",
                           str(fleet.lab_dir)], capture_output=True, text=True, timeout=120,
                          check=False, cwd=Path(__file__).resolve().parents[2])
    assert down.returncode == 0, down.stderr
    fleet.stop()  # idempotent; also reaps this process's launchers
    network.down()
    assert_nothing_left(fleet.lab_dir, records)
    assert all(not s.init_alive for s in fleet.status())


def test_fifty_hosts_answer_ssh_with_pinned_keys(fleet: Fleet, network: LabNetwork,
                                                controller_key: Path) -> None:
    bring_up_and_check(fleet, network, controller_key, 50, timeout=400)
    records = fleet.records()
    fleet.stop()
    network.down()
    assert_nothing_left(fleet.lab_dir, records)
