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


def _role(tmp_path, when: str):
    from configure.roles import resolve

    role = tmp_path / "roles" / "r"
    role.mkdir(parents=True)
    (role / "recipe.yml").write_text(f"- file: {{path: /etc/x, content: x}}\n  when: {when}\n")
    return resolve(["r"], [tmp_path / "roles"]), role / "recipe.yml"


@pytest.mark.parametrize("stored", [{}, {"gathered_at": 1.0}])
def test_when_reading_a_fact_nobody_gathered_is_an_error(tmp_path, stored):
    from configure.roles import blocks_for_host
    from inventory.errors import InputError

    roles, recipe = _role(tmp_path, "facts.get('virtualization') != 'docker'")
    with pytest.raises(InputError) as err:
        blocks_for_host(roles, {"inventory_hostname": "h1", "facts": stored})
    assert str(err.value) == (f"{recipe}:1: when: fact 'virtualization' was not gathered "
                              "from host 'h1' (no facts were)")


def test_when_reading_a_misspelled_fact_names_the_gathered_ones(tmp_path):
    from configure.roles import blocks_for_host
    from inventory.errors import InputError

    roles, recipe = _role(tmp_path, "facts.virtualisation == 'none'")
    with pytest.raises(InputError, match=rf"^{recipe}:1: when: fact 'virtualisation' was not "
                                         r"gathered from host 'h1' \(gathered: cpus, "
                                         r"virtualization\)$"):
        blocks_for_host(roles, {"inventory_hostname": "h1",
                                "facts": {"virtualization": "none", "cpus": 2}})


def test_when_with_gathered_facts_decides(tmp_path):
    from configure.roles import blocks_for_host

    roles, _ = _role(tmp_path, "facts.get('virtualization') != 'docker' and 'x' not in facts")
    assert len(blocks_for_host(roles, {"facts": {"virtualization": "none"}})[0].items) == 1
    assert blocks_for_host(roles, {"facts": {"virtualization": "docker"}})[0].items == []


def test_gathered_facts_record_reads_and_compare_with_fresh_ones():
    from configure.facts import GatheredFacts

    f = GatheredFacts({"virtualization": "none", "cpus": 2, "gathered_at": 5.0})
    assert f.get("virtualization") == "none" and "kernel" not in f
    assert f.same_reads({"virtualization": "none", "cpus": 4})      # cpus was not read
    assert not f.same_reads({"virtualization": "docker", "cpus": 2})
    assert not f.same_reads({"virtualization": "none", "kernel": "6.1"})  # 'in' was read
    assert f.missing == []
    list(f)
    assert not f.same_reads({"virtualization": "none", "cpus": 4})  # iterating reads all
