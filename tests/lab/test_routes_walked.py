"""Every HTTP route walked (issue 13): the boot server (``provision.bootserver.http.ROUTES``), the
receiver of ``metalchain serve`` (``monitor.receiver._ROUTES``) and the mirror server
(``configure.mirror_server.ROUTES``), enumerated FROM THE ROUTERS, so a new route without an
entry in ``EXPECTED`` fails :func:`test_every_route_has_an_expectation`.

- A route that is not public is called without credentials, with wrong ones and with another
  node's (or host's) token: 100 % rejected (401/403), nothing called, nothing stored; with the
  right ones it is not rejected (so the sample path reaches the route).
- The public routes (documented in each server's docstring) answer without credentials and
  expose no secret: no deploy token, webhook token, event key or token, host private key.
- Path traversal on every route (``../``, ``%2e%2e%2f``, double-encoded, overlong UTF-8,
  absolute paths, NUL, backslashes, and symlinks planted in the served directories pointing
  outside): a canary file outside every served root never comes back, whatever the status.

Real servers on 127.0.0.1 / 127.0.0.2 / 127.0.0.3, ports 20420-20422.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from configure import mirror_server
from configure.mirror_server import MirrorServer
from inventory.state import StateStore
from monitor import receiver as receiver_mod
from monitor.events import derive_token, token_matches
from monitor.ingest import Ingestor
from monitor.metrics import build_registry
from monitor.receiver import Receiver
from provision import contract
from provision.bootserver import BootHttpServer, BootNode, BootNodes, NodeConfig
from provision.bootserver import http as boot_http

pytestmark = pytest.mark.lab

HOST, NODE1_IP, NODE2_IP = "127.0.0.1", "127.0.0.2", "127.0.0.3"
BOOT_PORT, RECEIVER_PORT, MIRROR_PORT = 20420, 20421, 20422
MAC1, MAC2 = "52:54:00:4d:13:11", "52:54:00:4d:13:12"
CANARY = "canary-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
HOST_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nKEY" + CANARY[7:] + "\n-----END-----\n"
WEBHOOK_TOKEN = "webhook-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
EVENT_KEY = "event-key-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
REJECTED = (401, 403)


# -- raw HTTP, every answer kept for the canary check ---------------------------------------------

ANSWERS: list[bytes] = []


def send(port: int, method: str, path: str, *, source: str = HOST, body: bytes = b"",
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request with ``path`` sent byte for byte: (status, body), (0, b"") if unanswered."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "surrogateescape") + body
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    with sock:
        sock.bind((source, 0))
        sock.connect((HOST, port))
        sock.sendall(data)
        buf = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(1 << 16):
                buf += chunk
    ANSWERS.append(buf)
    if not buf.startswith(b"HTTP/1."):
        return 0, b""
    head, _, rest = buf.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


# -- the three servers, one lab for the module ----------------------------------------------------

@dataclass
class Provider:
    tokens: dict[str, str] = field(default_factory=dict)

    def install_token(self, node: str) -> str | None:
        return self.tokens.get(node)

    def node_config(self, node: str) -> NodeConfig | None:
        if node not in self.tokens:
            return None
        return NodeConfig(hostname=node, image_url="/images/golden.raw", image_sha256="ab" * 32,
                          image_size=1, authorized_keys="ssh-ed25519 AAAA op\n",
                          host_key=HOST_KEY, host_key_pub="ssh-ed25519 AAAAPUB",
                          mac=MAC1 if node == "node1" else MAC2,
                          ipv4="10.77.0.11/24" if node == "node1" else "10.77.0.12/24")


@dataclass
class Calls:
    """Everything a rejected request must not have caused."""

    callbacks: list[tuple[str, ...]] = field(default_factory=list)
    commits: int = 0

    def on_progress(self, node: str, stage: str, message: str) -> None:
        self.callbacks.append(("progress", node))

    def on_done(self, node: str) -> None:
        self.callbacks.append(("done", node))

    def on_failed(self, node: str, stage: str, message: str, log: str) -> None:
        self.callbacks.append(("failed", node))


class CountingIngestor(Ingestor):
    def __init__(self, store: Any, calls: Calls) -> None:
        super().__init__(store)
        self.calls = calls

    def commit(self, items: Any, source: str, received: Any = None) -> Any:
        self.calls.commits += 1
        return super().commit(items, source, received)


@dataclass
class Lab:
    boot: BootHttpServer
    receiver: Receiver
    mirror: MirrorServer
    state: StateStore
    provider: Provider
    calls: Calls
    outside: Path

    def deploy_token(self, node: str) -> str:
        if node not in self.provider.tokens:
            self.provider.tokens[node] = self.state.issue_deploy_token(node, ttl=3600)
        return self.provider.tokens[node]


def plant(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("routes")
    outside = tmp / "outside"
    outside.mkdir()
    for name in ("canary.txt", "canary.raw", "canary.raw.sha256", "vmlinuz", "Packages"):
        (outside / name).write_text(CANARY + "\n")
    installer, images = tmp / "boot" / "installer", tmp / "boot" / "images"
    installer.mkdir(parents=True)
    images.mkdir()
    (installer / "vmlinuz").write_bytes(b"kernel")
    (installer / "initrd.img").write_bytes(b"initrd")
    (images / "golden.raw").write_bytes(b"golden image")
    (images / "golden.raw.sha256").write_text("ab" * 32 + "  golden.raw\n")
    # Symlinks planted in the served directories, leading out of them.
    plant(images / "evil.raw", outside / "canary.raw")
    plant(images / "rel.raw", Path("../../outside/canary.raw"))
    plant(images / "evil.raw.sha256", outside / "canary.raw.sha256")
    release = tmp / "mirror" / "releases" / "r1"
    release.mkdir(parents=True)
    (release / "Packages").write_text("Package: a\n")
    (release / "pool").mkdir()
    (release / "pool" / "a_1_all.deb").write_bytes(b"deb")
    plant(release / "evil", outside / "canary.txt")
    plant(release / "pool" / "rel.deb", Path("../../../../outside/canary.txt"))
    plant(release / "linkdir", outside)
    (tmp / "mirror" / "current").symlink_to("releases/r1")
    mirror_images = tmp / "mirror" / "images"
    mirror_images.mkdir()
    (mirror_images / "guest.qcow2").write_bytes(b"guest image")
    plant(mirror_images / "evil.qcow2", outside / "canary.txt")
    plant(mirror_images / "linkdir", outside)

    state = StateStore.open_file(tmp / "state" / "metalchain.db")
    provider, calls = Provider(), Calls()
    boot = BootHttpServer(HOST, BOOT_PORT, installer_dir=installer, images_dir=images,
                          provider=provider, tokens=state, callbacks=calls,
                          nodes=BootNodes.of([BootNode("node1", MAC1, NODE1_IP),
                                              BootNode("node2", MAC2, NODE2_IP)]))
    registry, _ = build_registry(state)
    receiver = Receiver(HOST, RECEIVER_PORT, ingestor=CountingIngestor(state, calls),
                        webhook_token=WEBHOOK_TOKEN, registry=registry,
                        event_auth=lambda host, token: token_matches(EVENT_KEY, host, token))
    mirror = MirrorServer(tmp / "mirror" / "current", HOST, MIRROR_PORT)
    started: list[Callable[[], None]] = []
    try:
        boot.start()
        started.append(boot.stop)
        receiver.start()
        started.append(receiver.stop)
        mirror.start()
        started.append(mirror.stop)
        yield Lab(boot, receiver, mirror, state, provider, calls, outside)
    finally:
        for stop in reversed(started):
            stop()
        state.close()


# -- the expectation table: one entry per route of every router ------------------------------------

Creds = dict[str, str]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def event_body(host: str) -> bytes:
    return json.dumps({"version": "1", "host": host, "kind": "unit_failed",
                       "unit": "ssh.service", "at": 1764633600}).encode()


@dataclass(frozen=True)
class Expect:
    """How to call one route: ``public`` routes need no credentials; the others are called
    with ``bad`` credential sets (none, wrong, another node's) and must be 401/403, and with
    ``good`` ones and must not be. ``path(name)`` puts a traversal payload where the route
    takes a name (None: the route takes none)."""

    method: str
    sample: str
    public: bool
    why: str
    body: Callable[[], bytes] = lambda: b""
    source: str = HOST
    good: Callable[[Lab], Creds] = lambda lab: {}
    bad: Callable[[Lab], list[Creds]] = lambda lab: []
    path: Callable[[str], str] | None = None


def deploy(node: str) -> Callable[[Lab], Creds]:
    return lambda lab: {contract.TOKEN_HEADER: lab.deploy_token(node), **FORM}


def deploy_bad(node: str, other: str) -> Callable[[Lab], list[Creds]]:
    def sets(lab: Lab) -> list[Creds]:
        right = lab.deploy_token(node)
        wrong = right[:-1] + ("A" if right[-1] != "A" else "B")
        return [dict(FORM), {contract.TOKEN_HEADER: "", **FORM},
                {contract.TOKEN_HEADER: wrong, **FORM},
                {contract.TOKEN_HEADER: "x" * 300, **FORM},
                {contract.TOKEN_HEADER: lab.deploy_token(other), **FORM},
                {"Authorization": f"Bearer {right}", **FORM},
                {contract.TOKEN_HEADER: WEBHOOK_TOKEN, **FORM}]
    return sets


def bearer(token: str) -> Creds:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def callback(node: str, what: str, fields: dict[str, str]) -> Expect:
    template = {"progress": contract.NODE_PROGRESS, "done": contract.NODE_DONE,
                "failed": contract.NODE_FAILED}[what]
    return Expect("POST", template.format(node=node), False, "the installer's report: the "
                  "node's one-time deploy token", body=lambda: urllib.parse.urlencode(
                      fields).encode(), good=deploy(node), bad=deploy_bad(node, "node2"),
                  path=lambda name: template.format(node=name))


EXPECTED: dict[tuple[str, str], Expect] = {
    ("boot", "script"): Expect(
        "GET", contract.IPXE_SCRIPT.format(mac_hyphens=MAC1.replace(":", "-")), True,
        "iPXE has no credentials; the deploy token is only in the answer to the node's own "
        "address (from elsewhere: 403)", source=NODE1_IP,
        path=lambda name: "/boot/" + name + ".ipxe"),
    ("boot", "kernel"): Expect("GET", contract.INSTALLER_KERNEL, True,
                               "Debian's kernel: nothing secret"),
    ("boot", "initrd"): Expect("GET", contract.INSTALLER_INITRD, True,
                               "our busybox installer: no key, no token in it"),
    ("boot", "image"): Expect("GET", contract.IMAGE.format(name="golden"), True,
                              "golden images have no host keys or passwords",
                              path=lambda name: "/images/" + name),
    ("boot", "image_sha256"): Expect("GET", contract.IMAGE_SHA256.format(name="golden"), True,
                                     "a checksum", path=lambda name: "/images/" + name
                                     + ".sha256"),
    ("boot", "config"): Expect("GET", contract.NODE_CONFIG.format(node="node1"), False,
                               "config.env holds the node's host private key",
                               good=deploy("node1"), bad=deploy_bad("node1", "node2"),
                               path=lambda name: contract.NODE_CONFIG.format(node=name)),
    ("boot", "progress"): callback("node1", "progress", {"stage": "started", "message": "m"}),
    ("boot", "failed"): callback("node1", "failed", {"stage": "started", "message": "m"}),
    ("boot", "done"): callback("node1", "done", {}),
    ("receiver", receiver_mod.ALERTS_PATH): Expect(
        "POST", receiver_mod.ALERTS_PATH, False, "Alertmanager's webhook: the webhook token",
        body=lambda: b"{}", good=lambda lab: bearer(WEBHOOK_TOKEN),
        bad=lambda lab: [{"Content-Type": "application/json"}, bearer("wrong-" + "x" * 30),
                         bearer(derive_token(EVENT_KEY, "web1")),
                         {"Authorization": WEBHOOK_TOKEN}, {"Authorization": "Basic "
                                                            + WEBHOOK_TOKEN}],
        path=lambda name: receiver_mod.ALERTS_PATH + "/" + name),
    ("receiver", receiver_mod.EVENTS_PATH): Expect(
        "POST", receiver_mod.EVENTS_PATH, False, "a host's event: that host's event token",
        body=lambda: event_body("web1"), good=lambda lab: bearer(derive_token(EVENT_KEY,
                                                                              "web1")),
        bad=lambda lab: [{"Content-Type": "application/json"}, bearer("wrong-" + "x" * 30),
                         bearer(derive_token(EVENT_KEY, "web2")), bearer(WEBHOOK_TOKEN),
                         bearer(derive_token("another-site-key", "web1"))],
        path=lambda name: receiver_mod.EVENTS_PATH + "/" + name),
    ("receiver", receiver_mod.METRICS_PATH): Expect(
        "GET", receiver_mod.METRICS_PATH, True, "Prometheus scrapes without a token; "
        "counters and durations only", path=lambda name: receiver_mod.METRICS_PATH + "/" + name),
    ("receiver", receiver_mod.HEALTH_PATH): Expect("GET", receiver_mod.HEALTH_PATH, True,
                                                   "'ok'"),
    ("mirror", "images"): Expect("GET", "/images/guest.qcow2", True,
                                 "the lab's guest image: no secret in it",
                                 path=lambda name: "/images/" + name),
    ("mirror", "repository"): Expect("GET", "/Packages", True,
                                     "a signed apt repository (public key, .debs)",
                                     path=lambda name: "/" + name),
}


def routers() -> set[tuple[str, str]]:
    return ({("boot", name) for name in boot_http.ROUTES}
            | {("receiver", path) for path in receiver_mod._ROUTES}
            | {("mirror", name) for name in mirror_server.ROUTES})


def port_of(server: str) -> int:
    return {"boot": BOOT_PORT, "receiver": RECEIVER_PORT, "mirror": MIRROR_PORT}[server]


def test_every_route_has_an_expectation() -> None:
    missing = sorted(routers() - set(EXPECTED))
    stale = sorted(set(EXPECTED) - routers())
    assert not missing, f"routes without an entry in EXPECTED (say who may call them): {missing}"
    assert not stale, f"EXPECTED names routes the routers no longer have: {stale}"
    # The methods the table uses are the ones the routers allow.
    for path, methods in receiver_mod._ROUTES.items():
        assert EXPECTED[("receiver", path)].method in methods


def test_every_protected_route_rejects_missing_wrong_and_other_nodes_credentials(
        lab: Lab) -> None:
    protected = [(k, e) for k, e in EXPECTED.items() if not e.public]
    assert len(protected) == 6
    lab.deploy_token("node1")
    lab.deploy_token("node2")
    before = len(lab.state.list_incidents())
    tried, rejected, wrong = 0, 0, []
    for (server, route), expect in protected:
        for creds in expect.bad(lab):
            status, _ = send(port_of(server), expect.method, expect.sample, body=expect.body(),
                             headers=creds, source=expect.source)
            tried += 1
            if status in REJECTED:
                rejected += 1
            else:
                wrong.append((server, route, sorted(creds), status))
    print(f"\nprotected routes: {rejected}/{tried} calls without, with wrong or with another "
          f"node's credentials rejected ({len(protected)} routes)")
    assert not wrong, wrong
    assert lab.calls.callbacks == [] and lab.calls.commits == 0
    assert len(lab.state.list_incidents()) == before
    assert lab.state.check_deploy_token("node1", lab.deploy_token("node1"))
    # With the right credentials the same samples are not rejected (the walk reaches them);
    # `failed` and `done` spend it, so each gets a fresh one.
    for (server, route), expect in protected:
        if route in ("failed", "done"):  # each spends the token: a fresh one for each
            lab.provider.tokens.pop("node1", None)
        status, _ = send(port_of(server), expect.method, expect.sample, body=expect.body(),
                         headers=expect.good(lab), source=expect.source)
        assert status not in REJECTED and status != 404, (server, route, status)


def test_the_ipxe_script_gives_the_token_only_to_the_nodes_own_address(lab: Lab) -> None:
    lab.provider.tokens.pop("node1", None)  # an earlier test may have spent it
    token = lab.deploy_token("node1")
    path = EXPECTED[("boot", "script")].sample
    for source in (HOST, NODE2_IP):
        status, body = send(BOOT_PORT, "GET", path, source=source)
        assert status == 403 and token.encode() not in body
    status, body = send(BOOT_PORT, "GET", path, source=NODE1_IP)
    assert status == 200 and token.encode() in body


def test_public_routes_answer_without_credentials_and_expose_no_secret(lab: Lab) -> None:
    public = [(k, e) for k, e in EXPECTED.items() if k != ("boot", "script") and e.public]
    secrets = [WEBHOOK_TOKEN, EVENT_KEY, derive_token(EVENT_KEY, "web1"), CANARY,
               lab.deploy_token("node1"), lab.deploy_token("node2"), "PRIVATE KEY"]
    for (server, route), expect in public:
        for creds in ({}, {"Authorization": "Bearer wrong"}):
            status, body = send(port_of(server), expect.method, expect.sample, headers=creds,
                                source=expect.source)
            assert status == 200, (server, route, status)
            for secret in secrets:
                assert secret.encode() not in body, (server, route, secret[:12])


TRAVERSALS = [
    "../outside/canary.txt", "../../outside/canary.txt", "../../../outside/canary.txt",
    "..%2f..%2foutside%2fcanary.txt", "%2e%2e%2f%2e%2e%2foutside%2fcanary.txt",
    "%2e%2e/%2e%2e/outside/canary.txt", "%252e%252e%252f%252e%252e%252foutside%252fcanary.txt",
    "..%252f..%252foutside%252fcanary.txt", "%c0%ae%c0%ae/%c0%ae%c0%ae/outside/canary.txt",
    "....//....//outside/canary.txt", "..\\..\\outside\\canary.txt",
    "..%5c..%5coutside%5ccanary.txt", "%2e%2e%5c%2e%2e%5coutside%5ccanary.txt",
    "{outside}/canary.txt", "%2f{outside_q}%2fcanary.txt", "/{outside}/canary.txt",
    "golden.raw%00", "canary.txt%00.raw", "Packages%00.deb", "%00../outside/canary.txt",
    "evil", "evil.raw", "rel", "rel.raw", "evil.qcow2", "pool/rel.deb", "linkdir/canary.txt",
    "linkdir/canary", "linkdir%2fcanary.txt", "./linkdir/./canary.txt", "evil.raw.sha256",
    "..;/outside/canary.txt", "%2e%2e;/outside/canary.txt",
]


def test_no_route_gives_out_a_file_outside_its_served_roots(lab: Lab) -> None:
    outside = str(lab.outside).lstrip("/")
    names = [t.format(outside=outside, outside_q=urllib.parse.quote(outside, safe=""))
             for t in TRAVERSALS]
    sent, statuses = 0, {}
    for (server, route), expect in EXPECTED.items():
        paths = [expect.path(n) for n in names] if expect.path else []
        # Every route, with or without a name: the payload after its path and in its place.
        paths += [expect.sample + "/" + n for n in names[:12]]
        paths += ["/" + n for n in names]
        headers = expect.good(lab) if not expect.public else {}
        for path in paths:
            status, body = send(port_of(server), expect.method, path, body=expect.body(),
                                headers=headers, source=expect.source)
            sent += 1
            statuses[status] = statuses.get(status, 0) + 1
            assert CANARY.encode() not in body, (server, route, path, status)
            assert status != 200 or CANARY.encode() not in body
    leaked = sum(CANARY.encode() in answer for answer in ANSWERS)
    print(f"\npath traversal: {sent} requests on {len(EXPECTED)} routes, statuses {statuses}, "
          f"canary in {leaked} answers")
    assert leaked == 0
    assert statuses.get(0, 0) == 0, "a request closed without an answer"
