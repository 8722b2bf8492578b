"""The guest's libvirt domain from its VmSpec: XML, spec hash, and reading it back."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from configure.vmdomain import (
    GuestPaths,
    domain_xml,
    read_domain,
    spec_changes,
    spec_doc,
    spec_hash,
)
from inventory.model import VmNetwork, VmSpec

pytestmark = pytest.mark.unit

SPEC = VmSpec(hypervisor="node1", image="lab-guest.qcow2", mac="52:54:00:00:01:01",
              network=VmNetwork("10.77.0.31/24", "10.77.0.1", ("10.77.0.1",)),
              vcpus=2, memory_mib=192, disk_mib=1024)
PATHS = GuestPaths.under("/var/lib/metalchain/guests", "/var/log/metalchain/guests", "vm1")


def _doc(spec=SPEC, name="vm1", dtype="qemu", bridge="br-guests", paths=PATHS):
    return spec_doc(name, spec, domain_type=dtype, bridge=bridge, paths=paths)


def test_domain_has_the_specified_devices():
    root = ET.fromstring(domain_xml(_doc()))
    assert root.get("type") == "qemu"
    assert root.findtext("name") == "vm1"
    assert root.findtext("vcpu") == "2"
    assert root.find("memory").get("unit") == "MiB" and root.findtext("memory") == "192"
    disks = root.findall("devices/disk")
    assert [d.find("source").get("file") for d in disks] == [
        "/var/lib/metalchain/guests/vm1/disk.qcow2", "/var/lib/metalchain/guests/vm1/seed.iso"]
    assert [d.find("driver").get("type") for d in disks] == ["qcow2", "raw"]
    assert all(d.find("target").get("bus") == "virtio" for d in disks)
    assert disks[0].find("readonly") is None and disks[1].find("readonly") is not None
    nic = root.find("devices/interface")
    assert nic.get("type") == "bridge"
    assert nic.find("source").get("bridge") == "br-guests"
    assert nic.find("mac").get("address") == "52:54:00:00:01:01"
    assert nic.find("model").get("type") == "virtio"
    log = root.find("devices/serial/log")
    assert log.get("file") == "/var/log/metalchain/guests/vm1.console.log"
    assert log.get("append") == "on"
    assert root.find("devices/graphics") is None and root.find("devices/video") is None
    assert root.findtext("on_crash") == "restart"
    assert root.findtext("on_poweroff") == "destroy"
    assert root.find("cpu") is None       # host-passthrough only under kvm


def test_kvm_domain_passes_the_host_cpu_through():
    root = ET.fromstring(domain_xml(_doc(dtype="kvm")))
    assert root.get("type") == "kvm" and root.find("cpu").get("mode") == "host-passthrough"


def test_values_are_escaped_not_markup():
    paths = GuestPaths("/g/a'b\"<c>&.qcow2", "/g/seed.iso", "/g/x</log><graphics/>.log")
    root = ET.fromstring(domain_xml(_doc(paths=paths)))
    assert root.find("devices/graphics") is None
    assert root.find("devices/disk/source").get("file") == "/g/a'b\"<c>&.qcow2"
    assert root.find("devices/serial/log").get("file") == "/g/x</log><graphics/>.log"


def test_read_back_gives_the_hash_and_spec():
    doc = _doc()
    defined = read_domain(domain_xml(doc))
    assert defined.hash == spec_hash(doc)
    assert defined.spec == doc


@pytest.mark.parametrize("text", [
    "", "<domain", "<domain><name>x</name></domain>",
    '<!DOCTYPE d [<!ENTITY a "aaaa">]><domain>&a;</domain>',
])
def test_foreign_or_broken_xml_has_no_spec(text):
    assert read_domain(text).hash is None


def test_hash_is_stable_and_sees_every_shaping_field():
    assert spec_hash(_doc()) == spec_hash(_doc())
    base = spec_hash(_doc())
    variants = [
        VmSpec(**{**SPEC.__dict__, "vcpus": 1}),
        VmSpec(**{**SPEC.__dict__, "memory_mib": 256}),
        VmSpec(**{**SPEC.__dict__, "disk_mib": 2048}),
        VmSpec(**{**SPEC.__dict__, "image": "other.qcow2"}),
        VmSpec(**{**SPEC.__dict__, "mac": "52:54:00:00:01:02"}),
        VmSpec(**{**SPEC.__dict__, "network": VmNetwork("10.77.0.32/24")}),
        VmSpec(**{**SPEC.__dict__, "ssh_authorized_keys": ("ssh-ed25519 AAAA x",)}),
    ]
    hashes = {spec_hash(_doc(spec=v)) for v in variants}
    assert base not in hashes and len(hashes) == len(variants)
    assert spec_hash(_doc(dtype="kvm")) != base
    assert spec_hash(_doc(bridge="br0")) != base
    # state and autostart change nothing that needs a rebuild
    assert spec_hash(_doc(spec=VmSpec(**{**SPEC.__dict__, "state": "stopped",
                                        "autostart": False}))) == base


def test_changes_name_each_field():
    old, new = _doc(), _doc(spec=VmSpec(**{**SPEC.__dict__, "vcpus": 4}))
    assert spec_changes(old, new) == ["vcpus: 2 -> 4"]
    assert spec_changes(None, new)[0].startswith("the defined domain carries no")
