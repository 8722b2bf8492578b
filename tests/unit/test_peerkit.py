"""bench/peerkit: the peer benchmark's workloads generated three ways (the same state in each
description), the parsers of the tools' output and of sshd's log, the table, the delay
forwarder."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from peerkit import (
    ansible_play,
    counts,
    delay,
    metalchain_role,
    proctree,
    pyinfra_deploy,
    table,
    workload,
)

pytestmark = pytest.mark.unit


@pytest.fixture(params=["w1", "w3"])
def w(request):
    return getattr(workload, request.param)()


def test_w1_is_the_realistic_role_of_the_issue():
    w = workload.w1()
    assert len(w.packages) == 10 and len(w.templates) == 5 and len(w.sysctls) == 10
    assert len(w.users) == 1 and w.services[0].handler
    assert any(t.notify == w.services[0].handler for t in w.templates)
    assert not next(t for t in w.templates if t.path == workload.DRIFT_TEMPLATE).notify


def test_w3_has_about_100_small_resources():
    assert 100 <= workload.w3().resource_count() <= 105


def test_persisted_sysctls_are_key_equals_value_lines(w):
    spec = w.sysctl_file_spec()
    assert spec.content.splitlines() == [f"{k}={v}" for k, v in w.sysctls]
    assert spec.content.endswith("\n")


def test_metalchain_role_states_everything(w):
    files = metalchain_role.role_files(w)
    recipe = yaml.safe_load(files["recipe.yml"])
    kinds = [next(iter(e)) for e in recipe]
    assert kinds.count("file") == len(w.all_files())
    assert kinds.count("sysctl") == len(w.sysctls)
    assert all(e["sysctl"]["persist"] is False for e in recipe if "sysctl" in e)
    assert kinds.count("line") == len(w.lines)
    assert kinds.count("template") == len(w.templates)
    for t in w.templates:
        assert files[f"templates/{t.name}"] == t.text
    if w.services:
        handlers = yaml.safe_load(files["handlers.yml"])
        assert handlers["restart cron"] == {"service": {"name": "cron", "state": "restarted"}}
    assert yaml.safe_load(files["defaults.yml"]) == (w.vars or {})


def test_ansible_playbook_states_the_same(w):
    [play] = yaml.safe_load(ansible_play.playbook(w))
    assert play["gather_facts"] is False and play["hosts"] == "fleet"
    tasks = play["tasks"]
    by_module = [next(k for k in t if k.startswith("ansible.")) for t in tasks]
    assert by_module.count("ansible.builtin.copy") == len(w.all_files())
    assert by_module.count("ansible.posix.sysctl") == len(w.sysctls)
    assert by_module.count("ansible.builtin.lineinfile") == len(w.lines)
    assert by_module.count("ansible.builtin.template") == len(w.templates)
    for t in tasks:
        if "ansible.posix.sysctl" in t:
            assert t["ansible.posix.sysctl"]["sysctl_file"] == w.sysctl_file
            assert t["ansible.posix.sysctl"]["reload"] is False
    copies = {t["ansible.builtin.copy"]["dest"]: t["ansible.builtin.copy"]["content"]
              for t in tasks if "ansible.builtin.copy" in t}
    assert copies == {f.path: f.content for f in w.all_files()}
    # the file comes before the sysctls: they then find their key=value in it
    assert by_module.index("ansible.builtin.copy") < by_module.index("ansible.posix.sysctl")


def test_ansible_config_is_the_fastest_fair_one():
    cfg = ansible_play.config(50, "/k/known_hosts", "/cp")
    assert "forks = 50" in cfg and "pipelining = True" in cfg
    assert "ControlPersist=60s" in cfg and "gathering = explicit" in cfg
    assert "StrictHostKeyChecking=yes" in cfg and "UserKnownHostsFile=/k/known_hosts" in cfg
    inv = yaml.safe_load(ansible_play.inventory({"h1": ("127.0.0.1", 22601)}, "/key"))
    assert inv["fleet"]["hosts"]["h1"]["ansible_port"] == 22601


def test_pyinfra_deploy_carries_the_same_data(w):
    src = pyinfra_deploy.deploy(w)
    compile(src, "deploy.py", "exec")
    namespace: dict = {}
    data_line = next(ln for ln in src.splitlines() if ln.startswith("W = "))
    exec(data_line, namespace)
    data = namespace["W"]
    assert [f["content"] for f in data["files"]] == [f.content for f in w.all_files()]
    assert [tuple(kv) for kv in data["sysctls"]] == list(w.sysctls)
    assert "persist=False" in src
    inv = pyinfra_deploy.inventory({"h1": ("10.131.0.100", 22)}, "/key", "/kh")
    assert "'ssh_strict_host_key_checking': 'yes'" in inv


def test_lines_are_plain_text_for_pyinfra():
    # pyinfra matches a line as a regular expression
    for ln in workload.w3().lines:
        assert all(c.isalnum() or c in " _=" for c in ln.line)


def test_drift_hosts_are_ten_percent_at_least_one():
    assert workload.drift_hosts([]) == []
    assert workload.drift_hosts(["a", "b", "c"]) == ["a"]
    hosts = [f"h{i:03d}" for i in range(100)]
    picked = workload.drift_hosts(hosts)
    assert len(picked) == 10 and len(set(picked)) == 10


_TAIL = "    skipped=0    rescued=0    ignored=0"
ANSIBLE_OUT = f"""\
TASK [packages] ****
changed: [fleet100]

