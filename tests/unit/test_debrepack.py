"""The ar side of recompressing a .deb (configure/debrepack.py): members read back as they
were written, headers keep their fields, malformed archives are refused, and only xz trees
are recompressed (a gzip one is copied byte for byte, without calling zstd)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from configure.debrepack import (
    AR_MAGIC,
    RepackError,
    header,
    needs_repack,
    read_members,
    repack_zstd,
)

pytestmark = pytest.mark.unit

FIELDS = b"1779741869  0     0     100644  "


def ar(*members: tuple[str, bytes]) -> bytes:
    out = io.BytesIO()
    out.write(AR_MAGIC)
    for name, data in members:
        out.write(header(name, FIELDS, len(data)) + data + (b"\n" if len(data) % 2 else b""))
    return out.getvalue()


def test_members_read_back_with_offsets_sizes_and_odd_padding():
    blob = ar(("debian-binary", b"2.0\n"), ("control.tar.xz", b"abc"), ("data.tar.xz", b"xyz!"))
    members = read_members(io.BytesIO(blob))
    assert [(m.name, m.size) for m in members] == [
        ("debian-binary", 4), ("control.tar.xz", 3), ("data.tar.xz", 4)]
    assert all(m.fields == FIELDS for m in members)
    assert [blob[m.offset:m.offset + m.size] for m in members] == [b"2.0\n", b"abc", b"xyz!"]


def test_gnu_style_names_with_a_slash_are_read_too():
    blob = AR_MAGIC + b"data.tar.xz/".ljust(16) + FIELDS + b"2".ljust(10) + b"`\nok"
    assert read_members(io.BytesIO(blob))[0].name == "data.tar.xz"


@pytest.mark.parametrize("blob", [b"PK\x03\x04 not ar", AR_MAGIC + b"short header",
                                  AR_MAGIC + b"x".ljust(16) + FIELDS + b"zz".ljust(10) + b"`\n"])
def test_malformed_archives_are_refused(blob):
    with pytest.raises(RepackError):
        read_members(io.BytesIO(blob))


def test_a_name_too_long_for_ar_is_refused():
    with pytest.raises(RepackError):
        header("data.tar.zst-and-more", FIELDS, 1)


def test_a_gzip_tree_is_copied_unchanged_and_zstd_never_runs(tmp_path: Path):
    src = tmp_path / "p.deb"
    src.write_bytes(ar(("debian-binary", b"2.0\n"), ("control.tar.gz", b"c"),
                       ("data.tar.gz", b"gz-data")))
    assert not needs_repack(src)

    def runner(*args):
        raise AssertionError(f"zstd called: {args}")

    dest = tmp_path / "out.deb"
    repack_zstd(src, dest, timeout=5, runner=runner)
    assert dest.read_bytes() == src.read_bytes()


def test_unexpected_members_are_refused(tmp_path: Path):
    src = tmp_path / "p.deb"
    src.write_bytes(ar(("debian-binary", b"2.0\n"), ("data.tar.xz", b"x")))
    with pytest.raises(RepackError, match="unexpected members"):
        repack_zstd(src, tmp_path / "o.deb", timeout=5, runner=lambda *a: "")
