"""Rendering operator templates (role templates, step arguments) with a host's variables.

Templates are trusted operator files; variable *values* are data: a value that itself contains
``{{ ... }}`` is inserted as text, never rendered again. Sandboxed, StrictUndefined: a typo in a
variable name is an error naming the template, not an empty string.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateError, meta, nodes
from jinja2.exceptions import UndefinedError
from jinja2.parser import Parser
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from jinja2.utils import missing

from inventory.errors import InputError, MetalchainError
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


#: The longest string or list one ``*`` may build (``{{ "x" * 10**10 }}`` would take 10 GB).
MAX_REPEAT = 1_000_000
#: The largest integer ``**`` may build, in bits (``{{ 9 ** 9 ** 9 }}`` would run for hours).
MAX_POWER_BITS = 100_000
#: Characters one render may produce (as much as a YAML file may hold): nested loops over
#: ``range`` (100,000 items each) would otherwise fill the controller's memory. A loop that
#: writes nothing is not bounded by this.
MAX_OUTPUT = 16 * 1024 * 1024


class _Environment(SandboxedEnvironment):
    """The sandbox (which already caps ``range`` at 100,000 items) with caps on the two
    operators that build huge values from small ones."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int) and \
                        len(seq) * times > MAX_REPEAT:
                    raise SecurityError(f"'*' would build more than {MAX_REPEAT} items")
        if operator == "**" and isinstance(left, int) and isinstance(right, int) and \
                right > 0 and abs(left) > 1 and \
                right * abs(left).bit_length() > MAX_POWER_BITS:
            raise SecurityError(f"'**' would build a number of more than {MAX_POWER_BITS} "
                                "bits")
        return super().call_binop(context, operator, left, right)


_ENV = _Environment(undefined=_Undefined, autoescape=False, keep_trailing_newline=True)


def _template_line(exc: BaseException) -> int | None:
    """The template line an exception raised inside a render was at (jinja2 rewrites the
    traceback so that its frames carry the template's lines)."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def _where(source: str, line: int | None) -> str:
    """``source:line`` for a template file; a value's source (``recipe.yml:4``) is already the
    line that holds it."""
    if not line or re.search(r":\d+$", source):
        return source
    return f"{source}:{line}"


def _runtime_error(exc: Exception) -> str:
    """What a template's expression raised (``1/0``, ``1 + "a"``, ``range(10**30)``), as
    one line."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _reveal(value: Any) -> Any:
    """Secrets are revealed only inside rendered content that goes to the host."""
    if isinstance(value, Secret):
        return value.reveal()
    if isinstance(value, dict):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value


def _bounded(chunks: Iterator[str]) -> str:
    """The chunks of a render joined, or SecurityError once they pass :data:`MAX_OUTPUT`."""
    parts: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_OUTPUT:
            raise SecurityError(f"the output would be longer than {MAX_OUTPUT} characters")
        parts.append(chunk)
    return "".join(parts)


def render_text(text: str, variables: Mapping[str, Any], source: str) -> str:
    try:
        return _bounded(_ENV.from_string(text).generate(_reveal(dict(variables))))
    except TemplateError as exc:
        where = _where(source, getattr(exc, "lineno", None) or _template_line(exc))
        message = f"{where}: template error: {exc.message or exc}"
        if isinstance(exc, _VariableUndefinedError):
            raise UndefinedVariable(message, where=where, name=exc.variable) from None
        raise InputError(message) from None
    except MetalchainError:
        raise
    except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError,
            MemoryError) as exc:
        where = _where(source, _template_line(exc))
        raise InputError(f"{where}: template error: {_runtime_error(exc)}") from None


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
    except MetalchainError:
        raise
    except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError,
            MemoryError) as exc:
        raise InputError(f"{source}: when: {_runtime_error(exc)}") from None


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