PLAY RECAP *********************************************************************
fleet100                   : ok=21   changed=20   unreachable=0    failed=0{_TAIL}
fleet101                   : ok=21   changed=0    unreachable=0    failed=1{_TAIL}
"""


def test_ansible_recap():
    assert ansible_play.recap(ANSIBLE_OUT) == {
        "fleet100": {"ok": 21, "changed": 20, "unreachable": 0, "failed": 0},
        "fleet101": {"ok": 21, "changed": 0, "unreachable": 0, "failed": 1}}
    assert ansible_play.recap("fleet100 : ok=1 changed=1 unreachable=0 failed=0") == {}


def test_ansible_changed_tasks():
    out = ("TASK [template /etc/bench/app.conf] ***\nchanged: [fleet01]\nok: [fleet02]\n"
           "RUNNING HANDLER [restart cron] ***\nchanged: [fleet01]\n")
    assert ansible_play.changed_tasks(out) == {
        "fleet01": ["template /etc/bench/app.conf", "restart cron"]}


def test_pyinfra_changed_ops():
    out = ("--> Starting operation: directory /etc/bench \n    [fleet01] Success\n"
           "    [fleet02] No changes\n--> Starting operation: user benchuser\n"
           "    [fleet01] Success\n")
    assert pyinfra_deploy.changed_ops(out) == {
        "fleet01": ["directory /etc/bench", "user benchuser"]}


def test_pyinfra_dry_plan():
    doc = {"plan": [{"name": "template /etc/bench/app.conf", "hosts_with_change": ["h1"],
                     "hosts_with_conditional_change": []},
                    {"name": "restart cron", "hosts_with_change": [],
                     "hosts_with_conditional_change": ["h1", "h2"]}], "results": None}
    assert pyinfra_deploy.dry_changes(doc) == {"h1": ["template /etc/bench/app.conf"]}


def test_metalchain_changed_items():
    doc = {"hosts": {"a": {"steps": [{"changes": [
        "bench_w1/sysctl:net.ipv4.ip_forward: net.ipv4.ip_forward: 0 -> 1",
        "bench_w1/user:benchuser: create user benchuser",
        "bench_w1/user:benchuser: something else"]}]}}}
    assert counts.metalchain_changed_items(doc) == {
        "a": ["bench_w1/sysctl:net.ipv4.ip_forward", "bench_w1/user:benchuser"]}


def test_pyinfra_outcomes():
    out = ("    [fleet100] Success\n    [fleet100] No changes\n    [fleet101] Error\n"
           "--> Starting operation: x\n")
    got = pyinfra_deploy.outcomes(out)
    assert got["fleet100"]["Success"] == 1 and got["fleet100"]["No changes"] == 1
    assert got["fleet101"]["Error"] == 1


def test_metalchain_changed_counts_resources_per_host():
    doc = {"counts": {"failed": 0, "unreachable": 0, "not_run": 0},
           "hosts": {"a": {"steps": [{"status": "changed", "message": "changed 20"}]},
                     "b": {"steps": [{"status": "ok", "message": "converged"}]},
                     "c": {"steps": [{"status": "changed", "message": "would change 1"}]}}}
    assert counts.metalchain_changed(doc) == {"a": 20, "b": 0, "c": 1}
    assert counts.metalchain_failures(doc) == []


SSHD = """\
Connection from 10.131.0.1 port 40000 on 10.131.0.100 port 22 rdomain ""
Accepted publickey for root from 10.131.0.1 port 40000 ssh2: ED25519 SHA256:x
pam_unix(sshd:session): session opened for user root(uid=0) by (uid=0)
Starting session: command for root from 10.131.0.1 port 40000 id 0
Starting session: command for root from 10.131.0.1 port 40000 id 1
Starting session: subsystem 'sftp' for root from 10.131.0.1 port 40000 id 2
Close session: user root from 10.131.0.1 port 40000 id 0
"""


def test_sshd_counts_connections_and_commands():
    assert counts.sshd_counts(SSHD.splitlines()) == (1, 3)
    assert counts.per_host_spread({"a": 1, "b": 3}) == {"min": 1, "max": 3}


def _run(wall, changed=0):
    return {"wall_s": wall, "cpu_s": wall / 2, "peak_rss_mb": 50.0 + wall,
            "sessions_per_host": {"min": 1, "max": 1}, "commands_per_host": {"min": 1,
                                                                             "max": 2},
            "changed_total": changed}


def test_table_medians_and_ratios():
    summary = {"metalchain": table.summarize([_run(1.0), _run(3.0), _run(2.0)]),
               "ansible": table.summarize([_run(60.0), _run(50.0), _run(55.0)]),
               "pyinfra": table.summarize([_run(8.0)])}
    assert summary["metalchain"]["wall_median_s"] == 2.0
    assert summary["metalchain"]["peak_rss_mb"] == 53.0
    assert table.ratios(summary) == {"ansible": 27.5, "pyinfra": 4.0}
    text = table.render({"W2": {"tools": summary, "ratios": table.ratios(summary)}})
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["workload", "tool"]
    assert "27.5" in lines[3] and "1-2" in lines[2]


def test_proctree_parsing():
    assert proctree.parse_stat("9 (x) y) S 1 9 9 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 5 10 7 0") \
        == (1, 7)
    tab = {1: (0, 1), 10: (1, 2), 11: (10, 3), 12: (11, 4), 20: (1, 5)}
    assert proctree.descendants(tab, [10]) == {10, 11, 12}
    assert proctree.tree_rss_bytes(tab, {10, 11}) == 5 * proctree.PAGE


def test_a_runs_tree_leaves_out_the_fleet_containers():
    # bench 5; fleet launcher 8 (started before the run) with container processes 9, 12;
    # the tool 6 with a worker 7; a ControlPersist master 10 reparented to the bench
    tab = {5: (1, 1), 6: (5, 1), 7: (6, 1), 8: (5, 1), 9: (8, 1), 12: (9, 1), 10: (5, 1)}
    assert proctree.run_tree(tab, 5, 6, before={5, 8, 9}) == {6, 7, 10}


def test_delay_map_parsing():
    assert delay.parse_map(["22600=10.131.0.100:22"]) == {
        ("127.0.0.1", 22600): ("10.131.0.100", 22)}
    assert delay.parse_map(["127.0.131.7:22600=10.131.0.106:22"]) == {
        ("127.0.131.7", 22600): ("10.131.0.106", 22)}
    with pytest.raises(ValueError):
        delay.parse_map(["22600:10.131.0.100"])


def test_delay_forwarder_adds_the_round_trip_time():
    async def scenario() -> float:
        async def echo(r, wr):
            while data := await r.read(100):
                wr.write(data)
                await wr.drain()
            wr.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        target = server.sockets[0].getsockname()[1]
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(delay.serve({("127.0.0.1", port): ("127.0.0.1", target)}, 0.02,
                                               ready=ready, stop=stop))
        await ready.wait()
        r, wr = await asyncio.open_connection("127.0.0.1", port)
        start = time.monotonic()
        wr.write(b"ping")
        await wr.drain()
        got = await asyncio.wait_for(r.readexactly(4), 2)
        took = time.monotonic() - start
        assert got == b"ping"
        wr.close()
        stop.set()
        await task
        server.close()
        return took

    took = asyncio.run(scenario())
    assert 0.04 <= took < 0.5
