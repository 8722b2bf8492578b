"""The ``monitor:`` settings: defaults, the receiver following boot.address, errors naming
the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from inventory.errors import InventoryError
from monitor.settings import parse_settings

pytestmark = pytest.mark.unit


def test_defaults_run_on_loopback():
    s = parse_settings({}, Path("/site"))
    assert s.prometheus_url == "http://127.0.0.1:9090"
    assert s.alertmanager_urls == ("http://127.0.0.1:9093", "http://127.0.0.1:9193")
    assert s.receiver_url == "http://127.0.0.1:9095" and s.dir == Path("/site/monitor")


def test_receiver_defaults_to_the_boot_address_and_values_are_taken():
    s = parse_settings({"scrape_interval": 1, "receiver_port": 9999}, Path("/site"),
                       default_receiver="10.77.0.1")
    assert s.receiver_url == "http://10.77.0.1:9999" and s.scrape_interval == 1.0


@pytest.mark.parametrize(("raw", "key"), [
    ({"scrape_interval": 0}, "monitor.scrape_interval"),
    ({"prometheus_port": "x"}, "monitor.prometheus_port"),
    ({"alertmanager_ports": [9093]}, "monitor.alertmanager_ports"),
    ({"alertmanager_ports": [9090, 9193]}, "monitor.cluster_ports"),
    ({"listen": "localhost"}, "monitor.listen"),
    ({"webhook_token_secret": "a b"}, "monitor.webhook_token_secret"),
    ({"scrape_intervall": 1}, "monitor.scrape_intervall"),
])
def test_bad_values_name_the_key(raw, key):
    with pytest.raises(InventoryError) as err:
        parse_settings(raw, Path("/site"))
    assert key in str(err.value) and "metalchain.yml" in str(err.value)
