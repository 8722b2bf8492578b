"""Source lines, the manifest, and build_mirror's incremental/atomic logic with a fake apt."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import ClassVar

import pytest

import configure.mirror as mirror
from configure.mirror import (
    MirrorInfo,
    ResolvedPackage,
    build_mirror,
    read_mirror,
    render_source_line,
)
from inventory.errors import InputError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("url", "signed", "want"), [
    ("http://10.77.0.1:8081/", True,
     "deb [signed-by=/etc/apt/keyrings/metalchain-mirror.gpg] http://10.77.0.1:8081/ ./"),
    ("http://10.77.0.1:8081", False, "deb [trusted=yes] http://10.77.0.1:8081/ ./"),
])
def test_source_line(url, signed, want):
    assert render_source_line(url, signed=signed) == want


def test_source_line_ipv6():
    info = MirrorInfo(root=Path("/m"), requested=["a"], resolved=[], signed=False,
                      fingerprint=None, built_at="t", size_bytes=0)
    assert info.source_line("fd00::1", 8081) == "deb [trusted=yes] http://[fd00::1]:8081/ ./"
    assert info.keyring is None


def test_manifest_round_trip(tmp_path):
    pkg = ResolvedPackage("a", "1:1.0", "all", "a_1.0_all.deb", "aa", 3)
    info = MirrorInfo(root=tmp_path, requested=["a"], resolved=[pkg], signed=True,
                      fingerprint="F" * 40, built_at="2025-01-01T00:00:00+00:00",
                      size_bytes=10, downloaded=["a_1.0_all.deb"])
    doc = info.to_manifest()
    assert doc["manifest_version"] == 1
    assert doc["packages"] == [{"package": "a", "version": "1:1.0", "architecture": "all",
                                "filename": "a_1.0_all.deb", "sha256": "aa", "size": 3}]
    back = MirrorInfo.from_manifest(tmp_path, json.loads(json.dumps(doc)))
    assert back.resolved == [pkg] and back.signed and back.keyring == tmp_path / \
        "metalchain-mirror.gpg"
    with pytest.raises(mirror.MirrorError, match="manifest"):
        MirrorInfo.from_manifest(tmp_path, {"requested": []})


class FakeApt:
    """Stands in for apt-cache, apt-get and apt-ftparchive: a tiny archive of three packages."""

    DEPENDS: ClassVar[dict[str, str]] = {"aa": "aa\n  Depends: cc\ncc\n",
                                         "bb": "bb\n  Depends: cc\ncc\n"}

    def __init__(self) -> None:
        self.downloads: list[list[str]] = []
        self.version = "1.0"

    def content(self, name: str) -> bytes:
        return f"{name} {self.version}".encode()

    def fname(self, name: str) -> str:
        return f"{name}_{self.version}_all.deb"

    def __call__(self, argv, timeout, cwd=None, env=None) -> str:
        assert timeout > 0
        argv = list(argv)
        if argv[:2] == ["apt-get", "-q"] and argv[2] == "update":
            return ""
        if argv[:2] == ["apt-cache", "depends"]:
            return "".join(self.DEPENDS[n] for n in argv[2:] if not n.startswith("--"))
        if "--print-uris" in argv:
            return "".join(
                f"'http://deb/{self.fname(n)}' {self.fname(n)} {len(self.content(n))} "
                f"SHA256:{hashlib.sha256(self.content(n)).hexdigest()}\n"
                for n in argv[argv.index("--print-uris") + 1:])
        if "download" in argv:
            names = argv[argv.index("download") + 1:]
            self.downloads.append(names)
            for n in names:
                (Path(cwd) / self.fname(n)).write_bytes(self.content(n))
            return ""
        if argv[0] == "apt-ftparchive" and argv[1] == "packages":
            return "\n".join(
                f"Package: {p.name.split('_')[0]}\nVersion: {self.version}\nArchitecture: all\n"
                f"Filename: ./{p.name}\nSize: {p.stat().st_size}\n"
                f"SHA256: {hashlib.sha256(p.read_bytes()).hexdigest()}\n"
                for p in sorted(Path(cwd).glob("*.deb")))
        if argv[0] == "apt-ftparchive" and "release" in argv:
            return f"Origin: metalchain\nPackages: {(Path(cwd) / 'Packages').read_text()}\n"
        raise AssertionError(f"unexpected command {argv}")


@pytest.fixture
def fake_apt(monkeypatch):
    monkeypatch.setattr(mirror, "_lists_present", lambda *a: True)
    return FakeApt()


def test_build_is_incremental_and_idempotent(tmp_path, fake_apt):
    out, cache = tmp_path / "mirror", tmp_path / "cache"
    first = build_mirror(["aa"], out, sign=False, cache_dir=cache, runner=fake_apt)
    assert first.changed and sorted(first.downloaded) == ["aa_1.0_all.deb", "cc_1.0_all.deb"]
    assert [p.package for p in first.resolved] == ["aa", "cc"]
    assert (out / "current").is_symlink() and (out / "current" / "Packages.gz").is_file()
    assert read_mirror(out).resolved == first.resolved

    again = build_mirror(["aa"], out, sign=False, cache_dir=cache, runner=fake_apt)
    assert not again.changed and again.downloaded == [] and again.root == first.root
    assert fake_apt.downloads == [["aa", "cc"]]

    more = build_mirror(["aa", "bb"], out, sign=False, cache_dir=cache, runner=fake_apt)
    assert more.changed and more.downloaded == ["bb_1.0_all.deb"] and more.reused == 2
    assert fake_apt.downloads[-1] == ["bb"]
    assert (out / "current").resolve() == more.root
    manifest = json.loads((more.root / "manifest.json").read_text())
    assert [p["package"] for p in manifest["packages"]] == ["aa", "bb", "cc"]
    # The previous release stays for hosts mid-update; older ones are pruned.
    assert sorted(p.name for p in (out / "releases").iterdir()) == sorted(
        [first.root.name, more.root.name])

    fake_apt.version = "2.0"
    newer = build_mirror(["aa", "bb"], out, sign=False, cache_dir=cache, runner=fake_apt)
    assert sorted(p.name for p in (out / "releases").iterdir()) == sorted(
        [more.root.name, newer.root.name])
    assert not any(p.name.startswith(".") for p in (out / "releases").iterdir())


def test_corrupt_cache_file_is_fetched_again(tmp_path, fake_apt):
    out, cache = tmp_path / "mirror", tmp_path / "cache"
    build_mirror(["aa"], out, sign=False, cache_dir=cache, runner=fake_apt)
    (cache / "cc_1.0_all.deb").write_bytes(b"truncated")
    build_mirror(["bb"], out, sign=False, cache_dir=cache, runner=fake_apt)
    assert fake_apt.downloads[-1] == ["bb", "cc"]


def test_failed_build_keeps_the_served_mirror(tmp_path, fake_apt):
    out, cache = tmp_path / "mirror", tmp_path / "cache"
    good = build_mirror(["aa"], out, sign=False, cache_dir=cache, runner=fake_apt)

    def broken(argv, timeout, cwd=None, env=None):
        if argv[0] == "apt-ftparchive":
            raise mirror.MirrorError("apt-ftparchive exploded")
        return fake_apt(argv, timeout, cwd, env)

    with pytest.raises(mirror.MirrorError, match="exploded"):
        build_mirror(["aa", "bb"], out, sign=False, cache_dir=cache, runner=broken)
    assert (out / "current").resolve() == good.root
    assert [p.name for p in (out / "releases").iterdir()] == [good.root.name]


def test_signing_needs_a_keyring_home(tmp_path, fake_apt):
    with pytest.raises(InputError, match="gnupg_home"):
        build_mirror(["aa"], tmp_path / "m", sign=True, cache_dir=tmp_path, runner=fake_apt)


def test_compression_is_part_of_what_makes_a_mirror_the_same(tmp_path, fake_apt):
    out, cache = tmp_path / "mirror", tmp_path / "cache"
    kept = build_mirror(["aa"], out, sign=False, cache_dir=cache, runner=fake_apt)
    assert kept.compression == "keep"
    assert kept.sources == {"aa_1.0_all.deb": hashlib.sha256(b"aa 1.0").hexdigest(),
                            "cc_1.0_all.deb": hashlib.sha256(b"cc 1.0").hexdigest()}
    assert read_mirror(out).sources == kept.sources
    # The fake packages are no ar archives: asking for zstd rebuilds, and refuses them.
    with pytest.raises(mirror.MirrorError, match=r"aa_1\.0_all\.deb: not an ar archive"):
        build_mirror(["aa"], out, sign=False, cache_dir=cache, runner=fake_apt,
                     compression="zstd")
    with pytest.raises(InputError, match="compression must be one of"):
        build_mirror(["aa"], out, sign=False, cache_dir=cache, runner=fake_apt,
                     compression="lz4")


def test_a_manifest_from_before_compression_reads_as_kept_files(tmp_path):
    doc = {"requested": ["aa"], "signed": False, "built_at": "x", "size_bytes": 1,
           "packages": [{"package": "aa", "version": "1", "architecture": "all",
                         "filename": "aa_1_all.deb", "sha256": "ab" * 32, "size": 1}]}
    info = MirrorInfo.from_manifest(tmp_path, doc)
    assert info.compression == "keep" and info.sources == {"aa_1_all.deb": "ab" * 32}
