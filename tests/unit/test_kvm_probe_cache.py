"""The KVM verdict is cached per boot: another boot's verdict or a damaged file is ignored."""

from __future__ import annotations

import json

import pytest

from lab import machine

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(("content", "boot_id", "expected"), [
    ({"boot_id": "b1", "kvm_usable": False}, "b1", False),
    ({"boot_id": "b1", "kvm_usable": True}, "b1", True),
    ({"boot_id": "b0", "kvm_usable": True}, "b1", None),     # an earlier boot
    ({"boot_id": "b1", "kvm_usable": "yes"}, "b1", None),    # not a verdict
    ({"boot_id": "b1", "kvm_usable": True}, "", None),       # boot id unknown
    ([1, 2], "b1", None),
])
def test_cached_verdict(tmp_path, monkeypatch, content, boot_id, expected):
    cache = tmp_path / "kvm-probe.json"
    cache.write_text(json.dumps(content))
    monkeypatch.setattr(machine, "KVM_PROBE_CACHE", cache)
    assert machine._cached_probe(boot_id) is expected


def test_damaged_or_missing_cache_is_no_verdict(tmp_path, monkeypatch):
    cache = tmp_path / "kvm-probe.json"
    monkeypatch.setattr(machine, "KVM_PROBE_CACHE", cache)
    assert machine._cached_probe("b1") is None
    cache.write_text("{not json")
    assert machine._cached_probe("b1") is None
