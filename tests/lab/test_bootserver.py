"""Lab tests of the boot server: the HTTP API against a real server, and dnsmasq + QEMU PXE.

(1) The callback API on 127.0.0.1 (port 0) with a real state store for the tokens: rejected
requests change nothing and call nothing; accepted ones reach the callbacks exactly once.
(2) dnsmasq for real in the root namespace on the uplink of a test-only lab network, and a QEMU
machine in the namespace that PXE-boots and fetches its per-MAC iPXE script from us.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from inventory.model import Host, Inventory, Provisioning
from inventory.state import StateStore
from lab.machine import Machine, MachineSpec, TapNetwork
from lab.network import LabNetwork
from lab.qmp import qmp_execute
from provision import contract
from provision.bootserver import (
    BootHttpServer,
    BootNode,
    BootNodes,
    BootServer,
    HttpLimits,
    NodeConfig,
)
from provision.settings import BootSettings

pytestmark = pytest.mark.lab

NODE1_MAC = "52:54:00:4d:43:01"
NODE2_MAC = "52:54:00:4d:43:02"
IMAGE_BYTES = 400 * 1024 * 1024


# -- fakes for the caller's side ---------------------------------------------------------------

@dataclass
class Provider:
    """The lifecycle's answers: which node installs now (its token) and its config.env."""

    tokens: dict[str, str] = field(default_factory=dict)

    def install_token(self, node: str) -> str | None:
        return self.tokens.get(node)

    def node_config(self, node: str) -> NodeConfig | None:
        if node not in self.tokens:
            return None
        return NodeConfig(hostname=node, image_url="/images/golden.raw",
                          image_sha256="ab" * 32, image_size=IMAGE_BYTES,
                          authorized_keys="ssh-ed25519 AAAAC3Nza operator's key\n",
                          host_key="-----BEGIN OPENSSH PRIVATE KEY-----\nSECRETKEYTEXT\n"
                                   "-----END OPENSSH PRIVATE KEY-----\n",
                          host_key_pub="ssh-ed25519 AAAAPUB root@" + node,
                          mac=NODE1_MAC if node == "node1" else NODE2_MAC,
                          ipv4="10.77.0.11/24" if node == "node1" else "10.77.0.12/24")


