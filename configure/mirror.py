"""The local package mirror: an apt repository built on the controller and served to hosts.

Lab and datacenter hosts have no internet; every package they install comes from this mirror
(Spacewalk's job). ``build_mirror`` resolves the requested Debian packages and their whole
dependency closure with ``apt-cache depends --recurse``, fetches the ``.deb`` files into a
cache shared across builds (``apt-get download``, only what the cache lacks, checked against
the archive's SHA256), and writes a flat repository (``deb URL ./``)::

    OUT/current -> releases/20250601T120000Z-1a2b3c4d   (switched atomically by rename)
    OUT/releases/<id>/*.deb, Packages, Packages.gz, Release, InRelease, Release.gpg,
                      metalchain-mirror.gpg (binary public key), manifest.json

A release directory is complete before ``current`` points at it, so a server reading through
``current`` never sees a half-written mirror. The previous release is kept so that a host in the
middle of ``apt-get update`` still finds the files it was told about.

Why the full closure (every alternative and every provider of a virtual package) rather than
what one minimal host lacks: the mirror then works for any host regardless of what its image
already has, at the cost of a few extra megabytes.

Signing uses a dedicated keyring per site (``gnupg_home``, never the operator's own), created on
first use without a passphrase; gpg runs in batch mode with timeouts, and its agent is stopped
when the build ends so nothing keeps running.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from configure.debrepack import RepackError, repack_zstd
from inventory.errors import InputError, MetalchainError
from runtime import process
from runtime.filelock import file_lock
from runtime.jsondoc import write_json

KEYRING_NAME = "metalchain-mirror.gpg"
KEYRING_PATH = f"/etc/apt/keyrings/{KEYRING_NAME}"
MANIFEST_NAME = "manifest.json"
CURRENT_LINK = "current"
RELEASES_DIR = "releases"
DEFAULT_CACHE_DIR = Path("/var/cache/metalchain/mirror-debs")
APT_LISTS_DIR = Path("/var/lib/apt/lists")
MANIFEST_VERSION = 1
KEY_UID = "metalchain mirror <mirror@metalchain.invalid>"
DEPENDS_OPTIONS = ("--recurse", "--no-recommends", "--no-suggests", "--no-conflicts",
                   "--no-breaks", "--no-replaces", "--no-enhances")
# Only these relations must be satisfied for an install; everything else is advice.
HARD_RELATIONS = ("Depends", "PreDepends")
# apt-get download names "libgmp10_2:6.2.1-1_amd64.deb" "libgmp10_2%3a6.2.1-1_amd64.deb"; a
# "%" in a URL path is an escape, so the mirror stores pool-style names without the epoch.
EPOCH = re.compile(r"_[0-9]+%3[aA]")
PACKAGE_NAME = re.compile(r"^[a-z0-9][a-z0-9+.\-]+$")

DEFAULT_TIMEOUTS: dict[str, float] = {
    "update": 600.0,    # apt-get update against the controller's sources
    "resolve": 120.0,   # apt-cache depends / apt-get --print-uris
    "download": 1800.0,  # apt-get download of everything missing from the cache
    "index": 300.0,     # apt-ftparchive
    "gpg": 60.0,        # each gpg call
    "lock": 600.0,      # waiting for another build of the same mirror
    "repack": 600.0,    # each zstd call of a package's recompression
}
#: how the served packages' file trees are compressed (build_mirror's ``compression``)
COMPRESSIONS = ("zstd", "keep")


class MirrorError(MetalchainError):
    """The mirror could not be resolved, downloaded, built, signed or served."""


# -- running commands ----------------------------------------------------------------------

Runner = Callable[[Sequence[str], float, Path | None, Mapping[str, str] | None], str]


def run_command(argv: Sequence[str], timeout: float, cwd: Path | None = None,
                env: Mapping[str, str] | None = None) -> str:
    """Run ``argv`` (never through a shell); return stdout or raise :class:`MirrorError`
    naming the command, the limit hit or the exit code and the tail of stderr."""
    full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
    return process.run(argv, timeout=timeout, cwd=cwd, env=full_env, error=MirrorError).stdout


# -- probing: apt-cache depends, apt-get --print-uris, Packages (pure parsers) ---------------

@dataclass(frozen=True)
class Dependency:
    """One alternative of a dependency: a package, or a virtual one with its providers."""

    name: str
    virtual: bool = False
    providers: tuple[str, ...] = ()


@dataclass
class DependsNode:
    """A package as ``apt-cache depends`` lists it: its hard dependency groups, each a tuple
    of alternatives (``a | b | c``)."""

    name: str
    virtual: bool = False
    groups: list[tuple[Dependency, ...]] = field(default_factory=list)


def _strip_arch(name: str) -> str:
    # "perl:any" names the package perl satisfying a Multi-Arch: allowed dependency.
    return name.split(":", 1)[0]


def parse_depends(text: str) -> dict[str, DependsNode]:
    """Parse ``apt-cache depends --recurse`` output into a graph keyed by package name.

    Layout: a package at column 0 (``<name>`` when virtual), its relations indented two
    spaces (``|Depends:`` marks "this or the next one"), providers of a virtual dependency
    indented four spaces under it. Relations other than Depends/PreDepends are ignored.

    >>> g = parse_depends("a\\n |Depends: b\\n  Depends: <c>\\n    d\\n")
    >>> [[d.name for d in grp] for grp in g["a"].groups]
    [['b', 'c']]
    """
    graph: dict[str, DependsNode] = {}
    node: DependsNode | None = None
    pending: list[Dependency] = []   # alternatives of the group being read
    last: Dependency | None = None   # the dependency providers are added to
    last_closes = False

    def flush_last() -> None:
        nonlocal last
        if last is not None and node is not None:
            pending.append(last)
            if last_closes:
                node.groups.append(tuple(pending))
                pending.clear()
        last = None

    for raw in text.splitlines():
        if not raw.strip():
            continue
        indent = len(raw) - len(raw.lstrip(" "))
        line = raw.strip()
        if indent == 0:
            flush_last()
            if pending and node is not None:  # a dangling "|" at the end: close the group
                node.groups.append(tuple(pending))
                pending.clear()
            virtual = line.startswith("<") and line.endswith(">")
            # A virtual name keeps its qualifier ("<perl:any>"): stripped, it would collide
            # with the real package it is satisfied by.
            name = line.strip("<>") if virtual else _strip_arch(line)
            node = graph.get(name)
            if node is None or (node.virtual and not virtual):
                node = graph[name] = DependsNode(name, virtual=virtual)
            continue
        if node is None:
            raise MirrorError(f"unexpected apt-cache depends output: {raw!r}")
        if indent >= 4:
            if last is not None:
                last = Dependency(last.name, last.virtual, (*last.providers,
                                                            _strip_arch(line)))
            continue
        flush_last()
        relation, _, target = line.partition(":")
        alternative = relation.startswith("|")
        relation = relation.lstrip("|").strip()
        if relation not in HARD_RELATIONS:
            last = None
            continue
        target = target.strip()
        virtual = target.startswith("<") and target.endswith(">")
        last = Dependency(target.strip("<>") if virtual else _strip_arch(target), virtual)
        last_closes = not alternative
    flush_last()
    if pending and node is not None:
        node.groups.append(tuple(pending))
    return graph


def dependency_closure(graph: Mapping[str, DependsNode], roots: Iterable[str]) -> list[str]:
    """Every real package needed to install ``roots`` on an empty system, sorted.

    Follows every alternative and every provider of a virtual package, so the result installs
    on any host whatever it already has. Raises :class:`InputError` for a root apt does not know
    or that is only virtual, :class:`MirrorError` for a dependency nothing can satisfy.
    """
    roots = list(roots)
    unknown = [r for r in roots if r not in graph]
    if unknown:
        raise InputError(f"unknown package(s): {', '.join(unknown)} (not in the controller's "
                         "apt lists)")
    virtual = [r for r in roots if graph[r].virtual]
    if virtual:
        raise InputError(f"virtual package(s) with no candidate: {', '.join(virtual)}; name "
                         "a package that provides it instead")
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        node = graph.get(name)
        if node is None or node.virtual:
            continue
        seen.add(name)
        for group in node.groups:
            candidates: list[str] = []
            for dep in group:
                if dep.virtual:
                    candidates.extend(p for p in dep.providers if p in graph)
                elif dep.name in graph and not graph[dep.name].virtual:
                    candidates.append(dep.name)
            if not candidates:
                wanted = " | ".join(d.name for d in group)
                raise MirrorError(f"{name} depends on {wanted}, which no package in the "
                                  "controller's apt lists provides")
            todo.extend(candidates)
    return sorted(seen)


@dataclass(frozen=True)
class DownloadItem:
    """A file ``apt-get download`` would fetch, with the archive's size and SHA256."""

    package: str
    filename: str        # the name in the mirror: the epoch dropped, as in Debian's pool
    size: int
    sha256: str
    uri: str
    download_name: str   # the name apt-get download writes (epoch escaped as "%3a")


