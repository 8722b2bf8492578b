"""The runner against real SSH: one OpenSSH server answering on ten loopback addresses, each
an inventory host. (The lab fleet tests cover the same paths on separate systemd hosts.)"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from inventory.site import Site
from tests.lab.sshd import METALCHAIN, N, addresses, keygen, mc

pytestmark = pytest.mark.lab

def test_exec_on_all_hosts(lab_site):
    r = mc(lab_site, "exec", "fleet", "--json", "--", "sh", "-c", "echo $SSH_CONNECTION")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["hosts"]) == N
    for i, addr in enumerate(addresses(), 1):
        h = doc["hosts"][f"h{i:02d}"]
        assert h["exit_code"] == 0 and h["stdout"].split()[2] == addr


def test_changed_host_key_refused_others_proceed(lab_site, tmp_path):
    other = keygen(tmp_path / "other")
    inv = lab_site / "inventory.yml"
    text = inv.read_text().splitlines(keepends=True)
    # h03's pinned key is now a different one: the host "changed".
    idx = next(i for i, ln in enumerate(text) if ln.startswith("  h03:"))
    text[idx + 3] = text[idx + 3].replace(lab_site.sshd.host_pub, other)
    inv.write_text("".join(text))
    r = mc(lab_site, "exec", "fleet", "--json", "--", "true")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["hosts"]["h03"]["status"] == "unreachable"
    assert "does not match the pinned key" in doc["hosts"]["h03"]["message"] or \
        "HOST KEY CHANGED" in doc["hosts"]["h03"]["message"]
    assert all(doc["hosts"][h]["status"] == "changed" for h in doc["hosts"] if h != "h03")


def test_serial_and_max_fail_percentage(lab_site):
    (lab_site / "playbooks" / "roll.yml").write_text(
        "- name: rolling\n  hosts: fleet\n  serial: 20%\n  max_fail_percentage: 10\n"
        "  steps:\n    - name: maybe fail\n"
        "      command: [sh, -c, 'test \"$0\" = no', '{{ fail }}']\n")
    r = mc(lab_site, "run", "roll", "--json")
    assert r.returncode == 1, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc["hosts"]) == {"h01", "h02"}
    assert doc["hosts"]["h01"]["status"] == "failed"
    assert doc["hosts"]["h02"]["status"] == "changed"
    assert doc["not_run"] == [f"h{i:02d}" for i in range(3, N + 1)]
    assert "max_fail_percentage" in doc["stopped"]
    assert doc["counts"] == {"ok": 0, "changed": 1, "failed": 1, "unreachable": 0,
                             "skipped": 0, "not_run": 8}
    # --limit @failed re-runs exactly the failed host of the last run.
    r = mc(lab_site, "run", "roll", "--limit", "@failed", "--json")
    assert set(json.loads(r.stdout)["hosts"]) == {"h01"}


def test_event_log_streams_output(lab_site):
    (lab_site / "playbooks" / "out.yml").write_text(
        "- hosts: h01,h02\n  steps:\n    - name: talk\n"
        "      command: [sh, -c, 'echo to-out; echo to-err >&2']\n")
    r = mc(lab_site, "run", "out", "--json")
    assert r.returncode == 0, r.stderr
    run_uid = json.loads(r.stdout)["run"]
    events = [json.loads(ln) for ln in
              (lab_site / "runs" / f"{run_uid}.jsonl").read_text().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_start" and kinds[-1] == "run_end"
    outputs = {(e["host"], e["stream"], e["text"].strip()) for e in events
               if e["event"] == "host_output"}
    assert {("h01", "stdout", "to-out"), ("h01", "stderr", "to-err"),
            ("h02", "stdout", "to-out")} <= outputs
    ends = [e for e in events if e["event"] == "host_step_end"]
    assert {e["host"] for e in ends} == {"h01", "h02"}
    assert all(e["status"] == "changed" and e["duration"] >= 0 for e in ends)
    r = mc(lab_site, "runs", "show", run_uid, "--json")
    doc = json.loads(r.stdout)
    assert doc["run"]["status"] == "ok" and len(doc["journal"]) == 2


def test_retries(lab_site):
    marker = lab_site.work / "attempts-{{ inventory_hostname }}"
    (lab_site / "playbooks" / "retry.yml").write_text(
        "- hosts: h02\n  steps:\n    - retries: 2\n      delay: 0.1\n"
        f"      command: [sh, -c, 'echo x >> \"$0\"; test $(wc -l < \"$0\") -ge 3', "
        f"'{marker}']\n")
    r = mc(lab_site, "run", "retry", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    step = json.loads(r.stdout)["hosts"]["h02"]["steps"][0]
    assert step["attempts"] == 3 and step["status"] == "changed"


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_kill_and_resume_runs_every_host_step_once(lab_site):
    log = str(lab_site.work / "{{ inventory_hostname }}.log")
    (lab_site / "playbooks" / "three.yml").write_text(
        "- name: three steps\n  hosts: fleet\n  steps:\n"
        f"    - name: first\n      command: [sh, -c, 'echo s1 >> \"$0\"', '{log}']\n"
        "    - name: slow\n      command: [sleep, '3']\n"
        f"    - name: third\n      command: [sh, -c, 'echo s3 >> \"$0\"', '{log}']\n")
    proc = subprocess.Popen([METALCHAIN, "--site", str(lab_site), "run", "three"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        site = Site.open(lab_site)

        def all_slow_started() -> bool:
            runs = site.state.list_runs()
            if not runs:
                return False
            entries = site.state.journal_entries(runs[0]["uid"])
            return sum(1 for e in entries if e.step.endswith("/ slow")) == N
        _wait_for(all_slow_started, 60, "every host to start the slow step")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    run_uid = site.state.list_runs()[0]["uid"]
    assert site.state.get_run(run_uid)["status"] == "running"   # killed: never ended
    r = mc(lab_site, "run", "three", "--resume", run_uid, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    for i in range(1, N + 1):
        host = f"h{i:02d}"
        lines = (lab_site.work / f"{host}.log").read_text().split()
        assert lines == ["s1", "s3"], (host, lines)
        steps = doc["hosts"][host]["steps"]
        assert [s["resumed"] for s in steps] == [True, False, False]
    assert site.state.get_run(run_uid)["status"] == "ok"
    site.close()


def test_exec_unreachable_host_is_reported(lab_site):
    lab_site.sshd.stop()
    r = mc(lab_site, "exec", "h01", "--", "true")
    assert r.returncode == 1
    assert "h01 | UNREACHABLE |" in r.stdout and "cannot connect" in r.stdout


def test_facts_and_fact_selectors(lab_site):
    r = mc(lab_site, "facts", "h01,h02", "--json")
    assert r.returncode == 0, r.stderr
    hosts = json.loads(r.stdout)["hosts"]
    assert set(hosts) == {"h01", "h02"}
    for f in hosts.values():
        assert f["os_id"] == "debian" and f["cpus"] >= 1 and f["memory_mb"] > 100
        assert f["init"] in ("systemd", "other") and f["pkg_manager"] == "apt"
    (lab_site / "playbooks" / "f.yml").write_text(
        "- hosts: fact.os_id=debian\n  steps:\n    - command: [/bin/true]\n")
    r = mc(lab_site, "run", "f", "--plan", "--json")
    assert json.loads(r.stdout)["plays"][0]["hosts"] == ["h01", "h02"]
    r = mc(lab_site, "facts", "fact.os_id=debian", "--cached", "--json")
    assert set(json.loads(r.stdout)["hosts"]) == {"h01", "h02"}
