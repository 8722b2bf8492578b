"""Shell injection, unit tier (issue 13): every hostile value in every argument of every
resource kind of the registry is refused at load or reaches the host scripts only inside
single quotes (and, when it looks like an option, after ``--``). The lab tier
(tests/lab/test_injection_lab.py) applies the same cases on a real host."""

from __future__ import annotations

import collections

import pytest

from configure.command import KEYS as COMMAND_KEYS
from configure.resources import RESOURCE_KINDS, ResourceSpecError, parse_resource
from configure.resources.base import Resource, q
from tests.hostile import ARGUMENTS, EXEMPT, cases

pytestmark = pytest.mark.unit


def quoting(script: str) -> tuple[list[bool], int]:
    """Per character of ``script``: is it inside single quotes (where sh interprets
    nothing)? And the nesting depth left at the end (1 for a script sh would parse whole).

    Follows what matters here: single and double quotes, backslashes, ``$(...)`` (inside
    double quotes too, where quoting starts afresh) and ``( ... )`` subshells."""
    inside = [False] * len(script)
    stack = ["n"]
    i = 0
    while i < len(script):
        c, top = script[i], stack[-1]
        nxt = script[i + 1] if i + 1 < len(script) else ""
        if top == "s":
            if c == "'":
                stack.pop()
            else:
                inside[i] = True
        elif top == "d":
            if c == "\\":
                i += 1
            elif c == '"':
                stack.pop()
            elif c == "$" and nxt == "(":
                stack.append("n")
                i += 1
        else:
            if c == "\\":
                i += 1
            elif c == "'":
                stack.append("s")
            elif c == '"':
                stack.append("d")
            elif c == "$" and nxt == "(":
                stack.append("n")
                i += 1
            elif c == "(":
                stack.append("n")
            elif c == ")" and len(stack) > 1:
                stack.pop()
        i += 1
    return inside, len(stack)


def test_the_quoting_reader_sees_what_sh_would_run():
    inside, depth = quoting("echo 'a; b' \"$(cat 'c')\" x")
    assert depth == 1
    assert all(inside[i] for i in range(6, 10))           # a; b
    assert inside[20]                                    # c, quoted again inside "$( )"
    assert not inside[0] and not inside[len(inside) - 1]
    assert quoting("echo '")[1] == 2                      # an unclosed quote is seen


def scripts_of(res: Resource, found: str) -> list[str]:
    out = [p.script for p in res.probes()]
    try:
        decision = res.decide({res.identity: found})
    except ResourceSpecError:
        return out        # e.g. a line in a file that is absent, without create
    out += [a.script for a in decision.actions]
    if decision.apt_install is not None:
        out.append(decision.apt_install.check)
    return out


#: where an option-like value is still an operand: an option's own argument, test's
#: unary operators, a redirection
OPTION_ARGUMENTS = ("--comment ", "--shell ", "--home-dir ", "--home ", "--groups ",
                    "[ -e ", "[ -f ", "[ -L ", "[ -d ", "< ", "> ")


def check(case) -> str:
    """'rejected', 'not sent' (the value never reaches a script) or 'quoted'; raises
    AssertionError when the marker is anywhere sh would interpret it."""
    try:
        res = parse_resource(case.kind, case.spec)
    except ResourceSpecError:
        return "rejected"
    sent = False
    for found in ARGUMENTS[case.kind].found:
        for script in scripts_of(res, found):
            inside, depth = quoting(script)
            assert depth == 1, f"{case.id}: script does not parse: {script!r}"
            start = script.find(case.marker)
            while start >= 0:
                sent = True
                span = range(start, start + len(case.marker))
                assert all(inside[i] for i in span), f"{case.id}: unquoted in {script!r}"
                start = script.find(case.marker, start + 1)
            text = case.value[-1] if isinstance(case.value, list) else case.value
            if isinstance(text, str) and text.startswith("-") and case.kind != "command":
                token = q(text)
                for line in script.splitlines():
                    at = line.find(token)
                    if at >= 0:
                        before = line[:at]
                        assert " -- " in before or before.endswith(OPTION_ARGUMENTS), \
                            f"{case.id}: an option-like value before '--': {line!r}"
    return "quoted" if sent else "not sent"


def test_every_kind_and_every_argument_of_the_registry_has_hostile_cases():
    assert set(ARGUMENTS) == set(RESOURCE_KINDS), "a resource kind without hostile cases"
    for kind, cls in RESOURCE_KINDS.items():
        keys = set(cls.KEYS if cls.KEYS is not None else COMMAND_KEYS) | {"name"}
        missing = {k for k in keys if (kind, k) not in EXEMPT and ("*", k) not in EXEMPT
                   and k not in ARGUMENTS[kind].args}
        assert not missing, f"{kind}: arguments without hostile cases: {missing}"


def test_no_hostile_value_in_any_argument_is_ever_interpreted_by_the_shell():
    counts: collections.Counter[str] = collections.Counter()
    per_kind: dict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter)
    for case in cases():
        outcome = check(case)
        counts[outcome] += 1
        per_kind[case.kind][outcome] += 1
    total = sum(counts.values())
    print(f"\nhostile cases: {total}; {dict(counts)}")
    for kind, c in per_kind.items():
        print(f"  {kind}: {dict(c)}")
    assert total >= 700
    # the campaign reaches the host: many values pass validation and are sent quoted
    assert counts["quoted"] >= 50 and counts["rejected"] >= 300
