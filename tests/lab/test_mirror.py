"""The local package mirror end to end: a signed mirror of prometheus-node-exporter built on the
controller, served on the lab's provisioning address, installed from on a fleet host that has
no other apt source; and a tampered index refused by the host's signature check."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from configure.connect import ssh_target
from configure.mirror import KEYRING_PATH, render_source_line
from configure.mirror_server import MirrorServer
from configure.ssh import CommandResult, Shell, SshConnection
from inventory.site import Site
from orchestrate.commands.mirror_cmd import mirror
from tests.lab.fleetsite import fleet_site, invoke
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

SUBNET = "10.83.0.0/24"
CONTROLLER = str(ipaddress.ip_network(SUBNET)[1])
PACKAGE = "prometheus-node-exporter"
CACHE = "/var/cache/metalchain/mirror-debs"
PORT = 8081
TAMPER_PORT = 8082
FIGURES: dict[str, float | int] = {}


def mirror_cli(site: Path, *args: str) -> tuple[int, str]:
    """`metalchain mirror ARGS` through the click group, in process."""
    return invoke(site, mirror, *args)


@pytest.fixture(scope="module")
def lab_site(tmp_path_factory):
    with fleet_site(tmp_path_factory.mktemp("mirror") / "site", 1, SUBNET) as site:
        yield site


@pytest.fixture(scope="module")
def built(lab_site):
    start = time.monotonic()
    code, out = mirror_cli(lab_site, "build", "--packages", PACKAGE, "--sign", "--cache-dir",
                           CACHE, "--json")
    FIGURES["build_first_s"] = round(time.monotonic() - start, 2)
    assert code == 0, out
    doc = json.loads(out)
    FIGURES["downloaded_first"] = len(doc["downloaded"])
    FIGURES["size_bytes"] = doc["size_bytes"]
    FIGURES["packages"] = len(doc["packages"])
    return doc


@pytest.fixture(scope="module")
def host(lab_site):
    site = Site.open(lab_site)
    conn = SshConnection(ssh_target(site.inventory, site.state, "fleet01", site.private_key()))
    try:
        # apt's unprivileged _apt sandbox needs a world-writable /dev/null to run gpgv.
        out = run_ok(conn, ["stat", "-c", "%a", "/dev/null"])
        assert out.stdout.strip() == "666", out.stdout
        yield conn
    finally:
        conn.close()
        site.close()


def run_ok(conn: SshConnection, command, timeout: float = 120) -> CommandResult:
    r = conn.run(command, timeout=timeout)
    assert r.ok, f"{r.command}: exit {r.exit_code}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    return r


def use_only_source(conn: SshConnection, keyring: bytes, line: str) -> None:
    """Install the keyring and make ``line`` the host's only apt source."""
    run_ok(conn, Shell("mkdir -p /etc/apt/keyrings /root/apt-sources-away && "
                       "for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do "
                       "[ -e \"$f\" ] && mv \"$f\" /root/apt-sources-away/; done; true"))
    conn.put(keyring, KEYRING_PATH, 0o644)
    conn.put((line + "\n").encode(), "/etc/apt/sources.list.d/metalchain-mirror.list", 0o644)


def test_build_signed_mirror_is_incremental(lab_site, built):
    root = Path(built["root"])
    assert built["signed"] and len(built["fingerprint"]) == 40
    names = {p["package"] for p in built["packages"]}
    assert {PACKAGE, "adduser", "libc6"} <= names
    for name in ("Packages", "Packages.gz", "Release", "InRelease", "Release.gpg",
                 "metalchain-mirror.gpg", "manifest.json"):
        assert (root / name).is_file(), name
    for p in built["packages"]:
        assert hashlib.sha256((root / p["filename"]).read_bytes()).hexdigest() == p["sha256"]
    # The public key is binary (for /etc/apt/keyrings), not armored.
    assert not (root / "metalchain-mirror.gpg").read_bytes().startswith(b"-----")
    start = time.monotonic()
    code, out = mirror_cli(lab_site, "build", "--packages", PACKAGE, "--cache-dir", CACHE,
                           "--json")
    FIGURES["build_again_s"] = round(time.monotonic() - start, 2)
    again = json.loads(out)
    assert code == 0 and again["changed"] is False and again["downloaded"] == []
    assert again["root"] == built["root"]
    code, out = mirror_cli(lab_site, "status", "--json")
    status = json.loads(out)
    assert status["kind"] == "mirror.status" and status["built"] and status["packages"] == len(
        built["packages"])
    assert not status["server"]["running"]


