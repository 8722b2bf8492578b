"""Hypothesis strategies for metalchain's network input: Alertmanager webhook notifications
(payload version 4, as documented with Alertmanager's ``webhook_config``), events pushed by
hosts (monitor.events, version 1), the install callbacks' form bodies (provision.contract),
and whole HTTP requests that carry them (raw bytes on a socket, so nothing is normalised by a
client library on the way).

Shared by the unit tier (tests/unit/test_netfuzz_parsers.py), the lab tier
(tests/lab/test_netfuzz_http.py) and the full-size campaign (bench/fuzz_net.py). Each body
strategy mixes three kinds of case: valid documents (which must be accepted), structure-aware
mutations of valid ones (a key dropped, a wrong type, a huge or hostile value, a duplicated
key, deep nesting, a huge number, NaN), and raw bytes (garbage, invalid UTF-8, NUL, truncated
valid bodies).
"""

from __future__ import annotations

import json
import socket
import time
import urllib.parse
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hypothesis import strategies as st

from provision import contract
from tests.fuzzing import paths_into

#: Template-injection payloads: Jinja2 expressions and statements, the classic sandbox escape
#: (with ``CANARY`` replaced by a path a test checks for), raw/comment tricks, Go templates
#: (Prometheus and Alertmanager render those) and Jinja written with Unicode lookalikes.
SSTI_PAYLOADS = (
    "{{ 7*7 }}",
    "{{7*7}}",
    "${{7*7}}",
    "{{ '7'*7 }}",
    "{{ cycler.__init__.__globals__.os.popen('touch CANARY').read() }}",
    "{{ lipsum.__globals__['os'].popen('touch CANARY').read() }}",
    "{{ self.__init__.__globals__.__builtins__.__import__('os').system('touch CANARY') }}",
    "{% for x in range(7) %}{{ x*7 }}{% endfor %}",
    "{% if 1 %}{{ 7*7 }}{% endif %}",
    "{% raw %}{{ 7*7 }}{% endraw %}{{ 7*7 }}",
    "{% endraw %}{{ 7*7 }}{% raw %}",
    "{# {{ 7*7 }}",
    "{#{{ 7*7 }}#}{{ 7*7 }}",
    "{{ config }}{{ self }}{{ request }}",
    "{{ $labels.instance }}{{ printf \"%d\" 49 }}",
    "{{ query \"up\" }}",
    "{{ 7*7 ",
    " }}{{ 7*7 }}{{ ",
    "\uff5b\uff5b 7*7 \uff5d\uff5d",  # fullwidth braces
    "\u2774\u2774 7*7 \u2775\u2775",  # ornate braces
    "{\u200b{ 7*7 }\u200b}",        # zero-width space inside the braces
    "%7B%7B 7*7 %7D%7D",
    "&#123;&#123; 7*7 &#125;&#125;",
    "{{ 7*7 }}\n{{ 7*7 }}\x00",
)

FORBIDDEN_RENDERINGS = ("49", "7777777")


def ssti_payloads(canary: str) -> list[str]:
    """:data:`SSTI_PAYLOADS` with their canary path filled in."""
    return [p.replace("CANARY", canary) for p in SSTI_PAYLOADS]


def evaluated(payload: str, rendered: str) -> bool:
    """Whether ``rendered`` shows that ``payload`` was evaluated: ``49`` (or ``7777777``)
    appears where the payload (which has neither) was put."""
    return any(f in rendered and f not in payload for f in FORBIDDEN_RENDERINGS)


def _one_in(draw: st.DrawFn, n: int) -> bool:
    """True about once in ``n`` draws. (Not ``integers(0, n - 1) == 0``: Hypothesis favours
    the simplest value, 0, far more often than 1/n, and the mutation would swamp the valid
    requests; the first element of ``sampled_from`` is favoured the same way, so it is the
    ordinary case.)"""
    return bool(draw(st.sampled_from([False] * (n - 1) + [True])))


# -- hostile text ------------------------------------------------------------------------------

_HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(SSTI_PAYLOADS),
    st.sampled_from(["", "\x00", "\x1b]0;pwned\x07", "\x1b[2J", "\u202e", "\ufeff", "\r\n",
                     "../../etc/passwd", "%00", "' OR 1=1 --", "$(id)", "`id`", "; touch x",
                     "-rf", "\\", '"', "null", "true", "0x41", "1e999"]),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=8).map(lambda s: s * 600),
)
_JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(),
                         st.floats(allow_nan=False, allow_infinity=False), _HOSTILE_TEXT)


def _json_any(max_leaves: int = 6) -> st.SearchStrategy[Any]:
    return st.recursive(_JSON_SCALAR, lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
        max_leaves=max_leaves)


