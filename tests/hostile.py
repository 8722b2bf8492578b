"""Hostile values for every argument of every resource kind (issue 13's shell-injection
campaign), shared by the unit tier (quoting of the generated scripts) and the lab tier
(applied on a real host, then the host is searched for the marker files).

Each hostile value runs ``touch MARKER_DIR/<n>`` if a shell ever interprets it; ``n`` is
unique per case, so a marker found names the case. A value is tried bare and behind a prefix
that makes it look right for its argument (``/tmp/mcinj/`` for a path), so it passes as much
load-time validation as it can.

:data:`ARGUMENTS` maps each resource kind to its base spec and, per argument, the prefix and
how the value is placed (a list item for list arguments). ``notify`` is not an argument of a
host command (it names a handler, checked against handlers.yml), and a command's ``shell`` is
raw shell by the operator's explicit choice: neither is in the campaign.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MARKER_DIR = "/tmp/mcpwn"
#: where literal paths land on the host (created and removed by the lab test)
LITERAL_DIR = "/tmp/mcinj"


def hostile_templates() -> list[tuple[str, str]]:
    """(label, value with {m} for the marker path)."""
    return [
        ("semicolon", "; touch {m}"),
        ("dollar-paren", "$(touch {m})"),
        ("backticks", "`touch {m}`"),
        ("newline", "x\ntouch {m}\n"),
        ("and-and", "x && touch {m}"),
        ("pipe", "x | touch {m}"),
        ("single-quote", "x'; touch {m}; '"),
        ("double-quote", "x\"; touch {m}; \""),
        ("dollar-brace", "${{IFS}}$(touch${{IFS}}{m})"),
        ("glob", "* ; touch {m}"),
        ("leading-dash", "--reference=/etc/shadow;touch {m}"),
        ("nul", "x\x00; touch {m}"),
        ("very-long", "A" * 5000 + "$(touch {m})"),
    ]


@dataclass(frozen=True)
class Arg:
    prefix: str = ""       # makes the value look right for this argument
    listed: bool = False   # the argument is a list: the value goes in as one item


@dataclass(frozen=True)
class KindCase:
    base: dict[str, Any]           # a valid spec; {i} in strings is the case number
    args: dict[str, Arg]
    #: stand-ins for the host's probe output that make decide() emit its actions (unit tier)
    found: tuple[str, ...] = ("",)


P = Arg(prefix=LITERAL_DIR + "/p")
ARGUMENTS: dict[str, KindCase] = {
    "package": KindCase({"name": "mcinj-pkg"}, {
        "name": Arg(prefix="mcinj", listed=True), "state": Arg(), "update_cache": Arg(),
        "purge": Arg(), "batch": Arg()}, ("",)),
    "file": KindCase({"path": LITERAL_DIR + "/f{i}", "content": "x\n"}, {
        "name": Arg(), "path": P, "content": Arg(), "content_base64": Arg(), "mode": Arg(),
        "owner": Arg(prefix="root"), "group": Arg(prefix="root"), "state": Arg(),
        "diff": Arg()}, ("absent", "regular file|600|nobody|nogroup\n" + "0" * 64 + "\n")),
    "directory": KindCase({"path": LITERAL_DIR + "/d{i}"}, {
        "name": Arg(), "path": P, "mode": Arg(), "owner": Arg(prefix="root"),
        "group": Arg(prefix="root"), "state": Arg()},
        ("absent", "directory|700|nobody|nogroup")),
    "line": KindCase({"path": LITERAL_DIR + "/l{i}", "line": "a = 1", "create": True}, {
        "name": Arg(), "path": P, "line": Arg(), "regexp": Arg(), "state": Arg(),
        "create": Arg()}, ("absent", "eHgKYSA9IDAK")),
    "service": KindCase({"name": "mcinj{i}.service", "enabled": False, "state": "stopped"}, {
        "name": Arg(prefix="mcinj"), "state": Arg(), "enabled": Arg()},
        ("enabled=enabled\nactive=active", "enabled=disabled\nactive=inactive")),
    "user": KindCase({"name": "mcinj{i}", "shell": "/bin/sh"}, {
        "name": Arg(prefix="mcinj"), "state": Arg(), "uid": Arg(),
        "groups": Arg(prefix="mcinj", listed=True), "shell": Arg(prefix="/bin/sh"),
        "home": Arg(prefix=LITERAL_DIR + "/h"), "system": Arg(), "comment": Arg()},
        ("absent", "mcinj:x:4000:4000:c:/nonexistent:/bin/false\n")),
    "group": KindCase({"name": "mcinjg{i}"}, {
        "name": Arg(prefix="mcinj"), "state": Arg(), "gid": Arg(), "system": Arg()},
        ("absent", "mcinjg:x:4000:")),
    "sysctl": KindCase({"name": "net.ipv4.ping_group_range", "value": "1 0", "persist": False},
                       {"name": Arg(prefix="net.ipv4."), "value": Arg(), "persist": Arg()},
                       ("runtime=0\npersisted=",)),
    "kernel_module": KindCase({"name": "mcinj{i}", "persist": False}, {
        "name": Arg(prefix="mcinj"), "persist": Arg()}, ("loaded=no\npersisted=",)),
    "command": KindCase({"argv": ["true"], "creates": LITERAL_DIR + "/c{i}"}, {
        "name": Arg(), "argv": Arg(listed=True), "creates": P,
        "unless": Arg(listed=True), "onlyif": Arg(listed=True), "timeout": Arg(),
        "become": Arg()}, ("creates=no\nunless=no\nonlyif=yes",)),
}
#: arguments outside the campaign, and why (a test checks every other key is covered)
EXEMPT = {("command", "shell"): "raw shell, chosen explicitly by the operator",
          ("*", "notify"): "names a handler, checked against handlers.yml at load"}


@dataclass(frozen=True)
class Case:
    n: int
    kind: str
    arg: str
    label: str
    value: Any             # what the spec gets (a list for list arguments)
    raw: str               # the hostile text itself
    spec: dict[str, Any]

    @property
    def marker(self) -> str:
        return f"{MARKER_DIR}/{self.n}"

    @property
    def id(self) -> str:
        return f"{self.kind}.{self.arg}.{self.label}"


def _fill(value: Any, i: int) -> Any:
    if isinstance(value, str):
        return value.replace("{i}", str(i))
    if isinstance(value, list):
        return [_fill(v, i) for v in value]
    return value


def cases() -> Iterator[Case]:
    """Every (kind, argument, hostile value, bare or prefixed) combination, numbered."""
    n = 0
    for kind, kc in ARGUMENTS.items():
        for arg, how in kc.args.items():
            for label, template in hostile_templates():
                for prefixed in ((False, True) if how.prefix else (False,)):
                    n += 1
                    raw = template.format(m=f"{MARKER_DIR}/{n}")
                    text = (how.prefix + raw) if prefixed else raw
                    value: Any = [text] if how.listed else text
                    if how.listed and kind == "command" and arg in ("unless", "onlyif"):
                        value = ["test", text]      # a hostile operand of a real command
                    if how.listed and kind == "command" and arg == "argv":
                        value = ["echo", text]
                    spec = {k: _fill(v, n) for k, v in kc.base.items()}
                    spec[arg] = value
                    yield Case(n, kind, arg, label + ("+prefix" if prefixed else ""),
                               value, raw, spec)
