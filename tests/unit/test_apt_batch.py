"""One apt transaction for an apply's package installs (configure/apt_batch.py): which installs
are joined, what never moves across what, and (against a local ``sh`` with a fake apt-get and
dpkg-query on PATH) that a failed joined transaction still fails the resource whose package is
broken, and only that one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from configure.apt_batch import Step, is_barrier, join_installs
from configure.engine import Item, RoleBlock, converge
from configure.resources import parse_resource
from configure.resources.base import Decision
from tests.unit.test_converge import LocalSh

pytestmark = pytest.mark.unit

def pkg(*names: str, **extra):
    return parse_resource("package", {"name": list(names), **extra})


def missing(res) -> Decision:
    return res.decide({res.identity: "\n".join(f"{n} un|" for n in res.names)})


def steps(*entries) -> list[Step]:
    out = []
    for n, entry in enumerate(entries):
        res, decision = entry if isinstance(entry, tuple) else (entry, missing(entry))
        out.append(Step(n, f"r/{res.identity}", res, decision))
    return out


def changed_file(path: str):
    res = parse_resource("file", {"path": path, "content": "x\n"})
    return res, res.decide({p.key: "absent" for p in res.probes()})


def test_three_installs_become_one_transaction_at_the_first():
    a, b, c = pkg("sudo", update_cache=True), pkg("prometheus-node-exporter"), pkg("qemu-utils")
    other = changed_file("/etc/hosts")
    joined = join_installs(steps(a, other, b, c))
    assert sorted(joined) == [0, 2, 3]
    head = joined[0].actions[0].script
    assert head.count(" install -y") == 2          # the joined one + the fallback
    assert "sudo prometheus-node-exporter qemu-utils" in head
    assert "apt-get update -q\n" in head               # one member asked for fresh lists
    for n in (2, 3):
        script = joined[n].actions[0].script
        assert script.startswith("if dpkg-query") and "installed by the apt transaction" in script
    # What each resource says it changes is its own.
    assert joined[2].changes == ["install package prometheus-node-exporter"]


@pytest.mark.parametrize("barrier", [
    lambda: changed_file("/etc/apt/sources.list.d/extra.list"),
    lambda: changed_file("/etc/dpkg/dpkg.cfg.d/local"),
    lambda: (lambda r: (r, r.decide({r.identity: "telnet ii |0.17"})))(
        pkg("telnet", state="absent")),
    lambda: (lambda r: (r, missing(r)))(pkg("ca-certificates", batch=False)),
])
def test_no_install_moves_across_what_changes_apt(barrier):
    a, b = pkg("sudo"), pkg("wget")
    res, decision = barrier()
    assert is_barrier(res, decision)
    assert join_installs(steps(a, (res, decision), b)) == {}


def test_an_unchanged_apt_file_is_no_barrier_and_a_handler_in_between_is():
    a, b = pkg("sudo"), pkg("wget")
    src = parse_resource("file", {"path": "/etc/apt/sources.list.d/m.list", "content": "x\n"})
    assert not is_barrier(src, Decision())
    assert sorted(join_installs(steps(a, (src, Decision()), b))) == [0, 2]
    res, decision = changed_file("/etc/apt/preferences.d/pin")
    seq = steps(a, b)
    seq.insert(1, Step(9, "r/handler", res, decision, handler=True))
    assert join_installs(seq) == {}


def test_a_single_install_is_left_as_it_is():
    assert join_installs(steps(pkg("sudo"), changed_file("/etc/hosts"))) == {}


FAKE_APT = """#!/bin/sh
# apt-get: records its arguments; "install" of a package named broken* fails (like a failing
# postinst); installed packages are files in $STATE.
echo "$*" >> "$STATE/calls"
[ "$1" = update ] && exit 0
shift
for a in "$@"; do case "$a" in broken*) echo "E: $a failed" >&2; exit 100;; esac; done
for a in "$@"; do case "$a" in -*|Dpkg*) ;; *) touch "$STATE/$a";; esac; done
"""
FAKE_DPKG_QUERY = """#!/bin/sh
# dpkg-query -W -f=FORMAT NAME
for name; do :; done
if [ -e "$STATE/$name" ]; then
  case "$2" in *Version*) echo "ii |1.0";; *) printf 'ii ';; esac
else exit 1; fi
"""


@pytest.fixture
def fake_apt(tmp_path: Path):
    bin_dir, state = tmp_path / "bin", tmp_path / "state"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("apt-get", FAKE_APT), ("dpkg-query", FAKE_DPKG_QUERY)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    prefix = f"export STATE={state}; export PATH={bin_dir}:{os.environ['PATH']}\n"
    return prefix, state


def converge_with(prefix: str, blocks: list[RoleBlock]):
    # Probes and actions both see the fake tools (LocalSh prefixes only the act script).
    for b in blocks:
        for it in b.items:
            res = it.resource
            original = res.probes

            def probes(original=original):
                return [type(p)(p.key, prefix + p.script) for p in original()]
            res.probes = probes  # type: ignore[method-assign]
    return converge(LocalSh(act_prefix=prefix.encode()), blocks, check=False)


def blocks_of(*roles: tuple[str, list]) -> list[RoleBlock]:
    return [RoleBlock(role, [Item(role, r, (), f"{role}/recipe.yml:{i}")
                             for i, r in enumerate(res)]) for role, res in roles]


def test_one_apt_get_install_for_three_roles_and_nothing_the_second_time(fake_apt):
    prefix, state = fake_apt
    blocks = lambda: blocks_of(("base", [pkg("sudo", update_cache=True)]),  # noqa: E731
                               ("node_exporter", [pkg("prometheus-node-exporter")]),
                               ("hypervisor", [pkg("qemu-utils", "libvirt-daemon-system")]))
    report = converge_with(prefix, blocks())
    assert [r.status for r in report.results] == ["changed"] * 3, report.results
    installs = [c for c in (state / "calls").read_text().splitlines() if c.startswith("install")]
    assert len(installs) == 1 and installs[0].endswith(
        "sudo prometheus-node-exporter qemu-utils libvirt-daemon-system")
    again = converge_with(prefix, blocks())
    assert [r.status for r in again.results] == ["ok"] * 3 and again.round_trips == 1


def test_a_broken_package_fails_its_own_resource_after_the_joined_transaction_fails(fake_apt):
    prefix, state = fake_apt
    report = converge_with(prefix, blocks_of(
        ("base", [pkg("sudo", update_cache=True)]),
        ("extra", [pkg("broken-thing")]),
        ("hypervisor", [pkg("qemu-utils")])))
    got = {r.identity: r.status for r in report.results}
    assert got == {"package:sudo": "changed", "package:broken-thing": "failed",
                   "package:qemu-utils": "skipped"}
    failed = next(r for r in report.results if r.status == "failed")
    assert "E: broken-thing failed" in failed.message
    assert (state / "sudo").exists() and not (state / "qemu-utils").exists()
