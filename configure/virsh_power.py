"""The ``vm_power`` step kind: a guest's power through libvirt on its hypervisor.

A guest (an inventory host with a ``vm:`` section) has no BMC; its hypervisor is what a BMC
is to a machine. ``metalchain power status|on|off|cycle|soft-off GUEST`` (and the ``restart_vm``
remediation's ``reset``) run this step **on the hypervisor**, over its ordinary SSH connection
with its pinned host key, in a journaled run that holds the hypervisor's lease like any step
that changes it::

    vm_power: {action: status, guests: [vm1, vm2]}   # on, off, cycle, soft-off, status

The step acts only on the guests the inventory places on the host it runs on (another host's
guest in the list is left to that host's step). The domain is the guest's inventory name (what
the ``vm`` resource defines); one fixed script per action, with the domain and the libvirt URI
as arguments (``$1``, ``$2``), never part of the script; each call has a timeout and its exit
status checked. ``on`` starts a shut-off domain (resumes a paused one), ``off`` is a hard stop
(``virsh destroy``), ``cycle`` a hard stop then a start (what a BMC's power cycle is: a fresh
boot, also from off), ``soft-off`` asks the guest to shut down (ACPI). Defining, changing or
removing a domain is the ``vm`` step's job, not this one's: a domain that does not exist is an
error that says to run it.

``data["guests"]``: guest -> ``{ok, result, state, error}``; ``result`` is ``on``/``off`` for
``status`` (``state``: libvirt's own word) and what was done otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from inventory.contracts import HostContext, StepOutcome, time_left
from inventory.errors import InputError, TransportError

ACTIONS = ("status", "on", "off", "cycle", "soft-off")
LIBVIRT_URI = "qemu:///system"
#: Seconds one virsh call may take when the step has no ``timeout:``.
DEFAULT_TIMEOUT = 30.0

_STATE = 'state=$(virsh -q -c "$2" domstate -- "$1") || exit $?; '
#: One script per action; ``$1`` the domain, ``$2`` the libvirt URI. Each prints what it did.
SCRIPTS: Mapping[str, str] = {
    "status": 'exec virsh -q -c "$2" domstate -- "$1"',
    "on": _STATE + 'case "$state" in running) echo already on ;; '
                   'paused) virsh -q -c "$2" resume -- "$1" >/dev/null && echo resumed ;; '
                   '*) virsh -q -c "$2" start -- "$1" >/dev/null && echo powered on ;; esac',
    "off": _STATE + 'case "$state" in "shut off") echo already off ;; '
                    '*) virsh -q -c "$2" destroy -- "$1" >/dev/null && echo powered off ;; '
                    'esac',
    "cycle": _STATE + 'case "$state" in "shut off") ;; '
                      '*) virsh -q -c "$2" destroy -- "$1" >/dev/null || exit $? ;; esac; '
                      'virsh -q -c "$2" start -- "$1" >/dev/null && echo cycled',
    "soft-off": 'virsh -q -c "$2" shutdown -- "$1" >/dev/null && echo soft off requested',
}
#: libvirt's domain states (``virsh domstate``) and the power state each one is.
DOMAIN_POWER: Mapping[str, str] = {
    "running": "on", "idle": "on", "paused": "on", "in shutdown": "on", "blocked": "on",
    "pmsuspended": "on", "shut off": "off", "crashed": "off", "dying": "off",
}


@dataclass(frozen=True)
class VmPowerArgs:
    action: str
    guests: tuple[str, ...]


def parse_vm_power(raw: Any) -> VmPowerArgs:
    if not isinstance(raw, dict):
        raise ValueError("expected {action: on|off|cycle|soft-off|status, guests: [NAME, ...]}")
    unknown = [k for k in raw if k not in ("action", "guests")]
    if unknown:
        raise ValueError(f"unknown key '{unknown[0]}'; allowed: action, guests")
    action = raw.get("action")
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    guests = raw.get("guests")
    if not isinstance(guests, list) or not guests or not all(
            isinstance(g, str) and g for g in guests):
        raise ValueError("guests must be a non-empty list of guest names")
    return VmPowerArgs(action, tuple(dict.fromkeys(guests)))


def power_argv(action: str, domain: str, uri: str = LIBVIRT_URI) -> tuple[str, ...]:
    """The command for one action on one domain: a fixed script, the values its arguments.

    >>> power_argv("status", "vm1")[-3:]
    ('vm_power', 'vm1', 'qemu:///system')
    """
    return ("sh", "-c", SCRIPTS[action], "vm_power", domain, uri)


def domain_power(text: str) -> tuple[str, str]:
    """``virsh domstate`` output -> (power ``on``/``off``, libvirt's state); ValueError for
    anything else (a script that printed something unexpected is a failure, never "off")."""
    state = " ".join(text.split()).lower()
    power = DOMAIN_POWER.get(state)
    if power is None:
        raise ValueError(f"virsh domstate answered {text.strip()[:80]!r}")
    return power, state


def guests_here(inventory: Any, host: str, guests: tuple[str, ...]) -> list[str]:
    """The guests of ``guests`` whose ``vm.hypervisor`` is ``host``; InputError for a name
    that is not a guest of the inventory."""
    out = []
    for name in guests:
        h = inventory.host(name)
        if h.vm is None:
            raise InputError(f"{name} is not a guest (no vm: section in the inventory)")
        if h.vm.hypervisor == host:
            out.append(name)
    return out


class VmPowerStep:
    name = "vm_power"
    description = "a guest's power through libvirt on its hypervisor (status/on/off/cycle)"
    parse = staticmethod(parse_vm_power)

    def run(self, ctx: HostContext, args: VmPowerArgs) -> StepOutcome:
        inventory = ctx.options.get("inventory")
        if inventory is None:
            raise InputError("the vm_power step needs the inventory in the run's options")
        here = guests_here(inventory, ctx.host, args.guests)
        if not here:
            return StepOutcome("ok", f"no guest of {ctx.host} among {', '.join(args.guests)}")
        if ctx.check and args.action != "status":
            return StepOutcome("changed", f"would {args.action} {', '.join(here)}",
                               changes=[f"{args.action} {g}" for g in here])
        results: dict[str, dict[str, Any]] = {}
        for guest in here:
            results[guest] = self._one(ctx, args.action, guest)
        failed = [g for g, r in results.items() if not r["ok"]]
        changed = [g for g, r in results.items()
                   if r["ok"] and args.action != "status" and not r["result"].startswith(
                       "already")]
        message = "; ".join(f"{g}: {r['result'] if r['ok'] else r['error']}"
                            for g, r in results.items())
        status = "failed" if failed else "changed" if changed else "ok"
        return StepOutcome(status, message[:1000],
                           changes=[f"{args.action} {g}" for g in changed],
                           data={"guests": results})

    def _one(self, ctx: HostContext, action: str, guest: str) -> dict[str, Any]:
        timeout = time_left(ctx.deadline, DEFAULT_TIMEOUT)
        try:
            result = ctx.connection().run(list(power_argv(action, guest)), timeout=timeout,
                                          become=True)
        except TransportError as exc:
            return {"ok": False, "result": None, "state": None, "error": str(exc)[:500]}
        if not result.ok:
            tail = result.tail(3)
            hint = " (is it defined? the vm step defines it)" if "domain" in tail.lower() \
                else ""
            return {"ok": False, "result": None, "state": None,
                    "error": f"virsh on {ctx.host} exited {result.exit_code}: "
                             f"{tail[:400]}{hint}"}
        if action == "status":
            try:
                power, state = domain_power(result.stdout)
            except ValueError as exc:
                return {"ok": False, "result": None, "state": None, "error": str(exc)}
            return {"ok": True, "result": power, "state": state, "error": None}
        done = " ".join(result.stdout.split()) or action
        return {"ok": True, "result": done, "state": None, "error": None}
