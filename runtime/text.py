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


# Characters a terminal acts on instead of showing: C0 controls, DEL, C1 controls (0x9b is
# CSI and 0x9d OSC on terminals that take 8-bit controls), bidirectional overrides and isolates
# (text shown in another order than it is), and the Unicode line/paragraph separators. Other
# format characters (zero-width joiners in emoji, soft hyphens) are ordinary text.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e"
                  "\u2066\u2067\u2068\u2069")
_SEPARATORS = frozenset("\u2028\u2029")


def _acts_on_terminal(c: str) -> bool:
    o = ord(c)
    return o < 0x20 or 0x7f <= o <= 0x9f or c in _BIDI or c in _SEPARATORS


def _shown(c: str) -> str:
    o = ord(c)
    return f"\\x{o:02x}" if o <= 0xff else f"\\u{o:04x}"


def terminal_safe(text: object, *, multiline: bool = True) -> str:
    """``text`` as data for a terminal: every character a terminal would act on (ESC and so
    every CSI/OSC sequence, other C0 and C1 controls, DEL, carriage returns, bidi overrides)
    shown as a visible escape (``\\x1b``, ``\\u202e``), so a value from a host or an alert can
    neither move the cursor, clear the screen, set the window title nor plant a hyperlink.
    Newlines and tabs are kept when ``multiline`` (command output, diffs), escaped otherwise
    (a table cell, one line of a log).

    This is the one sanitizer of what reaches the terminal; rich markup (``[link=...]``) is a
    separate matter: :mod:`orchestrate.output` hands rich ``Text`` objects, never markup.

    >>> terminal_safe("web1\\x1b]0;owned\\x07\\x1b[2Jok\\n")
    'web1\\\\x1b]0;owned\\\\x07\\\\x1b[2Jok\\n'
    >>> terminal_safe("a\\tb\\nc", multiline=False), terminal_safe("\\u202egnp.exe")
    ('a\\\\x09b\\\\x0ac', '\\\\u202egnp.exe')
    """
    s = str(text)
    if not any(_acts_on_terminal(c) for c in s):
        return s
    keep = "\n\t" if multiline else ""
    return "".join(_shown(c) if _acts_on_terminal(c) and c not in keep else c for c in s)


def json_terminal_safe(doc_text: str) -> str:
    """A JSON document's text with the characters JSON leaves raw but a terminal acts on
    (DEL, C1 controls, bidi overrides, U+2028/2029) written as ``\\uXXXX`` escapes: the same
    document to a parser, inert on a terminal. (JSON already escapes C0 controls.) Those
    characters occur only inside strings, so replacing them anywhere in the text is exact."""
    def raw(c: str) -> bool:   # the document's own newlines are C0 and stay
        return ord(c) >= 0x7f and _acts_on_terminal(c)

    if not any(raw(c) for c in doc_text):
        return doc_text
    return "".join(f"\\u{ord(c):04x}" if raw(c) else c for c in doc_text)


def printable(text: object) -> str:
    """``text`` on one line for a terminal: as :func:`terminal_safe` decides, but every
    character a terminal would act on (newlines too) shown as ``?``.

    >>> printable("web1\\x1b[2J\\rok")
    'web1?[2J?ok'
    """
    s = str(text)
    return "".join("?" if _acts_on_terminal(c) else c for c in s)
