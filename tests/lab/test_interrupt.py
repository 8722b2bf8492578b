"""Stopping `metalchain run` as an operator does — Ctrl-C (SIGINT), SIGTERM, a second Ctrl-C,
kill -9 — against real SSH hosts (one OpenSSH server on ten loopback addresses), and
finishing a rollout afterwards with `--limit @failed`."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab.conftest import _populate
from tests.lab.sshd import METALCHAIN, LocalSshd, SitePath, addresses, keygen, mc
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

FOUR = ["h01", "h02", "h03", "h04"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[SitePath]:
    root = tmp_path_factory.mktemp("interrupt")
    s = SitePath(root / "site")
    (s / "keys").mkdir(parents=True)
    (s / "playbooks").mkdir()
    sshd = LocalSshd(root / "sshd", keygen(s / "keys" / "id_ed25519"), tuple(addresses()))
    sshd.start()
    try:
        yield _populate(s, sshd, root)
    finally:
        sshd.stop()


class Running:
    """A `metalchain run` in the background; its stderr read line by line as it comes."""

    def __init__(self, site: Path, *args: str) -> None:
        self.proc = subprocess.Popen([METALCHAIN, "--site", str(site), *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.err: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for ln in self.proc.stderr:
            self.lines.put(ln)

    def line_with(self, text: str, within: float) -> str:
        deadline = time.monotonic() + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line with {text!r} in {within} s: {self.err}")
            try:
                ln = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.err.append(ln)
            if text in ln:
                return ln

    def finish(self, within: float) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=within)
        return self.proc.returncode, out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@contextlib.contextmanager
def running(site: Path, *args: str) -> Iterator[Running]:
    r = Running(site, *args)
    try:
        yield r
    finally:
        r.kill()


def wait_files(paths: list[Path], within: float) -> None:
    wait_for(lambda: all(p.exists() for p in paths), within, f"{[str(p) for p in paths]}")


def slow_playbook(site: SitePath, name: str, seconds: int) -> Path:
    """Four hosts, two at a time: a slow first step (it leaves a file when it starts) and a
    second step that leaves a file when it runs."""
    work = site.work / name
    work.mkdir()
    (site / "playbooks" / f"{name}.yml").write_text(
        f"- name: {name}\n  hosts: {','.join(FOUR)}\n  steps:\n"
        f"    - name: nap\n      command: [sh, -c, 'touch \"$0\"; sleep {seconds}', "
        f"'{work}/started-{{{{ inventory_hostname }}}}']\n"
        f"    - name: mark\n      command: [touch, '{work}/marked-{{{{ inventory_hostname }}}}']\n")
    return work


def runs_show(site: Path, uid: str) -> dict:
    r = mc(site, "runs", "show", uid, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_first_stop_finishes_the_current_step_then_summary_and_130(site, sig):
    name = f"slow{sig.name.lower()}"
    work = slow_playbook(site, name, 4)
    with running(site, "run", name, "--parallel", "2", "--json") as run:
        wait_files([work / "started-h01", work / "started-h02"], 30)
        sent = time.monotonic()
        run.proc.send_signal(sig)
        ack = run.line_with("stopping after the current step on", 1.5)
        assert time.monotonic() - sent < 1.5
        assert "h01, h02" in ack and "Ctrl-C again to abort" in ack
        code, out = run.finish(30)
    assert code == 130, run.err
    doc = json.loads(out)
    assert doc["interrupted"] == "interrupted" and doc["exit_code"] == 130
    assert sorted(doc["incomplete"]) == ["h01", "h02"] and doc["not_run"] == ["h03", "h04"]
    assert {h: v["status"] for h, v in doc["hosts"].items()} == {"h01": "changed",
                                                                 "h02": "changed"}
    assert not list(work.glob("marked-*")) and not (work / "started-h03").exists()
    shown = runs_show(site, doc["run"])
    assert shown["run"]["status"] == "interrupted"
    assert shown["run"]["outcome"]["not_run"] == ["h03", "h04"]
    assert sorted((e["host"], e["step"], e["status"]) for e in shown["journal"]) == [
        ("h01", f"{name} / nap", "changed"), ("h02", f"{name} / nap", "changed")]
    events = [json.loads(ln) for ln in
              (site / "runs" / f"{doc['run']}.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "run_end" and events[-1]["interrupted"] == "interrupted"
    assert next(e for e in events if e["event"] == "run_stopping")["source"] == sig.name
    # What was not finished is what @failed names now.
    r = mc(site, "run", name, "--limit", "@failed", "--plan", "--json")
    assert json.loads(r.stdout)["plays"][0]["hosts"] == FOUR
    if sig == signal.SIGINT:
        # --resume finishes it: the naps done are not run again, the rest is.
        r = mc(site, "run", name, "--resume", doc["run"], "--json", timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        resumed = json.loads(r.stdout)["hosts"]
        assert [s["resumed"] for s in resumed["h01"]["steps"]] == [True, False]
        assert sorted(p.name for p in work.glob("marked-*")) == [f"marked-{h}" for h in FOUR]
        assert runs_show(site, doc["run"])["run"]["status"] == "ok"


def test_summary_then_second_ctrl_c_aborts_at_once(site):
    work = slow_playbook(site, "slowabort", 60)
    with running(site, "run", "slowabort", "--parallel", "2") as run:
        wait_files([work / "started-h01", work / "started-h02"], 30)
        run.proc.send_signal(signal.SIGINT)
        run.line_with("stopping after the current step on h01, h02", 1.5)
        sent = time.monotonic()
        run.proc.send_signal(signal.SIGINT)
        run.line_with("aborting", 1.5)
        code, out = run.finish(10)
        took = time.monotonic() - sent
    assert code == 130 and took < 5, (code, took, run.err)
    assert "aborted by a stop request (not run: h03, h04" in out, out
    uid = out.split("run ", 1)[1].split()[0].strip(":")
    shown = runs_show(site, uid)
    assert shown["run"]["status"] == "aborted"
    cut = {e["host"]: e for e in shown["journal"]}
    assert set(cut) == {"h01", "h02"}
    assert all(e["status"] == "failed" and "aborted" in e["detail"]["message"]
               for e in cut.values())


def test_a_killed_run_shows_interrupted(site):
    work = slow_playbook(site, "slowkill", 60)
    with running(site, "run", "slowkill", "--parallel", "2") as run:
        wait_files([work / "started-h01", work / "started-h02"], 30)
        uid = json.loads(mc(site, "runs", "list", "--json").stdout)["runs"][0]["uid"]
        r = mc(site, "runs", "list", "--json")
        assert json.loads(r.stdout)["runs"][0]["status"] == "running"
        run.proc.kill()
        run.proc.wait(10)
    r = mc(site, "runs", "list", "--json")
    row = json.loads(r.stdout)["runs"][0]
    assert row["uid"] == uid and row["status"] == "interrupted", row
    assert "interrupted" in mc(site, "runs", "list").stdout
    assert runs_show(site, uid)["run"]["status"] == "interrupted"
    # In doubt (h01, h02: killed mid-step) and never reached (h03, h04): all @failed.
    r = mc(site, "run", "slowkill", "--limit", "@failed", "--plan", "--json")
    assert json.loads(r.stdout)["plays"][0]["hosts"] == FOUR


def test_limit_failed_runs_the_hosts_max_fail_percentage_left_out(site):
    (site / "playbooks" / "roll.yml").write_text(
        "- name: rolling\n  hosts: fleet\n  serial: 2\n  max_fail_percentage: 10\n"
        "  steps:\n    - name: maybe fail\n"
        "      command: [sh, -c, 'test \"$0\" = no', '{{ fail }}']\n")
    r = mc(site, "run", "roll", "--json")
    doc = json.loads(r.stdout)
    assert r.returncode == 1 and sorted(doc["hosts"]) == ["h01", "h02"]
    later = [f"h{i:02d}" for i in range(3, 11)]
    assert doc["not_run"] == later
    r = mc(site, "run", "roll", "--limit", "@failed", "--plan", "--json")
    assert json.loads(r.stdout)["plays"][0]["hosts"] == ["h01", *later]
    r = mc(site, "run", "roll", "--limit", "@failed", "--json")
    again = json.loads(r.stdout)
    assert sorted([*again["hosts"], *again["not_run"]]) == ["h01", *later]
