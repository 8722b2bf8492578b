"""The generated stack (monitor/stack.py) and autodiscovery (orchestrate/monitoring.py):
config shapes, the bearer token only in its 0600 file (never in a config or argv), the
missing-secret error, which hosts become targets, and `monitor status`'s exit code."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml

from inventory.errors import InputError
from inventory.secrets import Secret
from inventory.site import Site
from monitor import stack
from monitor.alerts import SHIPPED_ALERTS, Notifications, load_alerts
from monitor.settings import parse_settings
from orchestrate.monitoring import (
    StackStatus,
    after_run,
    refresh_targets,
    scrape_hosts,
    webhook_token,
)
from tests.conftest import write_site

pytestmark = pytest.mark.unit

TOKEN = "tok-0123456789abcdefghij"


def settings(root: Path, **raw):
    base = {"scrape_interval": 1, "evaluation_interval": 1, "prometheus_port": 19290,
            "alertmanager_ports": [19291, 19292], "cluster_ports": [19293, 19294],
            "receiver_address": "10.91.0.1", "receiver_port": 19295}
    return parse_settings({**base, **raw}, root)


def test_prometheus_yml_scrapes_file_sd_and_metalchain_and_alerts_both_alertmanagers(tmp_path):
    s = settings(tmp_path)
    lay = stack.layout(s)
    doc = stack.prometheus_config(s, lay)
    assert doc["global"] == {"scrape_interval": "1s", "scrape_timeout": "1s",
                             "evaluation_interval": "1s"}
    assert doc["rule_files"] == [str(lay.rules_file)]
    assert doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == \
        ["127.0.0.1:19291", "127.0.0.1:19292"]
    sd, own = doc["scrape_configs"]
    assert sd["file_sd_configs"] == [{"files": [str(lay.targets_dir / "*.json")],
                                      "refresh_interval": "1s"}]
    assert own == {"job_name": "metalchain", "metrics_path": "/metrics",
                   "static_configs": [{"targets": ["10.91.0.1:19295"]}]}
    slow = stack.prometheus_config(settings(tmp_path, scrape_interval=15), lay)
    assert slow["global"]["scrape_timeout"] == "10s"


def test_alertmanager_yml_routes_everything_to_the_remediation_webhook(tmp_path):
    s = settings(tmp_path)
    lay = stack.layout(s)
    doc = stack.alertmanager_config(s, lay)
    assert doc["route"] == {"receiver": "remediation",
                            "group_by": ["alertname", "host", "unit"], "group_wait": "0s",
                            "group_interval": "1s", "repeat_interval": "4h"}
    (receiver,) = doc["receivers"]
    assert receiver["name"] == "remediation"
    (hook,) = receiver["webhook_configs"]
    assert hook["url"] == "http://10.91.0.1:19295/v1/alerts" and hook["send_resolved"] is True
    assert hook["http_config"] == {"authorization": {
        "type": "Bearer", "credentials_file": str(tmp_path / "monitor" / "secrets" /
                                                  "webhook-token")}}
    route = stack.alertmanager_config(s, lay, Notifications("5s", "1h"))["route"]
    assert (route["group_interval"], route["repeat_interval"]) == ("5s", "1h")
    assert route["group_wait"] == "0s"
    route = stack.alertmanager_config(s, lay, Notifications("5m", "4h", "30s"))["route"]
    assert (route["group_wait"], route["group_interval"]) == ("30s", "5m")
    slow = stack.alertmanager_config(settings(tmp_path, evaluation_interval=0.5), lay)
    assert slow["route"]["group_interval"] == "1s"


def test_the_token_is_only_in_its_0600_file_never_in_configs_or_argv(tmp_path):
    s = settings(tmp_path)
    lay = stack.layout(s)
    stack.write_token(lay, Secret(TOKEN, "secret:monitor_webhook_token"))
    written = stack.write_configs(s, lay, load_alerts(SHIPPED_ALERTS))
    assert set(written) == set(lay.generated())
    holding = [p for p in lay.root.rglob("*") if p.is_file() and TOKEN in p.read_text()]
    assert holding == [lay.token_file]
    assert lay.token_file.read_text() == TOKEN
    assert stat.S_IMODE(lay.token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(lay.token_file.parent.stat().st_mode) == 0o700
    comps = stack.components(s, lay)
    assert [c.name for c in comps] == ["prometheus", "alertmanager-1", "alertmanager-2"]
    assert not [a for c in comps for a in c.argv if TOKEN in a]
    # Unchanged configs are not rewritten (Prometheus is not reloaded for nothing).
    assert stack.write_configs(s, lay, load_alerts(SHIPPED_ALERTS)) == []


def test_a_token_with_a_newline_is_refused(tmp_path):
    with pytest.raises(stack.StackError, match=r"secret:x.*one word") as err:
        stack.write_token(stack.layout(settings(tmp_path)), Secret("a b\n", "secret:x"))
    assert "a b" not in str(err.value)


def test_alertmanagers_are_clustered_with_each_other_on_listen(tmp_path):
    am1, am2 = stack.components(settings(tmp_path), stack.layout(settings(tmp_path)))[1:]
    assert "--cluster.listen-address=127.0.0.1:19293" in am1.argv
    assert "--cluster.peer=127.0.0.1:19294" in am1.argv
    assert "--cluster.listen-address=127.0.0.1:19294" in am2.argv
    assert "--cluster.peer=127.0.0.1:19293" in am2.argv
    assert am1.url == "http://127.0.0.1:19291" and am2.url == "http://127.0.0.1:19292"
    storage = {a for c in (am1, am2) for a in c.argv if a.startswith("--storage.path=")}
    assert len(storage) == 2


def test_a_missing_webhook_secret_says_what_to_add(tmp_path):
    site = Site.open(write_site(tmp_path / "site", "hosts: {}\n"))
    with pytest.raises(InputError, match=r"secrets.yml: no 'monitor_webhook_token' secret .*"
                                         r"add a line 'monitor_webhook_token: "):
        webhook_token(site, settings(site.root))


INVENTORY = """\
groups:
  fleet: {roles: [node_exporter]}
