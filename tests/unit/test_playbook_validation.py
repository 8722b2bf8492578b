"""Malformed playbooks fail validation with file:line, and nothing runs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from inventory.site import Site
from orchestrate.playbook import batches, load_playbook
from orchestrate.registry import build_registry
from tests.conftest import write_site

pytestmark = pytest.mark.unit

CASES = yaml.safe_load((Path(__file__).parent / "data" / "malformed_playbooks.yml")
                       .read_text(encoding="utf-8"))
INVENTORY = "hosts:\n  h1: {address: 127.0.0.2}\n  h2: {address: 127.0.0.3}\n"


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
@pytest.mark.parametrize("mode", ["--plan", "run"])
def test_malformed_playbook(case, mode, tmp_path, run_cli):
    site = write_site(tmp_path / "site", INVENTORY)
    pb = site / "playbooks" / "site.yml"
    pb.parent.mkdir()
    pb.write_text(case["playbook"], encoding="utf-8")
    args = ["--site", str(site), "run", "site.yml"] + (["--plan"] if mode == "--plan" else [])
    result = run_cli(*args)
    assert result.code == 2, result
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"error: {pb}:{case['line']}:"), lines[0]
    for text in case["expect"]:
        assert text in lines[0], (text, lines[0])
    s = Site.open(site)
    assert s.state.list_runs() == []
    s.close()


def test_enough_cases():
    assert len(CASES) >= 10


def test_include_and_plan(tmp_path, run_cli):
    site = write_site(tmp_path / "site", INVENTORY)
    (site / "playbooks").mkdir()
    (site / "playbooks" / "common.yml").write_text("- command: [echo, inc]\n")
    (site / "playbooks" / "site.yml").write_text(
        "- name: p\n  hosts: all\n  serial: 1\n  steps:\n    - command: [echo, a]\n"
        "    - include: common.yml\n")
    pb = load_playbook(site / "playbooks" / "site.yml", build_registry())
    assert [s.name for s in pb.plays[0].steps] == ["command", "command"]
    assert pb.plays[0].steps[1].file.endswith("common.yml")
    result = run_cli("--site", str(site), "run", "site", "--plan")
    assert result.code == 0
    assert "batch 1: h1" in result.out and "batch 2: h2" in result.out


@pytest.mark.parametrize("n,serial,expected", [
    (10, ("20%",), [2, 2, 2, 2, 2]),
    (10, (3,), [3, 3, 3, 1]),
    (10, (1, "50%"), [1, 5, 4]),
    (3, ("10%",), [1, 1, 1]),
    (4, (), [4]),
    (0, (2,), []),
])
def test_batches(n, serial, expected):
    hosts = [f"h{i}" for i in range(n)]
    got = batches(hosts, serial)
    assert [len(b) for b in got] == expected
    assert [h for b in got for h in b] == hosts
