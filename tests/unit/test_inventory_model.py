"""Loading a good inventory: membership, precedence, selection, normalisation, UTF-8."""

from __future__ import annotations

import pytest

from inventory.errors import InputError
from inventory.loader import load_inventory, normalize_mac, valid_hostname
from inventory.secrets import SecretStore
from inventory.select import select_hosts
from inventory.variables import explain_vars, host_vars

pytestmark = pytest.mark.unit

INVENTORY = """\
vars: {tz: UTC, desc: "Zürich — 東京", level: all}
groups:
  dc:
    children: [compute, storage]
    vars: {level: dc, dc_only: 1}
    roles: [base]
  compute:
    vars: {level: compute}
    roles: [hypervisor]
  storage:
    hosts: [s1]
hosts:
  c1:
    groups: [compute]
    labels: {rack: r1}
    vars: {level: host}
    provision: {mac: "52-54-00-AA-BB-01", ip: 10.0.0.1}
  c2: {groups: [compute], labels: {rack: r2}, address: c2.example.test}
  s1: {labels: {rack: r1}}
  lone: {}
"""


@pytest.fixture
def inv(tmp_path):
    p = tmp_path / "inventory.yml"
    p.write_text(INVENTORY, encoding="utf-8")
    return load_inventory(p, SecretStore({}))


def test_membership_and_order(inv):
    assert inv.group_hosts("dc") == ["c1", "c2", "s1"]
    assert inv.group_hosts("all") == ["c1", "c2", "s1", "lone"]
    assert inv.groups_of("c1") == ["dc", "compute"]
    assert inv.groups_of("s1") == ["dc", "storage"]
    assert inv.roles_of("c1") == ["base", "hypervisor"]


def test_precedence_and_explanation(inv):
    v = explain_vars(inv, "c1", role_defaults=[("base", {"level": "role", "r": 1})],
                     extra={"x": "e"})
    assert v["level"].value == "host"
    assert [s.split(" ")[0] for s, _ in v["level"].overridden] == ["role", "all", "group",
                                                                     "group"]
    assert v["dc_only"].source.startswith("group dc")
    assert v["r"].source == "role defaults: base"
    assert host_vars(inv, "c2")["level"] == "compute"
    assert host_vars(inv, "lone")["level"] == "all"
    assert host_vars(inv, "c2", extra={"level": "cli"})["level"] == "cli"
    assert host_vars(inv, "s1")["desc"] == "Zürich — 東京"


@pytest.mark.parametrize("target,limit,expected", [
    ("all", None, ["c1", "c2", "s1", "lone"]),
    ("compute", None, ["c1", "c2"]),
    ("c*", None, ["c1", "c2"]),
    ("rack=r1", None, ["c1", "s1"]),
    ("dc,!c2", None, ["c1", "s1"]),
    ("dc,&rack=r1", None, ["c1", "s1"]),
    ("all", "storage,lone", ["s1", "lone"]),
    ("@failed", None, ["c2"]),
])
def test_select(inv, target, limit, expected):
    assert select_hosts(inv, target, limit, named={"failed": ["c2", "gone"]}) == expected


@pytest.mark.parametrize("target", ["nosuch", "rack=r9", "@nosuch", ""])
def test_select_nothing_is_input_error(inv, target):
    with pytest.raises(InputError):
        select_hosts(inv, target)


def test_normalisation(inv):
    assert inv.hosts["c1"].provision.mac == "52:54:00:aa:bb:01"
    assert inv.hosts["c1"].address == "10.0.0.1"
    assert normalize_mac("nope") is None


@pytest.mark.parametrize("name,ok", [
    ("node1", True), ("a.b-c.d", True), ("1node", True), ("-a", False), ("a-", False),
    ("a_b", False), ("a" * 64, False), ("", False), ("a..b", False)])
def test_rfc1123(name, ok):
    assert valid_hostname(name) is ok


def test_hosts_behind_one_address_on_ports_of_their_own_are_one_endpoint_each(tmp_path):
    """Port-forwarded hosts (one NAT address, an SSH port each) are fine; two hosts at one
    address and port are refused, naming both."""
    p = tmp_path / "inventory.yml"
    p.write_text("hosts:\n"
                 "  a: {address: 192.0.2.10, ssh: {port: 2201}}\n"
                 "  b: {address: 192.0.2.10, ssh: {port: 2202}}\n")
    hosts = load_inventory(p, SecretStore({})).hosts
    assert (hosts["a"].ssh.port, hosts["b"].ssh.port) == (2201, 2202)
    p.write_text("hosts:\n"
                 "  a: {address: 192.0.2.10, ssh: {port: 2201}}\n"
                 "  b: {address: 192.0.2.10, ssh: {port: 2201}}\n")
    with pytest.raises(InputError, match=r"SSH endpoint 192\.0\.2\.10:2201 is also used by "
                                         r"host 'a'"):
        load_inventory(p, SecretStore({}))
