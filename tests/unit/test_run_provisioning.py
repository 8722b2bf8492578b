"""The ``provision`` step in ordinary runs (``metalchain run PLAYBOOK``): the run's
RunProvisioning starts a controller and a boot server only when a node needs installing,
once, and stops it when the run ends, failing the nodes it cut short; active nodes that
answer with their pinned key are ``ok`` and untouched; a failed node needs ``--retry``.

The controller, the boot server and the provisioner are fakes (no BMC, no sockets): what is
tested is the lifecycle around them, through the real runner and state store.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

import pytest

from inventory.site import Site
from orchestrate import provisioning
from orchestrate.events import read_events
from orchestrate.playbook import load_playbook
from orchestrate.registry import build_registry
from orchestrate.runs import RunOptions, start_run
from orchestrate.stop import Stop
from provision import lifecycle as lc
from provision import provision_step
from provision import provisioner as provisioner_mod
from provision.provisioner import NodeResult
from tests.conftest import write_site
from tests.waiting import wait_for

pytestmark = pytest.mark.unit

INVENTORY = """\
groups:
  nodes: {}
hosts:
  node1:
    groups: [nodes]
    bmc: {address: 127.0.0.1, port: 6230, username: admin, password: {secret: bmc}}
    provision: {mac: "52:54:00:00:00:01", ip: 10.0.0.1}
  node2:
    groups: [nodes]
    bmc: {address: 127.0.0.1, port: 6231, username: admin, password: {secret: bmc}}
    provision: {mac: "52:54:00:00:00:02", ip: 10.0.0.2}
"""

PLAYBOOK = """\
- name: provision
  hosts: nodes
  steps:
    - provision: {}
"""


class FakeController:
    """Counts what a run's provisioning starts."""

    made: ClassVar[list[FakeController]] = []

    def __init__(self, site: Any) -> None:
        self.timeouts = dict(lc.DEFAULT_TIMEOUTS)
        self.hostkeys = None
        self.changes = None
        self.settings = type("S", (), {"token_ttl": 60.0})()
        self.starts = self.stops = self.reconciles = 0
        self.images: list[set[str]] = []
        FakeController.made.append(self)

    def reconcile(self) -> list[str]:
        self.reconciles += 1
        return []

    def images_for(self, hosts: list[Any]) -> set[str]:
        return {"debian-12"}

    def prepare_images(self, images: set[str]) -> None:
        self.images.append(set(images))

    def start(self) -> str:
        self.starts += 1
        return "http://10.0.0.254:8080"

    def stop(self) -> None:
        self.stops += 1


class FakeProvisioner:
    """Moves each node to active; ``hold`` keeps nodes in progress until it is set."""

    calls: ClassVar[list[str]] = []
    hold: ClassVar[threading.Event | None] = None

    def __init__(self, inventory: Any, store: Any, **kw: Any) -> None:
        self.store = store
        self.on_change = kw["on_change"]

    def provision_one(self, host: Any, deadline: float | None = None) -> NodeResult:
        FakeProvisioner.calls.append(host.name)
        life = lc.Lifecycle(self.store, lc.DEFAULT_TIMEOUTS)
        life.enroll(host.name)
        life.move(host.name, lc.POWERING_ON, "fake power on")
        if FakeProvisioner.hold is not None:
            FakeProvisioner.hold.wait(30)
            return NodeResult(host.name, self.store.node(host.name).state, "held")
        for state in (lc.PXE_BOOTING, lc.INSTALLING, lc.INSTALLED, lc.REBOOTING, lc.ACTIVE):
            life.move(host.name, state, "fake")
        self.on_change(host.name, lc.ACTIVE, "SSH answered")
        return NodeResult(host.name, lc.ACTIVE, "SSH answered", 0.1, {"active": 0.1})


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    FakeController.made = []
    FakeProvisioner.calls = []
    FakeProvisioner.hold = None
    monkeypatch.setattr(provisioning, "Controller", FakeController)
    monkeypatch.setattr(provisioning, "running_serve", lambda site: None)
    monkeypatch.setattr(provisioner_mod, "Provisioner", FakeProvisioner)
    root = write_site(tmp_path / "site", INVENTORY, secrets="bmc: pw-7f3a\n")
    (root / "playbooks").mkdir()
    (root / "playbooks" / "site.yml").write_text(PLAYBOOK)
    s = Site.open(root)
    yield s
    s.close()


def run(site: Site, **kw: Any) -> Any:
    pb = load_playbook(site.playbooks_dir / "site.yml", build_registry())
    return start_run(site, pb, RunOptions(**kw))


def activate(site: Site, node: str) -> None:
    for state in (lc.ENROLLED, lc.POWERING_ON, lc.PXE_BOOTING, lc.INSTALLING, lc.INSTALLED,
                  lc.REBOOTING, lc.ACTIVE):
        site.state.set_node_state(node, state, "earlier")
    site.state.pin_host_key(node, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyOf" + node,
                            source="test")


def test_nodes_to_install_start_one_boot_server_for_the_run_and_it_stops_at_the_end(site):
    report = run(site, parallel=2)
    assert report.exit_code == 0
    assert {h: r.status for h, r in report.hosts.items()} == {"node1": "changed",
                                                             "node2": "changed"}
    assert sorted(FakeProvisioner.calls) == ["node1", "node2"]
    [ctl] = FakeController.made                      # one controller, for both nodes
    assert (ctl.starts, ctl.stops, ctl.reconciles) == (1, 1, 1)
    assert ctl.images == [{"debian-12"}]             # the image prepared once
    node = report.first_outcome("node1").data["node"]
    assert node["state"] == "active"
    events = read_events(site.runs_dir / f"{report.uid}.jsonl")
    assert sorted(e["host"] for e in events if e["event"] == "node_state"
                  and e["state"] == "active") == ["node1", "node2"]


