"""The shipped roles on the lab fleet: base, node_exporter, hypervisor and image_store from a
signed mirror; idempotence (the second run changes nothing, in one round trip); testinfra
verification over SSH with pinned keys; exact drift reports, check mode that touches nothing,
drift --fix; and what each role is for: metrics, qemu + bridge, images with their sha256."""

from __future__ import annotations

import functools
import hashlib
import http.server
import ipaddress
import json
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from inventory.site import Site
from orchestrate.commands.mirror_cmd import mirror
from tests.lab.fleetsite import fleet_site, invoke, metalchain

pytestmark = pytest.mark.lab

SUBNET = "10.85.0.0/24"
CONTROLLER = str(ipaddress.ip_network(SUBNET)[1])
MIRROR_PORT = 8086
FILES_PORT = 8087
CACHE = "/var/cache/metalchain/mirror-debs"
ROLES = ("base", "node_exporter", "hypervisor", "image_store")
# Every package the shipped roles install, for the mirror.
PACKAGES = ("sudo", "systemd-timesyncd", "prometheus-node-exporter", "qemu-system-x86",
            "qemu-utils", "nginx", "wget")
HOSTS = ("fleet01", "fleet02", "fleet03")
FIGURES: dict[str, float | int] = {}
ADMIN_KEY: dict[str, Path] = {}
# What the drift test changes, read on the host to prove check mode changed nothing.
SNAPSHOT = ("sha256sum /etc/hosts /etc/default/prometheus-node-exporter 2>&1; "
            "systemctl is-active prometheus-node-exporter; dpkg-query -W -f='${Status}\\n' wget "
            "2>&1; sysctl -n net.ipv4.ip_forward; ls /etc/apt/sources.list.d; "
            "stat -c '%n %a %U' /etc/sudoers.d/metalchain-admins /srv/image-store/public/*; true")


def verify(site: Path, *args: str) -> tuple[int, dict]:
    r = metalchain("--site", str(site), "verify", *args, "--json")
    assert r.stdout.strip(), r.stderr
    return r.returncode, json.loads(r.stdout)


def apply(site: Path, *extra: str, roles: tuple[str, ...] = ROLES, target: str = "fleet") -> dict:
    role_args = [a for r in roles for a in ("--role", r)]
    r = metalchain("--site", str(site), "apply", *role_args, target, "--json", *extra)
    doc = json.loads(r.stdout) if r.stdout.strip() else {"stderr": r.stderr}
    doc["rc"] = r.returncode
    return doc


def drift(site: Path, *extra: str) -> dict:
    role_args = [a for r in ROLES for a in ("--role", r)]
    r = metalchain("--site", str(site), "drift", "fleet", *role_args, "--json", *extra)
    assert r.stdout.strip(), r.stderr
    doc = json.loads(r.stdout)
    doc["rc"] = r.returncode
    return doc


def exec_(site: Path, target: str, *command: str) -> dict[str, dict]:
    r = metalchain("--site", str(site), "exec", target, "--json", "--", *command)
    return json.loads(r.stdout)["hosts"]


def snapshot(site: Path) -> dict[str, str]:
    return {h: v["stdout"] for h, v in exec_(site, "fleet", "sh", "-c", SNAPSHOT).items()}


def http_get(url: str, timeout: float = 10) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, dict[str, str]]:
    """A qcow2 and a raw image, served from the controller like an operator would."""
    root = tmp_path_factory.mktemp("images")
    qcow2 = root / "tiny.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(qcow2), "16M"], check=True,
                   timeout=30)
    (root / "blob.raw").write_bytes(hashlib.sha256(b"metalchain").digest() * 32768)
    server = http.server.ThreadingHTTPServer(
        (CONTROLLER, FILES_PORT), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    try:
        thread.start()
        yield {p.name: {"name": p.name, "url": f"http://{CONTROLLER}:{FILES_PORT}/{p.name}",
                        "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
               for p in (qcow2, root / "blob.raw")}
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with fleet_site(tmp_path_factory.mktemp("roles") / "site", len(HOSTS), SUBNET) as root:
        yield root


@pytest.fixture(scope="module")
def site(lab, images, tmp_path_factory):
    """The lab with a signed mirror served, an admin with a key, two images registered, the
    roles assigned to the fleet group, and facts gathered."""
    keys = tmp_path_factory.mktemp("admin")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@lab", "-f",
                    str(keys / "alice")], check=True, timeout=30)
    inventory = lab / "inventory.yml"
    doc = yaml.safe_load(inventory.read_text())
    doc["vars"] = {"admin_users": [{"name": "alice", "ssh_keys": [
                       (keys / "alice.pub").read_text().strip()]}],
                   "image_store_images": list(images.values())}
    doc["groups"]["fleet"]["roles"] = list(ROLES)
    inventory.write_text(yaml.safe_dump(doc, sort_keys=False))

    start = time.monotonic()
    code, out = invoke(lab, mirror, "build", "--packages", ",".join(PACKAGES), "--sign",
                       "--cache-dir", CACHE, "--json")
    assert code == 0, out
    FIGURES["mirror_build_s"] = round(time.monotonic() - start, 2)
    FIGURES["mirror_packages"] = len(json.loads(out)["packages"])
    code, out = invoke(lab, mirror, "serve", "--address", CONTROLLER, "--port",
                       str(MIRROR_PORT), "--daemon")
    assert code == 0, out
    r = metalchain("--site", str(lab), "facts", "fleet", "--json")
    assert r.returncode == 0, r.stderr
    ADMIN_KEY["alice"] = keys / "alice"
    return lab


