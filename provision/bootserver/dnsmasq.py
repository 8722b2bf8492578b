"""dnsmasq as our child process: DHCP (static leases only), TFTP for iPXE, IPv6 RAs.

Why dnsmasq and why this shape:

- **One main config, one hosts file.** dnsmasq re-reads ``dhcp-hostsfile`` on SIGHUP but never
  its main config. The per-host ``MAC,IP,NAME`` lines (the part that changes with the
  inventory) go to the hosts file and a reload is a SIGHUP; only a change of the main config
  (interface, addresses, URL) costs a restart. Both files are written atomically (temp file +
  rename) and the main config is checked with ``dnsmasq --test`` before it replaces the old one.
- **A child we own.** dnsmasq runs with ``--keep-in-foreground`` as our child (so we see it
  exit and its stderr), writes a pid file in the state directory, and is stopped with SIGTERM,
  then SIGKILL. An ``atexit`` hook stops it when the controller exits normally; if the
  controller was killed, the next start finds the pid file, checks that the process really is
  a dnsmasq with our config on its command line, and stops it before starting a new one.
  (PR_SET_PDEATHSIG is not used: it fires when the *thread* that started the child exits.)
- **Privileges.** dnsmasq parses packets from the network, so it drops root (``user=``) after
  binding. It re-reads the hosts file and serves TFTP as that user, so the state directory must
  be reachable by it; that is checked before start with an error naming the directory.
"""

from __future__ import annotations

import atexit
import grp
import ipaddress
import logging
import os
import pwd
import re
import signal
import stat
import subprocess
import time
from pathlib import Path
from typing import Literal

from inventory.errors import InventoryError
from provision import contract
from provision.bootserver.interfaces import BootNodes, BootServerError
from provision.settings import BootSettings
from provision.templates import render
from runtime import process
from runtime.atomicfile import write_atomic
from runtime.pidfile import live_pid, read_pid, terminate
from runtime.private import open_private

log = logging.getLogger("metalchain.bootserver.dnsmasq")

DNSMASQ = "dnsmasq"
TEST_TIMEOUT_S = 10.0
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
LEASE_TIME = "1h"
BIOS_BOOTFILE = "undionly.kpxe"
EFI_BOOTFILE = "snponly.efi"
# iPXE expands this to the MAC with hyphens (52-54-00-..); ${net0/mac} would be URL-encoded.
IPXE_MAC_HYPHENS = "${net0/mac:hexhyp}"
# Characters that cannot end up in a dnsmasq directive value unnoticed.
_CONF_SAFE = re.compile(r"^[A-Za-z0-9_./+@:=-]+$")

ReloadKind = Literal["unchanged", "hosts", "config"]