def test_active_nodes_answering_with_their_pinned_key_are_ok_and_nothing_starts(
        site, monkeypatch):
    """A second run changes nothing: no controller, no boot server, no BMC."""
    activate(site, "node1")
    activate(site, "node2")
    asked: list[str] = []
    by_address = {h.address: h.name for h in site.inventory.hosts.values()}
    monkeypatch.setattr(provision_step, "ssh_answers_with",
                        lambda address, key, **kw: (asked.append(by_address[address]) or True,
                                                    ""))
    report = run(site)
    assert report.exit_code == 0
    assert {h: r.status for h, r in report.hosts.items()} == {"node1": "ok", "node2": "ok"}
    assert sorted(asked) == ["node1", "node2"]
    assert FakeController.made == [] and FakeProvisioner.calls == []
    assert "pinned host key" in report.first_outcome("node1").message


def test_an_active_node_that_does_not_answer_fails_and_is_not_reinstalled(site, monkeypatch):
    activate(site, "node1")
    activate(site, "node2")
    node2 = site.inventory.hosts["node2"].address
    monkeypatch.setattr(provision_step, "ssh_answers_with",
                        lambda address, key, **kw: (address == node2, "refused"))
    report = run(site)
    assert report.exit_code == 1
    out = report.first_outcome("node1")
    assert out.status == "failed" and "metalchain provision node1 --force" in out.message
    assert FakeProvisioner.calls == [] and site.state.node("node1").state == lc.ACTIVE


def test_a_failed_node_is_started_over_only_with_retry(site, monkeypatch):
    activate(site, "node2")
    monkeypatch.setattr(provision_step, "ssh_answers_with", lambda address, key, **kw: (True, ""))
    site.state.set_node_state("node1", lc.ENROLLED, "lab")
    site.state.set_node_state("node1", lc.POWERING_ON, "earlier")
    site.state.set_node_state("node1", lc.FAILED, "timed out after 25s in powering_on")
    report = run(site)
    out = report.first_outcome("node1")
    assert out.status == "failed" and FakeProvisioner.calls == []
    assert "provision_failed" in out.message and "timed out after 25s" in out.message
    assert "run --retry" in out.message
    assert FakeController.made == []                  # refused before anything started
    report = run(site, retry=True, limit="@failed")
    assert report.exit_code == 0, report.first_outcome("node1").message
    assert list(report.hosts) == ["node1"]
    assert FakeProvisioner.calls == ["node1"]
    assert site.state.node("node1").state == lc.ACTIVE


def test_an_aborted_run_fails_the_nodes_it_cut_short_and_stops_its_boot_server(site):
    """Ctrl-C twice: the run gives up on the nodes being installed; its boot server stops
    with it, so they are failed with the reason instead of left in progress."""
    FakeProvisioner.hold = threading.Event()
    stop = Stop()
    pb = load_playbook(site.playbooks_dir / "site.yml", build_registry())
    done: list[Any] = []
    runner = threading.Thread(target=lambda: done.append(
        start_run(site, pb, RunOptions(parallel=2), stop=stop)))
    runner.start()
    try:
        wait_for(lambda: len(FakeProvisioner.calls) == 2, 10, "both nodes started")
        stop.request("SIGINT")
        stop.request("SIGINT")
        runner.join(20)
    finally:
        FakeProvisioner.hold.set()
        runner.join(20)
    assert done and done[0].interrupted == "aborted"
    for node in ("node1", "node2"):
        rec = site.state.node(node)
        assert rec.state == lc.FAILED
        assert rec.reason.startswith("aborted by a stop request while powering_on: the boot "
                                     "server of this run stopped with it")
    [ctl] = FakeController.made
    assert (ctl.starts, ctl.stops) == (1, 1)


def test_check_mode_starts_nothing(site):
    report = run(site, check=True)
    assert {h: r.status for h, r in report.hosts.items()} == {"node1": "changed",
                                                             "node2": "changed"}
    assert report.first_outcome("node1").message == "would provision"
    assert FakeController.made == [] and FakeProvisioner.calls == []


def test_closing_does_not_wait_for_an_image_build_and_nothing_starts_after_it(
        site, monkeypatch):
    """An aborted run ends at once even while a step builds an image (under the session's
    lock); that step then starts no boot server."""
    monkeypatch.setattr(provisioning, "CLOSE_WAIT", 0.2)
    building, release = threading.Event(), threading.Event()

    def slow_build(self: FakeController, images: set[str]) -> None:
        building.set()
        release.wait(10)

    monkeypatch.setattr(FakeController, "prepare_images", slow_build)
    session = provisioning.RunProvisioning(site)
    errors: list[BaseException] = []

    def step() -> None:
        try:
            session.provision_one(site.inventory.host("node1"))
        except Exception as exc:   # noqa: BLE001 - what the step saw is the result
            errors.append(exc)

    worker = threading.Thread(target=step)
    worker.start()
    try:
        wait_for(building.is_set, 10, "the image build to start")
        closer = threading.Thread(target=session.close, args=("aborted by a stop request",))
        closer.start()
        closer.join(5)
        assert not closer.is_alive()          # close() did not wait for the build
    finally:
        release.set()
        worker.join(10)
    assert [str(e) for e in errors] == ["not started: the run is ending"]
    [ctl] = FakeController.made
    assert ctl.starts == 0 and FakeProvisioner.calls == []
