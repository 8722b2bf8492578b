"""Stopping a run from outside it: first gracefully, then at once.

A :class:`Stop` is handed to :func:`orchestrate.runs.start_run`; whoever wants the run to end
calls :meth:`Stop.request` (the CLI's SIGINT/SIGTERM handler, ``metalchain serve`` cancelling
a run, remediation). Its states only go forward::

    RUNNING --request--> STOPPING --request--> ABORTING

STOPPING: no new batch, host or step is started; the steps in progress run to their end
(bounded by their ``timeout:``); then the summary, status ``interrupted``, exit code 130.
ABORTING: the runner gives up on the steps in progress now (their connections are closed,
their journal entries marked), status ``aborted``, exit code 130.

Why no lock and no listeners: the CLI calls :meth:`request` from a signal handler, which runs
in the main thread between two bytecodes — possibly while that thread holds any lock the run
uses. So a request only assigns an int (atomic under the GIL); the batch waiter in
:mod:`orchestrate.backend` looks at it at least every :data:`POLL` seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

RUNNING, STOPPING, ABORTING = "running", "stopping", "aborting"
_STATES = (RUNNING, STOPPING, ABORTING)
#: Seconds between two looks of the batch waiter at a stop request (the acknowledgement's delay).
POLL = 0.2


class Stop:
    """A run's stop request (see the module docstring). ``Stop().request()`` -> 'stopping'."""

    def __init__(self) -> None:
        self._level = 0
        self._announced = 0
        self.source = ""

    @property
    def state(self) -> str:
        return _STATES[self._level]

    @property
    def stopping(self) -> bool:
        """True once a stop was requested: start nothing new."""
        return self._level >= 1

    @property
    def aborting(self) -> bool:
        """True once an abort was requested: give up on what is running, now."""
        return self._level >= 2

    def request(self, source: str = "") -> str:
        """One step further (running -> stopping -> aborting); returns the new state."""
        if source:
            self.source = source
        self._level = min(self._level + 1, len(_STATES) - 1)
        return self.state

    def abort(self, source: str = "") -> None:
        """Straight to aborting."""
        if source:
            self.source = source
        self._level = len(_STATES) - 1

    def news(self) -> str | None:
        """The state, the first time it is asked for after it changed; else None. The runner
        announces each state once (the "stopping after the current step on ..." line)."""
        level = self._level
        if level <= self._announced:
            return None
        self._announced = level
        return _STATES[level]


def announce(stop: Stop, events: Any, running: Mapping[str, str]) -> None:
    """Emit ``run_stopping`` once per new state: ``state`` (stopping, aborting), ``hosts``
    running a step and ``steps`` (host -> the step being finished or cut)."""
    news = stop.news()
    if news is not None:
        events.emit("run_stopping", state=news, hosts=sorted(running),
                    steps=dict(sorted(running.items())), source=stop.source or None)

