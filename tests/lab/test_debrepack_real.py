"""A real .deb (built here with dpkg-deb, xz-compressed) recompressed to zstd: dpkg-deb reads
the result, its file tree is byte-for-byte the original's, its control member is untouched,
and dpkg installs it into a scratch root. Seconds; runs dpkg-deb, zstd and dpkg."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from configure.debrepack import needs_repack, read_members, repack_zstd
from configure.mirror import run_command

pytestmark = pytest.mark.lab


def run(*argv: str | Path) -> bytes:
    return subprocess.run([str(a) for a in argv], check=True, capture_output=True,
                          timeout=60).stdout


@pytest.fixture
def deb(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(
        "Package: mc-repack-test\nVersion: 1.0\nArchitecture: all\n"
        "Maintainer: metalchain <t@metalchain.invalid>\nDescription: a test\n")
    (tree / "usr" / "share" / "mc").mkdir(parents=True)
    (tree / "usr" / "share" / "mc" / "data").write_bytes(bytes(range(256)) * 4096)
    (tree / "usr" / "share" / "mc" / "odd").write_text("x")
    out = tmp_path / "mc-repack-test_1.0_all.deb"
    run("dpkg-deb", "--root-owner-group", "-Zxz", "-b", tree, out)
    return out


def test_recompressed_deb_has_the_same_tree_and_installs(deb: Path, tmp_path: Path):
    assert needs_repack(deb)
    dest = tmp_path / "repacked.deb"
    repack_zstd(deb, dest, timeout=60, runner=run_command)
    with dest.open("rb") as fh:
        names = [m.name for m in read_members(fh)]
    assert names[2] == "data.tar.zst" and not needs_repack(dest)
    assert run("dpkg-deb", "--fsys-tarfile", dest) == run("dpkg-deb", "--fsys-tarfile", deb)
    assert run("dpkg-deb", "--ctrl-tarfile", dest) == run("dpkg-deb", "--ctrl-tarfile", deb)
    root = tmp_path / "root"
    (root / "var" / "lib" / "dpkg" / "updates").mkdir(parents=True)
    (root / "var" / "lib" / "dpkg" / "status").write_text("")
    run("dpkg", "--root", root, "--force-script-chrootless", "--force-not-root", "-i", dest)
    assert (root / "usr" / "share" / "mc" / "data").read_bytes() == bytes(range(256)) * 4096
