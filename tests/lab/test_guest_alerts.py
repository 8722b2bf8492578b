"""The shipped alert rules under Prometheus's own rule engine (``promtool test rules``, no
server): a dead guest fires VmDown with its ``hypervisor`` and ``kind="vm"``, a dead machine
HostDown, never the other; an exporter on a host that does not answer SSH is not a second
incident (ExporterDown stays for hosts that do answer). One promtool process, < 1 s."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from monitor.alerts import SHIPPED_ALERTS, load_alerts, rule_text

pytestmark = pytest.mark.lab

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
SERVE = {"job": "metalchain", "instance": "127.0.0.1:19931"}


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


def test_vm_down_host_down_and_exporter_down_each_fire_only_for_their_hosts(tmp_path):
    rules = tmp_path / "rules.yml"
    rules.write_text(rule_text(load_alerts(SHIPPED_ALERTS)), encoding="utf-8")
    sources = {r["alert"]: r["annotations"]["source"]
               for r in yaml.safe_load(rules.read_text())["groups"][0]["rules"]}
    guest = {"kind": "vm", "hypervisor": "node1"}
    doc = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                series("metalchain_host_reachable", {**SERVE, "host": "vm1", **guest},
                       "0 0 0 0"),
                series("metalchain_host_reachable", {**SERVE, "host": "node2"}, "0 0 0 0"),
                series("metalchain_host_reachable", {**SERVE, "host": "web1"}, "1 1 1 1"),
                series("up", {"job": "node", "instance": "vm1", **guest}, "0 0 0 0"),
                series("up", {"job": "node", "instance": "node2"}, "0 0 0 0"),
                series("up", {"job": "node", "instance": "web1"}, "0 0 0 0"),
            ],
            "alert_rule_test": [
                {"eval_time": "2m", "alertname": "VmDown", "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "host": "vm1", **guest, **SERVE},
                    "exp_annotations": {"summary": "guest vm1 does not answer SSH",
                                        "source": sources["VmDown"]}}]},
                {"eval_time": "2m", "alertname": "HostDown", "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "host": "node2", **SERVE},
                    "exp_annotations": {"summary": "node2 does not answer SSH",
                                        "source": sources["HostDown"]}}]},
                {"eval_time": "2m", "alertname": "ExporterDown", "exp_alerts": [{
                    "exp_labels": {"severity": "critical", "host": "web1", "job": "node",
                                   "instance": "web1"},
                    "exp_annotations": {
                        "summary": "node_exporter on web1 does not answer its scrape",
                        "source": sources["ExporterDown"]}}]},
            ],
        }],
    }
    spec = tmp_path / "test.yml"
    spec.write_text(yaml.safe_dump(doc), encoding="utf-8")
    r = subprocess.run([PROMTOOL, "test", "rules", str(spec)], capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