@dataclass
class Callbacks:
    events: list[tuple[str, ...]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def on_progress(self, node: str, stage: str, message: str) -> None:
        with self.lock:
            self.events.append(("progress", node, stage, message))

    def on_done(self, node: str) -> None:
        with self.lock:
            self.events.append(("done", node))

    def on_failed(self, node: str, stage: str, message: str, log: str) -> None:
        with self.lock:
            self.events.append(("failed", node, stage, message, log))


@dataclass
class Api:
    server: BootHttpServer
    state: StateStore
    provider: Provider
    callbacks: Callbacks
    image: Path

    def request(self, method: str, path: str, *, token: str | None = None,
                body: bytes | str | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, bytes, dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            hdrs = dict(headers or {})
            if token is not None:
                hdrs[contract.TOKEN_HEADER] = token
            if isinstance(body, str):
                body = body.encode()
            if body is not None:
                hdrs.setdefault("Content-Type", "application/x-www-form-urlencoded")
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()}
        finally:
            conn.close()

    def post(self, node: str, what: str, token: str | None, **fields: str) -> int:
        path = {"progress": contract.NODE_PROGRESS, "done": contract.NODE_DONE,
                "failed": contract.NODE_FAILED}[what].format(node=node)
        return self.request("POST", path, token=token,
                            body=urllib.parse.urlencode(fields))[0]


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    installer = tmp_path / "installer"
    images = tmp_path / "images"
    installer.mkdir()
    images.mkdir()
    (installer / "vmlinuz").write_bytes(b"kernel" * 1000)
    (installer / "initrd.img").write_bytes(b"initrd" * 1000)
    image = images / "golden.raw"
    with open(image, "wb") as handle:  # sparse, with data at both ends to check the bytes
        handle.write(os.urandom(1 << 20))
        handle.seek(IMAGE_BYTES - (1 << 20))
        handle.write(os.urandom(1 << 20))
    (tmp_path / "outside.raw").write_bytes(b"not served")
    (images / "escape.raw").symlink_to(tmp_path / "outside.raw")
    state = StateStore.open_file(tmp_path / "state" / "metalchain.db")
    provider, callbacks = Provider(), Callbacks()
    nodes = BootNodes.of([BootNode("node1", NODE1_MAC, "127.0.0.1"),
                          BootNode("node2", NODE2_MAC, "127.0.0.1")])
    server = BootHttpServer("127.0.0.1", 0, installer_dir=installer, images_dir=images,
                            provider=provider, tokens=state, callbacks=callbacks, nodes=nodes,
                            kernel_args=("console=ttyS0",),
                            limits=HttpLimits(request_timeout=1.5, max_body=64 * 1024))
    server.start()
    try:
        yield Api(server, state, provider, callbacks, image)
    finally:
        server.stop()
        state.close()


def issue(api: Api, node: str) -> str:
    token = api.state.issue_deploy_token(node, ttl=600)
    api.provider.tokens[node] = token
    return token


# (1) the HTTP API ------------------------------------------------------------------------------

def test_callbacks_without_token_are_401_and_change_nothing(api: Api) -> None:
    token = issue(api, "node1")
    assert api.post("node1", "progress", None, stage="started", message="x") == 401
    assert api.post("node1", "done", None) == 401
    assert api.post("node1", "failed", None, stage="streaming", message="m", log="l") == 401
    assert api.request("GET", contract.NODE_CONFIG.format(node="node1"))[0] == 401
    assert api.callbacks.events == []
    assert api.state.check_deploy_token("node1", token)


def test_another_nodes_or_a_wrong_token_is_403_and_changes_nothing(api: Api) -> None:
    token1, token2 = issue(api, "node1"), issue(api, "node2")
    for bad in (token2, token1[:-1] + ("A" if token1[-1] != "A" else "B"), "short", "x" * 300):
        assert api.post("node1", "done", bad) == 403
        assert api.post("node1", "progress", bad, stage="started", message="") == 403
        assert api.post("node1", "failed", bad, stage="started") == 403
        assert api.request("GET", contract.NODE_CONFIG.format(node="node1"), token=bad)[0] == 403
    assert api.callbacks.events == []
    assert api.state.check_deploy_token("node1", token1)
    assert api.state.check_deploy_token("node2", token2)


def test_unknown_node_is_404(api: Api) -> None:
    token = issue(api, "node1")
    assert api.post("ghost", "done", token) == 404
    assert api.request("GET", "/boot/52-54-00-00-00-99.ipxe")[0] == 404
    assert api.request("GET", "/nothing/here")[0] == 404
    assert api.callbacks.events == []


def test_progress_then_done_reach_the_callbacks_once_and_replay_is_rejected(api: Api) -> None:
    token = issue(api, "node1")
    assert api.post("node1", "progress", token, stage="streaming", message="42%") == 200
    assert api.post("node1", "done", token) == 200
    assert api.callbacks.events == [("progress", "node1", "streaming", "42%"), ("done", "node1")]
    # Replays after done: the token is spent.
    assert api.post("node1", "done", token) == 403
    assert api.post("node1", "failed", token, stage="streaming") == 403
    assert api.post("node1", "progress", token, stage="streaming", message="again") == 403
    assert api.request("GET", contract.NODE_CONFIG.format(node="node1"), token=token)[0] == 403
    assert len(api.callbacks.events) == 2
    assert not api.state.check_deploy_token("node1", token)


def test_concurrent_done_replays_are_accepted_exactly_once(api: Api) -> None:
    token = issue(api, "node2")
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def send() -> None:
        barrier.wait(timeout=10)
        statuses.append(api.post("node2", "done", token))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(statuses) == [200] + [403] * 7
    assert api.callbacks.events == [("done", "node2")]


def test_failed_carries_stage_message_and_log(api: Api) -> None:
    token = issue(api, "node1")
    log_tail = "line 1\nläuft nicht\n" * 100
    assert api.post("node1", "failed", token, stage="verifying", message="sha256 mismatch",
                    log=log_tail) == 200
    assert api.callbacks.events == [("failed", "node1", "verifying", "sha256 mismatch",
                                     log_tail)]
    assert api.post("node1", "done", token) == 403


def test_config_env_needs_the_token_and_sources_in_sh(api: Api, tmp_path: Path) -> None:
    token = issue(api, "node1")
    status, body, headers = api.request("GET", contract.NODE_CONFIG.format(node="node1"),
                                        token=token)
    assert status == 200 and headers["cache-control"] == "no-store"
    env_file = tmp_path / "config.env"
    env_file.write_bytes(body)
    keys = [line.split("=", 1)[0] for line in body.decode().splitlines()]
    assert tuple(keys) == contract.CONFIG_KEYS
    script = '. "$1" && printf "%s|%s|%s|%s" "$MC_HOSTNAME" "$MC_IMAGE_URL" "$MC_MAC" ' \
             '"$(printf %s "$MC_AUTHORIZED_KEYS" | base64 -d)"'
    out = subprocess.run(["sh", "-c", script, "sh", str(env_file)], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    assert out == (f"node1|{api.server.url}/images/golden.raw|{NODE1_MAC}|"
                   "ssh-ed25519 AAAAC3Nza operator's key")
    # Not being deployed (the provider says so): refused even with a valid token.
    api.provider.tokens.pop("node1")
    assert api.request("GET", contract.NODE_CONFIG.format(node="node1"), token=token)[0] == 409


def test_ipxe_script_installs_only_with_an_active_token(api: Api) -> None:
    path = contract.IPXE_SCRIPT.format(mac_hyphens=NODE1_MAC.replace(":", "-"))
    status, body, _ = api.request("GET", path)
    assert status == 200 and body.startswith(b"#!ipxe") and b"\nexit\n" in body
    token = issue(api, "node1")
    status, body, _ = api.request("GET", path.upper().replace("/BOOT/", "/boot/")
                                  .replace(".IPXE", ".ipxe"))
    text = body.decode()
    assert status == 200
    assert f"kernel {api.server.url}{contract.INSTALLER_KERNEL} " in text
    assert f"{contract.KARG_TOKEN}={token}" in text and f"{contract.KARG_NODE}=node1" in text
    assert f"{contract.KARG_URL}={api.server.url}" in text and "console=ttyS0" in text
    assert f"initrd {api.server.url}{contract.INSTALLER_INITRD}" in text
    assert api.post("node1", "done", token) == 200
    # Spent: the provider still (wrongly) answers with the token, the store says no.
    status, body, _ = api.request("GET", path)
    assert status == 200 and b"\nexit\n" in body and token.encode() not in body


def test_malformed_requests_get_a_one_line_reason(api: Api) -> None:
    token = issue(api, "node1")
    done = contract.NODE_DONE.format(node="node1")
    progress = contract.NODE_PROGRESS.format(node="node1")
    cases = [
        ("POST", progress, "stage=bogus&message=x", {}, 400),
        ("POST", progress, "stage=started&extra=1", {}, 400),
        ("POST", progress, "stage=started&stage=started", {}, 400),
        ("POST", progress, b"stage=started&message=\xff", {}, 400),
        ("POST", progress, "stage=started", {"Content-Type": "application/json"}, 415),
        ("POST", progress, "x" * (65 * 1024), {}, 413),
        ("POST", done, "", {"Content-Length": "nope"}, 400),
        ("GET", done, None, {}, 405),
        ("POST", contract.INSTALLER_KERNEL, "", {}, 405),
    ]
    for method, path, body, headers, want in cases:
        status, text, _ = api.request(method, path, token=token, body=body, headers=headers)
        assert status == want, (path, body, status, text)
        lines = text.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith(str(want)), text
        assert "Traceback" not in text.decode()
    assert api.callbacks.events == []
    assert api.state.check_deploy_token("node1", token)


def test_slow_client_is_cut_off_at_the_request_deadline(api: Api) -> None:
    with socket.create_connection(("127.0.0.1", api.server.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/nodes/node1/done HTTP/1.0\r\n")
        started = time.monotonic()
        sock.sendall(b"X-Slow: 1\r\n")
        data = b""
        while True:  # the server closes the connection; recv returns b"" (or an error)
            try:
                chunk = sock.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            data += chunk
        elapsed = time.monotonic() - started
    assert elapsed < 5.0, elapsed
    assert api.callbacks.events == []


def test_large_image_streams_with_content_length(api: Api) -> None:
    want = hashlib.sha256(api.image.read_bytes()).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", api.server.port, timeout=30)
    try:
        started = time.monotonic()
        conn.request("GET", contract.IMAGE.format(name="golden"))
        resp = conn.getresponse()
        assert resp.status == 200
        assert int(resp.getheader("Content-Length")) == IMAGE_BYTES
        digest, total = hashlib.sha256(), 0
        while chunk := resp.read(1 << 20):
            digest.update(chunk)
            total += len(chunk)
        elapsed = time.monotonic() - started
    finally:
        conn.close()
    assert total == IMAGE_BYTES and digest.hexdigest() == want
    print(f"\n400 MiB image streamed in {elapsed:.2f}s ({IMAGE_BYTES / elapsed / 2**20:.0f} MiB/s)")
    status, body, headers = api.request("HEAD", contract.IMAGE.format(name="golden"))
    assert status == 200 and body == b"" and int(headers["content-length"]) == IMAGE_BYTES
    status, body, headers = api.request("GET", contract.INSTALLER_INITRD)
    assert status == 200 and int(headers["content-length"]) == len(body) == 6000
    assert api.request("GET", contract.IMAGE.format(name="escape"))[0] == 404
    assert api.request("GET", contract.IMAGE.format(name="missing"))[0] == 404
    assert api.request("GET", "/images/..%2Fouside.raw")[0] == 404


def test_connections_beyond_the_cap_get_503(tmp_path: Path) -> None:
    state = StateStore.open_file(tmp_path / "state.db")
    server = BootHttpServer("127.0.0.1", 0, installer_dir=tmp_path, images_dir=tmp_path,
                            provider=Provider(), tokens=state, callbacks=Callbacks(),
                            limits=HttpLimits(max_connections=2, request_timeout=5.0))
    server.start()
    idle = []
    try:
        idle = [socket.create_connection(("127.0.0.1", server.port), timeout=5)
                for _ in range(2)]
        deadline = time.monotonic() + 5
        status = 0
        while status != 503 and time.monotonic() < deadline:  # the idle two are being accepted
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
            try:
                conn.request("GET", "/installer/vmlinuz")
                status = conn.getresponse().status
            except (ConnectionError, http.client.HTTPException):
                status = 0
            finally:
                conn.close()
        assert status == 503
    finally:
        for sock in idle:
            sock.close()
        server.stop()
        state.close()


def test_tokens_and_keys_never_reach_the_log(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="metalchain")
    token = issue(api, "node1")
    api.request("GET", contract.IPXE_SCRIPT.format(mac_hyphens=NODE1_MAC.replace(":", "-")))
    api.request("GET", contract.NODE_CONFIG.format(node="node1"), token=token)
    api.post("node1", "progress", token, stage="started", message="hello")
    api.post("node1", "done", token)
    api.post("node1", "done", token)
    # The server writes its access log line after the response is sent: wait for it.
    deadline = time.monotonic() + 5
    while True:
        text = "\n".join(record.getMessage() for record in caplog.records)
        if "/v1/nodes/node1/done -> 403" in text or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert "/v1/nodes/node1/done -> 403 node=node1" in text
    assert token not in text and "SECRETKEYTEXT" not in text


# (2) dnsmasq + QEMU PXE -------------------------------------------------------------------------

@dataclass
class PxeLab:
    net: LabNetwork
    boot: BootServer
    machine: Machine
    mac: str
    ip: str


@pytest.fixture(params=[True, False], ids=["ra", "no-ra"])
def pxe_lab(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PxeLab]:
    ipv6_ra: bool = request.param
    suffix = uuid.uuid4().hex[:6]
    net = LabNetwork(f"mcbs-{suffix}", ipv4="10.79.5.0/24", ipv6="fd6d:6c61:6279::/64")
    # dnsmasq drops to `nobody`, which cannot enter pytest's mode-0700 tmp_path.
    state_dir = Path(tempfile.mkdtemp(prefix="mc-boot-", dir="/tmp"))
    os.chmod(state_dir, 0o755)
    mac, ip = "52:54:00:4d:43:51", "10.79.5.11"
    inventory = Inventory(hosts={"pxe1": Host("pxe1", ip, ("all",),
                                              provision=Provisioning(mac, ip, "golden"))},
                          groups={}, all_vars={}, sources=[])
    settings = BootSettings.from_mapping(
        {"interface": net.uplink, "address": "10.79.5.1", "subnet": "10.79.5.0/24",
         "http_port": 0, "ipv6_ra": ipv6_ra, "state_dir": str(state_dir)},
        site_root=tmp_path)
    state = StateStore.open_file(tmp_path / "state.db")
    boot = BootServer(settings, provider=Provider(), tokens=state, callbacks=Callbacks(),
                      inventory=inventory)
    machine = Machine(MachineSpec("pxe1", tmp_path / "pxe1", mac,
                                  network=TapNetwork(f"t{suffix}"), netns=net.netns,
                                  boot_order="n", memory_mib=256, disk_bytes=64 << 20))
    try:
        net.up()
        net.add_tap(f"t{suffix}")
        boot.start()
        machine.start()
        yield PxeLab(net, boot, machine, mac, ip)
    finally:
        errors: list[BaseException] = []
        for step in (machine.stop, boot.stop, net.down):
            try:
                step()
            except Exception as exc:  # noqa: BLE001 - every cleanup step runs
                errors.append(exc)
        state.close()
        shutil.rmtree(state_dir, ignore_errors=True)
        if errors:
            raise errors[0]


def test_pxe_boot_fetches_the_per_mac_script(pxe_lab: PxeLab,
                                             record_property: pytest.RecordProperty) -> None:
    lab = pxe_lab
    script = contract.IPXE_SCRIPT.format(mac_hyphens=lab.mac.replace(":", "-"))
    ra = lab.boot.settings.ipv6_ra
    since = time.time()
    started = time.monotonic()
    qmp_execute(lab.machine.qmp_socket, "cont")  # what a BMC's "power on" does
    record = lab.boot.http.wait_for_request(
        lambda r: r.method == "GET" and r.path == script, timeout=120, since=since)
    elapsed = time.monotonic() - started
    assert record is not None, (
        f"no GET {script} within 120 s; serial tail: {lab.machine.serial_text()[-800:]!r}; "
        f"dnsmasq log tail: {_tail(lab.boot.settings.state_dir / 'dnsmasq.log')!r}")
    assert record.client == lab.ip and record.status == 200 and record.node == "pxe1"
    lab.machine.wait_for_serial(r"boots from its local disk", timeout=30)
    leases = (lab.boot.settings.state_dir / "dnsmasq.leases").read_text()
    assert lab.mac in leases and lab.ip in leases
    record_property("power_on_to_script_s", round(elapsed, 2))
    print(f"\nRA {'on' if ra else 'off'}: power on -> GET {script} {elapsed:.2f}s")
    # Non-iPXE PXE ROMs get iPXE over TFTP from the same dnsmasq (fetched from inside the lab).
    got = lab.boot.settings.state_dir / "fetched.kpxe"
    subprocess.run(["ip", "netns", "exec", lab.net.netns, "curl", "-sS", "--max-time", "20",
                    "-o", str(got), "tftp://10.79.5.1/undionly.kpxe"], check=True, timeout=30)
    assert got.read_bytes() == Path("/usr/lib/ipxe/undionly.kpxe").read_bytes()
    # A reload with the node gone: SIGHUP only, and the next script request is unknown.
    assert lab.boot.reload(Inventory(hosts={}, groups={}, all_vars={}, sources=[])) == "hosts"
    assert lab.boot.dnsmasq is not None and lab.boot.dnsmasq.running


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-1500:]
    except OSError:
        return ""
