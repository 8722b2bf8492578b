"""Shell completion of the site's names: hosts, targets (hosts, groups, ``@failed``), roles
and playbooks, for click's completion (``_METALCHAIN_COMPLETE=bash_source metalchain``).

Completion runs on every Tab press, so it reads only the inventory and the playbooks and
roles directories (never the state store, never a host), and a site that does not load
completes nothing instead of printing an error into the shell.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
from click.shell_completion import CompletionItem

from inventory.errors import MetalchainError
from inventory.model import Inventory
from inventory.site import Site, find_site_dir

Completer = Callable[[click.Context, click.Parameter, str], list[CompletionItem]]


def _site(ctx: click.Context) -> Site | None:
    try:
        return Site.open(find_site_dir(getattr(ctx.find_root().obj, "site_option", None)))
    except (MetalchainError, OSError):
        return None


def _inventory(ctx: click.Context) -> Inventory | None:
    site = _site(ctx)
    if site is None:
        return None
    try:
        return site.inventory
    except (MetalchainError, OSError):
        return None
    finally:
        site.close()


def _matching(names: list[str], incomplete: str, prefix: str = "") -> list[CompletionItem]:
    return [CompletionItem(prefix + n) for n in sorted(set(names)) if n.startswith(incomplete)]


def host_names(ctx: click.Context, _param: click.Parameter, incomplete: str
               ) -> list[CompletionItem]:
    inv = _inventory(ctx)
    return [] if inv is None else _matching(list(inv.hosts), incomplete)


def split_target(incomplete: str) -> tuple[str, str]:
    """A target being typed -> (what stays: earlier terms and the term's ``!``/``&``, the
    term being completed). ``node1,!no`` -> ("node1,!", "no")."""
    earlier, comma, term = incomplete.rpartition(",")
    head = earlier + comma
    while term[:1] in ("!", "&"):
        head, term = head + term[0], term[1:]
    return head, term


def targets(ctx: click.Context, _param: click.Parameter, incomplete: str
            ) -> list[CompletionItem]:
    inv = _inventory(ctx)
    if inv is None:
        return []
    head, term = split_target(incomplete)
    return _matching([*inv.hosts, *inv.groups, "@failed"], term, head)


def _names_in(directory: Path, want: Callable[[Path], bool]) -> list[str]:
    try:
        return [p.stem if p.suffix == ".yml" else p.name
                for p in directory.iterdir() if want(p)]
    except OSError:
        return []


def role_names(ctx: click.Context, _param: click.Parameter, incomplete: str
               ) -> list[CompletionItem]:
    from configure.roles import role_search_path

    site = _site(ctx)
    search = role_search_path(site.playbooks_dir if site else None)
    if site is not None:
        site.close()
    names = [n for d in search for n in _names_in(d, lambda p: (p / "recipe.yml").is_file())]
    return _matching(names, incomplete)


def playbook_names(ctx: click.Context, _param: click.Parameter, incomplete: str
                   ) -> list[CompletionItem]:
    site = _site(ctx)
    if site is None:
        return []
    site.close()
    return _matching(_names_in(site.playbooks_dir,
                               lambda p: p.suffix == ".yml" and p.is_file()), incomplete)


def playbooks_and_targets(ctx: click.Context, param: click.Parameter, incomplete: str
                          ) -> list[CompletionItem]:
    """``apply``'s argument: a playbook, or a target when ``--role`` is given."""
    if ctx.params.get("roles"):
        return targets(ctx, param, incomplete)
    return [*playbook_names(ctx, param, incomplete), *targets(ctx, param, incomplete)]


#: Parameter name -> its completer, for every command of the tree (see
#: :func:`orchestrate.cli._equip`).
BY_PARAMETER: dict[str, Completer] = {
    "target": targets,
    "limit": targets,
    "host": host_names,
    "node": host_names,
    "roles": role_names,
    "playbook": playbook_names,
    "playbook_or_target": playbooks_and_targets,
}
