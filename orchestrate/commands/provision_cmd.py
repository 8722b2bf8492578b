"""`metalchain serve` (the long-running controller) and `metalchain provision`: argument
parsing and output; the work is in :mod:`orchestrate.provisioning`."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
import time
from typing import Any

import click

from orchestrate import output
from orchestrate.commands.common import json_option, stop_on_signals
from orchestrate.provisioning import ProvisionOptions, Serve, provision_nodes
from orchestrate.reports import EXIT_INTERRUPTED
from runtime.text import terminal_safe


@click.command()
@click.option("--no-images", is_flag=True, help="Do not build images before serving.")
@click.option("--no-boot", is_flag=True,
              help="No boot server (DHCP/TFTP/HTTP) or node watchers: only the receiver "
                   "(Alertmanager webhook, pushed events, /metrics) and remediation, e.g. "
                   "on a monitoring-only controller.")
@click.pass_obj
def serve(obj: Any, no_images: bool, no_boot: bool) -> None:
    """Run the controller: boot server (DHCP/TFTP/HTTP), install callbacks, the watcher
    that fails overdue nodes and activates installed ones, and the receiver of alerts and
    pushed events (monitor.receiver_address:receiver_port). Stops on SIGTERM/Ctrl-C.

    \b
    Examples:
      metalchain --site mysite serve
      metalchain --site mysite serve --no-boot
    """
    srv = Serve(obj.site, boot=not no_boot)
    if not no_images and not no_boot:
        srv.prepare_images()
    signal.signal(signal.SIGTERM, lambda *_: srv.request_stop())
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGHUP, lambda *_: srv.request_reload())
    try:
        info = srv.start()
        if info.url is not None:
            output.line(f"serving {obj.site.root} at {info.url} (DHCP on {info.interface})"
                        + (f"; package mirror at {info.mirror_url}" if info.mirror_url else "")
                        + f"; receiver at {info.receiver_url}")
        else:
            output.line(f"serving {obj.site.root}: receiver at {info.receiver_url} (no boot "
                        "server)")
        sys.stdout.flush()
        srv.run(on_note=_line)
    except KeyboardInterrupt:
        pass
    finally:
        srv.close()


def _line(text: str) -> None:
    output.line(text)
    sys.stdout.flush()


@click.command()
@click.argument("target", required=False)
@click.option("--image", help="Install this image instead of the inventory's.")
@click.option("--parallel", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--retry", is_flag=True, help="Start over nodes that are provision_failed.")
@click.option("--force", is_flag=True, help="Reinstall nodes that are active.")
@click.option("--skip-active", is_flag=True, help="Leave nodes that are already active alone.")
@click.option("--timeout", "total_timeout", type=click.FloatRange(1, 86400), default=None,
              help="Give up on every node still in progress after this many seconds.")
@json_option
@click.pass_obj
def provision(obj: Any, target: str | None, image: str | None, parallel: int, retry: bool,
              force: bool, skip_active: bool, total_timeout: float | None,
              as_json: bool) -> None:
    """Install TARGET's bare-metal nodes (default: every host with provisioning data).

    Ctrl-C (or SIGTERM) starts no further node and lets the ones being installed finish
    (exit 130); a second Ctrl-C gives up on them, and if this command runs the boot server
    they are failed with the reason (`provision --retry` starts them over).

    \b
    Examples:
      metalchain provision
      metalchain provision node1 --force --timeout 900
    """
    options = ProvisionOptions(image=image, parallel=parallel, retry=retry, force=force,
                               skip_active=skip_active, total_timeout=total_timeout)
    with stop_on_signals() as stop:
        report = provision_nodes(obj.site, target, options,
                                 on_change=_progress_printer(as_json),
                                 on_note=lambda text: _say(as_json, text), stop=stop)
    if report.all_active:
        if as_json:
            output.emit_json("provision.result", report.to_doc())
        return
    if as_json:
        output.emit_json("provision.result", report.to_doc())
    else:
        output.table("provision", ["node", "state", "seconds", "active after", "reason"],
                     [[n, d["state"], d["seconds"], d["timings"].get("active"),
                       d["reason"] if d["state"] != "active" or d["error"] else ""]
                      for n, d in report.node_docs().items()])
    if report.interrupted:
        _say(as_json, f"provision {report.interrupted}: no further node was started"
             + (" (the nodes cut short are provision_failed)"
                if report.interrupted == "aborted" else ""))
        raise click.exceptions.Exit(EXIT_INTERRUPTED)
    raise click.exceptions.Exit(1 if report.failed else 0)


def _say(as_json: bool, text: str) -> None:
    (sys.stderr if as_json else sys.stdout).write(terminal_safe(text) + "\n")


def _progress_printer(as_json: bool):
    lock = threading.Lock()
    start = time.monotonic()

    def show(node: str, state: str, reason: str) -> None:
        with lock:
            line = f"{time.monotonic() - start:6.1f}s  {node:<12} {state}"
            if state == "provision_failed" and reason:
                line += f"  ({reason[:300]})"
            (sys.stderr if as_json else sys.stdout).write(terminal_safe(line, multiline=False)
                                                          + "\n")
            (sys.stderr if as_json else sys.stdout).flush()

    return show