# -- Alertmanager notifications -----------------------------------------------------------------

_LABEL_NAME = st.from_regex(r"\A[a-zA-Z_][a-zA-Z0-9_]{0,15}\Z")
_TIME = st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1)).map(
    lambda d: d.isoformat(timespec="microseconds") + "Z")
_FINGERPRINT = st.from_regex(r"\A[0-9a-f]{16}\Z")


@st.composite
def alert(draw: st.DrawFn) -> dict[str, Any]:
    labels = draw(st.dictionaries(_LABEL_NAME, st.text(max_size=30), max_size=5))
    labels["alertname"] = draw(st.from_regex(r"\A[A-Za-z][A-Za-z0-9_]{0,20}\Z"))
    if draw(st.booleans()):
        labels["instance"] = draw(st.sampled_from(["web1:9100", "10.0.0.5:9100", "[::1]:9100",
                                                   "fleet01"]))
    return {"status": draw(st.sampled_from(["firing", "resolved"])), "labels": labels,
            "annotations": draw(st.dictionaries(_LABEL_NAME, st.text(max_size=60), max_size=3)),
            "startsAt": draw(_TIME),
            "endsAt": draw(st.sampled_from(["0001-01-01T00:00:00Z", "2026-12-01T10:00:00Z"])),
            "generatorURL": "http://prometheus:9090/graph?g0.expr=up+%3D%3D+0",
            "fingerprint": draw(_FINGERPRINT)}


@st.composite
def notification(draw: st.DrawFn) -> dict[str, Any]:
    """A valid version-4 notification."""
    alerts = draw(st.lists(alert(), min_size=1, max_size=4))
    common = alerts[0]["labels"] if len(alerts) == 1 else {}
    name = alerts[0]["labels"]["alertname"]
    return {"version": "4", "groupKey": '{}:{alertname="' + name + '"}', "alerts": alerts,
            "truncatedAlerts": 0, "status": draw(st.sampled_from(["firing", "resolved"])),
            "receiver": "metalchain", "groupLabels": {"alertname": common.get("alertname", "")},
            "commonLabels": common, "commonAnnotations": {},
            "externalURL": "http://alertmanager:9093/"}


# -- pushed events ------------------------------------------------------------------------------

@st.composite
def event(draw: st.DrawFn) -> dict[str, Any]:
    """A valid version-1 event."""
    doc: dict[str, Any] = {
        "version": "1", "host": draw(st.from_regex(r"\A[a-z][a-z0-9-]{0,20}[a-z0-9]\Z")),
        "kind": "unit_failed",
        "unit": draw(st.from_regex(r"\A[a-z][a-z0-9@_.-]{0,30}\.service\Z")),
        "at": draw(st.one_of(
            st.integers(1_000_000_000, 9_000_000_000),
            st.floats(1e9, 9e9),
            st.datetimes(min_value=datetime(2002, 1, 1), max_value=datetime(2200, 1, 1))
            .map(lambda d: d.isoformat() + "Z")))}
    if draw(st.booleans()):
        doc["id"] = draw(st.from_regex(r"\A[0-9a-f]{32}\Z"))
    return doc


# -- mutations of a JSON document ---------------------------------------------------------------

def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    copy: Any = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _set(copy[path[0]], path[1:], value)
    return copy


def _drop(doc: Any, path: tuple[Any, ...]) -> Any:
    if len(path) == 1:
        copy: Any = dict(doc) if isinstance(doc, dict) else list(doc)
        del copy[path[0]]
        return copy
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _drop(copy[path[0]], path[1:])
    return copy


def _nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@st.composite
def mutated_json(draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]]) -> bytes:
    """A valid document with one or two structure-aware mutations, serialised."""
    doc = draw(valid)
    for _ in range(draw(st.integers(1, 2))):
        paths = paths_into(doc)
        path = draw(st.sampled_from(paths))
        how = draw(st.sampled_from(["drop", "value", "type", "huge", "deep"]))
        if how == "drop" and path:
            doc = _drop(doc, path)
        elif how == "value":
            doc = _set(doc, path, draw(_HOSTILE_TEXT))
        elif how == "type":
            doc = _set(doc, path, draw(_json_any()))
        elif how == "huge":
            doc = _set(doc, path, draw(st.sampled_from([
                "x" * 5000, 10 ** 30, -(10 ** 30), 1e308, 2 ** 63, -1, [0] * 2000,
                {f"k{i}": "v" for i in range(100)}])))
        elif how == "deep":
            doc = _set(doc, path, json.loads(_nested(draw(st.integers(20, 900)))))
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()))
    return text.encode("utf-8", "surrogatepass")


