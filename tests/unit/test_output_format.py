"""What the CLI prints for people: plurals, sizes, diff headers and colour, run summaries
counted from the real per-resource outcomes, and a host's elapsed time in the live table."""

from __future__ import annotations

import io

import click
import pytest

from inventory.contracts import StepOutcome
from orchestrate import output
from orchestrate.reports import HostReport, RunReport, StepReport

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("n,word,many,expected", [
    (0, "host", None, "0 hosts"), (1, "host", None, "1 host"), (2, "host", None, "2 hosts"),
    (1, "batch", "batches", "1 batch"), (3, "batch", "batches", "3 batches"),
    (1, "fleet host", None, "1 fleet host")])
def test_plural(n, word, many, expected):
    from runtime.text import plural

    assert plural(n, word, many) == expected


@pytest.mark.parametrize("n,expected", [
    (0, "0 B"), (1, "1 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (1048575, "1.0 MiB"), (1258291, "1.2 MiB"), (5 * 2**30, "5.0 GiB"),
    (3 * 2**40, "3.0 TiB"), (2**60, "1024.0 PiB")])
def test_human_size(n, expected):
    from runtime.text import human_size

    assert human_size(n) == expected


def resource(name: str, status: str, *, handler: str | None = None, diff: str = "",
             changes: list[str] | None = None) -> dict:
    return {"role": "base", "resource": name, "status": status,
            "changes": changes or [], "diff": diff, "message": "", "handler": handler,
            "source": "roles/base/recipe.yml:3"}


def apply_step(status: str, results: list[dict]) -> StepReport:
    return StepReport("p", "apply base", StepOutcome(status, data={"results": results}), 1,
                      0.1)


def report_of(hosts: dict[str, list[StepReport]], **kw) -> RunReport:
    r = RunReport(uid="r1", **kw)
    for h, steps in hosts.items():
        hr = r.hosts.setdefault(h, HostReport(h))
        for s in steps:
            hr.add(s)
    return r


def test_summary_counts_resources_from_their_outcomes():
    """changed 3 of 41 resources on 5 hosts: 41 = every resource of every host, 3 = those
    whose own status is changed; handlers are not resources."""
    hosts = {}
    for i in range(5):
        results = [resource(f"file:/etc/f{j}", "ok") for j in range(7)]
        if i < 3:
            results.append(resource("file:/etc/hosts", "changed"))
            results.append(resource("restart x", "changed", handler="restart x"))
        elif i == 3:
            results.extend(resource(f"line:/etc/l{j}", "ok") for j in range(3))
        hosts[f"node{i}"] = [apply_step("changed" if i < 3 else "ok", results)]
    report = report_of(hosts)
    assert report.item_counts().total == 41
    assert output.summary_lines(report) == [
        "run r1: 5 hosts: 3 changed, 2 ok",
        "changed 3 of 41 resources on 5 hosts"]
    report.check = True
    assert output.summary_lines(report)[1] == "would change 3 of 41 resources on 5 hosts"


def test_print_summary_ends_with_host_and_resource_counts(capsys):
    results = [resource("file:/etc/hosts", "changed"), resource("file:/etc/motd", "ok"),
               resource("restart x", "changed", handler="restart x")]
    report = report_of({"node1": [apply_step("changed", results)],
                        "node2": [apply_step("ok", [resource("file:/etc/hosts", "ok")])]})
    output.print_summary(report)
    assert capsys.readouterr().out.splitlines()[-2:] == [
        "run r1: 2 hosts: 1 changed, 1 ok", "changed 1 of 3 resources on 2 hosts"]


def test_summary_names_failed_and_not_run_and_counts_steps_without_resources():
    ok = StepReport("p", "s", StepOutcome("ok"), 1, 0.1)
    bad = StepReport("p", "s", StepOutcome("failed", "boom"), 1, 0.1)
    report = report_of({"a": [ok, ok], "b": [bad]}, not_run=["c"])
    assert output.summary_lines(report) == [
        "run r1: 3 hosts: 1 ok, 1 failed, 1 not run",
        "changed 0 of 3 steps on 2 hosts (1 failed)"]
    one = report_of({"a": [apply_step("failed", [resource("file:/x", "failed"),
                                                   resource("file:/y", "skipped")])]})
    assert output.summary_lines(one) == [
        "run r1: 1 host: 1 failed", "changed 0 of 2 resources on 1 host (1 failed, 1 skipped)"]


DIFF = ("--- /etc/hosts (host)\n+++ /etc/hosts (wanted)\n@@ -1 +1,2 @@\n 127.0.0.1 localhost\n"
        "+10.0.0.1 node1\n")


def test_diff_header_cannot_be_taken_for_a_diff_line():
    res = resource("file:/etc/hosts", "changed", diff=DIFF, changes=["content /etc/hosts"])
    lines = output.diff_lines("node1", res)
    header = lines[0]
    assert header == "== node1 base/file:/etc/hosts: changed (roles/base/recipe.yml:3) =="
    assert not header.startswith(("---", "+++", "@@", " ", "+", "-", "\\"))
    assert lines[1:] == ["    content /etc/hosts", *DIFF.rstrip("\n").split("\n")]
    # exactly one header per resource: the diff's own ---/+++ lines are the only others
    assert [t for t in lines if t.startswith("==")] == [header]


def test_colour_only_on_a_terminal_without_no_color():
    assert output.color_wanted(is_tty=True, environ={}, no_color_flag=False)
    assert not output.color_wanted(is_tty=False, environ={}, no_color_flag=False)
    assert not output.color_wanted(is_tty=True, environ={"NO_COLOR": "1"}, no_color_flag=False)
    assert output.color_wanted(is_tty=True, environ={"NO_COLOR": ""}, no_color_flag=False)
    assert not output.color_wanted(is_tty=True, environ={}, no_color_flag=True)


def test_diff_lines_are_styled_by_kind():
    assert output.style_diff_line("+added", False) == "+added"
    assert output.style_diff_line("+added", True) == click.style("+added", fg="green")
    assert output.style_diff_line("-gone", True) == click.style("-gone", fg="red")
    assert output.style_diff_line("== h r: changed ==", True) == click.style(
        "== h r: changed ==", fg="cyan", bold=True)
    assert output.style_diff_line(" context", True) == " context"


def test_print_diffs_is_plain_when_not_a_terminal(capsys):
    report = report_of({"node1": [apply_step("changed", [
        resource("file:/etc/hosts", "changed", diff=DIFF)])]})
    output.print_diffs(report)
    out = capsys.readouterr().out
    assert "\x1b[" not in out
    assert out.splitlines()[0].startswith("== node1 base/file:/etc/hosts: changed")


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_live_progress_elapsed_stops_when_the_host_finishes():
    from rich.console import Console

    from orchestrate.progress import LiveProgress

    clock = FakeClock()
    console = Console(file=io.StringIO(), force_terminal=False, width=120)
    progress = LiveProgress(console=console, clock=clock)
    try:
        progress({"event": "host_step_start", "host": "a", "step": "s1"})
        progress({"event": "host_step_start", "host": "b", "step": "s1"})
        clock.now += 2.0
        progress({"event": "host_step_end", "host": "a", "step": "s1", "status": "ok"})
        clock.now += 30.0            # a is done; b keeps going
        rows = {h: (status, elapsed) for h, _, status, elapsed in progress._clocks.rows()}
        assert rows == {"a": ("ok", 2.0), "b": ("running", 32.0)}
        # a second step resumes the clock from the host's first start
        progress({"event": "host_step_start", "host": "a", "step": "s2"})
        clock.now += 1.0
        progress({"event": "host_step_end", "host": "a", "step": "s2", "status": "changed"})
        clock.now += 100.0
        rows = {h: (status, elapsed) for h, _, status, elapsed in progress._clocks.rows()}
        assert rows["a"] == ("changed", 33.0)
    finally:
        progress.close()


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("no_color_env,flag,coloured", [
    (None, False, True), ("1", False, False), (None, True, False)])
def test_print_diffs_colours_a_terminal_unless_told_not_to(monkeypatch, no_color_env, flag,
                                                           coloured):
    from orchestrate.cli import Context, cli

    if no_color_env is None:
        monkeypatch.delenv("NO_COLOR", raising=False)
    else:
        monkeypatch.setenv("NO_COLOR", no_color_env)
    tty = Tty()
    monkeypatch.setattr("sys.stdout", tty)
    report = report_of({"node1": [apply_step("changed", [
        resource("file:/etc/hosts", "changed", diff=DIFF)])]})
    with click.Context(cli, obj=Context(no_color=flag)):
        output.print_diffs(report)
    out = tty.getvalue()
    assert ("\x1b[" in out) is coloured
    assert click.unstyle(out).splitlines()[0].startswith("== node1 base/file:/etc/hosts")
    assert ("\x1b[32m+10.0.0.1 node1" in out) is coloured
