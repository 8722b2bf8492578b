"""Secrets: values that must never reach output, logs, argv or exceptions.

The inventory never holds a secret's value, only a reference: ``{secret: NAME}`` (a key of the
site's secrets file, which must not be readable by group or others) or ``{env: VAR}``. A resolved
value is wrapped in :class:`Secret`, which masks itself everywhere it could be printed;
``reveal()`` is the one, greppable way to get the value, used only at the edge that needs it
(the BMC or SSH call).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from inventory.errors import SecretError

MASK = "***"


class Secret:
    """A string value that prints as ``***`` in str, repr, format, JSON and logs."""

    __slots__ = ("_ref", "_value")

    def __init__(self, value: str, ref: str = "") -> None:
        self._value = value
        self._ref = ref

    def reveal(self) -> str:
        """The real value. Call only where it is handed to the component that needs it."""
        return self._value

    @property
    def ref(self) -> str:
        """Where the value came from (``secret:NAME`` or ``env:VAR``): safe to print."""
        return self._ref

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return f"Secret({self._ref or MASK})"

    def __format__(self, spec: str) -> str:
        return MASK

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._ref))

    def __reduce__(self) -> Any:
        # Pickling would write the value to wherever the pickle goes; refuse it.
        raise TypeError("Secret values cannot be pickled")

    def to_json(self) -> str:
        return MASK


class SecretStore:
    """The site's secrets file (YAML mapping of name -> string) plus the environment."""

    def __init__(self, values: Mapping[str, str], path: Path | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        self._values = dict(values)
        self.path = path
        self._environ = os.environ if environ is None else environ
        self._env_used: dict[str, str] = {}

    @classmethod
    def load(cls, path: Path, environ: Mapping[str, str] | None = None) -> SecretStore:
        """Load ``path`` if it exists; a missing file is an empty store (references then fail)."""
        # Imported here so that secrets.py stays importable by yamlsource without a cycle.
        from inventory.yamlsource import read_yaml_file

        if not path.exists():
            return cls({}, path, environ)
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(
                f"{path}: permissions {stat.S_IMODE(mode):04o} are too open for a secrets "
                f"file; run: chmod 600 {path}")
        data = read_yaml_file(path)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SecretError(f"{path}:1: the secrets file must be a mapping of name: value")
        values: dict[str, str] = {}
        for key, value in data.items():
            line = data.line_of(key) if hasattr(data, "line_of") else 0
            if not isinstance(key, str):
                raise SecretError(f"{path}:{line}: secret names must be strings")
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                # Never echo the value: it is the secret.
                raise SecretError(f"{path}:{line}: secret '{key}' must be a string")
            values[key] = str(value)
        return cls(values, path, environ)

    def resolve(self, ref: Mapping[str, Any]) -> Secret:
        """Resolve ``{secret: NAME}`` or ``{env: VAR}``; SecretError names the reference."""
        if set(ref) == {"secret"} and isinstance(ref["secret"], str):
            name = ref["secret"]
            if name not in self._values:
                where = self.path if self.path else "the secrets file"
                raise SecretError(f"secret '{name}' is not defined in {where}")
            return Secret(self._values[name], f"secret:{name}")
        if set(ref) == {"env"} and isinstance(ref["env"], str):
            var = ref["env"]
            if var not in self._environ:
                raise SecretError(f"environment variable '{var}' (secret reference) is not set")
            self._env_used[var] = self._environ[var]
            return Secret(self._environ[var], f"env:{var}")
        raise SecretError("a secret reference must be {secret: NAME} or {env: VARIABLE}")

    def known_values(self) -> list[str]:
        """Every secret value known: the file's and those of ``{env: VAR}`` references
        resolved so far, for output scrubbing as a last line of defence."""
        return [v for v in (*self._values.values(), *self._env_used.values()) if v]

    def masker(self) -> Masker:
        return Masker(self.known_values())


class Masker:
    """Replaces every known secret value with ``***`` in text and in nested data.

    Longer values are replaced first, so a secret that contains another is masked whole.
    """

    def __init__(self, values: list[str] | tuple[str, ...] = ()) -> None:
        self._values = sorted({v for v in values if v}, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._values)

    def text(self, text: str) -> str:
        for v in self._values:
            if v in text:
                text = text.replace(v, MASK)
        return text

    def stream(self) -> MaskedStream:
        """A masker for text that arrives in chunks (streamed command output)."""
        return MaskedStream(self)

    def _pending_len(self, text: str) -> int:
        """Length of the longest end of ``text`` that could be the start of a value."""
        best = 0
        for v in self._values:
            for n in range(min(len(v) - 1, len(text)), best, -1):
                if text.endswith(v[:n]):
                    best = n
                    break
        return best

    def value(self, obj: Any) -> Any:
        """``obj`` with every string in it masked (dicts, lists and tuples walked)."""
        if not self._values:
            return obj
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, Secret):
            return MASK
        if isinstance(obj, dict):
            return {self.value(k): self.value(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.value(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self.value(v) for v in obj)
        return obj


class MaskedStream:
    """Masks a stream of text chunks, also a value split across two chunks: the end of a chunk
    that could begin a value is held back until the next chunk (or :meth:`flush`) decides.

    >>> s = Masker(["hunter2"]).stream()
    >>> s.feed("pass: hun"), s.feed("ter2!"), s.flush()
    ('pass: ', '***!', '')
    """

    def __init__(self, masker: Masker) -> None:
        self._masker = masker
        self._pending = ""

    def feed(self, chunk: str) -> str:
        text = self._masker.text(self._pending + chunk)
        keep = self._masker._pending_len(text)
        self._pending = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep]

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text


def secret_values_in(obj: Any) -> list[str]:
    """The revealed values of every :class:`Secret` inside ``obj`` (dicts, lists, tuples
    walked): what a step that renders a host's variables must mask in what it reports."""
    if isinstance(obj, Secret):
        return [obj.reveal()]
    if isinstance(obj, Mapping):
        return [s for v in obj.values() for s in secret_values_in(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in secret_values_in(v)]
    return []


def env_refs_in(obj: Any) -> set[str]:
    """Names of the environment variables ``{env: VAR}`` references inside raw (unresolved)
    inventory data name, so their values can be masked before the inventory is loaded."""
    if isinstance(obj, Mapping):
        if set(obj) == {"env"} and isinstance(obj["env"], str):
            return {obj["env"]}
        return {n for v in obj.values() for n in env_refs_in(v)}
    if isinstance(obj, list):
        return {n for v in obj for n in env_refs_in(v)}
    return set()


def is_secret_ref(value: Any) -> bool:
    """True for a mapping that looks like a secret reference (one key: secret or env)."""
    return isinstance(value, Mapping) and len(value) == 1 and (
        "secret" in value or "env" in value)
