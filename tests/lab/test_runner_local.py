"""The runner against real SSH: one OpenSSH server answering on ten loopback addresses, each
an inventory host. (The lab fleet tests cover the same paths on separate systemd hosts.)"""

from __future__ import annotations

import json

import pytest

from tests.lab.sshd import N, addresses, mc

pytestmark = pytest.mark.lab

def test_exec_on_all_hosts(lab_site):
    r = mc(lab_site, "exec", "fleet", "--json", "--", "sh", "-c", "echo $SSH_CONNECTION")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["hosts"]) == N
    for i, addr in enumerate(addresses(), 1):
        h = doc["hosts"][f"h{i:02d}"]
        assert h["exit_code"] == 0 and h["stdout"].split()[2] == addr


def test_limit_failed_reruns_the_failed_hosts(lab_site):
    (lab_site / "playbooks" / "maybe.yml").write_text(
        "- hosts: fleet\n  steps:\n    - name: maybe fail\n"
        "      command: [sh, -c, 'test \"$0\" = no', '{{ fail }}']\n")
    r = mc(lab_site, "run", "maybe", "--json")
    assert r.returncode == 1
    failed = {h for h, v in json.loads(r.stdout)["hosts"].items() if v["status"] == "failed"}
    assert failed == {"h01", "h05", "h09"}
    r = mc(lab_site, "run", "maybe", "--limit", "@failed", "--json")
    assert set(json.loads(r.stdout)["hosts"]) == failed


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
