"""Rendering operator templates (role templates, step arguments) with a host's variables.

Templates are trusted operator files; variable *values* are data: a value that itself contains
``{{ ... }}`` is inserted as text, never rendered again. Sandboxed, StrictUndefined: a typo in a
variable name is an error naming the template, not an empty string.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta, nodes
from jinja2.exceptions import UndefinedError
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment
from jinja2.utils import missing

from inventory.errors import InputError
from inventory.secrets import Secret


class _VariableUndefinedError(UndefinedError):
    """Jinja's error for a variable no layer defines (not a missing attribute or key)."""

    def __init__(self, message: str, name: str) -> None:
        super().__init__(message)
        self.variable = name


class _Undefined(StrictUndefined):
    """StrictUndefined whose error says which *variable* was missing, so validation can name
    it without parsing the message."""

    __slots__ = ()

    def __init__(self, hint: str | None = None, obj: Any = missing, name: str | None = None,
                 exc: Any = UndefinedError) -> None:
        if obj is missing and hint is None and name is not None:
            def exc(message: str, _name: str = name) -> UndefinedError:
                return _VariableUndefinedError(message, _name)
        super().__init__(hint, obj, name, exc)


class UndefinedVariable(InputError):
    """A template or condition read a variable that no layer defines; ``where`` is the
    template (with its line when known) and ``name`` the variable."""

    def __init__(self, message: str, *, where: str, name: str) -> None:
        super().__init__(message)
        self.where = where
        self.name = name


_ENV = SandboxedEnvironment(undefined=_Undefined, autoescape=False,
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
        message = f"{where}: template error: {exc.message or exc}"
        if isinstance(exc, _VariableUndefinedError):
            raise UndefinedVariable(message, where=where, name=exc.variable) from None
        raise InputError(message) from None


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
        message = f"{source}: when: {exc.message or exc}"
        if isinstance(exc, _VariableUndefinedError):
            raise UndefinedVariable(message, where=source, name=exc.variable) from None
        raise InputError(message) from None


# -- what a template needs, known without rendering it ------------------------------------------

@functools.lru_cache(maxsize=4096)
def names_in_text(text: str) -> frozenset[str]:
    """The variables ``text`` may read (jinja2's ``find_undeclared_variables``, less the
    environment's globals such as ``range``): ``names_in_text("{{ a }}{% set b = 1 %}{{ b }}")``
    is ``{"a"}``. Unparsable text needs nothing (its error is the renderer's to report)."""
    try:
        found = meta.find_undeclared_variables(_ENV.parse(text))
    except TemplateError:
        return frozenset()
    return frozenset(found - set(_ENV.globals))


@functools.lru_cache(maxsize=4096)
def names_in_expression(expression: str) -> frozenset[str]:
    """The variables a ``when:`` expression may read."""
    try:
        expr = Parser(_ENV, expression, state="variable").parse_expression()
        tree = nodes.Template([nodes.Output([expr])], lineno=1)
        tree.set_environment(_ENV)
        found = meta.find_undeclared_variables(tree)
    except TemplateError:
        return frozenset()
    return frozenset(found - set(_ENV.globals))


def names_in_value(value: Any) -> frozenset[str]:
    """The variables every templated string in ``value`` (at any depth) may read."""
    if isinstance(value, str):
        return names_in_text(value) if is_templated(value) else frozenset()
    if isinstance(value, list):
        return frozenset().union(*(names_in_value(v) for v in value))
    if isinstance(value, dict):
        return frozenset().union(*(names_in_value(v) for v in value.values()))
    return frozenset()
