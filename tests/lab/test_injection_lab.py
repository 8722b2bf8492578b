"""Shell injection on a real host (issue 13): every hostile value of tests/hostile.py, in every
argument of every resource kind of the registry, applied to a fleet host one resource at a
time; then the host (and the controller) are searched for the marker files a value would
have created if any shell had interpreted it. Rejected at load counts as safe (counted
apart); what is applied must land literally (checked on the host for paths and users)."""

from __future__ import annotations

import collections
import json
import os
import stat
import time
from pathlib import Path

import pytest

from configure.connect import ssh_target
from configure.engine import Item, RoleBlock, converge
from configure.resources import RESOURCE_KINDS, ResourceSpecError, parse_resource
from configure.ssh import Shell, SshConnection
from inventory.site import Site
from tests.hostile import ARGUMENTS, LITERAL_DIR, MARKER_DIR, cases
from tests.lab.fleetsite import fleet_site, metalchain

pytestmark = pytest.mark.lab

SUBNET = "10.105.0.0/24"
FIGURES: dict[str, object] = {}


@pytest.fixture(scope="module")
def site_root(tmp_path_factory):
    with fleet_site(tmp_path_factory.mktemp("inject") / "site", 1, SUBNET) as root:
        yield root


@pytest.fixture(scope="module")
def host(site_root):
    site = Site.open(site_root)
    conn = SshConnection(ssh_target(site.inventory, site.state, "fleet01",
                                    site.private_key()))
    try:
        r = conn.run(Shell(f"rm -rf {MARKER_DIR} {LITERAL_DIR} && "
                           f"mkdir -p {MARKER_DIR} {LITERAL_DIR}"), timeout=30)
        assert r.ok, r.stderr
        yield conn
    finally:
        conn.close()
        site.close()


def _literal_on_host(conn: SshConnection, case, res) -> bool | None:
    """Did the value land as itself? None when this case has nothing to look at."""
    if case.kind in ("file", "directory") and case.arg == "path":
        return conn.run(["test", "-e", res.path], timeout=30).ok
    if case.kind == "user" and case.arg in ("shell", "home", "comment"):
        r = conn.run(["getent", "passwd", "--", res.user], timeout=30)
        field = {"comment": 4, "home": 5, "shell": 6}[case.arg]
        return r.ok and r.stdout.rstrip("\n").split(":")[field] == case.spec[case.arg]
    return None


def test_no_hostile_value_is_executed_on_the_host(host):
    assert set(ARGUMENTS) == set(RESOURCE_KINDS)
    counts: collections.Counter[str] = collections.Counter()
    per_kind: dict[str, collections.Counter[str]] = collections.defaultdict(
        collections.Counter)
    not_literal = []
    start = time.monotonic()
    for case in cases():
        try:
            res = parse_resource(case.kind, case.spec)
        except ResourceSpecError:
            counts["rejected at load"] += 1
            per_kind[case.kind]["rejected"] += 1
            continue
        report = converge(host, [RoleBlock("inject", [Item("inject", res, (), case.id)])],
                          check=False, deadline=time.monotonic() + 60)
        assert not report.unreachable, report.error
        status = report.results[0].status if report.results else "failed"
        outcome = {"changed": "applied", "ok": "nothing to do"}.get(status, "host refused")
        counts[outcome] += 1
        per_kind[case.kind][outcome] += 1
        if outcome == "applied":
            literal = _literal_on_host(host, case, res)
            if literal is not None:
                counts["checked literal on the host"] += 1
                if not literal:
                    not_literal.append(case.id)
    applied_s = time.monotonic() - start
    r = host.run(Shell(f"ls -A {MARKER_DIR}"), timeout=30)
    assert r.ok, r.stderr
    executed_on_host = sorted(r.stdout.split(), key=int)
    executed_here = sorted(os.listdir(MARKER_DIR)) if os.path.isdir(MARKER_DIR) else []
    by_n = {str(c.n): c.id for c in cases()}
    FIGURES.update(cases=sum(1 for _ in cases()), **counts, applied_seconds=round(applied_s, 1),
                   executed_on_host=len(executed_on_host), executed_on_controller=len(
                       executed_here), per_kind={k: dict(v) for k, v in per_kind.items()})
    print("\n" + json.dumps(FIGURES, indent=1))
    assert not executed_on_host, [by_n.get(n, n) for n in executed_on_host]
    assert not executed_here, executed_here
    assert not not_literal, not_literal
    # the campaign reached the host: values passed validation and were applied
    assert counts["applied"] + counts["host refused"] + counts["nothing to do"] >= 100
    assert counts["checked literal on the host"] >= 20


def test_the_marker_would_have_been_seen(host):
    """The search above can fail: a value a shell does interpret leaves its marker."""
    probe = next(c for c in cases() if c.label == "dollar-paren")
    r = host.run(Shell(f"echo {probe.raw}"), timeout=30)
    assert r.ok
    r = host.run(["test", "-e", probe.marker], timeout=30)
    assert r.ok
    host.run(["rm", "-f", "--", probe.marker], timeout=30)




#: files under a site that may be readable by others: the operator's own inputs and public
#: keys (the lab's machinery under lab/ is no part of the product's files)
PUBLIC = ("inventory.yml", "metalchain.yml", "playbooks/", "inventory/", "lab/")


