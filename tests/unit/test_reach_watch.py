"""serve's SSH prober: every host with an address is probed (not those behind a ProxyCommand),
the cache follows the inventory, and a host that left it drops out."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from inventory.errors import InventoryError
from inventory.model import SshSettings
from monitor.reach import ReachCache
from monitor.settings import parse_settings
from orchestrate.reach_watch import ReachWatch

pytestmark = pytest.mark.unit


@dataclass
class FakeHost:
    name: str
    address: str | None
    ssh: SshSettings = field(default_factory=SshSettings)
    vm: None = None


@dataclass
class FakeInventory:
    hosts: dict


def test_probes_hosts_with_an_address_and_follows_the_inventory():
    inv = FakeInventory({"a": FakeHost("a", "10.0.0.1"), "b": FakeHost("b", "10.0.0.2"),
                         "c": FakeHost("c", None),
                         "d": FakeHost("d", "10.0.0.4", SshSettings(proxy_command="ssh j"))})
    asked = []

    def probe(address, port, timeout):
        asked.append((address, port))
        return (address == "10.0.0.1", "" if address == "10.0.0.1" else "no route to host")

    cache = ReachCache()
    watch = ReachWatch(lambda: inv, cache, probe=probe, clock=lambda: 5.0)
    try:
        watch.probe_once()
        assert sorted(asked) == [("10.0.0.1", 22), ("10.0.0.2", 22)]
        snap = cache.snapshot()
        assert snap["a"].reachable and not snap["b"].reachable
        assert snap["b"].error == "no route to host" and set(snap) == {"a", "b"}
        del inv.hosts["b"]
        watch.probe_once()
        assert set(cache.snapshot()) == {"a"}
    finally:
        watch.stop()


def test_the_probe_has_its_own_pace_not_the_bmc_polls(tmp_path):
    """monitor.reach_probe_interval / reach_probe_timeout (15 s, 10 s): a BMC poll every 1 s
    does not make every host's sshd fork a session process every second."""
    s = parse_settings({"bmc_poll_interval": 1, "bmc_poll_timeout": 0.5}, tmp_path)
    assert (s.reach_probe_interval, s.reach_probe_timeout) == (15.0, 10.0)
    s = parse_settings({"reach_probe_interval": 30, "reach_probe_timeout": 20}, tmp_path)
    assert (s.reach_probe_interval, s.reach_probe_timeout) == (30.0, 20.0)
    assert (s.bmc_poll_interval, s.bmc_poll_timeout) == (5.0, 2.0)
    for key in ("reach_probe_interval", "reach_probe_timeout"):
        with pytest.raises(InventoryError, match=rf"monitor\.{key}"):
            parse_settings({key: "soon"}, tmp_path)
