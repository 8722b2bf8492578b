"""The SSH fleet: many lightweight hosts, each a systemd booted in its own namespaces.

A host is the golden image under an overlay (lower = the cached rootfs, upper/work under the
lab directory), a tmpfs ``/dev`` with a handful of harmless nodes, and::

    nsenter --net=/run/netns/<lab-netns>-<host>
      unshare --pid --fork --kill-child --mount --uts --ipc --cgroup --mount-proc=ROOT/proc
        chroot ROOT /lib/systemd/systemd --system

started in its own cgroup (``metalchain/<lab-netns>/<host>`` in every hierarchy) so that its
systemd sees a cgroup tree of its own instead of managing the machine's. Its network is a veth
pair: ``lab0`` in the host's namespace with a static address set from outside (networkd's
default ``en*``/``eth*`` match ignores that name), the peer ``vh-<host>`` on the lab bridge.

Before boot the controller writes into the upper dir: the hostname, a machine-id, a fresh
ed25519 host key (generated here, never shared), ``/root/.ssh/authorized_keys`` and masks for
units that would reach out of the container (udev, sysctl, module loading, kernel mounts).
The public host key is returned and recorded so the caller pins it: the first SSH connection is
verified, with no trust-on-first-use.

Each host's runtime facts (pids with their start times, address, paths, cgroups) are written
atomically to ``<lab_dir>/fleet/<host>/host.json`` so a separate ``lab down`` process can tear
everything down with ``stop_all(lab_dir)``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inventory.errors import LabError
from lab.network import LabNetwork, netns_exists, run_command, short_ifname
from provision.sshcheck import NO_ANSWER, ProbeResult, probe_host_key
from runtime.jsondoc import write_json
from runtime.pidfile import process_alive, process_stat, same_process

HOST_IFNAME = "lab0"
SSH_PORT = 22
INOTIFY_LIMITS = {"fs/inotify/max_user_instances": 8192,
                  "fs/inotify/max_user_watches": 1048576}
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_PARENT = "metalchain"

# Units that would act on the machine rather than on the container (udev triggering real
# devices, sysctl writing global kernel.* keys, module loading, kernel filesystems), or that
# wait for something a lab host never has (a tty, first-boot prompts, "online" networking).
MASKED_UNITS: tuple[str, ...] = (
    "systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service", "systemd-udev-settle.service",
    "systemd-sysctl.service", "systemd-modules-load.service", "kmod-static-nodes.service",
    "systemd-binfmt.service", "proc-sys-fs-binfmt_misc.automount",
    "sys-kernel-config.mount", "sys-kernel-debug.mount", "sys-kernel-tracing.mount",
    "sys-fs-fuse-connections.mount", "dev-hugepages.mount", "systemd-journald-audit.socket",
    "systemd-firstboot.service", "systemd-networkd-wait-online.service",
    "systemd-hwdb-update.service", "systemd-pcrphase.service",
    "systemd-pcrphase-sysinit.service", "getty@.service", "serial-getty@.service",
    "console-getty.service", "apt-daily.timer", "apt-daily-upgrade.timer",
    "e2scrub_all.timer", "fstrim.timer",
)

# Character devices a container may have: no disks, no kmsg, no real console.
DEV_NODES: tuple[tuple[str, int, int], ...] = (
    ("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9),
    ("tty", 5, 0),
)

_HOSTNAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_PUBKEY_RE = re.compile(r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-[a-z0-9-]+|sk-[a-z0-9@.-]+) "
                        r"[A-Za-z0-9+/=]+( [^\n]*)?$")

# Runs as the launcher: joins the host's cgroups, then becomes nsenter. A fixed program text
# with every value passed as an argument, so no shell and no quoting.
_LAUNCHER = (
    "import os, sys\n"
    "n = int(sys.argv[1])\n"
    "for d in sys.argv[2:2 + n]:\n"
    "    with open(os.path.join(d, 'cgroup.procs'), 'w') as f:\n"
    "        f.write(str(os.getpid()))\n"
    "os.execvp(sys.argv[2 + n], sys.argv[2 + n:])\n"
)


@dataclass(frozen=True)
class HostSpec:
    """What the caller decides about a host: its name and its address in the lab /24."""

    name: str
    ipv4: ipaddress.IPv4Interface


@dataclass
class HostRecord:
    """Everything needed to find, check and tear down one running host; persisted as JSON."""

    name: str
    ipv4: str
    host_key: str  # "ssh-ed25519 AAAA... root@name": pin this
    lab_netns: str
    netns: str
    lab_ifname: str
    dir: str
    lower: str
    upper: str
    work: str
    root: str
    cgroups: list[str] = field(default_factory=list)
    launcher_pid: int = 0
    launcher_start: int = 0
    init_pid: int = 0
    init_start: int = 0
    started_at: float = 0.0

    @property
    def address(self) -> str:
        return str(ipaddress.IPv4Interface(self.ipv4).ip)

    def known_hosts_line(self) -> str:
        key_type, key_b64 = self.host_key.split()[:2]
        return f"{self.address} {key_type} {key_b64}"


@dataclass
class StartResult:
    """Per-host outcome of ``Fleet.start``: the running hosts and why the others failed."""

    hosts: dict[str, HostRecord] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def check(self) -> StartResult:
        if self.errors:
            detail = "; ".join(f"{n}: {e}" for n, e in sorted(self.errors.items()))
            raise LabError(f"{len(self.errors)} of {len(self.errors) + len(self.hosts)} "
                           f"fleet hosts failed: {detail}")
        return self


@dataclass
class HostStatus:
    name: str
    address: str
    init_alive: bool
    ssh_ok: bool | None
    detail: str = ""


# Pure helpers --------------------------------------------------------------------------


def plan_hosts(count: int, network: ipaddress.IPv4Network, *, prefix: str = "node",
               first: int = 100) -> list[HostSpec]:
    """Names ``node01``.. and consecutive addresses from host number ``first`` of ``network``.

    >>> [str(h.ipv4) for h in plan_hosts(2, ipaddress.IPv4Network("10.77.0.0/24"))]
    ['10.77.0.100/24', '10.77.0.101/24']
    """
    if count < 0:
        raise LabError("host count must not be negative")
    if first < 3:
        raise LabError("host addresses start at .3: .1 is the controller, .2 the bridge")
    if first + count > network.num_addresses - 1:
        raise LabError(f"{count} hosts from .{first} do not fit in {network}")
    width = max(2, len(str(count)))
    return [HostSpec(name=check_hostname(f"{prefix}{i + 1:0{width}d}"),
                     ipv4=ipaddress.IPv4Interface(f"{network[first + i]}/{network.prefixlen}"))
            for i in range(count)]


def check_hostname(name: str) -> str:
    if not _HOSTNAME_RE.match(name):
        raise LabError(f"bad host name {name!r}: an RFC 1123 label in lower case")
    return name


def check_pubkey(line: str) -> str:
    line = line.strip()
    if not _PUBKEY_RE.match(line):
        raise LabError("authorized key is not a single OpenSSH public key line")
    return line


def known_hosts_lines(records: Iterable[HostRecord]) -> list[str]:
    return [r.known_hosts_line() for r in records]


def overlay_options(lower: Path, upper: Path, work: Path) -> str:
    """The overlay mount options; refuses paths the option syntax cannot carry."""
    for path in (lower, upper, work):
        if any(c in str(path) for c in ",:\n\\ "):
            raise LabError(f"path {path} cannot be used in overlay options")
    return f"lowerdir={lower},upperdir={upper},workdir={work}"


# Process and cgroup probes ---------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = process_stat(int(entry))
            if stat and stat.ppid == pid:
                found.append(int(entry))
    return found


def cgroup_hierarchies() -> list[Path]:
    """Mount points of the cgroup hierarchies a host joins (cpuset needs setup: skipped)."""
    points = []
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        for line in handle:
            left, _, right = line.partition(" - ")
            fstype, _source, options = [*right.split(), "", "", ""][:3]
            mount_point = Path(left.split()[4])
            if fstype == "cgroup2" or (fstype == "cgroup" and "cpuset" not in options.split(",")):
                points.append(mount_point)
    return points


def cgroup_pids(directory: Path) -> list[int]:
    pids: list[int] = []
    if not directory.is_dir():
        return pids
    for dirpath, _dirs, files in os.walk(directory):
        if "cgroup.procs" in files:
            with contextlib.suppress(OSError):
                text = Path(dirpath, "cgroup.procs").read_text(encoding="ascii")
                pids.extend(int(p) for p in text.split())
    return pids


def _remove_cgroup(directory: Path) -> None:
    if not directory.is_dir():
        return
    for dirpath, _dirs, _files in os.walk(directory, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(dirpath)
    for parent in (directory.parent, directory.parent.parent):
        with contextlib.suppress(OSError):
            parent.rmdir()  # the lab's and metalchain's dirs, once empty


def cgroup_memory_bytes(record: HostRecord) -> int | None:
    """Memory charged to the host's cgroup (v2 memory.current or v1 usage_in_bytes)."""
    for directory in map(Path, record.cgroups):
        for name in ("memory.current", "memory.usage_in_bytes"):
            with contextlib.suppress(OSError, ValueError):
                return int((directory / name).read_text(encoding="ascii"))
    return None


