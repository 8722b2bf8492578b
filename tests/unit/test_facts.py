from __future__ import annotations

import pytest

from configure.facts import parse_facts
from inventory.loader import load_inventory
from inventory.secrets import SecretStore
from inventory.select import select_hosts

pytestmark = pytest.mark.unit


def test_parse_facts():
    f = parse_facts("os_id=debian\ncpus=2\nmemory_mb=x\nipv4=10.0.0.5/24\nipv4=10.1.0.5/16\n"
                    "garbage line\n=novalue\nos_pretty=Debian GNU/Linux 12 (bookworm)\n")
    assert f == {"os_id": "debian", "cpus": 2, "memory_mb": None,
                 "ipv4": ["10.0.0.5/24", "10.1.0.5/16"],
                 "os_pretty": "Debian GNU/Linux 12 (bookworm)"}


def test_fact_selector(tmp_path):
    p = tmp_path / "i.yml"
    p.write_text("hosts:\n  a: {}\n  b: {}\n  c: {}\n")
    inv = load_inventory(p, SecretStore({}))
    facts = {"a": {"os_id": "debian", "ipv4": ["10.0.0.5/24"]}, "b": {"os_id": "rocky"}}
    assert select_hosts(inv, "fact.os_id=debian", facts=facts) == ["a"]
    assert select_hosts(inv, "fact.ipv4=10.0.0.5", facts=facts) == ["a"]
    assert select_hosts(inv, "all,!fact.os_id=rocky", facts=facts) == ["a", "c"]
