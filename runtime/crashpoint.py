"""Named crash points: a test-only way to SIGKILL this process at an exact place.

The crash campaign (``bench/crash.py``, ``tests/lab/test_crash.py``) kills the controller at
random wall-clock moments, but the windows that matter most — between a journal intent and
the step, between the probe round trip and the action script, between the receiver's answer
and the remediation — last milliseconds. With ``METALCHAIN_CRASH_AT=NAME`` (or ``NAME#N``:
the N-th time that point is reached, 1-based; several comma-separated) the process sends
itself SIGKILL when it reaches the named point: no handler, no ``finally``, no flush runs, as
in a power cut of the controller.

Unset (every real run) a crash point costs one environment lookup. Nothing reads the variable
but :func:`crash_point`; the names are listed in :data:`POINTS` so a test can check each one
is reached.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "METALCHAIN_CRASH_AT"

#: Every crash point, with where it is.
POINTS = {
    "run.step_intent": "a host-step's intent is journaled; the step has not started",
    "run.step_done": "a host-step ran; its outcome is not journaled yet",
    "run.before_end": "every host is done; the run's end is not recorded yet",
    "apply.before_act": "the probes came back and were decided; no action script sent yet",
    "apply.after_act": "the action script ended on the host; its result not read yet",
    "serve.after_ack": "the receiver answered the webhook; remediation not told yet",
    "serve.claimed": "an incident was claimed (acting); no decision recorded yet",
    "serve.action_started": "a remediation action is recorded running; not called yet",
    "serve.action_done": "a remediation action returned; its end not recorded yet",
    "provision.<state>": "a node's move to <state> (powering_on, pxe_booting, installing, "
                         "installed, rebooting, active, provision_failed) is committed",
}

_lock = threading.Lock()
_hits: dict[str, int] = {}


def _wanted(spec: str) -> dict[str, int]:
    """``"a,b#3"`` -> ``{"a": 1, "b": 3}`` (malformed counts mean the first hit)."""
    out: dict[str, int] = {}
    for part in spec.split(","):
        name, _, count = part.strip().partition("#")
        if name:
            out[name] = int(count) if count.isdigit() and int(count) > 0 else 1
    return out


def crash_point(name: str) -> None:
    """SIGKILL this process if ``$METALCHAIN_CRASH_AT`` names ``name`` (see the module doc)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    want = _wanted(spec).get(name)
    if want is None:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name]
    if hit == want:
        os.kill(os.getpid(), signal.SIGKILL)
