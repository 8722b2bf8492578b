"""How cron and /bin/sh read a cron.d line, for the schedule tests (no cron daemon runs here).

cron (Debian's vixie cron): the first five fields are the time (or one nickname such as
``@hourly``), the next the user (cron.d format), the rest the command; an unescaped ``%``
ends the command (what follows is its stdin) and ``\\%`` stands for a literal ``%``.
The command is then run by ``/bin/sh -c``.
"""

from __future__ import annotations


def cron_entry_command(line: str) -> str:
    """The shell command cron would hand to ``/bin/sh -c`` for a cron.d ``line``."""
    rest = line
    # minute hour day-of-month month day-of-week user, or a nickname (@hourly) and the user
    for _ in range(2 if line.lstrip(" \t").startswith("@") else 6):
        rest = rest.lstrip(" \t")
        cut = min((i for i in (rest.find(" "), rest.find("\t")) if i >= 0), default=-1)
        if cut < 0:
            raise ValueError(f"not a cron.d entry: {line!r}")
        rest = rest[cut:]
    rest = rest.lstrip(" \t")
    out, i = [], 0
    while i < len(rest):
        ch = rest[i]
        if ch == "\\" and i + 1 < len(rest):
            nxt = rest[i + 1]
            out.append("%" if nxt == "%" else ch + nxt)
            i += 2
            continue
        if ch == "%":
            break  # the rest is the command's stdin
        out.append(ch)
        i += 1
    return "".join(out)
