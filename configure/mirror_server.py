"""Serve the package mirror over HTTP to the hosts of the provisioning network.

Read-only (GET and HEAD only), no directory listings, no path outside the served directory
(``..``, symlinks leading out, NUL bytes are all refused), the routes a table (``ROUTES``),
the limits of :class:`runtime.httpserver.CappedHTTPServer` (connections in all and per source
address, a header deadline per request of a kept-alive connection, a whole-response deadline
with a minimum rate; ``DEFAULT_LIMITS``), files sent with ``socket.sendfile``, and
Content-Length taken from the opened file so a mirror switched mid-request still answers
consistently. The served directory is resolved on every request: when ``build_mirror`` moves
``current`` to a new release, the next request sees the new one without a restart.

In-process (tests, ``metalchain serve``)::

    with MirrorServer(site.root / "mirror" / "current", "10.77.0.1", 8081) as server:
        ...

Images (the lab's guest image, for the image_store role to download) are served at
``/images/NAME`` from ``images_dir``, by default the ``images`` directory next to the served
``current`` link (``SITE/mirror/images``); the apt repository itself never has an ``images``
path, so the two never overlap.

As a daemon: ``python -m configure.mirror_server --dir D --address A --port P --pidfile F``,
started and stopped with :func:`start_daemon` / :func:`stop_daemon`, which wait (with deadlines)
until it answers or is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path

from configure.mirror import MirrorError, mirror_url
from runtime.httpserver import (
    CappedHTTPServer,
    ConnectionLimits,
    DispatchingHandler,
    ServerThread,
)
from runtime.pidfile import live_pid, terminate, write_pidfile
from runtime.private import open_private

log = logging.getLogger(__name__)

DEFAULT_PORT = 8081
REQUEST_TIMEOUT = 30.0
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
#: apt on 50 fleet hosts keeps about one connection each; one host may not take more than 16,
#: an idle connection is cut after 10 s, and a file must flow at 512 KiB/s after 30 s.
DEFAULT_LIMITS = ConnectionLimits(max_connections=128, max_per_client=16, header_timeout=10.0,
                                  response_grace=30.0, min_rate=512 * 1024)
DAEMON_MODULE = "configure.mirror_server"
IMAGES_PREFIX = "images"
IMAGES_DIR_NAME = "images"
CONTENT_TYPES = {".deb": "application/vnd.debian.binary-package", ".gz": "application/gzip",
                 ".gpg": "application/pgp-keys", ".json": "application/json"}


def resolve_request(root: Path, url_path: str) -> Path | None:
    """The file under ``root`` that ``url_path`` names, or None if it names nothing servable.

    Percent-escapes are decoded once; any ``..`` segment, NUL or backslash is refused before
    touching the file system, and the resolved path (symlinks followed) must stay inside the
    resolved root. Directories are not served.
    """
    # Not urlsplit: it would read "//name/..." as a host name.
    path = url_path.split("?", 1)[0].split("#", 1)[0]
    decoded = urllib.parse.unquote(path, errors="strict") if "%" in path else path
    if "\x00" in decoded or "\\" in decoded:
        return None
    parts = [p for p in decoded.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    try:
        base = root.resolve(strict=True)
        target = base.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if target != base and base not in target.parents:
        return None
    return target if target.is_file() else None


@dataclass(frozen=True)
class MirrorRoute:
    """A path prefix served from one directory: ``root_attr`` names the :class:`_Server`
    attribute holding it, looked up per request (``current`` may have moved)."""

    prefix: str
    root_attr: str
    methods: tuple[str, ...] = ("GET", "HEAD")


#: The mirror's router, most specific prefix first; every route is public and read-only (a
#: signed apt repository and the lab's guest images: nothing secret is under either root).
ROUTES: dict[str, MirrorRoute] = {
    "images": MirrorRoute(f"/{IMAGES_PREFIX}/", "images_dir"),
    "repository": MirrorRoute("/", "root"),
}


def match_route(url_path: str) -> tuple[str, MirrorRoute, str] | None:
    """``(name, route, rest)`` for the first route whose prefix ``url_path`` starts with;
    ``rest`` keeps its leading ``/``.

    >>> match_route("/images/guest.qcow2")[0::2]
    ('images', '/guest.qcow2')
    """
    for name, route in ROUTES.items():
        if url_path.startswith(route.prefix):
            return name, route, url_path[len(route.prefix) - 1:]
    return None


class _Handler(DispatchingHandler):
    server: _Server
    protocol_version = "HTTP/1.1"      # keep-alive: apt fetches many files over one connection
    server_version = "metalchain-mirror"
    sys_version = ""
    error_message_format = "%(code)d %(message)s\n"
    error_content_type = "text/plain; charset=utf-8"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(REQUEST_TIMEOUT)  # one read or write
        self._logged = False

    def handle_one_request(self) -> None:
        self._logged = False
        super().handle_one_request()

    def _answered(self, status: int) -> None:
        if self._logged:
            return
        self._logged = True
        path = "".join(c if c.isprintable() else "?" for c in (getattr(self, "path", "")
                                                                or "-")[:200])
        log.debug("%s %s %s -> %d", self.client_address[0],
                  getattr(self, "command", None) or "-", path, status)

    def _dispatch(self, method: str) -> None:
        found = match_route(self.path)
        if found is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        _name, route, rest = found
        if method not in route.methods:
            self.close_connection = True  # a body we do not read would be the next request
            self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "read-only mirror")
            return
        try:
            target = resolve_request(getattr(self.server, route.root_attr), rest)
        except UnicodeDecodeError:
            target = None
        if target is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        try:
            fh = target.open("rb")
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        with fh:
            stat = os.fstat(fh.fileno())
            body = method == "GET"
            self._begin_response(stat.st_size if body else 0)
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type",
                             CONTENT_TYPES.get(target.suffix, "application/octet-stream")
                             if target.suffix else "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(stat.st_size))
            self.send_header("Last-Modified", self.date_time_string(int(stat.st_mtime)))
            self.end_headers()
            if body:
                try:
                    self.wfile.flush()
                    self._send_file(fh, stat.st_size)
                except OSError:
                    self.close_connection = True
        self._answered(HTTPStatus.OK)


class _Server(CappedHTTPServer):
    status_line = b"HTTP/1.1"

    def __init__(self, root: Path, images_dir: Path, address: tuple[str, int], *,
                 limits: ConnectionLimits) -> None:
        self.root = root
        self.images_dir = images_dir
        super().__init__(address, _Handler, limits=limits, log=log)


def default_images_dir(root: Path) -> Path:
    """Where images are served from when nobody says: ``images`` next to ``root``.

    >>> default_images_dir(Path("/site/mirror/current"))
    PosixPath('/site/mirror/images')
    """
    return Path(root).parent / IMAGES_DIR_NAME


def wait_until_answering(url: str, timeout: float) -> None:
    """Wait until an HTTP server answers at ``url`` (any status), or raise MirrorError."""
    parts = urllib.parse.urlsplit(url)
    deadline = time.monotonic() + timeout
    delay = 0.02
    last = "no attempt"
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise MirrorError(f"mirror server at {url} did not answer within {timeout:g} s "
                              f"({last})")
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port,
                                          timeout=min(remaining, 5.0))
        try:
            conn.request("HEAD", "/")
            conn.getresponse().read()
            return
        except (OSError, http.client.HTTPException) as exc:
            last = str(exc) or exc.__class__.__name__
        finally:
            conn.close()
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.5)


class MirrorServer:
    """The mirror's HTTP server in a background thread of this process."""

    def __init__(self, root: Path, address: str, port: int = DEFAULT_PORT, *,
                 images_dir: Path | None = None, limits: ConnectionLimits | None = None) -> None:
        self.limits = limits or DEFAULT_LIMITS
        self.root = Path(root)
        self.images_dir = Path(images_dir) if images_dir else default_images_dir(self.root)
        self.address = address
        self.requested_port = port
        self._serving: ServerThread[_Server] | None = None

    @property
    def port(self) -> int:
        return self.requested_port if self._serving is None else self._serving.port

    @property
    def url(self) -> str:
        return mirror_url(self.address, self.port)

    def start(self, timeout: float = START_TIMEOUT) -> MirrorServer:
        """Bind, serve in a thread, and return once the server answers."""
        if self._serving is not None:
            return self
        self._serving = ServerThread.start(lambda addr: _Server(self.root, self.images_dir,
                                                                addr, limits=self.limits),
                                           (self.address, self.requested_port),
                                           name="mirror-http", error=MirrorError)
        try:
            wait_until_answering(self.url, timeout)
        except MirrorError:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        serving, self._serving = self._serving, None
        if serving is not None:
            serving.stop(timeout, after_shutdown=lambda: serving.server.cut_overdue(
                everyone=True))

    @property
    def server(self) -> CappedHTTPServer | None:
        """The running server (for its :meth:`~CappedHTTPServer.open_connections`)."""
        return None if self._serving is None else self._serving.server

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the daemon -----------------------------------------------------------------------------

