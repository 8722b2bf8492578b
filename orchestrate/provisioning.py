"""Provisioning control: the entry points the CLI, ``metalchain serve``, the remediation
engine (reprovision a node) and workers call the same way.

- :func:`provision_nodes` — select nodes, skip active ones if asked, preflight, prepare
  images, start a boot server for the run or use the site's running ``serve``, provision,
  report.
- :class:`Serve` — the long-running controller: boot server, install callbacks, package
  mirror, watchers for nodes in progress that wake on the callbacks (no polling loop), and
  the receiver of Alertmanager's notifications and hosts' pushed events.
- :class:`Controller` — the pieces both share (deploy service, boot server, images).

Nothing here prints: progress and notes go to the callbacks the caller passes.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from inventory.errors import InputError, MetalchainError
from inventory.select import select_hosts
from orchestrate.stop import Stop
from provision import lifecycle as lc
from provision.provision_step import REPORT_GRACE
from provision.provisioner import NodeResult
from provision.watch import POWER_SYNC_INTERVAL, NodeChanges, WatchSet
from runtime.jsondoc import write_json
from runtime.pidfile import process_alive

OnChange = Callable[[str, str, str], None]   # (node, state, reason)
OnNote = Callable[[str], None]               # one line for the operator


def _quiet(_text: str) -> None:
    pass


class Controller:
    """What ``serve`` runs and what ``provision`` starts for itself when no ``serve`` runs.

    ``changes`` is this process's notification channel: the deploy service (called by the
    boot server's HTTP handler) notifies it after every state change, watchers wait on it.
    """

    def __init__(self, site: Any) -> None:
        from provision.deploy import DeployService, HostKeys
        from provision.drivers import driver_for
        from provision.settings import BootSettings

        self.site = site
        self.settings = BootSettings.from_site(site)
        self.timeouts = {**lc.DEFAULT_TIMEOUTS, **self.settings.timeouts}
        self.hostkeys = HostKeys(site.root / "boot" / "deploy")
        self.changes = NodeChanges()
        pub = site.ssh_key_path.with_suffix(".pub") if site.ssh_key_path else None
        if pub is None or not pub.exists():
            raise InputError(f"the controller's SSH key {pub} is missing; installed nodes "
                             "authorize it for root (ssh-keygen -t ed25519 -f "
                             f"{site.ssh_key_path})")
        self.deploy = DeployService(site.inventory, site.state,
                                    images_dir=self.settings.images_dir,
                                    hostkeys=self.hostkeys,
                                    authorized_keys=pub.read_text(),
                                    token_ttl=self.settings.token_ttl,
                                    network=self.settings.node_network, bmc_for=driver_for,
                                    changes=self.changes)
        self.server: Any = None
        self.mirror: Any = None
        self.state_file = site.root / "boot" / "serve.json"

    def images_for(self, hosts: list[Any]) -> set[str]:
        return {self.deploy.image_of(h) for h in hosts}

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
        return str(self.server.url)

    def start_mirror(self) -> str | None:
        """Serve the site's package mirror too, unless a `mirror serve` already does."""
        from configure.mirror_server import MirrorServer
        from orchestrate.mirror_site import default_port, mirror_dir, status_doc

        doc = status_doc(self.site)
        if not doc["built"] or doc["server"]["running"]:
            return None
        self.mirror = MirrorServer(mirror_dir(self.site) / "current",
                                   str(self.settings.address), default_port(self.site)).start()
        return str(self.mirror.url)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.mirror is not None:
            self.mirror.stop()
            self.mirror = None

    def reload(self) -> None:
        """Serve the site's inventory as it is on disk now (SIGHUP)."""
        inventory = self.site.reload_inventory()
        self.deploy.inventory = inventory
        if self.server is not None:
            self.server.reload(inventory)

    def reconcile(self) -> list[str]:
        """Judge every node in progress once (one BMC session each); for logs."""
        from provision.drivers import driver_for
        from provision.provisioner import reconcile

        return reconcile(self.site.inventory, self.site.state, self.timeouts, driver_for)


