"""The raw disk image the installer streams onto a node's disk, built from the golden rootfs.

Why a raw image and not a package install on the node: writing 400 MB sequentially takes seconds
even under TCG, while apt/dpkg on the node would take minutes (LAB-NOTES, "Install path").
Why uncompressed: gunzip in the installer is slower than the network (+37 s measured).

Layout of the image (the installer grows partition and filesystem to the node's disk)::

    sector 0            syslinux mbr.bin boot code + an MBR with one bootable Linux partition
    1 MiB .. end        ext4, 4 KiB blocks (a small filesystem would otherwise get 1 KiB
                        blocks, which extlinux and a later resize handle badly), made with
                        ``mke2fs -d ROOTFS`` (no mounting, no copy of the rootfs), extlinux in
                        /boot/extlinux booting the cloud kernel with root=UUID=... console=ttyS0

The image-specific files (extlinux.conf, fstab, getty unmasked) are written into the image
itself, never into the shared golden rootfs, which the lab's hosts use as an overlay lowerdir.

Cache: next to the golden image, keyed by a hash of the golden image key and BUILD_VERSION::

    <cache>/<key>.raw          the image
    <cache>/<key>.raw.json     provenance: inputs, uuid, size, sha256, build time
    <cache>/<key>.raw.lock     flock(2) target
    <cache>/<key>.raw.tmp-*    a build in progress (or the remains of an interrupted one)

``ensure_disk_image()`` then publishes ``<name>.raw`` and ``<name>.raw.sha256`` (the
``sha256sum`` format the contract names) into the directory the boot server serves at /images/.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from inventory.errors import MetalchainError
from provision.image import GoldenImage, ImageSpec, ensure_image
from runtime import process
from runtime.atomicfile import write_atomic
from runtime.filelock import file_lock
from runtime.jsondoc import content_key, write_json

# Bump whenever the image layout or _build() changes: it is part of the cache key.
BUILD_VERSION = 2

MIB = 1024 * 1024
SECTOR = 512
PARTITION_OFFSET = MIB
BLOCK_SIZE = 4096
MBR_BOOT_CODE_BYTES = 440
SYSLINUX_MBR = Path("/usr/lib/syslinux/mbr/mbr.bin")

BUILD_TIMEOUT_S = 600.0
LOCK_TIMEOUT_S = 900.0
HASH_CHUNK = 4 * MIB

# Units the golden image masks for containers; an installed node has a serial console.
UNMASK_UNITS: tuple[str, ...] = ("getty@.service", "serial-getty@.service")

# Runs inside a private mount namespace (see install_bootloader): the loop mount vanishes with
# the namespace if we are killed, and `mount -o loop` sets autoclear, so the loop device is
# released too. Arguments come in as positional parameters, never interpolated.
_BOOTLOADER_SCRIPT = """\
set -eu
image=$1 offset=$2 mnt=$3 overlay=$4 unmask=$5
mount -t ext4 -o loop,offset="$offset" "$image" "$mnt"
cp -a "$overlay/." "$mnt/"
for unit in $unmask; do
    link="$mnt/etc/systemd/system/$unit"
    if [ -L "$link" ] && [ "$(readlink "$link")" = /dev/null ]; then rm -f "$link"; fi
