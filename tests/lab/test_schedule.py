"""Schedules: a cron.d file that runs the playbook for real, read back by `list`, and the
host leases that keep a scheduled run off hosts another run is changing."""

from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from inventory.site import Site
from orchestrate.leases import host_leases
from orchestrate.schedule import parse_cron
from tests.cronline import cron_entry_command
from tests.lab.sshd import mc

pytestmark = pytest.mark.lab


def schedule_touch(site: Path, name: str, every: str, cron_dir: Path, marker: Path,
                   tag: str = "") -> str:
    """Schedule playbook ``drift`` (touch MARKER-h02TAG on h02, in fix mode, TAG given to the
    scheduled run as ``-e tag=TAG``) as ``name``, every ``every``; the text of the cron.d
    file written."""
    target = f"{marker}-{{{{ inventory_hostname }}}}{{{{ tag }}}}"
    (site / "playbooks" / "drift.yml").write_text(
        "- hosts: h02\n  steps:\n"
        f"    - command: {{argv: [touch, '{target}'], creates: '{target}'}}\n")
    r = mc(site, "schedule", "add", name, "--playbook", "drift", "--mode", "fix",
           "--every", every, "--cron-dir", str(cron_dir), "-e", f"tag={tag}")
    assert r.returncode == 0, r.stderr
    return (cron_dir / f"metalchain-{name}").read_text()


def test_schedule_add_run_list_remove(lab_site, tmp_path):
    cron_dir = tmp_path / "cron.d"
    text = schedule_touch(lab_site, "drift", "15m", cron_dir, lab_site.work / "drift")
    s = parse_cron(text)
    assert s is not None and s.when == "*/15 * * * *" and s.mode == "fix"
    # Run exactly what cron would run (this machine has no cron daemon running).
    entry = next(ln for ln in text.splitlines() if ln.startswith("*/15"))
    argv = shlex.split(entry.split(" root ", 1)[1].split(" >> ")[0])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (lab_site.work / "drift-h02").exists()
    # While another run holds h02's lease, the scheduled run leaves h02 alone and says so.
    site = Site.open(lab_site)
    try:
        with host_leases(site.state, ["h02"], "other0run", "metalchain apply h02"):
            overlap = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    finally:
        site.close()
    assert overlap.returncode == 1, overlap.stdout + overlap.stderr
    assert "held by run other0run" in overlap.stdout and "`metalchain apply h02`" in \
        overlap.stdout
    r = mc(lab_site, "schedule", "list", "--json", "--cron-dir", str(cron_dir))
    assert [x["name"] for x in json.loads(r.stdout)["schedules"]] == ["drift"]
    assert mc(lab_site, "schedule", "remove", "drift", "--cron-dir", str(cron_dir)
              ).returncode == 0
    assert not (cron_dir / "metalchain-drift").exists()
    r = mc(lab_site, "schedule", "remove", "drift", "--cron-dir", str(cron_dir))
    assert r.returncode == 2 and "no metalchain schedule named 'drift'" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--every", "15x"], "--every must look like"),
    (["--every", "90m"], "use 1-59m"),
    (["--cron", "* * *"], "--cron must have 5 fields"),
    (["--every", "1h", "--cron", "* * * * *"], "exactly one of"),
    (["--cron", "61 * * * *"], "minute '61' is out of range 0-59"),
    (["--cron", "0 3 * * 8"], "day of week '8' is out of range 0-7"),
    (["--every", "7m"], "cron cannot run every 7 minutes exactly: */7 restarts at each hour"),
])
def test_schedule_bad_input(lab_site, tmp_path, args, message):
    (lab_site / "playbooks" / "d.yml").write_text("- hosts: all\n  steps:\n"
                                                  "    - command: [/bin/true]\n")
    r = mc(lab_site, "schedule", "add", "x", "--playbook", "d", "--cron-dir",
           str(tmp_path / "c"), *args)
    assert r.returncode == 2 and message in r.stderr


def test_scheduled_line_runs_from_a_site_path_with_space_and_percent(lab_site, tmp_path):
    # The same site, moved to a directory whose name cron and sh would both mangle unquoted.
    site = tmp_path / "my site 100%"
    lab_site.rename(site)
    cron_dir = tmp_path / "cron.d"
    tag = "-it's 50% $HOME"  # -e passed through: quoted for cron and sh alike
    text = schedule_touch(site, "pct", "5m", cron_dir, lab_site.work / "ran", tag)
    s = parse_cron(text)
    assert s is not None and s.site == site and s.mode == "fix"
    assert s.extra == (f"tag={tag}",)
    entry = next(ln for ln in text.splitlines() if ln.startswith("*/5"))
    # Run it as cron would: cut at the first bare %, unescape \%, hand it to /bin/sh -c.
    done = subprocess.run(["/bin/sh", "-c", cron_entry_command(entry)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (lab_site.work / f"ran-h02{tag}").exists()
    log = site / "runs" / "schedule-pct.log"
    assert log.is_file() and "h02" in log.read_text()
