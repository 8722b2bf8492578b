"""The application core for runs: start a run, resume one, plan one.

What the CLI, ``metalchain serve`` and (next) remediation and workers call, the same way::

    report = start_run(site, load(site, "site.yml"), RunOptions(limit="web*", check=True))
    report.exit_code, report.counts()

A run is: a row in the state store (its kind, playbook and arguments, so ``--resume`` can
redo it), an event log ``SITE/runs/RUN.jsonl``, a runner over the in-process backend whose
outcomes are masked with every secret value the site knows, and the lease of every host it
changes (:mod:`orchestrate.leases`).

Leases: a run that can change hosts (not ``check``, not exec/facts/verify/power status) takes
the lease of every host it selects, once, before the first connection, for the whole run —
not per batch: a rolling run keeps its later batches from being taken by another actor
between two batches, and what it will touch is known and shown up front. A host held by
another holder is not run: the report names it in ``held`` ("held by run X (pid N on HOST,
`command`) since T") and the exit code is not 0; with ``RunOptions.wait`` the run first waits
up to that many seconds for every selected host to be free. This replaces the per-playbook
lock file of earlier versions: two runs of different playbooks (or of ``apply --role`` and
``drift --fix``) on one host were never kept apart by it, and two runs of one playbook are
kept apart by the leases of its hosts.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configure.connect import connector
from inventory.errors import InputError, MetalchainError
from inventory.model import Inventory
from inventory.select import select_hosts, select_play_hosts
from inventory.state.leases import HEARTBEAT_INTERVAL
from inventory.state.runowner import HEARTBEAT_EVERY, this_process
from orchestrate.backend import DEFAULT_PARALLELISM, LocalBackend
from orchestrate.events import EventLog
from orchestrate.leases import describe_command, host_leases
from orchestrate.mirror_site import mirror_var
from orchestrate.monitoring import after_run
from orchestrate.playbook import Play, Playbook, Step, batches, load_playbook
from orchestrate.receiving import event_vars
from orchestrate.registry import build_registry
from orchestrate.reports import RunReport
from orchestrate.runner import Runner, last_failed_hosts, resume_state, run_outcome
from orchestrate.steps import StepRegistry
from orchestrate.stop import Stop
from orchestrate.validation import Problem, RunInputs, ValidationError, check_run
from runtime.crashpoint import crash_point

Listener = Callable[[dict[str, Any]], None]

#: Run kinds that never change a host: they take no lease (and so are never kept waiting).
#: ``exec`` is an operator's ad-hoc command, often a look at a host another run is changing.
LEASE_FREE_KINDS = ("exec", "facts", "verify")
#: Why a run stops when a heartbeat finds one of its leases gone (broken, or expired and taken).
LEASE_LOST = "a host lease was lost (broken by hand, or expired and taken over)"
#: Seconds between two heartbeats of a run's host leases.
LEASE_HEARTBEAT = HEARTBEAT_INTERVAL


@dataclass(frozen=True)
class RunOptions:
    """How to run a playbook. ``kind`` names the run in the state store (playbook, apply,
    drift, exec, facts, power, verify); ``named`` adds host lists for ``@NAME`` targets
    besides ``@failed``. ``leases``: take the hosts' leases (when the run can change them);
    ``wait``: seconds to wait for hosts held by another run (None: skip them at once);
    ``command``: what other runs are told holds their hosts (default: this process's command
    line without ``-e`` values); ``retry``: ``provision`` steps start over nodes that are
    provision_failed (as ``metalchain provision --retry`` does)."""

    kind: str = "playbook"
    limit: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    check: bool = False
    diff: bool = False
    parallel: int = DEFAULT_PARALLELISM
    resume: str | None = None
    named: Mapping[str, Sequence[str]] = field(default_factory=dict)
    leases: bool = True
    wait: float | None = None
    command: str | None = None
    retry: bool = False

    @property
    def takes_leases(self) -> bool:
        return self.leases and not self.check and self.kind not in LEASE_FREE_KINDS


def find_playbook(site: Any, name: str) -> Path:
    for candidate in (Path(name), site.playbooks_dir / name,
                      site.playbooks_dir / f"{name}.yml"):
        if candidate.is_file():
            return candidate.resolve()
    raise InputError(f"playbook not found: {name} (looked in . and {site.playbooks_dir})")


def load(site: Any, name: str, registry: StepRegistry | None = None) -> Playbook:
    """Find and validate a playbook (a file, or a name under the site's playbooks/)."""
    return load_playbook(find_playbook(site, name), registry or build_registry())


def single_step_playbook(target: str, kind: str, args: Any, name: str,
                         timeout: float | None = None) -> Playbook:
    """A playbook of one play with one step: what exec, facts, apply --role, drift, power
    and verify run."""
    step = Step(index=0, name=name, kind=kind, args=args, retries=0, delay=0,
                timeout=timeout, file=f"<{kind}>", line=0)
    play = Play(index=0, name=kind, hosts=target, serial=(), max_fail_percentage=None,
                steps=(step,), file=f"<{kind}>", line=0)
    return Playbook(path=Path(f"<{kind}>"), plays=[play])


def _resumed(store: Any, playbook: Playbook, options: RunOptions
             ) -> tuple[RunOptions, dict[tuple[str, int], str]]:
    """The options of the run being resumed (limit, extra vars, check) under the new ones,
    and what it recorded."""
    uid = options.resume or ""
    prior = store.get_run(uid)
    if prior is None:
        raise InputError(f"no run '{uid}' in the state store (see: metalchain runs list)")
    if prior["name"] != str(playbook.path):
        raise InputError(f"run {uid} was of {prior['name']}, not {playbook.path}")
    args = prior["args"]
    merged = RunOptions(kind=options.kind, limit=options.limit or args.get("limit"),
                        extra={**args.get("extra", {}), **options.extra},
                        check=options.check or bool(args.get("check")), diff=options.diff,
                        parallel=options.parallel, resume=uid, named=options.named,
                        leases=options.leases, wait=options.wait, command=options.command,
                        retry=options.retry)
    return merged, resume_state(store, uid)


def start_run(site: Any, playbook: Playbook, options: RunOptions, *,
              on_event: Listener | None = None, registry: StepRegistry | None = None,
              connect: Callable[[str], Any] | None = None,
              stop: Stop | None = None, provisioner: Any = None) -> RunReport:
    """Run ``playbook`` on the site (or resume ``options.resume``); returns the report.

    ``on_event`` gets every event as it happens (a progress display, a websocket).
    ``connect`` replaces the SSH connection factory (host -> connection), ``registry`` the
    step kinds (tests, embedders). ``stop.request()`` (from any thread, or a signal handler)
    ends the run early: first after the steps in progress, the second time at once; the
    report then says ``interrupted`` and the run's status is ``interrupted``/``aborted``.

    ``provisioner`` is what the run's ``provision`` steps call; by default a
    :class:`~orchestrate.provisioning.RunProvisioning` of the site that starts a boot server
    only when a node needs one and stops it when the run ends. ``monitor`` steps share one
    :class:`~orchestrate.monitor_step.RunMonitoring` per run.
    """
    preflight(site, playbook, options, registry=registry)
    report = _run(site, playbook, options, on_event, registry, connect, stop or Stop(),
                  provisioner)
    after_run(site, options.kind, options.check)   # autodiscovery: newly applied hosts
    return report


def _public_key(site: Any) -> str | None:
    """The controller's public SSH key (what new guests authorize), if the site has one."""
    path = site.ssh_key_path.with_suffix(".pub") if site.ssh_key_path else None
    try:
        return path.read_text(encoding="utf-8") if path is not None else None
    except OSError:
        return None


def _command(site: Any, options: RunOptions) -> str:
    """The owner's command as the state store shows it (in the run and in its leases): this
    process's command line without ``-e`` values, masked with the site's secrets."""
    return site.secrets.masker().text(options.command or describe_command(sys.argv))


@contextlib.contextmanager
def _heartbeat(store: Any, uid: str, every: float = HEARTBEAT_EVERY) -> Iterator[None]:
    """Refresh the run's heartbeat while it runs (controllers on other hosts go by it)."""
    done = threading.Event()

    def beat() -> None:
        while not done.wait(every):
            with contextlib.suppress(MetalchainError):   # the next beat tries again
                store.heartbeat_run(uid)

    thread = threading.Thread(target=beat, name=f"heartbeat-{uid}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(5)   # a beat in flight ends before the run's end is recorded


def _status(report: RunReport) -> str:
    if report.interrupted:
        return report.interrupted
    return "ok" if report.exit_code == 0 else "failed"


def run_problems(site: Any, playbook: Playbook, options: RunOptions, *,
                 registry: StepRegistry | None = None) -> list[Problem]:
    """Everything that would stop ``playbook`` with ``options`` that is known before any
    host is contacted (see :mod:`orchestrate.validation`); [] when there is nothing."""
    store = site.state
    if options.resume:
        options = _resumed(store, playbook, options)[0]
    named = {"failed": last_failed_hosts(store), **options.named}
    inputs = RunInputs(inventory=site.inventory, registry=registry or build_registry(),
                       playbooks_dir=site.playbooks_dir, limit=options.limit,
                       extra=dict(options.extra), named=named, facts=store.all_facts(),
                       context={"metalchain_mirror": mirror_var(site)})
    mask = site.secrets.masker()
    return [Problem(p.source, mask.text(p.message), p.hosts) for p in check_run(playbook, inputs)]


def preflight(site: Any, playbook: Playbook, options: RunOptions, *,
              registry: StepRegistry | None = None) -> None:
    """Raise :class:`ValidationError` (exit code 2, one line per problem) if the run would
    fail on something known without a host; called before the first connection."""
    problems = run_problems(site, playbook, options, registry=registry)
    if problems:
        raise ValidationError(problems)


def _run(site: Any, playbook: Playbook, options: RunOptions, on_event: Listener | None,
         registry: StepRegistry | None, connect: Callable[[str], Any] | None,
         stop: Stop, provisioner: Any = None) -> RunReport:
    from orchestrate.monitor_step import RunMonitoring
    from orchestrate.provisioning import ProvisionOptions, RunProvisioning

    store = site.state
    inv = site.inventory
    # After the inventory: the {env: VAR} references it resolved are known values too.
    mask = site.secrets.masker()
    named = {"failed": last_failed_hosts(store), **options.named}
    facts = store.all_facts()
    done: dict[tuple[str, int], str] = {}
    if options.resume:
        options, done = _resumed(store, playbook, options)
        store.reopen_run(options.resume, this_process(_command(site, options)))
        uid = options.resume
    else:
        uid = store.start_run(options.kind, str(playbook.path),
                              {"limit": options.limit, "extra": dict(options.extra),
                               "check": options.check},
                              owner=this_process(_command(site, options)),
                              outcome={"planned": selected_hosts(inv, playbook, options.limit,
                                                                 named, facts)})
    events = EventLog(site.runs_dir / f"{uid}.jsonl", uid, mask)
    if on_event is not None:
        events.subscribe(on_event)
    # Nothing starts until a step needs it (a node to install, the monitoring stack).
    # A node's lifecycle goes to the run's event log as it happens (node_state events).
    provisioning = provisioner if provisioner is not None else RunProvisioning(
        site, ProvisionOptions(retry=options.retry),
        on_change=lambda node, state, reason: events.emit(
            "node_state", host=node, state=str(state), reason=reason[:2000]))
    backend = LocalBackend(
        inv, store, registry or build_registry(),
        connect or connector(inv, store, site.private_key()), parallelism=options.parallel,
        options={"playbooks_dir": site.playbooks_dir, "diff": options.diff,
                 "inventory": inv, "vars": {"metalchain_mirror": mirror_var(site)},
                 "ssh_public_key": _public_key(site),
                 "host_vars": event_vars(site), "provisioner": provisioning,
                 "monitoring": RunMonitoring(site)},
        mask=mask)
    status, outcome = "failed", None
    try:
        with _heartbeat(store, uid), _leases(site, playbook, options, uid, named, facts,
                                             stop) as grant:
            try:
                report = Runner(inv, backend).run(
                    playbook, events=events, run_uid=uid, limit=options.limit,
                    extra_vars=options.extra, check=options.check, named=named, done=done,
                    facts=facts, stop=stop,
                    exclude=list(grant.held) if grant is not None else ())
            except BaseException as exc:
                if provisioner is None:
                    _end_provisioning(provisioning, events, "interrupted (KeyboardInterrupt)"
                                      if isinstance(exc, KeyboardInterrupt) else
                                      "the run ended with an error")
                raise
            if provisioner is None:   # the run's own: its boot server ends with it, while
                # the run still holds the nodes' leases
                _end_provisioning(provisioning, events, "aborted by a stop request"
                                  if stop.aborting else "the run ended")
            if grant is not None:
                report.held = {h: lease.describe() for h, lease in grant.held.items()}
        if report.interrupted == "interrupted" and stop.source == LEASE_LOST:
            # Not an operator's stop: a failure of the run (exit 1), the hosts not run named.
            report.interrupted = ""
            report.stopped_reason = f"stopped after the steps in progress: {LEASE_LOST}"
        status, outcome = _status(report), run_outcome(report)
    except KeyboardInterrupt:
        status = "aborted"
        raise
    finally:
        crash_point("run.before_end")
        events.close()
        store.end_run(uid, status, outcome)
    return report


def _end_provisioning(provisioning: Any, events: EventLog, why: str) -> None:
    """Stop what the run's provisioning started; the nodes it failed become events. Never
    raises: it runs on the way out of a run, maybe of one that failed for another reason."""
    try:
        failed = provisioning.close(why)
    except Exception as exc:  # noqa: BLE001 - the run's own outcome (or error) comes first
        events.emit("provisioning_not_closed", error=f"{exc.__class__.__name__}: {exc}")
        return
    for node, reason in failed.items():
        events.emit("node_failed", host=node, reason=reason)


def _leases(site: Any, playbook: Playbook, options: RunOptions, uid: str,
            named: Mapping[str, Sequence[str]], facts: Mapping[str, Any], stop: Stop
            ) -> contextlib.AbstractContextManager[Any]:
    """The leases of every host the run selects (None inside: the run takes none)."""
    if not options.takes_leases:
        return contextlib.nullcontext(None)
    hosts = selected_hosts(site.inventory, playbook, options.limit, named, facts)
    def lost() -> None:   # another actor may be on one of our hosts: start nothing more
        if not stop.stopping:
            stop.request(LEASE_LOST)

    return host_leases(site.state, hosts, uid, _command(site, options), wait=options.wait,
                       heartbeat=LEASE_HEARTBEAT, cancelled=lambda: stop.stopping,
                       on_lost=lost)


def selected_hosts(inv: Inventory, playbook: Playbook, limit: str | None,
                   named: Mapping[str, Sequence[str]], facts: Mapping[str, Any]) -> list[str]:
    """Every host some play of ``playbook`` selects, in first-seen order."""
    hosts: dict[str, None] = {}
    for play in playbook.plays:
        hosts.update(dict.fromkeys(select_play_hosts(inv, play.hosts, limit, named, facts)))
    return list(hosts)


def plan_run(site: Any, playbook: Playbook, limit: str | None = None, *,
             extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What would run where: per play its hosts, batches and steps (nothing is contacted).
    Validated like the run itself (:func:`preflight`): a plan that the run would fail is a
    :class:`ValidationError`, not a plan."""
    preflight(site, playbook, RunOptions(limit=limit, extra=dict(extra or {})))
    named = {"failed": last_failed_hosts(site.state)}
    facts = site.state.all_facts()
    plays = []
    for play in playbook.plays:
        hosts = select_play_hosts(site.inventory, play.hosts, limit, named, facts)
        plays.append({"play": play.name, "hosts": hosts,
                      "batches": batches(hosts, play.serial),
                      "max_fail_percentage": play.max_fail_percentage,
                      "steps": [{"name": s.name, "kind": s.kind, "retries": s.retries,
                                 "source": f"{s.file}:{s.line}"} for s in play.steps]})
    return {"playbook": str(playbook.path), "plays": plays}


def select(site: Any, target: str, limit: str | None = None) -> list[str]:
    """The hosts ``target`` names (``@failed`` and fact selectors included)."""
    store = site.state
    return select_hosts(site.inventory, target, limit, {"failed": last_failed_hosts(store)},
                        store.all_facts())
