"""Controller cost of one tool run: its process tree's peak RSS (sampled from /proc) and CPU.

``/proc`` is passed in (a directory), so the parsers are testable on a fake tree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def parse_stat(text: str) -> tuple[int, int]:
    """(ppid, rss pages) from a /proc/PID/stat line (the command may hold spaces and ')').

    >>> parse_stat("42 (a b) c) S 7 42 42 0 -1 0 0 0 0 0 1 2 0 0 20 0 1 0 5 100 30 0")
    (7, 30)
    """
    rest = text[text.rindex(")") + 2:].split()
    # fields after the command: state(0) ppid(1) ... vsize(20) rss(21)
    return int(rest[1]), int(rest[21])


def snapshot(proc: Path = Path("/proc")) -> dict[int, tuple[int, int]]:
    """pid -> (ppid, rss pages) for every process readable now."""
    out: dict[int, tuple[int, int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            out[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or a kernel thread's odd line
    return out


def descendants(table: dict[int, tuple[int, int]], roots: Iterable[int]) -> set[int]:
    """``roots`` and every process below them.

    >>> sorted(descendants({1: (0, 1), 2: (1, 1), 3: (2, 1), 4: (1, 1), 5: (9, 1)}, [2]))
    [2, 3]
    """
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = [r for r in roots if r in table]
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        todo.extend(children.get(pid, ()))
    return seen


def tree_rss_bytes(table: dict[int, tuple[int, int]], pids: Iterable[int]) -> int:
    return sum(table[p][1] for p in pids if p in table) * PAGE


def run_tree(table: dict[int, tuple[int, int]], me: int, tool: int, before: set[int]
             ) -> set[int]:
    """The processes of one tool run: the tool's tree, plus the trees of orphans that were
    reparented to ``me`` (the subreaper) since the run began (ControlPersist masters). Not
    the trees under children of ``me`` that existed before (the lab's fleet launchers,
    whose containers start processes of their own during the run: not the controller's).

    >>> tab = {1: (0, 1), 5: (1, 1), 6: (5, 1), 7: (6, 1), 8: (5, 1), 9: (8, 1),
    ...        10: (5, 1), 11: (10, 1)}
    >>> sorted(run_tree(tab, me=5, tool=6, before={5, 8}))
    [6, 7, 10, 11]
    """
    roots = {tool} | {p for p, (ppid, _) in table.items() if ppid == me and p not in before}
    return descendants(table, roots)
