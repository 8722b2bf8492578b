"""The ``power`` step kind: a BMC action on each host of a run, journaled like any step.

::

    power: {action: on}                     # on, off, cycle, soft-off, status
    power: {action: bootdev, device: network, persistent: false}

The step talks to the host's BMC through :func:`provision.drivers.driver_for` and never to
the host itself (``ctx.connection()`` is lazy and is not called). The host's BMC, with its
resolved password, comes from the inventory in the run's options (``ctx.options
["inventory"]``): on the backend side, never in what crosses the runner's interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from inventory.contracts import HostContext, StepOutcome, time_left
from inventory.errors import InputError
from provision.drivers import driver_for

ACTIONS = ("status", "on", "off", "cycle", "soft-off", "bootdev")
DEVICES = ("network", "disk")
#: What each action calls on the driver and what it reports once done.
_CALLS = {"on": ("power_on", "powered on"), "off": ("power_off", "powered off"),
          "cycle": ("power_cycle", "cycled"), "soft-off": ("soft_off", "soft off requested")}
#: Seconds a BMC call may take when the step has no ``timeout:``.
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class PowerArgs:
    action: str
    device: str | None = None
    persistent: bool = True


def parse_power(raw: Any) -> PowerArgs:
    if isinstance(raw, str):
        raw = {"action": raw}
    if not isinstance(raw, dict):
        raise ValueError("expected {action: on|off|cycle|soft-off|status|bootdev}")
    unknown = [k for k in raw if k not in ("action", "device", "persistent")]
    if unknown:
        raise ValueError(f"unknown key '{unknown[0]}'; allowed: action, device, persistent")
    action = raw.get("action")
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, got {action!r}")
    device = raw.get("device")
    if action == "bootdev":
        if device not in DEVICES:
            raise ValueError(f"bootdev needs device: {' or '.join(DEVICES)}, got {device!r}")
    elif device is not None:
        raise ValueError("device is only for action: bootdev")
    persistent = raw.get("persistent", True)
    if not isinstance(persistent, bool):
        raise ValueError("persistent must be true or false")
    return PowerArgs(action, device, persistent)


def power_action(bmc: Any, args: PowerArgs, timeout: float | None) -> str:
    """Run ``args`` on a BMC driver; returns what to report (the state, or what was done)."""
    if args.action == "status":
        return bmc.power_status(timeout=timeout)
    if args.action == "bootdev":
        setting = bmc.set_bootdev(args.device, persistent=args.persistent, timeout=timeout)
        return f"{setting.device} ({'persistent' if setting.persistent else 'next boot'})"
    method, done = _CALLS[args.action]
    getattr(bmc, method)(timeout=timeout)
    return done


class PowerStep:
    name = "power"
    description = "a BMC action: power on/off/cycle/soft-off/status, or set the boot device"
    parse = staticmethod(parse_power)

    def run(self, ctx: HostContext, args: PowerArgs) -> StepOutcome:
        inventory = ctx.options.get("inventory")
        if inventory is None:
            raise InputError("the power step needs the inventory in the run's options")
        if ctx.check and args.action != "status":
            return StepOutcome("changed", f"would {args.action}", changes=[args.action])
        timeout = time_left(ctx.deadline, DEFAULT_TIMEOUT) if ctx.deadline else None
        with driver_for(inventory.host(ctx.host)) as bmc:
            result = power_action(bmc, args, timeout)
        status = "ok" if args.action == "status" else "changed"
        return StepOutcome(status, result, data={"result": result})
