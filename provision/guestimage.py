"""The lab's guest image: a tiny qcow2 disk a VM on a lab hypervisor boots from.

The lab's hypervisors are emulated themselves, so their guests run under two levels of TCG
(LAB-NOTES: 55 s to /init for a 1 MB initramfs). The image therefore holds only what a
monitored host needs: Debian's cloud kernel (the golden image's, as the installer uses it),
busybox, OpenSSH's sshd with its libraries (from this host, like the installer's tools),
Prometheus's node_exporter (Debian's prometheus-node-exporter .deb, ``apt-get download``), and
a few shell scripts (provision/guest/). Its identity comes from the seed volume a VM gets
as a second disk (configure/vmseed.py): hostname, static address, host key, authorized keys.

Boot path: SeaBIOS -> syslinux MBR -> extlinux -> the kernel + a ~2.5 MB initramfs (busybox,
the virtio, network and iso9660 modules; /init from provision/guest/initramfs-init) that mounts
the disk's ext4 read-only and switch_roots to busybox init; sshd and node_exporter are read from
the disk on demand instead of being unpacked into RAM first. Layout::

    sector 0          syslinux mbr.bin + one bootable Linux partition
    1 MiB .. end      ext4 (no journal: mounted read-only), label mcguest, fixed UUID
                      /boot/vmlinuz-*, /boot/initrd.img, /boot/extlinux/
                      /sbin/init -> busybox init, /etc/inittab, /sbin/mc-setup, mc-service,
                      /bin/systemctl (is-active/start/stop/restart for the two services)

Reproducible: every input file is hashed into the cache key; the trees get fixed mtimes
(SOURCE_DATE_EPOCH), the cpio is sorted and owned by root, mke2fs runs with a fake time, a
UUID and hash seed derived from the key, and what mounting the filesystem for extlinux
changed (superblock times and counters, the new files' times) is reset with debugfs. Same
inputs, same sha256.

Cache (next to the golden image) and publication::

    <cache>/guest-<key>.qcow2        the image      <cache>/guest-<key>.qcow2.json  provenance
    <cache>/guest-<key>.lock         flock(2)       <cache>/guest-debs/*.deb        downloads
    <images_dir>/metalchain-guest-<key>.qcow2 (+ .sha256)   what the mirror serves at /images/
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from provision.diskimage import (
    BLOCK_SIZE,
    PARTITION_OFFSET,
    SECTOR,
    SYSLINUX_MBR,
    DiskImage,
    ImageBuildError,
    extlinux_conf,
    fstab,
    image_size_for,
    inode_count_for,
    mbr_sector,
    publish_image,
    tree_usage,
)
from provision.image import GoldenImage, ImageSpec, ensure_image
from provision.initramfs import (
    MODULES,
    file_digest,
    kernel_of,
    module_paths,
    with_libraries,
    write_cpio,
)
from runtime import process
from runtime.filelock import file_lock
from runtime.jsondoc import content_key, write_json

# Bump whenever the layout or the build steps change: it is part of the cache key.
BUILD_VERSION = 2

GUEST_DIR = Path(__file__).parent / "guest"
#: The scripts and configuration of provision/guest/ and where each goes in the image.
GUEST_FILES: dict[str, tuple[str, int]] = {
    "initramfs-init": ("init", 0o755),  # in the initramfs
    "setup": ("sbin/mc-setup", 0o755),
    "mc-service": ("sbin/mc-service", 0o755),
    "systemctl": ("bin/systemctl", 0o755),
    "inittab": ("etc/inittab", 0o644),
    "sshd_config": ("etc/ssh/sshd_config", 0o644),
}
#: The initramfs loads these, in this order (insmod: dependencies first).
GUEST_MODULES: tuple[str, ...] = (*MODULES, "cdrom", "isofs")

BUSYBOX = Path("/bin/busybox")
SSHD = Path("/usr/sbin/sshd")
EXPORTER_PACKAGE = "prometheus-node-exporter"
EXPORTER_IN_DEB = "usr/bin/prometheus-node-exporter"

#: The name the image store and the inventory use; the URL carries the key.
STORE_NAME = "lab-guest.qcow2"
FS_LABEL = "mcguest"
#: Every timestamp in the image (2024-01-01T00:00:00Z) unless SOURCE_DATE_EPOCH says otherwise.
DEFAULT_EPOCH = 1704067200

BUILD_TIMEOUT_S = 300.0
LOCK_TIMEOUT_S = 600.0
CMD_TIMEOUT_S = 60.0
DOWNLOAD_TIMEOUT_S = 300.0

# ext4 superblock: at byte 1024 of the filesystem; s_last_mounted is char[64] at 0x88.
SUPERBLOCK_OFFSET = 1024
LAST_MOUNTED_OFFSET = 0x88
LAST_MOUNTED_BYTES = 64

_ETC_FILES: dict[str, tuple[str, int]] = {
    "etc/passwd": ("root:x:0:0:root:/root:/bin/sh\n"
                   "sshd:x:100:65534::/run/sshd:/bin/false\n"
                   "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n", 0o644),
    "etc/group": ("root:x:0:\ntty:x:5:\nnogroup:x:65534:\n", 0o644),
    "etc/shadow": ("root:*:19723:0:99999:7:::\nsshd:*:19723:0:99999:7:::\n"
                   "nobody:*:19723:0:99999:7:::\n", 0o600),
    "etc/nsswitch.conf": ("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\n",
                          0o644),
    "etc/hosts": ("127.0.0.1 localhost\n::1 localhost\n", 0o644),
    "etc/os-release": ('NAME="metalchain lab guest"\nID=metalchain-guest\n'
                       'PRETTY_NAME="metalchain lab guest (busybox, sshd, node_exporter)"\n',
                       0o644),
}


@dataclass(frozen=True)
class GuestImage:
    """A built, published guest image."""

    image: DiskImage  # image.path: <images_dir>/metalchain-guest-<key>.qcow2
    key: str
    kernel_version: str
    virtual_size: int  # bytes of the disk the guest sees

    @property
    def path(self) -> Path:
        return self.image.path

    @property
    def sha256(self) -> str:
        return self.image.sha256


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH when set (reproducible-builds.org), else ``DEFAULT_EPOCH``."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "")
    if raw:
        if not raw.isdigit():
            raise ImageBuildError(f"SOURCE_DATE_EPOCH {raw!r} is not a number of seconds")
        return int(raw)
    return DEFAULT_EPOCH


def guest_image_key(digests: dict[str, str], epoch: int,
                    build_version: int = BUILD_VERSION) -> str:
    """The cache key: every input's digest by name, the timestamp and the build version.

    >>> guest_image_key({"a": "1"}, 0) == guest_image_key({"a": "1"}, 0)
    True
    """
    return content_key({"build_version": build_version, "epoch": epoch, "files": digests})


def fs_uuid_for(key: str) -> str:
    """A filesystem UUID that is a function of the key (mke2fs would pick a random one)."""
    return str(uuid.UUID(bytes=hashlib.sha256(f"metalchain-guest:{key}".encode()).digest()[:16],
                         version=4))


def guest_extlinux_conf(kernel: str, initrd: str, fs_uuid: str) -> str:
    """The boot menu: the installed node's one (serial console, root by UUID), plus
    ``panic=10`` so a guest whose init dies reboots instead of hanging silently."""
    return extlinux_conf(kernel, initrd, fs_uuid, extra_args="panic=10")


def ensure_guest_image(images_dir: Path, golden: GoldenImage | None = None, *,
                       spec: ImageSpec | None = None, cache_dir: Path | None = None,
                       exporter_deb: Path | None = None, guest_cache: Path | None = None,
                       timeout: float = BUILD_TIMEOUT_S) -> tuple[GuestImage, float | None]:
    """Return the published guest image (and its build time, None when cached).

    ``exporter_deb`` is Debian's prometheus-node-exporter package; by default it is fetched
    with ``apt-get download`` into ``<cache>/guest-debs`` (once per version). ``guest_cache``
    is where built images are kept (default: next to the golden image).

    Example::

        image, _ = ensure_guest_image(site_root / "mirror" / "images")
        # image.path -> .../metalchain-guest-0f3a....qcow2, image.sha256 -> "9c1e..."
    """
    golden = golden or ensure_image(spec, cache_dir)
    cache = Path(guest_cache) if guest_cache else golden.path.parent
    deb = Path(exporter_deb) if exporter_deb else fetch_exporter_deb(
        golden.path.parent / "guest-debs")
    kernel, version = kernel_of(golden.rootfs)
    modules = module_paths(golden.rootfs / "lib/modules" / version, GUEST_MODULES)
    if not BUSYBOX.is_file() or not SSHD.is_file():
        raise ImageBuildError(f"{BUSYBOX} and {SSHD} are needed on this host "
                              f"(packages busybox-static, openssh-server)")
    host_files = [BUSYBOX, *with_libraries([SSHD], timeout=CMD_TIMEOUT_S)]
    epoch = source_date_epoch()
    digests = {f"guest/{name}": file_digest(GUEST_DIR / name) for name in sorted(GUEST_FILES)}
    digests.update({str(p): file_digest(p) for p in host_files})
    digests.update({f"module/{p.name}": file_digest(p) for p in modules})
    digests["kernel"] = file_digest(kernel)
    digests["exporter_deb"] = file_digest(deb)
    digests["mbr"] = file_digest(SYSLINUX_MBR)
    key = guest_image_key(digests, epoch)
    image = cache / f"guest-{key}.qcow2"
    info = _cached(image)
    seconds = None
    if info is None:
        cache.mkdir(parents=True, exist_ok=True)
        with file_lock(cache / f"guest-{key}.lock", LOCK_TIMEOUT_S, ImageBuildError):
            info = _cached(image)
            if info is None:
                started = time.monotonic()
                info = _build(image, key, epoch, kernel=kernel, version=version,
                              modules=modules, host_files=host_files, deb=deb,
                              deadline=started + timeout)
                seconds = round(time.monotonic() - started, 1)
    published = publish_image(image, info, Path(images_dir), f"metalchain-guest-{key}",
                              seconds, suffix=".qcow2")
    return GuestImage(image=published, key=key, kernel_version=version,
                      virtual_size=int(str(info["virtual_size"]))), seconds


def _cached(image: Path) -> dict[str, object] | None:
    try:
        info = json.loads(image.with_name(image.name + ".json").read_text(encoding="utf-8"))
        if image.stat().st_size != info["size"]:
            return None
    except (OSError, ValueError, KeyError):
        return None
    return dict(info)


# -- the exporter package ---------------------------------------------------------------------

def parse_print_uri(text: str) -> tuple[str, str]:
    """(file name, sha256) from ``apt-get download --print-uris`` of one package.

    >>> parse_print_uri("'http://d/p.deb' p_1_amd64.deb 12 SHA256:" + "a" * 64)
    ('p_1_amd64.deb', 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa')
    """
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[3].startswith("SHA256:") and fields[1].endswith(".deb"):
            digest = fields[3].removeprefix("SHA256:")
            if len(digest) == 64 and all(c in "0123456789abcdef" for c in digest) \
                    and "/" not in fields[1] and not fields[1].startswith("."):
                return fields[1], digest
    raise ImageBuildError(f"apt-get download --print-uris {EXPORTER_PACKAGE} gave no .deb "
                          f"with a SHA256 (run apt-get update?)")


def fetch_exporter_deb(debs_dir: Path, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Debian's prometheus-node-exporter .deb in ``debs_dir``, downloaded if missing there,
    checked against the archive's SHA256 either way."""
    out = process.run(["apt-get", "-q", "download", "--print-uris", EXPORTER_PACKAGE],
                      timeout=CMD_TIMEOUT_S, error=ImageBuildError).stdout
    name, digest = parse_print_uri(out)
    target = debs_dir / name
    if target.is_file() and file_digest(target) == digest:
        return target
    debs_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=debs_dir) as work:
        process.run(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download",
                     EXPORTER_PACKAGE], timeout=timeout, cwd=work, error=ImageBuildError,
                    what=f"apt-get download {EXPORTER_PACKAGE}")
        fetched = Path(work) / name
        if not fetched.is_file() or file_digest(fetched) != digest:
            raise ImageBuildError(f"apt-get download {EXPORTER_PACKAGE}: {name} missing or "
                                  f"not matching the archive's SHA256")
        os.replace(fetched, target)
    return target