def running_serve(site: Any) -> dict[str, Any] | None:
    """The site's `metalchain serve`, if one runs and answers."""
    path = site.root / "boot" / "serve.json"
    try:
        info = json.loads(path.read_text())
        if not process_alive(int(info["pid"])):
            return None
        with urllib.request.urlopen(info["url"] + "/", timeout=2):  # noqa: S310 - our URL
            pass
    except urllib.error.HTTPError:
        return info  # it answered (404 for "/" is an answer)
    except (OSError, ValueError, KeyError, urllib.error.URLError):
        return None
    return info


# -- provision ---------------------------------------------------------------------------------

#: Seconds :meth:`RunProvisioning.close` waits for a step that is still preparing.
CLOSE_WAIT = 10.0

@dataclass(frozen=True)
class ProvisionOptions:
    image: str | None = None          # install this image instead of the inventory's
    parallel: int = 10
    retry: bool = False               # start over nodes that are provision_failed
    force: bool = False               # reinstall nodes that are active
    skip_active: bool = False         # leave active nodes alone
    total_timeout: float | None = None   # give up on every node still in progress after this


@dataclass
class ProvisionReport:
    """Per-node outcomes; ``all_active`` when --skip-active left nothing to do."""

    nodes: dict[str, NodeResult] = field(default_factory=dict)
    all_active: bool = False
    #: "" (ran to its end), "interrupted" (no new node started after a stop request), "aborted"
    interrupted: str = ""

    @property
    def failed(self) -> int:
        return sum(1 for r in self.nodes.values() if not r.ok)

    def node_docs(self) -> dict[str, dict[str, Any]]:
        return {n: {"state": r.state, "reason": r.reason, "seconds": round(r.seconds, 1),
                    "timings": r.timings, "error": r.error} for n, r in self.nodes.items()}

    def to_doc(self) -> dict[str, Any]:
        """The body of the ``provision.result`` JSON document."""
        return {"nodes": self.node_docs(), "failed": self.failed,
                "interrupted": self.interrupted or None}


def provision_nodes(site: Any, target: str | None, options: ProvisionOptions | None = None,
                    *, on_change: OnChange | None = None, on_note: OnNote = _quiet,
                    controller: Controller | None = None,
                    stop: Stop | None = None) -> ProvisionReport:
    """Install ``target``'s bare-metal nodes (None: every host with provisioning data).

    ``stop`` (see :mod:`orchestrate.stop`): once requested no further node is started and
    the nodes being installed are finished; a second request gives up on them — and if the
    boot server is this call's own (it stops with it, so they cannot finish), they are failed
    with the reason, never left in progress.

    Raises :class:`InputError` before touching anything when the selection or a node's state
    forbids it (active without ``force``, failed without ``retry``, ...). Uses the site's
    running ``metalchain serve`` if there is one, else runs the boot server for the call.
    Code running inside ``serve`` (remediation) passes serve's ``controller``: its boot
    server is used and its callbacks wake the watchers in-process (:meth:`Serve.provision`).

    A playbook's ``provision`` steps go through the same :class:`RunProvisioning` (there
    without the up-front refusals: each node's step says what stops it).

    Example::

        report = provision_nodes(site, "node1", ProvisionOptions(force=True))
        report.nodes["node1"].state    # "active"
    """
    opts = options or ProvisionOptions()
    inv = site.inventory
    names = select_hosts(inv, target or "all")
    hosts = [inv.hosts[n] for n in names if inv.hosts[n].managed]
    if not hosts:
        raise InputError("no host with bmc/provision data in the target")
    if opts.skip_active:
        active = {n.name for n in site.state.list_nodes() if n.state == lc.ACTIVE}
        hosts = [h for h in hosts if h.name not in active]
        if not hosts:
            on_note("every node of the target is already active")
            return ProvisionReport(all_active=True)
    session = RunProvisioning(site, opts, controller=controller, on_change=on_change,
                              on_note=on_note)
    session.preflight(hosts)
    names = [h.name for h in hosts]
    try:
        session.prepare(hosts)
        results, interrupted = _run_provision(site, session, names, opts, stop, on_note)
        if interrupted == "aborted":
            _update(results, session.close("aborted by a stop request"))
    except KeyboardInterrupt:   # a third Ctrl-C, or an embedder without a Stop
        session.close("interrupted (KeyboardInterrupt)")
        raise
    finally:
        session.close()
    return ProvisionReport(nodes=results, interrupted=interrupted)


