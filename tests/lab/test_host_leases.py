"""Host leases against real SSH hosts: an operator's `apply`, a `drift --fix` and a
remediation-style `run` started at the same moment on overlapping hosts change each host one
at a time (the order is recorded on the host), the others say who holds it — or, with --wait,
run after; a holder killed with SIGKILL does not block its host; a lease broken by hand."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from inventory.site import Site
from tests.lab.fleetsite import fleet_site, metalchain
from tests.lab.sshd import METALCHAIN
from tests.waiting import wait_for

pytestmark = pytest.mark.lab

SUBNET = "10.91.0.0/24"
HOSTS = ["fleet01", "fleet02", "fleet03"]
HOLD_S = 4     # how long the recorder role keeps a host busy
# Each line on the host: "start ID" / "end ID" (ID: the recording shell's pid, $$), under flock.
RECORD = ("flock /root/order.lock sh -c 'echo start $1 >> /root/order' sh $$; sleep {s}; "
          "flock /root/order.lock sh -c 'echo end $1 >> /root/order' sh $$")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    with fleet_site(tmp_path_factory.mktemp("leases") / "site", len(HOSTS), SUBNET) as root:
        role = root / "playbooks" / "roles" / "recorder"
        role.mkdir(parents=True)
        (role / "recipe.yml").write_text(yaml.safe_dump([{"command": {
            "argv": ["/bin/sh", "-c", RECORD.format(s=HOLD_S)], "name": "record"}}]))
        (root / "playbooks" / "record.yml").write_text(
            "- name: remediate\n  hosts: fleet\n  steps:\n    - apply_role: recorder\n")
        (root / "playbooks" / "slow.yml").write_text(
            "- name: slow\n  hosts: fleet01\n  steps:\n    - command: [sleep, '120']\n")
        inventory = root / "inventory.yml"
        doc = yaml.safe_load(inventory.read_text())
        doc["groups"]["fleet"]["roles"] = ["recorder"]
        inventory.write_text(yaml.safe_dump(doc, sort_keys=False))
        yield root


def actors(site: Path, *extra: str) -> dict[str, list[str]]:
    """The three actors: argv per name; their targets overlap (fleet03 is in all three)."""
    s = ["--site", str(site)]
    return {
        "apply": [*s, "apply", "--role", "recorder", "fleet", "--json", *extra],
        "drift": [*s, "drift", "fleet", "--fix", "--limit", "fleet02,fleet03", "--json",
                  *extra],
        "remediation": [*s, "run", "record", "--limit", "fleet01,fleet03", "--json", *extra],
    }


TARGETS = {"apply": HOSTS, "drift": ["fleet02", "fleet03"],
           "remediation": ["fleet01", "fleet03"]}


def start_together(site: Path, *extra: str) -> dict[str, tuple[int, dict, str]]:
    """Start the three metalchain processes at once; each one's exit code, JSON, stderr."""
    procs = {name: subprocess.Popen([METALCHAIN, *argv], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, argv in actors(site, *extra).items()}
    out = {}
    try:
        for name, p in procs.items():
            stdout, stderr = p.communicate(timeout=300)
            out[name] = (p.returncode, json.loads(stdout) if stdout.strip() else {}, stderr)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait(10)
    return out


def order_on(host: str, site: Path) -> list[tuple[str, str]]:
    r = metalchain("--site", str(site), "exec", host, "--json", "--", "sh", "-c",
                   "cat /root/order 2>/dev/null; rm -f /root/order")
    assert r.returncode == 0, r.stdout + r.stderr
    return [tuple(ln.split()) for ln in json.loads(r.stdout)["hosts"][host]["stdout"]
            .splitlines()]   # type: ignore[misc]


def one_at_a_time(lines: list[tuple[str, str]]) -> bool:
    """Lines alternate start ID / end ID of the same ID: no two changes overlapped."""
    if len(lines) % 2:
        return False
    return all(a == ("start", b[1]) and b[0] == "end" for a, b in zip(lines[::2],
                                                                       lines[1::2], strict=True))


def ran(doc: dict) -> set[str]:
    return {h for h, v in doc.get("hosts", {}).items() if v["status"] == "changed"}


def clean_exit(action: str, doc: dict) -> int:
    """The exit code of a run that was not kept off any host: drift --fix says 3 when it
    found (and corrected) drift."""
    return 3 if action == "drift" and doc.get("drifted") else 0


def test_apply_drift_fix_and_a_run_at_once_change_each_host_one_at_a_time(site):
    results = start_together(site)
    held_reports = 0
    for host in HOSTS:
        lines = order_on(host, site)
        assert one_at_a_time(lines), f"{host}: changes overlapped: {lines}"
        runners = [a for a in TARGETS if host in ran(results[a][1])]
        assert len(lines) == 2 * len(runners), (host, lines, runners)
        assert runners, f"{host} was changed by no one"
        for a in TARGETS:
            if host in TARGETS[a] and a not in runners:
                why = results[a][1]["held"][host]
                assert why.startswith("held by run ") and " since " in why, why
                held_reports += 1
    # The three started together: someone found a host held (fleet03 is in all three).
    assert held_reports >= 1, results
    for a, (code, doc, stderr) in results.items():
        assert code == (1 if doc["held"] else clean_exit(a, doc)), (a, code, doc, stderr)
        assert doc["held"] or ran(doc) == set(TARGETS[a])
    held = next(v for _, doc, _ in results.values() for v in doc["held"].values())
    assert "`metalchain " in held and "pid " in held
    site_ = Site.open(site)
    try:
        assert site_.state.list_leases() == []
    finally:
        site_.close()


def test_with_wait_each_runs_every_host_after_the_other(site):
    results = start_together(site, "--wait-timeout", "120")
    for a, (code, doc, stderr) in results.items():
        assert code == clean_exit(a, doc) and doc["held"] == {}, (a, doc, stderr)
        assert ran(doc) == set(TARGETS[a]), (a, doc)
    waited = [stderr for _, _, stderr in results.values() if "waiting, held by run" in stderr]
    assert waited, "nobody had to wait"
    for host in HOSTS:
        lines = order_on(host, site)
        assert one_at_a_time(lines), f"{host}: changes overlapped: {lines}"
        assert len(lines) == 2 * sum(1 for a in TARGETS if host in TARGETS[a]), (host, lines)


def test_a_killed_holder_does_not_block_its_host(site):
    proc = subprocess.Popen([METALCHAIN, "--site", str(site), "run", "slow"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = Site.open(site)
    try:
        def slow_started() -> bool:
            runs = [r for r in store.state.list_runs() if r["name"].endswith("slow.yml")]
            return bool(runs) and any(e.step.endswith("sleep 120") or "slow" in e.step
                                      for e in store.state.journal_entries(runs[0]["uid"]))
        wait_for(slow_started, 60, "the slow run to start its step on fleet01")
        leases = {x.host: x for x in store.state.list_leases()}
        assert leases["fleet01"].pid == proc.pid
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    # The dead run's lease is still there (nobody released it) and listed ...
    r = metalchain("--site", str(site), "runs", "leases", "--json")
    assert [x["host"] for x in json.loads(r.stdout)["leases"]] == ["fleet01"], r.stdout
    # ... but its process is gone: the next run takes it over at once and says so.
    start = time.monotonic()
    r = metalchain("--site", str(site), "apply", "--role", "recorder", "fleet01", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert ran(json.loads(r.stdout)) == {"fleet01"}
    assert "fleet01: took over the lease of run" in r.stderr and "its process is gone" in \
        r.stderr, r.stderr
    assert time.monotonic() - start < 30      # not the 60 s expiry
    assert store.state.list_leases() == []
    store.close()
    order_on("fleet01", site)


def test_a_lease_of_another_controller_is_held_until_released_by_hand(site):
    from inventory.state.leases import Owner

    store = Site.open(site)
    try:
        ghost = Owner("ghost0run", "metalchain provision fleet02", owner_host="ctl-elsewhere",
                      pid=4242)
        assert store.state.acquire_leases(["fleet02"], ghost).acquired == ["fleet02"]
        r = metalchain("--site", str(site), "apply", "--role", "recorder", "fleet02", "--json")
        assert r.returncode == 1
        assert json.loads(r.stdout)["held"]["fleet02"].startswith(
            "held by run ghost0run (pid 4242 on ctl-elsewhere, `metalchain provision fleet02`)")
        r = metalchain("--site", str(site), "state", "release", "fleet02")
        assert r.returncode == 0 and "released the lease held by run ghost0run" in r.stdout
        r = metalchain("--site", str(site), "apply", "--role", "recorder", "fleet02", "--json")
        assert r.returncode == 0 and ran(json.loads(r.stdout)) == {"fleet02"}, r.stdout
        r = metalchain("--site", str(site), "state", "release", "fleet02")
        assert r.returncode == 2 and "has no lease" in r.stderr
    finally:
        store.close()
    order_on("fleet02", site)
