"""The site's package mirror as the application core sees it: where it lives, whether it is
built and served, and the ``metalchain_mirror`` variable roles use to point hosts at it.

Layout under the site (``SITE/mirror/`` unless ``mirror.dir`` says otherwise)::

    SITE/mirror/current -> releases/<id>   what is served (see configure.mirror)
    SITE/mirror/server.json                address, port and pidfile of the running daemon
    SITE/mirror/server.pid, server.log
    SITE/keys/mirror-gnupg/                the site's mirror signing key (created once)
"""

from __future__ import annotations

import base64
import contextlib
import json
from pathlib import Path
from typing import Any

from configure.mirror import KEYRING_PATH, MirrorError, mirror_url, read_mirror
from configure.mirror_server import DEFAULT_PORT, daemon_pid, wait_until_answering
from inventory.errors import InputError, InventoryError
from runtime.jsondoc import write_json
from runtime.private import private_dir

SERVER_STATE = "server.json"
ANSWER_TIMEOUT = 3.0


def settings(site: Any) -> dict[str, Any]:
    """The ``mirror:`` mapping of metalchain.yml, its values' types checked (file:line)."""
    raw = site.settings.get("mirror") or {}
    if not isinstance(raw, dict):
        raise InputError("metalchain.yml: mirror must be a mapping")
    line_of = getattr(raw, "line_of", lambda _key: None)
    source = str(site.settings_file or "metalchain.yml")
    for key in ("dir", "cache_dir", "address"):
        if key in raw and (not isinstance(raw[key], str) or not raw[key] or "\0" in raw[key]):
            raise InventoryError(f"mirror.{key} must be a non-empty string", file=source,
                                 line=line_of(key))
    port = raw.get("port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InventoryError(f"mirror.port must be a port number 1-65535, got {port!r}"[:120],
                             file=source, line=line_of("port"))
    return raw


def mirror_dir(site: Any) -> Path:
    """The site's mirror directory: ``mirror.dir`` (relative to the site) or SITE/mirror."""
    return site.root / settings(site).get("dir", "mirror")


def gnupg_home(site: Any) -> Path:
    """SITE/keys/mirror-gnupg (SITE/keys made 0700: it holds the site's private keys)."""
    private_dir(site.root / "keys")
    return site.root / "keys" / "mirror-gnupg"


def default_address(site: Any) -> str | None:
    boot = site.settings.get("boot") or {}
    return settings(site).get("address") or (boot.get("address") if isinstance(boot, dict)
                                             else None)


def default_port(site: Any) -> int:
    return int(settings(site).get("port", DEFAULT_PORT))


def server_state(directory: Path) -> dict[str, Any] | None:
    try:
        return json.loads((directory / SERVER_STATE).read_text("utf-8"))
    except (OSError, ValueError):
        return None


def write_server_state(directory: Path, doc: dict[str, Any]) -> None:
    write_json(directory / SERVER_STATE, doc)


def status_doc(site: Any) -> dict[str, Any]:
    """The mirror's state as a JSON-able dict (also what `mirror status --json` prints)."""
    directory = mirror_dir(site)
    info = read_mirror(directory)
    state = server_state(directory) or {}
    pid = daemon_pid(Path(state["pidfile"])) if state.get("pidfile") else None
    answering = False
    if pid is not None:
        with contextlib.suppress(MirrorError):
            wait_until_answering(mirror_url(state["address"], state["port"]), ANSWER_TIMEOUT)
            answering = True
    server = {"running": pid is not None, "pid": pid, "answering": answering,
              "address": state.get("address") if pid else None,
              "port": state.get("port") if pid else None,
              "url": mirror_url(state["address"], state["port"]) if pid else None}
    doc: dict[str, Any] = {"dir": str(directory), "built": info is not None, "server": server,
                           "source": None}
    if info is not None:
        doc.update({"root": str(info.root), "requested": info.requested,
                    "packages": len(info.resolved), "size_bytes": info.size_bytes,
                    "signed": info.signed, "fingerprint": info.fingerprint,
                    "built_at": info.built_at,
                    "keyring": str(info.keyring) if info.keyring else None})
        address = server["address"] or default_address(site)
        port = server["port"] or default_port(site)
        if address:
            doc["source"] = info.source_line(address, port)
    return doc


def mirror_var(site: Any) -> dict[str, Any] | None:
    """What roles need to point hosts at the site's package mirror (None if none is built)."""
    doc = status_doc(site)
    if not doc["built"] or not doc["source"]:
        return None
    keyring = Path(doc["keyring"]).read_bytes() if doc.get("keyring") else b""
    return {"source": doc["source"], "signed": bool(doc["signed"]),
            "keyring_path": KEYRING_PATH,
            "keyring_b64": base64.b64encode(keyring).decode() if keyring else "",
            "url": doc["server"]["url"]}