def daemon_pid(pidfile: Path) -> int | None:
    """The pid of the live daemon recorded in ``pidfile``, else None (guards against a
    recycled pid: we never signal a process we did not start)."""
    return live_pid(pidfile, markers=(DAEMON_MODULE, str(pidfile)))


def start_daemon(directory: Path, address: str, port: int, pidfile: Path, *,
                 log_file: Path | None = None, timeout: float = START_TIMEOUT) -> int:
    """Start the daemon in its own session and return its pid once it answers on HTTP.

    Raises :class:`MirrorError` with the tail of its log if it exits or stays silent.
    """
    pidfile = Path(pidfile).resolve()
    running = daemon_pid(pidfile)
    if running is not None:
        raise MirrorError(f"a mirror server is already running (pid {running}, {pidfile})")
    log_file = log_file or pidfile.with_suffix(".log")
    log_file.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", DAEMON_MODULE, "--dir", str(directory), "--address", address,
            "--port", str(port), "--pidfile", str(pidfile)]
    with open_private(log_file, "ab") as out:     # its requests name the hosts
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True,
                                cwd="/", env={**os.environ, "PYTHONPATH": _import_root()})
    deadline = time.monotonic() + timeout
    delay = 0.02
    while daemon_pid(pidfile) != proc.pid:
        if proc.poll() is not None or time.monotonic() > deadline:
            if proc.poll() is None:
                proc.kill()
                proc.wait(STOP_TIMEOUT)
            tail = "\n".join(log_file.read_text("utf-8", "replace").splitlines()[-5:])
            raise MirrorError(f"mirror server on {address}:{port} did not start within "
                              f"{timeout:g} s: {tail or 'no output'}")
        time.sleep(delay)
        delay = min(delay * 2, 0.25)
    wait_until_answering(mirror_url(address, port), max(0.5, deadline - time.monotonic()))
    # The daemon outlives this process; the Popen object must not complain when collected.
    proc.returncode = 0
    return proc.pid