def parse_print_uris(text: str) -> list[DownloadItem]:
    """Parse ``apt-get download --print-uris``: ``'URI' FILENAME SIZE SHA256:HEX`` lines."""
    items: list[DownloadItem] = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("'"):
            continue
        uri, _, rest = line[1:].partition("' ")
        parts = rest.split()
        if len(parts) < 3 or not parts[2].upper().startswith("SHA256:"):
            raise MirrorError(f"unexpected apt-get --print-uris line (no SHA256): {line!r}")
        filename = parts[0]
        if "/" in filename or not filename.endswith(".deb"):
            raise MirrorError(f"unexpected file name from apt: {filename!r}")
        items.append(DownloadItem(package=filename.split("_", 1)[0],
                                  filename=EPOCH.sub("_", filename, count=1),
                                  size=int(parts[1]), sha256=parts[2][7:].lower(), uri=uri,
                                  download_name=filename))
    return items


@dataclass(frozen=True)
class ResolvedPackage:
    """One package of the mirror, as its ``Packages`` index lists it."""

    package: str
    version: str
    architecture: str
    filename: str
    sha256: str
    size: int


def parse_packages_index(text: str) -> list[ResolvedPackage]:
    """Parse an apt ``Packages`` index (RFC 822 stanzas) into resolved packages, sorted."""
    out: list[ResolvedPackage] = []
    for stanza in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") or ":" not in line:
                continue  # continuation lines (descriptions)
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        if not fields:
            continue
        try:
            out.append(ResolvedPackage(
                package=fields["Package"], version=fields["Version"],
                architecture=fields["Architecture"],
                filename=fields["Filename"].removeprefix("./"),
                sha256=fields["SHA256"], size=int(fields["Size"])))
        except (KeyError, ValueError) as exc:
            raise MirrorError(f"Packages stanza without a valid {exc}: "
                              f"{stanza.splitlines()[0]!r}") from None
    return sorted(out, key=lambda p: (p.package, p.version))


