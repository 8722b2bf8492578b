"""Every malformed inventory: exit code 2, one line naming file:line and the key, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.conftest import write_site

CASES = yaml.safe_load((Path(__file__).parent / "data" / "malformed_inventories.yml")
                       .read_text(encoding="utf-8"))

pytestmark = pytest.mark.unit


def _check(result, site: Path, line: int | None, expect: list[str]) -> None:
    assert result.code == 2, (result.out, result.err)
    assert "Traceback" not in result.err
    lines = result.err.strip().splitlines()
    assert len(lines) == 1, result.err
    prefix = f"error: {site / 'inventory.yml'}:" + (f"{line}:" if line else "")
    assert lines[0].startswith(prefix), (lines[0], prefix)
    for text in expect:
        assert text in lines[0], (text, lines[0])


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_malformed_inventory(case, tmp_path, run_cli, monkeypatch):
    monkeypatch.delenv("METALCHAIN_TEST_SURELY_UNSET_VAR", raising=False)
    site = write_site(tmp_path / "site", case["inventory"],
                      secrets="bmc-ok: pw\nlong-one: abcdefghijklmnopqrstuvwxyz\n")
    result = run_cli("--site", str(site), "inventory", "validate")
    _check(result, site, case["line"], case["expect"])


def test_table_is_big_enough():
    assert len(CASES) >= 15


@pytest.mark.parametrize("payload,expect,line", [
    (b"\x7fELF\x02\x01\x01\x00\x00\x00binary", "not a text file", 1),
    (b"hosts:\n  node1: {}\n  caf\xe9: {}\n", "not valid UTF-8", 3),
], ids=["binary file", "latin-1 file"])
def test_binary_or_non_utf8(payload, expect, line, tmp_path, run_cli):
    site = write_site(tmp_path / "site", payload)
    result = run_cli("--site", str(site), "inventory", "validate")
    _check(result, site, line, [expect])


def test_duplicate_host_across_files(tmp_path, run_cli):
    site = tmp_path / "site"
    (site / "inventory").mkdir(parents=True)
    (site / "inventory" / "a.yml").write_text("hosts:\n  node1: {}\n", encoding="utf-8")
    (site / "inventory" / "b.yml").write_text("groups:\n  g: {}\nhosts:\n  node1: {}\n",
                                              encoding="utf-8")
    result = run_cli("--site", str(site), "inventory", "validate")
    assert result.code == 2
    assert result.err.startswith(f"error: {site / 'inventory' / 'b.yml'}:4: host 'node1': ")
    assert f"also at {site / 'inventory' / 'a.yml'}:2" in result.err


def test_world_readable_secrets_file_is_refused(tmp_path, run_cli):
    site = write_site(tmp_path / "site", "hosts:\n  node1: {}\n")
    (site / "secrets.yml").chmod(0o644)
    result = run_cli("--site", str(site), "inventory", "validate")
    assert result.code == 2
    assert "too open" in result.err and "chmod 600" in result.err


def test_not_a_site(tmp_path, run_cli):
    result = run_cli("--site", str(tmp_path), "inventory", "list")
    assert result.code == 2
    assert "is not a metalchain site" in result.err


def test_usage_error_exit_code(run_cli):
    result = run_cli("inventory", "no-such-verb")
    assert result.code == 2