def _update(results: dict[str, NodeResult], failed: dict[str, str]) -> None:
    """The results of the nodes :meth:`RunProvisioning.close` failed, with its reason."""
    for node, reason in failed.items():
        if node in results:
            old = results[node]
            results[node] = NodeResult(node, lc.FAILED, reason, old.seconds, old.timings,
                                       error=old.error)


class RunProvisioning:
    """The provisioning of one run: what its ``provision`` steps call
    (:class:`provision.provision_step.NodeProvisioner`).

    Nothing starts until a step needs a node provisioned: then, once (thread-safe), the
    controller is built, nodes in progress are re-checked (:meth:`Controller.reconcile`), and
    the site's running ``metalchain serve`` is used or a boot server started for this run;
    each node's image is built (or taken from the cache) before its first node starts. A run
    whose nodes are all active starts nothing. :meth:`close` (at the end of the run, also on
    failure or Ctrl-C) stops the boot server this run started and fails, with the reason,
    the nodes it left in progress (they cannot finish without it).

    Each node is refused as ``metalchain provision`` would refuse it (provision_failed
    without ``retry``, in maintenance, being provisioned by someone else), unless
    :meth:`preflight` already judged it. ``provisioner`` replaces the one built here (tests).

    Example::

        session = RunProvisioning(site, ProvisionOptions(retry=True))
        try:
            session.provision_one(site.inventory.host("node1"))
        finally:
            session.close()
    """

    def __init__(self, site: Any, options: ProvisionOptions | None = None, *,
                 controller: Controller | None = None, provisioner: Any = None,
                 on_change: OnChange | None = None, on_note: OnNote = _quiet) -> None:
        self.site = site
        self.options = options or ProvisionOptions()
        self.force = self.options.force
        self.deadline = (time.time() + self.options.total_timeout
                         if self.options.total_timeout else None)
        self.ctl = controller
        self._given = controller is not None
        self._prov = provisioner
        self._fixed = provisioner is not None
        self._on_change = on_change
        self._on_note = on_note
        self._lock = threading.Lock()
        self._reconciled = False
        self._images: set[str] = set()
        self._checked: set[str] = set()
        self._started: list[str] = []
        self._own_server = False
        self._closing = False
        self.boot_url: str | None = None

    # -- what provision_nodes does up front ------------------------------------------------

    def preflight(self, hosts: list[Any]) -> None:
        """Refuse, before anything changes, every host whose state forbids starting it."""
        from provision.provisioner import preflight

        preflight(self.site.state, hosts, self._controller().timeouts,
                  retry=self.options.retry, force=self.options.force)
        self._checked.update(h.name for h in hosts)

    def prepare(self, hosts: list[Any]) -> None:
        """Image overrides, the re-check of nodes in progress and the images, before the
        first node starts."""
        with self._lock:
            ctl = self._controller()
            if self.options.image:
                for h in hosts:
                    (ctl.hostkeys.dir / h.name).mkdir(parents=True, exist_ok=True)
                    ctl.hostkeys.set_image(h.name, self.options.image)
            self._reconcile(ctl)
            self._prepare_images(ctl, hosts)

    # -- what a provision step calls -----------------------------------------------------

    def provision_one(self, host: Any, deadline: float | None = None) -> NodeResult:
        """Provision ``host`` to active (or failed); starts what it needs on first use."""
        if host.name not in self._checked:
            self._check(host)
        with self._lock:
            if self._closing:
                raise MetalchainError(f"{host.name} not started: the run is ending")
            if self._fixed:
                prov = self._prov
            else:
                ctl = self._controller()
                self._reconcile(ctl)
                self._prepare_images(ctl, [host])
                prov = self._provisioner(ctl)
            self._started.append(host.name)
        return prov.provision_one(host, deadline)

    def close(self, why: str = "the run ended") -> dict[str, str]:
        """Stop the boot server this run started (if any), first failing the nodes it left
        in progress with ``why``; returns node -> reason of those failed. Idempotent.

        No node starts once it is called. A step still preparing (an image build, under the
        lock) is waited for :data:`CLOSE_WAIT` seconds at most: an aborted run ends now."""
        self._closing = True
        locked = self._lock.acquire(timeout=CLOSE_WAIT)
        try:
            failed: dict[str, str] = {}
            if self._own_server and self.ctl is not None:
                failed = _fail_cut_short(self.site, self.ctl.timeouts, self._started, why)
                self.ctl.stop()
                self._own_server = False
            return failed
        finally:
            if locked:
                self._lock.release()

    # -- inside -------------------------------------------------------------------------

    def _controller(self) -> Controller:
        if self.ctl is None:
            self.ctl = Controller(self.site)
        return self.ctl

    def _check(self, host: Any) -> None:
        from provision.provisioner import preflight

        timeouts = self.ctl.timeouts if self.ctl is not None else lc.DEFAULT_TIMEOUTS
        try:
            preflight(self.site.state, [host], timeouts, retry=self.options.retry,
                      force=self.options.force)
        except InputError as exc:
            rec = self.site.state.node(host.name)
            why = f" ({rec.reason[:300]})" if rec is not None and rec.state == lc.FAILED \
                and rec.reason else ""
            hint = ("; metalchain run --retry (or metalchain provision --retry) starts it "
                    "over" if rec is not None and rec.state == lc.FAILED else "")
            raise InputError(f"{exc}{why}{hint}") from None

    def _reconcile(self, ctl: Controller) -> None:
        if not self._reconciled:
            self._reconciled = True
            for line in ctl.reconcile():
                self._on_note(f"re-checked {line}")

    def _prepare_images(self, ctl: Controller, hosts: list[Any]) -> None:
        wanted = ctl.images_for(hosts) - self._images
        if wanted:
            ctl.prepare_images(wanted)
            self._images.update(wanted)

    def _provisioner(self, ctl: Controller) -> Any:
        if self._prov is not None:
            return self._prov
        from provision.drivers import driver_for
        from provision.provisioner import Provisioner

        if self._closing:   # close() gave up waiting for this step: start nothing more
            raise MetalchainError("not started: the run is ending")
        serving = None if self._given else running_serve(self.site)
        changes: NodeChanges | None = ctl.changes   # callbacks land in this process
        if not self._given and serving is None:
            self.boot_url = ctl.start()
            self._own_server = True
            self._on_note(f"boot server started for this run at {self.boot_url}")
        elif serving is not None:
            self._on_note(f"using the running metalchain serve at {serving['url']}")
            changes = None   # callbacks land in the serve process: watchers re-read the store
        self._prov = Provisioner(self.site.inventory, self.site.state, hostkeys=ctl.hostkeys,
                                 bmc_for=driver_for, timeouts=ctl.timeouts,
                                 on_change=self._on_change, changes=changes,
                                 token_ttl=ctl.settings.token_ttl)
        return self._prov