# -- the result -----------------------------------------------------------------------------

def render_source_line(base_url: str, *, signed: bool, keyring_path: str = KEYRING_PATH) -> str:
    """The one-line apt source a host needs for this mirror (flat layout: suite ``./``).

    >>> render_source_line("http://10.77.0.1:8081/", signed=False)
    'deb [trusted=yes] http://10.77.0.1:8081/ ./'
    """
    if not base_url.endswith("/"):
        base_url += "/"
    option = f"signed-by={keyring_path}" if signed else "trusted=yes"
    return f"deb [{option}] {base_url} ./"


def mirror_url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address
    return f"http://{host}:{port}/"


@dataclass
class MirrorInfo:
    """What a build produced (or what is being served): enough for status and for hosts."""

    root: Path                       # the release directory (what ``current`` points at)
    requested: list[str]
    resolved: list[ResolvedPackage]
    signed: bool
    fingerprint: str | None
    built_at: str
    size_bytes: int
    downloaded: list[str] = field(default_factory=list)   # file names fetched by this build
    reused: int = 0                                       # files taken from the cache
    changed: bool = True                                  # False: the mirror was already so
    build_seconds: float = 0.0
    #: "zstd" (file trees recompressed, configure/debrepack.py) or "keep" (Debian's files)
    compression: str = "keep"
    #: file name -> the archive's SHA256 of the file it was made from (== its own when kept)
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def keyring(self) -> Path | None:
        return self.root / KEYRING_NAME if self.signed else None

    def source_line(self, address: str, port: int) -> str:
        return render_source_line(mirror_url(address, port), signed=self.signed)

    def to_manifest(self) -> dict[str, Any]:
        return {"manifest_version": MANIFEST_VERSION, "requested": self.requested,
                "signed": self.signed, "fingerprint": self.fingerprint,
                "built_at": self.built_at, "size_bytes": self.size_bytes,
                "compression": self.compression, "sources": self.sources,
                "packages": [asdict(p) for p in self.resolved]}

    def to_json(self) -> dict[str, Any]:
        doc = self.to_manifest()
        doc.pop("manifest_version")
        return {"root": str(self.root), **doc, "downloaded": self.downloaded,
                "reused": self.reused, "changed": self.changed,
                "build_seconds": round(self.build_seconds, 3),
                "keyring": str(self.keyring) if self.keyring else None}

    @classmethod
    def from_manifest(cls, root: Path, doc: Mapping[str, Any]) -> MirrorInfo:
        try:
            resolved = [ResolvedPackage(**p) for p in doc["packages"]]
            return cls(root=root, requested=list(doc["requested"]), resolved=resolved,
                       signed=bool(doc["signed"]), fingerprint=doc.get("fingerprint"),
                       built_at=str(doc["built_at"]), size_bytes=int(doc["size_bytes"]),
                       changed=False, compression=str(doc.get("compression", "keep")),
                       sources={str(k): str(v) for k, v in doc.get(
                           "sources", {p.filename: p.sha256 for p in resolved}).items()})
        except (KeyError, TypeError, ValueError) as exc:
            raise MirrorError(f"{root / MANIFEST_NAME}: unreadable manifest: {exc}") from None


