"""The installer a node boots over the network: the golden image's kernel + a small initramfs.

Why the golden image's kernel: it is Debian's cloud kernel (LZ4-compressed, quick to unpack under
TCG, ext4 built in), and using the same build the node will run means the virtio modules we
take from the image's /lib/modules always match it.

Why our own initramfs rather than the image's (initramfs-tools, ~15 MB gzip, 50 MB unpacked):
the installer needs busybox, nine modules, sfdisk/e2fsck/resize2fs and its script -- ~5 MB,
uncompressed, because unpacking under TCG costs more than the bytes do over a LAN.

Output, in a directory the caller chooses (the boot server serves it at /installer/)::

    vmlinuz          the kernel
    initrd.img       the initramfs (newc cpio, uncompressed)
    installer.json   the cache key, kernel version, sizes, build time
    .lock            flock(2) target

The key hashes every input: the golden image key, BUILD_VERSION, the installer script, and the
host's busybox and tool binaries with their libraries. Each file is built under a temporary
name and renamed; installer.json is written last, so a reader that finds a matching key finds
the matching pair.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from provision.diskimage import ImageBuildError
from provision.image import GoldenImage, ImageSpec, ensure_image
from runtime import process
from runtime.filelock import file_lock
from runtime.jsondoc import content_key, write_json

# Bump whenever the initramfs layout or _build_tree() changes: it is part of the cache key.
BUILD_VERSION = 1

INIT_SCRIPT = Path(__file__).parent / "installer" / "init"

# The order insmod needs (no modprobe, no depmod: dependencies first). LAB-NOTES.
MODULES: tuple[str, ...] = (
    "virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci",
    "failover", "net_failover", "virtio_net", "virtio_blk",
)

BUSYBOX = Path("/bin/busybox")
# Host tools copied with their shared libraries. From the host, not the golden image:
# minbase has no sfdisk; the host's e2fsprogs made the filesystem, so its e2fsck knows it.
# openssl: its sha256 is ~1.4x faster than busybox's under TCG (measured, 476 MB: 11 s vs 15 s).
TOOLS: tuple[Path, ...] = (Path("/usr/sbin/sfdisk"), Path("/usr/sbin/e2fsck"),
                           Path("/usr/sbin/resize2fs"), Path("/usr/bin/openssl"))

BUILD_TIMEOUT_S = 120.0
LOCK_TIMEOUT_S = 300.0
CMD_TIMEOUT_S = 60.0

_LDD_LINE = re.compile(r"^\s*(?:\S+\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


@dataclass(frozen=True)
class Installer:
    """The installer's two files, ready to serve."""

    kernel: Path
    initrd: Path
    key: str
    kernel_version: str
    build_seconds: float | None = None  # None when it came from the cache


def parse_ldd(output: str) -> list[Path]:
    """Absolute library paths from ``ldd`` output; the vDSO (no path) is skipped.

    >>> parse_ldd("\\tlinux-vdso.so.1 (0x00007ff)\\n\\tlibc.so.6 => /lib/x/libc.so.6 (0x1)\\n")
    [PosixPath('/lib/x/libc.so.6')]
    """
    libs: list[Path] = []
    for line in output.splitlines():
        match = _LDD_LINE.match(line)
        if match:
            libs.append(Path(match.group(1)))
    return libs


def module_paths(modules_dir: Path, names: tuple[str, ...] = MODULES) -> list[Path]:
    """The .ko file of each module, in load order, from a ``lib/modules/<version>`` tree.

    Names in modules.dep use hyphens and underscores interchangeably; a module built into
    the kernel (listed in modules.builtin) is skipped.
    """
    by_name: dict[str, str] = {}
    dep = (modules_dir / "modules.dep").read_text(encoding="utf-8")
    for line in dep.splitlines():
        rel = line.split(":", 1)[0]
        base = rel.rsplit("/", 1)[-1]
        by_name[_module_name(base)] = rel
    builtin: set[str] = set()
    builtin_file = modules_dir / "modules.builtin"
    if builtin_file.is_file():
        for line in builtin_file.read_text(encoding="utf-8").splitlines():
            builtin.add(_module_name(line.rsplit("/", 1)[-1]))
    paths: list[Path] = []
    for name in names:
        key = name.replace("-", "_")
        if key in by_name:
            paths.append(modules_dir / by_name[key])
        elif key not in builtin:
            raise ImageBuildError(f"module {name} is neither in {modules_dir}/modules.dep "
                                 f"nor built in")
    return paths


def _module_name(filename: str) -> str:
    return filename.split(".ko", 1)[0].replace("-", "_")


def kernel_of(rootfs: Path) -> tuple[Path, str]:
    """The newest kernel in the rootfs's /boot with its version string."""
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"),
                     key=lambda p: [int(t) if t.isdigit() else t
                                    for t in re.split(r"[.-]", p.name)])
    if not kernels:
        raise ImageBuildError(f"no kernel in {rootfs / 'boot'}")
    return kernels[-1], kernels[-1].name.removeprefix("vmlinuz-")


def installer_key(golden_key: str, digests: dict[str, str],
                  build_version: int = BUILD_VERSION) -> str:
    """The cache key: every input file's digest, by name, plus the golden key and version."""
    doc = {"golden": golden_key, "build_version": build_version, "files": digests}
    return content_key(doc)


