"""The receiver of a real ``metalchain serve --no-boot`` (a subprocess) on a lab with two fleet
hosts: refusals that change nothing, one incident however often and by whom an alert is
delivered, a unit failure pushed by the host itself (node_exporter role's companion) after a
``kill -9``, and nothing lost when serve is killed right after its answer."""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from inventory.site import Site
from monitor.events import derive_token
from orchestrate.commands.mirror_cmd import mirror
from tests.lab.fleetsite import fleet_site, invoke, metalchain
from tests.lab.sshd import METALCHAIN
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

SUBNET = "10.151.0.0/24"  # not e2e's 10.92: the two run at once (tests/streams.py)
CONTROLLER = str(ipaddress.ip_network(SUBNET)[1])
PORT = 19301
MIRROR_PORT = 19302
CACHE = "/var/cache/metalchain/mirror-debs"
PACKAGES = ("sudo", "systemd-timesyncd", "prometheus-node-exporter")
HOSTS = ("fleet01", "fleet02")
WEBHOOK_TOKEN = "webhook-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
EVENT_KEY = "event-key-" + base64.urlsafe_b64encode(os.urandom(18)).decode()
FIGURES: dict[str, Any] = {}


# -- a serve process ------------------------------------------------------------------------

class ServeProcess:
    """``metalchain serve --no-boot`` for the site, in its own process group."""

    def __init__(self, site: Path) -> None:
        self.site = site
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = site / "serve-test.log"

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [METALCHAIN, "--site", str(self.site), "-v", "serve", "--no-boot"],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.healthy, 30, f"the receiver answering /healthz ({self.log})")

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"serve exited {self.proc.returncode}: "
                                 f"{self.log.read_text()[-2000:]}")
        try:
            return request("GET", "/healthz")[0] == 200
        except OSError:
            return False

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        self.proc = None


# -- HTTP, byte for byte ----------------------------------------------------------------------

def raw(data: bytes, *, half_close: bool = False, source: str | None = None,
        timeout: float = 15) -> tuple[int, bytes]:
    """Send ``data`` as is and read the first answer: (status, body); (0, b"") if the server
    closed without one."""
    with socket.create_connection((CONTROLLER, PORT), timeout=timeout,
                                  source_address=(source, 0) if source else None) as sock:
        try:
            sock.sendall(data)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        buf = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in buf:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
            head, _, body = buf.partition(b"\r\n\r\n")
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                body += chunk
    if not buf.startswith(b"HTTP/1."):
        return 0, b""
    return int(buf.split(b" ", 2)[1]), buf.partition(b"\r\n\r\n")[2]


