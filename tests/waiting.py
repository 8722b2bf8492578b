"""Polling with a deadline, for tests that wait on real processes (never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float, what: str, *,
             interval: float = 0.05) -> T:
    """The first truthy value of ``predicate()``, polled every ``interval`` seconds; an
    AssertionError naming ``what`` if none came within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