def test_what_commands_write_under_the_site_is_private(host, site_root):
    """After real commands (a run with a host's output and arguments, listings), every file
    metalchain wrote under the site that is not an operator input or a public key is 0600,
    every such directory 0700."""
    role = site_root / "playbooks" / "roles" / "inj"
    role.mkdir(parents=True, exist_ok=True)
    (role / "recipe.yml").write_text(f"- file: {{path: {LITERAL_DIR}/applied, content: x}}\n")
    for args in (["exec", "fleet01", "--", "echo", "host-output"], ["facts", "fleet01"],
                 ["apply", "--role", "inj", "fleet01", "--diff"], ["inventory", "list"],
                 ["runs", "list"], ["state", "show"]):
        r = metalchain("--site", str(site_root), *args, timeout=120)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    loose, checked = [], []
    for dirpath, dirnames, filenames in os.walk(site_root):
        rel_dir = Path(dirpath).relative_to(site_root)
        if rel_dir.parts and any(f"{rel_dir.parts[0]}/" == p for p in PUBLIC):
            dirnames.clear()
            continue
        for name in [*filenames, *dirnames]:
            path = Path(dirpath) / name
            rel = str(path.relative_to(site_root)) + ("/" if path.is_dir() else "")
            if rel in PUBLIC or rel.endswith(".pub") or path.is_symlink():
                continue
            checked.append(rel)
            want = 0o700 if path.is_dir() else 0o600
            if stat.S_IMODE(path.stat().st_mode) & 0o077:
                loose.append(f"{rel} {stat.S_IMODE(path.stat().st_mode):o} (want {want:o})")
    print(f"\nsite files checked: {len(checked)} {checked}; readable by others: {loose}")
    assert len(checked) >= 5
    assert not loose, loose


POSITIVE = [
    ("group", {"name": "mcok", "gid": 4711}),
    ("user", {"name": "mcok", "shell": "/bin/sh", "groups": ["mcok"], "comment": "ok user"}),
    ("directory", {"path": f"{LITERAL_DIR}/ok", "mode": "0750", "owner": "mcok",
                   "group": "mcok"}),
    ("file", {"path": f"{LITERAL_DIR}/ok/f", "content": "x\n", "mode": "0640",
              "owner": "mcok", "group": "mcok"}),
    ("line", {"path": f"{LITERAL_DIR}/ok/l", "line": "y", "create": True}),
    ("file", {"path": "/etc/systemd/system/mcok.service",
              "content": "[Service]\nExecStart=/bin/sleep infinity\n[Install]\n"
                         "WantedBy=multi-user.target\n"}),
    ("command", {"argv": ["systemctl", "daemon-reload"], "creates": f"{LITERAL_DIR}/ok/rl"}),
    ("command", {"argv": ["touch", f"{LITERAL_DIR}/ok/rl"], "creates": f"{LITERAL_DIR}/ok/rl"}),
    ("service", {"name": "mcok.service", "enabled": True, "state": "started"}),
    ("sysctl", {"name": "net.ipv4.ping_group_range", "value": "0 4711"}),
    ("package", {"name": "coreutils"}),
    ("package", {"name": "mcinj-not-installed", "state": "absent"}),
]


def test_every_kind_still_converges_with_its_operands_after_dashdash(host):
    """The positive control: valid values of every kind are applied on the host, and a
    second apply finds nothing to do (the probes, with their --, read the host right)."""
    def apply() -> list[str]:
        items = [Item("ok", parse_resource(k, s), (), f"ok:{i}")
                 for i, (k, s) in enumerate(POSITIVE)]
        report = converge(host, [RoleBlock("ok", items)], check=False,
                          deadline=time.monotonic() + 120)
        assert not report.error and not report.failed, (report.error, report.failed)
        return [r.status for r in report.results]

    first = apply()
    assert first.count("changed") >= 9, first
    assert apply() == ["ok"] * len(POSITIVE)
    r = host.run(Shell("getent passwd mcok; id -nG mcok; stat -c '%a %U %G' "
                       f"{LITERAL_DIR}/ok {LITERAL_DIR}/ok/f; systemctl is-active mcok; "
                       "sysctl -n net.ipv4.ping_group_range"), timeout=30)
    assert r.ok, r.stderr
    out = r.stdout.split("\n")
    assert out[0].split(":")[4:] == ["ok user", "/home/mcok", "/bin/sh"]
    assert out[2:5] == ["750 mcok mcok", "640 mcok mcok", "active"]
    assert out[5].split() == ["0", "4711"]
    # and back: removals take their operands after -- too (the group in an apply of its
    # own: userdel removes a user's group of the same name, which the probe cannot foresee)
    for gone in ([("service", {"name": "mcok.service", "enabled": False, "state": "stopped"}),
                  ("user", {"name": "mcok", "state": "absent"})],
                 [("group", {"name": "mcok", "state": "absent"})]):
        report = converge(host, [RoleBlock("ok", [Item("ok", parse_resource(k, s), (), "gone")
                                                  for k, s in gone])], check=False,
                          deadline=time.monotonic() + 60)
        assert not report.failed, report.results
    assert not host.run(["getent", "passwd", "mcok"], timeout=30).ok
    assert not host.run(["getent", "group", "mcok"], timeout=30).ok
