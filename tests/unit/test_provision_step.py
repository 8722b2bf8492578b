"""Provisioning many nodes is a run of the ``provision`` step: fanned out, journaled and
bounded by the runner like power and verify, not by a thread pool of its own.

The provisioner is a fake (no BMC, no boot server): what is tested is the fan-out around it.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from inventory.site import Site
from orchestrate.provisioning import (
    ProvisionOptions,
    _fail_cut_short,
    _run_provision,
    _update,
)
from orchestrate.runner import last_failed_hosts
from provision import lifecycle as lc
from provision.provision_step import ProvisionStep
from provision.provisioner import NodeResult
from tests.conftest import write_site

pytestmark = pytest.mark.unit

INVENTORY = """\
hosts:
  node1:
    bmc: {address: 127.0.0.1, port: 6230, username: admin, password: {secret: bmc}}
    provision: {mac: "52:54:00:00:00:01", ip: 10.0.0.1}
  node2:
    bmc: {address: 127.0.0.1, port: 6231, username: admin, password: {secret: bmc}}
    provision: {mac: "52:54:00:00:00:02", ip: 10.0.0.2}
  node3:
    bmc: {address: 127.0.0.1, port: 6232, username: admin, password: {secret: bmc}}
    provision: {mac: "52:54:00:00:00:03", ip: 10.0.0.3}
"""


class FakeProvisioner:
    """node2 fails; the others become active. Records deadlines and concurrency."""

    def __init__(self, delay: float = 0.05) -> None:
        self.delay = delay
        self.deadlines: dict[str, float | None] = {}
        self._lock = threading.Lock()
        self.running = 0
        self.most = 0

    def provision_one(self, host: Any, deadline: float | None = None) -> NodeResult:
        with self._lock:
            self.deadlines[host.name] = deadline
            self.running += 1
            self.most = max(self.most, self.running)
        time.sleep(self.delay)
        with self._lock:
            self.running -= 1
        if host.name == "node2":
            return NodeResult(host.name, lc.FAILED, "BMC: does not answer", 0.1, {})
        return NodeResult(host.name, lc.ACTIVE, "SSH answered", 0.1, {"active": 0.1})


@pytest.fixture
def site(tmp_path: Path):
    s = Site.open(write_site(tmp_path / "site", INVENTORY, secrets="bmc: pw-7f3a\n"))
    (s.root / "keys").mkdir()
    yield s
    s.close()


def test_nodes_are_provisioned_as_a_journaled_run(site):
    prov = FakeProvisioner()
    results, interrupted = _run_provision(site, prov, ["node1", "node2", "node3"],
                                          ProvisionOptions(parallel=2))
    assert interrupted == ""
    assert {n: r.state for n, r in results.items()} == {
        "node1": lc.ACTIVE, "node2": lc.FAILED, "node3": lc.ACTIVE}
    assert results["node2"].reason == "BMC: does not answer"
    assert results["node1"].timings == {"active": 0.1}
    assert prov.most == 2                                 # --parallel is the runner's
    run = site.state.list_runs(limit=1)[0]
    assert run["kind"] == "provision"
    journal = {e.host: e.status for e in site.state.journal_entries(run["uid"])}
    assert journal == {"node1": "changed", "node2": "failed", "node3": "changed"}
    assert (site.runs_dir / f"{run['uid']}.jsonl").exists()
    assert last_failed_hosts(site.state) == ["node2"]    # @failed names the failed node


def test_timeout_reaches_the_provisioner_as_its_deadline(site):
    prov = FakeProvisioner()
    before = time.time()
    _run_provision(site, prov, ["node1"], ProvisionOptions(total_timeout=100))
    deadline = prov.deadlines["node1"]
    assert deadline is not None and before + 99 <= deadline <= time.time() + 100


def test_a_node_whose_step_does_not_report_gets_the_stores_state(site):
    class Silent(FakeProvisioner):
        def provision_one(self, host: Any, deadline: float | None = None) -> NodeResult:
            raise RuntimeError("watcher crashed")

    results, _ = _run_provision(site, Silent(), ["node1"], ProvisionOptions())
    assert results["node1"].state is None
    assert "watcher crashed" in results["node1"].reason


def test_the_step_takes_no_arguments():
    step = ProvisionStep(FakeProvisioner())
    step.parse(None)
    with pytest.raises(ValueError, match="no arguments"):
        step.parse({"image": "x"})


def test_a_stop_request_starts_no_further_node_and_finishes_the_one_in_progress(site):
    """Ctrl-C during provision: the node being installed is finished, no other is started."""
    from orchestrate.stop import Stop

    stop = Stop()

    class StopsOnFirst(FakeProvisioner):
        def provision_one(self, host: Any, deadline: float | None = None) -> NodeResult:
            stop.request("SIGINT")
            return super().provision_one(host, deadline)

    prov = StopsOnFirst()
    results, interrupted = _run_provision(site, prov, ["node1", "node2", "node3"],
                                          ProvisionOptions(parallel=1), stop)
    assert interrupted == "interrupted" and list(prov.deadlines) == ["node1"]
    assert results["node1"].state == lc.ACTIVE
    assert [results[n].reason for n in ("node2", "node3")] == ["not run", "not run"]


def test_nodes_cut_short_are_failed_with_the_reason_not_left_in_progress(site):
    site.state.set_node_state("node1", lc.ENROLLED, "enrolled")
    site.state.set_node_state("node1", lc.POWERING_ON, "power on")
    site.state.set_node_state("node1", lc.PXE_BOOTING, "pxe")
    site.state.set_node_state("node2", lc.ACTIVE, "installed earlier")
    results = {"node1": NodeResult("node1", lc.PXE_BOOTING, "pxe", 3.0, {})}
    failed = _fail_cut_short(site, dict(lc.DEFAULT_TIMEOUTS), ["node1", "node2"],
                             "aborted by a stop request")
    _update(results, failed)
    node1 = site.state.node("node1")
    assert node1.state == lc.FAILED and node1.reason.startswith(
        "aborted by a stop request while pxe_booting: the boot server")
    assert failed == {"node1": node1.reason}
    assert results["node1"].state == lc.FAILED and results["node1"].reason == node1.reason
    assert site.state.node("node2").state == lc.ACTIVE     # not in progress: left alone
