"""One QEMU machine playing a bare-metal server: blank disk, fixed MAC, serial log, QMP.

Power model (the one IPMI needs). A real server's BMC keeps running while the server is off, and
"power on" must boot from firmware. Here the QEMU *process* is the chassis and its run state is
the power: the process is started once, paused before the first instruction (``-S``), and stays
alive across every power transition:

* off  = QEMU run state ``prelaunch`` (never started), ``paused`` (stopped by the BMC) or
  ``shutdown`` (the guest powered itself off; ``-no-shutdown`` keeps the process alive);
* on   = any other run state (``running``, and hung states such as ``internal-error``, which on
  real hardware are still powered);
* power off is ``stop`` followed by ``system_reset`` so the next power on runs the firmware from
  the start instead of resuming the old guest;
* no process at all means "no chassis" (unplugged), which a BMC reports as an error, not as off.

This is unlike virtualbmc (which starts/destroys a libvirt domain for on/off) on purpose: with no
libvirt, a BMC that launched QEMU itself would have to own the whole command line, the network
namespace and the process lifetime, and a BMC restart would orphan or kill the machine. Here QEMU
is daemonized (``-daemonize -pidfile``), so BMC processes come and go while the machine runs.

Boot order: SeaBIOS reads the boot order from CMOS at every POST; ``boot_set`` (a monitor
command) rewrites CMOS, so a new order takes effect at the next power on or reset. We never use
``bootindex`` on devices (a fw_cfg ``bootorder`` file would override CMOS).

Serial: SeaBIOS and iPXE draw on a VGA text console; ``etc/sercon-port`` (fw_cfg) makes SeaBIOS
mirror that console to COM1, which is logged to a file, so "PXE attempt" and "disk boot attempt"
are observable without a display.

CPU priority: a real BMC has its own processor. Here BMC processes share two cores with TCG
guests that can each eat a core, and QEMU's stop/reset must wait for its vCPU threads, so the
machines run at ``nice 10`` by default: the BMCs keep answering in milliseconds while guests boot.

Acceleration: ``/dev/kvm`` may exist and still be unusable (nested PVM KVM here), so KVM is used
only if a real test launch with it reaches the end of POST; the answer is cached per process.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from inventory.errors import LabError
from lab.qmp import MAX_UNIX_PATH, QmpClient
from runtime import process
from runtime.jsondoc import write_json
from runtime.pidfile import live_pid, terminate, wait_gone

QEMU = "qemu-system-x86_64"
QEMU_IMG = "qemu-img"
GIB = 1024**3

PowerState = Literal["on", "off"]
BootDevice = Literal["network", "disk", "default"]
Accel = Literal["auto", "kvm", "tcg"]

# QEMU run states in which the chassis is "off"; see the module docstring.
OFF_RUN_STATES = frozenset({"prelaunch", "paused", "shutdown"})
# Run states from which `cont` is refused until the machine has been reset.
NEEDS_RESET_RUN_STATES = frozenset({"shutdown", "internal-error", "guest-panicked"})
# SeaBIOS boot-order letters: c = first hard disk, n = network (option ROMs / BEV).
BOOT_ORDER = {"network": "n", "disk": "c"}
DEFAULT_BOOT_ORDER = "cn"
# COM1 I/O port, little-endian, as SeaBIOS's romfile_loadint reads it.
SERCON_PORT_BYTES = (0x3F8).to_bytes(2, "little")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


def power_state_of(run_state: str) -> PowerState:
    """Map a QEMU run state (``query-status``) to an IPMI power state."""
    return "off" if run_state in OFF_RUN_STATES else "on"


def boot_order_for(device: str, default: str = DEFAULT_BOOT_ORDER) -> str:
    """SeaBIOS boot order for an IPMI boot device: the device first, the rest as usual."""
    if device == "default":
        return default
    try:
        first = BOOT_ORDER[device]
    except KeyError:
        raise LabError(f"unsupported boot device {device!r}") from None
    return first + "".join(letter for letter in default if letter != first)


@dataclass(frozen=True)
class TapNetwork:
    """A tap device made by the caller (usually inside ``MachineSpec.netns``)."""

    ifname: str


@dataclass(frozen=True)
class UserNetwork:
    """QEMU user-mode networking: a private segment with its own DHCP/TFTP, no root needed."""

    tftp_root: Path | None = None
    bootfile: str | None = None


@dataclass(frozen=True)
class MachineSpec:
    """What to launch. ``workdir`` holds the disk, logs, sockets and pidfile of this machine."""

    name: str
    workdir: Path
    mac: str
    network: TapNetwork | UserNetwork | None = None
    netns: str | None = None
    memory_mib: int = 1024
    cpus: int = 1
    disk_bytes: int = 4 * GIB
    disk_format: Literal["qcow2", "raw"] = "qcow2"
    boot_order: str = DEFAULT_BOOT_ORDER
    accel: Accel = "auto"
    nice: int = 10
    extra_args: tuple[str, ...] = field(default=())

    def validate(self) -> None:
        if not NAME_RE.match(self.name):
            raise LabError(f"machine name {self.name!r} is not a plain name")
        if not MAC_RE.match(self.mac):
            raise LabError(f"machine {self.name}: MAC {self.mac!r} is not lower-case aa:bb:..")
        if self.memory_mib < 32 or self.cpus < 1 or self.disk_bytes < 1024 * 1024:
            raise LabError(f"machine {self.name}: memory, cpus or disk size too small")
        if not re.fullmatch(r"[a-p]+", self.boot_order):
            raise LabError(f"machine {self.name}: bad boot order {self.boot_order!r}")


@dataclass(frozen=True)
class MachineStatus:
    """A snapshot: ``run_state`` is None when the process is gone (no chassis)."""

    name: str
    pid: int | None
    run_state: str | None

    @property
    def power(self) -> PowerState | None:
        return None if self.run_state is None else power_state_of(self.run_state)


#: Printed by iPXE only after its "Press Ctrl-B" wait: the guest's timers work.
KVM_PROBE_MARK = "net0:"
KVM_PROBE_CACHE = Path("/run/metalchain/kvm-probe.json")


@functools.cache
def kvm_usable(timeout: float = 15.0) -> bool:
    """True only if a guest actually runs under KVM: a test launch must get iPXE past its
    timed "Press Ctrl-B" wait and onto its NIC.

    Finishing POST is not enough: on a nested "PVM" KVM, SeaBIOS prints "Booting from ROM"
    and iPXE then stalls forever in its first timed wait (measured: iPXE never sent DHCP,
    every PXE test failed), while under TCG it reaches "net0:" in ~2.5 s. The verdict is
    cached per boot (/run is a tmpfs), so only the first process after a boot pays the probe.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    boot_id = _boot_id()
    cached = _cached_probe(boot_id)
    if cached is not None:
        return cached
    verdict = _probe_kvm(timeout)
    with contextlib.suppress(OSError):
        write_json(KVM_PROBE_CACHE, {"boot_id": boot_id, "kvm_usable": verdict})
    return verdict


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _cached_probe(boot_id: str) -> bool | None:
    try:
        doc = json.loads(KVM_PROBE_CACHE.read_text())
    except (OSError, ValueError):
        return None
    if not boot_id or not isinstance(doc, dict) or doc.get("boot_id") != boot_id or \
            not isinstance(doc.get("kvm_usable"), bool):
        return None
    return doc["kvm_usable"]


