"""`lab up --cpus N`: each node is a QEMU machine with N vCPUs (the e2e's emulated hypervisor
runs its guest on a vCPU of its own), recorded in lab.json; a lab.json from before has 1."""

from __future__ import annotations

import json

import pytest

from lab.lab import Lab

pytestmark = pytest.mark.unit


def test_plan_gives_every_node_the_vcpus_and_the_machine_asks_qemu_for_them(tmp_path):
    lab = Lab(tmp_path)
    config = lab.plan(2, 0, ipv4="10.131.0.0/24", name=None, memory_mib=256, disk_gib=1,
                      cpus=2)
    lab.dir.mkdir()
    lab.save(config)
    assert lab.load().cpus == 2
    assert {lab.machine(config, node).spec.cpus for node in config.nodes} == {2}


def test_a_lab_json_without_cpus_means_one(tmp_path):
    lab = Lab(tmp_path)
    config = lab.plan(1, 0, ipv4="10.131.0.0/24", name=None, memory_mib=256, disk_gib=1)
    lab.dir.mkdir()
    lab.save(config)
    doc = json.loads(lab.config_path.read_text())
    del doc["cpus"]
    lab.config_path.write_text(json.dumps(doc))
    assert lab.load().cpus == 1
