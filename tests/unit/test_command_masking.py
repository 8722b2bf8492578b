"""The command step masks the host's secret values in everything it reports: message,
changes, output, streamed output events and transport errors (the host gets the real value)."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest

from configure.command import CommandStep, parse_command
from configure.ssh import CommandResult, Shell, quote_command
from inventory.errors import TransportError
from inventory.secrets import Masker, Secret

pytestmark = pytest.mark.unit

CANARY = "CANARY-cmd-91b2"


class FakeConnection:
    def __init__(self, exit_code: int = 0, fail: bool = False) -> None:
        self.exit_code, self.fail = exit_code, fail
        self.ran: list[Any] = []

    def run(self, command, *, timeout, become=False, sink=None, stdin=None):
        line = quote_command(["sh", "-c", command.script] if isinstance(command, Shell)
                             else command)
        self.ran.append(command)
        if self.fail:
            raise TransportError(f"host 'h1': command timed out after {timeout:g} s: {line}")
        # Guards (test ...) fail, so the command itself runs.
        code = 1 if isinstance(command, list) and command[0] == "test" else self.exit_code
        if sink:
            sink("stdout", f"token is {CANARY}\n")
        return CommandResult("h1", line, code, f"token is {CANARY}\n",
                             f"warn {CANARY}\n", 0.0)


@dataclass
class Ctx:
    conn: FakeConnection
    check: bool = False
    host: str = "h1"
    vars: dict[str, Any] = field(default_factory=lambda: {
        "nested": {"list": [Secret(CANARY, "env:CANARY")]}, "plain": "x"})
    state: Any = None
    options: dict[str, Any] = field(default_factory=dict)
    deadline: float | None = None
    events: list[dict[str, Any]] = field(default_factory=list)

    def connection(self) -> FakeConnection:
        return self.conn

    def emit(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})


def _blob(outcome, ctx) -> str:
    return repr((outcome.message, outcome.changes, outcome.output, outcome.data, ctx.events))


@pytest.mark.parametrize("raw", [
    ["sh", "-c", 'echo "$0"', CANARY],
    {"argv": ["echo", f"--token={CANARY}"], "unless": ["test", CANARY, "=", "x"]},
    {"shell": f"echo {CANARY}"},
])
@pytest.mark.parametrize("exit_code", [0, 3])
def test_secret_in_arguments_is_masked_in_the_outcome(raw, exit_code):
    ctx = Ctx(FakeConnection(exit_code))
    outcome = CommandStep().run(ctx, parse_command(raw))
    assert outcome.status == ("changed" if exit_code == 0 else "failed")
    assert CANARY not in _blob(outcome, ctx)
    assert "***" in outcome.message
    # The host did get the real value.
    assert CANARY in repr(ctx.conn.ran[-1])


@pytest.mark.parametrize("raw", [
    {"argv": ["echo", CANARY], "creates": "/x"},
    ["echo", CANARY],
])
def test_check_mode_message_is_masked(raw):
    ctx = Ctx(FakeConnection(exit_code=1), check=True)
    outcome = CommandStep().run(ctx, parse_command(raw))
    assert CANARY not in _blob(outcome, ctx) and "***" in outcome.message


def test_transport_error_naming_the_command_is_masked():
    ctx = Ctx(FakeConnection(fail=True))
    with pytest.raises(TransportError) as info:
        CommandStep().run(ctx, parse_command(["echo", CANARY]))
    assert CANARY not in str(info.value) and "timed out" in str(info.value)


def test_guard_reason_is_masked():
    ctx = Ctx(FakeConnection(exit_code=0))
    outcome = CommandStep().run(ctx, parse_command({"argv": ["true"],
                                                    "unless": ["grep", CANARY, "/f"]}))
    assert outcome.status == "ok" and CANARY not in outcome.message


def test_parse_error_does_not_echo_rendered_values():
    with pytest.raises(ValueError) as info:
        parse_command(["echo", CANARY, {"x": CANARY}])
    assert CANARY not in str(info.value) and "item 2" in str(info.value)


class SplittingConnection(FakeConnection):
    """Streams the canary cut across chunk boundaries, as SSH reads may cut it."""

    def run(self, command, *, timeout, become=False, sink=None, stdin=None):
        text = f"a{CANARY}b{CANARY}"
        for piece in (text[:5], text[5:9], text[9:25], text[25:]):
            sink("stdout", piece)
        return CommandResult("h1", "x", 0, text, "", 0.0)


def test_streamed_output_masks_a_secret_split_across_chunks():
    ctx = Ctx(SplittingConnection())
    CommandStep().run(ctx, parse_command(["true"]))
    streamed = "".join(e["text"] for e in ctx.events if e["event"] == "host_output")
    assert streamed == "a***b***"
    assert all(CANARY[:4] not in e["text"] for e in ctx.events)


@pytest.mark.parametrize("cuts", [(1,), (3, 7), (10, 11, 12), (29,)])
def test_masked_stream_any_cut(cuts):
    text = f"x {CANARY} y {CANARY[:6]} z {CANARY}"
    stream = Masker([CANARY]).stream()
    bounds = [0, *cuts, len(text)]
    out = "".join(stream.feed(text[a:b]) for a, b in pairwise(bounds)) + stream.flush()
    assert out == f"x *** y {CANARY[:6]} z ***"
