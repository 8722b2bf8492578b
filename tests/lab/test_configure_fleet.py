"""Configure against the lab fleet: idempotence, check mode that changes nothing and predicts
exactly, drift detection and repair, handlers owed across a failure, round trips."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from inventory.site import Site
from tests.lab.fleetsite import fleet_site, metalchain

pytestmark = pytest.mark.lab

ROLES = Path(__file__).parent / "data" / "roles"
# What the demo role manages, read on the host to prove check mode changed nothing.
SNAPSHOT = ("sha256sum /etc/demo/demo.conf /etc/demo/extra.conf "
            "/etc/systemd/system/demo.service 2>&1; stat -c '%n %a %U' /etc/demo/* 2>&1; "
            "systemctl is-active demo; systemctl is-enabled demo; "
            "sysctl -n net.ipv4.ip_forward; getent passwd demo; getent group demo; true")


def mc(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return metalchain(*args, timeout=timeout)


def snapshot(site: Path) -> dict[str, str]:
    r = mc("--site", str(site), "exec", "fleet", "--json", "--", "sh", "-c", SNAPSHOT)
    return {h: v["stdout"] for h, v in json.loads(r.stdout)["hosts"].items()}


def apply(site: Path, *extra: str) -> dict:
    r = mc("--site", str(site), "apply", "--role", "demo", "fleet", "--json", *extra)
    doc = json.loads(r.stdout)
    doc["rc"] = r.returncode
    return doc


def step_data(doc: dict, host: str) -> dict:
    return doc["hosts"][host]["steps"][0]


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with fleet_site(tmp_path_factory.mktemp("cfg") / "site", 3, "10.84.0.0/24",
                    timeout=300) as root:
        shutil.copytree(ROLES, root / "playbooks" / "roles")
        yield root


def test_check_predicts_exactly_and_changes_nothing(site):
    before = snapshot(site)
    check = apply(site, "--check")
    assert check["rc"] == 0
    assert snapshot(site) == before                    # check mode touched nothing
    predicted = {h: sorted(json.dumps(c) for c in v["steps"][0]["changes"])
                 for h, v in check["hosts"].items()}
    real = apply(site)
    assert real["rc"] == 0, real
    done = {h: sorted(json.dumps(c) for c in v["steps"][0]["changes"])
            for h, v in real["hosts"].items()}
    assert predicted == done and all(predicted.values())


def test_second_run_changes_nothing_in_one_round_trip(site):
    again = apply(site)
    assert again["rc"] == 0
    assert again["counts"]["changed"] == 0 and again["counts"]["ok"] == 3
    r = mc("--site", str(site), "runs", "show", again["run"], "--json")
    for entry in json.loads(r.stdout)["journal"]:
        assert entry["status"] == "ok"
    # A converged host costs one round trip (the probe script), nothing else.
    assert {h: v["steps"][0]["round_trips"] for h, v in again["hosts"].items()} == {
        "fleet01": 1, "fleet02": 1, "fleet03": 1}


def test_drift_is_reported_exactly_and_fixed(site):
    mc("--site", str(site), "exec", "fleet02", "--", "sh", "-c",
       "echo tampered >> /etc/demo/demo.conf; systemctl stop demo; "
       "sysctl -qw net.ipv4.ip_forward=0; userdel demo")
    before = snapshot(site)
    r = mc("--site", str(site), "drift", "fleet", "--role", "demo", "--json")
    assert r.returncode == 3, r.stderr          # drift found
    assert json.loads(r.stdout)["drifted"] == ["fleet02"]
    doc = json.loads(r.stdout)["hosts"]
    assert doc["fleet01"]["drift"] == [] and doc["fleet03"]["drift"] == []
    # userdel also removes the user's own group: that is drift too.
    assert sorted(d["resource"] for d in doc["fleet02"]["drift"]) == [
        "file:/etc/demo/demo.conf", "group:demo", "service:demo",
        "sysctl:net.ipv4.ip_forward", "user:demo"]
    assert snapshot(site) == before
    stored = Site.open(site).state.drift_report()
    assert len(stored["fleet02"]) == 5 and "fleet01" not in stored
    r = mc("--site", str(site), "drift", "fleet", "--role", "demo", "--fix", "--json")
    assert r.returncode == 3                    # drift found, and corrected
    r = mc("--site", str(site), "drift", "fleet", "--role", "demo", "--json")
    assert r.returncode == 0, r.stdout
    assert all(v["drift"] == [] for v in json.loads(r.stdout)["hosts"].values())
    assert Site.open(site).state.drift_report() == {}


def test_handler_owed_by_a_change_runs_despite_a_later_failure(site, tmp_path):
    role = site / "playbooks" / "roles" / "owed"
    (role / "templates").mkdir(parents=True)
    (role / "templates" / "o.conf.j2").write_text("value = {{ value }}\n")
    (role / "recipe.yml").write_text(
        "- template: {path: /etc/owed.conf, source: o.conf.j2}\n  notify: note restart\n"
        "- command: [sh, -c, 'exit {{ fail_with }}']\n")
    (role / "handlers.yml").write_text(
        "note restart: {command: [sh, -c, 'echo restarted >> /root/handler-ran']}\n")
    (role / "defaults.yml").write_text("value: 1\nfail_with: 3\n")
    r = mc("--site", str(site), "apply", "--role", "owed", "fleet03", "--json")
    assert r.returncode == 1
    results = json.loads(r.stdout)["hosts"]["fleet03"]["steps"][0]
    assert results["status"] == "failed" and "exit code 3" in results["message"]
    out = mc("--site", str(site), "exec", "fleet03", "--json", "--", "cat", "/root/handler-ran")
    assert json.loads(out.stdout)["hosts"]["fleet03"]["stdout"].split() == ["restarted"]
    assert Site.open(site).state.owed_handlers("fleet03") == set()


def test_owed_handler_survives_an_interrupted_run(site):
    """A handler recorded as owed (the run died before it ran) runs on the next apply."""
    s = Site.open(site)
    s.state.set_owed_handlers("fleet01", {("demo", "restart demo")})
    s.close()
    out = mc("--site", str(site), "exec", "fleet01", "--json", "--", "systemctl", "show",
             "-p", "ExecMainStartTimestampMonotonic", "demo")
    started_before = json.loads(out.stdout)["hosts"]["fleet01"]["stdout"]
    doc = apply(site, "--limit", "fleet01")
    handlers = [r for r in step_data(doc, "fleet01").get("changes", [])]
    assert doc["rc"] == 0, doc
    assert any("handler 'restart demo'" in c for c in handlers), handlers
    out = mc("--site", str(site), "exec", "fleet01", "--json", "--", "systemctl", "show",
             "-p", "ExecMainStartTimestampMonotonic", "demo")
    assert json.loads(out.stdout)["hosts"]["fleet01"]["stdout"] != started_before
    assert Site.open(site).state.owed_handlers("fleet01") == set()
