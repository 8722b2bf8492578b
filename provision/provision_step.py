"""The ``provision`` step kind: one node from its current state to ``active``, as a step of
a run, so provisioning is journaled, bounded and fanned out by the runner like any other run.

The step holds the :class:`~provision.provisioner.Provisioner` its caller built (boot
server, deploy service, who receives callbacks): ``metalchain provision``, ``serve`` and,
next, remediation make that choice; the step itself runs one node. It talks to the node's
BMC and watches the state store; it never opens an SSH connection through the run
(``ctx.connection()`` is lazy and is not called).
"""

from __future__ import annotations

import time
from typing import Any

from inventory.contracts import HostContext, StepOutcome
from inventory.errors import InputError
from provision.provisioner import NodeResult, Provisioner


def node_doc(result: NodeResult) -> dict[str, Any]:
    """What the step reports (JSON-safe): the node's state, reason, duration and timings."""
    return {"node": result.node, "state": None if result.state is None else str(result.state),
            "reason": result.reason, "seconds": result.seconds,
            "timings": dict(result.timings), "error": result.error}


class ProvisionStep:
    name = "provision"
    description = "install the host's bare-metal node and bring it to active"

    def __init__(self, provisioner: Provisioner, *, deadline: float | None = None) -> None:
        self.provisioner = provisioner
        #: wall-clock time by which every node must be active (``provision --timeout``)
        self.deadline = deadline

    def parse(self, raw: Any) -> None:
        if raw not in (None, {}, True):
            raise ValueError("the provision step takes no arguments (the image, BMC and "
                             "MAC come from the inventory)")

    def run(self, ctx: HostContext, args: None) -> StepOutcome:
        inventory = ctx.options.get("inventory")
        if inventory is None:
            raise InputError("the provision step needs the inventory in the run's options")
        if ctx.check:
            return StepOutcome("changed", "would provision", changes=["provision"])
        # The provisioner keeps wall-clock deadlines (they are compared with the store's
        # transition times); the run's deadline is monotonic.
        deadlines = [d for d in (self.deadline, None if ctx.deadline is None else
                                 time.time() + (ctx.deadline - time.monotonic()))
                     if d is not None]
        deadline = min(deadlines) if deadlines else None
        result = self.provisioner.provision_one(inventory.host(ctx.host), deadline)
        doc = node_doc(result)
        if result.ok:
            return StepOutcome("changed", f"active after {result.seconds:.1f} s",
                               changes=["provisioned"], data={"node": doc})
        message = result.error or f"{result.state}: {result.reason}"
        return StepOutcome("failed", message[:2000], data={"node": doc})
