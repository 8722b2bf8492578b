"""`metalchain mirror build|serve|status|stop`: the site's local package mirror.

The layout and the status logic are in :mod:`orchestrate.mirror_site`.

Optional settings in ``metalchain.yml`` (a ``mirror:`` mapping; the ``boot.address`` is the
fallback for the address, since both serve the same provisioning network)::

    mirror: {address: 10.77.0.1, port: 8081, cache_dir: /var/cache/metalchain/mirror-debs}

It prints its JSON in the CLI's versioned shape (``{"kind": ..., "version": 1, ...}``).
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any

import click

from configure.mirror import (
    COMPRESSIONS,
    CURRENT_LINK,
    DEFAULT_CACHE_DIR,
    build_mirror,
    mirror_url,
    read_mirror,
)
from configure.mirror_server import (
    DEFAULT_PORT,
    MirrorServer,
    start_daemon,
    stop_daemon,
)
from inventory.errors import InputError
from orchestrate import output
from orchestrate.commands.common import json_option
from orchestrate.mirror_site import (
    SERVER_STATE,
    default_address,
    default_port,
    gnupg_home,
    mirror_dir,
    server_state,
    settings,
    status_doc,
    write_server_state,
)
from orchestrate.output import emit_json, human_size, plural

__all__ = ["mirror"]


@click.group()
def mirror() -> None:
    """The local package mirror: an apt repository the hosts install from.

    \b
    Examples:
      metalchain mirror build --packages prometheus-node-exporter
      metalchain mirror serve --daemon
    """


@mirror.command()
@click.option("--packages", required=True, metavar="A,B,C",
              help="Debian packages to mirror (with all their dependencies).")
@click.option("--sign/--trusted", default=True, show_default=True,
              help="Sign Release with the site's mirror key, or build for [trusted=yes].")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
              help=f"Where downloaded .debs are kept across builds (default {DEFAULT_CACHE_DIR}).")
@click.option("--compression", type=click.Choice(COMPRESSIONS), default="zstd", show_default=True,
              help="zstd: serve packages with their file trees recompressed from xz to zstd "
                   "(unpacks several times faster; dpkg of Debian 12 or later); keep: "
                   "Debian's files unchanged.")
@json_option
@click.pass_obj
def build(obj: Any, packages: str, sign: bool, cache_dir: Path | None, compression: str,
          as_json: bool) -> None:
    """Resolve, download and index PACKAGES into SITE/mirror (incremental, atomic).

    \b
    Examples:
      metalchain mirror build --packages prometheus-node-exporter,chrony --sign
    """
    site = obj.site
    cache = cache_dir or site.root / settings(site).get("cache_dir", DEFAULT_CACHE_DIR)
    info = build_mirror(packages.split(","), mirror_dir(site), sign=sign, cache_dir=cache,
                        gnupg_home=gnupg_home(site) if sign else None,
                        compression=compression)
    if as_json:
        emit_json("mirror.build", info.to_json())
        return
    verb = "built" if info.changed else "unchanged"
    output.line(f"mirror {verb}: {plural(len(info.resolved), 'package')}, "
               f"{human_size(info.size_bytes)}, {len(info.downloaded)} downloaded, "
               f"{info.reused} from cache, "
               f"{'signed ' + (info.fingerprint or '') if info.signed else 'unsigned'}, "
               f"{info.build_seconds:.1f} s")


@mirror.command()
@click.option("--address", help="Address to listen on (default: mirror.address, boot.address).")
@click.option("--port", type=click.IntRange(1, 65535), help=f"Port (default {DEFAULT_PORT}).")
@click.option("--daemon", is_flag=True, help="Run in the background; stop with `mirror stop`.")
@json_option
@click.pass_obj
def serve(obj: Any, address: str | None, port: int | None, daemon: bool, as_json: bool) -> None:
    """Serve the mirror over HTTP on the provisioning network.

    \b
    Examples:
      metalchain mirror serve --daemon --port 8081
    """
    site = obj.site
    directory = mirror_dir(site)
    info = read_mirror(directory)
    if info is None:
        raise InputError(f"no mirror in {directory}; build one first: metalchain mirror build "
                         "--packages ...")
    address = address or default_address(site)
    if not address:
        raise InputError("no address to serve on: pass --address, or set mirror.address "
                         "(or boot.address) in metalchain.yml")
    port = port or default_port(site)
    root = directory / CURRENT_LINK
    source = info.source_line(address, port)
    if daemon:
        pidfile = directory / "server.pid"
        pid = start_daemon(root, address, port, pidfile, log_file=directory / "server.log")
        write_server_state(directory, {"pid": pid, "address": address, "port": port,
                                 "pidfile": str(pidfile)})
        if as_json:
            emit_json("mirror.serve", {"pid": pid, "url": mirror_url(address, port),
                                        "source": source})
        else:
            output.line(f"serving {mirror_url(address, port)} (pid {pid})\n{source}")
        return
    server = MirrorServer(root, address, port).start()
    output.line(f"serving {server.url} (Ctrl-C to stop)\n{source}")
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
        server.stop()


@mirror.command()
@json_option
@click.pass_obj
def status(obj: Any, as_json: bool) -> None:
    """What the mirror holds, whether it is served, and the apt source line for hosts.

    \b
    Examples:
      metalchain mirror status --json
    """
    doc = status_doc(obj.site)
    if as_json:
        emit_json("mirror.status", doc)
        return
    if not doc["built"]:
        output.line(f"no mirror in {doc['dir']}")
    else:
        output.line(f"mirror {doc['root']}: {plural(doc['packages'], 'package')}, "
                   f"{human_size(doc['size_bytes'])}, "
                   f"{'signed ' + doc['fingerprint'] if doc['signed'] else 'unsigned'}, "
                   f"built {doc['built_at']}")
    srv = doc["server"]
    if srv["running"]:
        health = "answering" if srv["answering"] else "NOT answering"
        output.line(f"server: pid {srv['pid']} at {srv['url']} ({health})")
    else:
        output.line("server: not running")
    if doc["source"]:
        output.line(f"source: {doc['source']}")


@mirror.command()
@click.pass_obj
def stop(obj: Any) -> None:
    """Stop the mirror daemon started by `mirror serve --daemon`.

    \b
    Examples:
      metalchain mirror stop
    """
    directory = mirror_dir(obj.site)
    state = server_state(directory) or {}
    pidfile = Path(state.get("pidfile") or directory / "server.pid")
    stopped = stop_daemon(pidfile)
    with contextlib.suppress(FileNotFoundError):
        (directory / SERVER_STATE).unlink()
    output.line("mirror server stopped" if stopped else "mirror server was not running")
