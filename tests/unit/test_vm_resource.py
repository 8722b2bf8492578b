"""The vm resource's decisions, from what the probe found (pure: no hypervisor)."""

from __future__ import annotations

import base64
import json

import pytest

from configure.resources.vm import (
    BaseImage,
    GuestFound,
    GuestWant,
    VmProbeError,
    VmResource,
    parse_found,
)
from configure.vmdomain import GuestPaths, domain_xml, spec_doc, spec_hash
from inventory.model import VmNetwork, VmSpec

pytestmark = pytest.mark.unit

SPEC = VmSpec(hypervisor="node1", image="lab-guest.qcow2", mac="52:54:00:00:01:01",
              network=VmNetwork("10.77.0.31/24", "10.77.0.1"))
PATHS = GuestPaths.under("/var/lib/metalchain/guests", "/var/log/metalchain/guests", "vm1")
IMAGE = BaseImage("lab-guest.qcow2", "a" * 64, "http://10.77.0.12:9292/images/lab-guest.qcow2",
                  "qcow2", "/var/lib/metalchain/images/" + "a" * 64)
PUB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGuest"


def _want(state="running", autostart=True, replace=False, spec=SPEC):
    doc = spec_doc("vm1", spec, domain_type="qemu", bridge="br-guests", paths=PATHS)
    return GuestWant(name="vm1", state=state, autostart=autostart, paths=PATHS, doc=doc,
                     hash=spec_hash(doc), xml=domain_xml(doc), image=IMAGE, disk_mib=2048,
                     replace=replace)


def _found(defined=True, state="running", autostart=True, same=True, files=True,
           image_ok=True):
    w = _want()
    return GuestFound(defined=defined, state=state if defined else "absent",
                      autostart=autostart if defined else None,
                      hash=(w.hash if same else "0" * 64) if defined else None,
                      spec=w.doc if defined else None, overlay=files, seed=files,
                      seed_pub=PUB if files else None, image_ok=image_ok)


def _decide(want, found):
    return VmResource(want).decide_found(found)


def _scripts(d):
    return "\n".join(a.script for a in d.actions)


def test_same_spec_running_is_left_alone():
    d = _decide(_want(), _found())
    assert not d.actions and not d.blocked and not d.needs_seed


def test_missing_guest_is_created_from_a_verified_image():
    d = _decide(_want(), _found(defined=False, files=False, image_ok=False))
    s = _scripts(d)
    assert d.needs_seed and d.starts
    assert "sha256sum" in s and "refused" in s and "rm -f -- " in s
    assert "qemu-img create -q -f qcow2 -F qcow2 -b /var/lib/metalchain/images/" in s
    assert "virsh -c qemu:///system define -- /var/lib/metalchain/guests/vm1/domain.xml" in s
    assert "virsh -c qemu:///system start -- vm1" in s
    assert s.index("define") < s.index("start --")


def test_image_already_there_is_not_downloaded_again():
    s = _scripts(_decide(_want(), _found(defined=False, files=False, image_ok=True)))
    assert "sha256sum" not in s and "qemu-img create" in s


def test_changed_spec_is_refused_with_a_diff():
    other = VmSpec(**{**SPEC.__dict__, "memory_mib": 512})
    d = _decide(_want(spec=other), _found())
    assert not d.actions and d.blocked and "memory_mib: 256 -> 512" in d.diff


def test_changed_spec_with_replace_rebuilds():
    other = VmSpec(**{**SPEC.__dict__, "memory_mib": 512})
    d = _decide(_want(spec=other, replace=True), _found())
    s = _scripts(d)
    assert d.needs_seed and "undefine -- vm1" in s and "destroy -- vm1" in s
    assert s.index("undefine") < s.index("define --")


def test_shut_off_guest_is_started_again():
    d = _decide(_want(), _found(state="off"))
    assert _scripts(d) == "virsh -c qemu:///system start -- vm1"
    assert d.starts and not d.needs_seed


def test_paused_guest_is_resumed():
    assert "resume -- vm1" in _scripts(_decide(_want(), _found(state="paused")))


def test_stopped_shuts_down_with_a_bounded_wait():
    s = _scripts(_decide(_want(state="stopped"), _found()))
    assert "shutdown -- vm1" in s and "destroy -- vm1" in s and "mc_i -gt 120" in s
    assert not _decide(_want(state="stopped"), _found(state="off")).actions


def test_autostart_follows_the_spec():
    assert _scripts(_decide(_want(autostart=False), _found())) == \
        "virsh -c qemu:///system autostart --disable -- vm1"


def test_absent_removes_domain_overlay_and_seed_not_the_base():
    s = _scripts(_decide(_want(state="absent"), _found()))
    assert "undefine -- vm1" in s and PATHS.overlay in s and PATHS.seed in s
    assert IMAGE.path not in s
    assert not _decide(_want(state="absent"), _found(defined=False, files=False)).actions


def test_defined_without_its_seed_needs_replace():
    d = _decide(_want(), _found(files=False))
    assert d.blocked and not d.actions


def test_nothing_secret_or_seed_content_in_actions():
    d = _decide(_want(), _found(defined=False, files=False))
    assert "seed.iso.new" in _scripts(d)      # moved into place, never written here
    assert "PRIVATE" not in _scripts(d)


def _probe_output(**kv):
    return "\n".join(f"{k}={v}" for k, v in kv.items())


def test_parse_found_reads_the_probe():
    xml = base64.b64encode(_want().xml.encode()).decode()
    f = parse_found(_probe_output(virsh="ok", defined="yes", domstate="shut off", xml=xml,
                                  autostart="enable", overlay="yes", seed="yes",
                                  seedmeta=json.dumps({"host_key_pub": PUB}), image="ok"))
    assert f.state == "off" and f.hash == _want().hash and f.autostart is True
    assert f.seed_pub == PUB and f.reported_state == "stopped"


@pytest.mark.parametrize("text", [
    "",                                                       # the probe never printed
    "virsh=failed:error: failed to connect to the hypervisor",  # libvirtd down
    _probe_output(virsh="ok", defined="yes", domstate="running", xml=""),
    _probe_output(virsh="ok", defined="yes", domstate="weird", xml="PGE+"),
    # the seed's record would be pinned: a tampered one is refused, never pinned
    _probe_output(virsh="ok", defined="no", seedmeta=json.dumps(
        {"host_key_pub": "ssh-ed25519 AAAA;rm -rf /\nssh-rsa AAAA"})),
])
def test_a_probe_that_cannot_tell_is_an_error_not_absent(text):
    with pytest.raises(VmProbeError):
        parse_found(text)
