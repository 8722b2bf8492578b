"""Remediation's actions and verifications, implemented with orchestrate's runner, and the
engine built for ``metalchain serve``.

monitor/ decides (:mod:`monitor.engine`); this module acts. Every action that changes a host
is an ordinary run of kind ``remediation`` (:func:`orchestrate.runs.start_run`): journaled in
the state store with its event log ``SITE/runs/RUN.jsonl``, bounded by the step's timeout,
masked, and holding the host's lease, so remediation and an operator's ``apply`` never
change one host at once (the action waits for the lease up to its timeout)::

    remediator = build_remediator(site)     # the site's rules, these actions, its inventory
    remediator.start()                      # picks up what a dead process left
    remediator.on_ingested(store.ingest(...))

Actions: ``restart_service`` (``systemctl reset-failed``, then ``restart -- UNIT``),
``apply_role`` (the named role, or every role the inventory gives the host), ``playbook`` (a
site playbook limited to the host), ``reprovision`` (install the node again; the approval
guard stops it unless the rule allows it), ``power_cycle`` (from
:mod:`orchestrate.power_remedy` when it is there; ``args: {if_on: leave}`` leaves a node that
is on again instead of cycling it; machines only: a guest has no BMC) and ``restart_vm`` (a
guest only: the ``vm`` step for that one guest, run on its hypervisor, which starts a domain
that is shut off or defines one that is gone; ``args: {reset: true}`` first stops the domain
hard through libvirt, for a hung guest whose domain still runs).
Verifications: ``service_active`` (``systemctl is-active -- UNIT``), ``host_ssh`` (SSH answers
with the pinned host key), ``prometheus`` (an instant query is non-empty; by default
``up{instance="HOST"} == 1``).

A target is always one inventory host, by its exact name: an alert's ``instance`` label is
data, and a value like ``all`` or ``web*`` must never become a selection of many hosts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from inventory.errors import MetalchainError
from monitor.actions import (
    ActionCall,
    ActionResult,
    Actions,
    Verifiers,
    VerifyCall,
    VerifyResult,
)
from monitor.engine import Remediator
from monitor.rules import load_rules, rules_path
from monitor.settings import MonitorSettings
from orchestrate.playbook import Playbook
from orchestrate.reports import RunReport
from orchestrate.runs import RunOptions, load, single_step_playbook, start_run
from orchestrate.steps import StepRegistry
from orchestrate.stop import Stop
from runtime.pidfile import same_process

#: What a systemd unit name may be (``systemctl`` gets it after ``--``, never through a shell).
UNIT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9:_.@\\-]{0,254}$")
ROLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
#: Seconds one probe of a verification may take at most (the engine polls until its timeout).
PROBE_TIMEOUT = 10.0
#: Seconds the hard stop of a hung guest may take before restart_vm starts it again.
RESET_TIMEOUT = 60.0
#: Seconds between two probes of a guest's hypervisor that does not answer yet.
HYPERVISOR_PROBE_INTERVAL = 1.0
#: Engine workers in ``serve`` (the concurrency guard caps actions; these cap threads).
SERVE_WORKERS = 8


def promql_string(value: str) -> str:
    """``value`` as a double-quoted PromQL string literal, whatever it holds (PromQL reads
    Go's escapes, of which JSON's ``\\"``, ``\\\\`` and ``\\uXXXX`` are a subset)."""
    return json.dumps(str(value), ensure_ascii=False)


#: The restart: ``reset-failed`` first, so a unit that hit systemd's start limit (5 starts in
#: 10 s by default: a crash loop, or earlier remediations) can be started again — remediation's
#: own guards (cooldown, flap stop) are the limit here. A fixed script; the unit is ``$1``.
RESTART_SCRIPT = 'systemctl reset-failed -- "$1" 2>/dev/null; exec systemctl restart -- "$1"'


def restart_argv(unit: str) -> tuple[str, ...]:
    """The command of ``restart_service`` (the unit an argument, never part of the script)."""
    return ("sh", "-c", RESTART_SCRIPT, "restart_service", unit)


class _Refused(ValueError):
    """An action's input that must not reach a host (wrong target, bad unit name)."""


def _host(site: Any, target: str) -> str:
    if target not in site.inventory.hosts:
        raise _Refused(f"'{target}' is not a host of the inventory")
    return target


def _guest(site: Any, target: str) -> tuple[str, str]:
    """(guest, its hypervisor) for a target that is a guest of the inventory."""
    name = _host(site, target)
    vm = getattr(site.inventory.hosts[name], "vm", None)
    if vm is None:
        raise _Refused(f"{name} is not a guest (no vm: section): restart_vm starts guests on "
                       "their hypervisor; a machine is power-cycled through its BMC")
    if vm.hypervisor not in site.inventory.hosts:
        raise _Refused(f"{name}: its hypervisor '{vm.hypervisor}' is not in the inventory")
    if vm.state != "running":
        raise _Refused(f"{name}: the inventory wants it {vm.state}: not started")
    return name, vm.hypervisor


def _machine(site: Any, target: str) -> str:
    """A target that may go through a BMC: not a guest (a guest has none)."""
    name = _host(site, target)
    vm = getattr(site.inventory.hosts[name], "vm", None)
    if vm is not None:
        raise _Refused(f"{name} is a guest on {vm.hypervisor}: it has no BMC to power-cycle "
                       "through (restart_vm starts it on its hypervisor)")
    return name


def _flag(args: Mapping[str, Any], name: str) -> bool:
    value = args.get(name, False)
    if isinstance(value, str) and value.lower() in ("true", "false", ""):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise _Refused(f"'{name}' is true or false, not {str(value)[:40]!r}")
    return value


def _unit(args: Mapping[str, Any]) -> str:
    unit = args.get("service")
    if not isinstance(unit, str) or not UNIT_NAME.fullmatch(unit):
        raise _Refused(f"not a systemd unit name: {str(unit)[:80]!r}")
    return unit


@contextlib.contextmanager
def _run_stop(stop: threading.Event) -> Iterator[Stop]:
    """An orchestrate :class:`Stop` requested when the engine's ``stop`` event is set."""
    run_stop = Stop()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if stop.wait(0.5):
                run_stop.request("remediation stopping")
                return

    t = threading.Thread(target=watch, name="remediation-stop", daemon=True)
    t.start()
    try:
        yield run_stop
    finally:
        done.set()


def _result(report: RunReport, host: str) -> ActionResult:
    if report.held:
        return ActionResult(False, f"{host} is held: {report.held.get(host, '')}", report.uid)
    r = report.hosts.get(host)
    if r is None:
        return ActionResult(False, report.stopped_reason or report.interrupted
                            or "the run did not reach the host", report.uid)
    message = "; ".join(s.outcome.message for s in r.steps if s.outcome.message)
    return ActionResult(r.status in ("ok", "changed"), f"{r.status}: {message}"[:500],
                        report.uid)


def _options(call: ActionCall, what: str) -> RunOptions:
    return RunOptions(kind="remediation", limit=None, parallel=1, wait=call.timeout,
                      command=f"remediation: incident {call.incident_id} {what}")


class OrchestrateActions:
    """The implementations, bound to one site (and, inside ``serve``, its controller)."""

    def __init__(self, site: Any, *, serve: Any = None,
                 run: Callable[..., RunReport] = start_run,
                 registry: StepRegistry | None = None) -> None:
        self.site = site
        self.serve = serve
        self._start_run = run
        #: the step kinds (None: :func:`orchestrate.registry.build_registry`'s); tests and
        #: embedders pass their own, and it is then handed to the runs too
        self.registry = registry

    # -- actions -----------------------------------------------------------------------------

    def _command_run(self, call: ActionCall, argv: tuple[str, ...], what: str,
                     *, kind: str = "remediation") -> RunReport:
        from configure.command import CommandArgs

        host = _host(self.site, call.target)
        args = CommandArgs(command=argv, timeout=call.timeout, become=True)
        pb = single_step_playbook(host, "command", args, what[:60], timeout=call.timeout)
        options = _options(call, what) if kind == "remediation" else RunOptions(
            kind=kind, parallel=1, command=f"remediation: incident {call.incident_id} {what}")
        with _run_stop(call.stop) as stop:
            return self._start_run(self.site, pb, options, stop=stop)

    def restart_service(self, call: ActionCall) -> ActionResult:
        try:
            unit = _unit(call.args)
            report = self._command_run(call, restart_argv(unit), f"restart_service {unit}")
        except (_Refused, MetalchainError) as exc:
            return ActionResult(False, str(exc))
        return _result(report, call.target)

    def apply_role(self, call: ActionCall) -> ActionResult:
        role = call.args.get("role") or ""
        roles = call.args.get("roles")
        try:
            host = _host(self.site, call.target)
            names = [role] if role else list(roles or [])
            for name in names:
                if not isinstance(name, str) or not ROLE_NAME.fullmatch(name):
                    raise _Refused(f"not a role name: {str(name)[:80]!r}")
            if names:
                pb = single_step_playbook(host, "apply_role", names, f"apply {', '.join(names)}",
                                          timeout=call.timeout)
                what = f"apply_role {','.join(names)}"
            else:   # the role is not known: converge every role the inventory gives it
                pb = single_step_playbook(host, "apply_roles", None, "apply roles",
                                          timeout=call.timeout)
                what = "apply_role (the host's roles)"
            with _run_stop(call.stop) as stop:
                report = self._start_run(self.site, pb, _options(call, what), stop=stop)
        except (_Refused, MetalchainError) as exc:
            return ActionResult(False, str(exc))
        return _result(report, call.target)

    def playbook(self, call: ActionCall) -> ActionResult:
        try:
            host = _host(self.site, call.target)
            name = call.args.get("name")
            # Only a playbook of the site's playbooks/, by its plain name (a value filled in
            # from an alert must not reach a file elsewhere).
            if not isinstance(name, str) or not ROLE_NAME.fullmatch(name):
                raise _Refused(f"not a playbook name: {str(name)[:80]!r}")
            path = self.site.playbooks_dir / name
            if not path.is_file():
                path = self.site.playbooks_dir / f"{name}.yml"
            if not path.is_file():
                raise _Refused(f"no playbook '{name}' in {self.site.playbooks_dir}")
            pb = load(self.site, str(path))
            options = RunOptions(kind="remediation", limit=host, parallel=1, wait=call.timeout,
                                 command=f"remediation: incident {call.incident_id} "
                                         f"playbook {name}")
            with _run_stop(call.stop) as stop:
                report = self._start_run(self.site, pb, options, stop=stop)
        except (_Refused, MetalchainError) as exc:
            return ActionResult(False, str(exc))
        return _result(report, host)

    def reprovision(self, call: ActionCall) -> ActionResult:
        from orchestrate.provisioning import ProvisionOptions, provision_nodes

        try:
            host = _host(self.site, call.target)
            opts = ProvisionOptions(force=True, total_timeout=call.timeout)
            with _run_stop(call.stop) as stop:
                if self.serve is not None:
                    report = self.serve.provision(host, opts)
                else:
                    report = provision_nodes(self.site, host, opts, stop=stop)
        except (_Refused, MetalchainError) as exc:
            return ActionResult(False, str(exc))
        node = report.nodes.get(host)
        state = getattr(node, "state", None)
        return ActionResult(state == "active", f"node is {state or 'unknown'}")

    def restart_vm(self, call: ActionCall) -> ActionResult:
        """The guest's ``vm`` step on its hypervisor, for that guest only (an ordinary
        remediation run holding the hypervisor's lease); with ``reset: true``, a hard stop
        through libvirt first (``vm_power off``), so a hung guest boots afresh. A hypervisor
        that does not answer SSH is waited for first, within the step's timeout."""
        try:
            guest, hypervisor = _guest(self.site, call.target)
            reset = _flag(call.args, "reset")
            kinds = self.registry
            if kinds is None:
                from orchestrate.registry import build_registry

                kinds = build_registry()
            if "vm" not in kinds:
                raise _Refused("the vm step kind is not in this version: a guest cannot be "
                               "started by metalchain")
            deadline = time.monotonic() + call.timeout
            down = self._hypervisor_answers(hypervisor, deadline, call.stop)
            if down is not None:
                raise _Refused(f"{guest}: {down}")
            plays = []
            if reset:
                from configure.virsh_power import parse_vm_power

                off = parse_vm_power({"action": "off", "guests": [guest]})
                plays += single_step_playbook(hypervisor, "vm_power", off,
                                              f"stop {guest} hard",
                                              timeout=min(RESET_TIMEOUT, call.timeout)).plays
            left = max(1.0, deadline - time.monotonic())   # what the wait left of it
            start = kinds.get("vm").parse({"guests": [guest]})
            plays += single_step_playbook(hypervisor, "vm", start, f"start {guest}",
                                          timeout=left).plays
            pb = Playbook(path=Path("<restart_vm>"),
                          plays=[dataclasses.replace(p, index=i) for i, p in enumerate(plays)])
            what = f"restart_vm {guest} on {hypervisor}" + (" (reset)" if reset else "")
            extra = {} if self.registry is None else {"registry": self.registry}
            with _run_stop(call.stop) as stop:
                options = dataclasses.replace(_options(call, what), wait=left)
                report = self._start_run(self.site, pb, options, stop=stop, **extra)
        except (_Refused, MetalchainError, ValueError) as exc:
            return ActionResult(False, str(exc))
        result = _result(report, hypervisor)
        return ActionResult(result.ok, f"{guest} on {hypervisor}: {result.message}"[:500],
                            result.run_uid)

    def power_cycle(self, call: ActionCall) -> ActionResult:
        try:
            from orchestrate.power_remedy import power_cycle_node  # type: ignore[import-not-found]
        except ImportError:
            return ActionResult(False, "power_cycle is not available in this version")
        try:
            host = _machine(self.site, call.target)
            if_on = call.args.get("if_on", "cycle")
            if not isinstance(if_on, str) or if_on not in ("cycle", "leave"):
                raise _Refused(f"power_cycle's if_on is cycle or leave, not {str(if_on)[:40]!r}")
            with _run_stop(call.stop) as stop:
                ok, message, run_uid = power_cycle_node(self.site, host, call.timeout, stop,
                                                        if_on=if_on)
        except (_Refused, MetalchainError) as exc:
            return ActionResult(False, str(exc))
        return ActionResult(bool(ok), str(message), run_uid)

    # -- verifications -----------------------------------------------------------------------

    def service_active(self, call: VerifyCall) -> VerifyResult:
        try:
            unit = _unit(call.args)
            act = ActionCall(target=call.target, args={}, incident_id=0,
                             timeout=min(call.timeout, self._probe_limit(call.target)))
            report = self._command_run(act, ("systemctl", "is-active", "--", unit),
                                       f"verify {unit} is active", kind="verify")
        except (_Refused, MetalchainError) as exc:
            return VerifyResult(False, str(exc))
        result = _result(report, call.target)
        return VerifyResult(result.ok, f"{unit} " + ("is active" if result.ok
                                                    else f"is not active ({result.message})"))

    def host_ssh(self, call: VerifyCall) -> VerifyResult:
        try:
            name = _host(self.site, call.target)
        except _Refused as exc:
            return VerifyResult(False, str(exc))
        ok, why = self._answers_ssh(name, min(call.timeout, self._probe_limit(name)))
        if ok:
            return VerifyResult(True, f"{name} answers SSH with its pinned key")
        return VerifyResult(False, f"{name} has {why}" if why.startswith("no address")
                            else f"{name}: {why}")

    def _probe_limit(self, name: str) -> float:
        """The longest one SSH probe of ``name`` may take: PROBE_TIMEOUT, or the host's own
        ``ssh.connect_timeout`` when longer (its sessions take that long to open; in CI the
        e2e's loaded hypervisor took over 9 s for ``systemctl is-active``, twice)."""
        host = self.site.inventory.hosts.get(name)
        own = host.ssh.connect_timeout if host is not None else None
        return max(PROBE_TIMEOUT, float(own or 0))

    def _answers_ssh(self, name: str, timeout: float) -> tuple[bool, str]:
        """One probe: ``name`` answers SSH with a key pinned for it (or why not)."""
        from provision.sshcheck import ssh_answers_with

        host = self.site.inventory.hosts[name]
        address = host.address or (host.provision.ip if host.provision else None)
        keys = self.site.state.host_keys_of(host.name)
        if not address or not keys:
            return False, "no address or no pinned host key"   # host_ssh: "NAME has ..."
        why = ""
        for key in keys:
            ok, why = ssh_answers_with(address, key, port=host.ssh.port, timeout=timeout)
            if ok:
                return True, ""
        return False, why

    def _hypervisor_answers(self, hypervisor: str, deadline: float,
                            stop: threading.Event) -> str | None:
        """Wait until ``hypervisor`` answers SSH with its pinned key (a dead hypervisor is
        brought back by its own incident; its guests wait for it instead of failing their
        ladders at once); None when it does, else why not by ``deadline``. A hypervisor with
        no pinned key is not waited for (the run finds out)."""
        if not self.site.state.host_keys_of(hypervisor):
            return None
        why = ""
        while True:
            left = deadline - time.monotonic()
            ok, why = self._answers_ssh(hypervisor, max(0.1, min(PROBE_TIMEOUT, left)))
            if ok:
                return None
            if left <= 0:
                return f"its hypervisor {hypervisor} does not answer SSH ({why})"
            if stop.wait(min(HYPERVISOR_PROBE_INTERVAL, left)):
                return f"remediation stopping while waiting for its hypervisor {hypervisor}"

    def prometheus(self, call: VerifyCall) -> VerifyResult:
        """Passes when the query returns series (``empty: true``: when it returns none).
        ``alert_gone: true`` asks whether the incident's alert still fires on the target;
        the default asks ``up{instance="HOST"} == 1``. Values from the alert go into a query
        only here, quoted as PromQL strings (a rule's own ``query`` cannot refer to them)."""
        settings = MonitorSettings.from_site(self.site)
        query = call.args.get("query")
        want_empty = bool(call.args.get("empty", False))
        if call.args.get("alert_gone"):
            query = (f"ALERTS{{alertname={promql_string(call.labels.get('alertname', ''))},"
                     f"instance={promql_string(call.target)},alertstate=\"firing\"}}")
            want_empty = True
        elif not isinstance(query, str) or not query:
            query = f"up{{instance={promql_string(call.target)}}} == 1"
        url = f"{settings.prometheus_url}/api/v1/query?" + urllib.parse.urlencode(
            {"query": query})
        limit = min(call.timeout, PROBE_TIMEOUT)
        try:
            with urllib.request.urlopen(url, timeout=limit) as resp:  # noqa: S310 - http only
                doc = json.loads(resp.read(1 << 20).decode("utf-8"))
        except urllib.error.HTTPError as exc:   # 400/422: a bad query, with its reason
            try:
                doc = json.loads(exc.read(1 << 16).decode("utf-8"))
            except (OSError, ValueError):
                return VerifyResult(False, f"Prometheus answered {exc.code}")
        except (OSError, ValueError, urllib.error.URLError) as exc:
            return VerifyResult(False, f"Prometheus did not answer: {exc}")
        if not isinstance(doc, dict):
            return VerifyResult(False, "Prometheus answered something else than an object")
        result = (doc.get("data") or {}).get("result")
        if doc.get("status") != "success" or not isinstance(result, list):
            return VerifyResult(False, f"Prometheus refused the query: {doc.get('error', '')}")
        ok = (not result) if want_empty else bool(result)
        return VerifyResult(ok, f"{query}: {len(result)} series")


def register(actions: Actions, verifiers: Verifiers, impl: OrchestrateActions) -> None:
    """Register orchestrate's implementations under the names rules use."""
    actions.register("restart_service", impl.restart_service)
    actions.register("apply_role", impl.apply_role)
    actions.register("playbook", impl.playbook)
    actions.register("reprovision", impl.reprovision)
    actions.register("power_cycle", impl.power_cycle)
    actions.register("restart_vm", impl.restart_vm)
    verifiers.register("service_active", impl.service_active)
    verifiers.register("host_ssh", impl.host_ssh)
    verifiers.register("prometheus", impl.prometheus)


def build_remediator(site: Any, *, serve: Any = None, workers: int = SERVE_WORKERS
                     ) -> Remediator:
    """The engine for ``site``: its rules (``playbooks/remediation.yml``, else the shipped
    ones), orchestrate's actions, and the inventory's groups for the fleet cap."""
    actions, verifiers = Actions(), Verifiers()
    register(actions, verifiers, OrchestrateActions(site, serve=serve))
    path = rules_path(site.playbooks_dir)
    rules = load_rules(path, actions=actions.names(), verifiers=verifiers.names())

    def group_sizes() -> dict[str, int]:
        inv = site.inventory
        return {g: len(inv.group_hosts(g)) for g in inv.groups}

    def groups_of(target: str) -> tuple[str, ...]:
        host = site.inventory.hosts.get(target)
        return tuple(host.groups) if host is not None else ()

    return Remediator(site.state, rules, actions, verifiers, group_sizes_fn=group_sizes,
                      groups_of_fn=groups_of, workers=workers,
                      look_again_after=MonitorSettings.from_site(site).stale_alert_seconds)


def decision_counter(counter: Any) -> Callable[[str, Mapping[str, Any]], None]:
    """An engine observer that counts decisions on a prometheus-client Counter labelled
    ``guard`` and ``verdict`` (``guard`` "none" when no guard intervened)::

        remediator.observers.append(decision_counter(metrics.guard_decisions))
    """
    def observe(kind: str, detail: Mapping[str, Any]) -> None:
        if kind == "decision":
            counter.labels(guard=detail.get("guard") or "none",
                           verdict=detail.get("verdict") or "unknown").inc()
    return observe


def reload_rules(remediator: Remediator, site: Any) -> str:
    """Read the site's rules again (``serve``'s SIGHUP); a broken file keeps the rules in
    use and raises its InventoryError (file:line). Returns the file read."""
    path = rules_path(site.playbooks_dir)
    remediator.rules = load_rules(path, actions=remediator.actions.names(),
                                  verifiers=remediator.verifiers.names())
    return str(path)


# -- what the CLI shows ----------------------------------------------------------------------

def set_paused(site: Any, paused: bool, actor: str) -> None:
    """The kill switch (audited with ``actor``); the engine reads it at every decision."""
    site.state.set_remediation_setting("paused", paused, actor=actor)


def remediation_status(site: Any, *, now: float | None = None) -> dict[str, Any]:
    """Paused or not (by whom, since when), dry run, the rules file, running actions and the
    last hour's actions by outcome, incidents by state."""
    import time as _time

    store = site.state
    now = _time.time() if now is None else now
    settings = store.remediation_settings()
    paused = settings.get("paused", {})
    rules_doc: dict[str, Any] = {"file": str(rules_path(site.playbooks_dir))}
    dry_run = bool(settings.get("dry_run", {}).get("value", False))
    try:
        rules = load_rules(rules_path(site.playbooks_dir))
        rules_doc["rules"] = [r.name for r in rules.rules]
        rules_doc["policy"] = {k: sorted(v) if isinstance(v, frozenset) else v
                               for k, v in dataclasses.asdict(rules.policy).items()
                               if k != "kill_switch"}
        dry_run = dry_run or rules.policy.dry_run
    except MetalchainError as exc:
        rules_doc["error"] = str(exc)
    recent: dict[str, int] = {}
    for act in store.actions(since=now - 3600):
        recent[act.outcome] = recent.get(act.outcome, 0) + 1
    engine = settings.get("engine", {})
    owner = engine.get("value") if isinstance(engine.get("value"), dict) else None
    if owner is not None and owner.get("host") == socket.gethostname() \
            and not same_process(int(owner.get("pid", 0)), int(owner.get("start", 0))):
        owner = None   # its process is gone
    return {"paused": bool(paused.get("value", False)), "paused_by": paused.get("actor"),
            "paused_at": paused.get("updated_at"), "dry_run": dry_run, "rules": rules_doc,
            "engine": None if owner is None else {"host": owner.get("host"),
                                                  "pid": owner.get("pid"),
                                                  "since": engine.get("updated_at")},
            "running": [a.to_json() for a in store.actions(running=True)],
            "actions_last_hour": recent, "incidents": store.incident_counts()}


def incident_doc(site: Any, incident_id: int) -> dict[str, Any] | None:
    """One incident with its timeline and actions (None: no such incident)."""
    store = site.state
    inc = store.incident(incident_id)
    if inc is None:
        return None
    return {"incident": inc.to_json(), "timeline": store.incident_timeline(incident_id),
            "actions": [a.to_json() for a in store.actions(incident_id=incident_id)]}
