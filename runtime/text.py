"""Numbers in words for people: counts with the right plural, byte sizes in IEC units.

Pure functions every layer may use, so "1 host" / "2 hosts" and "1.2 MiB" read the same in
the CLI, the stages' messages and the lab.
"""

from __future__ import annotations

_SIZE_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``n`` and ``word`` in the right number.

    >>> plural(1, "host"), plural(2, "host"), plural(0, "host"), plural(3, "batch", "batches")
    ('1 host', '2 hosts', '0 hosts', '3 batches')
    """
    return f"{n} {word if n == 1 else (many or word + 's')}"


def human_size(n: int | float) -> str:
    """Bytes for a person, in powers of 1024 with one decimal.

    >>> human_size(512), human_size(1536), human_size(1258291), human_size(5 * 2**30)
    ('512 B', '1.5 KiB', '1.2 MiB', '5.0 GiB')
    """
    if n < 1024:
        return f"{int(n)} B"
    value = float(n) / 1024
    for unit in _SIZE_UNITS[:-1]:
        if value < 1023.95:  # 1048575 B is "1.0 MiB", not "1024.0 KiB"
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} {_SIZE_UNITS[-1]}"


def printable(text: object) -> str:
    """``text`` safe to print on a terminal: every control character (escape sequences,
    carriage returns, bells — values from hosts and alerts are data) shown as ``?``.

    >>> printable("web1\\x1b[2J\\rok")
    'web1?[2J?ok'
    """
    return "".join(c if c.isprintable() else "?" for c in str(text))