def _say_stopping(ev: dict[str, Any], on_note: OnNote) -> None:
    """The acknowledgement of a stop request ("stopping after the current step on node1;
    Ctrl-C again to abort"), as for every run."""
    if ev.get("event") == "run_stopping":
        from orchestrate.progress import stopping_line

        on_note(stopping_line(ev))


def _fail_cut_short(site: Any, timeouts: Any, names: list[str], why: str) -> dict[str, str]:
    """Fail the nodes still in progress: the boot server they need stops with this call.
    Returns node -> the reason recorded."""
    life = lc.Lifecycle(site.state, timeouts)
    failed: dict[str, str] = {}
    for node in dict.fromkeys(names):
        rec = site.state.node(node)
        state = rec.state if rec else None
        reason = (f"{why} while {state}: the boot server of this run stopped with it "
                  "(provision --retry, or run --retry, starts over)")
        if state in lc.IN_PROGRESS and life.fail(node, reason):
            failed[node] = reason
    return failed


def _run_provision(site: Any, prov: Any, nodes: list[str], opts: ProvisionOptions,
                   stop: Stop | None = None, on_note: OnNote = _quiet
                   ) -> tuple[dict[str, NodeResult], str]:
    """The nodes as a run of the ``provision`` step: fanned out ``opts.parallel`` at a time,
    journaled (``runs list`` shows it, ``@failed`` names the nodes that failed) and bounded by
    ``--timeout`` (plus a grace for the step to report) like any other run. The run holds
    each node's lease while it provisions it: a node another run holds is not provisioned.
    ``prov`` is the run's provisioner (a :class:`RunProvisioning`, or a test's fake)."""
    from orchestrate.runs import RunOptions, single_step_playbook, start_run
    from provision.provisioner import timings

    if not isinstance(prov, RunProvisioning):
        prov = RunProvisioning(site, opts, provisioner=prov)
    # The runner's bound is the backstop: the provisioner fails late nodes at the deadline.
    timeout = opts.total_timeout + REPORT_GRACE if opts.total_timeout else None
    pb = single_step_playbook("@provision", "provision", None, "provision", timeout=timeout)
    report = start_run(site, pb, RunOptions(kind="provision", parallel=opts.parallel,
                                            named={"provision": nodes}, retry=opts.retry),
                       provisioner=prov, stop=stop,
                       on_event=lambda ev: _say_stopping(ev, on_note))
    results: dict[str, NodeResult] = {}
    for node in nodes:
        if node in report.held:   # another run holds the node: not touched, not ok
            results[node] = NodeResult(node, None, f"not provisioned: {report.held[node]}")
            continue
        outcome = report.first_outcome(node)
        doc = outcome.data.get("node") if outcome is not None else None
        if doc:
            results[node] = NodeResult(node, doc["state"], doc["reason"], doc["seconds"],
                                       doc["timings"], error=doc.get("error", ""))
            continue
        # The step did not report (the run gave up on it): what the store knows.
        rec = site.state.node(node)
        reason = outcome.message if outcome is not None else "not run"
        results[node] = NodeResult(node, rec.state if rec else None,
                                   (rec.reason if rec and rec.reason else reason),
                                   0.0, timings(site.state, node))
    return results, report.interrupted


