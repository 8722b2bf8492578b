"""The network-input fuzz campaign over real HTTP: ``metalchain serve``'s receiver (alerts,
events, metrics, health) and the boot server's install callbacks, each started on 127.0.0.1
with a real state store, fed raw requests from :mod:`tests.netfuzz` on fresh connections.

Property (per request): an answer comes back (never a dropped connection, never a wait past
the server's own deadline) and it is not a 5xx; the servers still answer a valid request at
the end. What each target saw is counted in :class:`Tally` (examples, answers by class,
failures with their first examples, the slowest answer), for the lab test
(tests/lab/test_netfuzz_http.py) and the full-size run (bench/fuzz_net.py).
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from inventory.state import StateStore
from monitor import events as ev
from monitor.ingest import Ingestor
from monitor.receiver import ALERTS_PATH, EVENTS_PATH, HEALTH_PATH, METRICS_PATH, Receiver
from provision import contract
from provision.bootserver import BootHttpServer, BootNode, BootNodes, HttpLimits, NodeConfig
from tests import netfuzz
from tests.netfuzz import _one_in

WEBHOOK_TOKEN = "fuzz-webhook-token-0123456789"
EVENT_KEY = "fuzz-event-key"
EVENT_HOST = "web1"
NODE = "node1"
NODE_MAC = "52:54:00:4d:46:01"


@dataclass
class Tally:
    """What one target saw."""

    name: str
    examples: int = 0
    by_class: Counter[str] = field(default_factory=Counter)
    failures: int = 0
    server_errors: int = 0
    dropped: int = 0
    hangs: int = 0
    max_latency: float = 0.0
    first_failures: list[dict[str, Any]] = field(default_factory=list)
    #: methods the server implements (a 501 for any other is HTTP's answer to a method it
    #: does not know, RFC 9110 15.6.2: counted apart, not a failure)
    methods: frozenset[str] = frozenset()
    unknown_method_501: int = 0

    def record(self, request: netfuzz.Request, got: netfuzz.Exchange) -> None:
        self.examples += 1
        self.max_latency = max(self.max_latency, got.seconds)
        if got.status is None:
            self.by_class["none"] += 1
        else:
            self.by_class[f"{got.status // 100}xx"] += 1
            self.by_class[str(got.status)] += 0   # keep the key order stable in reports
        bad = ""
        if got.timed_out:
            self.hangs += 1
            bad = "no answer within the client's timeout"
        elif got.dropped:
            self.dropped += 1
            bad = "connection closed without an answer"
        elif got.status == 501 and request.method not in self.methods:
            self.unknown_method_501 += 1
        elif got.status is not None and got.status >= 500:
            self.server_errors += 1
            bad = f"answered {got.status}"
        if bad:
            self.failures += 1
            if len(self.first_failures) < 5:
                self.first_failures.append({
                    "why": bad, "method": request.method, "target": request.target[:200],
                    "headers": [list(h) for h in request.headers][:12],
                    "body": request.body[:300].decode("latin-1")})

    def to_json(self) -> dict[str, Any]:
        return {"target": self.name, "examples": self.examples, "failures": self.failures,
                "server_errors": self.server_errors, "dropped": self.dropped,
                "hangs": self.hangs, "unknown_method_501": self.unknown_method_501,
                "max_latency_s": round(self.max_latency, 3),
                "answers": {k: v for k, v in sorted(self.by_class.items()) if v},
                "first_failures": self.first_failures}


class FakeProvider:
    """node1 is being deployed: its token and a config.env."""

    def __init__(self) -> None:
        self.token: str | None = None

    def install_token(self, node: str) -> str | None:
        return self.token if node == NODE else None

    def node_config(self, node: str) -> NodeConfig | None:
        if node != NODE or self.token is None:
            return None
        return NodeConfig(hostname=node, image_url="/images/golden.raw",
                          image_sha256="ab" * 32, image_size=1024,
                          authorized_keys="ssh-ed25519 AAAA key\n", host_key="KEY\n",
                          host_key_pub="ssh-ed25519 AAAAPUB", mac=NODE_MAC,
                          ipv4="10.104.0.11/24")


class CountingCallbacks:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()

    def _count(self, what: str) -> None:
        with self.lock:
            self.calls[what] += 1

    def on_progress(self, node: str, stage: str, message: str) -> None:
        self._count("progress")

    def on_done(self, node: str) -> None:
        self._count("done")

    def on_failed(self, node: str, stage: str, message: str, log: str) -> None:
        self._count("failed")


@dataclass
class Servers:
    receiver: Receiver
    boot: BootHttpServer
    state: StateStore
    provider: FakeProvider
    callbacks: CountingCallbacks
    token_lock: threading.Lock = field(default_factory=threading.Lock)

    def fresh_token(self) -> str:
        """node1's active deploy token (a new one once a done/failed spent it)."""
        with self.token_lock:
            if self.provider.token is None or not self.state.check_deploy_token(
                    NODE, self.provider.token):
                self.provider.token = self.state.issue_deploy_token(NODE, ttl=3600)
            return self.provider.token