def ensure_installer(out_dir: Path, golden: GoldenImage | None = None, *,
                     spec: ImageSpec | None = None, cache_dir: Path | None = None,
                     init_script: Path = INIT_SCRIPT,
                     timeout: float = BUILD_TIMEOUT_S) -> Installer:
    """Return the installer in ``out_dir``, building it first if any input changed.

    Example::

        inst = ensure_installer(Path("/srv/metalchain/installer"))
        # inst.kernel -> .../vmlinuz, inst.initrd -> .../initrd.img
    """
    golden = golden or ensure_image(spec, cache_dir)
    out_dir = Path(out_dir)
    kernel, version = kernel_of(golden.rootfs)
    modules = module_paths(golden.rootfs / "lib/modules" / version)
    host_files = _host_files(timeout=CMD_TIMEOUT_S)
    digests = {str(p): file_digest(p) for p in (init_script, *host_files)}
    digests["kernel"] = file_digest(kernel)
    key = installer_key(golden.path.name, digests)
    found = _cached(out_dir, key, version)
    if found:
        return found
    out_dir.mkdir(parents=True, exist_ok=True)
    with file_lock(out_dir / ".lock", LOCK_TIMEOUT_S, ImageBuildError):
        found = _cached(out_dir, key, version)
        if found:
            return found
        started = time.monotonic()
        deadline = started + timeout
        with tempfile.TemporaryDirectory(prefix=".build-", dir=out_dir) as work:
            tree = Path(work, "tree")
            _build_tree(tree, init_script, modules, host_files)
            initrd_tmp = Path(work, "initrd.img")
            write_cpio(tree, initrd_tmp, deadline)
            kernel_tmp = Path(work, "vmlinuz")
            shutil.copyfile(kernel, kernel_tmp)
            for tmp in (kernel_tmp, initrd_tmp):
                tmp.chmod(0o644)
                os.replace(tmp, out_dir / tmp.name)
        seconds = round(time.monotonic() - started, 2)
        info = {"key": key, "kernel_version": version, "golden": golden.path.name,
                "kernel_bytes": (out_dir / "vmlinuz").stat().st_size,
                "initrd_bytes": (out_dir / "initrd.img").stat().st_size,
                "build_seconds": seconds,
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        write_json(out_dir / "installer.json", info)
    return Installer(kernel=out_dir / "vmlinuz", initrd=out_dir / "initrd.img", key=key,
                     kernel_version=version, build_seconds=seconds)


def _cached(out_dir: Path, key: str, version: str) -> Installer | None:
    try:
        info = json.loads((out_dir / "installer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("key") != key:
        return None
    kernel, initrd = out_dir / "vmlinuz", out_dir / "initrd.img"
    try:
        if (kernel.stat().st_size != info["kernel_bytes"]
                or initrd.stat().st_size != info["initrd_bytes"]):
            return None
    except (OSError, KeyError):
        return None
    return Installer(kernel=kernel, initrd=initrd, key=key, kernel_version=version)


def _host_files(*, timeout: float) -> list[Path]:
    """busybox, the tools, and every library they load (with the dynamic loader)."""
    for tool in TOOLS:
        if not tool.is_file():
            raise ImageBuildError(f"{tool} is missing on this host "
                                  f"(packages fdisk, e2fsprogs, openssl)")
    if not BUSYBOX.is_file():
        raise ImageBuildError(f"{BUSYBOX} is missing on this host (package busybox-static)")
    return [BUSYBOX, *with_libraries(TOOLS, timeout=timeout)]


def with_libraries(binaries: tuple[Path, ...] | list[Path], *, timeout: float) -> list[Path]:
    """The binaries followed by every shared library they load (``ldd``), each once."""
    files: list[Path] = list(binaries)
    for binary in binaries:
        proc = process.run(["ldd", str(binary)], timeout=timeout, error=ImageBuildError)
        for lib in parse_ldd(proc.stdout):
            if lib not in files:
                files.append(lib)
    return files


def _build_tree(tree: Path, init_script: Path, modules: list[Path],
                host_files: list[Path]) -> None:
    for sub in ("bin", "dev", "proc", "sys", "tmp", "run", "mnt", "etc", "lib/modules",
                "usr/sbin"):
        (tree / sub).mkdir(parents=True, exist_ok=True)
    (tree / "tmp").chmod(0o1777)
    # The kernel opens /dev/console for init before /init can mount devtmpfs.
    os.mknod(tree / "dev/console", 0o600 | stat.S_IFCHR, os.makedev(5, 1))
    shutil.copyfile(init_script, tree / "init")
    (tree / "init").chmod(0o755)
    for module in modules:
        shutil.copyfile(module, tree / "lib/modules" / module.name)
    for src in host_files:
        # Same path as on the host (the loader path is baked into the binaries), real file
        # content instead of a symlink chain.
        dst = tree / src.relative_to("/")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src.resolve(), dst)
        dst.chmod(0o755)
    (tree / "bin/sh").symlink_to("busybox")
    # The loader path is /lib64/...; on merged-/usr hosts ldd may report either spelling.
    if (tree / "usr/lib64").exists() and not (tree / "lib64").exists():
        (tree / "lib64").symlink_to("usr/lib64")


def write_cpio(tree: Path, out: Path, deadline: float) -> None:
    """newc archive of the tree, entries sorted, owned by root: reproducible for a given tree."""
    names = sorted(str(p.relative_to(tree)) for p in tree.rglob("*"))
    listing = ("\n".join(names) + "\n").encode()
    if shutil.which("cpio"):
        argv = ["cpio", "--quiet", "-o", "-H", "newc", "-R", "0:0", "--reproducible"]
    else:
        argv = ["busybox", "cpio", "-o", "-H", "newc"]
    with open(out, "wb") as archive:
        process.run(argv, input=listing, stdout=archive, text=False, cwd=tree,
                    timeout=deadline - time.monotonic(), error=ImageBuildError,
                    what="installer build: cpio")


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()