def test_check_mode_on_fresh_hosts_predicts_and_changes_nothing(site):
    before = snapshot(site)
    check = apply(site, "--check")
    assert check["rc"] == 0, check
    assert snapshot(site) == before
    assert check["counts"]["changed"] == len(HOSTS)


def test_first_apply_changes_second_is_converged_in_one_round_trip(site):
    start = time.monotonic()
    first = apply(site)
    FIGURES["first_apply_s"] = round(time.monotonic() - start, 2)
    assert first["rc"] == 0, json.dumps(first, indent=1)[-3000:]
    assert first["counts"]["changed"] == len(HOSTS)
    FIGURES["first_apply_round_trips"] = max(v["steps"][0]["round_trips"]
                                             for v in first["hosts"].values())
    start = time.monotonic()
    again = apply(site)
    FIGURES["converged_apply_s"] = round(time.monotonic() - start, 2)
    assert again["rc"] == 0
    assert again["counts"]["changed"] == 0 and again["counts"]["ok"] == len(HOSTS), \
        {h: v["steps"][0]["changes"] for h, v in again["hosts"].items()}
    assert {h: v["steps"][0]["round_trips"] for h, v in again["hosts"].items()} == \
        dict.fromkeys(HOSTS, 1)


def test_verify_passes_on_every_host(site):
    start = time.monotonic()
    code, doc = verify(site, "fleet")
    FIGURES["verify_s"] = round(time.monotonic() - start, 2)
    failed = [(h, t["id"], t["message"]) for h, v in doc["hosts"].items() for t in v["tests"]
              if t["outcome"] != "passed"]
    assert code == 0 and not failed, failed
    for h in HOSTS:
        host = doc["hosts"][h]
        assert host["status"] == "passed" and host["roles"] == list(ROLES)
        assert {t["role"] for t in host["tests"]} == set(ROLES)
        FIGURES["verify_checks_per_host"] = len(host["tests"])


def test_verify_refuses_a_host_key_that_is_not_pinned(site):
    """fleet03 pinned with fleet01's key: ssh must refuse, never accept the offered key."""
    store = Site.open(site)
    try:
        own = store.state.host_keys_of("fleet03")
        store.state.pin_host_key("fleet03", store.state.host_keys_of("fleet01")[0], "test")
        try:
            code, out = verify(site, "fleet03", "--role", "base")
        finally:
            for key in own:
                store.state.pin_host_key("fleet03", key, "test")
    finally:
        store.close()
    assert code == 1
    host = out["hosts"]["fleet03"]
    assert host["status"] in ("failed", "error")
    assert not any(t["outcome"] == "passed" for t in host["tests"])
    text = host["message"] + "".join(t["message"] for t in host["tests"])
    # verify connects through the pinned-key transport first: our refusal, both fingerprints
    assert "HOST KEY CHANGED" in text and "refusing to connect" in text, text


