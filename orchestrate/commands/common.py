"""Options and parsing shared by the CLI's commands."""

from __future__ import annotations

import click

from inventory.errors import InputError

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def parse_extra(pairs: tuple[str, ...]) -> dict[str, str]:
    """``-e KEY=VALUE`` options -> a mapping (the highest variable precedence)."""
    extra: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InputError(f"-e expects KEY=VALUE, got '{pair}'")
        extra[key] = value
    return extra
