"""Variable precedence: five layers, lowest first, and where each value came from.

1. role defaults  (``playbooks/roles/<role>/defaults.yml``; several roles in role order)
2. all            (the inventory's top-level ``vars``)
3. groups         (each group the host is in, parents before children, then by name;
                   a child group overrides its parent)
4. host           (the host's own ``vars``)
5. extra          (``-e key=value`` on the command line; always wins)

Merging is per top-level key: a later layer replaces the whole value of a key, it does not
merge nested mappings (predictable, and what ``inventory vars`` can explain in one line).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from inventory.model import Inventory

LAYERS = ("role defaults", "all", "group", "host", "extra")


@dataclass
class VarOrigin:
    """The winning value of one variable and every layer that set it."""

    name: str
    value: Any
    source: str
    overridden: list[tuple[str, Any]] = field(default_factory=list)


def explain_vars(inv: Inventory, host: str,
                 role_defaults: list[tuple[str, Mapping[str, Any]]] | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, VarOrigin]:
    """Every variable of ``host`` with its origin; ``role_defaults`` is [(role, vars)]."""
    h = inv.host(host)
    layers: list[tuple[str, Mapping[str, Any]]] = []
    for role, defaults in role_defaults or []:
        layers.append((f"role defaults: {role}", defaults))
    layers.append((f"all ({inv.all_vars_source})" if inv.all_vars_source else "all",
                   inv.all_vars))
    for g in inv.groups_of(host):
        grp = inv.groups[g]
        layers.append((f"group {g} ({grp.file}:{grp.line})", grp.vars))
    layers.append((f"host {host} ({h.file}:{h.line})", h.vars))
    if extra:
        layers.append(("extra vars (command line)", extra))
    result: dict[str, VarOrigin] = {}
    for source, values in layers:
        for name, value in values.items():
            if name in result:
                prev = result[name]
                prev.overridden.append((prev.source, prev.value))
                prev.value, prev.source = value, source
            else:
                result[name] = VarOrigin(name, value, source)
    return dict(sorted(result.items()))


def host_vars(inv: Inventory, host: str,
              role_defaults: list[tuple[str, Mapping[str, Any]]] | None = None,
              extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The merged variables of ``host`` (values only)."""
    return {k: v.value for k, v in explain_vars(inv, host, role_defaults, extra).items()}


def magic_vars(inv: Inventory, host: str,
               facts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The variables metalchain sets for every host: its name, address, groups, labels,
    roles and gathered facts."""
    h = inv.host(host)
    return {"inventory_hostname": host, "address": h.address,
            "group_names": inv.groups_of(host), "labels": h.labels,
            "facts": dict(facts or {}), "roles": inv.roles_of(host)}


def host_variables(inv: Inventory, host: str, *,
                   facts: Mapping[str, Any] | None = None,
                   extra: Mapping[str, Any] | None = None,
                   context: Mapping[str, Any] | None = None,
                   role_defaults: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every variable ``host`` sees, the same for every command (run, apply, verify, ...).

    Lowest first: ``role_defaults`` (merged, when a caller converges or checks roles), the
    magic vars (:func:`magic_vars`), ``context`` (what the controller adds for roles, e.g.
    ``metalchain_mirror``), then the inventory's layers and ``extra`` (``-e``, always wins).

    >>> host_variables(inv, "web1", extra={"x": False})["x"]   # doctest: +SKIP
    False
    """
    return {**(role_defaults or {}), **magic_vars(inv, host, facts), **(context or {}),
            **host_vars(inv, host, extra=extra)}
