"""A BMC that does not answer must not demote a healthy node: the preflight (ping, then an
authenticated power-status query) runs before anything changes — state, pinned host key,
deploy token — and its error says which host, which BMC and what failed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from inventory.errors import BmcError
from inventory.model import Bmc, Host, Inventory, Provisioning
from inventory.secrets import Secret
from inventory.state import StateStore
from provision import lifecycle as lc
from provision.provision_step import node_doc
from provision.provisioner import Provisioner

pytestmark = pytest.mark.unit

NODE = Host(name="node1", address=None, groups=(),
            bmc=Bmc(address="127.0.0.1", port=6231, username="admin", password=Secret("pw")),
            provision=Provisioning(mac="52:54:00:00:00:01", ip="10.77.0.11"))
OLD_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOldOldOldOldOldOldOldOldOldOldOldOldOldOld"


class DeadBmc:
    """A BMC that fails at ``fails`` ("ping" or "power_status"); records every call."""

    def __init__(self, fails: str) -> None:
        self.fails = fails
        self.calls: list[str] = []

    def ping(self, timeout: float = 1.0) -> bool:
        self.calls.append("ping")
        return self.fails != "ping"

    def power_status(self, timeout: float | None = None) -> str:
        self.calls.append("power_status")
        if self.fails == "power_status":
            raise BmcError("node1 (BMC 127.0.0.1:6231): power status: login failed: "
                           "timeout")
        return "on"

    def __getattr__(self, name: str) -> Any:   # set_bootdev, power_cycle, ...: must not run
        def record(*_args: object, **_kwargs: object) -> None:
            self.calls.append(name)
        return record

    def close(self) -> None:
        pass


class KeysThatMustNotChange:
    def __init__(self) -> None:
        self.generated: list[str] = []

    def generate(self, node: str) -> str:
        self.generated.append(node)
        return "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAINewNewNewNewNewNewNewNewNewNewNewNewNew"

    def set_token(self, node: str, token: str) -> None:
        pass

    def discard(self, node: str) -> None:
        pass


@pytest.fixture
def store(tmp_path: Path):
    s = StateStore.open_file(tmp_path / "state.db")
    life = lc.Lifecycle(s)
    life.enroll("node1")
    for to in (lc.POWERING_ON, lc.PXE_BOOTING, lc.INSTALLING, lc.INSTALLED, lc.REBOOTING,
               lc.ACTIVE):
        life.move("node1", to, "test")
    s.pin_host_key("node1", OLD_KEY, "provision")
    yield s
    s.close()


@pytest.mark.parametrize(("fails", "words"), [
    ("ping", "does not answer a ping"),
    ("power_status", "power status: node1 (BMC 127.0.0.1:6231): power status: login failed"),
])
def test_a_dead_bmc_leaves_an_active_node_active(store: StateStore, fails: str,
                                                  words: str) -> None:
    bmc = DeadBmc(fails)
    keys = KeysThatMustNotChange()
    inventory = Inventory(hosts={"node1": NODE}, groups={}, all_vars={}, sources=[])
    before = len(store.transitions("node1"))
    prov = Provisioner(inventory, store, hostkeys=keys,  # type: ignore[arg-type]
                       bmc_for=lambda host, timeout=5.0: bmc, timeouts={})
    result = prov.provision_one(NODE)
    assert store.node("node1").state == lc.ACTIVE
    assert len(store.transitions("node1")) == before         # no transition at all
    assert store.host_keys_of("node1") == [OLD_KEY]           # exec still trusts the node
    assert keys.generated == []
    assert bmc.calls == ["ping"] if fails == "ping" else ["ping", "power_status"]
    assert not result.ok and result.state == lc.ACTIVE
    assert result.error.startswith("not started, node1 stays active: BMC preflight failed: ")
    assert words in result.error
    assert "127.0.0.1:6231" in result.error
    assert node_doc(result)["error"] == result.error