def raise_inotify_limits() -> None:
    """Past ~20 hosts systemd fails with "Failed to connect to bus" at the default 128
    inotify instances (LAB-NOTES). Raise, never lower."""
    for key, wanted in INOTIFY_LIMITS.items():
        path = Path("/proc/sys", key)
        try:
            if int(path.read_text(encoding="ascii")) < wanted:
                path.write_text(str(wanted), encoding="ascii")
        except (OSError, ValueError) as exc:
            raise LabError(f"cannot raise {key} to {wanted}: {exc}") from exc


# SSH -------------------------------------------------------------------------------------


def probe_ssh(address: str, host_key: str, timeout: float = 5.0,
              port: int = SSH_PORT) -> ProbeResult:
    """The host's SSH key exchange checked against its pinned key: the project's one probe
    (``provision.sshcheck``), so the lab and provisioning agree on what a match is."""
    return probe_host_key(address, host_key, port=port, timeout=timeout)


def wait_for_ssh(record: HostRecord, deadline: float) -> None:
    """Poll until the host answers SSH with its pinned key, its init dies, or the deadline."""
    last = "no answer"
    while True:
        if not same_process(record.init_pid, record.init_start):
            raise LabError(f"{record.name}: systemd exited during boot; "
                           f"console: {_tail(Path(record.dir, 'console.log'))}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LabError(f"{record.name} ({record.address}) did not answer SSH before the "
                           f"deadline; last: {last}")
        result = probe_ssh(record.address, record.host_key,
                           timeout=min(5.0, max(remaining, 0.5)))
        if result.ok:
            return
        if result.verdict != NO_ANSWER:
            raise LabError(f"{record.name}: {result.reason}")
        last = result.reason
        time.sleep(min(0.5, max(deadline - time.monotonic(), 0)))