def _import_root() -> str:
    here = str(Path(__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    return f"{here}{os.pathsep}{existing}" if existing else here


def stop_daemon(pidfile: Path, timeout: float = STOP_TIMEOUT) -> bool:
    """Stop the daemon of ``pidfile`` (SIGTERM, then SIGKILL at the deadline). False if none
    was running."""
    pidfile = Path(pidfile).resolve()
    pid = daemon_pid(pidfile)
    if pid is None:
        with contextlib.suppress(FileNotFoundError):
            pidfile.unlink()
        return False
    if not terminate(pid, term_timeout=timeout, kill_timeout=STOP_TIMEOUT):
        raise MirrorError(f"mirror server pid {pid} did not exit after SIGKILL")
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()
    return True


def main(argv: list[str] | None = None) -> int:
    """Daemon entry point: serve until SIGTERM/SIGINT; the pidfile exists while it answers."""
    parser = argparse.ArgumentParser(prog="python -m configure.mirror_server",
                                     description="Serve a metalchain package mirror.")
    parser.add_argument("--dir", required=True, type=Path)
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--pidfile", required=True, type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # Block the stop signals before the serving thread exists, so that only sigwait sees them.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    server = MirrorServer(args.dir, args.address, args.port)
    try:
        server.start()
    except MirrorError as exc:
        log.error("%s", exc)
        return 1
    write_pidfile(args.pidfile)
    log.info("serving %s at %s", args.dir, server.url)
    try:
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
    finally:
        with contextlib.suppress(FileNotFoundError):
            args.pidfile.unlink()
        server.stop()
    log.info("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
