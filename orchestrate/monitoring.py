"""The monitoring stack of a site: autodiscovered targets, and ``monitor up|down|status``.

Autodiscovery (:func:`refresh_targets`): every inventory host with an address whose roles (and
their dependencies) declare ``scrape_targets`` in meta.yml, from the moment its roles have been
applied, is written to the file_sd file ``SITE/monitor/targets/metalchain.json`` with its
inventory labels, groups and roles (a guest also with ``hypervisor`` and ``kind="vm"``:
:mod:`monitor.targets`; a guest is scraped from the moment the ``vm`` step pinned its host key,
as long as its inventory ``vm.state`` is ``running``). "Applied" is what the state store's
journal can tell: the host has had a step end ok/changed in a non-check ``apply``, ``playbook``
or ``drift --fix`` run (the journal does not record which roles a step converged, so a host
whose roles were assigned after its last apply counts from that apply on). A host that leaves
the inventory is not in the next file; Prometheus re-reads the file by itself (file_sd), no
restart. It is refreshed by ``monitor up``, after every converging run (:func:`after_run`,
called by :func:`orchestrate.runs.start_run`), and by ``metalchain serve`` on SIGHUP
(:func:`refresh_if_set_up`, for whoever wires it).

The processes and generated files are :mod:`monitor.stack`'s; this module joins the site
(inventory, roles, secrets, state) with it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configure.roles import resolve, role_search_path
from inventory.errors import InputError, MetalchainError, SecretError
from inventory.secrets import Secret
from monitor import stack
from monitor.alerts import alerts_path, load_alerts_file
from monitor.settings import MonitorSettings
from monitor.targets import (
    ScrapeHost,
    TargetError,
    file_sd_groups,
    scrape_targets,
    write_file_sd,
)
from runtime.filelock import file_lock

log = logging.getLogger(__name__)

#: Run kinds after which the targets are refreshed, and whose journal says "applied".
CONVERGING_KINDS = ("apply", "playbook", "drift")
#: How long `monitor up`/`down` waits for another one of the same site.
LOCK_TIMEOUT = 120.0


@dataclass
class StackStatus:
    """What ``monitor status`` shows; ``exit_code`` 0 when every target is up and nothing
    fires, 1 when a target is down, an alert fires, or the stack is not (fully) running."""

    running: dict[str, int | None]
    targets: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    alertmanagers: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def firing(self) -> list[dict[str, Any]]:
        return [a for a in self.alerts if a["state"] == "firing"]

    @property
    def down(self) -> list[dict[str, Any]]:
        return [t for t in self.targets if t["health"] != "up"]

    @property
    def exit_code(self) -> int:
        all_running = all(pid is not None for pid in self.running.values())
        return 0 if all_running and not self.errors and not self.down and not self.firing \
            else 1

    def to_json(self) -> dict[str, Any]:
        return {"running": self.running, "targets": self.targets, "alerts": self.alerts,
                "alertmanagers": self.alertmanagers, "errors": self.errors,
                "targets_up": len(self.targets) - len(self.down),
                "targets_down": len(self.down), "firing": len(self.firing),
                "exit_code": self.exit_code}


def settings_of(site: Any) -> MonitorSettings:
    return MonitorSettings.from_site(site)


def scrape_hosts(site: Any) -> list[ScrapeHost]:
    """One :class:`ScrapeHost` per inventory host that has an address, a role with scrape
    targets, and has had its roles applied."""
    inv = site.inventory
    applied = site.state.hosts_converged(CONVERGING_KINDS)
    search = role_search_path(site.playbooks_dir)
    by_roles: dict[tuple[str, ...], tuple[Any, ...]] = {}
    out = []
    for name, host in inv.hosts.items():
        roles = tuple(inv.roles_of(name))
        if not roles or not host.address or not _discovered(site, host, applied):
            continue
        if roles not in by_roles:
            found = []
            for role in resolve(list(roles), search):
                try:
                    found.extend(scrape_targets(role.name, role.scrape_targets))
                except TargetError as exc:
                    raise InputError(f"{role.path / 'meta.yml'}: {exc}") from None
            by_roles[roles] = tuple(found)
        if by_roles[roles]:
            out.append(ScrapeHost(name=name, address=host.address,
                                  groups=tuple(inv.groups_of(name)), roles=roles,
                                  labels=dict(host.labels), targets=by_roles[roles],
                                  hypervisor=host.vm.hypervisor if host.vm else None))
    return out


def _discovered(site: Any, host: Any, applied: set[str]) -> bool:
    """Whether a host with roles is scraped: its roles have been applied; a guest also once
    the ``vm`` step made it (its host key is pinned), since a small guest image may bring its
    exporter itself -- and never a guest the inventory wants stopped or absent."""
    if host.vm is None:
        return host.name in applied
    if host.vm.state != "running":
        return False
    return host.name in applied or bool(site.state.host_keys_of(host.name))


def refresh_targets(site: Any) -> Path:
    """Write the site's file_sd targets (atomically, only when they changed); their path.
    Raises on a bad role or label (``monitor up``/``refresh`` report it)."""
    lay = stack.layout(settings_of(site))
    try:
        groups = file_sd_groups(scrape_hosts(site))
    except TargetError as exc:
        raise InputError(f"{site.inventory_path}: {exc}") from None
    try:
        if write_file_sd(lay.targets_file, groups):
            log.info("monitor: %d targets written to %s", len(groups), lay.targets_file)
    except OSError as exc:
        raise stack.StackError(f"cannot write {lay.targets_file}: "
                               f"{exc.strerror or exc}") from exc
    return lay.targets_file


def after_run(site: Any, kind: str, check: bool) -> None:
    """After a run: refresh the targets if it could have applied roles (see
    :func:`refresh_if_set_up`)."""
    if not check and kind in CONVERGING_KINDS:
        refresh_if_set_up(site)


def refresh_if_set_up(site: Any) -> Path | None:
    """Refresh the targets if this site's stack has been set up (``monitor up`` ran once);
    the file, or None. Never raises (a run is over, a reload must go on): a failure is
    logged. What ``metalchain serve`` calls after reloading its inventory on SIGHUP."""
    try:
        if stack.layout(settings_of(site)).targets_dir.is_dir():
            return refresh_targets(site)
    except (MetalchainError, OSError) as exc:
        log.warning("monitor: targets not refreshed: %s", exc)
    return None


def webhook_token(site: Any, settings: MonitorSettings) -> Secret:
    """The Alertmanager -> receiver bearer token from secrets.yml, or a clear error saying
    what to add (there is no API that writes secrets.yml; the operator owns it)."""
    key = settings.webhook_token_secret
    try:
        return site.secrets.resolve({"secret": key})
    except SecretError:
        raise InputError(
            f"{site.secrets_path}: no '{key}' secret for the Alertmanager webhook; add a line "
            f"'{key}: <a random string>' (e.g. from: python3 -c 'import secrets; "
            f"print(secrets.token_urlsafe(32))'), keep the file mode 0600, and run "
            f"monitor up again") from None


def monitor_up(site: Any, *, timeout: float = stack.START_TIMEOUT) -> dict[str, Any]:
    """Generate and check every config, then start (or reload) Prometheus and both
    Alertmanagers and wait until they are ready. Returns what was done."""
    settings = settings_of(site)
    lay = stack.layout(settings)
    token = webhook_token(site, settings)
    alerts_file = alerts_path(site.playbooks_dir)
    loaded = load_alerts_file(alerts_file)
    alerts = loaded.alerts
    with _stack_lock(lay):
        targets = refresh_targets(site)
        stack.write_token(lay, token)
        changed = stack.install_configs(settings, lay, alerts, loaded.notifications)
        pids = stack.start(settings, lay, timeout=timeout)
    return {"pids": pids, "alerts_file": str(alerts_file), "alerts": [a.name for a in alerts],
            "targets_file": str(targets), "changed": [str(p) for p in changed],
            "prometheus": settings.prometheus_url,
            "alertmanagers": list(settings.alertmanager_urls),
            "webhook": settings.receiver_url + stack.WEBHOOK_PATH}


def monitor_down(site: Any, *, timeout: float = stack.STOP_TIMEOUT) -> list[str]:
    """Stop the stack; the names of what was running."""
    settings = settings_of(site)
    lay = stack.layout(settings)
    with _stack_lock(lay):
        return stack.stop(settings, lay, timeout=timeout)


def _stack_lock(lay: stack.Layout) -> Any:
    """One `monitor up`/`down` at a time per site (two would start two of each process)."""
    return file_lock(lay.root / "run" / "stack.lock", LOCK_TIMEOUT, stack.StackError,
                     holder="another monitor up/down", note=f"pid {os.getpid()}")


def monitor_status(site: Any) -> StackStatus:
    """The stack as its own HTTP APIs report it."""
    settings = settings_of(site)
    status = StackStatus(running=stack.running(settings, stack.layout(settings)))
    if status.running.get("prometheus") is None:
        status.errors.append("prometheus is not running (metalchain monitor up)")
    else:
        try:
            status.targets = stack.prometheus_targets(settings)
            status.alerts = stack.prometheus_alerts(settings)
        except stack.StackError as exc:
            status.errors.append(str(exc))
    for name, url in zip(("alertmanager-1", "alertmanager-2"), settings.alertmanager_urls,
                         strict=True):
        if status.running.get(name) is None:
            status.errors.append(f"{name} is not running (metalchain monitor up)")
            continue
        try:
            status.alertmanagers.append({"name": name, **stack.alertmanager_status(url)})
        except stack.StackError as exc:
            status.errors.append(str(exc))
    return status


def cluster_peers(status: StackStatus) -> Mapping[str, list[str]]:
    """Alertmanager name -> the gossip addresses it sees (itself included)."""
    return {a["name"]: a["peers"] for a in status.alertmanagers}
