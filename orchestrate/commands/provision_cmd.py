"""`metalchain serve` (the long-running controller) and `metalchain provision`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import click

from inventory.errors import InputError, MetalchainError
from inventory.select import select_hosts
from orchestrate import output
from orchestrate.commands.common import json_option

RECONCILE_EVERY = 2.0


class Controller:
    """What `serve` runs and what `provision` starts for itself when no `serve` runs."""

    def __init__(self, site: Any) -> None:
        from provision import lifecycle as lc
        from provision.deploy import DeployService, HostKeys
        from provision.drivers import driver_for
        from provision.settings import BootSettings

        self.site = site
        self.settings = BootSettings.from_site(site)
        self.timeouts = {**lc.DEFAULT_TIMEOUTS, **self.settings.timeouts}
        self.hostkeys = HostKeys(site.root / "boot" / "deploy")
        pub = site.ssh_key_path.with_suffix(".pub") if site.ssh_key_path else None
        if pub is None or not pub.exists():
            raise InputError(f"the controller's SSH key {pub} is missing; installed nodes "
                             "authorize it for root (ssh-keygen -t ed25519 -f "
                             f"{site.ssh_key_path})")
        self.deploy = DeployService(site.inventory, site.state,
                                    images_dir=self.settings.images_dir,
                                    hostkeys=self.hostkeys,
                                    authorized_keys=pub.read_text(),
                                    token_ttl=self.settings.token_ttl, bmc_for=driver_for)
        self.server: Any = None
        self.state_file = site.root / "boot" / "serve.json"

    def prepare_images(self, images: set[str]) -> None:
        """Build (or reuse from the cache) the installer and the images asked for."""
        from provision.diskimage import ensure_disk_image
        from provision.initramfs import ensure_installer

        ensure_installer(self.settings.installer_dir)
        for image in sorted(images):
            if (self.settings.images_dir / f"{image}.raw").exists() and \
                    (self.settings.images_dir / f"{image}.raw.sha256").exists():
                continue
            if image != "debian-12":
                raise InputError(f"image '{image}' is not in {self.settings.images_dir} and "
                                 "metalchain builds only debian-12")
            ensure_disk_image(self.settings.images_dir, name=image)

    def start(self) -> str:
        from provision.bootserver import BootServer

        self.server = BootServer(self.settings, provider=self.deploy, tokens=self.site.state,
                                 callbacks=self.deploy, inventory=self.site.inventory)
        self.server.start()
        return self.server.url

    def start_mirror(self) -> str | None:
        """Serve the site's package mirror too, unless a `mirror serve` already does."""
        from configure.mirror_server import DEFAULT_PORT, MirrorServer
        from orchestrate.commands.mirror_cmd import mirror_dir, status_doc

        doc = status_doc(self.site)
        if not doc["built"] or doc["server"]["running"]:
            return None
        port = int((self.site.settings.get("mirror") or {}).get("port", DEFAULT_PORT))
        self.mirror = MirrorServer(mirror_dir(self.site) / "current",
                                   str(self.settings.address), port).start()
        return self.mirror.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if getattr(self, "mirror", None) is not None:
            self.mirror.stop()
            self.mirror = None

    def reconcile(self) -> list[str]:
        from provision.drivers import driver_for
        from provision.provisioner import reconcile

        return reconcile(self.site.inventory, self.site.state, self.timeouts, driver_for)


def running_serve(site: Any) -> dict[str, Any] | None:
    """The site's `metalchain serve`, if one runs and answers."""
    path = site.root / "boot" / "serve.json"
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
        with urllib.request.urlopen(info["url"] + "/", timeout=2):  # noqa: S310 - our URL
            pass
    except urllib.error.HTTPError:
        return info  # it answered (404 for "/" is an answer)
    except (OSError, ValueError, KeyError, urllib.error.URLError):
        return None
    return info


