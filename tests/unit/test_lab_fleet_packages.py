"""`lab up --fleet-package NAME`: the fleet runs an image variant with extra Debian packages
(python3 for ansible-core in bench/peers.py), recorded in lab.json, refused when malformed or
when a running fleet has another variant."""

from __future__ import annotations

import pytest

from inventory.errors import InputError, LabError
from lab.lab import Lab, fleet_image_spec
from provision.image import DEFAULT_PACKAGES, ImageSpec

pytestmark = pytest.mark.unit


def test_no_extra_packages_is_the_golden_image():
    assert fleet_image_spec([]) == ImageSpec()
    assert fleet_image_spec([]).key() == ImageSpec().key()


def test_extra_packages_make_another_cached_variant():
    spec = fleet_image_spec(["python3-apt", "python3"])
    assert spec.packages[:len(DEFAULT_PACKAGES)] == DEFAULT_PACKAGES
    assert {"python3", "python3-apt"} <= set(spec.packages)
    assert spec.key() != ImageSpec().key()
    assert spec.key() == fleet_image_spec(["python3", "python3-apt", "python3"]).key()


def test_plan_records_the_packages_and_keeps_them(tmp_path):
    lab = Lab(tmp_path)
    config = lab.plan(0, 3, ipv4="10.131.0.0/24", name=None, memory_mib=128, disk_gib=1,
                      fleet_packages=["python3", "python3"])
    assert config.fleet_packages == ["python3"]
    lab.dir.mkdir()
    lab.save(config)
    assert lab.load().fleet_packages == ["python3"]
    # the same variant again is fine; another one needs a lab down first
    lab.plan(0, 3, ipv4=None, name=None, memory_mib=128, disk_gib=1,
             fleet_packages=["python3"])
    with pytest.raises(LabError, match="lab down"):
        lab.plan(0, 3, ipv4=None, name=None, memory_mib=128, disk_gib=1)


def test_a_malformed_package_name_is_bad_input(tmp_path):
    with pytest.raises(InputError, match="--fleet-package"):
        Lab(tmp_path).plan(0, 1, ipv4="10.131.0.0/24", name=None, memory_mib=128,
                           disk_gib=1, fleet_packages=["python3; rm -rf /"])