def read_mirror(out_dir: Path) -> MirrorInfo | None:
    """The mirror ``out_dir/current`` points at, or None when none was built yet."""
    current = out_dir / CURRENT_LINK
    manifest = current / MANIFEST_NAME
    if not manifest.is_file():
        return None
    root = current.resolve()
    try:
        doc = json.loads((root / MANIFEST_NAME).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise MirrorError(f"{manifest}: unreadable manifest: {exc}") from None
    return MirrorInfo.from_manifest(root, doc)


# -- signing --------------------------------------------------------------------------------

class MirrorKeyring:
    """The site's mirror signing key in its own GNUPGHOME; created once, no passphrase.

    Use as a context manager: on exit the gpg-agent that gpg starts for this home is stopped.
    """

    def __init__(self, gnupg_home: Path, *, timeout: float = DEFAULT_TIMEOUTS["gpg"],
                 runner: Runner = run_command) -> None:
        self.home = Path(gnupg_home)
        self.timeout = timeout
        self.runner = runner

    def __enter__(self) -> MirrorKeyring:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _gpg(self, *args: str, cwd: Path | None = None) -> str:
        return self.runner(["gpg", "--batch", "--no-tty", "--pinentry-mode", "loopback",
                            "--passphrase", "", *args], self.timeout, cwd,
                           {"GNUPGHOME": str(self.home)})

    def fingerprint(self) -> str | None:
        if not (self.home / "pubring.kbx").exists():
            return None
        out = self._gpg("--with-colons", "--list-secret-keys")
        for line in out.splitlines():
            if line.startswith("fpr:"):
                return line.split(":")[9]
        return None

    def ensure_key(self) -> str:
        """The signing key's fingerprint, generating the key on first use."""
        self.home.mkdir(parents=True, exist_ok=True)
        os.chmod(self.home, 0o700)
        fpr = self.fingerprint()
        if fpr:
            return fpr
        self._gpg("--quick-generate-key", KEY_UID, "ed25519", "sign", "never")
        fpr = self.fingerprint()
        if not fpr:
            raise MirrorError(f"gpg created no key in {self.home}")
        return fpr

    def export_public(self, fingerprint: str, dest: Path) -> None:
        """Write the binary public key (what ``signed-by=`` in /etc/apt/keyrings expects)."""
        self._gpg("--output", str(dest), "--export", fingerprint)
        if not dest.is_file() or dest.stat().st_size == 0:
            raise MirrorError(f"gpg exported no public key for {fingerprint}")

    def sign_release(self, fingerprint: str, release_dir: Path) -> None:
        """``InRelease`` (clear-signed) and ``Release.gpg`` (detached) next to ``Release``."""
        self._gpg("--local-user", fingerprint, "--digest-algo", "SHA512", "--clearsign",
                  "--output", "InRelease", "Release", cwd=release_dir)
        self._gpg("--local-user", fingerprint, "--digest-algo", "SHA512", "--armor",
                  "--detach-sign", "--output", "Release.gpg", "Release", cwd=release_dir)

    def close(self) -> None:
        if not self.home.is_dir():
            return
        with contextlib.suppress(MirrorError):
            self.runner(["gpgconf", "--kill", "gpg-agent"], self.timeout, None,
                        {"GNUPGHOME": str(self.home)})


# -- building -------------------------------------------------------------------------------

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _lists_present(lists_dir: Path = APT_LISTS_DIR) -> bool:
    return any(lists_dir.glob("*_Packages*"))


def _link_or_copy(src: Path, dest: Path) -> None:
    try:
        os.link(src, dest)
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        shutil.copy2(src, dest)


def _cached(item: DownloadItem, cache_dir: Path) -> bool:
    path = cache_dir / item.filename
    return path.is_file() and path.stat().st_size == item.size and \
        sha256_file(path) == item.sha256


def fetch_into_cache(items: Sequence[DownloadItem], cache_dir: Path, *, timeout: float,
                     runner: Runner = run_command) -> list[str]:
    """Download the items the cache lacks; return the file names fetched.

    apt-get download writes into a private staging directory; each file is checked against
    the archive's SHA256 before it is renamed into the cache, so the cache only ever holds
    whole, verified files (and two builds sharing it cannot see each other's partial files).
    """
    missing = [i for i in items if not _cached(i, cache_dir)]
    if not missing:
        return []
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache_dir))
    try:
        # Root downloads cannot drop to _apt into a directory _apt cannot write; say so.
        runner(["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download",
                *sorted({i.package for i in missing})], timeout, staging, None)
        for item in missing:
            got = staging / item.download_name
            if not got.is_file():
                raise MirrorError(f"apt-get download did not produce {item.download_name}")
            digest = sha256_file(got)
            if digest != item.sha256:
                raise MirrorError(f"{item.filename}: SHA256 {digest} does not match the "
                                  f"archive's {item.sha256}")
            os.replace(got, cache_dir / item.filename)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [i.filename for i in missing]


