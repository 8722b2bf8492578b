"""How runtime functions report failure without importing metalchain's error tree."""

from __future__ import annotations

from collections.abc import Callable

#: What a runtime function raises on failure: called with a one-line message. Callers pass
#: their own error class (``LabError``, ``MirrorError``, ``BootServerError`` ...).
ErrorFactory = Callable[[str], BaseException]


class MechanismError(Exception):
    """Raised when a caller did not name its own error class (tests, scripts)."""
