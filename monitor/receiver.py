"""The receiver in ``metalchain serve``: Alertmanager's webhook, events pushed by hosts, and
the controller's own metrics, over HTTP/1.1 with keep-alive.

Routes::

    POST /v1/alerts    Alertmanager webhook v4; Authorization: Bearer <webhook token>
    POST /v1/events    a host's pushed event (monitor.events); Bearer <that host's token>
    GET  /metrics      public: the CollectorRegistry handed in (Prometheus text format)
    GET  /healthz      public: "ok"

The two public routes are read by Prometheus and health checks that hold no token; they
carry counters and durations (runs, incidents, requests by route and status), never a token,
a host's output or a label value from an alert (tests/lab/test_routes_walked.py checks the
canary tokens never appear in them). ``_ROUTES`` is the router: a path not in it is 404.

Why the standard library's ``ThreadingHTTPServer`` (as the boot server): a thread per
connection fits a handful of long-lived keep-alive connections (two Alertmanagers, a scraper,
hosts posting now and then), and the controller gets no new dependency. Hardening, as in
``provision/bootserver/http.py``:

- **Authorization first.** No or a wrong bearer token: 401 before a byte of the body is read.
  An event whose token is not its host's (another host's, a made-up one): 403. A rejected
  request writes nothing and calls nothing.
- **Limits** (:class:`runtime.httpserver.ConnectionLimits`, kept by the serving loop). A cap
  on open connections in all and per source address (503 beyond either); a deadline per
  request (the first request line within ``header_timeout`` of accepting, a later one within
  ``idle_timeout`` of the previous answer, then headers, body and answer within
  ``request_timeout``: a slowloris client is cut off, and the deadline starts again for each
  request of a kept-alive connection); bodies only with a ``Content-Length`` (411 without one,
  chunked refused) and at most 1 MiB for alerts, 16 KiB for events (413, unread).
- **Strict input.** The payload is parsed by :mod:`monitor.webhook` / :mod:`monitor.events`;
  a refusal answers 400 with one line saying why (garbage, truncated, non-UTF-8, wrong
  version, missing fingerprint, unknown status, ...).
- **Commit, answer, then act.** A notification is committed to the state store before the 200
  is written; listeners (the remediation engine) are called after the answer
  (:mod:`monitor.ingest`). A store error answers 503, so Alertmanager delivers again.
- **Quiet about secrets.** One log line per request: client, method, path, status, what was
  ingested and the time taken; never a header, a token or a body.
- **One write per answer** (status line, headers and body together, ``TCP_NODELAY``): a
  kept-alive client never waits on Nagle plus delayed ACK.
"""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from inventory.errors import MetalchainError
from monitor import events as ev
from monitor import webhook
from monitor.ingest import (
    SOURCE_ALERTMANAGER,
    SOURCE_EVENT,
    Ingestor,
    Observer,
    alert_inputs,
    received_detail,
)
from runtime.crashpoint import crash_point
from runtime.httpserver import (
    CappedHTTPServer,
    ConnectionLimits,
    DispatchingHandler,
    ServerThread,
)

log = logging.getLogger("metalchain.monitor.receiver")

ALERTS_PATH = "/v1/alerts"
EVENTS_PATH = "/v1/events"
METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"
TEXT_TYPE = "text/plain; charset=utf-8"
JSON_TYPE = "application/json"
_ROUTES = {ALERTS_PATH: ("POST",), EVENTS_PATH: ("POST",), METRICS_PATH: ("GET", "HEAD"),
           HEALTH_PATH: ("GET", "HEAD")}
#: ``event_auth(host, token)``: whether ``token`` is ``host``'s event token.
EventAuth = Callable[[str, str], bool]


_DIGITS = re.compile(r"[0-9]{1,12}")


def request_path(target: str) -> str | None:
    """The path of a request target, or None for one that is no URL (``http://[``, which
    ``urlsplit`` refuses with ValueError).

    >>> request_path("/v1/alerts?x=1"), request_path("http://[")
    ('/v1/alerts', None)
    """
    try:
        return urllib.parse.urlsplit(target).path
    except ValueError:
        return None