@contextlib.contextmanager
def servers(root: Path, *, receiver_port: int, boot_port: int) -> Iterator[Servers]:
    """The receiver and the boot server's HTTP side on 127.0.0.1, stopped on exit."""
    installer, images = root / "installer", root / "images"
    installer.mkdir(parents=True, exist_ok=True)
    images.mkdir(exist_ok=True)
    (installer / "vmlinuz").write_bytes(b"k" * 4096)
    (installer / "initrd.img").write_bytes(b"i" * 4096)
    (images / "golden.raw").write_bytes(b"\0" * 4096)
    state = StateStore.open_file(root / "state" / "metalchain.db")
    provider, callbacks = FakeProvider(), CountingCallbacks()
    receiver = Receiver("127.0.0.1", receiver_port, ingestor=Ingestor(state),
                        webhook_token=WEBHOOK_TOKEN, registry=CollectorRegistry(),
                        event_auth=lambda host, token: ev.token_matches(EVENT_KEY, host, token))
    boot = BootHttpServer("127.0.0.1", boot_port, installer_dir=installer, images_dir=images,
                          provider=provider, tokens=state, callbacks=callbacks,
                          nodes=BootNodes.of([BootNode(NODE, NODE_MAC, "127.0.0.1")]),
                          limits=HttpLimits(request_timeout=3.0, io_timeout=5.0))
    receiver.start()
    try:
        boot.start()
        try:
            yield Servers(receiver, boot, state, provider, callbacks)
        finally:
            boot.stop()
    finally:
        receiver.stop()
        state.close()


# -- what each target sends -------------------------------------------------------------------

def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("Authorization", f"Bearer {token}"),)


RECEIVER_AUTH = [_bearer(WEBHOOK_TOKEN), _bearer(WEBHOOK_TOKEN), (),
                 _bearer("wrong"), (("Authorization", "Basic dXNlcjpwYXNz"),),
                 (("Authorization", "Bearer " + "x" * 10000),),
                 (("Authorization", f"bearer  {WEBHOOK_TOKEN}  "),)]
EVENT_AUTH = [_bearer(ev.derive_token(EVENT_KEY, EVENT_HOST))] * 3 + [
    _bearer(ev.derive_token(EVENT_KEY, "other")), (), _bearer("\u00ff" * 20)]


def _event_for_web1() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(netfuzz.event().map(lambda d: {**d, "host": EVENT_HOST}), netfuzz.event())


def receiver_alerts() -> st.SearchStrategy[netfuzz.Request]:
    return netfuzz.http_request(paths=[ALERTS_PATH], auth=RECEIVER_AUTH,
                                body=netfuzz.json_body(netfuzz.notification()))


def receiver_events() -> st.SearchStrategy[netfuzz.Request]:
    return netfuzz.http_request(paths=[EVENTS_PATH], auth=EVENT_AUTH,
                                body=netfuzz.json_body(_event_for_web1()))


def receiver_routes() -> st.SearchStrategy[netfuzz.Request]:
    return netfuzz.http_request(paths=[ALERTS_PATH, EVENTS_PATH, METRICS_PATH, HEALTH_PATH,
                                       "/", "/v1", "/v1/alerts/", "/V1/ALERTS"],
                                auth=RECEIVER_AUTH + EVENT_AUTH,
                                body=st.one_of(st.binary(max_size=64),
                                               netfuzz.json_body(netfuzz.notification())))


