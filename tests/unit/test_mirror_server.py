"""The mirror's HTTP server: read-only, no traversal, exact Content-Length (real server on
127.0.0.1, port 0, one per test)."""

from __future__ import annotations

import http.client
import os

import pytest

from configure.mirror_server import MirrorServer, resolve_request

pytestmark = pytest.mark.unit


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "mirror" / "releases" / "r1"
    root.mkdir(parents=True)
    (root / "Packages").write_text("Package: a\n")
    (root / "a_1.0_all.deb").write_bytes(b"\x00" * 70000)
    (root / "sub").mkdir()
    (root / "sub" / "f").write_text("x")
    (tmp_path / "secret").write_text("do not serve")
    os.symlink(tmp_path / "secret", root / "escape")
    current = tmp_path / "mirror" / "current"
    current.symlink_to("releases/r1")
    return current


@pytest.mark.parametrize(("path", "want"), [
    ("/Packages", "Packages"),
    ("/./Packages?x=1", "Packages"),
    ("//sub/f", "sub/f"),
    ("/a_1.0_all.deb", "a_1.0_all.deb"),
    ("/%50ackages", "Packages"),
    ("/", None),
    ("/sub", None),
    ("/../secret", None),
    ("/sub/../../secret", None),
    ("/%2e%2e/secret", None),
    ("/..%2fsecret", None),
    ("/escape", None),
    ("/Packages%00", None),
    ("/..\\secret", None),
    ("/missing", None),
])
def test_resolve_request(tree, path, want):
    got = resolve_request(tree, path)
    assert got == (tree.resolve() / want if want else None)


def _request(server: MirrorServer, method: str, path: str) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        conn.endheaders()
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_serves_files_read_only(tree):
    with MirrorServer(tree, "127.0.0.1", 0) as server:
        status, headers, body = _request(server, "GET", "/a_1.0_all.deb")
        assert status == 200 and int(headers["Content-Length"]) == len(body) == 70000
        status, headers, body = _request(server, "HEAD", "/Packages")
        assert status == 200 and headers["Content-Length"] == "11" and body == b""
        for path in ("/../secret", "/%2e%2e/secret", "/escape", "/sub", "/"):
            assert _request(server, "GET", path)[0] == 404, path
        assert _request(server, "PUT", "/Packages")[0] == 405
        assert _request(server, "DELETE", "/Packages")[0] == 405
        assert _request(server, "BREW", "/Packages")[0] == 501
    assert (tree / "Packages").read_text() == "Package: a\n"


def test_follows_the_current_link(tree):
    new = tree.parent / "releases" / "r2"
    new.mkdir()
    (new / "Packages").write_text("Package: b\n")
    with MirrorServer(tree, "127.0.0.1", 0) as server:
        assert _request(server, "GET", "/Packages")[2] == b"Package: a\n"
        tmp = tree.parent / ".current.tmp"
        tmp.symlink_to("releases/r2")
        os.replace(tmp, tree)
        assert _request(server, "GET", "/Packages")[2] == b"Package: b\n"


def test_stop_releases_the_port(tree):
    server = MirrorServer(tree, "127.0.0.1", 0).start()
    port = server.port
    server.stop()
    again = MirrorServer(tree, "127.0.0.1", port).start()
    again.stop()


def test_serves_images_next_to_the_repository(tree):
    images = tree.parent / "images"
    images.mkdir()
    (images / "guest.qcow2").write_bytes(b"QFI\xfb" + bytes(100))
    with MirrorServer(tree, "127.0.0.1", 0) as server:
        status, _headers, body = _request(server, "GET", "/images/guest.qcow2")
        assert status == 200 and body == b"QFI\xfb" + bytes(100)
        assert _request(server, "GET", "/Packages")[2] == b"Package: a\n"
        for path in ("/images/../Packages", "/images/%2e%2e/secret", "/images/",
                     "/images/missing", "/guest.qcow2"):
            assert _request(server, "GET", path)[0] == 404, path
    elsewhere = tree.parent / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "x.img").write_text("x")
    with MirrorServer(tree, "127.0.0.1", 0, images_dir=elsewhere) as server:
        assert _request(server, "GET", "/images/x.img")[2] == b"x"
        assert _request(server, "GET", "/images/guest.qcow2")[0] == 404