done
extlinux --install "$mnt/boot/extlinux" >/dev/null
umount "$mnt"
"""


class ImageBuildError(MetalchainError):
    """The raw disk image or the installer could not be built."""


@dataclass(frozen=True)
class DiskImage:
    """A published image: ``path`` is ``<images_dir>/<name>.raw``."""

    name: str
    path: Path
    sha256: str
    size: int
    fs_uuid: str
    build_seconds: float | None = None  # None when it came from the cache

    @property
    def sha256_path(self) -> Path:
        return self.path.with_name(self.path.name + ".sha256")


def disk_image_key(golden_key: str, build_version: int = BUILD_VERSION) -> str:
    """The cache key: changes when the golden image or this module's build changes.

    >>> disk_image_key("e6f9a18a35313282") == disk_image_key("e6f9a18a35313282")
    True
    """
    doc = {"golden": golden_key, "build_version": build_version, "offset": PARTITION_OFFSET,
           "block_size": BLOCK_SIZE}
    return content_key(doc)


def inode_count_for(inodes: int) -> int:
    """Inodes to make: the tree's plus half again for what the node creates before growing.

    Explicit because mke2fs treats a filesystem under 512 MB as "small" (one inode per
    4 KiB: 33 MB of inode tables to stream for nothing); resize2fs keeps the per-group ratio,
    so a grown filesystem still gets plenty.
    """
    return inodes + inodes // 2 + 4096


def image_size_for(data_blocks: int, inodes: int) -> int:
    """Bytes of the whole image (MBR gap + filesystem) for a tree of that many 4 KiB blocks.

    Small on purpose: every byte is streamed to every node, and the installer grows the
    filesystem to the disk anyway. Room for metadata (inode tables at 256 B per inode,
    bitmaps and directories: 5 %; the 16 MiB journal) and 32 MiB of slack so a node that
    could not grow its filesystem still boots. Rounded up to a whole MiB.

    >>> image_size_for(0, 0) % (1024 * 1024)
    0
    """
    data = data_blocks * BLOCK_SIZE
    inode_table = inode_count_for(inodes) * 256
    fs_bytes = int((data + inode_table) * 1.05) + 16 * MIB + 32 * MIB
    total = PARTITION_OFFSET + fs_bytes
    return -(-total // MIB) * MIB


def mbr_sector(boot_code: bytes, start_lba: int, sectors: int) -> bytes:
    """Sector 0: boot code, one bootable type-0x83 partition, the 0x55AA signature.

    CHS fields are filled the classic way (255 heads, 63 sectors, clamped at 1023/254/63)
    because some BIOSes still look at them; everything modern uses the LBA fields.
    """
    if len(boot_code) > MBR_BOOT_CODE_BYTES:
        boot_code = boot_code[:MBR_BOOT_CODE_BYTES]
    if start_lba <= 0 or sectors <= 0 or start_lba + sectors > 2**32:
        raise ImageBuildError(f"partition {start_lba}+{sectors} does not fit an MBR")
    entry = (bytes([0x80]) + _chs(start_lba) + bytes([0x83]) + _chs(start_lba + sectors - 1)
             + start_lba.to_bytes(4, "little") + sectors.to_bytes(4, "little"))
    sector = bytearray(SECTOR)
    sector[:len(boot_code)] = boot_code
    sector[446:462] = entry
    sector[510:512] = b"\x55\xaa"
    return bytes(sector)


def _chs(lba: int) -> bytes:
    heads, spt = 255, 63
    cyl, rem = divmod(lba, heads * spt)
    head, sec = divmod(rem, spt)
    if cyl > 1023:
        cyl, head, sec = 1023, 254, 62
    return bytes([head, ((cyl >> 2) & 0xC0) | (sec + 1), cyl & 0xFF])


def extlinux_conf(kernel: str, initrd: str | None, fs_uuid: str,
                  extra_args: str = "") -> str:
    """The boot menu of the installed node: no prompt, serial console, root by UUID.

    By UUID because the node's disk may be vda, sda or nvme0n1; the initramfs-tools initrd of
    the cloud kernel resolves it (virtio_blk is a module, so the initrd is needed anyway).
    """
    # quiet: every console byte is a device exit under TCG; systemd still reports failures.
    append = f"root=UUID={fs_uuid} ro console=ttyS0,115200n8 quiet"
    if extra_args:
        append += " " + extra_args
    lines = ["# Written by metalchain's disk image build.", "SERIAL 0 115200", "DEFAULT linux",
             "PROMPT 0", "", "LABEL linux", f"    LINUX {kernel}"]
    if initrd:
        lines.append(f"    INITRD {initrd}")
    lines.append(f"    APPEND {append}")
    return "\n".join(lines) + "\n"


def fstab(fs_uuid: str) -> str:
    return ("# Written by metalchain's disk image build.\n"
            f"UUID={fs_uuid} / ext4 errors=remount-ro 0 1\n")


def sha256_line(digest: str, filename: str) -> str:
    """The ``sha256sum`` format the contract names: ``HEX  NAME.raw``."""
    return f"{digest}  {filename}\n"


def find_kernel(rootfs: Path) -> tuple[str, str | None]:
    """Paths (absolute inside the rootfs) of the newest cloud kernel and its initrd."""
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"), key=lambda p: _version_key(p.name))
    if not kernels:
        raise ImageBuildError(f"no kernel in {rootfs / 'boot'}")
    kernel = kernels[-1]
    version = kernel.name.removeprefix("vmlinuz-")
    initrd = rootfs / "boot" / f"initrd.img-{version}"
    return f"/boot/{kernel.name}", (f"/boot/{initrd.name}" if initrd.is_file() else None)


def _version_key(name: str) -> list[int | str]:
    parts: list[int | str] = []
    for token in name.replace("-", ".").split("."):
        parts.append(int(token) if token.isdigit() else token)
    return parts


def tree_usage(root: Path) -> tuple[int, int]:
    """(4 KiB blocks the files and directories need, number of inodes) of a tree."""
    blocks = 0
    inodes = 0
    for dirpath, dirs, files in os.walk(root):
        inodes += 1
        blocks += 1
        for name in files + [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]:
            inodes += 1
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(dirpath, name))
                # Short symlinks live in the inode; everything else takes whole blocks.
                if st.st_size > 60 or not os.path.islink(os.path.join(dirpath, name)):
                    blocks += -(-st.st_size // BLOCK_SIZE)
    return blocks, inodes


def ensure_disk_image(images_dir: Path, golden: GoldenImage | None = None, *,
                      spec: ImageSpec | None = None, cache_dir: Path | None = None,
                      name: str | None = None,
                      timeout: float = BUILD_TIMEOUT_S) -> DiskImage:
    """Return the raw image for the golden image, building and caching it first if needed.

    The image is published as ``<images_dir>/<name>.raw`` (a hard link to the cache when it
    is on the same filesystem, a copy otherwise) plus ``<name>.raw.sha256``. ``name``
    defaults to ``metalchain-<key>`` so a rebuilt image gets a new URL and no node ever
    streams a file that changes under it.

    Example::

        image = ensure_disk_image(Path("/srv/metalchain/images"))
        # -> DiskImage(name='metalchain-3f0c...', path=.../metalchain-3f0c....raw, sha256=...)
    """
    golden = golden or ensure_image(spec, cache_dir)
    cache = golden.path.parent
    key = disk_image_key(golden.path.name)
    name = name or f"metalchain-{key}"
    raw = cache / f"{key}.raw"
    info = _cached(raw)
    seconds = None
    if info is None:
        with file_lock(cache / f"{key}.raw.lock", LOCK_TIMEOUT_S, ImageBuildError):
            info = _cached(raw)
            if info is None:
                for stale in cache.glob(f"{key}.raw.tmp-*"):
                    stale.unlink(missing_ok=True)
                info = _build(golden, raw, timeout=timeout)
                seconds = float(info["build_seconds"])
    return publish_image(raw, info, Path(images_dir), name, seconds)


def _cached(raw: Path) -> dict[str, object] | None:
    info_file = raw.with_name(raw.name + ".json")
    try:
        info = json.loads(info_file.read_text(encoding="utf-8"))
        if raw.stat().st_size != info["size"]:
            return None
    except (OSError, ValueError, KeyError):
        return None
    return dict(info)


def _build(golden: GoldenImage, raw: Path, *, timeout: float) -> dict[str, object]:
    started = time.monotonic()
    deadline = started + timeout
    rootfs = golden.rootfs
    kernel, initrd = find_kernel(rootfs)
    blocks, inodes = tree_usage(rootfs)
    size = image_size_for(blocks, inodes)
    fs_uuid = str(uuid.uuid4())
    fd, tmp_name = tempfile.mkstemp(prefix=f"{raw.name}.tmp-", dir=raw.parent)
    tmp = Path(tmp_name)
    try:
        os.ftruncate(fd, size)
        os.close(fd)
        fd = -1
        fs_blocks = (size - PARTITION_OFFSET) // BLOCK_SIZE
        _run(["mke2fs", "-q", "-F", "-t", "ext4", "-b", str(BLOCK_SIZE), "-L", "root",
              "-U", fs_uuid, "-N", str(inode_count_for(inodes)),
              "-E", f"offset={PARTITION_OFFSET}", "-d", str(rootfs), str(tmp),
              str(fs_blocks)], deadline, "mke2fs")
        boot_code = SYSLINUX_MBR.read_bytes()
        with open(tmp, "r+b") as image:
            image.write(mbr_sector(boot_code, PARTITION_OFFSET // SECTOR,
                                   (size - PARTITION_OFFSET) // SECTOR))
        install_bootloader(tmp, extlinux_conf(kernel, initrd, fs_uuid), fstab(fs_uuid),
                            deadline)
        # A check after the bootloader mount: the installer's resize2fs then sees a
        # filesystem checked after its last mount, and a broken build never gets cached.
        _run(["e2fsck", "-fn", f"{tmp}?offset={PARTITION_OFFSET}"], deadline, "e2fsck")
        digest = _sha256(tmp)
        info: dict[str, object] = {
            "key": raw.stem, "golden": golden.path.name, "build_version": BUILD_VERSION,
            "size": size, "sha256": digest, "fs_uuid": fs_uuid, "kernel": kernel,
            "initrd": initrd, "build_seconds": round(time.monotonic() - started, 1),
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        os.rename(tmp, raw)
        write_json(raw.with_name(raw.name + ".json"), info)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    return info


def install_bootloader(image: Path, conf: str, fstab_text: str, deadline: float) -> None:
    with tempfile.TemporaryDirectory(prefix="mc-diskimage-") as work:
        mnt = Path(work, "mnt")
        overlay = Path(work, "overlay")
        mnt.mkdir()
        (overlay / "boot/extlinux").mkdir(parents=True)
        (overlay / "etc").mkdir()
        (overlay / "boot/extlinux/extlinux.conf").write_text(conf, encoding="utf-8")
        (overlay / "etc/fstab").write_text(fstab_text, encoding="utf-8")
        for path in (overlay, overlay / "boot", overlay / "boot/extlinux", overlay / "etc"):
            path.chmod(0o755)
        argv = ["unshare", "--mount", "--propagation", "private", "--fork", "--kill-child",
                "--", "sh", "-c", _BOOTLOADER_SCRIPT, "sh", str(image),
                str(PARTITION_OFFSET), str(mnt), str(overlay), " ".join(UNMASK_UNITS)]
        _run(argv, deadline, "extlinux install")


def _run(argv: list[str], deadline: float, what: str) -> None:
    process.run(argv, timeout=deadline - time.monotonic(), text=False, error=ImageBuildError,
                what=f"disk image build: {what}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def publish_image(raw: Path, info: dict[str, object], images_dir: Path, name: str,
                  seconds: float | None, suffix: str = ".raw") -> DiskImage:
    """Put ``<name><suffix>`` and its checksum into the served directory, atomically each.

    ``info`` is the build's provenance (``size``, ``sha256``, ``fs_uuid``); the file is a hard
    link to ``raw`` when the cache is on the same filesystem, a sparse copy otherwise.
    """
    images_dir.mkdir(parents=True, exist_ok=True)
    target = images_dir / f"{name}{suffix}"
    size = int(str(info["size"]))
    digest = str(info["sha256"])
    if not (target.is_file() and _same_file(target, raw, size)):
        tmp = images_dir / f".{name}{suffix}.tmp-{os.getpid()}"
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(raw, tmp)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise
                _copy_sparse(raw, tmp)
            os.chmod(tmp, 0o644)
            os.rename(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    write_atomic(images_dir / f"{name}{suffix}.sha256", sha256_line(digest, target.name))
    return DiskImage(name=name, path=target, sha256=digest, size=size,
                     fs_uuid=str(info["fs_uuid"]), build_seconds=seconds)


def _same_file(a: Path, b: Path, size: int) -> bool:
    sa, sb = a.stat(), b.stat()
    return (sa.st_ino, sa.st_dev) == (sb.st_ino, sb.st_dev) or (
        sa.st_size == size and sa.st_mtime >= sb.st_mtime)


def _copy_sparse(src: Path, dst: Path) -> None:
    # Free space in the image is zeros: skip them so the copy stays sparse on disk.
    zero = bytes(HASH_CHUNK)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(HASH_CHUNK):
            if chunk == zero[:len(chunk)]:
                fout.seek(len(chunk), os.SEEK_CUR)
            else:
                fout.write(chunk)
        fout.truncate()
