"""The CLI as an operator meets it: init, site discovery, --json documents, exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

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


def test_version(run_cli):
    r = run_cli("--version")
    assert r.code == 0 and r.out.startswith("metalchain, version ")


def test_json_documents(tmp_path, run_cli):
    site = tmp_path / "s"
    assert run_cli("init", str(site)).code == 0
    for args, kind in ((["inventory", "validate"], "inventory.validate"),
                       (["inventory", "show", "node2"], "inventory.host"),
                       (["inventory", "vars", "node2"], "inventory.vars"),
                       (["inventory", "graph"], "inventory.graph"),
                       (["state", "show"], "state.nodes"),
                       (["state", "show", "node1"], "state.node")):
        r = run_cli("--site", str(site), *args, "--json")
        assert r.code == 0, (args, r.err)
        doc = json.loads(r.out)
        assert doc["kind"] == kind
    r = run_cli("--site", str(site), "inventory", "vars", "node2", "--json")
    tz = json.loads(r.out)["vars"]["timezone"]
    assert tz["value"] == "Europe/Berlin" and tz["source"].startswith("host node2")
    assert tz["overridden"][0]["source"].startswith("group nodes")
    r = run_cli("--site", str(site), "inventory", "graph", "--json")
    graph = json.loads(r.out)["graph"]
    assert graph["children"][0]["group"] == "nodes"
    assert {c["group"] for c in graph["children"][0]["children"]} == {"hypervisors", "storage"}


def test_state_show_reflects_store(tmp_path, run_cli):
    from inventory.site import Site

    site_dir = tmp_path / "s"
    assert run_cli("init", str(site_dir)).code == 0
    site = Site.open(site_dir)
    site.state.set_node_state("node1", "enrolled", "added by test")
    site.state.set_node_state("node1", "powering_on", "power on")
    site.close()
    r = run_cli("--site", str(site_dir), "state", "show", "node1", "--json")
    node = json.loads(r.out)["node"]
    assert node["state"] == "powering_on"
    assert [t["to"] for t in node["transitions"]] == ["enrolled", "powering_on"]
