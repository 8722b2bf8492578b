"""Monitoring settings: the ``monitor:`` mapping of ``SITE/metalchain.yml``, parsed and checked.

Every key is optional; the defaults run the stack on loopback at the ports operators know::

    monitor:
      dir: monitor                  # generated configs, data, logs, pids (relative: SITE/)
      listen: 127.0.0.1             # where Prometheus and the Alertmanagers listen
      prometheus_port: 9090
      alertmanager_ports: [9093, 9193]   # two replicas, clustered with each other
      cluster_ports: [9094, 9194]        # their gossip (on ``listen``)
      scrape_interval: 15              # seconds (1 in tests and the demo)
      evaluation_interval: 15
      receiver_address: 10.77.0.1   # metalchain serve's receiver (default: boot.address,
      receiver_port: 9095           #   else 127.0.0.1): Alertmanager and hosts post here
      webhook_token_secret: monitor_webhook_token   # key in secrets.yml: Alertmanager's token
      event_key_secret: monitor_event_key           # key in secrets.yml: per-host event tokens
      bmc_poll_interval: 5          # seconds between two power-state polls of each BMC (serve)
      bmc_poll_timeout: 2           # seconds one BMC may take to answer a poll
      reach_probe_interval: 15      # seconds between two SSH reach probes of each host (serve)
      reach_probe_timeout: 10       # seconds a host may take to send its SSH identification

The SSH reach probe has its own pace: each probe makes the host's sshd fork and re-exec a
session process. Measured on the e2e's guest (nested under emulation, idle, Prometheus
scraping it): its QEMU used 5 % of node1's CPU with no probe, 24 % with a probe every 5 s and
52 % with one a second. Probing faster than Prometheus scrapes the result gains nothing.

Errors name ``metalchain.yml`` and the key (``monitor.scrape_interval``) with the line when
known.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from inventory.errors import InventoryError

SETTINGS_FILE = "metalchain.yml"
MONITOR_KEYS = ("dir", "listen", "prometheus_port", "alertmanager_ports", "cluster_ports",
                "scrape_interval", "evaluation_interval", "receiver_address", "receiver_port",
                "webhook_token_secret", "event_key_secret", "bmc_poll_interval",
                "bmc_poll_timeout", "reach_probe_interval", "reach_probe_timeout")
_SECRET_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class MonitorSettings:
    dir: Path
    listen: str = "127.0.0.1"
    prometheus_port: int = 9090
    alertmanager_ports: tuple[int, int] = (9093, 9193)
    cluster_ports: tuple[int, int] = (9094, 9194)
    scrape_interval: float = 15.0
    evaluation_interval: float = 15.0
    receiver_address: str = "127.0.0.1"
    receiver_port: int = 9095
    webhook_token_secret: str = "monitor_webhook_token"  # noqa: S105 - a key name
    event_key_secret: str = "monitor_event_key"  # noqa: S105 - a key name
    bmc_poll_interval: float = 5.0
    bmc_poll_timeout: float = 2.0
    reach_probe_interval: float = 15.0
    reach_probe_timeout: float = 10.0

    @property
    def prometheus_url(self) -> str:
        return f"http://{self.listen}:{self.prometheus_port}"

    @property
    def alertmanager_urls(self) -> tuple[str, ...]:
        return tuple(f"http://{self.listen}:{p}" for p in self.alertmanager_ports)

    @property
    def receiver_url(self) -> str:
        return f"http://{self.receiver_address}:{self.receiver_port}"

    @property
    def stale_alert_seconds(self) -> float:
        """About the longest a host-down alert takes to resolve once its host answers
        again: the next reach probe (interval and timeout), a scrape of its result, and an
        evaluation and Alertmanager's group interval (which defaults to the evaluation
        interval). The remediation engine waits this long for the alert of a host it found
        healthy before it looks again.

        >>> MonitorSettings(dir=Path("monitor")).stale_alert_seconds
        70.0
        """
        return (self.reach_probe_interval + self.reach_probe_timeout + self.scrape_interval
                + 2 * max(self.evaluation_interval, 1.0))

    @classmethod
    def from_site(cls, site: Any) -> MonitorSettings:
        """The site's settings (``site.settings``: the parsed metalchain.yml)."""
        raw = site.settings.get("monitor") or {}
        boot = site.settings.get("boot") or {}
        default_receiver = str(boot.get("address", "127.0.0.1")) \
            if isinstance(boot, Mapping) else "127.0.0.1"
        return parse_settings(raw, site.root, default_receiver=default_receiver)


def parse_settings(raw: Mapping[str, Any], root: Path, *,
                   default_receiver: str = "127.0.0.1") -> MonitorSettings:
    """``raw`` (the ``monitor:`` mapping) checked; InventoryError naming key and line."""
    line_of = getattr(raw, "line_of", lambda _k: None)

    def fail(key: str, message: str) -> InventoryError:
        return InventoryError(f"monitor.{key}: {message}", file=str(root / SETTINGS_FILE),
                              line=line_of(key))

    for key in raw:
        if key not in MONITOR_KEYS:
            raise fail(str(key), f"unknown key; allowed: {', '.join(MONITOR_KEYS)}")

    def port(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
            raise fail(key, f"must be a port number 1-65535, got {value!r}")
        return value

    def pair(key: str, default: tuple[int, int]) -> tuple[int, int]:
        value = raw.get(key, list(default))
        if not isinstance(value, list) or len(value) != 2:
            raise fail(key, "must be a list of two port numbers (one per Alertmanager)")
        return (port(key, value[0]), port(key, value[1]))

    def seconds(key: str, default: float) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not 0.1 <= value <= 3600:
            raise fail(key, f"must be a number of seconds between 0.1 and 3600, got {value!r}")
        return float(value)

    def address(key: str, default: str) -> str:
        value = raw.get(key, default)
        try:
            return str(ipaddress.IPv4Address(str(value)))
        except ValueError:
            raise fail(key, f"must be an IPv4 address, got {value!r}") from None

    def secret_key(key: str, default: str) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or not _SECRET_KEY.match(value):
            raise fail(key, f"must be the name of a key in the secrets file, got {value!r}")
        return value

    directory = raw.get("dir", "monitor")
    if not isinstance(directory, str) or not directory:
        raise fail("dir", "must be a path")
    am = pair("alertmanager_ports", (9093, 9193))
    cluster = pair("cluster_ports", (9094, 9194))
    prom = port("prometheus_port", raw.get("prometheus_port", 9090))
    used = [prom, *am, *cluster]
    if len(set(used)) != len(used):
        raise fail("cluster_ports", f"prometheus, alertmanager and cluster ports must all "
                   f"differ, got {used}")
    return MonitorSettings(
        dir=(root / directory).resolve(),
        listen=address("listen", "127.0.0.1"),
        prometheus_port=prom, alertmanager_ports=am, cluster_ports=cluster,
        scrape_interval=seconds("scrape_interval", 15.0),
        evaluation_interval=seconds("evaluation_interval", 15.0),
        receiver_address=address("receiver_address", default_receiver),
        receiver_port=port("receiver_port", raw.get("receiver_port", 9095)),
        webhook_token_secret=secret_key("webhook_token_secret", "monitor_webhook_token"),
        event_key_secret=secret_key("event_key_secret", "monitor_event_key"),
        bmc_poll_interval=seconds("bmc_poll_interval", 5.0),
        bmc_poll_timeout=seconds("bmc_poll_timeout", 2.0),
        reach_probe_interval=seconds("reach_probe_interval", 15.0),
        reach_probe_timeout=seconds("reach_probe_timeout", 10.0))