class DnsmasqFiles:
    """Everything dnsmasq reads or writes, all under the boot state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.conf = state_dir / "dnsmasq.conf"
        self.hostsfile = state_dir / "dhcp-hosts"
        self.leases = state_dir / "dnsmasq.leases"
        self.pid = state_dir / "dnsmasq.pid"
        self.log = state_dir / "dnsmasq.log"
        self.stderr = state_dir / "dnsmasq.stderr"
        self.tftp_root = state_dir / "tftp"


def stop_orphan(state_dir: Path) -> int | None:
    """Stop the dnsmasq a killed controller left on ``state_dir`` (its pid file names a live
    dnsmasq with this directory's config on its command line); the pid stopped, or None.
    Used before a new start and by ``lab down`` (nothing else would stop it: its controller
    is gone). Raises BootServerError if it survives SIGKILL."""
    files = DnsmasqFiles(state_dir)
    pid = live_pid(files.pid, markers=(f"--conf-file={files.conf}",))
    if pid is not None:
        log.warning("stopping dnsmasq pid %d left over from an earlier run", pid)
        if not terminate(pid, term_timeout=STOP_TIMEOUT_S, kill_timeout=STOP_TIMEOUT_S):
            raise BootServerError(f"dnsmasq pid {pid} left over from an earlier run "
                                  "survived SIGKILL")
    files.pid.unlink(missing_ok=True)
    return pid


def script_url(base_url: str) -> str:
    """The URL iPXE is told to chain, with iPXE's own MAC expansion in it."""
    return base_url + contract.IPXE_SCRIPT.format(mac_hyphens=IPXE_MAC_HYPHENS)


def _conf_value(what: str, value: str) -> str:
    if not _CONF_SAFE.match(value):
        raise BootServerError(f"{what} {value!r} cannot be written into a dnsmasq config "
                              "(use letters, digits and ./_+@:=- only)")
    return value


def render_config(settings: BootSettings, base_url: str, files: DnsmasqFiles,
                  *, efi: bool = False) -> str:
    """The main dnsmasq config (everything except the per-host lines)."""
    url = script_url(base_url)
    if not url.isascii() or any(c.isspace() or c in ",#" for c in url):
        raise BootServerError(f"boot URL {url!r} cannot be written into a dnsmasq config")
    return render(
        "dnsmasq.conf.j2",
        interface=_conf_value("interface", settings.interface),
        user=_conf_value("dnsmasq user", settings.dnsmasq_user),
        pid_file=_conf_value("path", str(files.pid)),
        lease_file=_conf_value("path", str(files.leases)),
        log_file=_conf_value("path", str(files.log)),
        hostsfile=_conf_value("path", str(files.hostsfile)),
        tftp_root=_conf_value("path", str(files.tftp_root)),
        network=str(settings.subnet.network_address),
        netmask=str(settings.subnet.netmask),
        lease_time=LEASE_TIME,
        script_url=url,
        bios_bootfile=BIOS_BOOTFILE,
        efi_bootfile=EFI_BOOTFILE if efi else "",
        ipv6_ra=settings.ipv6_ra,
    )


def render_hosts(settings: BootSettings, nodes: BootNodes) -> str:
    """One ``MAC,IP,NAME`` line per node; every node needs an IPv4 inside the boot subnet."""
    lines = ["# Generated by metalchain: one static lease per node (MAC,IP,NAME).\n"]
    taken: dict[ipaddress.IPv4Address, str] = {}
    for node in sorted(nodes.by_name.values(), key=lambda n: n.name):
        if not node.ip:
            raise InventoryError("provision.mac is set but there is no provision.ip (or "
                                 "address) for its static lease", host=node.name,
                                 key="provision.ip")
        try:
            ip = ipaddress.IPv4Address(node.ip)
        except ValueError:
            raise InventoryError(f"provision.ip {node.ip!r} is not an IPv4 address",
                                 host=node.name, key="provision.ip") from None
        if ip not in settings.subnet or ip in (settings.address, settings.subnet.network_address,
                                               settings.subnet.broadcast_address):
            raise InventoryError(f"provision.ip {ip} is not a usable address of boot.subnet "
                                 f"{settings.subnet} (the controller is {settings.address})",
                                 host=node.name, key="provision.ip")
        if ip in taken:
            raise InventoryError(f"provision.ip {ip} is also {taken[ip]}'s", host=node.name,
                                 key="provision.ip")
        taken[ip] = node.name
        # DHCP option 12 carries a host name, not a domain name: the first label only.
        label = node.name.split(".", 1)[0]
        lines.append(f"{_conf_value('MAC', node.mac)},{ip},{_conf_value('name', label)}\n")
    return "".join(lines)


def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Write ``text`` to ``path`` atomically; False if it already held exactly that."""
    try:
        return write_atomic(path, text, mode, unchanged_ok=True)
    except OSError as exc:
        raise BootServerError(f"cannot write {path}: {exc.strerror}") from exc


def check_config(conf: Path, *, binary: str = DNSMASQ, timeout: float = TEST_TIMEOUT_S) -> None:
    """``dnsmasq --test -C FILE``: refuse a config dnsmasq would refuse, before using it."""
    proc = process.run([binary, "--test", f"--conf-file={conf}"], timeout=timeout, check=False,
                       error=BootServerError, what=f"{binary} --test")
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise BootServerError(f"dnsmasq rejects {conf}: {detail[-1] if detail else 'no reason'}")


def check_reachable_by(user: str, path: Path) -> None:
    """Fail early (with the directory's name) if ``user`` cannot traverse to ``path``.

    dnsmasq re-reads the hosts file and serves TFTP after dropping to ``user``; a state
    directory under a mode-0700 home would otherwise fail only at the first SIGHUP or TFTP
    request, as a line in dnsmasq's log.
    """
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise BootServerError(f"boot.dnsmasq_user {user!r} does not exist on this machine") \
            from None
    if entry.pw_uid == 0:
        return
    gids = set(os.getgrouplist(user, entry.pw_gid))
    for directory in (path, *path.parents):
        try:
            st = directory.stat()
        except OSError as exc:
            raise BootServerError(f"cannot stat {directory}: {exc.strerror}") from exc
        if st.st_uid == entry.pw_uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in gids:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            group = _group_name(st.st_gid)
            raise BootServerError(
                f"dnsmasq runs as {user!r} and cannot enter {directory} (mode "
                f"{stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}, group {group}); set "
                "boot.state_dir in metalchain.yml to a directory it can reach")


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


class Dnsmasq:
    """One dnsmasq serving the boot network described by ``settings``.

    Example::

        dnsmasq = Dnsmasq(settings, base_url="http://10.77.0.1:8080")
        dnsmasq.start(nodes)          # writes config + hosts, checks, starts, waits for pid
        dnsmasq.reload(new_nodes)     # SIGHUP, or a restart if the main config changed
        dnsmasq.stop()
    """

    def __init__(self, settings: BootSettings, base_url: str, *, binary: str = DNSMASQ) -> None:
        self.settings = settings
        self.base_url = base_url
        self.binary = binary
        self.files = DnsmasqFiles(settings.state_dir)
        self._proc: subprocess.Popen[bytes] | None = None
        self._atexit_registered = False

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, nodes: BootNodes, *, timeout: float = START_TIMEOUT_S) -> None:
        """Write the files, check them, start dnsmasq and wait until it has bound its sockets."""
        if self.running:
            return
        self._prepare_dirs()
        self._reclaim_orphan()
        self._write(nodes)
        self._spawn(timeout)

    def reload(self, nodes: BootNodes) -> ReloadKind:
        """Apply a new set of nodes: SIGHUP for host changes, restart for config changes."""
        hosts_text = render_hosts(self.settings, nodes)
        conf_text = self._config_text()
        if not self.running:
            self._write_texts(conf_text, hosts_text)
            return "config"
        conf_changed = self._conf_differs(conf_text)
        if conf_changed:
            self.stop()
            self._write_texts(conf_text, hosts_text)
            self._spawn(START_TIMEOUT_S)
            return "config"
        if not write_if_changed(self.files.hostsfile, hosts_text):
            return "unchanged"
        proc = self._proc
        if proc is not None:
            try:
                proc.send_signal(signal.SIGHUP)
            except OSError as exc:   # e.g. no CAP_KILL over a dnsmasq that runs as nobody
                raise BootServerError(f"cannot signal dnsmasq (pid {proc.pid}) to re-read "
                                      f"its hosts file: {exc.strerror or exc}") from None
            log.info("dnsmasq: hosts file changed (%d nodes), sent SIGHUP", len(nodes))
        return "hosts"

    def stop(self, *, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, then SIGKILL after ``timeout``; idempotent."""
        proc, self._proc = self._proc, None
        if self._atexit_registered:
            atexit.unregister(self.stop)
            self._atexit_registered = False
        if proc is None:
            return
        process.stop_child(proc, timeout=timeout, kill_timeout=timeout, error=BootServerError)
        self.files.pid.unlink(missing_ok=True)
        log.info("dnsmasq stopped (exit %s)", proc.returncode)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    def check_alive(self) -> None:
        """Raise with dnsmasq's last words if it exited behind our back."""
        if self._proc is not None and self._proc.poll() is not None:
            raise BootServerError(f"dnsmasq exited with status {self._proc.returncode}: "
                                  f"{self._stderr_tail()}")

    # -- internals -------------------------------------------------------------------------------

    def _prepare_dirs(self) -> None:
        try:
            for directory in (self.files.state_dir, self.files.tftp_root):
                directory.mkdir(parents=True, exist_ok=True)
                # dnsmasq drops to boot.dnsmasq_user and must enter these (nothing secret).
                os.chmod(directory, 0o755)  # noqa: S103
        except OSError as exc:
            raise BootServerError(f"cannot create {exc.filename}: {exc.strerror}") from exc
        check_reachable_by(self.settings.dnsmasq_user, self.files.tftp_root)
        self._install_bootfiles()

    def _install_bootfiles(self) -> None:
        """Copy iPXE for non-iPXE PXE ROMs into the TFTP root (only what dnsmasq serves)."""
        source = self.settings.ipxe_dir / BIOS_BOOTFILE
        if not source.is_file():
            raise BootServerError(f"{source} not found: install Debian package ipxe or set "
                                  "boot.ipxe_dir in metalchain.yml")
        for name in (BIOS_BOOTFILE, EFI_BOOTFILE):
            src = self.settings.ipxe_dir / name
            dst = self.files.tftp_root / name
            if not src.is_file():
                continue
            try:
                write_atomic(dst, src.read_bytes(), unchanged_ok=True)
            except OSError as exc:
                raise BootServerError(f"cannot copy {src} to {dst}: {exc.strerror}") from exc

    def _config_text(self) -> str:
        efi = (self.settings.ipxe_dir / EFI_BOOTFILE).is_file()
        return render_config(self.settings, self.base_url, self.files, efi=efi)

    def _conf_differs(self, text: str) -> bool:
        try:
            return self.files.conf.read_text(encoding="utf-8") != text
        except FileNotFoundError:
            return True
        except OSError as exc:
            raise BootServerError(f"cannot read {self.files.conf}: {exc.strerror}") from exc

    def _write(self, nodes: BootNodes) -> None:
        self._write_texts(self._config_text(), render_hosts(self.settings, nodes))

    def _write_texts(self, conf_text: str, hosts_text: str) -> None:
        # The hosts file first: the config names it, and --test reads it.
        write_if_changed(self.files.hostsfile, hosts_text)
        candidate = self.files.conf.with_name(".dnsmasq.conf.candidate")
        write_if_changed(candidate, conf_text)
        try:
            check_config(candidate, binary=self.binary)
            os.replace(candidate, self.files.conf)
        finally:
            candidate.unlink(missing_ok=True)

    def _spawn(self, timeout: float) -> None:
        self.files.pid.unlink(missing_ok=True)
        argv = [self.binary, "--keep-in-foreground", f"--conf-file={self.files.conf}"]
        try:
            # what it prints names the nodes that asked (MACs, host names): 0600
            with open_private(self.files.stderr, "wb") as stderr:
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=stderr,
                                              close_fds=True)
        except OSError as exc:
            raise BootServerError(f"cannot start {self.binary}: {exc.strerror}") from exc
        atexit.register(self.stop)
        self._atexit_registered = True
        proc = self._proc
        deadline = time.monotonic() + timeout
        # dnsmasq writes its pid file after binding its sockets: that is "ready".
        while True:
            if proc.poll() is not None:
                self._proc = None
                raise BootServerError(f"dnsmasq exited at start (status {proc.returncode}): "
                                      f"{self._stderr_tail()}")
            if read_pid(self.files.pid) == proc.pid:
                break
            if time.monotonic() >= deadline:
                self.stop()
                raise BootServerError(f"dnsmasq did not write {self.files.pid} within "
                                      f"{timeout:.0f} s: {self._stderr_tail()}")
            time.sleep(0.02)
        log.info("dnsmasq pid %d serving DHCP/TFTP on %s (RA %s)", proc.pid,
                 self.settings.interface, "on" if self.settings.ipv6_ra else "off")

    def _reclaim_orphan(self) -> None:
        """Stop a dnsmasq a killed controller left behind on this state directory."""
        stop_orphan(self.files.state_dir)

    def _stderr_tail(self) -> str:
        try:
            text = self.files.stderr.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            text = ""
        return text.splitlines()[-1] if text else f"see {self.files.log}"
