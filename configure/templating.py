"""Rendering operator templates (role templates, step arguments) with a host's variables.

Templates are trusted operator files; variable *values* are data: a value that itself contains
``{{ ... }}`` is inserted as text, never rendered again. Sandboxed, StrictUndefined: a typo in a
variable name is an error naming the template, not an empty string.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from inventory.errors import InputError
from inventory.secrets import Secret

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False,
                            keep_trailing_newline=True)


def _reveal(value: Any) -> Any:
    """Secrets are revealed only inside rendered content that goes to the host."""
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value


def render_text(text: str, variables: Mapping[str, Any], source: str) -> str:
    try:
        return _ENV.from_string(text).render(_reveal(dict(variables)))
    except TemplateError as exc:
        line = getattr(exc, "lineno", None)
        where = f"{source}:{line}" if line else source
        raise InputError(f"{where}: template error: {exc.message or exc}") from None


def is_templated(value: Any) -> bool:
    """True if ``value`` (a string, or a list/dict holding strings at any depth) contains
    template syntax, i.e. must be rendered per host: ``is_templated({"a": ["{{ x }}"]})``."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, list):
        return any(is_templated(v) for v in value)
    if isinstance(value, dict):
        return any(is_templated(v) for v in value.values())
    return False


def render_value(value: Any, variables: Mapping[str, Any], source: str) -> Any:
    """Render every string in ``value`` that contains template syntax."""
    if isinstance(value, str):
        return render_text(value, variables, source) if is_templated(value) else value
    if isinstance(value, list):
        return [render_value(v, variables, source) for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, variables, source) for k, v in value.items()}
    return value


def evaluate_condition(expression: str, variables: Mapping[str, Any], source: str) -> bool:
    """A ``when:`` condition: a Jinja expression (no braces) evaluated with the variables."""
    try:
        compiled = _ENV.compile_expression(expression, undefined_to_none=False)
        return bool(compiled(**_reveal(dict(variables))))
    except TemplateError as exc:
        raise InputError(f"{source}: when: {exc.message or exc}") from None
