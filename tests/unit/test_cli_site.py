"""The CLI as an operator meets it: init, site discovery, --json documents, exit codes."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.unit

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
