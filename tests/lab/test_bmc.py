"""Lab tests: QEMU machines behind real IPMI BMCs on 127.0.0.1, checked by two clients.

Every machine, BMC process and directory a test makes is registered with the ``lab`` fixture,
whose finalizer tears it down even when the test fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inventory.errors import BmcError
from lab.bmc import BmcProcessSpec, bmc_pid, start_bmc, stop_bmc
from lab.machine import Machine, MachineSpec, UserNetwork
from provision.bmc import IpmiBmc, ping

pytestmark = pytest.mark.lab

USER = "admin"
PASSWORD = "lab-Pässw0rd"  # non-ASCII on purpose: credentials are bytes end to end


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    machine: Machine
    bmc: BmcProcessSpec

    def driver(self, **kwargs: float) -> IpmiBmc:
        return IpmiBmc(self.machine.name, self.bmc.address, port=self.bmc.port, user=USER,
                       password=PASSWORD.encode(), **kwargs)

    def ipmitool(self, *args: str, cipher: str | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[str]:
        argv = ["ipmitool", "-I", "lanplus", "-H", self.bmc.address, "-p", str(self.bmc.port),
                "-U", USER, "-f", str(self.bmc.password_file)]
        if cipher:
            argv += ["-C", cipher]
        result = subprocess.run([*argv, *args], capture_output=True, text=True, timeout=30,
                                check=False)
        if check and result.returncode != 0:
            pytest.fail(f"ipmitool {' '.join(args)}: {result.stderr.strip()}")
        return result


class Lab:
    """Creates nodes and remembers them for teardown."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: list[Node] = []
        self.drivers: list[IpmiBmc] = []
        self.password_file = root / "bmc.password"
        fd = os.open(self.password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(PASSWORD + "\n")

    def node(self, name: str, *, network: UserNetwork | None = None,
             memory_mib: int = 128) -> Node:
        workdir = self.root / name
        index = len(self.nodes) + 1
        machine = Machine(MachineSpec(name, workdir, f"52:54:00:00:10:{index:02x}",
                                      network=network, memory_mib=memory_mib,
                                      disk_bytes=64 * 1024 * 1024, accel="tcg"))
        spec = BmcProcessSpec(name=name, port=free_udp_port(),
                              qmp_socket=machine.bmc_qmp_socket,
                              state_file=workdir / "bmc-state.json", user=USER,
                              password_file=self.password_file, pidfile=workdir / "bmc.pid",
                              logfile=workdir / "bmc.log")
        node = Node(machine, spec)
        self.nodes.append(node)  # registered before starting: a half-started node is cleaned up
        machine.start()
        start_bmc(spec)
        return node

    def driver(self, node: Node, **kwargs: float) -> IpmiBmc:
        driver = node.driver(**kwargs)
        self.drivers.append(driver)
        return driver

    def teardown(self) -> None:
        for driver in self.drivers:
            driver.close()
        for node in self.nodes:
            stop_bmc(node.bmc.pidfile)
            node.machine.stop()


@pytest.fixture
def lab() -> Iterator[Lab]:
    # Short path: QMP unix socket paths must stay under 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="mc-bmc-", dir="/tmp"))
    lab = Lab(root)
    try:
        yield lab
    finally:
        try:
            lab.teardown()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def wait_until(predicate, *, timeout: float, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


# (1) an independent client ------------------------------------------------------------------

def test_ipmitool_reads_and_changes_power_and_boot_device(lab: Lab) -> None:
    node = lab.node("ipmi1")
    assert "Chassis Power is off" in node.ipmitool("power", "status").stdout
    assert node.machine.status().run_state == "prelaunch"

    node.ipmitool("power", "on")
    assert "Chassis Power is on" in node.ipmitool("power", "status").stdout
    assert node.machine.status().run_state == "running"

    node.ipmitool("chassis", "bootdev", "pxe", "options=persistent")
    flags = node.ipmitool("chassis", "bootparam", "get", "5").stdout
    assert "Force PXE" in flags
    node.ipmitool("chassis", "bootdev", "disk", "options=persistent")
    assert "Force Boot from default Hard-Drive" in node.ipmitool(
        "chassis", "bootparam", "get", "5").stdout

    node.ipmitool("power", "off")
    assert "Chassis Power is off" in node.ipmitool("power", "status").stdout
    assert node.machine.status().power == "off"
    assert node.machine.pid() is not None  # off is a paused machine, not a dead one


def test_cipher_suite_17_is_refused_and_3_works(lab: Lab) -> None:
    node = lab.node("suite1")
    refused = node.ipmitool("-C", "17", "power", "status", check=False)
    assert refused.returncode != 0
    assert "Chassis Power" in node.ipmitool("power", "status", cipher="3").stdout


# (2) the pyghmi driver from 8 threads against 8 BMCs -----------------------------------------

#: IPMI requests in one power cycle of a node that is on (status, off, status, on, status).
CYCLE_REQUESTS = 5


def test_driver_eight_threads_eight_bmcs_no_deadlock_no_slow_call(
        lab: Lab, record_property: pytest.RecordProperty) -> None:
    nodes = [lab.node(f"par{i}") for i in range(8)]
    drivers = [lab.driver(node) for node in nodes]
    connect_started = time.monotonic()
    connectors = [threading.Thread(target=d.connect, daemon=True) for d in drivers]
    for thread in connectors:
        thread.start()
    for thread in connectors:
        thread.join(timeout=30)
    connect_seconds = time.monotonic() - connect_started

    latencies: list[float] = []
    cycles: list[float] = []
    errors: list[BaseException] = []
    guard = threading.Lock()

    def exercise(driver: IpmiBmc, rounds: int = 12) -> None:
        mine: list[float] = []
        my_cycles: list[float] = []

        def timed(call, *args):  # type: ignore[no-untyped-def]
            started = time.monotonic()
            result = call(*args)
            took = time.monotonic() - started
            # A power cycle is several IPMI requests (status, off, status, on, status: the
            # safe cycle of provision/bmc.py), so it has a bound of its own.
            (my_cycles if call == driver.power_cycle else mine).append(took)
            return result

        try:
            for i in range(rounds):
                device = "network" if i % 2 else "disk"
                assert timed(driver.set_bootdev, device).device == device
                assert timed(driver.get_bootdev).device == device
                timed(driver.power_on)
                assert timed(driver.power_status) == "on"
                timed(driver.power_cycle)
                timed(driver.power_off)
                assert timed(driver.power_status) == "off"
        except (AssertionError, BmcError) as exc:  # reported by the main thread
            with guard:
                errors.append(exc)
        with guard:
            latencies.extend(mine)
            cycles.extend(my_cycles)

    threads = [threading.Thread(target=exercise, args=(d,), daemon=True) for d in drivers]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    elapsed = time.monotonic() - started
    assert not [t for t in threads if t.is_alive()], "a driver thread hung (deadlock?)"
    assert not errors, errors[0]
    worst, median = max(latencies), statistics.median(latencies)
    record_property("cycles_max_s", round(max(cycles), 4))
    record_property("calls", len(latencies))
    record_property("max_latency_s", round(worst, 4))
    record_property("median_latency_s", round(median, 4))
    print(f"\n8 threads x 8 BMCs: {len(latencies)} calls in {elapsed:.2f}s, "
          f"max {worst * 1000:.1f} ms, median {median * 1000:.1f} ms, "
          f"p99 {sorted(latencies)[int(len(latencies) * 0.99)] * 1000:.1f} ms; "
          f"connect (8 workers + logins in parallel) {connect_seconds:.2f}s; "
          f"power cycles: max {max(cycles) * 1000:.1f} ms")
    assert len(latencies) == 8 * 12 * 6 and len(cycles) == 8 * 12
    assert worst < 0.5
    assert max(cycles) < CYCLE_REQUESTS * 0.5


# (3) boot device decides what the firmware boots ---------------------------------------------

def test_network_boot_shows_pxe_and_disk_boot_shows_disk_attempt(
        lab: Lab, record_property: pytest.RecordProperty) -> None:
    node = lab.node("boot1", network=UserNetwork())
    driver = lab.driver(node)
    machine = node.machine

    assert driver.set_bootdev("network", persistent=True).device == "network"
    started = time.monotonic()
    driver.power_on()
    machine.wait_for_serial(r"iPXE", timeout=30)
    ipxe_seconds = time.monotonic() - started
    machine.wait_for_serial(r"Configuring \(net0|DHCP|net0: 10\.0\.2\.15", timeout=60)
    pxe_seconds = time.monotonic() - started
    record_property("ipxe_banner_s", round(ipxe_seconds, 2))
    record_property("pxe_dhcp_s", round(pxe_seconds, 2))
    print(f"\npower on -> iPXE banner {ipxe_seconds:.2f}s, -> DHCP {pxe_seconds:.2f}s")
    before_disk = len(machine.serial_text())
    assert "Booting from Hard Disk" not in machine.serial_text()

    assert driver.set_bootdev("disk", persistent=True).device == "disk"
    driver.power_cycle()
    machine.wait_for_serial(r"Booting from Hard Disk", timeout=30, since=before_disk)
    after = machine.serial_text()[before_disk:]
    first_attempt = after.find("Booting from")
    assert after[first_attempt:].startswith("Booting from Hard Disk"), after[:500]


# (4) restarting the BMC keeps the machine and the BMC's settings ------------------------------

def test_bmc_restart_keeps_machine_running_and_boot_device(lab: Lab) -> None:
    node = lab.node("restart1")
    driver = lab.driver(node)
    driver.set_bootdev("network", persistent=True)
    driver.power_on()
    qemu_pid = node.machine.pid()
    old_bmc = bmc_pid(node.bmc.pidfile)

    stop_bmc(node.bmc.pidfile)
    assert ping(node.bmc.address, node.bmc.port, timeout=0.3) is None
    assert node.machine.pid() == qemu_pid
    assert node.machine.status().run_state == "running"

    start_bmc(node.bmc)
    assert bmc_pid(node.bmc.pidfile) not in (None, old_bmc)
    # The same driver object recovers from its now-stale session, within one call's deadline.
    started = time.monotonic()
    assert driver.power_status(timeout=5.0) == "on"
    recovery = time.monotonic() - started
    print(f"\nfirst driver call after the BMC restart (stale session replaced): {recovery:.2f}s")
    assert recovery < 5.0
    setting = driver.get_bootdev()
    assert (setting.device, setting.persistent) == ("network", True)
    assert "Force PXE" in node.ipmitool("chassis", "bootparam", "get", "5").stdout
    assert node.machine.pid() == qemu_pid


# failure paths of the driver ------------------------------------------------------------------

def test_driver_errors_name_the_host_and_never_the_password(lab: Lab) -> None:
    node = lab.node("err1")
    wrong = IpmiBmc("err1", node.bmc.address, port=node.bmc.port, user=USER,
                    password=b"not-the-password", timeout=5.0)
    lab.drivers.append(wrong)
    with pytest.raises(BmcError) as failed:
        wrong.power_status()
    assert "err1" in str(failed.value) and str(node.bmc.port) in str(failed.value)
    assert "not-the-password" not in str(failed.value)

    driver = lab.driver(node)
    assert driver.power_status() == "off"
    stop_bmc(node.bmc.pidfile)
    started = time.monotonic()
    with pytest.raises(BmcError) as down:
        driver.power_status(timeout=3.0)
    assert time.monotonic() - started < 3.5
    assert "err1" in str(down.value) and PASSWORD not in str(down.value)