def test_host_installs_node_exporter_from_the_mirror(lab_site, built, host):
    code, out = mirror_cli(lab_site, "serve", "--address", CONTROLLER, "--port", str(PORT),
                           "--daemon", "--json")
    assert code == 0, out
    served = json.loads(out)
    assert served["source"] == render_source_line(f"http://{CONTROLLER}:{PORT}/", signed=True)
    code, out = mirror_cli(lab_site, "status", "--json")
    status = json.loads(out)
    assert status["server"]["running"] and status["server"]["answering"]
    assert status["source"] == served["source"]

    keyring = (Path(built["root"]) / "metalchain-mirror.gpg").read_bytes()
    use_only_source(host, keyring, served["source"])
    r = run_ok(host, ["sh", "-c", "cat /etc/apt/sources.list.d/* ; "
                      "ls /etc/apt/sources.list 2>/dev/null; true"])
    assert r.stdout.strip() == served["source"]
    start = time.monotonic()
    run_ok(host, ["apt-get", "-q", "update"], timeout=120)
    run_ok(host, ["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "-q", "install", "-y",
                  "--no-install-recommends", PACKAGE], timeout=600)
    FIGURES["host_update_install_s"] = round(time.monotonic() - start, 2)
    policy = run_ok(host, ["apt-cache", "policy", PACKAGE]).stdout
    assert f"http://{CONTROLLER}:{PORT} ./ Packages" in policy

    wait_for(lambda: host.run(["systemctl", "is-active", "--quiet", PACKAGE]).ok, 60,
             f"systemd to report {PACKAGE} active")
    address = Site.open(lab_site).inventory.host("fleet01").address

    def metrics() -> str | None:
        try:
            with urllib.request.urlopen(f"http://{address}:9100/metrics", timeout=5) as resp:
                return resp.read().decode()
        except (OSError, urllib.error.URLError):
            return None

    body = wait_for(metrics, 60, f"node_exporter on {address}:9100")
    assert "node_exporter_build_info" in body and "node_cpu_seconds_total" in body


def _tamper(release: Path, into: Path) -> None:
    """What an attacker without the key can do: change Packages, fix every hash that covers
    it (Packages.gz, Release, the body of InRelease), and keep the old signatures."""
    shutil.copytree(release, into, symlinks=False)
    packages = (into / "Packages").read_text()
    stanza_start = packages.index(f"Package: {PACKAGE}\n")
    sha_at = packages.index("SHA256: ", stanza_start)
    evil = packages[:sha_at + 8] + "0" * 64 + packages[sha_at + 8 + 64:]
    (into / "Packages").write_text(evil)
    subprocess.run(["gzip", "-9nkf", "Packages"], cwd=into, check=True, timeout=60)
    release_text = subprocess.run(["apt-ftparchive", "release", "."], cwd=into, check=True,
                                  capture_output=True, text=True, timeout=60).stdout
    (into / "Release").write_text(release_text)
    signed = (into / "InRelease").read_text()
    head, _, rest = signed.partition("\n\n")
    _, sig_marker, signature = rest.partition("-----BEGIN PGP SIGNATURE-----")
    (into / "InRelease").write_text(f"{head}\n\n{release_text.rstrip(chr(10))}\n"
                                    f"{sig_marker}{signature}")


def test_tampered_index_fails_signature_check(lab_site, built, host, tmp_path):
    tampered = tmp_path / "tampered"
    _tamper(Path(built["root"]), tampered)
    keyring = (Path(built["root"]) / "metalchain-mirror.gpg").read_bytes()
    with MirrorServer(tampered, CONTROLLER, TAMPER_PORT) as server:
        use_only_source(host, keyring, render_source_line(server.url, signed=True))
        r = host.run(["apt-get", "-q", "update"], timeout=120)
        text = r.stdout + r.stderr
        assert not r.ok, text
        assert "BADSIG" in text or "signatures were invalid" in text, text
        # The same tree served honestly passes: the failure is the signature, not the setup.
    honest = tmp_path / "honest"
    shutil.copytree(Path(built["root"]), honest)
    with MirrorServer(honest, CONTROLLER, TAMPER_PORT) as server:
        use_only_source(host, keyring, render_source_line(server.url, signed=True))
        run_ok(host, ["apt-get", "-q", "update"], timeout=120)


def test_mirror_stop_and_figures(lab_site):
    code, out = mirror_cli(lab_site, "stop")
    assert code == 0 and "stopped" in out
    code, out = mirror_cli(lab_site, "status", "--json")
    assert not json.loads(out)["server"]["running"]
    print(f"\nmirror figures: {json.dumps(FIGURES)}")
