"""The golden image: one Debian root filesystem every lab host and installed node starts from.

Built with mmdebstrap and cached under a directory named by a content hash of everything that
shapes it (suite, variant, packages, mirrors, the version of our customisation). A build goes
into a temporary sibling directory and is renamed into place only when complete, so an
interrupted build never leaves a half image where a reader would find it. A lock file per hash
keeps two processes from building the same image at once; the loser waits and reuses the
winner's result.

Layout under the cache directory (default ``/var/cache/metalchain/images``)::

    <hash>/rootfs        the root filesystem (lowerdir for the lab's overlays)
    <hash>/image.json    the inputs, the build time and the size: provenance
    <hash>.lock          flock(2) target, kept (an empty file)
    <hash>.tmp-*         a build in progress, or the remains of an interrupted one

A raw disk image for installing on bare metal is a later step (``ImageSpec`` stays the key;
a ``build_disk()`` can hang off ``GoldenImage`` without changing the cache layout).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from inventory.errors import LabError
from runtime import process
from runtime.filelock import file_lock
from runtime.jsondoc import content_key, write_json

DEFAULT_CACHE_DIR = Path("/var/cache/metalchain/images")

# Bump whenever customize() changes what it does to the tree: it is part of the cache key.
CUSTOMIZE_VERSION = 2

DEFAULT_PACKAGES: tuple[str, ...] = (
    "systemd-sysv",
    "udev",
    "dbus",
    "openssh-server",
    "linux-image-cloud-amd64",
    "iproute2",
    "iputils-ping",
    "procps",
    "ca-certificates",
)

DEFAULT_MIRRORS: tuple[str, ...] = (
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
)

# Units that want a terminal; there is none in a lab host, and on metal SSH is the way in.
MASKED_UNITS: tuple[str, ...] = (
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "container-getty@.service",
)

ENABLED_UNITS: tuple[str, ...] = ("systemd-networkd.service", "ssh.service")

SSHD_DROP_IN = """\
# Written by metalchain's golden image build.
# Host keys are generated per host by the controller and pinned before first contact;
# only the ed25519 key is used, so a missing RSA/ECDSA key is not an error.
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
"""

BUILD_TIMEOUT_S = 1800.0
LOCK_TIMEOUT_S = 2400.0


@dataclass(frozen=True)
class ImageSpec:
    """Every input that shapes the image; its hash is the cache key."""

    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = DEFAULT_PACKAGES
    mirrors: tuple[str, ...] = DEFAULT_MIRRORS
    architecture: str = "amd64"
    customize_version: int = CUSTOMIZE_VERSION

    def key(self) -> str:
        """A short, stable content hash: package order and duplicates do not matter.

        >>> ImageSpec().key() == ImageSpec(packages=tuple(reversed(DEFAULT_PACKAGES))).key()
        True
        """
        doc = asdict(self)
        doc["packages"] = sorted(set(self.packages))
        return content_key(doc)


@dataclass(frozen=True)
class GoldenImage:
    """A built image in the cache."""

    spec: ImageSpec
    path: Path  # the <hash> directory
    build_seconds: float | None = None  # None when it came from the cache
    info: dict[str, object] = field(default_factory=dict)

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs"


DPKG_PATH_FILTERS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
)


def mmdebstrap_argv(spec: ImageSpec, target: Path) -> list[str]:
    """The mmdebstrap command line, wrapped so that a dead build leaves nothing behind.

    - its own mount namespace: mmdebstrap in root mode bind-mounts /dev, /proc and /sys into
      the target; killed, those mounts would stay under the temporary directory and a later
      cleanup would delete files through them. In a private namespace they vanish with it.
    - its own PID namespace with mmdebstrap as init, and the parent-death signal: if the
      controller dies, the build (apt and dpkg included) dies with it instead of running on
      unlocked next to the next build.
    """
    argv = [
        "setpriv", "--pdeathsig", "KILL", "--",
        "unshare", "--mount", "--pid", "--fork", "--kill-child", "--propagation", "private",
        "--", "mmdebstrap",
        "--mode=root",
        # No documentation, manual pages or translations on the hosts (copyright files
        # stay): ~60 MB less for every install to stream and checksum.
        *(f"--dpkgopt={opt}" for opt in DPKG_PATH_FILTERS),
        f"--variant={spec.variant}",
        f"--architectures={spec.architecture}",
        "--include=" + ",".join(sorted(set(spec.packages))),
        spec.suite,
        str(target),
    ]
    argv.extend(spec.mirrors)
    return argv


def ensure_image(spec: ImageSpec | None = None, cache_dir: Path | None = None, *,
                 timeout: float = BUILD_TIMEOUT_S, log: Path | None = None) -> GoldenImage:
    """Return the cached image for ``spec``, building it first if needed.

    Safe to call from several processes at once: one builds, the others wait on the lock
    (up to ``LOCK_TIMEOUT_S``) and then find the finished image.
    """
    spec = spec or ImageSpec()
    cache_dir = Path(cache_dir) if cache_dir else DEFAULT_CACHE_DIR
    key = spec.key()
    final = cache_dir / key
    found = _cached(spec, final)
    if found:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(cache_dir / f"{key}.lock", LOCK_TIMEOUT_S, LabError):
        found = _cached(spec, final)
        if found:
            return found
        _remove_stale_builds(cache_dir, key)
        return _build(spec, cache_dir, final, timeout=timeout, log=log)


def _cached(spec: ImageSpec, final: Path) -> GoldenImage | None:
    info_file = final / "image.json"
    if not info_file.is_file() or not (final / "rootfs" / "lib/systemd/systemd").exists():
        return None
    info = json.loads(info_file.read_text(encoding="utf-8"))
    return GoldenImage(spec=spec, path=final, info=info)


def _build(spec: ImageSpec, cache_dir: Path, final: Path, *, timeout: float,
           log: Path | None) -> GoldenImage:
    tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=cache_dir))
    rootfs = tmp / "rootfs"
    log_path = log or tmp / "build.log"
    started = time.monotonic()
    try:
        with open(log_path, "w", encoding="utf-8") as log_file:
            proc = process.run(mmdebstrap_argv(spec, rootfs), timeout=timeout, check=False,
                               stdout=log_file, stderr=process.STDOUT, error=LabError,
                               what=f"golden image build (log: {log_path})")
        if proc.returncode != 0:
            tail = _tail(log_path)
            raise LabError(f"mmdebstrap failed with exit code {proc.returncode}:\n{tail}")
        customize(rootfs)
        seconds = time.monotonic() - started
        info: dict[str, object] = {
            "key": final.name,
            "spec": asdict(spec),
            "build_seconds": round(seconds, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "size_bytes": _tree_size(rootfs),
        }
        write_json(tmp / "image.json", info)
        os.rename(tmp, final)
    except BaseException:
        _remove_tree(tmp)
        raise
    return GoldenImage(spec=spec, path=final, build_seconds=seconds, info=info)


def customize(rootfs: Path) -> None:
    """Turn a fresh mmdebstrap tree into our golden image. Bump CUSTOMIZE_VERSION on change.

    - no SSH host keys: each host gets its own from the controller, pinned before first use;
    - an empty machine-id: each host generates its own at first boot;
    - getty units masked (LAB-NOTES: no tty in a lab host, they would leave it "degraded");
    - networkd and ssh enabled; sshd limited to the ed25519 host key and key logins.
    """
    ssh_dir = rootfs / "etc/ssh"
    for key_file in ssh_dir.glob("ssh_host_*"):
        key_file.unlink()
    drop_in = ssh_dir / "sshd_config.d/metalchain.conf"
    drop_in.parent.mkdir(parents=True, exist_ok=True)
    drop_in.write_text(SSHD_DROP_IN, encoding="utf-8")
    (rootfs / "etc/machine-id").write_text("", encoding="utf-8")
    with contextlib.suppress(FileNotFoundError):
        (rootfs / "var/lib/dbus/machine-id").unlink()
    units = rootfs / "etc/systemd/system"
    units.mkdir(parents=True, exist_ok=True)
    for unit in MASKED_UNITS:
        link = units / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    _systemctl(rootfs, "enable", *ENABLED_UNITS)


def _systemctl(rootfs: Path, *args: str) -> None:
    # --root works offline on the tree: no chroot, no running systemd needed.
    process.run(["systemctl", f"--root={rootfs}", *args], timeout=60, error=LabError,
                what=f"systemctl {' '.join(args)} in the image")


def _remove_stale_builds(cache_dir: Path, key: str) -> None:
    """Remove what an interrupted build left, only while holding the lock for that key."""
    for stale in cache_dir.glob(f"{key}.tmp-*"):
        _remove_tree(stale)


def _remove_tree(path: Path) -> None:
    # Never delete through a mount point (e.g. a bind-mounted /dev): refuse instead.
    mounted = [m for m in _mount_points() if m == path or path in m.parents]
    if mounted:
        raise LabError(f"refusing to delete {path}: mounts below it: "
                       f"{', '.join(map(str, mounted))}")
    shutil.rmtree(path, ignore_errors=True)


def _mount_points() -> list[Path]:
    points = []
    with open("/proc/self/mounts", encoding="utf-8") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) > 1:
                points.append(Path(fields[1].replace("\\040", " ")))
    return points


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
