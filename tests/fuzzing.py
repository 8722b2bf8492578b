"""Shared fuzzing helpers (hypothesis strategies and a bounded call), for any parser.

Self-contained on purpose (imports only hypothesis and PyYAML): the operator-file fuzzers
(tests/operator_fuzz.py) and the network-input fuzzers may both use it.

- :func:`hostile_text`: strings that broke parsers somewhere: control characters, NUL, lone
  surrogates, bidi overrides, template and shell syntax, traversal, huge or empty strings.
- :func:`yaml_values`: any value a YAML document can hold (scalars of every kind, lists,
  mappings, secret-reference look-alikes), to put where a file expects something else.
- :func:`mutated_yaml`: structure-aware mutation of real example files: values replaced,
  keys dropped, renamed or duplicated, deep nesting, aliases and alias bombs, tags, then
  text-level damage (control characters, NUL bytes, invalid UTF-8, truncation, tabs).
- :func:`bounded`: call a function under a wall-clock limit (SIGALRM) and a memory limit
  (tracemalloc's peak), returning what it returned or raised, its time and its peak.
"""

from __future__ import annotations

import signal
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from hypothesis import strategies as st

HOSTILE_STRINGS: tuple[str, ...] = (
    "", " ", "\t", "\n", "\r\n", "\x00", "a\x00b", "\x07", "\x1b[2J\x1b]0;title\x07",
    "\x1b]8;;http://x/\x1b\\link\x1b]8;;\x1b\\", "\u202egnp.exe", "\ufeff", "\ud800",
    "\U0001f4a9", "é", "\u0130", "{{ 7*7 }}", "{% raw %}{{ x }}{% endraw %}",
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}", "{#", "{%", "}}",
    "$(id)", "`id`", "; touch /tmp/x", "a\nb", "-rf", "--reference=/etc/shadow", "-",
    "../../../etc/passwd", "/etc/passwd", "..", ".", "%2e%2e%2f", "C:\\x", "~root",
    "*", "&a", "*a", "!!python/object:os.system", "<<", "? x", "- x", ": x", "#x", "'", '"',
    "null", "~", "yes", "no", "on", "off", "0x1F", "0o17", "1e400", "-0", ".nan", ".inf",
    "2024-01-31", "2024-13-45", "12:30:00", "1_000", "+1", "0" * 400, "a" * 300,
    "%s%s%n", "${HOME}", "{secret: x}", "node01", "10.0.0.1",
    "::1", "256.256.256.256", "52:54:00:00:00:01", "ssh-ed25519 AAAA", "\\", "\\x00",
)


def hostile_text() -> st.SearchStrategy[str]:
    """A hostile string: one of :data:`HOSTILE_STRINGS`, random text (control and
    surrogate code points included), or a hostile string glued into random text."""
    weird = st.one_of(st.characters(), st.characters(categories=["Cs"]))
    return st.one_of(
        st.sampled_from(HOSTILE_STRINGS),
        st.builds(lambda unit, n: unit * n, st.sampled_from(["x", "🙂", "{{", "\\", "é "]),
                  st.sampled_from([255, 256, 4097, 70_000])),
        st.text(weird, max_size=40),
        st.text(st.characters(max_codepoint=0x1f), min_size=1, max_size=8),
        st.builds(lambda a, h, b: a + h + b, st.text(max_size=8),
                  st.sampled_from(HOSTILE_STRINGS), st.text(max_size=8)),
    )


def yaml_scalars() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(), st.booleans(),
        st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
        st.sampled_from([0, -1, 1, 65535, 65536, 2 ** 31, 2 ** 63, 10 ** 30]),
        st.floats(allow_nan=True, allow_infinity=True),
        hostile_text(),
    )


def yaml_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    """Any YAML-representable value, nested a little; keys include non-strings."""
    keys = st.one_of(hostile_text(), st.integers(-5, 5), st.none(), st.booleans())
    return st.recursive(
        yaml_scalars(),
        lambda children: st.one_of(
            st.lists(children, max_size=4),
            st.dictionaries(keys, children, max_size=4),
            st.builds(lambda name: {"secret": name}, hostile_text()),
            st.builds(lambda name: {"env": name}, hostile_text()),
        ),
        max_leaves=max_leaves)


# -- structure-aware mutation --------------------------------------------------------------

