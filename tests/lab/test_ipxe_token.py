"""A repeated fetch of a node's iPXE script (iPXE retries) must not revoke the deploy token the
installer got from the first one: the real HTTP server on 127.0.0.1 (port 0), the real deploy
service and state store, a deployment started as `metalchain provision` starts it (ssh-keygen
runs, hence the lab tier), with a fake BMC."""

from __future__ import annotations

import http.client
import ipaddress
import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inventory.model import Bmc, Host, Inventory, Provisioning
from inventory.secrets import Secret
from inventory.state import StateStore
from provision import contract
from provision import lifecycle as lc
from provision.bootserver import BootHttpServer, BootNodes
from provision.deploy import DeployService, HostKeys
from provision.provisioner import Provisioner
from provision.settings import NodeNetwork
from provision.watch import NodeChanges

pytestmark = pytest.mark.lab

MAC = "52:54:00:4d:44:01"
NODE = Host(name="node1", address="127.0.0.1", groups=(),
            bmc=Bmc(address="127.0.0.1", username="admin", password=Secret("pw")),
            provision=Provisioning(mac=MAC, ip="127.0.0.1"))


class FakeBmc:
    def __enter__(self) -> FakeBmc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def ping(self, timeout: float = 1.0) -> bool:
        return True

    def set_bootdev(self, device: str, persistent: bool = True,
                    timeout: float | None = None) -> None:
        pass

    def power_status(self, timeout: float | None = None) -> str:
        return "off"

    def power_on(self, timeout: float | None = None) -> None:
        pass

    def power_cycle(self, timeout: float | None = None) -> None:
        pass


@dataclass
class Deployment:
    server: BootHttpServer
    store: StateStore
    changes: NodeChanges

    def request(self, method: str, path: str, token: str | None = None,
                body: str | None = None) -> tuple[int, str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        try:
            headers = {contract.TOKEN_HEADER: token} if token else {}
            if body is not None:
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    def script_token(self) -> str:
        status, text = self.request("GET", contract.IPXE_SCRIPT.format(
            mac_hyphens=MAC.replace(":", "-")))
        assert status == 200, text
        found = re.search(rf"{re.escape(contract.KARG_TOKEN)}=(\S+)", text)
        assert found, "the script boots no installer"
        return found.group(1)

    def post(self, what: str, token: str, **fields: str) -> int:
        path = {"progress": contract.NODE_PROGRESS, "done": contract.NODE_DONE}[what]
        return self.request("POST", path.format(node="node1"), token,
                            urllib.parse.urlencode(fields))[0]


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    images, installer = tmp_path / "images", tmp_path / "installer"
    images.mkdir()
    installer.mkdir()
    (images / "debian-12.raw").write_bytes(b"\0" * 4096)
    (images / "debian-12.raw.sha256").write_text("ab" * 32 + "  debian-12.raw\n")
    store = StateStore.open_file(tmp_path / "state" / "metalchain.db")
    inventory = Inventory(hosts={"node1": NODE}, groups={}, all_vars={}, sources=[])
    hostkeys = HostKeys(tmp_path / "deploy")
    changes = NodeChanges()
    deploy = DeployService(inventory, store, images_dir=images, hostkeys=hostkeys,
                           authorized_keys="ssh-ed25519 AAAA operator\n", token_ttl=600,
                           network=NodeNetwork(ipaddress.IPv4Network("127.0.0.0/8")),
                           changes=changes)
    server = BootHttpServer("127.0.0.1", 0, installer_dir=installer, images_dir=images,
                            provider=deploy, tokens=store, callbacks=deploy,
                            nodes=BootNodes.from_hosts(inventory.hosts.values()))
    server.start()
    try:
        prov = Provisioner(inventory, store, hostkeys=hostkeys,
                           bmc_for=lambda host, timeout=5.0: FakeBmc(), timeouts={})
        prov._start(NODE)   # what `metalchain provision` does before it watches
        assert store.node("node1").state == lc.POWERING_ON
        yield Deployment(server, store, changes)
    finally:
        server.stop()
        store.close()


def test_a_second_script_fetch_does_not_revoke_the_installers_token(deployment):
    first = deployment.script_token()
    assert deployment.store.node("node1").state == lc.PXE_BOOTING   # the documented effect
    second = deployment.script_token()                              # iPXE retries
    assert deployment.store.node("node1").state == lc.PXE_BOOTING
    # The installer booted from the first script: its callbacks still work.
    status, body = deployment.request("GET", contract.NODE_CONFIG.format(node="node1"), first)
    assert status == 200 and "MC_HOSTNAME='node1'" in body
    assert deployment.post("progress", first, stage="streaming", message="image") == 200
    assert deployment.store.node("node1").state == lc.INSTALLING
    assert deployment.post("done", first) == 200
    assert deployment.store.node("node1").state == lc.REBOOTING
    assert second == first   # one token per deployment: every fetch hands out the same one
    # Spent by done: a replay is refused, and the script no longer installs.
    assert deployment.post("done", first) == 403
    status, text = deployment.request("GET", contract.IPXE_SCRIPT.format(
        mac_hyphens=MAC.replace(":", "-")))
    assert status == 200 and "\nexit\n" in text and first not in text


def test_callbacks_notify_the_watchers(deployment):
    """Every state change the boot server causes reaches this process's NodeChanges."""
    before = deployment.changes.version("node1")
    token = deployment.script_token()
    after_script = deployment.changes.version("node1")
    assert after_script > before
    deployment.script_token()           # no state change: no notification
    assert deployment.changes.version("node1") == after_script
    assert deployment.post("progress", token, stage="started", message="x") == 200
    assert deployment.changes.version("node1") > after_script


def test_the_deploy_token_is_nowhere_but_in_the_script_and_the_callbacks(deployment, tmp_path,
                                                                          caplog):
    """The secrets canary of issue 13 for deploy tokens (a fresh random value per deployment,
    so the real one is the canary): through the whole install flow at DEBUG, the token is in
    no log record, in no byte of the state store (hashes only; its -wal and -shm too), and
    in no file under the test's directory (deploy keys, images, installer)."""
    import logging

    caplog.set_level(logging.DEBUG)
    token = deployment.script_token()
    assert len(token) >= 32
    status, _body = deployment.request("GET", contract.NODE_CONFIG.format(node="node1"), token)
    assert status == 200
    assert deployment.post("progress", token, stage="streaming", message="image") == 200
    assert deployment.post("done", token) == 200
    assert deployment.post("done", token) == 403          # spent
    deadline = time.monotonic() + 5                        # access log lines come after
    while "/v1/nodes/node1/done -> 403" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "/v1/nodes/node1/done -> 403" in caplog.text
    assert token not in caplog.text
    assert not [r for r in caplog.records if token in repr(r.args) or token in str(r.msg)]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "metalchain.db" for p in files)
    hits = [str(p) for p in files if token.encode() in p.read_bytes()]
    assert not hits, hits
    runs = deployment.store.list_runs(limit=50)
    assert token not in repr(runs)
    assert token not in repr(deployment.store.transitions("node1"))
