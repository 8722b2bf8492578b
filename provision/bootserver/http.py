"""The boot server's HTTP side: iPXE scripts, installer files, images and the install callbacks.

Routes are built from ``provision.contract`` (the installer imports the same names), so the two
sides cannot drift apart. Why the standard library's ``ThreadingHTTPServer``: the traffic is a
few requests per node per install plus one large streaming download, which a thread per
connection serves well, and it adds no dependency to the controller. What it lacks is added
here:

- **Limits** (:class:`runtime.httpserver.ConnectionLimits`, kept by the serving loop). A cap
  on concurrent connections in all and per source address (503 beyond either: one client
  holding idle sockets leaves the others' slots alone), a deadline for the whole request
  (request line, headers and body: a slowloris client is cut off), a whole-response deadline
  with a minimum transfer rate (an answer must be taken at ``min_rate`` on average after
  ``response_grace`` s: a reader taking a byte now and then is cut, a 400 MB image at a sane
  rate is not), a per-operation socket timeout, a body size limit (413).
- **Authorization with one-time tokens.** No token: 401. A token that is not this node's active
  one (another node's, a wrong one, a spent one): 403. Unknown node: 404. A rejected request
  changes nothing and calls nothing. ``done`` and ``failed`` spend the token in the state store
  before the callback runs, in one conditional UPDATE, so of two concurrent replays exactly one
  is accepted.
- **Quiet about secrets.** Log lines name client, method, path, status and node; never the
  token header, a config.env body or an iPXE script (which carries the token). Errors answer a
  one-line reason; a traceback never reaches the client.
- **Streaming.** Static files are sent with ``socket.sendfile`` (zero-copy, in 256 KiB steps
  that report progress to the rate check) and a ``Content-Length``; a 400 MB image costs no
  Python-level copying.

Routes (``ROUTES``, walked by tests/lab/test_routes_walked.py) and who may call them:

=============== ================================== =========================================
route           path                               credentials
=============== ================================== =========================================
script          /boot/MAC.ipxe                     public; the deploy token only to the
                                                   node's own address, else ``exit``
kernel, initrd  /installer/vmlinuz, initrd.img     public: Debian's kernel, our busybox
                                                   installer (no secret in either)
image,          /images/NAME.raw(.sha256)          public: golden images carry no host key,
image_sha256                                       no password (per-node keys come in config)
config          /v1/nodes/NODE/config.env          the node's active deploy token
progress, done, /v1/nodes/NODE/...                 the node's active deploy token
failed
=============== ================================== =========================================
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import re
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import BinaryIO

from provision import contract
from provision.bootserver.interfaces import (
    BootNode,
    BootNodes,
    BootServerError,
    DeployProvider,
    InstallCallbacks,
    NodeConfig,
    TokenStore,
)
from provision.templates import render
from runtime.httpserver import (
    CappedHTTPServer,
    ConnectionLimits,
    DispatchingHandler,
    ServerThread,
)

log = logging.getLogger("metalchain.bootserver.http")

FORM_TYPE = "application/x-www-form-urlencoded"
TEXT_TYPE = "text/plain; charset=utf-8"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,256}$")
_STAGE_RE = re.compile(r"^[a-z0-9_-]{1,32}$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_FIELD_PATTERNS = {
    "mac_hyphens": r"[0-9A-Fa-f]{2}(?:-[0-9A-Fa-f]{2}){5}",
    "name": r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}",
    "node": r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}",
}


@dataclass(frozen=True)
class HttpLimits:
    """Resource limits of the HTTP service (defaults fit a busybox installer under TCG)."""

    max_connections: int = 64
    max_per_client: int = 16         # open connections from one address
    request_timeout: float = 10.0    # request line + headers + body, in total
    io_timeout: float = 30.0         # one socket read or write while sending a file
    response_grace: float = 30.0     # an answer may take this + its size / min_rate
    min_rate: float = 512 * 1024     # bytes/s, on average after the grace (TCG installs: ~60 MB/s)
    max_body: int = 256 * 1024
    max_message: int = 4096
    max_log: int = 192 * 1024

    def connection_limits(self) -> ConnectionLimits:
        return ConnectionLimits(max_connections=self.max_connections,
                                max_per_client=self.max_per_client,
                                header_timeout=self.request_timeout,
                                response_grace=self.response_grace, min_rate=self.min_rate)


@dataclass(frozen=True)
class RequestRecord:
    """One answered request, as logged (no token, no body)."""

    at: float
    client: str
    method: str
    path: str
    status: int
    node: str | None


class Reject(Exception):
    """Answer ``status`` with a one-line ``reason`` (raised inside handlers only)."""

    def __init__(self, status: HTTPStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass
class Response:
    status: HTTPStatus
    body: bytes = b""
    content_type: str = TEXT_TYPE
    file: Path | None = None
    headers: dict[str, str] = field(default_factory=dict)


def _route(template: str) -> re.Pattern[str]:
    """A regex for one contract path such as ``/v1/nodes/{node}/done``."""
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_FIELD_PATTERNS[part]})"
                      for i, part in enumerate(parts))
    return re.compile(f"^{pattern}$")


ROUTES: dict[str, re.Pattern[str]] = {
    "script": _route(contract.IPXE_SCRIPT),
    "kernel": _route(contract.INSTALLER_KERNEL),
    "initrd": _route(contract.INSTALLER_INITRD),
    "image": _route(contract.IMAGE),
    "image_sha256": _route(contract.IMAGE_SHA256),
    "config": _route(contract.NODE_CONFIG),
    "progress": _route(contract.NODE_PROGRESS),
    "done": _route(contract.NODE_DONE),
    "failed": _route(contract.NODE_FAILED),
}
_GET_ROUTES = ("script", "kernel", "initrd", "image", "image_sha256", "config")
_POST_ROUTES = ("progress", "done", "failed")


def shell_quote_value(value: str) -> str:
    """Single-quote for sh, always (the contract says every value is single-quoted)."""
    if "\0" in value:
        raise ValueError("NUL in a config value")
    return "'" + value.replace("'", "'\"'\"'") + "'"


def render_config_env(config: NodeConfig, base_url: str) -> str:
    """The ``config.env`` text for the installer: ``KEY='value'`` lines, keys in contract order.

    Raises ValueError naming the field (never its value) when the provider's data is unusable.
    """
    if not _SHA256_RE.match(config.image_sha256):
        raise ValueError("image_sha256 is not 64 lower-case hex digits")
    if config.image_size < 0:
        raise ValueError("image_size is negative")
    if not _MAC_RE.match(config.mac):
        raise ValueError("mac is not a lower-case aa:bb:cc:dd:ee:ff MAC")
    try:
        ipaddress.IPv4Interface(config.ipv4)
        if "/" not in config.ipv4:
            raise ValueError(config.ipv4)
        for addr in ((config.gateway,) if config.gateway else ()) + config.nameservers:
            ipaddress.IPv4Address(addr)
    except ValueError:
        raise ValueError("ipv4, gateway or nameservers is not an IPv4 address "
                         "(ipv4 as ADDRESS/PREFIX)") from None
    url = config.image_url
    if url.startswith("/"):
        url = base_url + url
    if not url.startswith(("http://", "https://")):
        raise ValueError("image_url is neither absolute nor a path on the boot server")

    def b64(text: str) -> str:
        return base64.b64encode(text.encode("utf-8")).decode("ascii")

    values = {
        "MC_HOSTNAME": config.hostname,
        "MC_IMAGE_URL": url,
        "MC_IMAGE_SHA256": config.image_sha256,
        "MC_IMAGE_SIZE": str(config.image_size),
        "MC_ROOT_DEVICE": config.root_device,
        "MC_AUTHORIZED_KEYS": b64(config.authorized_keys),
        "MC_HOST_KEY": b64(config.host_key),
        "MC_HOST_KEY_PUB": b64(config.host_key_pub),
        "MC_MAC": config.mac,
        "MC_IPV4": config.ipv4,
        "MC_GATEWAY": config.gateway,
        "MC_NAMESERVERS": " ".join(config.nameservers),
    }
    if tuple(values) != contract.CONFIG_KEYS:
        raise ValueError("config.env keys differ from provision.contract.CONFIG_KEYS")
    return "".join(f"{key}={shell_quote_value(value)}\n" for key, value in values.items())


class _Server(CappedHTTPServer):
    """Capped connections with deadlines (runtime/httpserver.py): the request (line, headers
    and body) within ``request_timeout`` of accepting, then the answer at ``min_rate``."""

    def __init__(self, app: BootHttpServer, address: tuple[str, int]) -> None:
        self.app = app
        super().__init__(address, _Handler, limits=app.limits.connection_limits(), log=log)


class _Handler(DispatchingHandler):
    server: _Server
    protocol_version = "HTTP/1.0"
    server_version = "metalchain-boot/1"
    sys_version = ""
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = TEXT_TYPE

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.app.limits.io_timeout)
        # HTTP/1.0, one request per connection: the header deadline set when the request line
        # is awaited (runtime.httpserver) is request_timeout and covers the body too.
        self._node: str | None = None
        self._logged = False

    # -- dispatch (the entry points: runtime.httpserver.DispatchingHandler) ----------------

    @property
    def _path(self) -> str:
        return _request_path(self.path)

    def _dispatch(self, method: str) -> None:
        try:
            response = self._route(method)
        except Reject as reject:
            response = Response(reject.status, f"{reject.status.value} {reject.reason}\n"
                                .encode())
        except Exception as exc:  # noqa: BLE001 - the HTTP edge: one line out, never a traceback
            log.error("%s %s: internal error (%s: %s)", method, self._path,
                      exc.__class__.__name__, exc)
            response = Response(HTTPStatus.INTERNAL_SERVER_ERROR,
                                b"500 internal error (see the controller's log)\n")
        try:
            self._send(response, head=method == "HEAD")
        except OSError as exc:
            log.info("%s %s: client went away (%s)", method, self._path, exc.__class__.__name__)
        self._answered(response.status.value)

    def _answered(self, status: int) -> None:
        if self._logged:
            return
        self._logged = True
        raw_path = getattr(self, "path", "")
        path = _request_path(raw_path) if raw_path else "-"
        method = getattr(self, "command", None) or "-"
        record = RequestRecord(time.time(), self.client_address[0], method, path, status,
                               self._node)
        self.server.app.record(record)

    def _route(self, method: str) -> Response:
        path = self._path
        matched = None
        for name, regex in ROUTES.items():
            found = regex.match(path)
            if found:
                matched = (name, found.groupdict())
                break
        if matched is None:
            raise Reject(HTTPStatus.NOT_FOUND, "no such path")
        name, params = matched
        allowed = ("GET", "HEAD") if name in _GET_ROUTES else ("POST",)
        if method not in allowed:
            raise Reject(HTTPStatus.METHOD_NOT_ALLOWED, f"use {' or '.join(allowed)}")
        app = self.server.app
        if name == "script":
            return self._script(params["mac_hyphens"].lower())
        if name == "kernel":
            return app.static_file(app.installer_dir, Path(contract.INSTALLER_KERNEL).name)
        if name == "initrd":
            return app.static_file(app.installer_dir, Path(contract.INSTALLER_INITRD).name)
        if name == "image":
            return app.static_file(app.images_dir, f"{params['name']}.raw")
        if name == "image_sha256":
            return app.static_file(app.images_dir, f"{params['name']}.raw.sha256")
        node = self._authorize(params["node"])
        if name == "config":
            return self._config(node)
        form = self._form()
        if name == "progress":
            return self._progress(node, form)
        token = self._token()
        if name == "done":
            _only(form, contract.DONE_FIELDS)
            self._spend(node, token)
            app.callbacks.on_done(node.name)
            log.info("%s: install done", node.name)
        else:
            _only(form, contract.FAILED_FIELDS)
            stage = form.get("stage", "")
            if stage and not _STAGE_RE.match(stage):
                raise Reject(HTTPStatus.BAD_REQUEST, "stage is not a stage name")
            message = _text(form, "message", app.limits.max_message)
            install_log = _text(form, "log", app.limits.max_log)
            self._spend(node, token)
            app.callbacks.on_failed(node.name, stage, message, install_log)
            log.warning("%s: install failed at stage %s", node.name, stage or "?")
        return Response(HTTPStatus.OK, b"ok\n")

    # -- routes --------------------------------------------------------------------------------

    def _script(self, mac_hyphens: str) -> Response:
        app = self.server.app
        node = app.nodes.by_mac.get(mac_hyphens.replace("-", ":"))
        if node is None:
            raise Reject(HTTPStatus.NOT_FOUND, "unknown MAC")
        self._node = node.name
        if node.ip and node.ip != self.client_address[0]:
            # The script may carry the deploy token: only the node's own (static) address
            # gets it. A MAC is no secret; an address on the boot network is harder to take.
            raise Reject(HTTPStatus.FORBIDDEN, "script requested from another address")
        token = app.provider.install_token(node.name)
        install = bool(token and _TOKEN_RE.match(token)
                       and app.tokens.check_deploy_token(node.name, token))
        text = app.ipxe_script(node, token if install else None)
        headers = {"Cache-Control": "no-store"}
        return Response(HTTPStatus.OK, text.encode("utf-8"), headers=headers)

    def _config(self, node: BootNode) -> Response:
        app = self.server.app
        config = app.provider.node_config(node.name)
        if config is None:
            raise Reject(HTTPStatus.CONFLICT, "node is not being deployed")
        try:
            text = render_config_env(config, app.url)
        except ValueError as exc:
            log.error("%s: the provider's node configuration is unusable: %s", node.name, exc)
            raise Reject(HTTPStatus.INTERNAL_SERVER_ERROR,
                         "node configuration unusable (see the controller's log)") from None
        return Response(HTTPStatus.OK, text.encode("utf-8"), headers={"Cache-Control": "no-store"})

    def _progress(self, node: BootNode, form: dict[str, str]) -> Response:
        app = self.server.app
        _only(form, contract.PROGRESS_FIELDS)
        stage = form.get("stage", "")
        if stage not in contract.INSTALL_STAGES:
            raise Reject(HTTPStatus.BAD_REQUEST, "stage must be one of "
                         + ", ".join(contract.INSTALL_STAGES))
        message = _text(form, "message", app.limits.max_message)
        app.callbacks.on_progress(node.name, stage, message)
        log.info("%s: install progress %s", node.name, stage)
        return Response(HTTPStatus.OK, b"ok\n")

    # -- authorization and input -----------------------------------------------------------------

    def _token(self) -> str:
        values = self.headers.get_all(contract.TOKEN_HEADER) or []
        if not values:
            raise Reject(HTTPStatus.UNAUTHORIZED, f"{contract.TOKEN_HEADER} header required")
        if len(values) > 1:
            raise Reject(HTTPStatus.BAD_REQUEST, f"more than one {contract.TOKEN_HEADER}")
        return values[0].strip()

    def _authorize(self, name: str) -> BootNode:
        app = self.server.app
        node = app.nodes.by_name.get(name)
        if node is None:
            raise Reject(HTTPStatus.NOT_FOUND, "unknown node")
        self._node = node.name
        token = self._token()
        if not _TOKEN_RE.match(token) or not app.tokens.check_deploy_token(node.name, token):
            raise Reject(HTTPStatus.FORBIDDEN, "token is not this node's active deploy token")
        return node

    def _spend(self, node: BootNode, token: str) -> None:
        # The conditional UPDATE in the state store is the atomic step: of two concurrent
        # `done` requests with one token, one spends it and the other gets 403 here.
        if not self.server.app.tokens.spend_deploy_token(node.name, token):
            raise Reject(HTTPStatus.FORBIDDEN, "token is not this node's active deploy token")

    def _form(self) -> dict[str, str]:
        limits = self.server.app.limits
        if self.headers.get("Transfer-Encoding"):
            raise Reject(HTTPStatus.BAD_REQUEST, "chunked bodies are not accepted; send "
                         "Content-Length")
        ctype = (self.headers.get("Content-Type") or FORM_TYPE).split(";")[0].strip().lower()
        if ctype != FORM_TYPE:
            raise Reject(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"body must be {FORM_TYPE}")
        raw_length = self.headers.get("Content-Length")
        if raw_length is None:
            raise Reject(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        try:
            length = int(raw_length)
        except ValueError:
            raise Reject(HTTPStatus.BAD_REQUEST, "Content-Length is not a number") from None
        if length < 0:
            raise Reject(HTTPStatus.BAD_REQUEST, "Content-Length is negative")
        if length > limits.max_body:
            raise Reject(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                         f"body larger than {limits.max_body} bytes")
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            raise Reject(HTTPStatus.BAD_REQUEST, "body shorter than Content-Length")
        try:
            text = body.decode("utf-8")
            pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text),
                                           encoding="utf-8", errors="strict", max_num_fields=8)
        except (UnicodeDecodeError, ValueError):
            raise Reject(HTTPStatus.BAD_REQUEST, "body is not UTF-8 form data") from None
        form: dict[str, str] = {}
        for key, value in pairs:
            if key in form:
                raise Reject(HTTPStatus.BAD_REQUEST, f"field {key!r} given twice")
            form[key] = value
        return form

    # -- output --------------------------------------------------------------------------------

    def _send(self, response: Response, *, head: bool) -> None:
        handle: BinaryIO | None = None
        length = len(response.body)
        if response.file is not None:
            try:
                handle = open(response.file, "rb")  # closed in the finally below
                length = _file_size(handle)
            except OSError:
                response = Response(HTTPStatus.NOT_FOUND, b"404 no such file\n")
                length = len(response.body)
        self._begin_response(0 if head else length)
        try:
            self.send_response_only(response.status.value)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(length))
            self.send_header("Connection", "close")
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if head:
                return
            if handle is not None:
                self.wfile.flush()
                self._send_file(handle, length)
            else:
                self.wfile.write(response.body)
        finally:
            if handle is not None:
                handle.close()


def _request_path(target: str) -> str:
    """The path of a request target ("" for one ``urlsplit`` refuses, e.g. ``http://[``:
    no route matches it, so it is answered 404 instead of escaping the handler)."""
    try:
        return urllib.parse.urlsplit(target).path
    except ValueError:
        return ""


def _file_size(handle: BinaryIO) -> int:
    handle.seek(0, 2)
    size = handle.tell()
    handle.seek(0)
    return size


def _only(form: dict[str, str], allowed: tuple[str, ...]) -> None:
    for key in form:
        if key not in allowed:
            raise Reject(HTTPStatus.BAD_REQUEST, f"unknown field {key!r}")


def _text(form: dict[str, str], key: str, limit: int) -> str:
    value = form.get(key, "")
    if len(value) > limit:
        raise Reject(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"{key} longer than {limit} characters")
    if "\0" in value:
        raise Reject(HTTPStatus.BAD_REQUEST, f"{key} contains NUL")
    return value


class BootHttpServer:
    """The HTTP service alone (no DHCP): what tests start on 127.0.0.1 port 0.

    Example::

        http = BootHttpServer("127.0.0.1", 0, installer_dir=..., images_dir=...,
                              provider=lifecycle, tokens=state, callbacks=lifecycle,
                              nodes=BootNodes.from_hosts(inventory.hosts.values()))
        http.start()
        print(http.url)        # http://127.0.0.1:41234
        http.stop()
    """

    def __init__(self, address: str, port: int, *, installer_dir: Path, images_dir: Path,
                 provider: DeployProvider, tokens: TokenStore, callbacks: InstallCallbacks,
                 nodes: BootNodes | None = None, kernel_args: tuple[str, ...] = (),
                 limits: HttpLimits | None = None, history: int = 1000) -> None:
        self.address = address
        self.requested_port = port
        self.installer_dir = installer_dir
        self.images_dir = images_dir
        self.provider = provider
        self.tokens = tokens
        self.callbacks = callbacks
        self.kernel_args = kernel_args
        self.limits = limits or HttpLimits()
        self._nodes = nodes or BootNodes()
        self._server: _Server | None = None
        self._serving: ServerThread[_Server] | None = None
        self._records: deque[RequestRecord] = deque(maxlen=history)
        self._records_changed = threading.Condition()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._serving is not None:
            return
        self._serving = ServerThread.start(lambda addr: _Server(self, addr),
                                           (self.address, self.requested_port),
                                           name="boot-http", error=BootServerError)
        self._server = self._serving.server
        log.info("boot HTTP listening on %s", self.url)

    def stop(self, *, timeout: float = 5.0) -> None:
        """Stop accepting, cut open connections (downloads included), join the loop thread."""
        serving, self._serving, self._server = self._serving, None, None
        if serving is not None:
            serving.stop(timeout, after_shutdown=lambda: serving.server.cut_overdue(everyone=True))

    @property
    def port(self) -> int:
        if self._server is None:
            raise BootServerError("the boot HTTP server is not running")
        return self._server.server_port

    @property
    def url(self) -> str:
        """Base URL nodes use, e.g. ``http://10.77.0.1:8080`` (the real port after start)."""
        return f"http://{self.address}:{self.port}"

    @property
    def nodes(self) -> BootNodes:
        return self._nodes

    def set_nodes(self, nodes: BootNodes) -> None:
        """Swap the node snapshot (one reference assignment: requests see old or new)."""
        self._nodes = nodes

    # -- content -------------------------------------------------------------------------------

    def ipxe_script(self, node: BootNode, token: str | None) -> str:
        """The per-MAC script: the installer with ``token``, or ``exit`` without one."""
        if token is None:
            return render("boot.ipxe.j2", install=False, node=node.name)
        base = self.url
        return render("boot.ipxe.j2", install=True, node=node.name, token=token, base_url=base,
                      kernel_url=base + contract.INSTALLER_KERNEL,
                      initrd_url=base + contract.INSTALLER_INITRD,
                      kernel_args=self.kernel_args, karg_url=contract.KARG_URL,
                      karg_node=contract.KARG_NODE, karg_token=contract.KARG_TOKEN)

    def static_file(self, directory: Path, name: str) -> Response:
        """A file directly inside ``directory`` (no symlink may lead out of it)."""
        try:
            root = directory.resolve(strict=True)
            path = (root / name).resolve(strict=True)
        except (OSError, RuntimeError):
            raise Reject(HTTPStatus.NOT_FOUND, "no such file") from None
        if path.parent != root or not path.is_file():
            raise Reject(HTTPStatus.NOT_FOUND, "no such file")
        return Response(HTTPStatus.OK, file=path, content_type="application/octet-stream")

    # -- observation -----------------------------------------------------------------------------

    def record(self, record: RequestRecord) -> None:
        log.info("%s %s %s -> %d%s", record.client, record.method, record.path, record.status,
                 f" node={record.node}" if record.node else "")
        with self._records_changed:
            self._records.append(record)
            self._records_changed.notify_all()

    def requests(self) -> list[RequestRecord]:
        """The most recent answered requests, oldest first (for diagnostics and tests)."""
        with self._records_changed:
            return list(self._records)

    def wait_for_request(self, match: Callable[[RequestRecord], bool], *, timeout: float,
                         since: float = 0.0) -> RequestRecord | None:
        """The first request (answered at or after ``since``) that ``match``es, or None."""
        deadline = time.monotonic() + timeout
        with self._records_changed:
            while True:
                for record in self._iter_since(since):
                    if match(record):
                        return record
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._records_changed.wait(left)

    def _iter_since(self, since: float) -> Iterator[RequestRecord]:
        return (r for r in self._records if r.at >= since)
