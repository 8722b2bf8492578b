"""Guests in the inventory: a host with a ``vm:`` section, held by a hypervisor host."""

from __future__ import annotations

import pytest

from inventory.loader import load_inventory
from inventory.secrets import SecretStore

pytestmark = pytest.mark.unit

INVENTORY = """\
hosts:
  node1:
    provision: {mac: "52:54:00:00:00:11", ip: 10.77.0.11}
  vm1:
    roles: [base]
    vm:
      hypervisor: node1
      image: lab-guest.qcow2
      mac: "52-54-00-00-01-AB"
      network: {address: 10.77.0.31/24, gateway: 10.77.0.1, nameservers: [10.77.0.1]}
      memory_mib: 192
      state: stopped
  vm2:
    address: vm2.example.test
    vm:
      hypervisor: node1
      image: debian-12-genericcloud.qcow2
      mac: "52:54:00:00:01:02"
      network: {address: 10.77.0.32/24}
      ssh_authorized_keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample operator"]
"""


def _load(tmp_path, text=INVENTORY):
    path = tmp_path / "inventory.yml"
    path.write_text(text, encoding="utf-8")
    return load_inventory(path, SecretStore({}))


def test_guest_fields_defaults_and_address(tmp_path):
    inv = _load(tmp_path)
    vm1 = inv.host("vm1")
    assert vm1.is_vm and not vm1.managed
    assert vm1.address == "10.77.0.31"
    spec = vm1.vm
    assert (spec.hypervisor, spec.image, spec.mac) == ("node1", "lab-guest.qcow2",
                                                      "52:54:00:00:01:ab")
    assert (spec.vcpus, spec.memory_mib, spec.disk_mib) == (1, 192, 2048)
    assert spec.state == "stopped" and spec.autostart and spec.domain_type == "auto"
    assert spec.network.gateway == "10.77.0.1" and spec.network.nameservers == ("10.77.0.1",)
    assert inv.host("vm2").address == "vm2.example.test"
    assert inv.host("vm2").vm.ssh_authorized_keys == (
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample operator",)
    assert not inv.host("node1").is_vm


def test_guests_of_a_hypervisor_in_inventory_order(tmp_path):
    inv = _load(tmp_path)
    assert [h.name for h in inv.guests_of("node1")] == ["vm1", "vm2"]
    assert inv.guests_of("vm1") == []


def test_a_guest_cannot_hold_guests(tmp_path):
    from inventory.errors import InventoryError

    text = INVENTORY + """\
  vm3:
    vm:
      hypervisor: vm1
      image: lab-guest.qcow2
      mac: "52:54:00:00:01:03"
      network: {address: 10.77.0.33/24}
"""
    with pytest.raises(InventoryError, match="'vm1' is itself a guest"):
        _load(tmp_path, text)
