"""The power and verify step kinds, and power/verify as runs of the application core.

No BMC and no SSH: the BMC driver is a fake, and the verify kind is checked up to the point
where it would start pytest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import provision.power_step
from configure.verify import HostVerify, VerifyArgs, parse_verify, report_of
from inventory.contracts import StepOutcome
from inventory.errors import BmcError
from inventory.site import Site
from orchestrate import actions
from provision.power_step import PowerArgs, parse_power, power_action
from tests.conftest import write_site

pytestmark = pytest.mark.unit

PASSWORD = "bmc-pass-5d1e"
INVENTORY = """\
hosts:
  node1:
    address: 10.0.0.1
    bmc: {address: 127.0.0.1, port: 6230, username: admin, password: {secret: bmc}}
  node2:
    address: 10.0.0.2
    bmc: {address: 127.0.0.1, port: 6231, username: admin, password: {secret: bmc}}
  web1: {address: 10.0.0.3}
"""


class FakeBmc:
    def __init__(self, host: Any, calls: list[tuple[str, str, Any]]) -> None:
        self.host = host
        self.calls = calls

    def __enter__(self) -> FakeBmc:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def power_status(self, timeout: float | None = None) -> str:
        if self.host.name == "node2":
            raise BmcError("node2 (BMC 127.0.0.1:6231): no answer within 5 s")
        self.calls.append((self.host.name, "status", timeout))
        return "on"

    def power_cycle(self, timeout: float | None = None) -> None:
        self.calls.append((self.host.name, "cycle", timeout))

    def set_bootdev(self, device: str, persistent: bool = True,
                    timeout: float | None = None) -> Any:
        self.calls.append((self.host.name, f"bootdev {device} {persistent}", timeout))
        return type("Setting", (), {"device": device, "persistent": persistent})()


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = write_site(tmp_path / "site", INVENTORY, secrets=f"bmc: {PASSWORD}\n")
    calls: list[tuple[str, str, Any]] = []
    monkeypatch.setattr(provision.power_step, "driver_for",
                        lambda host, **kw: FakeBmc(host, calls))
    s = Site.open(root)
    s.calls = calls  # type: ignore[attr-defined]
    yield s
    s.close()


@pytest.mark.parametrize(("raw", "error"), [
    ({"action": "explode"}, "action must be one of"),
    ({"action": "bootdev"}, "bootdev needs device"),
    ({"action": "on", "device": "disk"}, "device is only for action: bootdev"),
    ({"action": "on", "wait": 1}, "unknown key 'wait'"),
    ({"action": "bootdev", "device": "disk", "persistent": "yes"}, "persistent must be"),
    (["on"], "expected {action"),
])
def test_power_arguments_are_validated(raw, error):
    with pytest.raises(ValueError, match=error):
        parse_power(raw)


def test_power_action_calls_the_driver():
    calls: list[tuple[str, str, Any]] = []
    bmc = FakeBmc(type("H", (), {"name": "n"})(), calls)
    assert power_action(bmc, PowerArgs("cycle"), 3.0) == "cycled"
    assert power_action(bmc, parse_power({"action": "bootdev", "device": "network",
                                          "persistent": False}), None) == \
        "network (next boot)"
    assert calls == [("n", "cycle", 3.0), ("n", "bootdev network False", None)]


def test_power_is_a_journaled_run_with_todays_result_shape(site):
    result = actions.power(site, "node*", "status")
    assert result.hosts == [
        {"host": "node1", "ok": True, "result": "on", "error": None},
        {"host": "node2", "ok": False, "result": None,
         "error": "node2 (BMC 127.0.0.1:6231): no answer within 5 s"}]
    assert result.exit_code == 1
    run = site.state.get_run(result.run)
    assert run["kind"] == "power" and run["status"] == "failed"
    journal = site.state.journal_entries(result.run)
    assert {(e.host, e.status) for e in journal} == {("node1", "ok"), ("node2", "failed")}
    text = (site.runs_dir / f"{result.run}.jsonl").read_text(encoding="utf-8")
    assert PASSWORD not in text and PASSWORD not in repr([e.detail for e in journal])
    # A power run does not change what @failed means (the hosts of configuration runs).
    from orchestrate.runner import last_failed_hosts

    assert last_failed_hosts(site.state) == []


def test_power_refuses_hosts_without_a_bmc(site):
    from inventory.errors import InputError

    with pytest.raises(InputError, match="power on: no BMC in the inventory for web1"):
        actions.power(site, "all", "on")
    with pytest.raises(InputError, match="power cycle: no BMC in the inventory for web1"):
        actions.power(site, "web1", "cycle")
    assert site.state.list_runs() == []


def test_power_status_skips_hosts_without_a_bmc_and_names_them(site):
    result = actions.power(site, "all", "status")
    assert [h["host"] for h in result.hosts] == ["node1", "node2"]
    assert result.skipped == ["web1"]
    assert ("web1", "status", None) not in site.calls
    journal = site.state.journal_entries(result.run)
    assert {e.host for e in journal} == {"node1", "node2"}


def test_power_status_of_only_hosts_without_a_bmc_is_an_input_error(site):
    from inventory.errors import InputError

    with pytest.raises(InputError, match="power status: no host in 'web1' has a BMC"):
        actions.power(site, "web1", "status")


def test_power_status_cli_says_what_it_skipped(site):
    from click.testing import CliRunner

    from orchestrate.cli import cli

    r = CliRunner().invoke(cli, ["--site", str(site.root), "power", "status", "all"])
    assert r.exit_code == 1, r.output  # node2's fake BMC does not answer
    assert "skipped 1 host without a BMC: web1" in r.output
    r = CliRunner().invoke(cli, ["--site", str(site.root), "power", "status", "node1",
                                 "--json"])
    assert r.exit_code == 0, r.output
    import json

    assert json.loads(r.output)["skipped"] == []


def test_verify_arguments():
    assert parse_verify(None) == VerifyArgs()
    assert parse_verify(["base"]) == VerifyArgs(("base",))
    with pytest.raises(ValueError, match="unknown key 'role'"):
        parse_verify({"role": "base"})
    with pytest.raises(ValueError, match="timeout must be"):
        parse_verify({"timeout": 0})


def test_verify_report_from_step_outcomes():
    passed = HostVerify("a", "passed", ["base"], [], 1.0, "3 checks passed")
    report = report_of({
        "a": StepOutcome("ok", "3 checks passed", data={"verify": passed.to_json()}),
        "b": StepOutcome("unreachable", "host 'b': no pinned SSH host key"),
        "c": None}, 2.0)
    assert report.hosts["a"].status == "passed" and report.hosts["a"].roles == ["base"]
    assert (report.hosts["b"].status, report.hosts["b"].message) == (
        "error", "host 'b': no pinned SSH host key")
    assert report.hosts["c"].status == "error" and report.exit_code == 1
    assert report.to_json()["hosts"]["a"] == passed.to_json()


def test_verify_without_tests_contacts_no_host(site):
    report = actions.verify_hosts(site, ["web1"])
    assert report.hosts["web1"].status == "no_tests" and report.exit_code == 0
