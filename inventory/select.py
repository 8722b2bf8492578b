"""Target selection: which hosts a pattern names.

A target is a comma-separated list of terms, applied left to right:

- ``name`` — a group (all its hosts) or a host
- ``node*`` — a glob over host and group names
- ``key=value`` — hosts whose label ``key`` equals ``value`` (``role=hypervisor``)
- ``fact.key=value`` — hosts whose last gathered fact ``key`` equals ``value``
  (``fact.os_codename=bookworm``; list facts match any element)
- ``@NAME`` — a named host list supplied by the caller (``@failed`` from the last run)
- ``!term`` removes the term's hosts, ``&term`` keeps only hosts also in the term

Selecting nothing is an InputError: an operator who typed a target meant some hosts.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping, Sequence
from typing import Any

from inventory.errors import InputError
from inventory.model import ALL_GROUP, Inventory


def _fact_matches(value: Any, wanted: str) -> bool:
    if isinstance(value, list):
        return any(str(v) == wanted or str(v).split("/")[0] == wanted for v in value)
    return value is not None and str(value) == wanted


def _term_hosts(inv: Inventory, term: str, named: Mapping[str, Sequence[str]],
                facts: Mapping[str, Mapping[str, Any]]) -> list[str]:
    if term.startswith("@"):
        if term[1:] not in named:
            known = ", ".join("@" + n for n in named) or "none"
            raise InputError(f"unknown host list '{term}' (known: {known})")
        return [h for h in named[term[1:]] if h in inv.hosts]
    if term.startswith("fact.") and "=" in term:
        key, _, value = term[5:].partition("=")
        return [h for h in inv.hosts if key in facts.get(h, {})
                and _fact_matches(facts[h][key], value)]
    if "=" in term:
        key, _, value = term.partition("=")
        return [h.name for h in inv.hosts.values() if h.labels.get(key) == value]
    if any(ch in term for ch in "*?["):
        hosts: set[str] = {h for h in inv.hosts if fnmatch.fnmatchcase(h, term)}
        for g in inv.groups:
            if fnmatch.fnmatchcase(g, term):
                hosts.update(inv.group_hosts(g))
        return [h for h in inv.hosts if h in hosts]
    if term == ALL_GROUP or term in inv.groups:
        return inv.group_hosts(term)
    if term in inv.hosts:
        return [term]
    raise InputError(f"target '{term}' matches no group, host or label"
                     f"{_hint(term, [*inv.groups, *inv.hosts])}")


def _hint(term: str, known: Sequence[str]) -> str:
    close = difflib.get_close_matches(term, list(known), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def target_problems(inv: Inventory, target: str,
                    named: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """Every term of ``target`` that matches nothing, each a message with a "did you mean"
    (all of them, where :func:`select_hosts` stops at the first). Fact selectors are not
    judged (facts change when gathered), nor a known ``@NAME`` list that is empty now
    (``all,!@failed`` after a clean run); whether the whole target selects any host is
    :func:`select_hosts`' question.

    >>> target_problems(inv, "nodes,web*")          # doctest: +SKIP
    ["target 'web*' matches no host or group"]
    """
    named = named or {}
    problems: list[str] = []
    for raw in (t.strip() for t in target.split(",")):
        term = raw.lstrip("!&")
        if not term or (term.startswith("fact.") and "=" in term):
            continue
        if term.startswith("@"):
            if term[1:] not in named:
                known = ", ".join("@" + n for n in named) or "none"
                problems.append(f"unknown host list '{term}'"
                                f"{_hint(term, ['@' + n for n in named])} (known: {known})")
            continue
        if "=" in term:
            pairs = sorted({f"{k}={v}" for h in inv.hosts.values() for k, v in h.labels.items()})
            if term not in pairs:
                problems.append(f"target '{term}' matches no host's label{_hint(term, pairs)}")
            continue
        try:
            if not _term_hosts(inv, term, named, {}) and any(ch in term for ch in "*?["):
                problems.append(f"target '{term}' matches no host or group")
        except InputError as exc:
            problems.append(str(exc))
    return problems


def select_hosts(inv: Inventory, target: str, limit: str | None = None,
                 named: Mapping[str, Sequence[str]] | None = None,
                 facts: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Host names selected by ``target`` (and narrowed by ``limit``), in inventory order."""
    named = named or {}
    facts = facts or {}
    chosen = _apply(inv, target, named, facts)
    if limit:
        narrowed = set(_apply(inv, limit, named, facts))
        chosen = [h for h in chosen if h in narrowed]
    if not chosen:
        what = f"'{target}'" + (f" limited to '{limit}'" if limit else "")
        raise InputError(f"target {what} selects no hosts")
    return chosen


def select_play_hosts(inv: Inventory, target: str, limit: str | None = None,
                      named: Mapping[str, Sequence[str]] | None = None,
                      facts: Mapping[str, Any] | None = None) -> list[str]:
    """Like :func:`select_hosts`, for a play of a playbook: selecting no host is not an
    error there (a site without guests runs site.yml's VM plays on nobody, as a play with
    no matching hosts is skipped). Typos are still caught, by :func:`target_problems`."""
    try:
        return select_hosts(inv, target, limit, named, facts)
    except InputError as exc:
        if "selects no hosts" in str(exc):
            return []
        raise


def _apply(inv: Inventory, target: str, named: Mapping[str, Sequence[str]],
           facts: Mapping[str, Mapping[str, Any]]) -> list[str]:
    terms = [t.strip() for t in target.split(",") if t.strip()]
    if not terms:
        raise InputError("empty target")
    selected: set[str] = set()
    for term in terms:
        if term.startswith("!"):
            selected -= set(_term_hosts(inv, term[1:], named, facts))
        elif term.startswith("&"):
            selected &= set(_term_hosts(inv, term[1:], named, facts))
        else:
            selected |= set(_term_hosts(inv, term, named, facts))
    return [h for h in inv.hosts if h in selected]