def test_drift_is_reported_exactly_check_touches_nothing_and_fix_converges(site):
    exec_(site, "fleet02", "sh", "-c",
          "echo '10.0.0.9 intruder' >> /etc/hosts; systemctl stop prometheus-node-exporter; "
          "DEBIAN_FRONTEND=noninteractive apt-get remove -y -q wget >/dev/null; "
          "sysctl -qw net.ipv4.ip_forward=0")
    before = snapshot(site)
    doc = drift(site)
    assert doc["rc"] == 3, doc                          # drift found
    assert doc["drifted"] == ["fleet02"]
    assert doc["hosts"]["fleet01"]["drift"] == [] and doc["hosts"]["fleet03"]["drift"] == []
    assert sorted(d["resource"] for d in doc["hosts"]["fleet02"]["drift"]) == [
        "file:/etc/hosts", "package:wget", "service:prometheus-node-exporter",
        "sysctl:net.ipv4.ip_forward"]
    assert snapshot(site) == before                     # check mode changed nothing
    fixed = drift(site, "--fix")
    assert fixed["rc"] == 3 and fixed["fixed"], fixed    # drift found, and corrected
    again = drift(site)
    assert again["rc"] == 0, again
    assert all(v["drift"] == [] for v in again["hosts"].values()), again
    code, out = verify(site, "fleet02")
    assert code == 0, out


def test_node_exporter_answers_the_controller(site):
    addresses = {h: v["address"] for h, v in yaml.safe_load(
        (site / "inventory.yml").read_text())["hosts"].items()}
    for h in HOSTS:
        body = http_get(f"http://{addresses[h]}:9100/metrics").decode()
        assert "node_exporter_build_info" in body and "node_cpu_seconds_total" in body


def test_hypervisor_runs_qemu_and_has_the_bridge_up(site):
    out = exec_(site, "fleet01", "qemu-system-x86_64", "--version")["fleet01"]
    assert out["exit_code"] == 0 and out["stdout"].startswith("QEMU emulator version")
    link = exec_(site, "fleet01", "ip", "-o", "-d", "link", "show", "dev",
                 "br-guests")["fleet01"]["stdout"]
    assert "UP" in link.split("<", 1)[1].split(">", 1)[0].split(",") and " bridge " in link


def test_image_store_serves_registered_images_with_matching_sha256(site, images):
    address = yaml.safe_load((site / "inventory.yml").read_text())["hosts"]["fleet03"]["address"]
    index = json.loads(http_get(f"http://{address}:9292/index.json"))
    assert [e["name"] for e in index] == sorted(images)
    formats = {e["name"]: e["disk_format"] for e in index}
    assert formats == {"blob.raw": "raw", "tiny.qcow2": "qcow2"}
    for entry in index:
        assert entry["sha256"] == images[entry["name"]]["sha256"]
        body = http_get(entry["url"])
        assert len(body) == entry["size"]
        assert hashlib.sha256(body).hexdigest() == entry["sha256"]


def test_admin_logs_in_with_a_key_only_and_has_sudo(site, tmp_path):
    doc = yaml.safe_load((site / "inventory.yml").read_text())["hosts"]["fleet01"]
    known = tmp_path / "known_hosts"
    known.write_text(f"{doc['address']} {doc['ssh']['host_key']}\n")
    base = ["ssh", "-F", "/dev/null", "-o", "StrictHostKeyChecking=yes", "-o",
            f"UserKnownHostsFile={known}", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
    r = subprocess.run([*base, "-i", str(ADMIN_KEY["alice"]), "-o", "IdentitiesOnly=yes",
                        f"alice@{doc['address']}", "sudo", "-n", "id", "-u"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "0", r.stderr
    r = subprocess.run([*base, "-o", "PubkeyAuthentication=no", f"alice@{doc['address']}",
                        "true"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 255 and "Permission denied (publickey)" in r.stderr, r.stderr


def test_an_sshd_config_that_sshd_rejects_is_never_loaded(site):
    bad = apply(site, "-e", "ssh_permit_root_login=bogus", roles=("base",), target="fleet03")
    assert bad["rc"] == 1
    assert "sshd -t rejected" in bad["hosts"]["fleet03"]["steps"][0]["message"]
    # We are still let in (with the old config), and the broken drop-in is not in place.
    out = exec_(site, "fleet03", "sh", "-c", "sshd -t && ls /etc/ssh/sshd_config.d/")["fleet03"]
    assert out["exit_code"] == 0
    assert "10-metalchain-hardening.conf.rejected" in out["stdout"].split()
    good = apply(site, roles=("base",), target="fleet03")
    assert good["rc"] == 0, good
    again = apply(site, target="fleet03")
    assert again["rc"] == 0 and again["counts"]["changed"] == 0
    code, out = verify(site, "fleet03", "--role", "base")
    assert code == 0, out


def test_mirror_stops_and_figures(site):
    code, out = invoke(site, mirror, "stop")
    assert code == 0 and "stopped" in out
    print(f"\nroles figures: {json.dumps(FIGURES)}")