# -- the build --------------------------------------------------------------------------------

def _build(image: Path, key: str, epoch: int, *, kernel: Path, version: str,
           modules: list[Path], host_files: list[Path], deb: Path,
           deadline: float) -> dict[str, object]:
    cache = image.parent
    for stale in cache.glob(f"guest-{key}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=f"guest-{key}.tmp-", dir=cache))
    try:
        initramfs = work / "initramfs"
        _initramfs_tree(initramfs, modules)
        _fix_times(initramfs, epoch)
        rootfs = work / "rootfs"
        _rootfs_tree(rootfs, host_files, deb, work, deadline)
        write_cpio(initramfs, rootfs / "boot/initrd.img", deadline)
        shutil.copyfile(kernel, rootfs / "boot" / kernel.name)
        fs_uuid = fs_uuid_for(key)
        (rootfs / "boot/extlinux").mkdir(parents=True)
        (rootfs / "boot/extlinux/extlinux.conf").write_text(
            guest_extlinux_conf(f"/boot/{kernel.name}", "/boot/initrd.img", fs_uuid),
            encoding="utf-8")
        (rootfs / "etc/fstab").write_text(fstab(fs_uuid), encoding="utf-8")
        _fix_times(rootfs, epoch)
        raw = work / "disk.raw"
        _make_disk(raw, rootfs, fs_uuid, epoch, deadline)
        qcow2 = work / "disk.qcow2"
        _run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", str(raw), str(qcow2)],
             deadline, "qemu-img convert")
        info: dict[str, object] = {
            "key": key, "build_version": BUILD_VERSION, "epoch": epoch,
            "kernel_version": version, "fs_uuid": fs_uuid,
            "size": qcow2.stat().st_size, "virtual_size": raw.stat().st_size,
            "sha256": file_digest(qcow2),
            "initrd_bytes": (rootfs / "boot/initrd.img").stat().st_size,
            "rootfs_bytes": sum(f.stat().st_size for f in rootfs.rglob("*")
                                if f.is_file() and not f.is_symlink()),
            "exporter_deb": deb.name,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.rename(qcow2, image)
        write_json(image.with_name(image.name + ".json"), info)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info


def _applets() -> list[str]:
    out = process.run([str(BUSYBOX), "--list"], timeout=CMD_TIMEOUT_S, error=ImageBuildError)
    return sorted({name for name in out.stdout.split() if name and "/" not in name})


def _initramfs_tree(tree: Path, modules: list[Path]) -> None:
    for sub in ("bin", "dev", "proc", "sys", "newroot", "lib/modules"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    os.mknod(tree / "dev/console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    _install(GUEST_DIR / "initramfs-init", tree / "init", 0o755)
    _install(BUSYBOX, tree / "bin/busybox", 0o755)
    for applet in _applets():
        if applet != "busybox":
            (tree / "bin" / applet).symlink_to("busybox")
    order = []
    for module in modules:
        _install(module, tree / "lib/modules" / module.name, 0o644)
        order.append(module.name.removesuffix(".ko"))
    (tree / "lib/modules/load-order").write_text("\n".join(order) + "\n", encoding="utf-8")


def _rootfs_tree(tree: Path, host_files: list[Path], deb: Path, work: Path,
                 deadline: float) -> None:
    for sub, mode in (("bin", 0o755), ("sbin", 0o755), ("usr/bin", 0o755),
                      ("usr/sbin", 0o755), ("etc/ssh", 0o755), ("boot", 0o755),
                      ("dev", 0o755), ("proc", 0o555), ("sys", 0o555), ("run", 0o755),
                      ("tmp", 0o1777), ("root", 0o700), ("var/empty", 0o755), ("mnt", 0o755)):
        (tree / sub).mkdir(parents=True, exist_ok=True)
        (tree / sub).chmod(mode)
    for src in host_files:
        # Same path as on the host (the loader path is baked into the binaries).
        _install(src.resolve(), tree / src.relative_to("/"), 0o755)
    if (tree / "usr/lib64").exists() and not (tree / "lib64").exists():
        (tree / "lib64").symlink_to("usr/lib64")
    for applet in _applets():
        if applet == "busybox":
            continue
        link = tree / ("sbin" if applet == "init" else "bin") / applet
        if not link.exists() and not link.is_symlink():
            link.symlink_to("/bin/busybox")
    for name, (dest, mode) in GUEST_FILES.items():
        if dest != "init":
            target = tree / dest
            if target.is_symlink():
                target.unlink()
            _install(GUEST_DIR / name, target, mode)
    for dest, (text, mode) in _ETC_FILES.items():
        (tree / dest).write_text(text, encoding="utf-8")
        (tree / dest).chmod(mode)
    (tree / "etc/resolv.conf").symlink_to("/run/resolv.conf")
    (tree / "etc/hostname").write_text("localhost\n", encoding="utf-8")
    unpacked = work / "deb"
    _run(["dpkg-deb", "-x", str(deb), str(unpacked)], deadline, "dpkg-deb -x")
    exporter = unpacked / EXPORTER_IN_DEB
    if not exporter.is_file():
        raise ImageBuildError(f"{deb.name} has no /{EXPORTER_IN_DEB}")
    _install(exporter, tree / EXPORTER_IN_DEB, 0o755)


def _install(src: Path, dst: Path, mode: int) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    dst.chmod(mode)


def _fix_times(tree: Path, epoch: int) -> None:
    """Every entry's atime and mtime to ``epoch`` (symlinks themselves, not their targets)."""
    for path in [*tree.rglob("*"), tree]:
        os.utime(path, (epoch, epoch), follow_symlinks=False)


# Run as debugfs -w -f: make the bytes depend on the inputs only. mke2fs -d (1.47.0) stamps
# every inode's ctime and crtime with the real clock (E2FSPROGS_FAKE_TIME reaches only the
# superblock), and mounting the filesystem for extlinux touched the superblock (times,
# counters, the mount point's path) and created the boot loader's files at the real time.
_BOOTLOADER_FILES = ("boot/extlinux/ldlinux.sys", "boot/extlinux/ldlinux.c32", "lost+found")


def debugfs_normalize_script(paths: list[str], epoch: int) -> str:
    """debugfs commands setting the superblock's and every path's times to ``epoch``.

    >>> debugfs_normalize_script(["/"], 0).splitlines()[0]
    'ssv mtime 19700101000000'
    """
    stamp = time.strftime("%Y%m%d%H%M%S", time.gmtime(epoch))
    lines = [f"ssv mtime {stamp}", f"ssv wtime {stamp}", f"ssv lastcheck {stamp}",
             "ssv mnt_count 0", "ssv kbytes_written 0"]
    for path in paths:
        quoted = '"' + path + '"'
        for field in ("atime", "mtime", "ctime", "crtime"):
            lines.append(f"sif {quoted} {field} {stamp}")
        for field in ("atime_extra", "mtime_extra", "ctime_extra", "crtime_extra",
                      "generation", "version"):
            lines.append(f"sif {quoted} {field} 0")
    return "\n".join(lines) + "\n"


def _image_paths(rootfs: Path) -> list[str]:
    """Every path of the image: the tree's, sorted, plus what extlinux and mke2fs added."""
    paths = {"/" + str(p.relative_to(rootfs)) for p in rootfs.rglob("*")}
    paths.update("/" + name for name in _BOOTLOADER_FILES)
    paths.update({"/", "/etc/fstab", "/boot/extlinux/extlinux.conf"})
    for path in paths:
        if '"' in path or "\n" in path or " " in path:
            raise ImageBuildError(f"guest image path {path!r} cannot be named to debugfs")
    return sorted(paths)


def _make_disk(raw: Path, rootfs: Path, fs_uuid: str, epoch: int, deadline: float) -> None:
    blocks, inodes = tree_usage(rootfs)
    size = image_size_for(blocks, inodes)
    with open(raw, "wb") as disk:
        disk.truncate(size)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch), "SOURCE_DATE_EPOCH": str(epoch)}
    fs_blocks = (size - PARTITION_OFFSET) // BLOCK_SIZE
    process.run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(BLOCK_SIZE), "-L", FS_LABEL,
                 "-U", fs_uuid, "-N", str(inode_count_for(inodes)), "-O", "^has_journal",
                 "-E", f"offset={PARTITION_OFFSET},hash_seed={fs_uuid},"
                       "lazy_itable_init=0,root_owner=0:0",
                 "-d", str(rootfs), str(raw), str(fs_blocks)],
                timeout=deadline - time.monotonic(), env=env, error=ImageBuildError,
                what="guest image build: mke2fs")
    with open(raw, "r+b") as disk:
        disk.write(mbr_sector(SYSLINUX_MBR.read_bytes(), PARTITION_OFFSET // SECTOR,
                              (size - PARTITION_OFFSET) // SECTOR))
    _install_extlinux(raw, deadline)
    # The mount recorded its (temporary) mount point in the superblock: zero that field here;
    # debugfs (-n: do not verify checksums on open) then rewrites the superblock checksum.
    with open(raw, "r+b") as disk:
        disk.seek(PARTITION_OFFSET + SUPERBLOCK_OFFSET + LAST_MOUNTED_OFFSET)
        disk.write(bytes(LAST_MOUNTED_BYTES))
    fs = f"{raw}?offset={PARTITION_OFFSET}"
    process.run(["debugfs", "-n", "-w", "-f", "-", fs],
                input=debugfs_normalize_script(_image_paths(rootfs), epoch),
                timeout=deadline - time.monotonic(), env=env, error=ImageBuildError,
                what="guest image build: debugfs")
    _run(["e2fsck", "-fn", fs], deadline, "e2fsck")


# Runs in a private mount namespace (the loop mount vanishes with it if we are killed; mount -o
# loop sets autoclear). Only extlinux writes while it is mounted: its files are written with
# O_SYNC, so their blocks are allocated in this process, pinned to one CPU -- ext4 takes small
# allocations from a per-CPU preallocation, and files flushed later by a kernel worker on
# either CPU landed in different places (measured: 2 of 6 builds differed). The boot menu
# and fstab are already in the tree mke2fs copied.
_EXTLINUX_SCRIPT = """\
set -eu
image=$1 offset=$2 mnt=$3
mount -t ext4 -o loop,noatime,offset="$offset" "$image" "$mnt"
extlinux --install "$mnt/boot/extlinux" >/dev/null
umount "$mnt"
"""


def _install_extlinux(raw: Path, deadline: float) -> None:
    with tempfile.TemporaryDirectory(prefix="mc-guestimage-") as work:
        cpu = str(min(os.sched_getaffinity(0)))
        _run(["taskset", "-c", cpu, "unshare", "--mount", "--propagation", "private", "--fork",
              "--kill-child", "--", "sh", "-c", _EXTLINUX_SCRIPT, "sh", str(raw),
              str(PARTITION_OFFSET), work], deadline, "extlinux install")


def _run(argv: list[str], deadline: float, what: str) -> None:
    process.run(argv, timeout=deadline - time.monotonic(), error=ImageBuildError,
                what=f"guest image build: {what}")