_TOKEN_MARK = "@TOKEN@"


@st.composite
def boot_callbacks(draw: st.DrawFn) -> netfuzz.Request:
    route, body = draw(netfuzz.callback_form())
    template = {"progress": contract.NODE_PROGRESS, "done": contract.NODE_DONE,
                "failed": contract.NODE_FAILED}[route]
    node = draw(st.sampled_from(["ghost", "node1.", "-x", "%6eode1"])
                if _one_in(draw, 5) else st.just(NODE))
    auth = draw(st.sampled_from([
        ((contract.TOKEN_HEADER, _TOKEN_MARK),), ((contract.TOKEN_HEADER, _TOKEN_MARK),),
        ((contract.TOKEN_HEADER, _TOKEN_MARK),), ((contract.TOKEN_HEADER, _TOKEN_MARK),),
        ((contract.TOKEN_HEADER, _TOKEN_MARK), (contract.TOKEN_HEADER, _TOKEN_MARK)),
        (), ((contract.TOKEN_HEADER, "A" * 40),), ((contract.TOKEN_HEADER, "\u00e9" * 20),),
        ((contract.TOKEN_HEADER, "x" * 5000),)]))
    paths = [template.format(node=node), contract.NODE_CONFIG.format(node=node),
             contract.IPXE_SCRIPT.format(mac_hyphens=NODE_MAC.replace(":", "-")),
             "/images/../installer/vmlinuz", "/images/golden.raw", "/installer/vmlinuz"]
    req = draw(netfuzz.http_request(paths=paths[:1] * 4 + paths[1:], auth=[auth],
                                    body=st.just(body)))
    headers = tuple((k, v) for k, v in req.headers
                    if k != "Content-Type" or _one_in(draw, 4))
    if not any(k == "Content-Type" for k, _ in headers) and draw(st.booleans()):
        headers += (("Content-Type", "application/x-www-form-urlencoded"),)
    return netfuzz.Request(req.method, req.target, headers, req.body, req.lying_length)


def _with_token(request: netfuzz.Request, token: str) -> netfuzz.Request:
    headers = tuple((k, token if v == _TOKEN_MARK else v) for k, v in request.headers)
    return netfuzz.Request(request.method, request.target, headers, request.body,
                           request.lying_length)


# -- running a target ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    name: str
    strategy: Callable[[], st.SearchStrategy[netfuzz.Request]]
    port: Callable[[Servers], int]
    prepare: Callable[[Servers, netfuzz.Request], netfuzz.Request] = lambda _s, r: r
    methods: frozenset[str] = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"})


def targets() -> list[Target]:
    return [
        Target("receiver POST /v1/alerts", receiver_alerts, lambda s: s.receiver.port),
        Target("receiver POST /v1/events", receiver_events, lambda s: s.receiver.port),
        Target("receiver any route", receiver_routes, lambda s: s.receiver.port),
        Target("boot install callbacks", boot_callbacks, lambda s: s.boot.port,
               lambda s, r: _with_token(r, s.fresh_token()),
               frozenset({"GET", "HEAD", "POST", "PUT", "DELETE"})),
    ]


def run_target(srv: Servers, target: Target, *, examples: int, seed: int | None = None,
               deadline: float | None = None, timeout: float = 15.0) -> Tally:
    """Send ``examples`` generated requests (fewer if the monotonic ``deadline`` passes)."""
    tally = Tally(target.name, methods=target.methods)
    port = target.port(srv)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=seed is None,
              suppress_health_check=list(HealthCheck), report_multiple_bugs=False)
    @given(target.strategy())
    def one(request: netfuzz.Request) -> None:
        if deadline is not None and time.monotonic() > deadline:
            return
        request = target.prepare(srv, request)
        tally.record(request, netfuzz.exchange(port, request, timeout=timeout))

    if seed is not None:
        one = __import__("hypothesis").seed(seed)(one)
    one()
    return tally