# The fleet -------------------------------------------------------------------------------


class Fleet:
    """Lightweight SSH hosts of one lab.

    ``lab_dir``: a directory the lab owns (state lives under ``lab_dir/fleet``).
    ``network``: the lab's ``LabNetwork`` (must be up). ``image_rootfs``: the golden rootfs,
    e.g. ``provision.image.ensure_image().rootfs``. ``authorized_keys``: the controller's
    public key line(s); the private key never reaches this module.
    """

    def __init__(self, lab_dir: Path, network: LabNetwork, image_rootfs: Path,
                 authorized_keys: Sequence[str]) -> None:
        self.lab_dir = Path(lab_dir).resolve()
        self.network = network
        self.image_rootfs = Path(image_rootfs).resolve()
        self.authorized_keys = [check_pubkey(k) for k in authorized_keys]
        if not self.authorized_keys:
            raise LabError("the fleet needs at least one authorized key")
        self._launchers: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def state_dir(self) -> Path:
        return self.lab_dir / "fleet"

    def start(self, hosts: Sequence[HostSpec], *, timeout: float = 300.0,
              workers: int = 8) -> StartResult:
        """Start ``hosts`` concurrently and wait until each answers SSH with its pinned key.

        A host already running is kept. Returns per-host outcomes; ``.check()`` raises if
        any failed. Failed hosts are left in place for inspection: ``stop()`` removes them.
        """
        started = time.monotonic()
        deadline = started + timeout
        for spec in hosts:
            check_hostname(spec.name)
            if spec.ipv4.network != self.network.ipv4 or spec.ipv4.ip in (
                    self.network.controller_ipv4.ip, self.network.bridge_ipv4.ip):
                raise LabError(f"{spec.name}: {spec.ipv4} is not a free host address of "
                               f"{self.network.ipv4}")
        if not self.network.status().up:
            raise LabError(f"lab network {self.network.netns} is not up")
        if not (self.image_rootfs / "lib/systemd/systemd").exists():
            raise LabError(f"{self.image_rootfs} is not a golden image rootfs")
        raise_inotify_limits()
        result = StartResult()
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(hosts)))) as pool:
            launched = dict(zip(hosts, pool.map(self._launch_safely, hosts), strict=True))
        for spec, outcome in launched.items():
            if isinstance(outcome, str):
                result.errors[spec.name] = outcome
        waiting = [o for o in launched.values() if isinstance(o, HostRecord)]
        if waiting:
            with ThreadPoolExecutor(max_workers=len(waiting)) as pool:
                answers = pool.map(lambda r: self._wait_safely(r, deadline), waiting)
                for record, error in zip(waiting, answers, strict=True):
                    if error:
                        result.errors[record.name] = error
                    else:
                        result.hosts[record.name] = record
        result.seconds = time.monotonic() - started
        return result

    def stop(self, names: Sequence[str] | None = None, *, timeout: float = 30.0) -> None:
        """Stop and remove hosts (all by default). Idempotent; raises if anything remains."""
        records = {r.name: r for r in load_records(self.lab_dir)}
        targets = list(records) if names is None else list(names)
        errors = []
        for name in targets:
            record = records.get(name)
            try:
                if record:
                    stop_host(record, timeout=timeout)
                proc = self._launchers.pop(name, None)
                if proc is not None:
                    _reap(proc, timeout)
            except LabError as exc:
                errors.append(str(exc))
        if errors:
            raise LabError("; ".join(errors))

    def status(self, *, check_ssh: bool = True, timeout: float = 3.0) -> list[HostStatus]:
        return fleet_status(self.lab_dir, check_ssh=check_ssh, timeout=timeout)

    def records(self) -> list[HostRecord]:
        return load_records(self.lab_dir)

    # One host -------------------------------------------------------------------------

    def _launch_safely(self, spec: HostSpec) -> HostRecord | str:
        try:
            return self._launch(spec)
        except LabError as exc:
            return str(exc)
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"

    def _wait_safely(self, record: HostRecord, deadline: float) -> str | None:
        try:
            wait_for_ssh(record, deadline)
        except LabError as exc:
            return str(exc)
        return None

    def _launch(self, spec: HostSpec) -> HostRecord:
        host_dir = self.state_dir / spec.name
        existing = _load_record(host_dir / "host.json")
        if existing and same_process(existing.init_pid, existing.init_start):
            return existing
        if existing:
            stop_host(existing)
        record = HostRecord(
            name=spec.name, ipv4=str(spec.ipv4), host_key="",
            lab_netns=self.network.netns, netns=f"{self.network.netns}-{spec.name}",
            lab_ifname=short_ifname("vh-", spec.name), dir=str(host_dir),
            lower=str(self.image_rootfs), upper=str(host_dir / "upper"),
            work=str(host_dir / "work"), root=str(host_dir / "root"),
            cgroups=[str(h / CGROUP_PARENT / self.network.netns / spec.name)
                     for h in cgroup_hierarchies()],
        )
        _prepare_dirs(record)
        record.host_key = _write_upper(record, spec.name, self.authorized_keys)
        _write_record(record)  # from here on, stop_host can undo whatever exists
        _mount_root(record)
        _plumb_network(record, self.network.bridge)
        self._spawn(record)
        _write_record(record)
        return record

    def _spawn(self, record: HostRecord) -> None:
        self._launchers[record.name] = spawn_init(record)