# -- serve ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ServeInfo:
    url: str | None                   # the boot server's (None with --no-boot)
    mirror_url: str | None
    interface: str | None
    receiver_url: str | None = None


class Serve:
    """``metalchain serve``: boot server + callbacks + mirror + node watchers + the receiver
    of alerts and pushed events (:mod:`orchestrate.receiving`), until stopped. With
    ``boot=False`` (``serve --no-boot``) only the receiver: no boot settings are needed.

    Nothing here polls the state store in a loop: a node's watcher wakes on the callbacks the
    boot server receives (:class:`provision.watch.NodeChanges`), at its next deadline, and at
    the slow backstop (:data:`provision.watch.POWER_SYNC_INTERVAL`: power state over the
    node's one BMC session, a store re-read, and one query listing nodes in progress to adopt
    those another process started).

    Example::

        srv = Serve(site)
        info = srv.start()            # ServeInfo(url=..., mirror_url=..., interface=...)
        srv.run(on_note=print)        # until srv.request_stop() (e.g. from SIGTERM)
        srv.close()
    """

    def __init__(self, site: Any, *, sync_interval: float = POWER_SYNC_INTERVAL,
                 boot: bool = True) -> None:
        from orchestrate.receiving import Receiving
        from provision.drivers import driver_for

        if boot and running_serve(site):
            raise MetalchainError(f"metalchain serve is already running for {site.root}")
        self.site = site
        self.boot = boot
        self.sync_interval = sync_interval
        self._wake = threading.Event()
        self._stop = False
        self._reload = False
        self._on_note: OnNote = _quiet
        # The receiver (Alertmanager webhook, pushed events, /metrics). Seams for the other
        # parts of serve: ``ingest_listeners.append(on_ingested)`` (called after each
        # committed and answered notification), ``ingest_observers`` (``observe(route,
        # seconds, status)``) and ``metrics_registry`` (set before :meth:`start`).
        self.ingest_listeners: list[Any] = []
        self.ingest_observers: list[Any] = []
        self.metrics_registry: Any = None
        self.receiving = Receiving(site, listeners=self.ingest_listeners,
                                   observers=self.ingest_observers)
        self.ctl: Controller | None = None
        self.watchers: WatchSet | None = None
        self.remediator: Any = None
        self._init_monitoring()
        if not boot:
            return   # --no-boot: receiver, metrics and remediation only (no boot settings)
        self.ctl = Controller(site)
        ctl = self.ctl
        self.watchers = WatchSet(lambda: ctl.deploy.inventory, site.state,
                                 timeouts=ctl.timeouts, changes=ctl.changes,
                                 bmc_for=driver_for,
                                 on_action=lambda node, what: self._on_note(
                                     f"re-checked {node}: {what}"))
        ctl.changes.subscribe(self.watchers.adopt)

    def _init_monitoring(self) -> None:
        """The BMC poller (power-off detection, BMC reachability for /metrics) and the
        metrics registry the receiver serves (``metrics_registry``; ``metrics`` are its
        instruments: ``metrics.observe_ingest`` is the receiver's observer signature,
        ``metrics.guard_decisions`` the engine's counter)."""
        from monitor.metrics import build_registry
        from monitor.power import PowerCache
        from monitor.reach import ReachCache
        from monitor.settings import MonitorSettings
        from orchestrate.power_watch import PowerWatch
        from orchestrate.reach_watch import ReachWatch, pinned_in
        from provision.drivers import driver_for

        monitor = MonitorSettings.from_site(self.site)
        self.power_cache = PowerCache()
        self.power_watch = PowerWatch(
            self._inventory, self.site.state, cache=self.power_cache,
            interval=monitor.bmc_poll_interval, timeout=monitor.bmc_poll_timeout,
            bmc_for=driver_for, busy=self._watching, on_ingested=self.notify_ingested)
        self.reach_cache = ReachCache()
        # Its own pace, not the BMC poll's: each probe makes the host's sshd fork (and
        # re-exec) a session process, which a loaded host or a guest feels (see
        # monitor/settings.py); and an SSH banner may take longer than a BMC's answer.
        self.reach_watch = ReachWatch(self._inventory, self.reach_cache,
                                      interval=monitor.reach_probe_interval,
                                      timeout=monitor.reach_probe_timeout,
                                      guest_ready=pinned_in(self.site.state))
        self.metrics_registry, self.metrics = build_registry(
            self.site.state, bmc_status=self.power_cache.snapshot,
            reach_status=self.reach_cache.snapshot)
        self.ingest_observers.append(self.metrics.observe_ingest)

    def _inventory(self) -> Any:
        return self.ctl.deploy.inventory if self.ctl is not None else self.site.inventory

    def _watching(self) -> Any:
        return self.watchers.watching() if self.watchers is not None else frozenset()

    def notify_ingested(self, items: list[Any]) -> None:
        """Hand what the store ingested (alerts, events, the BMC poller's incidents) to
        every ingest listener; one listener's failure does not keep it from the others."""
        for listener in list(self.ingest_listeners):
            try:
                listener(items)
            except Exception as exc:   # noqa: BLE001 - a listener's bug is logged, not fatal
                self._on_note(f"an ingest listener failed: {exc.__class__.__name__}: {exc}")

    def prepare_images(self) -> None:
        """Build the images of every host with provisioning data (cached)."""
        self.ctl.prepare_images(self.ctl.images_for(
            [h for h in self.site.inventory.hosts.values() if h.provision and h.provision.mac]))

    def start(self) -> ServeInfo:
        # Remediation first: it picks up what a previous serve left, and is listening before
        # the first notification can arrive.
        self._start_remediation()
        self.power_watch.start()
        self.reach_watch.start()
        self.receiving.registry = self.metrics_registry
        receiver_url = self.receiving.start()
        if self.ctl is None:
            return ServeInfo(None, None, None, receiver_url)
        url = self.ctl.start()
        mirror_url = self.ctl.start_mirror()
        write_json(self.ctl.state_file, {"pid": os.getpid(), "url": url})
        return ServeInfo(url, mirror_url, self.ctl.settings.interface, receiver_url)

    def _start_remediation(self) -> None:
        """The remediation engine: picks up what a previous serve left, then acts on what
        the receiver ingests (:mod:`orchestrate.remediation`)."""
        from orchestrate.remediation import build_remediator, decision_counter

        self.remediator = build_remediator(self.site, serve=self)
        metrics = getattr(self, "metrics", None)   # serve's own metrics, when it has them
        if getattr(metrics, "guard_decisions", None) is not None:
            self.remediator.observers.append(decision_counter(metrics.guard_decisions))
        self.remediator.start()
        self.ingest_listeners.append(self.remediator.on_ingested)

    def provision(self, target: str | None, options: ProvisionOptions | None = None, *,
                  on_change: OnChange | None = None, on_note: OnNote = _quiet
                  ) -> ProvisionReport:
        """:func:`provision_nodes` from inside this serve (e.g. a remediation action):
        through this process's boot server and notifications. Blocks until done."""
        # With --no-boot there is no boot server here: provision starts its own.
        return provision_nodes(self.site, target, options, on_change=on_change,
                               on_note=on_note, controller=self.ctl)

    def request_stop(self) -> None:
        """Safe from a signal handler: sets a flag and wakes the loop."""
        self._stop = True
        self._wake.set()

    def request_reload(self) -> None:
        """Safe from a signal handler: the loop reloads the inventory (SIGHUP)."""
        self._reload = True
        self._wake.set()

    def run(self, on_note: OnNote = _quiet) -> None:
        """Watch nodes until :meth:`request_stop`; the first sync re-checks what a previous
        controller left in progress."""
        self._on_note = on_note
        while not self._stop:
            if self.watchers is not None:
                self.watchers.sync()
            self._wake.wait(self.sync_interval)
            self._wake.clear()
            if self._reload and not self._stop:
                self._reload = False
                try:
                    if self.ctl is not None:
                        self.ctl.reload()
                    else:
                        self.site.reload_inventory()
                except MetalchainError as exc:   # keep serving the inventory we had
                    on_note(f"reload failed, still serving the previous inventory: {exc}")
                self._reload_remediation(on_note)
                self._refresh_targets(on_note)

    def _refresh_targets(self, on_note: OnNote) -> None:
        """Prometheus's file_sd targets from the inventory just reloaded (if `monitor up` set
        the stack up for this site): a host that left it is no longer scraped."""
        from orchestrate.monitoring import refresh_if_set_up

        path = refresh_if_set_up(self.site)
        if path is not None:
            on_note(f"scrape targets refreshed in {path}")

    def _reload_remediation(self, on_note: OnNote) -> None:
        from orchestrate.remediation import reload_rules

        if self.remediator is None:
            return
        try:
            on_note(f"remediation rules reloaded from {reload_rules(self.remediator, self.site)}")
        except MetalchainError as exc:   # keep acting on the rules we had
            on_note(f"remediation rules not reloaded, still using the previous ones: {exc}")

    def close(self) -> None:
        if self.remediator is not None:
            self.remediator.stop(10)
        self.power_watch.stop()
        self.reach_watch.stop()
        try:
            if self.watchers is not None:
                self.watchers.stop()
            if self.ctl is not None:
                try:
                    self.ctl.stop()
                finally:
                    self.ctl.state_file.unlink(missing_ok=True)
        finally:
            self.receiving.stop()
