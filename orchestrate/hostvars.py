"""A host's variables with the defaults of its roles underneath: the join of the inventory's
layers (``inventory.variables``) and the roles (``configure.roles``), which the inventory may
not import itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from configure.roles import Role, resolve, role_search_path
from inventory.errors import InputError
from inventory.variables import VarOrigin, explain_vars


def host_roles(site: Any, host: str) -> list[Role]:
    """The roles ``host`` gets from the inventory (its own and its groups'), dependencies
    first, as ``apply`` resolves them; InputError naming the host for a missing role."""
    site.inventory.host(host)  # an unknown host: the inventory's own error
    names = site.inventory.roles_of(host)
    try:
        return resolve(names, role_search_path(site.playbooks_dir))
    except InputError as exc:
        raise InputError(f"host '{host}': {exc}") from None


def _where(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def explain_host_vars(site: Any, host: str,
                      extra: Mapping[str, Any] | None = None) -> dict[str, VarOrigin]:
    """Every variable of ``host`` with the layer its value comes from, lowest first: the
    defaults of its roles (in role order, dependencies first), then all, groups, host and
    ``extra`` (see :func:`inventory.variables.explain_vars`).

    >>> explain_host_vars(site, "node1")["node_exporter_port"].source   # doctest: +SKIP
    'role defaults: node_exporter (.../roles/node_exporter/defaults.yml)'
    """
    defaults = [(f"{r.name} ({_where(r.path / 'defaults.yml', site.root)})", r.defaults)
                for r in host_roles(site, host) if r.defaults]
    return explain_vars(site.inventory, host, defaults, extra)