def still_serving(srv: Servers) -> bool:
    """A valid notification is accepted and the health check answers, after the campaign."""
    doc = {"version": "4", "status": "firing", "receiver": "r", "groupKey": "g",
           "alerts": [{"status": "firing", "labels": {"alertname": "AfterFuzz"},
                       "startsAt": "2026-12-01T10:00:00Z", "fingerprint": "fffffffffffffff0"}]}
    body = json.dumps(doc).encode()
    ok = netfuzz.exchange(srv.receiver.port, netfuzz.Request(
        "POST", ALERTS_PATH, (("Host", "x"), *_bearer(WEBHOOK_TOKEN),
                              ("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))), body))
    health = netfuzz.exchange(srv.receiver.port, netfuzz.Request("GET", HEALTH_PATH,
                                                                 (("Host", "x"),), b""))
    boot = netfuzz.exchange(srv.boot.port, netfuzz.Request("GET", "/installer/vmlinuz",
                                                           (("Host", "x"),), b""))
    return ok.status == 200 and health.status == 200 and boot.status == 200


# -- requests that once escaped (each must now be a 4xx) -------------------------------------

def _json_post(path: str, body: bytes, auth: tuple[tuple[str, str], ...], *,
               length: str | None = None, target: str | None = None) -> netfuzz.Request:
    return netfuzz.Request("POST", target or path, (
        ("Host", "127.0.0.1"), *auth, ("Content-Type", "application/json"),
        ("Content-Length", str(len(body)) if length is None else length)), body)


def regression_corpus() -> list[tuple[str, str, netfuzz.Request]]:
    """(what, server, request): the fuzzer's finds, kept as fixed cases."""
    ok_alert = {"status": "firing", "labels": {"alertname": "A"},
                "startsAt": "2026-12-01T10:00:00Z", "fingerprint": "0123456789abcdef"}
    ok = {"version": "4", "status": "firing", "receiver": "r", "groupKey": "g",
          "alerts": [ok_alert]}
    event = {"version": "1", "host": EVENT_HOST, "kind": "unit_failed",
             "unit": "nginx.service", "at": "9999-12-31T23:59:59-14:00"}
    auth, eauth = _bearer(WEBHOOK_TOKEN), EVENT_AUTH[0]
    surrogate = json.dumps({**ok, "receiver": "SURR"}).replace("SURR", "\\ud800").encode()
    cases = [
        ("deep nesting (RecursionError)", "receiver",
         _json_post(ALERTS_PATH, b"[" * 100_000, auth)),
        ("a number of 5000 digits (ValueError)", "receiver",
         _json_post(ALERTS_PATH, b'{"version": ' + b"9" * 5000 + b"}", auth)),
        ("a lone surrogate (the store refused it: 503 for ever)", "receiver",
         _json_post(ALERTS_PATH, surrogate, auth)),
        ("a fingerprint wider than its column", "receiver", _json_post(ALERTS_PATH, json.dumps(
            {**ok, "alerts": [{**ok_alert, "fingerprint": "f" * 65}]}).encode(), auth)),
        ("a key given twice", "receiver",
         _json_post(ALERTS_PATH, b'{"version": "3", ' + json.dumps(ok)[1:].encode(), auth)),
        ("NaN", "receiver", _json_post(ALERTS_PATH, b'{"version": NaN}', auth)),
        ("an event time past year 9999 in UTC (OverflowError)", "receiver",
         _json_post(EVENTS_PATH, json.dumps(event).encode(), eauth)),
        ("Content-Length: \u00b2 (isdigit() but not int())", "receiver",
         _json_post(ALERTS_PATH, json.dumps(ok).encode(), auth, length="\u00b2")),
        ("request target http://[ (urlsplit ValueError)", "receiver",
         _json_post(ALERTS_PATH, json.dumps(ok).encode(), auth, target="http://[")),
        ("request target //[::1 on the boot server (connection dropped)", "boot",
         netfuzz.Request("GET", "//[::1", (("Host", "127.0.0.1"),), b"")),
        ("request target http://[ on a callback", "boot", netfuzz.Request(
            "POST", "http://[", (("Host", "127.0.0.1"), (contract.TOKEN_HEADER, "x" * 20),
                                 ("Content-Length", "0")), b"")),
    ]
    return cases
