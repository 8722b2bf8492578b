"""A guest's libvirt domain, as data: the spec that shapes it, its hash, its XML.

Pure: no I/O. The ``vm`` resource compares the hash written into a defined domain's
``<metadata>`` with the hash of the wanted spec, so "same spec" is one string compare and a
changed spec can be shown field by field (the spec itself rides in the metadata as JSON).

Every value goes through :mod:`xml.etree.ElementTree`, which escapes it: a name, a path or a
bridge can never add elements to the domain.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

from inventory.model import VmSpec

#: The XML namespace of metalchain's element in a domain's ``<metadata>``.
METADATA_NS = "https://metalchain.dev/xmlns/libvirt/vm/1"
METADATA_PREFIX = "metalchain"
#: Bump when the XML this module writes changes for the same spec: guests then show as
#: "changed spec" and are rebuilt only with ``replace: true``.
XML_VERSION = 1


@dataclass(frozen=True)
class GuestPaths:
    """Where a guest's files live on its hypervisor."""

    overlay: str        # qcow2 overlay on the base image (the guest's disk)
    seed: str           # NoCloud seed ISO (holds the guest's private host key: mode 0600)
    console_log: str    # the serial console, appended by libvirt's virtlogd

    @classmethod
    def under(cls, guests_dir: str, log_dir: str, name: str,
              console_log: str | None = None) -> GuestPaths:
        """The default layout: ``GUESTS_DIR/NAME/{disk.qcow2,seed.iso}``, the console in
        ``LOG_DIR/NAME.console.log`` unless the inventory names a file."""
        base = f"{guests_dir.rstrip('/')}/{name}"
        return cls(overlay=f"{base}/disk.qcow2", seed=f"{base}/seed.iso",
                   console_log=console_log or f"{log_dir.rstrip('/')}/{name}.console.log")


def spec_doc(name: str, vm: VmSpec, *, domain_type: str, bridge: str,
             paths: GuestPaths) -> dict[str, Any]:
    """Everything that shapes the guest (its domain, its disk and its seed), JSON-safe.

    ``autostart`` and ``state`` are not in it: they change without rebuilding anything.
    The image is named, not hashed: a newer image in the store is for new guests, an
    existing guest keeps the base it was made from.
    """
    return {
        "xml_version": XML_VERSION,
        "name": name,
        "domain_type": domain_type,
        "vcpus": vm.vcpus,
        "memory_mib": vm.memory_mib,
        "disk_mib": vm.disk_mib,
        "image": vm.image,
        "mac": vm.mac,
        "bridge": bridge,
        "hostname": vm.hostname or name,
        "address": vm.network.address,
        "gateway": vm.network.gateway,
        "nameservers": list(vm.network.nameservers),
        "ssh_authorized_keys": list(vm.ssh_authorized_keys),
        "overlay": paths.overlay,
        "seed": paths.seed,
        "console_log": paths.console_log,
    }


def spec_hash(doc: dict[str, Any]) -> str:
    """A stable hash of a spec document (key order does not matter).

    >>> spec_hash({"a": 1, "b": 2}) == spec_hash({"b": 2, "a": 1})
    True
    """
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def spec_changes(old: dict[str, Any] | None, new: dict[str, Any]) -> list[str]:
    """``field: old -> new`` lines between a defined domain's spec and the wanted one."""
    if old is None:
        return ["the defined domain carries no metalchain spec (made outside metalchain?)"]
    out = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            out.append(f"{key}: {_show(old.get(key))} -> {_show(new.get(key))}")
    return out


def _show(value: Any) -> str:
    return "(unset)" if value is None else json.dumps(value, ensure_ascii=False)


def domain_xml(doc: dict[str, Any]) -> str:
    """The libvirt domain for a spec document (:func:`spec_doc`): the overlay as a virtio
    disk, the seed as a second, read-only one, a virtio NIC on the bridge with the
    inventory's MAC, the serial console logged to a file, no graphics."""
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    dom = ET.Element("domain", type=doc["domain_type"])
    ET.SubElement(dom, "name").text = doc["name"]
    meta = ET.SubElement(dom, "metadata")
    mc = ET.SubElement(meta, f"{{{METADATA_NS}}}vm", hash=spec_hash(doc))
    ET.SubElement(mc, f"{{{METADATA_NS}}}spec").text = json.dumps(
        doc, sort_keys=True, ensure_ascii=False)
    ET.SubElement(dom, "memory", unit="MiB").text = str(doc["memory_mib"])
    ET.SubElement(dom, "currentMemory", unit="MiB").text = str(doc["memory_mib"])
    ET.SubElement(dom, "vcpu", placement="static").text = str(doc["vcpus"])
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
    ET.SubElement(os_el, "boot", dev="hd")
    ET.SubElement(os_el, "bios", useserial="yes")
    features = ET.SubElement(dom, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    if doc["domain_type"] == "kvm":
        ET.SubElement(dom, "cpu", mode="host-passthrough")
    ET.SubElement(dom, "clock", offset="utc")
    # A crashed guest is restarted (remediation sees it as a flap, not as down); a guest
    # that powers itself off stays off: that was asked for from inside.
    ET.SubElement(dom, "on_poweroff").text = "destroy"
    ET.SubElement(dom, "on_reboot").text = "restart"
    ET.SubElement(dom, "on_crash").text = "restart"
    devices = ET.SubElement(dom, "devices")
    disk = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk, "driver", name="qemu", type="qcow2", cache="none", discard="unmap")
    ET.SubElement(disk, "source", file=doc["overlay"])
    ET.SubElement(disk, "target", dev="vda", bus="virtio")
    seed = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(seed, "driver", name="qemu", type="raw")
    ET.SubElement(seed, "source", file=doc["seed"])
    ET.SubElement(seed, "target", dev="vdb", bus="virtio")
    ET.SubElement(seed, "readonly")
    nic = ET.SubElement(devices, "interface", type="bridge")
    ET.SubElement(nic, "mac", address=doc["mac"])
    ET.SubElement(nic, "source", bridge=doc["bridge"])
    ET.SubElement(nic, "model", type="virtio")
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=doc["console_log"], append="on")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type="pty")
    ET.SubElement(console, "target", type="serial", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode") + "\n"


@dataclass(frozen=True)
class DefinedDomain:
    """What a defined domain's XML (``virsh dumpxml``) says about metalchain's spec."""

    hash: str | None
    spec: dict[str, Any] | None


def read_domain(xml_text: str) -> DefinedDomain:
    """The spec hash and document from a domain's XML; (None, None) when it has none or the
    XML cannot be read (a domain made outside metalchain counts as a changed spec)."""
    # It comes from the hypervisor: data, not trusted. libvirt never writes a DTD, so any
    # declaration (the way to entity-expansion bombs) makes it unreadable, not parsed.
    if "<!" in xml_text:
        return DefinedDomain(None, None)
    try:
        root = ET.fromstring(xml_text)  # noqa: S314 - no DTD possible (checked above)
    except ET.ParseError:
        return DefinedDomain(None, None)
    el = root.find(f"metadata/{{{METADATA_NS}}}vm")
    if el is None:
        return DefinedDomain(None, None)
    spec: dict[str, Any] | None = None
    text = el.findtext(f"{{{METADATA_NS}}}spec")
    if text:
        try:
            loaded = json.loads(text)
        except ValueError:
            loaded = None
        spec = loaded if isinstance(loaded, dict) else None
    return DefinedDomain(el.get("hash"), spec)
