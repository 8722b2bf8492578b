"""Prometheus file_sd targets from the inventory and the roles' scrape_targets
(monitor/targets.py): labels, checks with the role or host named, atomic unchanged writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from monitor.targets import (
    ScrapeHost,
    ScrapeTarget,
    TargetError,
    file_sd_groups,
    scrape_targets,
    write_file_sd,
)

pytestmark = pytest.mark.unit

ROLES = Path(__file__).resolve().parents[2] / "playbooks" / "roles"
NODE = ScrapeTarget(port=9100, job="node", role="node_exporter")


def host(name: str = "fleet01", **kw) -> ScrapeHost:
    return ScrapeHost(name=name, address=kw.pop("address", "10.0.0.1"),
                      groups=kw.pop("groups", ("fleet",)),
                      roles=kw.pop("roles", ("base", "node_exporter")),
                      targets=kw.pop("targets", (NODE,)), **kw)


def test_the_shipped_node_exporter_role_declares_its_exporter():
    meta = yaml.safe_load((ROLES / "node_exporter" / "meta.yml").read_text())
    assert scrape_targets("node_exporter", meta["scrape_targets"]) == (NODE,)


@pytest.mark.parametrize("role", sorted(p.name for p in ROLES.iterdir() if p.is_dir()))
def test_every_shipped_roles_scrape_targets_are_valid(role):
    meta = yaml.safe_load((ROLES / role / "meta.yml").read_text()) or {}
    for target in scrape_targets(role, meta.get("scrape_targets")):
        assert target.role == role and 1 <= target.port <= 65535


def test_a_target_group_carries_the_hosts_labels_groups_and_roles():
    (group,) = file_sd_groups([host(labels={"rack": "r12", "env": "lab"})])
    assert group["targets"] == ["10.0.0.1:9100"]
    assert group["labels"] == {
        "instance": "fleet01", "metalchain_host": "fleet01", "metalchain_groups": ",fleet,",
        "metalchain_roles": ",base,node_exporter,", "env": "lab", "rack": "r12",
        "job": "node", "__metrics_path__": "/metrics"}


def test_hosts_without_targets_are_not_scraped_and_order_is_stable():
    hosts = [host("b"), host("a", address="fd00::5"), host("c", targets=())]
    groups = file_sd_groups(hosts)
    assert [g["labels"]["instance"] for g in groups] == ["a", "b"]
    assert groups[0]["targets"] == ["[fd00::5]:9100"]
    assert file_sd_groups(reversed(hosts)) == groups


def test_two_roles_declaring_one_exporter_give_one_target():
    twice = host(targets=(NODE, ScrapeTarget(9100, "node", role="hypervisor"),
                          ScrapeTarget(9177, "libvirt", "/metrics", "hypervisor")))
    assert [(g["labels"]["job"], g["targets"]) for g in file_sd_groups([twice])] == [
        ("libvirt", ["10.0.0.1:9177"]), ("node", ["10.0.0.1:9100"])]


@pytest.mark.parametrize("raw,message", [
    ("9100", "scrape_targets must be a list"),
    ([9100], r"scrape_targets\[0\] must be a mapping"),
    ([{"port": 0, "job": "node"}], "port must be a number 1-65535, got 0"),
    ([{"port": True, "job": "node"}], "port must be a number"),
    ([{"port": 9100}], "job must be a name"),
    ([{"port": 9100, "job": "no de"}], "job must be a name"),
    ([{"port": 9100, "job": "node", "path": "metrics"}], "path must start with /"),
    ([{"port": 9100, "job": "node", "scheme": "https"}], r"unknown key\(s\) scheme"),
])
def test_a_bad_scrape_target_names_the_role(raw, message):
    with pytest.raises(TargetError, match=f"role node_exporter: .*{message}"):
        scrape_targets("node_exporter", raw)


@pytest.mark.parametrize("labels,message", [
    ({"rack-id": "r1"}, "'rack-id' is not a Prometheus label name"),
    ({"__address__": "x"}, "'__address__' is not a Prometheus label name"),
    ({"job": "db"}, "'job' is one metalchain sets itself"),
])
def test_a_label_prometheus_would_refuse_names_the_host(labels, message):
    with pytest.raises(TargetError, match=f"host fleet01: label {message}"):
        file_sd_groups([host(labels=labels)])


def test_the_file_is_written_atomically_and_only_when_it_changes(tmp_path):
    path = tmp_path / "targets" / "metalchain.json"
    groups = file_sd_groups([host()])
    assert write_file_sd(path, groups) is True
    assert json.loads(path.read_text()) == groups
    inode = path.stat().st_ino
    assert write_file_sd(path, groups) is False and path.stat().st_ino == inode
    assert write_file_sd(path, []) is True and json.loads(path.read_text()) == []
    assert [p.name for p in path.parent.iterdir()] == ["metalchain.json"]   # no temp left