def resolve(packages: Sequence[str], *, timeouts: Mapping[str, float],
            runner: Runner = run_command) -> list[DownloadItem]:
    """The files making up ``packages`` and their closure, per the controller's apt lists."""
    if not _lists_present():
        runner(["apt-get", "-q", "update"], timeouts["update"], None, None)
    text = runner(["apt-cache", "depends", *DEPENDS_OPTIONS, *packages], timeouts["resolve"],
                  None, None)
    closure = dependency_closure(parse_depends(text), packages)
    items = parse_print_uris(runner(["apt-get", "-q", "download", "--print-uris", *closure],
                                    timeouts["resolve"], None, None))
    got = {i.package for i in items}
    lacking = sorted(set(closure) - got)
    if lacking:
        raise MirrorError(f"apt offers no downloadable file for: {', '.join(lacking)}")
    return sorted(items, key=lambda i: i.filename)


def check_package_names(packages: Sequence[str]) -> list[str]:
    """Validate and de-duplicate requested names (Debian policy 5.6.1: lowercase etc.)."""
    names: list[str] = []
    for raw in packages:
        name = raw.strip()
        if not name:
            continue
        if not PACKAGE_NAME.match(name):
            raise InputError(f"not a Debian package name: {name!r}")
        if name not in names:
            names.append(name)
    if not names:
        raise InputError("no packages given")
    return names


def _write_index(release: Path, timeout: float, runner: Runner) -> list[ResolvedPackage]:
    packages = runner(["apt-ftparchive", "packages", "."], timeout, release, None)
    (release / "Packages").write_text(packages, encoding="utf-8")
    with (release / "Packages").open("rb") as src, \
            gzip.GzipFile(release / "Packages.gz", "wb", mtime=0) as dst:
        shutil.copyfileobj(src, dst)
    # Release is generated to memory first: written straight into the directory, apt-ftparchive
    # would list the half-written Release file among the indexes it hashes.
    text = runner(["apt-ftparchive", "-o", "APT::FTPArchive::Release::Origin=metalchain",
                   "-o", "APT::FTPArchive::Release::Label=metalchain mirror",
                   "-o", "APT::FTPArchive::Release::Suite=./",
                   "release", "."], timeout, release, None)
    (release / "Release").write_text(text, encoding="utf-8")
    return parse_packages_index(packages)


def _prune(out_dir: Path, keep: set[str]) -> None:
    releases = out_dir / RELEASES_DIR
    for entry in releases.iterdir() if releases.is_dir() else ():
        if entry.name not in keep:
            shutil.rmtree(entry, ignore_errors=True)


def _switch(out_dir: Path, release_name: str) -> None:
    tmp = out_dir / f".{CURRENT_LINK}.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    tmp.symlink_to(Path(RELEASES_DIR) / release_name)
    os.replace(tmp, out_dir / CURRENT_LINK)  # rename(2): readers see the old or the new one


def _served_file(item: DownloadItem, cache_dir: Path, compression: str, timeout: float,
                 runner: Runner) -> Path:
    """The file the mirror serves for ``item``: the cached download, or its zstd repack
    (made once, kept in CACHE/zstd/ under the archive's SHA256 of its source)."""
    src = cache_dir / item.filename
    if compression == "keep":
        return src
    repacked = cache_dir / "zstd" / f"{item.sha256}.deb"
    if not repacked.is_file():
        repacked.parent.mkdir(parents=True, exist_ok=True)
        try:
            repack_zstd(src, repacked, timeout=timeout, runner=runner)
        except RepackError as exc:
            raise MirrorError(f"{item.filename}: {exc}") from None
    return repacked


