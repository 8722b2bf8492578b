"""converge() against a real local ``sh``: scripts that die before, between and after their
frames, output cut short, a lost connection, the step's deadline, and an apply that brings
its own facts. Each test runs a shell or two and takes milliseconds."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from configure.apply import ApplyRoleStep, outcome_of
from configure.engine import Item, RoleBlock, converge
from configure.resources.base import Action, Decision, Probe, Resource
from configure.ssh import CommandResult, Shell, quote_command
from inventory.errors import TransportError

pytestmark = pytest.mark.unit


class Fake(Resource):
    """Wants ``want`` on stdout of its probe; its action is any shell text."""

    kind = "fake"

    def __init__(self, name: str, *, probe: str = "echo old", act: str = "echo acting",
                 want: str = "new") -> None:
        super().__init__({})
        self.name, self.probe, self.act, self.want = name, probe, act, want

    @property
    def identity(self) -> str:
        return f"fake:{self.name}"

    def probes(self) -> list[Probe]:
        return [Probe(self.identity, self.probe)]

    def decide(self, found: Mapping[str, str]) -> Decision:
        if found[self.identity].strip() == self.want:
            return Decision()
        return Decision([Action(f"fix {self.name}", self.act)], [f"fix {self.name}"])


Mangle = Callable[[int, CommandResult], CommandResult]


@dataclass
class LocalSh:
    """A connection whose ``run`` is a local ``sh`` (like configure.ssh.SshConnection.run).

    ``mangle(call_number, result)`` may alter what the caller sees (cut output, another exit
    status); ``lose`` names the call numbers (1 = probe, 2 = act) that raise TransportError;
    ``act_prefix`` is shell put before the second script (the act script)."""

    mangle: Mangle | None = None
    lose: tuple[int, ...] = ()
    act_prefix: bytes = b""
    host: str = "local"
    calls: list[dict[str, Any]] = field(default_factory=list)

    def run(self, command: Sequence[str] | Shell, *, timeout: float = 600.0,
            become: bool = False, stdin: bytes | None = None) -> CommandResult:
        argv = ["sh", "-c", command.script] if isinstance(command, Shell) else list(command)
        self.calls.append({"argv": argv, "timeout": timeout, "become": become})
        n = len(self.calls)
        if n in self.lose:
            raise TransportError(f"host '{self.host}': connection lost")
        if n == 2:
            stdin = self.act_prefix + (stdin or b"")
        proc = subprocess.run(argv, input=stdin or b"", capture_output=True, timeout=timeout)
        # Reported the way a shell reports a child killed by signal N: 128+N. (Over SSH,
        # paramiko says -1 when sshd sends the signal instead of a status: see below.)
        code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
        result = CommandResult(self.host, quote_command(argv), code,
                               proc.stdout.decode(), proc.stderr.decode(), 0.0)
        return self.mangle(n, result) if self.mangle else result


def block(*resources: Resource, notify: Mapping[str, tuple[str, ...]] | None = None,
          handlers: Mapping[str, Resource] | None = None) -> list[RoleBlock]:
    notify = notify or {}
    items = [Item("r", res, tuple(notify.get(res.name, ())), f"recipe.yml:{i + 1}")
             for i, res in enumerate(resources)]
    hs = {name: Item("r", res, (), f"handlers.yml:{i + 1}", handler=name)
          for i, (name, res) in enumerate((handlers or {}).items())}
    return [RoleBlock("r", items, hs)]


def statuses(report) -> dict[str, tuple[str, str]]:
    return {r.identity: (r.status, r.message) for r in report.results}


def cut_short(round_trip: int, keep: int = 3) -> Callable[[int, CommandResult], CommandResult]:
    """A mangler for :class:`LocalSh`: round trip ``round_trip``'s output ends after ``keep``
    lines and its exit status is 0: output cut short that does not say so."""
    def cut(n: int, r: CommandResult) -> CommandResult:
        if n != round_trip:
            return r
        lines = r.stdout.splitlines()
        return CommandResult(r.host, r.command, 0, "\n".join(lines[:keep]) + "\n", "", 0)
    return cut


def test_a_healthy_run_changes_all_in_two_round_trips():
    conn = LocalSh()
    report = converge(conn, block(Fake("a"), Fake("b")), check=False)
    assert [r.status for r in report.results] == ["changed", "changed"]
    assert report.round_trips == 2
    assert outcome_of(report, False).status == "changed"


def test_action_script_dead_before_its_first_frame_fails_the_host():
    # sudo refused / out of memory before anything ran: exit 1, no frame at all.
    def refuse(n: int, r: CommandResult) -> CommandResult:
        if n == 2:
            return CommandResult(r.host, r.command, 1, "", "sudo: a password is required\n", 0)
        return r

    report = converge(LocalSh(mangle=refuse), block(Fake("a"), Fake("b")), check=False)
    outcome = outcome_of(report, False)
    assert outcome.status == "failed"
    assert "the action script did not finish" in outcome.message
    assert "exit 1: sudo: a password is required" in outcome.message
    assert statuses(report) == {
        "fake:a": ("skipped", "not run: the action script died "
                              "(exit 1: sudo: a password is required)"),
        "fake:b": ("skipped", "not run: the action script died "
                              "(exit 1: sudo: a password is required)")}


def test_action_script_killed_before_its_first_frame_fails_the_host():
    # The same with a real death: the shell is killed before it prints anything.
    conn = LocalSh(act_prefix=b"kill -9 $$\n")
    report = converge(conn, block(Fake("a")), check=False)
    assert outcome_of(report, False).status == "failed"
    assert statuses(report)["fake:a"] == ("skipped",
                                          "not run: the action script died (exit 137)")


def test_action_script_killed_between_frames_keeps_what_is_known():
    report = converge(LocalSh(), block(Fake("a"), Fake("b", act="kill -9 $$"), Fake("c"),
                                       Fake("ok", probe="echo new")), check=False)
    assert statuses(report) == {
        "fake:a": ("changed", ""),
        "fake:b": ("failed", "interrupted"),
        "fake:c": ("skipped", "not run: the action script died (exit 137)"),
        "fake:ok": ("ok", "")}
    outcome = outcome_of(report, False)
    assert outcome.status == "failed"
    assert outcome.message == ("host 'local': the action script did not finish while running "
                               "r/fake:b (exit 137)")
    assert outcome.changes == ["r/fake:a: fix a"]


def test_action_script_killed_after_every_resource_frame_fails_in_its_handler():
    blocks = block(Fake("a"), Fake("b"), notify={"b": ("restart",)},
                   handlers={"restart": Fake("h", probe="echo", act="kill -9 $$")})
    report = converge(LocalSh(), blocks, check=False)
    assert statuses(report) == {"fake:a": ("changed", ""), "fake:b": ("changed", ""),
                                "fake:h": ("failed", "interrupted")}
    assert outcome_of(report, False).status == "failed"
    assert report.owed_after == {("r", "restart")}   # still owed: it did not complete


@pytest.mark.parametrize("code,how", [(137, "(exit 137)"), (-1, "(killed, no exit status)")])
def test_nonzero_exit_after_all_frames_fails_the_host_with_real_statuses(code, how):
    def killed_at_the_end(n: int, r: CommandResult) -> CommandResult:
        return CommandResult(r.host, r.command, code, r.stdout, "", 0) if n == 2 else r

    report = converge(LocalSh(mangle=killed_at_the_end), block(Fake("a"), Fake("b")),
                      check=False)
    assert [r.status for r in report.results] == ["changed", "changed"]
    outcome = outcome_of(report, False)
    assert outcome.status == "failed" and how in outcome.message


def test_action_output_cut_short_with_exit_zero_is_not_success():
    report = converge(LocalSh(mangle=cut_short(round_trip=2)),
                      block(Fake("a"), Fake("b"), Fake("c")), check=False)
    st = statuses(report)
    assert st["fake:a"] == ("changed", "")
    assert st["fake:b"][0] == "skipped" and st["fake:c"][0] == "skipped"
    assert "the action script died" in st["fake:b"][1]
    assert outcome_of(report, False).status == "failed"


def test_connection_lost_during_the_act_round_trip_is_unreachable_with_what_is_known():
    conn = LocalSh(lose=(2,))
    blocks = block(Fake("a"), Fake("ok", probe="echo new"), notify={"a": ("restart",)},
                   handlers={"restart": Fake("h", probe="echo")})
    report = converge(conn, blocks, check=False)
    outcome = outcome_of(report, False)
    assert outcome.status == "unreachable"
    assert "connection lost during the action script" in outcome.message
    st = statuses(report)
    assert st["fake:ok"] == ("ok", "")
    assert st["fake:a"][0] == "failed" and st["fake:a"][1].startswith("in doubt")
    assert report.owed_after == {("r", "restart")}   # it may have changed: the handler is owed


def test_connection_lost_during_the_probe_changes_nothing_and_is_unreachable():
    conn = LocalSh(lose=(1,))
    report = converge(conn, block(Fake("a")), check=False)
    assert len(conn.calls) == 1
    assert outcome_of(report, False).status == "unreachable"
    assert statuses(report)["fake:a"][0] == "skipped"


def test_probe_script_killed_midway_is_an_error_not_absent():
    conn = LocalSh()
    report = converge(conn, block(Fake("a"), Fake("b", probe="kill -9 $$"), Fake("c")),
                      check=False)
    assert len(conn.calls) == 1                      # nothing was acted on
    assert statuses(report) == {
        "fake:a": ("skipped", "not run: the probe did not finish"),
        "fake:b": ("failed", "interrupted while probing"),
        "fake:c": ("skipped", "not run: the probe did not finish")}
    outcome = outcome_of(report, False)
    assert outcome.status == "failed"
    assert "the probe script did not finish (exit 137); interrupted while probing r/fake:b" \
        in outcome.message


def test_probe_output_cut_short_is_never_read_as_needs_change():
    conn = LocalSh(mangle=cut_short(round_trip=1))
    report = converge(conn, block(Fake("a", probe="echo new"), Fake("b", probe="echo new")),
                      check=False)
    assert len(conn.calls) == 1
    assert outcome_of(report, False).status == "failed"
    assert report.changed == 0


def test_round_trip_limits_come_from_the_deadline():
    conn = LocalSh()
    converge(conn, block(Fake("a")), check=False, deadline=time.monotonic() + 50)
    assert all(0 < c["timeout"] <= 50 for c in conn.calls) and len(conn.calls) == 2
    conn = LocalSh()
    converge(conn, block(Fake("a")), check=False)
    assert [c["timeout"] for c in conn.calls] == [120.0, 3600.0]


def test_past_deadline_the_action_script_is_not_sent():
    conn = LocalSh()
    report = converge(conn, block(Fake("a")), check=False, deadline=time.monotonic() - 1)
    assert len(conn.calls) == 1
    assert outcome_of(report, False).status == "failed"
    assert statuses(report)["fake:a"][0] == "skipped"


def test_ride_along_output_can_revise_the_plan():
    from configure.engine import RideAlong

    seen: list[str] = []

    def revise(text: str) -> list[RoleBlock] | None:
        seen.append(text)
        return block(Fake("other", probe="echo new"))

    conn = LocalSh()
    report = converge(conn, block(Fake("a")), check=False,
                      ride_along=RideAlong("echo riding", revise))
    assert seen == ["riding"]
    assert [r.identity for r in report.results] == ["fake:other"]
    assert report.round_trips == 2 and len(conn.calls) == 2 and report.changed == 0


# -- an apply brings its own facts ----------------------------------------------------------

@dataclass
class FakeStore:
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)

    def save_facts(self, host: str, data: dict[str, Any]) -> None:
        self.facts[host] = dict(data)

    def owed_handlers(self, host: str) -> set[tuple[str, str]]:
        return set()

    def set_owed_handlers(self, host: str, owed: set[tuple[str, str]]) -> None:
        pass

    def save_drift(self, host: str, drift: list[dict[str, Any]]) -> None:
        pass


@dataclass
class Ctx:
    conn: LocalSh
    vars: dict[str, Any]
    state: FakeStore
    options: dict[str, Any]
    host: str = "local"
    check: bool = False
    deadline: float | None = None

    def connection(self) -> LocalSh:
        return self.conn

    def emit(self, event: str, **fields: Any) -> None:
        pass


def _virt_role(tmp_path: Path) -> Path:
    role = tmp_path / "playbooks" / "roles" / "virt"
    role.mkdir(parents=True)
    (role / "recipe.yml").write_text(
        "- command: {argv: [touch, '{{ dir }}/same'], creates: '{{ dir }}/same'}\n"
        "  when: facts.get('virtualization') == here\n"
        "- command: {argv: [touch, '{{ dir }}/other'], creates: '{{ dir }}/other'}\n"
        "  when: facts.get('virtualization') != here\n")
    return tmp_path / "playbooks"


def test_apply_without_stored_facts_gathers_them_and_is_converged_in_one_round_trip(tmp_path):
    here = subprocess.run(["sh", "-c", "systemd-detect-virt 2>/dev/null || echo unknown"],
                          capture_output=True, text=True, timeout=10).stdout.strip()
    step, store, playbooks = ApplyRoleStep(), FakeStore(), _virt_role(tmp_path)

    def apply_once() -> tuple[Any, LocalSh]:
        conn = LocalSh()
        ctx = Ctx(conn, {"inventory_hostname": "local", "dir": str(tmp_path), "here": here,
                         "facts": store.facts.get("local", {})}, store,
                  {"playbooks_dir": playbooks})
        return step.run(ctx, ["virt"]), conn

    first, conn = apply_once()
    assert first.status == "changed", first
    assert (tmp_path / "same").exists() and not (tmp_path / "other").exists()
    assert store.facts["local"]["virtualization"] == here
    assert first.data["round_trips"] == 3 == len(conn.calls)   # facts, probe, act
    again, conn = apply_once()
    assert again.status == "ok", again
    assert again.data["round_trips"] == 1 == len(conn.calls)   # facts ride along


def test_apply_replans_when_fresh_facts_differ_from_stored(tmp_path):
    here = subprocess.run(["sh", "-c", "systemd-detect-virt 2>/dev/null || echo unknown"],
                          capture_output=True, text=True, timeout=10).stdout.strip()
    store = FakeStore({"local": {"virtualization": "stale-" + here, "gathered_at": 1.0}})
    conn = LocalSh()
    ctx = Ctx(conn, {"inventory_hostname": "local", "dir": str(tmp_path), "here": here,
                     "facts": store.facts["local"]}, store,
              {"playbooks_dir": _virt_role(tmp_path)})
    outcome = ApplyRoleStep().run(ctx, ["virt"])
    assert outcome.status == "changed"
    assert (tmp_path / "same").exists() and not (tmp_path / "other").exists()
    assert outcome.data["round_trips"] == 3      # probe + facts, probe again, act
    assert store.facts["local"]["virtualization"] == here


def test_what_a_dead_script_left_on_stderr_is_scrubbed_of_secrets():
    def leak(n: int, r: CommandResult) -> CommandResult:
        return CommandResult(r.host, r.command, 1, "", "cannot use s3cret-value\n", 0) \
            if n == 2 else r

    report = converge(LocalSh(mangle=leak), block(Fake("a")), check=False,
                      secret_values=["s3cret-value"])
    text = report.error + "".join(r.message for r in report.results)
    assert "s3cret-value" not in text and "cannot use ***" in report.error


def _plain(*resources: Resource) -> list[RoleBlock]:
    return [RoleBlock("r", [Item("r", res, (), f"recipe.yml:{i + 1}")
                            for i, res in enumerate(resources)])]


def test_several_lines_in_one_file_are_all_set_in_one_apply_and_then_left_alone(tmp_path):
    """Every probe runs before any action: the second and third line resources on a file
    decide from what the earlier ones leave, so one apply sets them all (before, the second
    refused: 'changed since it was probed') and a check run afterwards finds nothing."""
    from configure.resources.files import Line

    conf, fresh = tmp_path / "app.conf", tmp_path / "new.conf"
    conf.write_text("# app\nlevel = 1\n")

    def lines() -> list[RoleBlock]:
        return _plain(Line({"path": str(conf), "line": "level = 2", "regexp": "^level ="}),
                      Line({"path": str(conf), "line": "color = off"}),
                      Line({"path": str(conf), "line": "# app", "state": "absent"}),
                      Line({"path": str(fresh), "line": "a = 1", "create": True}),
                      Line({"path": str(fresh), "line": "b = 2", "create": True}))

    report = converge(LocalSh(), lines(), check=False)
    assert [r.status for r in report.results] == ["changed"] * 5, statuses(report)
    assert conf.read_text() == "level = 2\ncolor = off\n"
    assert fresh.read_text() == "a = 1\nb = 2\n"
    again = converge(LocalSh(), lines(), check=True)
    assert [r.status for r in again.results] == ["ok"] * 5, statuses(again)


def test_a_line_file_changed_by_someone_else_between_probe_and_act_is_refused(tmp_path):
    from configure.resources.files import Line

    conf = tmp_path / "app.conf"
    conf.write_text("level = 1\n")
    res = _plain(Line({"path": str(conf), "line": "level = 2", "regexp": "^level ="}),
                 Line({"path": str(conf), "line": "color = off"}))
    # between the probe and the act script, another writer changes the file
    sneak = f"echo 'other = 1' >> {conf}\n".encode()
    report = converge(LocalSh(act_prefix=sneak), res, check=False)
    assert report.results[0].status == "failed", statuses(report)
    assert "changed since it was probed" in report.results[0].message
    assert "other = 1" in conf.read_text()


def test_identical_probes_run_once_and_answer_every_resource_that_has_them(tmp_path):
    count = tmp_path / "probed"
    probe = f"echo x >> {count}; echo new"
    conn = LocalSh()
    report = converge(conn, block(Fake("a", probe=probe), Fake("b", probe=probe),
                                  Fake("c", probe=f"echo y >> {count}; echo old")),
                      check=False)
    assert count.read_text().split() == ["x", "y"]  # a's and b's probe once, c's once
    assert statuses(report) == {"fake:a": ("ok", ""), "fake:b": ("ok", ""),
                                "fake:c": ("changed", "")}
    assert report.round_trips == 2