def http(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
         *, length: int | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {CONTROLLER}:{PORT}", "Connection: close"]
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if length is not None or body or method == "POST":
        hdrs.setdefault("Content-Length", str(len(body) if length is None else length))
    lines += [f"{k}: {v}" for k, v in hdrs.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def request(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
            **kw: Any) -> tuple[int, bytes]:
    return raw(http(method, path, body, headers), **kw)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def notification(fingerprint: str = "aa01", *, starts: str = "2026-12-01T10:00:00Z",
                 host: str = "fleet01", receiver: str = "remediation", **changes: Any) -> dict:
    alert = {"status": "firing", "labels": {"alertname": "SystemdUnitFailed", "host": host,
                                            "name": "cron.service"},
             "annotations": {"summary": "cron failed"}, "startsAt": starts,
             "endsAt": "0001-01-01T00:00:00Z", "generatorURL": "", "fingerprint": fingerprint}
    doc = {"version": "4", "groupKey": "{}:{alertname=\"SystemdUnitFailed\"}",
           "truncatedAlerts": 0, "status": "firing", "receiver": receiver, "groupLabels": {},
           "commonLabels": {}, "commonAnnotations": {}, "externalURL": "", "alerts": [alert]}
    doc.update(changes)
    return doc


def event(host: str = "fleet01", **changes: Any) -> dict:
    return {"version": "1", "host": host, "kind": "unit_failed", "unit": "cron.service",
            "at": "2026-12-01T10:00:00Z", **changes}


def dumps(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# -- the state store --------------------------------------------------------------------------

def store_rows(site: Path) -> tuple[int, int]:
    """(incidents, timeline events) in the site's store."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{site / 'state' / 'metalchain.db'}?mode=ro",
                                            uri=True, timeout=10)) as db:
        return (db.execute("SELECT count(*) FROM incidents").fetchone()[0],
                db.execute("SELECT count(*) FROM incident_events").fetchone()[0])


@contextlib.contextmanager
def store(site: Path) -> Iterator[Any]:
    opened = Site.open(site)
    try:
        yield opened.state
    finally:
        opened.close()


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[Path]:
    with fleet_site(tmp_path_factory.mktemp("receiver") / "site", len(HOSTS), SUBNET) as root:
        with open(root / "metalchain.yml", "a", encoding="utf-8") as f:
            f.write(f"monitor:\n  receiver_address: {CONTROLLER}\n  receiver_port: {PORT}\n")
        secrets = root / "secrets.yml"
        doc = (yaml.safe_load(secrets.read_text()) if secrets.exists() else None) or {}
        doc.update(monitor_webhook_token=WEBHOOK_TOKEN, monitor_event_key=EVENT_KEY)
        secrets.write_text(yaml.safe_dump(doc))
        secrets.chmod(0o600)
        yield root


@pytest.fixture(scope="module")
def serve(site) -> Iterator[ServeProcess]:
    proc = ServeProcess(site)
    try:
        proc.start()
        yield proc
    finally:
        proc.kill(signal.SIGTERM)
        print("receiver figures:", json.dumps(FIGURES))
        log = proc.log.read_text(errors="replace")
        # Nothing secret in serve's output, whatever the tests sent.
        assert WEBHOOK_TOKEN not in log and EVENT_KEY not in log
        assert derive_token(EVENT_KEY, "fleet01") not in log


# -- refusals ---------------------------------------------------------------------------------

GOOD = dumps(notification("bad0"))
EVENT_TOKEN_1 = derive_token(EVENT_KEY, "fleet01")
EVENT_TOKEN_2 = derive_token(EVENT_KEY, "fleet02")
TEN_MB = 10 * 1024 * 1024
REFUSED: list[tuple[str, bytes, int, dict[str, Any]]] = [
    # alerts
    ("no token", http("POST", "/v1/alerts", GOOD), 401, {}),
    ("wrong token", http("POST", "/v1/alerts", GOOD, bearer("not-" + WEBHOOK_TOKEN)), 401, {}),
    # No "100 Continue" invites the body of a request that is refused anyway.
    ("expect 100-continue, wrong token",
     http("POST", "/v1/alerts", b"", {**bearer("nope"), "Expect": "100-continue",
                                      "Content-Length": str(len(GOOD))}), 401, {}),
    ("basic instead of bearer", http("POST", "/v1/alerts", GOOD,
                                     {"Authorization": "Basic " + WEBHOOK_TOKEN}), 401, {}),
    ("an event token on the alerts route",
     http("POST", "/v1/alerts", GOOD, bearer(EVENT_TOKEN_1)), 401, {}),
    ("truncated JSON", http("POST", "/v1/alerts", GOOD[:-7], bearer(WEBHOOK_TOKEN)), 400, {}),
    ("wrong version", http("POST", "/v1/alerts", dumps(notification("bad1", version="3")),
                           bearer(WEBHOOK_TOKEN)), 400, {}),
    ("10 MB body", http("POST", "/v1/alerts", b"{" + b" " * 65536, bearer(WEBHOOK_TOKEN),
                        length=TEN_MB), 413, {}),
    ("non-UTF-8", http("POST", "/v1/alerts", GOOD.replace(b"cron failed", b"cr\xffn"),
                       bearer(WEBHOOK_TOKEN)), 400, {}),
    ("missing fingerprint", http("POST", "/v1/alerts", GOOD.replace(b'"fingerprint"',
                                                                     b'"fingerprunt"'),
                                 bearer(WEBHOOK_TOKEN)), 400, {}),
    ("unknown alert status", http("POST", "/v1/alerts", GOOD.replace(b'"status": "firing", '
                                                                      b'"labels"',
                                                                      b'"status": "burning", '
                                                                      b'"labels"'),
                                  bearer(WEBHOOK_TOKEN)), 400, {}),
    ("empty body", http("POST", "/v1/alerts", b"", bearer(WEBHOOK_TOKEN)), 400, {}),
    ("array instead of object", http("POST", "/v1/alerts", b"[" + GOOD + b"]",
                                     bearer(WEBHOOK_TOKEN)), 400, {}),
    ("garbage", http("POST", "/v1/alerts", b"\x00\x01GET / HTTP/1.1", bearer(WEBHOOK_TOKEN)),
     400, {}),
    ("content-length longer than the body",
     http("POST", "/v1/alerts", GOOD, bearer(WEBHOOK_TOKEN), length=len(GOOD) + 100), 400,
     {"half_close": True}),
    ("content-length shorter than the body",
     http("POST", "/v1/alerts", GOOD, bearer(WEBHOOK_TOKEN), length=len(GOOD) - 20), 400, {}),
    ("no content-length", http("POST", "/v1/alerts", GOOD, {**bearer(WEBHOOK_TOKEN),
                                                           "Content-Length": None}), 411, {}),
    ("chunked", http("POST", "/v1/alerts", b"5\r\nhello\r\n0\r\n\r\n",
                     {**bearer(WEBHOOK_TOKEN), "Content-Length": None,
                      "Transfer-Encoding": "chunked"}), 411, {}),
    ("not JSON content type", http("POST", "/v1/alerts", GOOD, {**bearer(WEBHOOK_TOKEN),
                                                                "Content-Type": "text/plain"}),
     415, {}),
    ("GET on the POST route", http("GET", "/v1/alerts", b"", bearer(WEBHOOK_TOKEN)), 405, {}),
    ("unknown path", http("POST", "/v1/alert", GOOD, bearer(WEBHOOK_TOKEN)), 404, {}),
    # events
    ("event without token", http("POST", "/v1/events", dumps(event())), 401, {}),
    ("event with a made-up token", http("POST", "/v1/events", dumps(event()),
                                        bearer("0" * 64)), 403, {}),
    ("event with another host's token", http("POST", "/v1/events", dumps(event()),
                                             bearer(EVENT_TOKEN_2)), 403, {}),
    ("event with the webhook token", http("POST", "/v1/events", dumps(event()),
                                          bearer(WEBHOOK_TOKEN)), 403, {}),
    ("event from a host not in the inventory",
     http("POST", "/v1/events", dumps(event("ghost")), bearer(derive_token(EVENT_KEY, "ghost"))),
     403, {}),
    ("event truncated", http("POST", "/v1/events", dumps(event())[:-3], bearer(EVENT_TOKEN_1)),
     400, {}),
    ("event wrong version", http("POST", "/v1/events", dumps(event(version="4")),
                                 bearer(EVENT_TOKEN_1)), 400, {}),
    ("event unknown kind", http("POST", "/v1/events", dumps(event(kind="reboot")),
                                bearer(EVENT_TOKEN_1)), 400, {}),
    ("event 10 MB", http("POST", "/v1/events", b"{" + b" " * 65536, bearer(EVENT_TOKEN_1),
                         length=TEN_MB), 413, {}),
    ("event non-UTF-8", http("POST", "/v1/events", dumps(event(unit="cr\udcffn.service")
                                                          ).replace(b"\\udcff", b"\xff"),
                             bearer(EVENT_TOKEN_1)), 400, {}),
]


def test_malformed_and_unauthenticated_requests_are_refused_and_change_nothing(site, serve):
    before = store_rows(site)
    got = {}
    for name, data, _status, kw in REFUSED:
        got[name] = raw(data, **kw)
    assert {n: s for n, (s, _b) in got.items()} == {n: s for n, _d, s, _k in REFUSED}
    for name, (status, body) in got.items():
        # One line with a reason, never a traceback or an echo of a token.
        text = body.decode()
        assert text.startswith(f"{status} ") and text.count("\n") == 1, (name, text)
        assert WEBHOOK_TOKEN not in text and EVENT_TOKEN_1 not in text
    assert store_rows(site) == before
    assert serve.healthy()
    FIGURES["refusals"] = len(REFUSED)


def test_a_slow_client_is_cut_off_and_others_are_served(site, serve):
    with socket.create_connection((CONTROLLER, PORT), timeout=30) as slow:
        slow.sendall(b"POST /v1/alerts HTTP/1.1\r\nHost: x\r\n")   # and then nothing
        assert request("GET", "/healthz")[0] == 200
        start = time.monotonic()
        assert slow.recv(1024) == b""       # closed by the request deadline (10 s)
        assert time.monotonic() - start < 15


# -- one incident per alert -------------------------------------------------------------------

def test_one_notification_replayed_100_times_concurrently_is_one_incident(site, serve):
    body = dumps(notification("replay01", starts="2026-12-01T11:00:00Z"))
    data = http("POST", "/v1/alerts", body, bearer(WEBHOOK_TOKEN))
    with concurrent.futures.ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(lambda _i: raw(data), range(100)))
    assert [s for s, _b in answers] == [200] * 100
    docs = [json.loads(b) for _s, b in answers]
    assert sum(d["new"] for d in docs) == 1 and {d["incidents"][0] for d in docs} == \
        {docs[0]["incidents"][0]}
    with store(site) as state:
        matching = [i for i in state.list_incidents(limit=1000) if i.fingerprint == "replay01"]
        assert len(matching) == 1 and matching[0].deliveries == 100
        kinds = [e["kind"] for e in state.incident_timeline(matching[0].id)
                 if e["kind"] in ("received", "duplicate")]   # the engine adds its own
        started = state.actions(incident_id=matching[0].id)
    assert kinds == ["received"] + ["duplicate"] * 99
    assert len(started) <= 1          # one incident: at most one action, never one a delivery


def test_the_same_alert_from_two_senders_is_one_incident(site, serve):
    starts = "2026-12-01T12:00:00Z"
    first = request("POST", "/v1/alerts", dumps(notification("pair01", starts=starts,
                                                            receiver="remediation")),
                    bearer(WEBHOOK_TOKEN), source="127.0.0.1")
    second = request("POST", "/v1/alerts", dumps(notification("pair01", starts=starts,
                                                             receiver="remediation-b")),
                     bearer(WEBHOOK_TOKEN), source=CONTROLLER)
    assert first[0] == second[0] == 200
    assert json.loads(first[1])["incidents"] == json.loads(second[1])["incidents"]
    with store(site) as state:
        inc = [i for i in state.list_incidents(limit=1000) if i.fingerprint == "pair01"]
        assert len(inc) == 1 and inc[0].deliveries == 2 and inc[0].target == "fleet01"
        timeline = [e for e in state.incident_timeline(inc[0].id)
                    if e["kind"] in ("received", "duplicate")]   # not the engine's events
    assert {(e["detail"]["client"], e["detail"]["receiver"]) for e in timeline} == \
        {("127.0.0.1", "remediation"), (CONTROLLER, "remediation-b")}


def test_keep_alive_serves_many_requests_on_one_connection(site, serve):
    import http.client

    conn = http.client.HTTPConnection(CONTROLLER, PORT, timeout=10)
    try:
        for i in range(20):
            conn.request("POST", "/v1/alerts", dumps(notification(f"ka{i:02d}")),
                         {"Content-Type": "application/json", **bearer(WEBHOOK_TOKEN)})
            resp = conn.getresponse()
            assert resp.status == 200 and json.loads(resp.read())["new"] == 1
            assert resp.getheader("Connection") != "close"
        # A refusal whose body was read keeps the connection too.
        conn.request("POST", "/v1/alerts", b"[]", {"Content-Type": "application/json",
                                                    **bearer(WEBHOOK_TOKEN)})
        resp = conn.getresponse()
        assert resp.status == 400 and resp.read()
        conn.request("GET", "/healthz")
        assert conn.getresponse().read() == b"ok\n"
    finally:
        conn.close()


# -- events pushed by the hosts ---------------------------------------------------------------

def run_on(site: Path, host: str, script: str) -> str:
    r = metalchain("--site", str(site), "exec", host, "--json", "--", "bash", "-c", script,
                   timeout=120)
    assert r.stdout.strip(), r.stderr
    doc = json.loads(r.stdout)["hosts"][host]
    assert doc["exit_code"] == 0, doc
    return str(doc["stdout"] or "")


@pytest.fixture(scope="module")
def configured(site, serve) -> Path:
    """The fleet with the node_exporter role (and base) applied from the site's mirror."""
    start = time.monotonic()
    code, out = invoke(site, mirror, "build", "--packages", ",".join(PACKAGES),
                       "--cache-dir", CACHE, "--json")
    assert code == 0, out
    code, out = invoke(site, mirror, "serve", "--address", CONTROLLER, "--port",
                       str(MIRROR_PORT), "--daemon")
    assert code == 0, out
    FIGURES["mirror_s"] = round(time.monotonic() - start, 1)
    start = time.monotonic()
    r = metalchain("--site", str(site), "apply", "--role", "node_exporter", "fleet", "--json",
                   "--diff")
    FIGURES["apply_s"] = round(time.monotonic() - start, 1)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    doc = json.loads(r.stdout)
    # The tokens reached the hosts, but no output, event log or diff holds one.
    runs = list((site / "runs").glob("*.jsonl"))
    for host in HOSTS:
        token = derive_token(EVENT_KEY, host)
        assert token not in r.stdout and token not in r.stderr
        assert not [p for p in runs if token in p.read_text()]
    assert "event.token" in json.dumps(doc)       # the change itself is reported
    again = metalchain("--site", str(site), "apply", "--role", "node_exporter", "fleet",
                       "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["counts"]["changed"] == 0
    return site


def test_the_token_file_is_the_hosts_own_and_root_only(configured):
    for host in HOSTS:
        out = run_on(configured, host, "stat -c '%a %U' /etc/metalchain/event.token; "
                                       "sha256sum < /etc/metalchain/event.token")
        mode, digest = out.splitlines()[0], out.splitlines()[1].split()[0]
        import hashlib

        assert mode == "600 root"
        wanted = hashlib.sha256((derive_token(EVENT_KEY, host) + "\n").encode()).hexdigest()
        assert digest == wanted


def test_the_roles_checks_pass_with_the_event_companion(configured):
    r = metalchain("--site", str(configured), "verify", "fleet", "--role", "node_exporter",
                   "--json", timeout=300)
    assert r.stdout.strip(), r.stderr
    doc = json.loads(r.stdout)
    outcomes = {(h, t["id"].rsplit("::", 1)[-1]): t["outcome"]
                for h, v in doc["hosts"].items() for t in v["tests"]}
    assert r.returncode == 0 and set(outcomes.values()) == {"passed"}, outcomes
    assert all(outcomes[(h, "test_failed_units_are_pushed")] == "passed" for h in HOSTS)
    for host in HOSTS:
        assert derive_token(EVENT_KEY, host) not in r.stdout


VICTIM = """cat > /etc/systemd/system/mc-victim.service <<'EOF'
[Unit]
Description=a service the test kills
[Service]
ExecStart=/bin/sleep infinity
EOF
systemctl daemon-reload && systemctl start mc-victim.service
systemctl show -P MainPID mc-victim.service"""


def victim_incidents(site: Path, host: str) -> list[Any]:
    with store(site) as state:
        return [i for i in state.list_incidents(limit=1000, target=host)
                if i.labels.get("unit") == "mc-victim.service"]


def test_a_killed_service_is_pushed_by_its_host_the_moment_it_fails(configured):
    site = configured
    latencies = []
    for attempt in range(3):
        pid = run_on(site, "fleet01", VICTIM).strip().splitlines()[-1]
        assert pid.isdigit() and pid != "0"
        run_on(site, "fleet01", f"kill -9 {pid}")
        wait_for(lambda n=attempt: len(victim_incidents(site, "fleet01")) == n + 1, 20,
                 "the pushed unit failure in the store")
        inc = victim_incidents(site, "fleet01")[0]
        assert inc.source == "event" and inc.alertname == "SystemdUnitFailed"
        assert inc.labels == {"alertname": "SystemdUnitFailed", "host": "fleet01",
                              "unit": "mc-victim.service", "source": "event"}
        # Fault (the host's own failure time, same clock) -> committed in the store.
        failed_at = _epoch(inc.starts_at)
        latencies.append(inc.created_at - failed_at)
    FIGURES["event_fault_to_ingest_s"] = [round(x, 3) for x in latencies]
    assert max(latencies) < 5, latencies
    # Each failure was a new incident (a new failure time), each delivered once.
    incs = victim_incidents(site, "fleet01")
    assert len({i.starts_at for i in incs}) == 3 and all(i.deliveries == 1 for i in incs)
    # The same failure reported again (the host retries): the same incident.
    run_on(site, "fleet01", "/usr/local/lib/metalchain/metalchain-push-event mc-victim.service")
    assert len(victim_incidents(site, "fleet01")) == 3
    assert max(i.deliveries for i in victim_incidents(site, "fleet01")) == 2
    out = run_on(site, "fleet01", "journalctl --no-pager -o cat -u 'metalchain-event@*' "
                                  "2>/dev/null; true")
    assert derive_token(EVENT_KEY, "fleet01") not in out


def test_a_failing_report_is_not_reported_again(configured, serve):
    """With the receiver down, the reporter fails: no metalchain-event@metalchain-event@...
    unit may follow (the masked drop-in), and nothing reaches the store."""
    site = configured
    serve.kill(signal.SIGTERM)
    try:
        pid = run_on(site, "fleet02", VICTIM).strip().splitlines()[-1]
        run_on(site, "fleet02", f"kill -9 {pid}")

        def reporter_done() -> bool:
            out = run_on(site, "fleet02", "systemctl is-failed "
                                          "metalchain-event@mc-victim.service.service; true")
            return out.strip() == "failed"
        wait_for(reporter_done, 40, "the reporter giving up")
        # Every service has the reporter as OnFailure=, the reporter itself has none: no
        # unit reporting a reporter is even loaded.
        out = run_on(site, "fleet02", "systemctl show -P OnFailure mc-victim.service; "
                                      "echo \"[$(systemctl show -P OnFailure "
                                      "metalchain-event@mc-victim.service.service)]\"; "
                                      "systemctl list-units --all --no-legend --plain "
                                      "'metalchain-event@metalchain-event*' | wc -l")
        assert out.split() == ["metalchain-event@mc-victim.service.service", "[]", "0"]
    finally:
        serve.start()
    assert victim_incidents(site, "fleet02") == []


# -- killed right after the answer ------------------------------------------------------------

def test_serve_killed_right_after_a_200_keeps_the_incident(site, serve):
    body = dumps(notification("kill01", starts="2026-12-01T13:00:00Z"))
    status, answer = request("POST", "/v1/alerts", body, bearer(WEBHOOK_TOKEN))
    serve.kill(signal.SIGKILL)
    assert status == 200
    incident_id = json.loads(answer)["incidents"][0]
    with store(site) as state:
        inc = state.incident(incident_id)
        assert inc is not None and inc.fingerprint == "kill01" and inc.state == "open"
        assert any(i.id == incident_id for i in state.unfinished_incidents())
    serve.start()
    # Delivered again after the restart (Alertmanager's retry): still one incident.
    status, answer = request("POST", "/v1/alerts", body, bearer(WEBHOOK_TOKEN))
    assert status == 200 and json.loads(answer) == {"incidents": [incident_id], "new": 0,
                                                    "duplicates": 1}


def _epoch(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


# -- in process: the order commit -> answer -> listeners ------------------------------------

def test_listeners_run_only_after_the_answer_was_sent(tmp_path):
    """A listener that waits for the client's 200 before it returns: were it called before
    the answer, the client would never get one (and the listener would time out)."""
    import threading

    from inventory.state import StateStore
    from monitor.ingest import Ingestor
    from monitor.receiver import Receiver

    answered = threading.Event()
    seen: list[tuple[bool, int]] = []

    def listener(results):
        committed = state.incident(results[0].incident_id) is not None
        seen.append((committed, int(answered.wait(10))))

    state = StateStore.open_file(tmp_path / "s.db")
    observed: list[tuple[str, int]] = []
    receiver = Receiver("127.0.0.1", 0, ingestor=Ingestor(state, [listener]),
                        webhook_token=WEBHOOK_TOKEN,
                        observers=[lambda route, _s, status: observed.append((route, status))])
    receiver.start()
    try:
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as sock:
            body = dumps(notification("order01"))
            sock.sendall(http("POST", "/v1/alerts", body, bearer(WEBHOOK_TOKEN)).replace(
                f"Host: {CONTROLLER}:{PORT}".encode(), b"Host: 127.0.0.1"))
            assert sock.recv(4096).startswith(b"HTTP/1.1 200 ")
            answered.set()
        wait_for(lambda: seen, 10, "the listener")
    finally:
        receiver.stop()
        state.close()
    assert seen == [(True, 1)]
    assert observed == [("/v1/alerts", 200)]