def build_mirror(packages: Sequence[str], out_dir: Path, *, sign: bool,
                 cache_dir: Path = DEFAULT_CACHE_DIR, gnupg_home: Path | None = None,
                 timeouts: Mapping[str, float] | None = None,
                 runner: Runner = run_command, compression: str = "keep") -> MirrorInfo:
    """Build (or bring up to date) the apt repository of ``packages`` in ``out_dir``.

    Idempotent: if the resolved files, the signing mode and the key are what ``current``
    already serves, nothing is downloaded or switched (``changed`` is False). Adding a package
    downloads only the files the cache lacks. ``sign=True`` needs ``gnupg_home`` (the site's
    private keyring directory); ``sign=False`` builds a mirror for ``[trusted=yes]`` sources.
    ``compression="zstd"`` serves each package with its file tree recompressed from xz to
    zstd (configure/debrepack.py: dpkg >= 1.21.18, Debian 12, unpacks it several times
    faster); ``"keep"`` serves Debian's files as they are.

    Example::

        info = build_mirror(["prometheus-node-exporter"], site.root / "mirror", sign=True,
                            gnupg_home=site.root / "keys" / "mirror-gnupg")
        info.source_line("10.77.0.1", 8081)
    """
    started = time.monotonic()
    limits = {**DEFAULT_TIMEOUTS, **(timeouts or {})}
    names = check_package_names(packages)
    if compression not in COMPRESSIONS:
        raise InputError(f"compression must be one of {', '.join(COMPRESSIONS)}, "
                         f"got {compression!r}")
    if sign and gnupg_home is None:
        raise InputError("a signed mirror needs gnupg_home (the site's mirror keyring)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keyring = MirrorKeyring(gnupg_home, timeout=limits["gpg"], runner=runner) \
        if sign and gnupg_home is not None else None
    with file_lock(out_dir / ".lock", limits["lock"], MirrorError, 0.05,
                   holder="another mirror build's lock"), \
            contextlib.closing(keyring) if keyring else contextlib.nullcontext():
        items = resolve(names, timeouts=limits, runner=runner)
        fingerprint = keyring.ensure_key() if keyring else None
        old = read_mirror(out_dir)
        sources = {i.filename: i.sha256 for i in items}
        if old is not None and old.signed == sign and old.fingerprint == fingerprint and \
                sorted(old.requested) == sorted(names) and old.sources == sources and \
                old.compression == compression:
            old.reused = len(items)
            old.build_seconds = time.monotonic() - started
            return old
        downloaded = fetch_into_cache(items, cache_dir, timeout=limits["download"],
                                      runner=runner)
        releases = out_dir / RELEASES_DIR
        releases.mkdir(exist_ok=True)
        for stale in releases.glob(".build-*"):  # left by a build that was killed
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=releases))
        try:
            for item in items:
                _link_or_copy(_served_file(item, cache_dir, compression, limits["repack"],
                                           runner), work / item.filename)
            resolved = _write_index(work, limits["index"], runner)
            if keyring and fingerprint:
                keyring.sign_release(fingerprint, work)
                keyring.export_public(fingerprint, work / KEYRING_NAME)
            size = sum(p.stat().st_size for p in work.iterdir() if p.is_file())
            stamp = datetime.now(UTC)
            tag = hashlib.sha256((work / "Release").read_bytes()).hexdigest()[:8]
            name = f"{stamp.strftime('%Y%m%dT%H%M%S%fZ')}-{tag}"
            info = MirrorInfo(root=releases / name, requested=names, resolved=resolved,
                              signed=sign, fingerprint=fingerprint,
                              built_at=stamp.isoformat(timespec="seconds"), size_bytes=size,
                              downloaded=downloaded, reused=len(items) - len(downloaded),
                              compression=compression, sources=sources)
            write_json(work / MANIFEST_NAME, info.to_manifest())
            os.chmod(work, 0o755)  # noqa: S103 - a public repository, world-readable
            os.replace(work, info.root)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        _switch(out_dir, name)
        keep = {name} | ({old.root.name} if old is not None else set())
        _prune(out_dir, keep)
        info.build_seconds = time.monotonic() - started
        return info
