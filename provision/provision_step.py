"""The ``provision`` step kind: one node from its current state to ``active``, as a step of
a run, so provisioning is journaled, bounded and fanned out by the runner like any other run.

The step calls the run's :class:`NodeProvisioner` (``ctx.options["provisioner"]``, or the one
it was built with): whoever starts the run decides the boot server, the deploy service and who
receives the callbacks (``metalchain provision``, ``serve``, and for every other run
:class:`orchestrate.provisioning.RunProvisioning`, which starts a boot server only when a node
needs one). The step itself runs one node. It talks to the node's BMC (through the
provisioner) and watches the state store; it never opens an SSH connection through the run
(``ctx.connection()`` is lazy and is not called).

A node that is ``active`` and answers SSH with its pinned host key is left alone (``ok``,
its BMC untouched) unless the provisioner says ``force``: a second run of a playbook changes
nothing. An active node that does not answer fails the step; reinstalling it is an
operator's decision (``metalchain provision NODE --force``), never a playbook's side effect.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from inventory.contracts import HostContext, StepOutcome
from inventory.errors import InputError
from inventory.model import Host
from provision import lifecycle as lc
from provision.provisioner import NodeResult
from provision.sshcheck import ssh_answers_with

#: Of a step's own ``timeout:``, the part kept for the step to fail its node and report
#: before the runner gives up on it (the provisioner's deadline comes first).
REPORT_GRACE = 30.0
#: seconds one SSH probe of an active node may take (a key exchange on a busy TCG node)
ACTIVE_PROBE_TIMEOUT_S = 10.0


class NodeProvisioner(Protocol):
    #: reinstall active nodes (``provision --force``)
    force: bool
    #: wall-clock time by which every node must be active (``provision --timeout``), or None
    deadline: float | None

    def provision_one(self, host: Host, deadline: float | None = None) -> NodeResult: ...


def node_doc(result: NodeResult) -> dict[str, Any]:
    """What the step reports (JSON-safe): the node's state, reason, duration and timings."""
    return {"node": result.node, "state": None if result.state is None else str(result.state),
            "reason": result.reason, "seconds": result.seconds,
            "timings": dict(result.timings), "error": result.error}


def answers_as_active(host: Host, store: Any) -> bool:
    """Is ``host`` active in the store, and does SSH answer with its pinned key?"""
    return active_and_answering(host, store)[0]


def active_and_answering(host: Host, store: Any) -> tuple[bool, str]:
    """:func:`answers_as_active` and, when not, why (a host key that differs is named by
    both fingerprints: the IP moved to another machine, or the node was reinstalled)."""
    rec = store.node(host.name)
    if rec is None or rec.state != lc.ACTIVE:
        return False, f"{host.name} is {rec.state if rec and rec.state else 'not provisioned'}"
    # A busy emulated node can take seconds for a key exchange: a patient probe with one
    # retry, against every pinned key (a node is never reinstalled by a playbook anyway).
    keys = store.host_keys_of(host.name)
    if not keys or not host.address:
        return False, f"{host.name} has no pinned host key or no address"
    reasons: list[str] = []
    for _attempt in range(2):
        for key in keys:
            ok, why = ssh_answers_with(host.address, key, port=host.ssh.port,
                                       timeout=ACTIVE_PROBE_TIMEOUT_S)
            if ok:
                return True, ""
            if why not in reasons:
                reasons.append(why)
    return False, "; ".join(reasons)


class ProvisionStep:
    name = "provision"
    description = "install the host's bare-metal node and bring it to active"

    def __init__(self, provisioner: NodeProvisioner | None = None, *,
                 deadline: float | None = None) -> None:
        #: None: the run's (``ctx.options["provisioner"]``)
        self.provisioner = provisioner
        #: wall-clock time by which every node must be active (besides the provisioner's)
        self.deadline = deadline

    def parse(self, raw: Any) -> None:
        if raw not in (None, {}, True):
            raise ValueError("the provision step takes no arguments (the image, BMC and "
                             "MAC come from the inventory)")

    @staticmethod
    def host_problem(host: Host) -> str | None:
        """Why ``host`` cannot be provisioned, known from the inventory (run validation
        reports it before any host is contacted), or None."""
        if host.bmc is None or host.provision is None or not host.provision.mac:
            return "provision needs bmc and provision.mac in the inventory"
        return None

    def run(self, ctx: HostContext, args: None) -> StepOutcome:
        inventory = ctx.options.get("inventory")
        if inventory is None:
            raise InputError("the provision step needs the inventory in the run's options")
        prov: NodeProvisioner | None = self.provisioner or ctx.options.get("provisioner")
        if prov is None:
            raise InputError("the provision step needs the run's provisioner (runs started "
                             "by orchestrate.runs.start_run have one)")
        host = inventory.host(ctx.host)
        rec = ctx.state.node(host.name) if ctx.state is not None else None
        if rec is not None and rec.state == lc.ACTIVE and not prov.force:
            return self._active(ctx, host)
        if ctx.check:
            return StepOutcome("changed", "would provision", changes=["provision"])
        result = prov.provision_one(host, self._deadline(ctx, prov))
        doc = node_doc(result)
        if result.ok:
            return StepOutcome("changed", f"active after {result.seconds:.1f} s",
                               changes=["provisioned"], data={"node": doc})
        message = result.error or f"{result.state}: {result.reason}"
        return StepOutcome("failed", message[:2000], data={"node": doc})

    @staticmethod
    def _active(ctx: HostContext, host: Host) -> StepOutcome:
        doc = {"node": host.name, "state": lc.ACTIVE, "reason": "", "seconds": 0.0,
               "timings": {}, "error": ""}
        ok, why = active_and_answering(host, ctx.state)
        if ok:
            return StepOutcome("ok", "active; SSH answers with its pinned host key",
                               data={"node": doc})
        doc["error"] = message = (
            f"{host.name} is active but SSH does not answer with its pinned host key "
            f"({why}); refusing it: "
            f"check it (metalchain power status {host.name}), or reinstall it with "
            f"metalchain provision {host.name} --force")
        return StepOutcome("failed", message, data={"node": doc})

    def _deadline(self, ctx: HostContext, prov: NodeProvisioner) -> float | None:
        """The earliest of the step's, this kind's and the provisioner's deadlines, as
        wall-clock time (the provisioner compares it with the store's transition times;
        the run's deadline is monotonic). Of the step's own ``timeout:`` a grace is kept
        so the node is failed and reported before the runner gives up on the step."""
        step = None
        if ctx.deadline is not None:
            left = ctx.deadline - time.monotonic()
            step = time.time() + left - min(REPORT_GRACE, left / 10)
        deadlines = [d for d in (self.deadline, prov.deadline, step) if d is not None]
        return min(deadlines) if deadlines else None
