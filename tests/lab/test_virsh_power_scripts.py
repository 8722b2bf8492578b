"""The vm_power step's fixed scripts under a real ``sh``, against a stand-in ``virsh`` on PATH
that keeps one domain's state in a file and logs its argv: each action calls virsh with the
domain after ``--``, is idempotent where it says so, and a virsh failure is the script's exit
status (never "nothing to do"). Processes only; no libvirt, no network; well under a second."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from configure.virsh_power import domain_power, power_argv

pytestmark = pytest.mark.lab

FAKE_VIRSH = r"""#!/bin/sh
# args: -q -c URI VERB -- DOMAIN
echo "$*" >> "$STATE_DIR/log"
verb=$4; dom=$6
[ "$5" = "--" ] || { echo "no -- before the domain" >&2; exit 2; }
[ "$dom" = "vm 1;x" ] || { echo "error: failed to get domain '$dom'" >&2; exit 1; }
state=$(cat "$STATE_DIR/state")
case "$verb" in
  domstate) printf '%s\n\n' "$state" ;;
  start) [ "$state" = "shut off" ] || { echo "error: domain is already active" >&2; exit 1; }
         echo running > "$STATE_DIR/state" ;;
  destroy) [ "$state" != "shut off" ] || { echo "error: domain is not running" >&2; exit 1; }
           echo "shut off" > "$STATE_DIR/state" ;;
  resume) echo running > "$STATE_DIR/state" ;;
  shutdown) echo "in shutdown" > "$STATE_DIR/state" ;;
  *) echo "unknown verb $verb" >&2; exit 2 ;;
esac
"""


@pytest.fixture
def libvirt(tmp_path: Path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    virsh = bin_dir / "virsh"
    virsh.write_text(FAKE_VIRSH, encoding="utf-8")
    virsh.chmod(0o755)
    (tmp_path / "state").write_text("shut off\n", encoding="utf-8")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "STATE_DIR": str(tmp_path)}

    def run(action: str, domain: str = "vm 1;x") -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(power_argv(action, domain)), env=env, capture_output=True,
                              text=True, timeout=10, check=False)

    def state() -> str:
        return (tmp_path / "state").read_text(encoding="utf-8").strip()

    def log() -> list[str]:
        path = tmp_path / "log"
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    return run, state, log


def test_each_action_does_what_it_says_and_is_idempotent(libvirt):
    run, state, log = libvirt
    r = run("status")
    assert r.returncode == 0 and domain_power(r.stdout) == ("off", "shut off")
    assert [run("on").stdout.strip(), state()] == ["powered on", "running"]
    assert [run("on").stdout.strip(), state()] == ["already on", "running"]
    assert [run("cycle").stdout.strip(), state()] == ["cycled", "running"]
    assert [run("off").stdout.strip(), state()] == ["powered off", "shut off"]
    assert [run("off").stdout.strip(), state()] == ["already off", "shut off"]
    assert [run("cycle").stdout.strip(), state()] == ["cycled", "running"]   # also from off
    assert [run("soft-off").stdout.strip(), state()] == ["soft off requested", "in shutdown"]
    assert all(line.startswith("-q -c qemu:///system ") and line.endswith(" -- vm 1;x")
               for line in log())


def test_a_virsh_failure_is_the_scripts_failure(libvirt):
    run, state, _log = libvirt
    for action in ("status", "on", "off", "cycle", "soft-off"):
        r = run(action, "vm2")
        assert r.returncode != 0, action
        assert "failed to get domain 'vm2'" in r.stderr, action
    assert state() == "shut off"
