"""serve's SSH prober: every few seconds, whether each host with an address answers SSH.

What :mod:`monitor.reach` caches for ``metalchain_host_reachable`` (Prometheus's HostDown
alert). One short TCP connection per host and interval (connect, read the identification line,
close: no authentication, nothing logged on the host beyond a dropped connection), in
parallel with a timeout each, so one black-holed host never delays the others. Hosts reached
through a ProxyCommand are not probed (there is no direct route to test). Guests (hosts with a
``vm:`` section) are probed like any host, at their address, once they exist and are meant to
run: their inventory ``vm.state`` is ``running`` (a guest the inventory stops is not "down")
and ``guest_ready(name)`` (serve: the ``vm`` step has pinned its host key, so a guest that
site.yml has not created yet is not "down" either). Their samples name their hypervisor (the
``VmDown`` alert's ``hypervisor`` label).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from inventory.model import Host, Inventory
from inventory.state import StateStore
from monitor.reach import ReachCache, ReachSample, ssh_banner_ok

log = logging.getLogger(__name__)

MAX_PARALLEL = 32


def probe_ssh(address: str, port: int, timeout: float) -> tuple[bool, str]:
    """(answers, why not) for one SSH server."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            first = sock.recv(256)
    except OSError as exc:
        return False, exc.strerror or exc.__class__.__name__
    if not ssh_banner_ok(first):
        return False, "no SSH identification string"
    return True, ""


def guest_watched(host: Host, ready: Callable[[str], bool]) -> bool:
    """Whether a host is probed as far as being a guest goes: any host that is not one; a
    guest the inventory wants ``running`` and that ``ready`` says exists."""
    if host.vm is None:
        return True
    return host.vm.state == "running" and ready(host.name)


def pinned_in(store: StateStore) -> Callable[[str], bool]:
    """``guest_ready`` for serve: the guest's host key is pinned (the vm step generated it
    and pinned it when it made the guest's seed)."""
    return lambda name: bool(store.host_keys_of(name))


class ReachWatch:
    """Probe every host of ``inventory()`` every ``interval`` s (``start``/``stop``), or once
    (:meth:`probe_once`)."""

    def __init__(self, inventory: Callable[[], Inventory], cache: ReachCache, *,
                 interval: float = 5.0, timeout: float = 2.0,
                 probe: Callable[[str, int, float], tuple[bool, str]] = probe_ssh,
                 clock: Callable[[], float] = time.time,
                 guest_ready: Callable[[str], bool] = lambda _name: True) -> None:
        self.inventory = inventory
        self.guest_ready = guest_ready
        self.cache = cache
        self.interval = interval
        self.timeout = timeout
        self.probe = probe
        self.clock = clock
        self._known: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=MAX_PARALLEL, thread_name_prefix="ssh-probe")

    def probe_once(self) -> list[ReachSample]:
        hosts = [h for h in self.inventory().hosts.values()
                 if h.address and not h.ssh.proxy_command
                 and guest_watched(h, self.guest_ready)]
        names = {h.name for h in hosts}
        self.cache.forget(self._known - names)
        self._known = names
        samples = list(self._pool.map(self._one, hosts))
        for sample in samples:
            self.cache.record(sample)
        return samples

    def _one(self, host: Host) -> ReachSample:
        ok, why = self.probe(str(host.address), host.ssh.port, self.timeout)
        return ReachSample(host.name, ok, self.clock(), why,
                           hypervisor=host.vm.hypervisor if host.vm else "")

    def start(self) -> ReachWatch:
        self._thread = threading.Thread(target=self._loop, name="ssh-prober", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.probe_once()
            except Exception:   # a bad inventory read must not end the prober
                log.exception("ssh prober: a probe round failed")
            self._stop.wait(self.interval)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)
