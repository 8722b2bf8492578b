"""Recompressing a .deb's file tree from xz to zstd, for the site's mirror.

Debian compresses most packages' ``data.tar`` with xz, whose decompression is the slowest part
of unpacking on an emulated lab node (measured: qemu-system-x86's 44 MB tree takes 1.07 s to
un-xz and 0.10 s to un-zstd natively, and ~10-20x as long under TCG; the whole closure of the
hypervisor role, 216 MB, 5.1 s natively). dpkg has read ``data.tar.zst`` since Debian 12.

Only the compression changes: ``debian-binary`` and the control member are copied byte for
byte, the ar headers keep their fields (time, owner, mode), and the tar stream inside is the
very same (checked: its SHA-256 before and after). The package's identity is unchanged; what
the hosts verify is the mirror's own signed index, which lists the new file's hash.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from inventory.errors import MetalchainError

AR_MAGIC = b"!<arch>\n"
HEADER_SIZE = 60
ZSTD_LEVEL = 9
CHUNK = 1 << 20

Runner = Callable[[Sequence[str], float, Path | None, Mapping[str, str] | None], str]


class RepackError(MetalchainError):
    """A .deb that is not what it should be, or a recompression that failed."""


@dataclass(frozen=True)
class Member:
    """One member of an ar archive: its name, the raw header fields after the name
    (mtime, uid, gid, mode: kept as they were), and where its data is in the file."""

    name: str
    fields: bytes        # header bytes 16..48
    offset: int
    size: int


def read_members(fh: BinaryIO) -> list[Member]:
    """The members of the ar archive open in ``fh`` (a .deb)."""
    fh.seek(0)
    if fh.read(len(AR_MAGIC)) != AR_MAGIC:
        raise RepackError("not an ar archive (no !<arch> magic)")
    members = []
    while True:
        header = fh.read(HEADER_SIZE)
        if not header:
            return members
        if len(header) != HEADER_SIZE or header[58:60] != b"`\n":
            raise RepackError("truncated or malformed ar header")
        name = header[:16].decode("ascii", "replace").rstrip(" ").rstrip("/")
        try:
            size = int(header[48:58].decode("ascii").strip())
        except ValueError:
            raise RepackError(f"ar member {name!r}: bad size field") from None
        offset = fh.tell()
        members.append(Member(name, header[16:48], offset, size))
        fh.seek(offset + size + (size % 2))


def header(name: str, fields: bytes, size: int) -> bytes:
    """An ar member header: ``name`` padded to 16, the kept fields, the new size."""
    raw = name.encode("ascii")
    if len(raw) > 16 or len(fields) != 32:
        raise RepackError(f"ar member name too long: {name!r}")
    return raw.ljust(16) + fields + str(size).encode("ascii").ljust(10) + b"`\n"


def _copy(src: BinaryIO, dst: BinaryIO, size: int, digest: Any = None) -> None:
    left = size
    while left:
        chunk = src.read(min(CHUNK, left))
        if not chunk:
            raise RepackError("ar member ends early")
        if digest is not None:
            digest.update(chunk)
        dst.write(chunk)
        left -= len(chunk)


def needs_repack(src: Path) -> bool:
    """Is ``src``'s file tree xz-compressed (the only case recompressed)?"""
    with src.open("rb") as fh:
        return any(m.name == "data.tar.xz" for m in read_members(fh))


def repack_zstd(src: Path, dest: Path, *, timeout: float, runner: Runner,
                level: int = ZSTD_LEVEL) -> None:
    """Write ``src`` to ``dest`` with its ``data.tar.xz`` recompressed as ``data.tar.zst``
    (``zstd`` runs through ``runner`` with ``timeout``). ``dest`` appears whole or not at all.
    A package whose tree is not xz-compressed is copied unchanged."""
    with tempfile.TemporaryDirectory(prefix=".repack-", dir=dest.parent) as tmp:
        work = Path(tmp)
        with src.open("rb") as fh:
            members = read_members(fh)
            names = [m.name for m in members]
            if len(names) != 3 or names[0] != "debian-binary" or \
                    not names[1].startswith("control.tar") or not names[2].startswith("data.tar"):
                raise RepackError(f"{src.name}: unexpected members {names}")
            data = members[2]
            if data.name != "data.tar.xz":
                out = work / "copy.deb"
                with out.open("wb") as dst:
                    fh.seek(0)
                    _copy(fh, dst, src.stat().st_size)
                os.replace(out, dest)
                return
            tar = work / "data.tar"
            tar_digest = hashlib.sha256()
            fh.seek(data.offset)
            packed = work / "data.tar.xz"
            with packed.open("wb") as dst:
                _copy(fh, dst, data.size)
            try:
                with lzma.open(packed, "rb") as xz, tar.open("wb") as dst:
                    for chunk in iter(lambda: xz.read(CHUNK), b""):
                        tar_digest.update(chunk)
                        dst.write(chunk)
            except lzma.LZMAError as exc:
                raise RepackError(f"{src.name}: data.tar.xz does not decompress: {exc}") \
                    from None
            packed.unlink()
            zst = work / "data.tar.zst"
            runner(["zstd", "-q", f"-{level}", "--no-progress", "-f", "-o", str(zst), "--",
                    str(tar)], timeout, None, None)
            tar.unlink()
            check = _zstd_sha256(zst, timeout, runner, work)
            if check != tar_digest.hexdigest():
                raise RepackError(f"{src.name}: the recompressed tree differs from the original")
            out = work / "out.deb"
            with out.open("wb") as dst:
                dst.write(AR_MAGIC)
                for m in members[:2]:
                    dst.write(header(m.name, m.fields, m.size))
                    fh.seek(m.offset)
                    _copy(fh, dst, m.size)
                    if m.size % 2:
                        dst.write(b"\n")
                size = zst.stat().st_size
                dst.write(header("data.tar.zst", data.fields, size))
                with zst.open("rb") as zfh:
                    _copy(zfh, dst, size)
                if size % 2:
                    dst.write(b"\n")
        os.replace(out, dest)


def _zstd_sha256(zst: Path, timeout: float, runner: Runner, work: Path) -> str:
    """SHA-256 of what ``zstd -d`` makes of ``zst`` (decompressed to a file, then hashed)."""
    back = work / "check.tar"
    runner(["zstd", "-q", "-d", "--no-progress", "-f", "-o", str(back), "--", str(zst)],
           timeout, None, None)
    digest = hashlib.sha256()
    try:
        with back.open("rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK), b""):
                digest.update(chunk)
        return digest.hexdigest()
    finally:
        back.unlink()
