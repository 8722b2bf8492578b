"""The receiver as ``metalchain serve`` runs it, and the per-host event variables ``apply``
hands to the node_exporter role: the join of the site (settings, secrets, inventory, state)
and :mod:`monitor.receiver`, which knows none of them.

- :class:`Receiving` — the receiver at ``monitor.receiver_address:receiver_port`` with the
  webhook token from the secrets file (``monitor.webhook_token_secret``) and event tokens
  derived from the site key (``monitor.event_key_secret``, see :mod:`monitor.events`).
  ``listeners`` (``on_ingested(list[Ingested])``), ``observers`` (``observe(route, seconds,
  status)``) and ``registry`` (a prometheus_client CollectorRegistry for ``/metrics``) are
  the seams the remediation engine and the metrics helper fill.
- :func:`event_vars` — ``metalchain_event_token`` (a :class:`Secret`, so configure masks it
  in diffs, event logs and ``--json``) and ``metalchain_event_url`` for one host.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from inventory.errors import SecretError
from inventory.secrets import Secret
from monitor import events
from monitor.ingest import Ingestor, Listener, Observer
from monitor.receiver import EVENTS_PATH, Receiver, ReceiverLimits
from monitor.settings import MonitorSettings

log = logging.getLogger("metalchain.receiving")


def _secret(site: Any, name: str) -> str:
    """The value of ``name`` in the site's secrets file, or "" when it is not there."""
    try:
        return site.secrets.resolve({"secret": name}).reveal()
    except SecretError:
        return ""


def event_key(site: Any, settings: MonitorSettings | None = None) -> str:
    settings = settings or MonitorSettings.from_site(site)
    return _secret(site, settings.event_key_secret)


def event_auth(site: Any, key: str) -> Callable[[str, str], bool]:
    """``auth(host, token)``: ``host`` is in the inventory (as it is now: a reload counts)
    and ``token`` is its token under ``key``."""
    def auth(host: str, token: str) -> bool:
        known = host in site.inventory.hosts
        # Compared even for an unknown host, so the answer time does not tell which it was.
        ok = events.token_matches(key, host, token)
        return known and ok
    return auth


def event_vars(site: Any) -> Callable[[str], dict[str, Any]]:
    """``vars_for(host)``: the node_exporter role's event variables for ``host`` ({} when the
    site has no event key: the role then installs no token and the host pushes nothing)."""
    settings = MonitorSettings.from_site(site)
    key = event_key(site, settings)
    url = settings.receiver_url + EVENTS_PATH

    def vars_for(host: str) -> dict[str, Any]:
        if not key:
            return {}
        return {"metalchain_event_token": Secret(events.derive_token(key, host),
                                                 f"derived:event token of {host}"),
                "metalchain_event_url": url}
    return vars_for


class Receiving:
    """The receiver of one ``serve``. Example::

        receiving = Receiving(site)
        receiving.listeners.append(engine.on_ingested)
        url = receiving.start()
        ...
        receiving.stop()
    """

    def __init__(self, site: Any, *, listeners: list[Listener] | None = None,
                 observers: list[Observer] | None = None, registry: Any = None,
                 limits: ReceiverLimits | None = None) -> None:
        self.site = site
        self.settings = MonitorSettings.from_site(site)
        self.listeners: list[Listener] = listeners if listeners is not None else []
        self.observers: list[Observer] = observers if observers is not None else []
        self.registry = registry
        self.limits = limits
        self.receiver: Receiver | None = None

    def start(self) -> str:
        token = _secret(self.site, self.settings.webhook_token_secret)
        if not token:
            log.warning("secret '%s' is not in %s: Alertmanager's notifications will be "
                        "refused", self.settings.webhook_token_secret, self.site.secrets_path)
        key = event_key(self.site, self.settings)
        if not key:
            log.warning("secret '%s' is not in %s: pushed events will be refused",
                        self.settings.event_key_secret, self.site.secrets_path)
        self.receiver = Receiver(
            self.settings.receiver_address, self.settings.receiver_port,
            ingestor=Ingestor(self.site.state, self.listeners), webhook_token=token,
            event_auth=event_auth(self.site, key), registry=self.registry,
            observers=self.observers, limits=self.limits).start()
        return self.receiver.url

    @property
    def url(self) -> str | None:
        return self.receiver.url if self.receiver is not None else None

    def stop(self, timeout: float = 5.0) -> None:
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            receiver.stop(timeout=timeout)