@st.composite
def textual_json_attack(draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]]) -> bytes:
    """Attacks that need the text itself: a key given twice, NaN, a number of thousands of
    digits, nesting past the parser's recursion limit, a lone surrogate escape, a truncated
    body, a NUL or an invalid UTF-8 byte spliced in."""
    doc = draw(valid)
    text = json.dumps(doc)
    key = draw(st.sampled_from(sorted(doc)))
    how = draw(st.sampled_from(["dupkey", "nan", "bigint", "deep", "surrogate", "truncate",
                                "splice", "bom", "trailing", "wrapped"]))
    if how == "dupkey":
        return ("{" + json.dumps(key) + ": " + json.dumps(draw(_JSON_SCALAR)) + ", "
                + text[1:]).encode()
    if how == "nan":
        return text.replace(json.dumps(doc[key]), draw(st.sampled_from(
            ["NaN", "Infinity", "-Infinity"])), 1).encode()
    if how == "bigint":
        return ("{" + json.dumps(key) + ": " + "9" * draw(st.integers(4000, 20000)) + ", "
                + text[1:]).encode()
    if how == "deep":
        depth = draw(st.integers(500, 200_000))
        return ("{" + json.dumps(key) + ": " + _nested(depth) + ", " + text[1:]).encode()
    if how == "surrogate":
        return text.replace(json.dumps(key), json.dumps(key)[:-1] + '\\ud800"', 1).encode()
    if how == "truncate":
        return text.encode()[:draw(st.integers(0, max(0, len(text) - 1)))]
    if how == "splice":
        raw = bytearray(text.encode())
        at = draw(st.integers(0, len(raw)))
        raw[at:at] = draw(st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xed\xa0\x80",
                                           b"\xf4\x90\x80\x80", b"\xc0\xaf"]))
        return bytes(raw)
    if how == "bom":
        return b"\xef\xbb\xbf" + text.encode()
    if how == "trailing":
        return text.encode() + draw(st.sampled_from([b" x", b"{}", b"\x00", b"]"]))
    return json.dumps([doc]).encode()


