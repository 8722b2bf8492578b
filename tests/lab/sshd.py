"""A real OpenSSH server on 127.0.0.1 for transport tests: own config, host key, port."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from pathlib import Path

METALCHAIN = str(Path(sys.executable).parent / "metalchain")
N = 10


def addresses() -> list[str]:
    """The loopback addresses of the local test hosts (one sshd answers on all of them)."""
    return [f"127.0.0.{i}" for i in range(2, 2 + N)]


def mc(site: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the metalchain console script against ``site``."""
    return subprocess.run([METALCHAIN, "--site", str(site), *args], capture_output=True,
                          text=True, timeout=timeout)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", str(path)],
                   check=True, timeout=30)
    return " ".join(path.with_suffix(".pub").read_text().split()[:2])


class LocalSshd:
    def __init__(self, workdir: Path, client_pub: str,
                 addresses: tuple[str, ...] = ("127.0.0.1",), *, port: int | None = None,
                 extra_config: str = "") -> None:
        """``port``: a given one (another sshd on the same address:port, started after the
        first stopped); ``extra_config``: sshd_config lines added at the end (ForceCommand,
        LogLevel)."""
        self.addresses = addresses
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_tcp_port()
        self.host_key_path = self.dir / "host_ed25519"
        self.host_pub = keygen(self.host_key_path)
        (self.dir / "authorized_keys").write_text(client_pub + "\n")
        (self.dir / "authorized_keys").chmod(0o600)
        self.config = self.dir / "sshd_config"
        self.config.write_text(
            f"Port {self.port}\n" + "".join(f"ListenAddress {a}\n" for a in addresses)
            + f"HostKey {self.host_key_path}\n"
            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\nPermitRootLogin yes\n"
            "PasswordAuthentication no\nUsePAM no\nStrictModes no\nSubsystem sftp internal-sftp\n"
            f"PidFile {self.dir / 'sshd.pid'}\nMaxSessions 100\nMaxStartups 200\n"
            + extra_config)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        Path("/run/sshd").mkdir(exist_ok=True)
        self.proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(self.config)],
                                     stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "sshd.log", "wb"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.addresses[-1], self.port), timeout=0.5):
                return
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "sshd.log").read_text())
            time.sleep(0.05)
        raise RuntimeError("sshd did not listen within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class SitePath(type(Path())):  # a Path that also carries the sshd and a work dir
    sshd: LocalSshd
    work: Path