def spawn_init(record: HostRecord) -> subprocess.Popen[bytes]:
    """Start the host's systemd (mounts and network already in place); fills in the pids
    of ``record`` and returns the launcher, which the caller reaps."""
    for directory in record.cgroups:
        Path(directory).mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-c", _LAUNCHER, str(len(record.cgroups)), *record.cgroups,
            "nsenter", f"--net=/run/netns/{record.netns}", "--",
            "unshare", "--pid", "--fork", "--kill-child", "--mount", "--uts", "--ipc",
            "--cgroup", "--propagation", "private", f"--mount-proc={record.root}/proc",
            "--", "chroot", record.root, "/lib/systemd/systemd", "--system",
            "--show-status=no"]
    # container= tells systemd it is not on metal (skips units meant for hardware).
    env = {"container": "metalchain-lab", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
           "LANG": "C.UTF-8"}
    with open(Path(record.dir, "console.log"), "ab") as console:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console,
                                stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    record.launcher_pid = proc.pid
    deadline = time.monotonic() + 15.0
    while time.monotonic() < deadline:
        stat = process_stat(proc.pid)
        if stat:
            record.launcher_start = stat.start
        kids = _children(proc.pid) if proc.poll() is None else []
        if kids and _is_init(kids[0], record.root):
            record.init_pid = kids[0]
            init = process_stat(kids[0])
            record.init_start = init.start if init else 0
            record.started_at = time.time()
            return proc
        if proc.poll() is not None:
            raise LabError(f"{record.name}: launcher exited with {proc.returncode}; "
                           f"console: {_tail(Path(record.dir, 'console.log'))}")
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=5)
    raise LabError(f"{record.name}: systemd did not start within 15 s")


