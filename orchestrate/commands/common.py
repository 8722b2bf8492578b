"""Options and parsing shared by the CLI's commands."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType

import click

from inventory.errors import InputError
from orchestrate.stop import Stop

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def parse_extra(pairs: tuple[str, ...]) -> dict[str, str | bool]:
    """``-e KEY=VALUE`` options -> a mapping (the highest variable precedence).

    Values are strings, except ``true`` and ``false`` (any case), which are booleans, so a
    switch can be turned off from the command line (``-e hypervisor_require_kvm=false``).
    """
    extra: dict[str, str | bool] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"-e expects KEY=VALUE, got '{pair}'")
        extra[key] = {"true": True, "false": False}.get(value.lower(), value)
    return extra


@contextlib.contextmanager
def stop_on_signals() -> Iterator[Stop]:
    """A :class:`Stop` that SIGINT (Ctrl-C) and SIGTERM request: the first time the run
    stops after the steps in progress, the second time it aborts them; a third one (should
    the abort itself hang) raises KeyboardInterrupt. The handlers only set the stop — the
    run's core announces it and winds down — and are restored on exit."""
    stop = Stop()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if stop.aborting:
            raise KeyboardInterrupt
        stop.request(signal.Signals(signum).name)

    previous = {}
    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:   # not the main thread (an embedder): the caller's signals stand
        pass
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


#: Seconds ``--wait`` waits for held hosts when ``--wait-timeout`` does not say.
DEFAULT_WAIT = 600.0


def wait_options(f):  # type: ignore[no-untyped-def]
    """``--wait`` / ``--wait-timeout SECONDS``: wait for hosts another run holds."""
    f = click.option("--wait-timeout", type=click.FloatRange(0, 86400), metavar="SECONDS",
                     help=f"With --wait: give up after SECONDS (default {DEFAULT_WAIT:g}); "
                     "hosts still held then are skipped. Implies --wait.")(f)
    return click.option("--wait", is_flag=True,
                        help="Wait until every host another run holds is free, instead of "
                        "skipping it.")(f)


def wait_seconds(wait: bool, wait_timeout: float | None) -> float | None:
    """The ``RunOptions.wait`` of ``--wait`` / ``--wait-timeout`` (None: do not wait)."""
    if wait_timeout is not None:
        return wait_timeout
    return DEFAULT_WAIT if wait else None
