"""The runner's must-haves against the lab's SSH fleet (systemd hosts in their own
namespaces): a changed host key, rolling batches with max_fail_percentage, kill -9 + resume."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest

from inventory.site import Site
from tests.lab.sshd import METALCHAIN, keygen
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

FLEET = 10


def mc(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([METALCHAIN, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def fleet_site(tmp_path_factory):
    site = tmp_path_factory.mktemp("fleet") / "site"
    try:
        r = mc("lab", "up", "--dir", str(site), "--nodes", "0", "--fleet", str(FLEET),
               "--subnet", "10.82.0.0/24")
        assert r.returncode == 0, r.stderr
        (site / "playbooks").mkdir(exist_ok=True)
        yield site
    finally:
        mc("lab", "down", "--purge", "--dir", str(site))


def hosts() -> list[str]:
    return [f"fleet{i:02d}" for i in range(1, FLEET + 1)]


def test_changed_host_key_is_refused_others_proceed(fleet_site, tmp_path):
    site = Site.open(fleet_site)
    real = site.state.host_keys_of("fleet03")
    try:
        # fleet03 "was reinstalled" without re-pinning: the pinned key no longer matches.
        site.state.pin_host_key("fleet03", keygen(tmp_path / "other"), "test")
        r = mc("--site", str(fleet_site), "exec", "fleet", "--json", "--", "hostname")
        assert r.returncode == 1
        doc = json.loads(r.stdout)["hosts"]
        assert doc["fleet03"]["status"] == "unreachable"
        assert "HOST KEY CHANGED" in doc["fleet03"]["message"]
        assert {h: v["stdout"].strip() for h, v in doc.items() if h != "fleet03"} == {
            h: h for h in hosts() if h != "fleet03"}
    finally:
        site.state.pin_host_key("fleet03", real[0], "lab")
        site.close()


def test_serial_20_percent_max_fail_10_stops_after_first_batch(fleet_site):
    (fleet_site / "playbooks" / "roll.yml").write_text(
        "- name: rolling\n  hosts: fleet\n  serial: 20%\n  max_fail_percentage: 10\n"
        "  steps:\n    - name: three hosts fail\n"
        "      command: [sh, -c, 'case $(hostname) in fleet01|fleet05|fleet09) exit 1;; esac']\n"
        "    - name: mark\n      command: [touch, /root/rolled]\n")
    r = mc("--site", str(fleet_site), "run", "roll", "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["hosts"]["fleet01"]["status"] == "failed"
    assert doc["hosts"]["fleet02"]["status"] == "changed"
    assert sorted(doc["hosts"]) == ["fleet01", "fleet02"]
    assert doc["not_run"] == hosts()[2:]
    assert doc["counts"]["failed"] == 1 and doc["counts"]["not_run"] == 8
    assert "batch 1 failed on 1 of 2 hosts" in doc["stopped"]
    r = mc("--site", str(fleet_site), "exec", "fleet", "--json", "--", "test", "-e",
           "/root/rolled")
    touched = {h for h, v in json.loads(r.stdout)["hosts"].items() if v["exit_code"] == 0}
    assert touched == {"fleet02"}


def test_kill_9_then_resume_runs_each_host_step_once(fleet_site):
    (fleet_site / "playbooks" / "three.yml").write_text(
        "- name: three steps\n  hosts: fleet\n  steps:\n"
        "    - name: first\n      command: [sh, -c, 'echo s1 >> /root/side-effects']\n"
        "    - name: slow\n      command: [sleep, '4']\n"
        "    - name: third\n      command: [sh, -c, 'echo s3 >> /root/side-effects']\n")
    proc = subprocess.Popen([METALCHAIN, "--site", str(fleet_site), "run", "three"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    site = Site.open(fleet_site)
    try:
        def slow_everywhere() -> bool:
            runs = [r for r in site.state.list_runs() if r["name"].endswith("three.yml")]
            return bool(runs) and sum(
                1 for e in site.state.journal_entries(runs[0]["uid"])
                if e.step.endswith("/ slow")) == FLEET
        wait_for(slow_everywhere, 60, "every host to start the slow step")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    uid = next(r["uid"] for r in site.state.list_runs() if r["name"].endswith("three.yml"))
    # Its process is gone: shown interrupted (the row still says running until resumed).
    killed = site.state.get_run(uid)
    assert killed["status"] == "interrupted" and killed["recorded_status"] == "running"
    r = mc("--site", str(fleet_site), "run", "three", "--resume", uid, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    r = mc("--site", str(fleet_site), "exec", "fleet", "--json", "--", "cat",
           "/root/side-effects")
    counted = {h: v["stdout"].split() for h, v in json.loads(r.stdout)["hosts"].items()}
    assert counted == {h: ["s1", "s3"] for h in hosts()}
    assert site.state.get_run(uid)["status"] == "ok"
    site.close()


def test_event_log_has_every_host_step(fleet_site):
    logs = sorted(Path(fleet_site, "runs").glob("*.jsonl"))
    assert logs
    events = [json.loads(ln) for ln in logs[-1].read_text().splitlines()]
    assert events[0]["event"] == "run_start" and events[-1]["event"] == "run_end"