def paths_into(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``doc`` (keys and indexes), the root included as ``()``."""
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += paths_into(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += paths_into(v, (*prefix, i))
    return out


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        doc = doc[step]
    return doc


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    _get(doc, path[:-1])[path[-1]] = value
    return doc


def _nest(value: Any, depth: int, as_list: bool) -> Any:
    for _ in range(depth):
        value = [value] if as_list else {"k": value}
    return value


@st.composite
def _tree_mutation(draw: st.DrawFn, doc: Any) -> Any:
    paths = paths_into(doc)
    path = draw(st.sampled_from(paths))
    op = draw(st.sampled_from(["replace", "replace", "drop", "add", "rename", "nest",
                               "listify", "huge"]))
    target = _get(doc, path)
    if op == "replace":
        return _set(doc, path, draw(yaml_values()))
    if op == "drop" and path:
        parent = _get(doc, path[:-1])
        del parent[path[-1]]
        return doc
    if op == "add" and isinstance(target, dict):
        target[draw(st.one_of(hostile_text(), st.integers(-3, 3)))] = draw(yaml_values())
        return doc
    if op == "add" and isinstance(target, list):
        target.insert(draw(st.integers(0, len(target))), draw(yaml_values()))
        return doc
    if op == "rename" and path and isinstance(_get(doc, path[:-1]), dict):
        parent = _get(doc, path[:-1])
        parent[draw(hostile_text())] = parent.pop(path[-1])
        return doc
    if op == "nest":
        return _set(doc, path, _nest(target, draw(st.integers(1, 150)), draw(st.booleans())))
    if op == "listify":
        return _set(doc, path, [target] * draw(st.integers(0, 3)))
    if op == "huge":
        kind, n = draw(st.sampled_from(["str", "list", "map"])), draw(st.sampled_from(
            [300, 3000]))
        huge = "x" * (n * 50) if kind == "str" else list(range(n)) if kind == "list" else \
            {f"k{i}": i for i in range(n)}
        return _set(doc, path, huge)
    return doc


def _bomb(levels: int) -> str:
    lines = ["bomb0: &b0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"bomb{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines)


_TEXT_INSERTS = (
    "\x00", "\x07", "\x1b", "\x7f", "\x85", "\ufffe", "\t", "\r", "\ufeff", "&a ", "*a",
    "*undefined", "!!timestamp ", "!!binary ", "!!set ", "!!python/object/apply:os.system ",
    "!custom ", "<<: *a\n", "? ", "{", "[", "}", "]", "'", '"', "%YAML 1.1\n", "---\n", "...\n",
    ": ", "- ", "#", "|", ">", "\\", "&a [*a]", "1" * 5000, "2024-13-45",
)


@st.composite
def _text_mutation(draw: st.DrawFn, data: bytes) -> bytes:
    op = draw(st.sampled_from(["insert", "insert", "bytes", "delete_line", "dup_line",
                               "truncate", "bomb", "flip"]))
    pos = draw(st.integers(0, len(data)))
    if op == "insert":
        token = draw(st.one_of(st.sampled_from(_TEXT_INSERTS), hostile_text()))
        return data[:pos] + token.encode("utf-8", "surrogatepass") + data[pos:]
    if op == "bytes":   # NUL, invalid UTF-8, overlong and truncated sequences
        junk = draw(st.one_of(st.sampled_from([b"\x00", b"\xff", b"\xc3", b"\xc0\xaf",
                                               b"\xed\xa0\x80", b"\xfe\xff", b"\x80"]),
                              st.binary(min_size=1, max_size=8)))
        return data[:pos] + junk + data[pos:]
    lines = data.split(b"\n")
    i = draw(st.integers(0, max(len(lines) - 1, 0)))
    if op == "delete_line" and lines:
        del lines[i]
        return b"\n".join(lines)
    if op == "dup_line" and lines:   # a duplicate key, most of the time
        lines.insert(i, lines[i])
        return b"\n".join(lines)
    if op == "truncate":
        return data[:pos]
    if op == "bomb":
        return _bomb(draw(st.integers(2, 9))).encode() + b"\n" + data
    if op == "flip" and data:
        at = min(pos, len(data) - 1)
        return data[:at] + bytes([data[at] ^ (1 << draw(st.integers(0, 7)))]) + data[at + 1:]
    return data


def _dump(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False, width=120)
    except (yaml.YAMLError, ValueError, TypeError, RecursionError):
        return yaml.safe_dump(str(doc)[:1000])


@st.composite
def mutated_yaml(draw: st.DrawFn, seeds: Sequence[str], max_tree: int = 4,
                 max_text: int = 3) -> bytes:
    """A real file (one of ``seeds``) with up to ``max_tree`` structural mutations (values,
    keys, nesting) and ``max_text`` text-level ones (bytes, lines, aliases, tags)."""
    text = draw(st.sampled_from(list(seeds)))
    if draw(st.integers(0, 9)) > 0:     # mostly through the tree, sometimes the text as is
        doc = yaml.safe_load(text)
        for _ in range(draw(st.integers(0, max_tree))):
            doc = draw(_tree_mutation(doc))
        text = _dump(doc)
    data = text.encode("utf-8", "surrogatepass")
    for _ in range(draw(st.integers(0, max_text))):
        data = draw(_text_mutation(data))
    return data


def raw_bytes(max_size: int = 2000) -> st.SearchStrategy[bytes]:
    """Bytes with no structure, and bytes that are almost YAML."""
    return st.one_of(
        st.binary(max_size=max_size),
        st.text(max_size=max_size).map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.lists(st.sampled_from((*_TEXT_INSERTS, "a", "b: ", "\n", "  ", "c")),
                 max_size=60).map(lambda parts: "".join(parts).encode("utf-8")),
    )


# -- a call with limits ----------------------------------------------------------------------

class Hang(BaseException):
    """Raised inside the call when its time limit passes (a BaseException, so that no
    ``except Exception`` of the code under test swallows it)."""


@dataclass
class Bounded:
    value: Any = None
    error: BaseException | None = None
    seconds: float = 0.0
    peak_bytes: int = 0


def bounded(call: Callable[[], Any], *, seconds: float, trace_memory: bool = True) -> Bounded:
    """Run ``call()`` with a wall-clock limit (SIGALRM, main thread only) and, if asked,
    tracemalloc measuring its peak. A hang is reported as ``error=Hang(...)``; any other
    exception as the error it was; neither is raised."""
    out = Bounded()

    def on_alarm(_signum: int, _frame: Any) -> None:
        raise Hang(f"no answer within {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    tracing = trace_memory and not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    limit = sys.getrecursionlimit()
    try:
        out.value = call()
    except Hang as exc:
        out.error = exc
    except Exception as exc:  # noqa: BLE001 - the caller judges what was raised
        out.error = exc
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        out.seconds = time.monotonic() - start
        sys.setrecursionlimit(limit)
        if tracing:
            out.peak_bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    return out