class ReceiverError(MetalchainError):
    """The receiver could not start or stop (e.g. its port is taken)."""


@dataclass(frozen=True)
class ReceiverLimits:
    max_connections: int = 256
    max_per_client: int = 64        # Alertmanagers, Prometheus and the tests share 127.0.0.1
    header_timeout: float = 10.0    # a new connection's first request line
    request_timeout: float = 10.0   # headers + body + answer of one request
    idle_timeout: float = 75.0      # a kept-alive connection waiting for its next request
    max_alert_body: int = webhook.MAX_BODY
    max_event_body: int = ev.MAX_BODY

    def connection_limits(self) -> ConnectionLimits:
        # Answers are small and covered by request_timeout; the rate check adds nothing.
        return ConnectionLimits(max_connections=self.max_connections,
                                max_per_client=self.max_per_client,
                                header_timeout=self.header_timeout,
                                response_grace=self.request_timeout, min_rate=1.0)


class Reject(Exception):
    """Answer ``status`` with a one-line ``reason`` (raised inside the handler only)."""

    def __init__(self, status: HTTPStatus, reason: str, *,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


@dataclass
class Answer:
    status: HTTPStatus
    body: bytes = b""
    content_type: str = TEXT_TYPE
    headers: dict[str, str] = field(default_factory=dict)


class _Server(CappedHTTPServer):
    """Capped connections with a deadline each (runtime/httpserver.py), enforced by the
    serving loop (:meth:`CappedHTTPServer.cut_overdue`)."""

    status_line = b"HTTP/1.1"

    def __init__(self, app: Receiver, address: tuple[str, int]) -> None:
        self.app = app
        super().__init__(address, _Handler, limits=app.limits.connection_limits(), log=log)


class _Handler(DispatchingHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "metalchain-receiver/1"
    sys_version = ""
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = TEXT_TYPE
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        # A bound for one read or write; the serving loop enforces the request deadline.
        self.connection.settimeout(self.server.app.limits.idle_timeout)
        self._logged = False
        self._note = ""
        self._unread = False
        self._requests = 0

    def _request_wait(self) -> float:
        limits = self.server.app.limits
        return limits.idle_timeout if self._requests else limits.header_timeout

    def handle_one_request(self) -> None:
        # Waiting for the (next) request line of this connection (deadline: _request_wait).
        self._logged = False
        self._note = ""
        self._unread = False
        self._started = time.perf_counter()
        super().handle_one_request()
        self._requests += 1

    def parse_request(self) -> bool:
        # The request line is in: headers, body and answer must follow within the deadline.
        self._started = time.perf_counter()
        self.server.set_deadline(self.connection, self.server.app.limits.request_timeout)
        return super().parse_request()

    def handle_expect_100(self) -> bool:
        # The stdlib would answer "100 Continue" before anything is checked, inviting the
        # body of a request about to be refused; _body sends it once token and length pass.
        return True

    # -- dispatch ------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        app = self.server.app
        path = request_path(self.path)
        after: Callable[[], None] | None = None
        self._unread = method in ("POST", "PUT", "PATCH") or bool(
            self.headers.get("Content-Length") not in (None, "0")
            or self.headers.get("Transfer-Encoding"))
        try:
            answer, after = self._route(method, path)
        except Reject as reject:
            answer = Answer(reject.status, f"{reject.status.value} {reject.reason}\n".encode(),
                            headers=reject.headers)
        except Exception:  # a bug answers 500, never a traceback to the client
            log.exception("%s %s %s: internal error", self.client_address[0], method, path)
            answer = Answer(HTTPStatus.INTERNAL_SERVER_ERROR, b"500 internal error (see the "
                            b"controller's log)\n")
        if self._unread:
            # A body we did not read would be taken for the next request.
            self.close_connection = True
        self._send(answer, head=method == "HEAD")
        seconds = time.perf_counter() - self._started
        if path in (ALERTS_PATH, EVENTS_PATH):
            app.observe(path, seconds, answer.status.value)
        self._answered(answer.status.value, seconds)
        if after is not None:
            crash_point("serve.after_ack")
            after()

    def _route(self, method: str, path: str | None) -> tuple[Answer, Callable[[], None] | None]:
        if path is None:
            raise Reject(HTTPStatus.BAD_REQUEST, "the request target is not a path")
        allowed = _ROUTES.get(path)
        if allowed is None:
            raise Reject(HTTPStatus.NOT_FOUND, "no such path")
        if method not in allowed:
            raise Reject(HTTPStatus.METHOD_NOT_ALLOWED, f"use {' or '.join(allowed)}",
                         headers={"Allow": ", ".join(allowed)})
        if path == ALERTS_PATH:
            return self._alerts()
        if path == EVENTS_PATH:
            return self._event()
        if path == METRICS_PATH:
            return self.server.app.metrics(), None
        return Answer(HTTPStatus.OK, b"ok\n"), None

    # -- POST /v1/alerts -------------------------------------------------------------------------

    def _alerts(self) -> tuple[Answer, Callable[[], None] | None]:
        app = self.server.app
        if not webhook.check_bearer(self.headers.get("Authorization"), app.webhook_token):
            raise Reject(HTTPStatus.UNAUTHORIZED, "a valid 'Authorization: Bearer' token is "
                         "required", headers={"WWW-Authenticate": "Bearer"})
        body = self._body(app.limits.max_alert_body)
        try:
            notification = webhook.parse_notification(body)
        except webhook.WebhookError as exc:
            raise Reject(HTTPStatus(exc.status), str(exc)) from None
        items = alert_inputs(notification)
        results = self._commit(items, SOURCE_ALERTMANAGER,
                               received_detail(notification, self.client_address[0]))
        new = sum(r.new for r in results)
        self._note = f" alerts={len(items)} new={new}"
        doc = {"incidents": [r.incident_id for r in results], "new": new,
               "duplicates": len(results) - new}
        return self._json(doc), lambda: app.ingestor.notify(results)

    # -- POST /v1/events -------------------------------------------------------------------------

    def _event(self) -> tuple[Answer, Callable[[], None] | None]:
        app = self.server.app
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Reject(HTTPStatus.UNAUTHORIZED, "the host's event token is required "
                         "('Authorization: Bearer')", headers={"WWW-Authenticate": "Bearer"})
        body = self._body(app.limits.max_event_body)
        try:
            event = ev.parse_event(body)
        except ev.EventError as exc:
            raise Reject(HTTPStatus(exc.status), str(exc)) from None
        self._note = f" host={event.host}"
        if not app.event_auth(event.host, token):
            raise Reject(HTTPStatus.FORBIDDEN, "the token is not this host's event token")
        results = self._commit([event.incident_input()], SOURCE_EVENT,
                               {"client": self.client_address[0],
                                **({"id": event.id} if event.id else {})})
        self._note += f" unit={event.unit} new={int(results[0].new)}"
        doc = {"incidents": [r.incident_id for r in results], "new": int(results[0].new)}
        return self._json(doc), lambda: app.ingestor.notify(results)

    # -- input and output ----------------------------------------------------------------------

    def _commit(self, items: list[Any], source: str, received: dict[str, Any]) -> list[Any]:
        try:
            return self.server.app.ingestor.commit(items, source, received)
        except MetalchainError as exc:
            # Not written: 503, so the sender delivers again (Alertmanager retries 5xx).
            log.error("ingest from %s not committed: %s", self.client_address[0], exc)
            raise Reject(HTTPStatus.SERVICE_UNAVAILABLE,
                         "not stored (state store error); deliver again") from None

    def _body(self, limit: int) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise Reject(HTTPStatus.LENGTH_REQUIRED, "chunked bodies are not accepted; send "
                         "Content-Length")
        lengths = self.headers.get_all("Content-Length") or []
        if not lengths:
            raise Reject(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        if len(set(lengths)) > 1:
            raise Reject(HTTPStatus.BAD_REQUEST, "conflicting Content-Length headers")
        raw = lengths[0].strip()
        # ASCII digits only: str.isdigit() is also true of "²", which int() refuses.
        if not _DIGITS.fullmatch(raw):
            raise Reject(HTTPStatus.BAD_REQUEST, "Content-Length is not a number")
        length = int(raw)
        if length > limit:
            raise Reject(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         f"body of {length} bytes is over the limit of {limit}")
        ctype = (self.headers.get("Content-Type") or JSON_TYPE).split(";")[0].strip().lower()
        if ctype != JSON_TYPE:
            raise Reject(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"body must be {JSON_TYPE}")
        if self.headers.get("Expect", "").lower() == "100-continue" and length:
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise Reject(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length")
        self._unread = False
        return body

    @staticmethod
    def _json(doc: Any) -> Answer:
        return Answer(HTTPStatus.OK, json.dumps(doc, separators=(",", ":")).encode() + b"\n",
                      content_type=JSON_TYPE)

    def _send(self, answer: Answer, *, head: bool) -> None:
        lines = [f"HTTP/1.1 {answer.status.value} {answer.status.phrase}",
                 f"Server: {self.server_version}",
                 f"Content-Type: {answer.content_type}",
                 f"Content-Length: {len(answer.body)}"]
        if self.close_connection:
            lines.append("Connection: close")
        lines += [f"{k}: {v}" for k, v in answer.headers.items()]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            self.wfile.write(data if head else data + answer.body)
        except OSError:
            self.close_connection = True

    def _answered(self, status: int, seconds: float | None = None) -> None:
        if self._logged:
            return
        self._logged = True
        raw = getattr(self, "path", "") or ""
        path = (request_path(raw) or "?") if raw else "-"
        method = getattr(self, "command", None) or "-"
        took = f" {seconds * 1000:.1f}ms" if seconds is not None else ""
        log.info("%s %s %s -> %d%s%s", self.client_address[0], method,
                 "".join(c if c.isprintable() else "?" for c in path[:200]), status,
                 self._note, took)


class Receiver:
    """The receiver's HTTP service; what ``serve`` runs and tests start on port 0.

    Example::

        receiver = Receiver("127.0.0.1", 0, ingestor=Ingestor(site.state),
                            webhook_token=token, event_auth=lambda host, t: ...)
        receiver.start()
        print(receiver.url)        # http://127.0.0.1:41234
        receiver.stop()
    """

    def __init__(self, address: str, port: int, *, ingestor: Ingestor, webhook_token: str,
                 event_auth: EventAuth | None = None, registry: Any = None,
                 observers: list[Observer] | None = None,
                 limits: ReceiverLimits | None = None) -> None:
        self.address = address
        self.requested_port = port
        self.ingestor = ingestor
        self.webhook_token = webhook_token
        self.event_auth: EventAuth = event_auth or (lambda _host, _token: False)
        self.registry = registry
        self.observers: list[Observer] = observers if observers is not None else []
        self.limits = limits or ReceiverLimits()
        self._serving: ServerThread[_Server] | None = None

    def start(self) -> Receiver:
        if self._serving is not None:
            return self
        self._serving = ServerThread.start(lambda addr: _Server(self, addr),
                                           (self.address, self.requested_port),
                                           name="receiver", error=ReceiverError)
        self.ingestor.start()
        if not self.webhook_token:
            log.warning("no webhook token configured: every Alertmanager notification will be "
                        "refused with 401")
        log.info("receiver listening on %s", self.url)
        return self

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop accepting, cut open connections, join the threads; queued listener calls
        are still delivered (within ``timeout``)."""
        serving, self._serving = self._serving, None
        if serving is None:
            return
        try:
            serving.stop(timeout, after_shutdown=lambda: serving.server.cut_overdue(
                everyone=True))
        finally:
            self.ingestor.stop(timeout)

    @property
    def port(self) -> int:
        if self._serving is None:
            raise ReceiverError("the receiver is not running")
        return self._serving.port

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"

    def observe(self, route: str, seconds: float, status: int) -> None:
        for observer in list(self.observers):
            try:
                observer(route, seconds, status)
            except Exception:  # metrics must never break ingest
                log.exception("an ingest observer failed")

    def metrics(self) -> Answer:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        body = generate_latest(self.registry) if self.registry is not None else b""
        return Answer(HTTPStatus.OK, body, content_type=CONTENT_TYPE_LATEST)