def _probe_kvm(timeout: float) -> bool:
    import tempfile  # only needed for the probe

    with tempfile.TemporaryDirectory(prefix="mc-kvm-") as tmp:
        log = Path(tmp, "serial.log")
        sercon = Path(tmp, "sercon-port")
        sercon.write_bytes(SERCON_PORT_BYTES)
        # A NIC on QEMU's user-mode network with restrict=on: iPXE has a device to boot
        # from, and nothing the guest sends leaves the QEMU process.
        argv = [QEMU, "-accel", "kvm", "-cpu", "host", "-m", "128", "-nodefaults",
                "-display", "none", "-vga", "none", "-chardev", f"file,id=ser0,path={log}",
                "-serial", "chardev:ser0", "-fw_cfg", f"name=etc/sercon-port,file={sercon}",
                "-netdev", "user,id=n0,restrict=on", "-device", "virtio-net-pci,netdev=n0",
                "-boot", "order=n,menu=off", "-no-reboot"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and proc.poll() is None:
                text = log.read_text(errors="replace") if log.exists() else ""
                if KVM_PROBE_MARK in text:
                    return True
                time.sleep(0.1)
            return False
        finally:
            proc.kill()
            proc.wait(timeout=10)


def accel_args(accel: Accel) -> list[str]:
    """QEMU arguments for the accelerator; "auto" means KVM if the probe succeeded."""
    if accel == "kvm" or (accel == "auto" and kvm_usable()):
        return ["-accel", "kvm", "-cpu", "host"]
    return ["-accel", "tcg,thread=multi"]


class Machine:
    """Start, stop and inspect one machine. All paths live in ``spec.workdir``.

    Example::

        machine = Machine(MachineSpec("node1", Path("/tmp/lab/node1"), "52:54:00:00:00:01",
                                      network=UserNetwork()))
        machine.start()            # process up, power off
        qmp_execute(machine.qmp_socket, "cont")   # what a BMC does for "power on"
        machine.stop()
    """

    def __init__(self, spec: MachineSpec) -> None:
        spec.validate()
        self.spec = spec
        workdir = spec.workdir
        self.disk = workdir / f"disk.{spec.disk_format}"
        self.serial_log = workdir / "serial.log"
        self.qemu_log = workdir / "qemu.log"
        self.pidfile = workdir / "qemu.pid"
        # Two monitors: one for the BMC, one for the lab, so neither waits for the other.
        self.qmp_socket = workdir / "qmp.sock"
        self.bmc_qmp_socket = workdir / "bmc-qmp.sock"
        self._sercon = workdir / "sercon-port"

    @property
    def name(self) -> str:
        return self.spec.name

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self, *, timeout: float = 60.0) -> None:
        """Launch QEMU daemonized and powered off; a no-op if this machine's QEMU is running."""
        if self.pid() is not None:
            return
        self.spec.workdir.mkdir(parents=True, exist_ok=True)
        for sock in (self.qmp_socket, self.bmc_qmp_socket):
            if len(str(sock).encode()) > MAX_UNIX_PATH:
                raise LabError(f"machine {self.name}: socket path too long: {sock}")
            sock.unlink(missing_ok=True)
        self.pidfile.unlink(missing_ok=True)
        self._sercon.write_bytes(SERCON_PORT_BYTES)
        self.ensure_disk()
        argv = self.command_line()
        try:
            result = process.run(argv, timeout=timeout, check=False, text=False, error=LabError,
                                 what=f"machine {self.name}: QEMU daemonizing")
        except LabError:
            self._kill_from_pidfile(timeout=5.0)
            raise
        stderr = result.stderr.decode(errors="replace")
        # QEMU's own warnings (e.g. about the fw_cfg name) are kept for whoever debugs the lab.
        self.qemu_log.write_text(stderr, encoding="utf-8")
        if result.returncode != 0:
            raise LabError(f"machine {self.name}: QEMU failed (exit {result.returncode}): "
                           f"{stderr.strip()[-500:]}")
        if self.pid() is None:
            raise LabError(f"machine {self.name}: QEMU started but no live pid in {self.pidfile}")

    def command_line(self) -> list[str]:
        """The full argv, ``ip netns exec`` included when a namespace is set."""
        spec = self.spec
        argv: list[str] = []
        if spec.netns:
            argv += ["ip", "netns", "exec", spec.netns]
        if spec.nice:
            argv += ["nice", "-n", str(spec.nice)]
        argv += [QEMU, "-name", spec.name, "-machine", "pc", *accel_args(spec.accel),
                 "-m", str(spec.memory_mib), "-smp", str(spec.cpus),
                 "-nodefaults", "-display", "none", "-vga", "none",
                 "-drive", f"file={self.disk},if=virtio,format={spec.disk_format}",
                 "-chardev", f"file,id=serial0,path={self.serial_log}",
                 "-serial", "chardev:serial0",
                 "-fw_cfg", f"name=etc/sercon-port,file={self._sercon}",
                 "-boot", f"order={spec.boot_order},menu=off",
                 "-qmp", f"unix:{self.qmp_socket},server=on,wait=off",
                 "-qmp", f"unix:{self.bmc_qmp_socket},server=on,wait=off",
                 "-S", "-no-shutdown", "-daemonize", "-pidfile", str(self.pidfile)]
        argv += self._network_args()
        argv += list(spec.extra_args)
        return argv

    def _network_args(self) -> list[str]:
        network = self.spec.network
        if network is None:
            return []
        if isinstance(network, TapNetwork):
            netdev = f"tap,id=net0,ifname={network.ifname},script=no,downscript=no"
        else:
            netdev = "user,id=net0"
            if network.tftp_root is not None:
                netdev += f",tftp={network.tftp_root}"
            if network.bootfile is not None:
                netdev += f",bootfile={network.bootfile}"
        return ["-netdev", netdev, "-device", f"virtio-net-pci,netdev=net0,mac={self.spec.mac}"]

    def ensure_disk(self, *, timeout: float = 30.0) -> None:
        """Create the blank sparse disk unless it exists (a reinstall keeps the same disk)."""
        if self.disk.exists():
            return
        argv = [QEMU_IMG, "create", "-q", "-f", self.spec.disk_format, str(self.disk),
                str(self.spec.disk_bytes)]
        process.run(argv, timeout=timeout, error=LabError,
                    what=f"machine {self.name}: qemu-img create")

    def stop(self, *, timeout: float = 10.0) -> None:
        """Kill QEMU (QMP ``quit``, then SIGTERM, then SIGKILL) and remove sockets and pidfile."""
        pid = self.pid()
        if pid is not None:
            try:
                with QmpClient(self.qmp_socket, timeout=min(2.0, timeout)) as qmp:
                    qmp.execute("quit")
            except LabError:
                pass  # a wedged monitor is what the signals below are for
            if not wait_gone(pid, timeout / 2):
                self._kill_from_pidfile(timeout=timeout / 2)
        for path in (self.qmp_socket, self.bmc_qmp_socket, self.pidfile):
            path.unlink(missing_ok=True)

    def _kill_from_pidfile(self, *, timeout: float) -> None:
        pid = self.pid()
        if pid is None:
            return
        if not terminate(pid, term_timeout=timeout / 2, kill_timeout=timeout / 2):
            raise LabError(f"machine {self.name}: QEMU pid {pid} survived SIGKILL")

    # -- inspection --------------------------------------------------------------------------

    def pid(self) -> int | None:
        """The live QEMU pid of this machine, or None (stale pidfiles are ignored)."""
        return live_pid(self.pidfile)

    def status(self, *, timeout: float = 3.0) -> MachineStatus:
        pid = self.pid()
        if pid is None:
            return MachineStatus(self.name, None, None)
        with QmpClient(self.qmp_socket, timeout=timeout) as qmp:
            run_state = str(qmp.execute("query-status")["status"])
        return MachineStatus(self.name, pid, run_state)

    def serial_text(self) -> str:
        try:
            return self.serial_log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_serial(self, pattern: str, *, timeout: float, since: int = 0) -> str:
        """Wait until the serial log (from byte offset ``since``) matches the regex; return it."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            text = self.serial_text()[since:]
            match = regex.search(text)
            if match:
                return match.group(0)
            if time.monotonic() >= deadline:
                raise LabError(f"machine {self.name}: serial log did not show /{pattern}/ "
                               f"within {timeout}s; tail: {text[-300:]!r}")
            time.sleep(0.2)