def reboot_host(record: HostRecord, bridge: str, *, timeout: float = 120.0
                ) -> tuple[HostRecord, subprocess.Popen[bytes]]:
    """Power-cycle one host the way a machine comes back after a crash: with its disk (the
    overlay's upper dir is kept), so with its host key and whatever a run wrote there.
    Waits until SSH answers with the pinned key; returns the new record and the launcher
    (the caller reaps it, e.g. ``proc.wait()`` after ``stop_host``)."""
    deadline = time.monotonic() + timeout
    stop_host(record, timeout=min(30.0, timeout))
    _mount_root(record)
    _plumb_network(record, bridge)
    proc = spawn_init(record)
    _write_record(record)
    wait_for_ssh(record, deadline)
    return record, proc


def _is_init(pid: int, root: str) -> bool:
    """The forked child has become systemd inside the chroot (not unshare/chroot any more)."""
    try:
        return os.readlink(f"/proc/{pid}/exe").endswith("/systemd") and \
            os.readlink(f"/proc/{pid}/root") == root
    except OSError:
        return False


def _reap(proc: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"launcher {proc.pid} did not exit within {timeout:.0f} s") from exc


# Preparing a host ------------------------------------------------------------------------


def _prepare_dirs(record: HostRecord) -> None:
    for path in (record.upper, record.work):
        # Fresh state each start: a host is disposable, and a stale upper could hide image
        # changes. Only after stop_host, so nothing is mounted over these.
        _refuse_mounted(Path(path))
        shutil.rmtree(path, ignore_errors=True)
    for path in (record.dir, record.upper, record.work, record.root):
        Path(path).mkdir(parents=True, exist_ok=True)
    overlay_options(Path(record.lower), Path(record.upper), Path(record.work))


def _upper_dir(record: HostRecord, rel: str) -> Path:
    """Create ``rel`` in the upper dir with the lower dir's mode and owner.

    An upper directory's attributes win over the lower one's: /root created 0755 here would
    make sshd's StrictModes reject authorized_keys.
    """
    upper, lower = Path(record.upper), Path(record.lower)
    current = Path()
    for part in Path(rel).parts:
        current = current / part
        target = upper / current
        if not target.exists():
            target.mkdir()
            source = lower / current
            if source.is_dir():
                info = source.stat()
                os.chown(target, info.st_uid, info.st_gid)
                os.chmod(target, info.st_mode & 0o7777)
    return upper / rel