hosts:
  fleet01: {address: 10.91.0.2, groups: [fleet], labels: {rack: r1}}
  fleet02: {address: 10.91.0.3, groups: [fleet]}
  plain: {address: 10.91.0.4, roles: [base]}
"""


def _applied(site: Site, host: str, *, kind: str = "apply", check: bool = False,
             status: str = "changed") -> None:
    uid = site.state.start_run(kind, "<apply_role>", {"check": check})
    entry = site.state.journal_intent(uid, host, 0, "apply / node_exporter")
    site.state.journal_outcome(entry, status)
    site.state.end_run(uid, "ok")


@pytest.fixture
def site(tmp_path):
    root = write_site(tmp_path / "site", INVENTORY)
    s = Site.open(root)
    yield s
    s.close()


def test_a_host_is_a_target_once_its_roles_are_applied(site):
    assert scrape_hosts(site) == []
    _applied(site, "fleet01", check=True)           # check mode applies nothing
    _applied(site, "fleet02", status="failed")      # nor does a failed step
    _applied(site, "plain")                         # applied, but no role scrapes it
    assert scrape_hosts(site) == []
    _applied(site, "fleet01")
    (host,) = scrape_hosts(site)
    assert (host.name, host.address, host.groups, host.roles, dict(host.labels)) == \
        ("fleet01", "10.91.0.2", ("fleet",), ("node_exporter",), {"rack": "r1"})
    assert [(t.port, t.job) for t in host.targets] == [(9100, "node")]


def test_refresh_writes_file_sd_and_a_host_that_left_the_inventory_goes(site):
    for h in ("fleet01", "fleet02"):
        _applied(site, h, kind="playbook")
    path = refresh_targets(site)
    groups = json.loads(path.read_text())
    assert [(g["targets"], g["labels"]["instance"], g["labels"]["metalchain_groups"])
            for g in groups] == [(["10.91.0.2:9100"], "fleet01", ",fleet,"),
                                 (["10.91.0.3:9100"], "fleet02", ",fleet,")]
    assert groups[0]["labels"]["rack"] == "r1" and groups[0]["labels"]["job"] == "node"
    before = path.stat().st_mtime_ns
    refresh_targets(site)
    assert path.stat().st_mtime_ns == before          # unchanged: not rewritten
    doc = yaml.safe_load(site.inventory_path.read_text())
    del doc["hosts"]["fleet02"]
    site.inventory_path.write_text(yaml.safe_dump(doc))
    site.reload_inventory()
    refresh_targets(site)
    assert [g["labels"]["instance"] for g in json.loads(path.read_text())] == ["fleet01"]


def test_after_run_refreshes_only_a_set_up_stack_after_converging_runs(site):
    _applied(site, "fleet01")
    monitor_dir = site.root / "monitor"
    after_run(site, "apply", False)
    assert not monitor_dir.exists()                   # no `monitor up` yet: nothing written
    lay = stack.layout(parse_settings({}, site.root))
    lay.targets_dir.mkdir(parents=True)
    after_run(site, "exec", False)
    after_run(site, "apply", True)
    assert not lay.targets_file.exists()
    after_run(site, "apply", False)
    assert [g["labels"]["instance"] for g in json.loads(lay.targets_file.read_text())] == \
        ["fleet01"]


def test_after_run_never_raises(site, caplog):
    (site.root / "metalchain.yml").write_text("monitor: {scrape_interval: 0}\n")
    broken = Site.open(site.root)
    after_run(broken, "apply", False)
    assert "targets not refreshed" in caplog.text
    broken.close()


RUNNING = {"prometheus": 1, "alertmanager-1": 2, "alertmanager-2": 3}


@pytest.mark.parametrize(("status", "code"), [
    (StackStatus(RUNNING, targets=[{"health": "up"}]), 0),
    (StackStatus(RUNNING, targets=[{"health": "up"}, {"health": "down"}]), 1),
    (StackStatus(RUNNING, alerts=[{"state": "pending"}]), 0),
    (StackStatus(RUNNING, alerts=[{"state": "firing"}]), 1),
    (StackStatus({**RUNNING, "alertmanager-2": None}), 1),
    (StackStatus(RUNNING, errors=["GET ...: connection refused"]), 1),
])
def test_status_exit_code(status, code):
    assert status.exit_code == code
    assert status.to_json()["exit_code"] == code



def test_a_rejected_config_is_set_aside_and_the_previous_one_stays(tmp_path, monkeypatch):
    s = settings(tmp_path)
    lay = stack.layout(s)
    alerts = load_alerts(SHIPPED_ALERTS)
    monkeypatch.setattr(stack, "check_configs", lambda *_a, **_k: None)
    stack.install_configs(s, lay, alerts)
    passed = lay.rules_file.read_text()

    def reject(*_a, **_k):
        raise stack.StackError(f"{lay.rules_file}: promtool check rejected it: bad")

    monkeypatch.setattr(stack, "check_configs", reject)
    with pytest.raises(stack.StackError, match=r"previous config stays; rejected: .*"
                                               r"metalchain.rules.yml.rejected"):
        stack.install_configs(s, lay, alerts[:1])
    assert lay.rules_file.read_text() == passed
    assert lay.rules_file.with_name("metalchain.rules.yml.rejected").read_text() != passed
    # Nothing there before: the rejected files are set aside, none is left in place.
    fresh = stack.layout(settings(tmp_path / "other"))
    with pytest.raises(stack.StackError):
        stack.install_configs(settings(tmp_path / "other"), fresh, alerts)
    assert not [p for p in fresh.generated() if p.exists()]