def json_body(valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """Any body for a JSON route: valid, mutated, textually attacked, or raw bytes."""
    return st.one_of(
        valid.map(lambda d: json.dumps(d).encode()),
        valid.map(lambda d: json.dumps(d).encode()),
        mutated_json(valid),
        mutated_json(valid),
        textual_json_attack(valid),
        st.binary(max_size=200),
        _json_any(10).map(lambda d: json.dumps(d).encode("utf-8", "surrogatepass")),
    )


# -- install callback forms ---------------------------------------------------------------------

STAGES = contract.INSTALL_STAGES


@st.composite
def callback_form(draw: st.DrawFn) -> tuple[str, bytes]:
    """(route, form body) for progress/done/failed: valid or mutated."""
    route = draw(st.sampled_from(["progress", "done", "failed"]))
    fields: list[tuple[str, str]] = []
    if route in ("progress", "failed"):
        fields.append(("stage", draw(st.one_of(st.sampled_from(STAGES), _HOSTILE_TEXT))))
        fields.append(("message", draw(st.one_of(st.text(max_size=80), _HOSTILE_TEXT))))
    if route == "failed" and draw(st.booleans()):
        fields.append(("log", draw(st.text(max_size=200))))
    if draw(st.booleans()):
        fields.append((draw(st.sampled_from(["stage", "message", "x", "", "token"])),
                       draw(_HOSTILE_TEXT)))
    body = urllib.parse.urlencode(fields).encode()
    how = draw(st.sampled_from(["plain", "plain", "raw", "pct", "huge", "many"]))
    if how == "raw":
        body = draw(st.binary(max_size=200))
    elif how == "pct":
        body += draw(st.sampled_from([b"&message=%ff", b"&message=%00", b"&message=%ED%A0%80",
                                      b"&&&", b"=", b"&message", b"%", b"%zz"]))
    elif how == "huge":
        body = b"message=" + b"A" * draw(st.integers(4000, 300_000))
    elif how == "many":
        body = b"&".join(b"f%d=1" % i for i in range(draw(st.integers(9, 2000))))
    return route, body


# -- whole HTTP requests ------------------------------------------------------------------------

@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    #: declared Content-Length differs from the body (the client half-closes after sending,
    #: so a server waiting for more sees the end of input instead of hanging on us)
    lying_length: bool = False

    def encode(self) -> bytes:
        head = f"{self.method} {self.target} HTTP/1.1\r\n".encode("latin-1", "replace")
        for k, v in self.headers:
            head += f"{k}: {v}\r\n".encode("latin-1", "replace")
        return head + b"\r\n" + self.body


_CONTENT_TYPES = ("application/json", "application/json; charset=utf-8",
                  "application/x-www-form-urlencoded", "text/plain", "", "application/json\x00",
                  "multipart/form-data; boundary=x", "APPLICATION/JSON")


@st.composite
def http_request(draw: st.DrawFn, *, paths: list[str], body: st.SearchStrategy[bytes],
                 auth: list[tuple[str, str]]) -> Request:
    """A request to one of ``paths`` with a body from ``body``, header mutations (wrong or
    missing Content-Type, Content-Length missing, wrong, duplicated, non-digit, huge;
    chunked), a method and a target that may be odd."""
    odd = _one_in(draw, 10)     # one request in ten: an odd method or target
    method = draw(st.sampled_from(["GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "BREW",
                                   "post", "POST" * 3000]) if odd else st.just("POST"))
    target = draw(st.sampled_from(["*", "http://[", "//[::1", "/../../etc/passwd",
                                   "/v1/%2e%2e/", "/" + "a" * 70000, "/v1/alerts#frag",
                                   "/\x7f", "/%ff%fe", "/a b"]) if odd and draw(st.booleans())
                  else st.sampled_from(paths).map(lambda p: p + "?x=%00&y=[{")
                  if _one_in(draw, 10) else st.sampled_from(paths))
    data = draw(body)
    headers: list[tuple[str, str]] = [("Host", "127.0.0.1")]
    headers += draw(st.sampled_from(auth) if _one_in(draw, 4)
                    else st.just(auth[0]))
    ctype = draw(st.sampled_from([*_CONTENT_TYPES, None]) if _one_in(draw, 4)
                 else st.just(_CONTENT_TYPES[0]))
    if ctype is not None:
        headers.append(("Content-Type", ctype))
    lying = False
    length = draw(st.sampled_from(["none", "short", "long", "dup", "dupdiff", "neg", "word",
                                   "huge", "super", "chunked", "space"])
                  if _one_in(draw, 4) else st.just("right"))
    if length == "right":
        headers.append(("Content-Length", str(len(data))))
    elif length == "short":
        headers.append(("Content-Length", str(max(0, len(data) - 3))))
    elif length == "long":
        headers.append(("Content-Length", str(len(data) + 10)))
        lying = True
    elif length == "dup":
        headers += [("Content-Length", str(len(data)))] * 2
    elif length == "dupdiff":
        headers += [("Content-Length", str(len(data))), ("Content-Length", "0")]
    elif length == "neg":
        headers.append(("Content-Length", "-1"))
    elif length == "word":
        headers.append(("Content-Length", draw(st.sampled_from(["abc", "1_0", "0x10", "+5",
                                                                 "1e3", "", " "]))))
    elif length == "huge":
        headers.append(("Content-Length", "9" * draw(st.integers(10, 5000))))
    elif length == "super":
        headers.append(("Content-Length", "\u00b2"))
    elif length == "chunked":
        headers.append(("Transfer-Encoding", "chunked"))
        data = b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"
    elif length == "space":
        headers.append(("Content-Length", f" {len(data)} "))
    if draw(st.booleans()):
        headers.append(("Connection", "close"))
    if _one_in(draw, 10):
        headers.append(("Expect", "100-continue"))
    return Request(method, target, tuple(headers), data, lying)


@dataclass(frozen=True)
class Exchange:
    """What a server did with one request: its status (None: no status line came back),
    how long it took, and whether the connection was dropped without an answer."""

    status: int | None
    seconds: float
    dropped: bool
    timed_out: bool


def exchange(port: int, request: Request, *, timeout: float = 15.0) -> Exchange:
    """Send ``request`` on a fresh connection to 127.0.0.1:``port``, half-close, read the
    answer's status line (the rest is read and dropped)."""
    t0 = time.monotonic()
    data = b""
    timed_out = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request.encode())
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass   # the server may answer (and close) before reading all of a huge request
        try:
            while b"\r\n" not in data or data.startswith(b"HTTP/1.1 100 "):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if data.startswith(b"HTTP/1.1 100 Continue\r\n\r\n"):
                    data = data[len(b"HTTP/1.1 100 Continue\r\n\r\n"):]
        except TimeoutError:
            timed_out = True
        except OSError:
            pass
    seconds = time.monotonic() - t0
    status = None
    line = data.split(b"\r\n", 1)[0]
    parts = line.split()
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        status = int(parts[1])
    return Exchange(status, seconds, status is None and not timed_out, timed_out)


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MiB."""
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0
