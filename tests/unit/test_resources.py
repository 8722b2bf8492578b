"""configure resources: decisions from probe output (table), framing and the act script."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
import yaml

from configure.engine import build_act_script, build_probe_script, parse_frames
from configure.resources import ResourceSpecError, parse_resource
from configure.resources.files import Line

pytestmark = pytest.mark.unit

CASES = yaml.safe_load((Path(__file__).parent / "data" / "resource_decisions.yml").read_text())


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_decision(case):
    if "raises" in case and "found" not in case:
        with pytest.raises(ResourceSpecError, match=case["raises"]):
            parse_resource(case["kind"], case["spec"])
        return
    res = parse_resource(case["kind"], case["spec"])
    assert [p.key for p in res.probes()] == list(case["found"]) or case["kind"] == "command"
    if "raises" in case:
        with pytest.raises(ResourceSpecError, match=case["raises"]):
            res.decide(case["found"])
        return
    d = res.decide(case["found"])
    assert d.changes == case["changes"]
    assert bool(d.actions) == bool(case["changes"])


@pytest.mark.parametrize("old,spec,new", [
    ("a = 0\nb = 1\n", {"line": "a = 1", "regexp": "^a ="}, "a = 1\nb = 1\n"),
    ("a = 0\na = 2\n", {"line": "a = 1", "regexp": "^a ="}, "a = 1\n"),
    ("b = 1\n", {"line": "a = 1", "regexp": "^a ="}, "b = 1\na = 1\n"),
    ("a = 1\nb = 1\n", {"state": "absent", "regexp": "^a"}, "b = 1\n"),
    ("", {"line": "x"}, "x\n"),
])
def test_line_edit(old, spec, new):
    assert Line({"path": "/f", **spec}).wanted(old) == new


def test_frames_survive_noise_and_truncation():
    out = ("junk\n@@T B 0\nline one\n@@T E 0 0\n@@X B 1\n@@T B 1\n@@T E 1 0 trailing\n"
           "@@T B 2\npartial")
    frames = parse_frames(out, "T")
    assert frames[0] == ("line one", 0)
    assert frames[2] == ("partial", None)


def _sh(script: str) -> str:
    return subprocess.run(["sh", "-s"], input=script.encode(), capture_output=True,
                          timeout=30, check=True).stdout.decode()


def test_probe_script_isolates_failures():
    out = _sh(build_probe_script([(0, "echo a"), (1, "exit 3"), (2, "echo c")], "TOK"))
    frames = parse_frames(out, "TOK")
    assert frames[0][0] == "a" and frames[2][0] == "c" and 1 in frames


def test_act_script_stops_at_failure_but_runs_owed_handlers():
    # role A: action 0 notifies handler 9, action 1 fails, action 2 never runs;
    # handler 9 still runs (owed by 0); handler 8 (forced, owed from an earlier run) runs.
    script = build_act_script(
        [("A", [(0, "echo zero", (9,)), (1, "echo one; false", ()), (2, "echo two", ())],
          [(9, "echo handler"), (8, "echo forced")]),
         ("B", [(3, "echo three", ())], [(7, "echo not-owed")])],
        forced=[8], token="TOK")
    frames = parse_frames(_sh(script), "TOK")
    assert frames[0] == ("zero", 0)
    assert frames[1][1] != 0 and 2 not in frames and 3 not in frames
    assert frames[9] == ("handler", 0) and frames[8] == ("forced", 0)
    assert 7 not in frames


def test_a_file_with_diff_false_never_reads_or_shows_its_content():
    """For a credential file: the host's (possibly old) content is not fetched for the diff,
    and the diff says so instead of showing either side."""
    res = parse_resource("file", {"path": "/etc/metalchain/event.token", "content": "s3cret\n",
                                  "mode": "0600", "diff": False})
    probe = res.probes()[0].script
    assert "-le -1 ]" in probe
    old = base64.b64encode(b"old-token\n").decode()
    found = {res.identity: f"regular file|600|root|root\n{'0' * 64}\n{old}\n"}
    d = res.decide(found)
    assert d.changes == ["content /etc/metalchain/event.token"]
    assert "s3cret" not in d.diff and "old-token" not in d.diff and "not shown" in d.diff
    with pytest.raises(ResourceSpecError, match="diff must be true or false"):
        parse_resource("file", {"path": "/f", "content": "", "diff": "no"})
