"""Whether each host answers SSH: the latest probe per host, for ``metalchain_host_reachable``.

serve's prober (:mod:`orchestrate.reach_watch`) records one :class:`ReachSample` per host and
interval; ``/metrics`` reads :meth:`ReachCache.snapshot`, so a scrape never opens a
connection. A host answers when a TCP connection to its SSH port opens and the server's
identification line (``SSH-2.0-...``) arrives within the timeout: a dead host, a dead sshd and
a host behind a black-holed route all read 0, and Prometheus's HostDown alert fires on it --
or VmDown for a guest: a sample of a guest names its ``hypervisor``, and the series of a guest
carries it with ``kind="vm"``, so a dead VM and a dead machine are different alerts (a
machine is power-cycled through its BMC; a guest is started again on its hypervisor).
"""

from __future__ import annotations

from dataclasses import dataclass

from monitor.latest import LatestByHost


@dataclass(frozen=True)
class ReachSample:
    host: str
    reachable: bool
    at: float
    error: str = ""
    #: the host that holds this one when it is a guest ("" for any other host)
    hypervisor: str = ""


def ssh_banner_ok(first_bytes: bytes) -> bool:
    """Whether what a server sent first is an SSH identification string (RFC 4253 4.2)."""
    return first_bytes.startswith(b"SSH-")


class ReachCache(LatestByHost[ReachSample]):
    """The latest probe per host (the prober writes, scrapes read)."""
