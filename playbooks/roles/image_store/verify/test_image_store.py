"""testinfra checks of the image_store role."""

from __future__ import annotations

import json

GET = ("exec 3<>/dev/tcp/127.0.0.1/{port}; "
       "printf 'GET {path} HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3; cat <&3")


def http_get(host, port: int, path: str) -> tuple[str, str]:
    out = host.check_output("bash -c %s", GET.format(port=port, path=path))
    head, _, body = out.partition("\r\n\r\n")
    return head.splitlines()[0], body


def http_status(host, port: int, path: str) -> str:
    """The status line only: image bodies are binary, and may be large."""
    return host.check_output("bash -c %s | head -n 1",
                             GET.format(port=port, path=path)).strip()


def test_nginx_serves_the_store(host, role_vars):
    for name in ("nginx", "wget"):
        assert host.package(name).is_installed
    assert host.service("nginx").is_enabled and host.service("nginx").is_running
    assert host.socket(f"tcp://{role_vars['image_store_port']}").is_listening
    assert not host.socket("tcp://0.0.0.0:80").is_listening


def test_images_are_stored_with_their_sha256(host, role_vars):
    images = f"{role_vars['image_store_root']}/public/images"
    for image in role_vars["image_store_images"]:
        f = host.file(f"{images}/{image['name']}")
        assert f.is_file and f.mode == 0o644
        assert f.sha256sum == image["sha256"].lower()
    listed = host.run(f"ls -A {images}").stdout.split()
    assert sorted(listed) == sorted(i["name"] for i in role_vars["image_store_images"])


def test_index_is_served_and_matches(host, role_vars):
    status, body = http_get(host, role_vars["image_store_port"], "/index.json")
    assert " 200 " in status
    index = json.loads(body)
    wanted = sorted(role_vars["image_store_images"], key=lambda i: i["name"])
    assert [e["name"] for e in index] == [i["name"] for i in wanted]
    base = role_vars["image_store_url"] or \
        f"http://{role_vars['address']}:{role_vars['image_store_port']}"
    images = f"{role_vars['image_store_root']}/public/images"
    for entry, image in zip(index, wanted, strict=True):
        assert entry["sha256"] == image["sha256"].lower()
        assert entry["size"] == host.file(f"{images}/{image['name']}").size
        assert entry["url"] == f"{base.rstrip('/')}/images/{image['name']}"
        assert entry["disk_format"] in ("qcow2", "raw")


def test_an_image_is_downloadable(host, role_vars):
    for image in role_vars["image_store_images"][:1]:
        assert " 200 " in http_status(host, role_vars["image_store_port"],
                                      f"/images/{image['name']}")
    assert " 404 " in http_status(host, role_vars["image_store_port"], "/etc/passwd")
    assert " 404 " in http_status(host, role_vars["image_store_port"], "/images/.x.part")