def _write_file(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(path, mode)


def _write_upper(record: HostRecord, hostname: str, authorized_keys: Sequence[str]) -> str:
    """Identity and access written before boot; returns the public host key line."""
    etc = _upper_dir(record, "etc")
    _write_file(etc / "hostname", hostname + "\n", 0o644)
    _write_file(etc / "hosts", f"127.0.0.1\tlocalhost\n127.0.1.1\t{hostname}\n"
                f"::1\tlocalhost ip6-localhost ip6-loopback\n", 0o644)
    _write_file(etc / "machine-id", uuid.uuid4().hex + "\n", 0o444)
    ssh = _upper_dir(record, "etc/ssh")
    with tempfile.TemporaryDirectory(dir=record.dir) as tmp:
        key = Path(tmp, "ssh_host_ed25519_key")
        run_command(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{hostname}",
                     "-f", str(key)], timeout=30)
        shutil.copyfile(key, ssh / key.name)
        shutil.copyfile(key.with_suffix(".pub"), ssh / "ssh_host_ed25519_key.pub")
    os.chmod(ssh / "ssh_host_ed25519_key", 0o600)
    os.chmod(ssh / "ssh_host_ed25519_key.pub", 0o644)
    dot_ssh = _upper_dir(record, "root/.ssh")
    os.chmod(dot_ssh, 0o700)
    _write_file(dot_ssh / "authorized_keys", "\n".join(authorized_keys) + "\n", 0o600)
    units = _upper_dir(record, "etc/systemd/system")
    for unit in MASKED_UNITS:
        link = units / unit
        if not link.is_symlink():
            link.symlink_to("/dev/null")
    return (ssh / "ssh_host_ed25519_key.pub").read_text(encoding="utf-8").strip()


def _mount_root(record: HostRecord) -> None:
    root = Path(record.root)
    if not _is_mounted(root):
        run_command(["mount", "-t", "overlay", "overlay", "-o",
                     overlay_options(Path(record.lower), Path(record.upper),
                                     Path(record.work)), str(root)])
    dev = root / "dev"
    if not _is_mounted(dev):
        # A tmpfs /dev keeps systemd from mounting devtmpfs: no real disks in a lab host.
        run_command(["mount", "-t", "tmpfs", "-o", "mode=755,size=1m,nosuid", "tmpfs",
                     str(dev)])
        for name, major, minor in DEV_NODES:
            os.mknod(dev / name, 0o666 | 0o020000, os.makedev(major, minor))
            # mknod applies the umask; unprivileged users (apt's _apt sandbox) need 0666.
            os.chmod(dev / name, 0o666)  # noqa: S103 - device nodes like /dev/null
        for name in ("pts", "shm"):
            (dev / name).mkdir()
        # systemd mounts its own tmpfs on /dev/shm (mode 1777) and a devpts on /dev/pts.
        for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
                             ("ptmx", "pts/ptmx")):
            (dev / name).symlink_to(target)


def _plumb_network(record: HostRecord, bridge: str) -> None:
    if not netns_exists(record.netns):
        run_command(["ip", "netns", "add", record.netns])
    lab = ["ip", "-n", record.lab_netns]
    host = ["ip", "-n", record.netns]
    have = run_command([*host, "link", "show", HOST_IFNAME], check=False).returncode == 0
    if not have:
        run_command([*lab, "link", "del", record.lab_ifname], check=False)
        run_command([*lab, "link", "add", record.lab_ifname, "type", "veth", "peer", "name",
                     HOST_IFNAME, "netns", record.netns])
    run_command([*lab, "link", "set", record.lab_ifname, "master", bridge, "up"])
    # No router advertisement may give a lab host a default route.
    run_command(["ip", "netns", "exec", record.netns, "sysctl", "-q", "-w",
                 f"net.ipv6.conf.{HOST_IFNAME}.accept_ra=0"])
    run_command([*host, "addr", "replace", record.ipv4, "dev", HOST_IFNAME])
    run_command([*host, "link", "set", "lo", "up"])
    run_command([*host, "link", "set", HOST_IFNAME, "up"])


# Records ---------------------------------------------------------------------------------


def _write_record(record: HostRecord) -> None:
    """Atomic: a reader (``lab down``) sees the old record or the new one, never half."""
    write_json(Path(record.dir, "host.json"), asdict(record))


def _load_record(path: Path) -> HostRecord | None:
    try:
        return HostRecord(**json.loads(path.read_text(encoding="utf-8")))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError) as exc:
        raise LabError(f"unreadable fleet record {path}: {exc}") from exc


def load_records(lab_dir: Path) -> list[HostRecord]:
    state = Path(lab_dir) / "fleet"
    if not state.is_dir():
        return []
    records = [_load_record(p) for p in sorted(state.glob("*/host.json"))]
    return [r for r in records if r is not None]


# Teardown and status ---------------------------------------------------------------------


