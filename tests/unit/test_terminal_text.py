"""Values from hosts and alerts reach the terminal as data: no escape sequence is acted on and
no rich markup is interpreted (issue 13: a hostile PRETTY_NAME or command output could set the
window title, clear the screen or plant a hyperlink)."""

from __future__ import annotations

import io
import json
import sys

import click
import pytest

from orchestrate import output
from runtime.text import json_terminal_safe, printable, terminal_safe

pytestmark = pytest.mark.unit

TITLE = "\x1b]0;owned\x07"                       # OSC 0: window title, BEL-terminated
CLEAR = "\x1b[2J\x1b[H"                          # CSI: clear screen, cursor home
LINK = "\x1b]8;;http://evil.example/\x1b\\click\x1b]8;;\x1b\\"   # OSC 8 hyperlink
C1 = "\x9b31m\x9d0;t\x9c"                        # 8-bit CSI / OSC / ST
BIDI = "\u202egnp.exe\u2066x\u2069"
MARKUP = "[link=http://x]here[/link] [red]red[/red] [bold]b"
HOSTILE = f"Debian {TITLE}{CLEAR}{LINK}{C1}{BIDI}\x7f\r\x08{MARKUP}"

# What a terminal would act on: every C0 control but newline and tab, DEL, C1, bidi controls,
# line/paragraph separators.
ACTS = [chr(c) for c in (*range(0x20), *range(0x7f, 0xa0))] + list(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")


def raw_controls(text: str, allowed: str = "\n\t") -> list[str]:
    return sorted({c for c in text if c in ACTS and c not in allowed})


def test_every_character_a_terminal_acts_on_is_escaped_and_nothing_else_is():
    # Every character up to U+2FFF (all the controls are there) and a sample above.
    every = "".join(chr(c) for c in (*range(0x3000), *range(0x3000, 0x110000, 997))
                    if not 0xD800 <= c <= 0xDFFF)
    safe = terminal_safe(every)
    assert raw_controls(safe) == []
    assert raw_controls(terminal_safe(every, multiline=False), allowed="") == []
    # Everything else is kept as it is: non-ASCII text, emoji joiners, soft hyphens.
    ordinary = "".join(c for c in every if c not in ACTS)
    assert terminal_safe(ordinary, multiline=False) == ordinary
    assert terminal_safe("Grüße 東京 👩\u200d💻 soft\u00adhyphen") == \
        "Grüße 東京 👩\u200d💻 soft\u00adhyphen"


def test_escapes_are_visible_and_name_the_character():
    assert terminal_safe(TITLE + CLEAR) == "\\x1b]0;owned\\x07\\x1b[2J\\x1b[H"
    assert terminal_safe("a\tb\nc\r\n") == "a\tb\nc\\x0d\n"
    assert terminal_safe("a\tb\nc", multiline=False) == "a\\x09b\\x0ac"
    assert terminal_safe("\u202egnp.exe\x9b") == "\\u202egnp.exe\\x9b"
    assert terminal_safe(42) == "42"
    assert printable(HOSTILE).count("?") == sum(c in ACTS for c in HOSTILE)


def test_json_stays_the_same_document_and_inert_on_a_terminal():
    doc = {"pretty_name": HOSTILE, "lines": ["a\nb", "\u2028"]}
    text = json_terminal_safe(json.dumps(doc, ensure_ascii=False, indent=2))
    assert raw_controls(text, allowed="\n") == []
    assert json.loads(text) == doc
    assert "\\u009b" in text and "\\u202e" in text


def test_emit_json_escapes_what_a_terminal_acts_on(capsys):
    output.emit_json("t", {"v": HOSTILE})
    out = capsys.readouterr().out
    assert raw_controls(out, allowed="\n") == []
    assert json.loads(out)["v"] == HOSTILE


def test_table_cells_are_data_in_rich_and_in_plain_rows(monkeypatch):
    from rich.console import Console

    captured = io.StringIO()
    monkeypatch.setattr(output, "is_terminal", lambda: True)
    # A real terminal's console (colours, hyperlinks on), so markup would show if parsed.
    monkeypatch.setattr("rich.console.Console", lambda **kw: Console(
        file=captured, force_terminal=True, color_system="truecolor", width=400))
    output.table(f"facts {MARKUP}", ["host", "pretty_name"], [["web1", HOSTILE]])
    out = captured.getvalue()
    assert "\x1b]" not in out and "\x07" not in out and "\x9b" not in out
    assert "\x1b[2J" not in out and "\u202e" not in out
    assert "[link=http://x]here[/link]" in out and "[red]red[/red]" in out
    assert "\\x1b]0;owned\\x07" in out

    monkeypatch.setattr(output, "is_terminal", lambda: False)
    plain = io.StringIO()
    monkeypatch.setattr(sys, "stdout", plain)
    output.table("t", ["host", "pretty_name"], [["web1", HOSTILE + "\n\tmore"]])
    rows = plain.getvalue().splitlines()
    assert len(rows) == 2 and rows[1].count("\t") == 1            # still one row, two cells
    assert raw_controls(plain.getvalue(), allowed="\n\t") == []
    assert MARKUP in rows[1]


def test_lines_and_diffs_escape_before_colouring(monkeypatch):
    from orchestrate.cli import Context, cli

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setattr(sys, "stdout", tty)
    output.line(f"web1 | {HOSTILE}\nsecond line")
    res = {"role": "r", "resource": "file:/etc/motd", "status": "changed", "changes": [],
           "message": f"host said {TITLE}", "diff": f"--- a\n+++ b\n@@ -1 +1 @@\n-x\n+{HOSTILE}\n",
           "source": ""}
    with click.Context(cli, obj=Context()):
        for text in output.diff_lines("web1", res):
            output.line(text, **output.diff_style(text, output.use_color()))
    out = tty.getvalue()
    # The only escapes left are click's own colours (SGR: ESC [ digits m).
    import re
    assert raw_controls(re.sub(r"\x1b\[[0-9;]*m", "", out), allowed="\n") == []
    assert "\x1b[32m+Debian \\x1b]0;owned" in out          # green, and the data escaped
    assert "second line" in out and MARKUP in out


def test_progress_lines_and_live_table_are_data():
    from rich.console import Console

    from orchestrate.progress import LiveProgress, PlainProgress

    stream = io.StringIO()
    plain = PlainProgress(stream)
    plain({"event": "host_step_end", "host": "web1", "step": f"s {MARKUP}", "status": "failed",
           "message": f"exit 1: {HOSTILE}\nnext", "duration": 1.0})
    assert raw_controls(stream.getvalue()) == []
    assert stream.getvalue().count("\n") == 1 and stream.getvalue().count("\t") == 3

    captured = io.StringIO()
    live = LiveProgress(console=Console(file=captured, force_terminal=True, width=400))
    try:
        live({"event": "host_step_start", "host": "web1", "step": f"{MARKUP}{TITLE}"})
    finally:
        live.close()
    out = captured.getvalue()
    assert "\x1b]" not in out and "[link=http://x]" in out and "[red]" in out


def test_an_error_quoting_a_host_is_printed_as_data(tmp_path, run_cli, monkeypatch):
    from inventory.errors import TransportError
    from orchestrate.commands import inventory_cmd

    def boom(*_a, **_k):
        raise TransportError(f"web1: sudo: {HOSTILE}\nsecond problem")

    monkeypatch.setattr(inventory_cmd, "Site", None, raising=False)
    from orchestrate import cli as cli_mod

    monkeypatch.setattr(cli_mod.Context, "site", property(boom))
    r = run_cli("--site", str(tmp_path), "inventory", "validate")
    assert r.code != 0
    assert raw_controls(r.err, allowed="\n") == []
    assert "error: web1: sudo: Debian \\x1b]0;owned" in r.err
    assert "error: second problem" in r.err
