"""Options and parsing shared by the CLI's commands."""

from __future__ import annotations

import click

from inventory.errors import InputError

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
