"""One error tree for all of metalchain.

Foreign exceptions (yaml, sqlalchemy, paramiko, pyghmi, subprocess) are caught where they are
raised and re-raised as one of these, with the original as ``__cause__``. The CLI maps
``InputError`` to exit code 2 and every other ``MetalchainError`` to exit code 1.
"""

from __future__ import annotations


class MetalchainError(Exception):
    """Base of every error metalchain raises on purpose."""

    exit_code = 1


class InputError(MetalchainError):
    """Bad input from the operator: a file, an argument, a reference. Exit code 2."""

    exit_code = 2


class InventoryError(InputError):
    """A malformed inventory. Carries the file and line so the message can point at it."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 host: str | None = None, key: str | None = None) -> None:
        self.file = file
        self.line = line
        self.host = host
        self.key = key
        self.detail = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = ""
        if self.file:
            where = f"{self.file}:{self.line}: " if self.line else f"{self.file}: "
        who = f"host '{self.host}': " if self.host else ""
        return f"{where}{who}{self.detail}"


class SecretError(InputError):
    """A secret reference that cannot be resolved. Never carries the secret's value."""


class StateError(MetalchainError):
    """The state store cannot be opened, migrated or written."""


class BmcError(MetalchainError):
    """A BMC command failed. Names the host and BMC address, never the password."""


class TransportError(MetalchainError):
    """An SSH connection or remote command failed. Names the host and the command."""


class ResourceError(MetalchainError):
    """A configuration resource could not be probed or applied."""


class LabError(MetalchainError):
    """The lab could not be brought up, inspected or torn down."""
