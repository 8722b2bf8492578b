"""serve's SSH prober: every host with an address is probed (not those behind a ProxyCommand),
the cache follows the inventory, and a host that left it drops out."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from inventory.model import SshSettings
from monitor.reach import ReachCache
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
