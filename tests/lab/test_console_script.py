"""The installed console script as an operator runs it: init, site discovery through
$METALCHAIN_SITE and the current directory, --json, exit codes. It starts metalchain
processes, so it is a lab test (the unit tier starts none)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.lab

METALCHAIN = str(Path(sys.executable).parent / "metalchain")


def test_console_script_init_validate_list(tmp_path):
    site = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if k != "METALCHAIN_SITE"}
    r = subprocess.run([METALCHAIN, "init", str(site)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((site / "secrets.yml").stat().st_mode) == 0o600
    # Site found through $METALCHAIN_SITE, then through the current directory.
    r = subprocess.run([METALCHAIN, "inventory", "list", "--json"], capture_output=True,
                       text=True, timeout=60, env={**env, "METALCHAIN_SITE": str(site)})
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["kind"] == "inventory.list" and doc["version"] == 1
    assert [h["name"] for h in doc["hosts"]] == ["node1", "node2", "store1"]
    assert all(h["bmc"]["password"] == "***" for h in doc["hosts"])
    r = subprocess.run([METALCHAIN, "inventory", "validate"], capture_output=True, text=True,
                       timeout=60, env=env, cwd=site)
    assert r.returncode == 0 and r.stdout.startswith("ok: 3 hosts, 3 groups"), r
    r = subprocess.run([METALCHAIN, "init", str(site)], capture_output=True, text=True,
                       timeout=60, env=env)
    assert r.returncode == 2 and "not empty" in r.stderr and "Traceback" not in r.stderr