@click.command()
@click.option("--no-images", is_flag=True, help="Do not build images before serving.")
@click.pass_obj
def serve(obj: Any, no_images: bool) -> None:
    """Run the controller: boot server (DHCP/TFTP/HTTP), install callbacks, and the watcher
    that fails overdue nodes and activates installed ones. Stops on SIGTERM/Ctrl-C."""
    site = obj.site
    if running_serve(site):
        raise MetalchainError(f"metalchain serve is already running for {site.root}")
    ctl = Controller(site)
    if not no_images:
        ctl.prepare_images({ctl.deploy.image_of(h) for h in site.inventory.hosts.values()
                            if h.provision and h.provision.mac})
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGHUP, lambda *_: _reload(ctl))
    url = ctl.start()
    mirror_url = ctl.start_mirror()
    ctl.state_file.write_text(json.dumps({"pid": os.getpid(), "url": url}))
    output.line(f"serving {site.root} at {url} (DHCP on {ctl.settings.interface})"
                + (f"; package mirror at {mirror_url}" if mirror_url else ""))
    sys.stdout.flush()
    try:
        for line in ctl.reconcile():
            output.line(f"re-checked {line}")
        while not stop.wait(RECONCILE_EVERY):
            for line in ctl.reconcile():
                output.line(f"re-checked {line}")
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    finally:
        ctl.stop()
        ctl.state_file.unlink(missing_ok=True)


def _reload(ctl: Controller) -> None:
    inventory = ctl.site.reload_inventory()
    ctl.deploy.inventory = inventory
    ctl.server.reload(inventory)


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
    """Install TARGET's bare-metal nodes (default: every host with provisioning data)."""
    from provision.drivers import driver_for
    from provision.provisioner import Provisioner

    site = obj.site
    inv = site.inventory
    names = select_hosts(inv, target or "all")
    hosts = [inv.hosts[n] for n in names if inv.hosts[n].managed]
    if not hosts:
        raise InputError("no host with bmc/provision data in the target")
    if skip_active:
        active = {n.name for n in site.state.list_nodes() if n.state == "active"}
        hosts = [h for h in hosts if h.name not in active]
        if not hosts:
            _say(as_json, "every node of the target is already active")
            if as_json:
                output.emit_json("provision.result", {"nodes": {}, "failed": 0})
            return
    ctl = Controller(site)
    started_here = False
    prov = Provisioner(inv, site.state, hostkeys=ctl.hostkeys, bmc_for=driver_for,
                       timeouts=ctl.timeouts, on_change=_progress_printer(as_json))
    prov.preflight(hosts, retry=retry, force=force)
    if image:
        for h in hosts:
            (ctl.hostkeys.dir / h.name).mkdir(parents=True, exist_ok=True)
            ctl.hostkeys.set_image(h.name, image)
    for line in ctl.reconcile():
        _say(as_json, f"re-checked {line}")
    ctl.prepare_images({ctl.deploy.image_of(h) for h in hosts})
    serving = running_serve(site)
    if serving is None:
        url = ctl.start()
        started_here = True
        _say(as_json, f"boot server started for this run at {url}")
    else:
        _say(as_json, f"using the running metalchain serve at {serving['url']}")
    deadline = time.monotonic() + total_timeout if total_timeout else None
    try:
        results = prov.run(hosts, parallel=parallel, deadline=deadline)
    finally:
        if started_here:
            ctl.stop()
    failed = [r for r in results.values() if not r.ok]
    doc = {n: {"state": r.state, "reason": r.reason, "seconds": round(r.seconds, 1),
               "timings": r.timings} for n, r in results.items()}
    if as_json:
        output.emit_json("provision.result", {"nodes": doc, "failed": len(failed)})
    else:
        output.table("provision", ["node", "state", "seconds", "active after", "reason"],
                     [[n, d["state"], d["seconds"], d["timings"].get("active"),
                       d["reason"] if d["state"] != "active" else ""]
                      for n, d in doc.items()])
    raise click.exceptions.Exit(1 if failed else 0)


def _say(as_json: bool, text: str) -> None:
    (sys.stderr if as_json else sys.stdout).write(text + "\n")


def _progress_printer(as_json: bool):
    lock = threading.Lock()
    start = time.monotonic()

    def show(node: str, state: str, reason: str) -> None:
        with lock:
            line = f"{time.monotonic() - start:6.1f}s  {node:<12} {state}"
            if state == "provision_failed" and reason:
                line += f"  ({reason[:300]})"
            (sys.stderr if as_json else sys.stdout).write(line + "\n")
            (sys.stderr if as_json else sys.stdout).flush()

    return show
