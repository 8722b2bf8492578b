"""Roles: ``playbooks/roles/<role>/`` — a recipe, handlers, defaults, templates, files.

::

    roles/node_exporter/
      recipe.yml        # list of resources: - package: {name: x}  (+ name:, notify:, when:)
      handlers.yml      # name: resource   (run once, at the end of the role, if notified)
      defaults.yml      # variables, the lowest precedence layer
      meta.yml          # depends: [base]; scrape_targets: [{port: 9100, job: node}]
      templates/*.j2    # template: {path: /etc/x, source: x.j2}
      files/*           # file: {path: /etc/x, source: x}
      verify/test_*.py  # testinfra checks of the outcome

A ``source:`` is read from the controller and shipped to hosts, so it must stay inside its
role's directory (after resolving symlinks): an absolute name or a ``../`` out of the role
is refused at load, unless it falls under a directory the site lists in ``role_sources:``
of metalchain.yml (the operator's opt-in; a role cannot widen it).

Recipes are validated when loaded (file:line errors); values may use ``{{ var }}`` with the
host's variables and facts, rendered per host (values themselves are data, never templates).
``when: EXPRESSION`` (a Jinja expression without braces, e.g. ``facts.virtualization !=
'container-other'``) keeps an entry only on hosts where it is true. Reading a fact that was
not gathered from the host (a typo, or no facts at all) is an error naming the entry's
file:line and the fact, never None or False.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from configure.engine import Item, RoleBlock
from configure.facts import GatheredFacts, could_be_fact
from configure.resources import RESOURCE_KINDS, ResourceSpecError, parse_resource
from configure.templating import (
    UndefinedVariable,
    evaluate_condition,
    is_templated,
    names_in_expression,
    names_in_text,
    names_in_value,
    render_text,
    render_value,
)
from inventory.errors import InputError, InventoryError
from inventory.yamlsource import LocatedDict, read_yaml_file

#: the site setting (metalchain.yml) listing directories a role's ``source:`` may also name
SOURCE_ROOTS_SETTING = "role_sources"

ENTRY_COMMON = ("name", "notify", "when")
KINDS = (*RESOURCE_KINDS, "template")
META_KEYS = ("depends", "description", "scrape_targets")
_ROLE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SHIPPED_ROLES = Path(__file__).resolve().parents[1] / "playbooks" / "roles"


class RoleError(InventoryError):
    """A malformed role (file:line rendering like inventory errors)."""


@dataclass(frozen=True)
class Entry:
    kind: str
    spec: Any
    name: str
    notify: tuple[str, ...]
    file: str
    line: int
    when: str | None = None

    @property
    def source(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Role:
    name: str
    path: Path
    entries: list[Entry]
    handlers: dict[str, Entry]
    defaults: dict[str, Any]
    depends: list[str]
    scrape_targets: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""
    #: directories outside the role that ``source:`` may name (the site's opt-in)
    source_roots: tuple[Path, ...] = ()

    @property
    def verify_dir(self) -> Path:
        return self.path / "verify"


def _entry(data: Any, where: Any, pos: Any, role: str) -> Entry:
    if not isinstance(data, dict):
        raise RoleError("a recipe entry must be a mapping like {package: {name: x}}",
                        file=where.file, line=where.line_of(pos))
    kinds = [k for k in data if k not in ENTRY_COMMON]
    if len(kinds) != 1:
        import difflib

        unknown = [k for k in kinds if k not in KINDS]
        if unknown:
            close = difflib.get_close_matches(str(unknown[0]), KINDS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RoleError(f"unknown resource kind '{unknown[0]}'{hint}", file=data.file,
                            line=data.line_of(unknown[0]))
        raise RoleError("an entry has exactly one resource kind, found "
                        f"{', '.join(map(str, kinds)) or 'none'}", file=data.file,
                        line=data.line)
    kind = str(kinds[0])
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise RoleError(f"unknown resource kind '{kind}'{hint}", file=data.file,
                        line=data.line_of(kind))
    notify = data.get("notify", ())
    if isinstance(notify, str):
        notify = (notify,)
    if not isinstance(notify, (list, tuple)) or not all(isinstance(n, str) for n in notify):
        raise RoleError("notify must be a handler name or a list of them", file=data.file,
                        line=data.line_of("notify"))
    name = data.get("name") or f"{kind}"
    when = data.get("when")
    if when is not None and not isinstance(when, str | bool):
        raise RoleError("when must be an expression (a string)", file=data.file,
                        line=data.line_of("when"))
    if isinstance(when, str) and is_templated(when):
        raise RoleError("when is an expression without {{ }}, e.g. when: facts.cpus > 1",
                        file=data.file, line=data.line_of("when"))
    return Entry(kind, data[kind], str(name), tuple(notify), data.file, data.line_of(kind),
                 None if when is None else str(when))


class RoleSearch(list[Path]):
    """The directories roles are looked up in, first first, and ``source_roots``: the
    directories outside a role that its ``source:`` may name (the site's opt-in)."""

    def __init__(self, paths: Sequence[Path], source_roots: Sequence[Path] = ()) -> None:
        super().__init__(paths)
        self.source_roots = tuple(source_roots)


def source_path(entry: Entry, name: Any, role_dir: Path,
                roots: Sequence[Path] = ()) -> Path:
    """The controller file a ``source:`` names, resolved (symlinks followed): inside the
    role's directory or under one of ``roots``, else a RoleError naming the entry."""
    sub = "templates" if entry.kind == "template" else "files"
    where = {"file": entry.file, "line": entry.line}
    if not isinstance(name, str) or not name or "\x00" in name:
        raise RoleError(f"{entry.kind}: source must be a file name in {sub}/", **where)
    try:
        src = (role_dir / sub / name).resolve()
        inside = [role_dir.resolve(), *(r.resolve() for r in roots)]
        if not any(src.is_relative_to(base) for base in inside):
            raise RoleError(f"{entry.kind}: source {name!r} is outside the role ({src}); a "
                            f"role ships only its own {sub}/, unless metalchain.yml lists "
                            f"the directory in {SOURCE_ROOTS_SETTING}", **where)
        if not src.is_file():
            raise RoleError(f"{entry.kind}: source not found: {role_dir / sub / name}",
                            **where)
    except (OSError, ValueError) as exc:      # a name too long, a symlink loop
        raise RoleError(f"{entry.kind}: source {name[:60]!r}: "
                        f"{getattr(exc, 'strerror', None) or exc}",
                        **where) from None
    return src


def _check_entry(entry: Entry, role_dir: Path, roots: Sequence[Path] = ()) -> None:
    """Validate an entry before any host is involved (templates are checked unrendered)."""
    spec = entry.spec
    if entry.kind in ("template", "file") and isinstance(spec, dict) and "source" in spec:
        source_path(entry, spec["source"], role_dir, roots)
    if entry.kind == "template" and not (isinstance(spec, dict) and "source" in spec):
        raise RoleError("template: 'source' (a file in templates/) is required",
                        file=entry.file, line=entry.line)
    if is_templated(spec):
        return  # validated after rendering, per host
    try:
        _resource(entry, role_dir, {}, validate_only=True, roots=roots)
    except ResourceSpecError as exc:
        line = entry.line
        if exc.key is not None and isinstance(spec, LocatedDict) and exc.key in spec:
            line = spec.line_of(exc.key)
        raise RoleError(str(exc), file=entry.file, line=line) from None


def _resource(entry: Entry, role_dir: Path, variables: Mapping[str, Any],
              validate_only: bool = False, roots: Sequence[Path] = ()) -> Any:
    spec = render_value(entry.spec, variables, entry.source) if not validate_only else entry.spec
    if entry.kind in ("template", "file") and isinstance(spec, dict) and "source" in spec:
        spec = dict(spec)
        # checked again as read: the file may have become a symlink since the load
        src = source_path(entry, spec.pop("source"), role_dir, roots)
        try:
            if entry.kind == "template":
                text = src.read_text(encoding="utf-8")
            else:
                spec["content"] = src.read_bytes()
        except (OSError, ValueError) as exc:   # unreadable, not UTF-8
            raise ResourceSpecError(f"{entry.kind}: cannot read {src.name[:80]}: "
                                    f"{getattr(exc, 'strerror', None) or exc}") from None
        if entry.kind == "template":
            spec["content"] = "" if validate_only else render_text(text, variables, str(src))
    kind = "file" if entry.kind == "template" else entry.kind
    return parse_resource(kind, spec)


def load_role(name: str, search: Sequence[Path]) -> Role:
    """The role ``name`` from the first directory of ``search`` that has it (a
    :class:`RoleSearch` also carries the site's ``source_roots``)."""
    roots = tuple(getattr(search, "source_roots", ()))
    if not _ROLE.match(name):
        raise InputError(f"'{name}' is not a valid role name")
    for base in search:
        path = base / name
        if path.is_dir():
            break
    else:
        import difflib

        close = difflib.get_close_matches(name, available_roles(search), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise InputError(f"unknown role '{name}'{hint}: not found in "
                         f"{', '.join(str(s) for s in search)}")
    recipe_file = path / "recipe.yml"
    if not recipe_file.is_file():
        raise RoleError("a role needs recipe.yml", file=str(recipe_file))
    recipe = read_yaml_file(recipe_file)
    if not isinstance(recipe, list):
        raise RoleError("recipe.yml must be a list of resources", file=str(recipe_file), line=1)
    entries = [_entry(d, recipe, i, name) for i, d in enumerate(recipe)]
    handlers: dict[str, Entry] = {}
    hfile = path / "handlers.yml"
    if hfile.is_file():
        hdoc = read_yaml_file(hfile) or LocatedDict()
        if not isinstance(hdoc, dict):
            raise RoleError("handlers.yml must map handler names to resources",
                            file=str(hfile), line=1)
        for hname, hdata in hdoc.items():
            handlers[str(hname)] = _entry(hdata, hdoc, hname, name)
    for e in entries:
        for n in e.notify:
            if n not in handlers:
                raise RoleError(f"notify: no handler '{n}' in {hfile}", file=e.file,
                                line=e.line)
    defaults: dict[str, Any] = {}
    dfile = path / "defaults.yml"
    if dfile.is_file():
        ddoc = read_yaml_file(dfile) or {}
        if not isinstance(ddoc, dict):
            raise RoleError("defaults.yml must be a mapping of variables", file=str(dfile),
                            line=1)
        for k in ddoc:
            if not isinstance(k, str) or not _VARIABLE.match(k):
                raise RoleError(f"{str(k)[:40]!r} is not a valid variable name (letters, "
                                "digits, _)", file=str(dfile), line=ddoc.line_of(k))
        defaults = dict(ddoc)
    meta: dict[str, Any] = {}
    mfile = path / "meta.yml"
    if mfile.is_file():
        mdoc = read_yaml_file(mfile) or LocatedDict()
        if not isinstance(mdoc, dict):
            raise RoleError("meta.yml must be a mapping", file=str(mfile), line=1)
        for k in mdoc:
            if k not in META_KEYS:
                raise RoleError(f"unknown key '{k}'; allowed: {', '.join(META_KEYS)}",
                                file=str(mfile), line=mdoc.line_of(k))
        meta = dict(mdoc)
    def meta_line(key: str) -> int:
        return mdoc.line_of(key) if meta else 1

    depends = meta.get("depends") or []
    if not isinstance(depends, list) or not all(isinstance(d, str) for d in depends):
        raise RoleError("depends must be a list of role names", file=str(mfile),
                        line=meta_line("depends"))
    targets = meta.get("scrape_targets") or []
    if not isinstance(targets, list) or not all(isinstance(t, dict) for t in targets):
        raise RoleError("scrape_targets must be a list of mappings like {port: 9100, job: "
                        "node}", file=str(mfile), line=meta_line("scrape_targets"))
    if not isinstance(meta.get("description", ""), str):
        raise RoleError("description must be a string", file=str(mfile),
                        line=meta_line("description"))
    for e in [*entries, *handlers.values()]:
        _check_entry(e, path, roots)
    return Role(name=name, path=path, entries=entries, handlers=handlers, defaults=defaults,
                depends=list(depends), scrape_targets=list(targets),
                description=str(meta.get("description", "")), source_roots=roots)


def available_roles(search: Sequence[Path]) -> list[str]:
    """The names of the roles found on ``search`` (directories with a recipe.yml)."""
    names: set[str] = set()
    for base in search:
        if base.is_dir():
            names.update(p.name for p in base.iterdir() if (p / "recipe.yml").is_file())
    return sorted(names)


def role_search_path(site_playbooks: Path | None) -> RoleSearch:
    """Site roles first (an operator's role overrides a shipped one of the same name), with
    the site's ``role_sources`` (read from the metalchain.yml beside ``site_playbooks``)."""
    paths = []
    if site_playbooks is not None:
        paths.append(site_playbooks / "roles")
    paths.append(SHIPPED_ROLES)
    return RoleSearch(paths, site_source_roots(site_playbooks.parent)
                      if site_playbooks is not None else ())


def site_source_roots(site_root: Path) -> tuple[Path, ...]:
    """The directories a site's metalchain.yml lists in ``role_sources`` (relative to the
    site), () without the file or the setting. Site.open has checked the setting's shape;
    this is read again here so that every caller of :func:`role_search_path` sees it."""
    settings = site_root / "metalchain.yml"
    if not settings.is_file():
        return ()
    doc = read_yaml_file(settings)
    raw = doc.get(SOURCE_ROOTS_SETTING) if isinstance(doc, dict) else None
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(r, str) and r for r in raw):
        line = doc.line_of(SOURCE_ROOTS_SETTING) if isinstance(doc, LocatedDict) else 1
        raise RoleError(f"{SOURCE_ROOTS_SETTING} must be a list of directories",
                        file=str(settings), line=line)
    return tuple(site_root / r for r in raw)


def resolve(names: Sequence[str], search: Sequence[Path]) -> list[Role]:
    """Roles with their dependencies first, each once; cycles are errors."""
    out: list[Role] = []
    loaded: dict[str, Role] = {}
    visiting: list[str] = []

    def visit(n: str) -> None:
        if any(r.name == n for r in out):
            return
        if n in visiting:
            raise InputError(f"role dependency cycle: {' -> '.join([*visiting, n])}")
        visiting.append(n)
        role = loaded.get(n) or load_role(n, search)
        loaded[n] = role
        for dep in role.depends:
            visit(dep)
        visiting.pop()
        out.append(role)

    for n in names:
        visit(n)
    return out


def role_defaults(roles: Sequence[Role]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for r in roles:
        merged.update(r.defaults)
    return merged


def blocks_for_host(roles: Sequence[Role], variables: Mapping[str, Any]) -> list[RoleBlock]:
    """Render every role's entries with the host's variables (role defaults underneath).

    ``variables["facts"]`` may be a :class:`GatheredFacts` (then it records what the recipes
    read); a plain mapping is wrapped in one, so an ungathered fact is an error either way.
    """
    merged = {**role_defaults(roles), **variables}
    if not isinstance(merged.get("facts"), GatheredFacts):
        merged["facts"] = GatheredFacts(merged.get("facts") or {},
                                        str(merged.get("inventory_hostname", "")))
    blocks = []
    for role in roles:
        items = []
        for e in role.entries:
            if e.when is not None and not evaluate_condition(e.when, merged, e.source):
                continue
            try:
                res = _resource(e, role.path, merged, roots=role.source_roots)
            except ResourceSpecError as exc:
                raise InputError(f"{e.source}: {exc}") from None
            items.append(Item(role.name, res, e.notify, e.source))
        handlers = {}
        for hname, e in role.handlers.items():
            try:
                res = _resource(e, role.path, merged, roots=role.source_roots)
            except ResourceSpecError as exc:
                raise InputError(f"{e.source}: {exc}") from None
            handlers[hname] = Item(role.name, res, (), e.source, handler=hname)
        blocks.append(RoleBlock(role.name, items, handlers))
    return blocks


def _template_text(entry: Entry, role: Role) -> tuple[str, str] | None:
    """(path, text) of a template entry's source file."""
    spec = entry.spec
    if entry.kind != "template" or not isinstance(spec, dict) or "source" not in spec:
        return None
    try:
        src = source_path(entry, spec["source"], role.path, role.source_roots)
        return str(src), _read_text(str(src), src.stat().st_mtime_ns)
    except (OSError, UnicodeDecodeError, RoleError):
        return None


@functools.lru_cache(maxsize=1024)
def _read_text(path: str, mtime_ns: int) -> str:
    """A template's text, read once per version of the file (validation checks every host)."""
    return Path(path).read_text(encoding="utf-8")


@dataclass(frozen=True)
class EntryNeeds:
    """What one recipe entry (or handler) of a role reads: its values and template, and its
    ``when:`` (None for handlers, which are rendered whatever their ``when:``)."""

    role: Role
    entry: Entry
    body: frozenset[str]
    when: str | None
    when_names: frozenset[str]


def role_needs(roles: Sequence[Role]) -> list[EntryNeeds]:
    """Every entry's :class:`EntryNeeds`, in the order :func:`blocks_for_host` renders them
    (computed once, checked for every host)."""
    out = []
    for role in roles:
        handlers = {id(e) for e in role.handlers.values()}
        for e in [*role.entries, *role.handlers.values()]:
            template = _template_text(e, role)
            body = names_in_value(e.spec) | (names_in_text(template[1]) if template
                                             else frozenset())
            when = e.when if id(e) not in handlers else None
            out.append(EntryNeeds(role, e, body, when,
                                  names_in_expression(when) if when else frozenset()))
    return out


def undefined_for_host(roles: Sequence[Role], variables: Mapping[str, Any],
                       needs: Sequence[EntryNeeds] | None = None) -> list[tuple[str, str]]:
    """The variables the roles' entries need on a host that no layer defines, known without
    the host: ``[(where, message)]`` (where = the recipe entry, or the template's file:line;
    message e.g. ``'port' is undefined``). ``needs``: :func:`role_needs` of ``roles``.

    Mirrors :func:`blocks_for_host`: an entry whose ``when:`` is false is not rendered, so
    what only it needs is not needed. What only facts decide (a ``when:`` or a value that
    reads a fact not stored yet) is left to the run, and so is a name that could be a fact.
    Only entries whose names are not all defined are rendered, to confirm that the missing
    name is really read (a ``{% if %}`` or ``| default`` may skip it).
    """
    merged = {**role_defaults(roles), **variables}
    if not isinstance(merged.get("facts"), GatheredFacts):
        merged["facts"] = GatheredFacts(merged.get("facts") or {},
                                        str(merged.get("inventory_hostname", "")))

    def lacking(names: frozenset[str]) -> bool:
        return any(n not in merged and not could_be_fact(n) for n in names)

    found: list[tuple[str, str]] = []
    for n in needs if needs is not None else role_needs(roles):
        e = n.entry
        body_lacking = lacking(n.body)
        if n.when is not None and (body_lacking or lacking(n.when_names)):
            if _confirm(found, "when: ", evaluate_condition, n.when, merged,
                        e.source) is not True:
                continue    # false here, or only the host can tell
        if body_lacking:
            _confirm(found, "", _resource, e, n.role.path, merged, False,
                     n.role.source_roots)
    return found


def _confirm(found: list[tuple[str, str]], what: str, call: Any, *args: Any) -> Any:
    """``call(*args)``'s result; None if it stopped on an undefined variable (added to
    ``found``) or on something only the host can tell (an ungathered fact)."""
    try:
        return call(*args)
    except UndefinedVariable as exc:
        if not could_be_fact(exc.name):
            found.append((exc.where, f"{what}'{exc.name}' is undefined"))
        return None
    except (InputError, ResourceSpecError):
        return None