def stop_host(record: HostRecord, *, timeout: float = 30.0) -> None:
    """Kill the host's init (its whole PID namespace dies with it), then unmount and remove
    its mounts, network namespace, veth and cgroups. Idempotent; verifies the result."""
    deadline = time.monotonic() + timeout
    # Init first, so its parent (unshare) reaps it and exits by itself; killing both at
    # once would orphan init's zombie to PID 1 of the machine.
    if same_process(record.init_pid, record.init_start):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.init_pid, signal.SIGKILL)
        reaped_by = time.monotonic() + min(5.0, timeout)
        while Path(f"/proc/{record.init_pid}").exists() and time.monotonic() < reaped_by:
            time.sleep(0.02)
    if same_process(record.launcher_pid, record.launcher_start):
        launcher_done = time.monotonic() + min(2.0, timeout)
        while same_process(record.launcher_pid, record.launcher_start) and \
                time.monotonic() < launcher_done:
            time.sleep(0.02)
        if same_process(record.launcher_pid, record.launcher_start):
            with contextlib.suppress(ProcessLookupError):
                os.kill(record.launcher_pid, signal.SIGKILL)
    cgroups = [Path(c) for c in record.cgroups]
    while True:
        # Zombies (an unreaped launcher) hold nothing and cannot be killed: ignore them.
        left = [p for c in cgroups for p in cgroup_pids(c) if process_alive(p)]
        alive = same_process(record.init_pid, record.init_start)
        if not left and not alive:
            break
        if time.monotonic() > deadline:
            raise LabError(f"{record.name}: processes {sorted(set(left))} survived SIGKILL "
                           f"for {timeout:.0f} s")
        for pid in set(left):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    root = Path(record.root)
    for mount_point in (root / "dev", root):
        if _is_mounted(mount_point):
            run_command(["umount", str(mount_point)], timeout=30)
    if netns_exists(record.lab_netns):
        run_command(["ip", "-n", record.lab_netns, "link", "del", record.lab_ifname],
                    check=False)
    if netns_exists(record.netns):
        run_command(["ip", "netns", "del", record.netns])
    for cgroup in cgroups:
        _remove_cgroup(cgroup)
    if _is_mounted(root) or _is_mounted(root / "dev") or netns_exists(record.netns):
        raise LabError(f"{record.name}: mounts or network namespace remain after teardown")


def stop_all(lab_dir: Path, *, timeout: float = 30.0) -> None:
    """Tear down every host recorded under ``lab_dir`` (what ``lab down`` calls)."""
    errors = []
    for record in load_records(lab_dir):
        try:
            stop_host(record, timeout=timeout)
        except LabError as exc:
            errors.append(str(exc))
    if errors:
        raise LabError("; ".join(errors))


def fleet_status(lab_dir: Path, *, check_ssh: bool = True,
                 timeout: float = 3.0) -> list[HostStatus]:
    records = load_records(lab_dir)

    def one(record: HostRecord) -> HostStatus:
        alive = same_process(record.init_pid, record.init_start)
        status = HostStatus(record.name, record.address, alive, None)
        if check_ssh and alive:
            result = probe_ssh(record.address, record.host_key, timeout=timeout)
            status.ssh_ok = result.ok
            status.detail = result.reason
        return status

    if not records:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(records))) as pool:
        return list(pool.map(one, records))


def exec_in_host(record: HostRecord, argv: Sequence[str], *,
                 timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """Run a command inside a host's namespaces (``nsenter -t PID -a``), no SSH involved."""
    if not same_process(record.init_pid, record.init_start):
        raise LabError(f"{record.name} is not running")
    return run_command(["nsenter", "-t", str(record.init_pid), "-a", "-r", "-w", "--", *argv],
                       timeout=timeout, check=False)


# Small things ----------------------------------------------------------------------------


def _is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mounts", encoding="utf-8") as handle:
        return any(line.split()[1] == target for line in handle if line.strip())


def _refuse_mounted(path: Path) -> None:
    prefix = str(path).rstrip("/") + "/"
    with open("/proc/self/mounts", encoding="utf-8") as handle:
        for line in handle:
            point = line.split()[1]
            if point == str(path) or point.startswith(prefix):
                raise LabError(f"refusing to delete {path}: {point} is mounted")


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no console log)"
    return " | ".join(text.strip().splitlines()[-lines:])
