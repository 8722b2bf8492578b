"""The benchmark's desired state, written once as data.

Every tool's description is generated from these objects (see ``generate``), so the three
can only differ where a tool cannot say the same thing; the equivalence check in
bench/peers.py then proves on real hosts that each tool finds nothing to change on the
others' converged hosts.

Bytes, not meaning: metalchain compares files byte for byte, so every file the workload
persists has its exact content here. Persisted sysctls are one file of ``key=value`` lines
(the form ``ansible.posix.sysctl`` writes, so Ansible's sysctl tasks, pointed at the same file,
find their values there and change nothing); each tool's sysctl resource sets the runtime
value only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FileSpec:
    path: str
    content: str
    mode: str = "0644"


@dataclass(frozen=True)
class TemplateSpec:
    """A jinja2 template; ``{{ inventory_hostname }}`` and the workload's ``vars`` only, and no
    block tags (the tools' jinja2 settings for blocks differ: Ansible trims them)."""

    path: str
    name: str  # the template's file name in the role / deploy directory
    text: str
    mode: str = "0644"
    #: a handler to run when this template changed (the service's restart)
    notify: str | None = None


@dataclass(frozen=True)
class LineSpec:
    """A line in a file (created when missing). Plain text: pyinfra matches it as a regex."""

    path: str
    line: str


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    #: the handler that restarts it (notified by templates)
    handler: str | None = None


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    directories: tuple[str, ...] = ()
    packages: tuple[str, ...] = ()
    templates: tuple[TemplateSpec, ...] = ()
    files: tuple[FileSpec, ...] = ()
    #: (key, value): set at runtime by each tool's sysctl resource
    sysctls: tuple[tuple[str, str], ...] = ()
    #: where the sysctls are persisted (one file, ``key=value`` lines); None: not persisted
    sysctl_file: str | None = None
    lines: tuple[LineSpec, ...] = ()
    users: tuple[str, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    vars: dict[str, str] = field(default_factory=dict)

    def sysctl_file_spec(self) -> FileSpec | None:
        if not self.sysctl_file:
            return None
        return FileSpec(self.sysctl_file, "".join(f"{k}={v}\n" for k, v in self.sysctls))

    def all_files(self) -> tuple[FileSpec, ...]:
        spec = self.sysctl_file_spec()
        return self.files + ((spec,) if spec else ())

    def resource_count(self) -> int:
        """Desired-state items, counted the same for every tool (a package list is one)."""
        return (len(self.directories) + (1 if self.packages else 0) + len(self.templates)
                + len(self.all_files()) + len(self.sysctls) + len(self.lines) + len(self.users)
                + len(self.services))


# --- the workloads ---------------------------------------------------------------------------

#: Sysctls a fleet host (its own network namespace) may set, with values that differ from
#: the kernel's defaults, so a first apply changes them.
SYSCTLS_W1: tuple[tuple[str, str], ...] = (
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv4.tcp_keepalive_time", "600"),
    ("net.ipv4.tcp_keepalive_intvl", "30"),
    ("net.ipv4.tcp_keepalive_probes", "5"),
    ("net.ipv4.tcp_fin_timeout", "30"),
    ("net.ipv4.tcp_max_syn_backlog", "2048"),
    ("net.ipv4.tcp_synack_retries", "3"),
    ("net.ipv4.tcp_syn_retries", "4"),
    ("net.ipv4.ip_default_ttl", "63"),
    ("net.core.somaxconn", "2048"),
)
SYSCTLS_W3_MORE: tuple[tuple[str, str], ...] = (
    ("net.ipv4.tcp_retries2", "10"),
    ("net.ipv4.tcp_orphan_retries", "2"),
    ("net.ipv4.tcp_mtu_probing", "1"),
    ("net.ipv4.tcp_slow_start_after_idle", "0"),
    ("net.ipv4.tcp_tw_reuse", "1"),
    ("net.ipv4.icmp_ratelimit", "500"),
    ("net.ipv4.tcp_reordering", "4"),
    ("net.ipv4.tcp_ecn", "1"),
    ("net.ipv4.conf.all.accept_redirects", "0"),
    ("net.ipv4.conf.default.accept_redirects", "0"),
)

#: W1's ten packages from the site's mirror (small ones; cron is also its service)
PACKAGES_W1: tuple[str, ...] = ("cron", "tree", "jq", "less", "psmisc", "lsof", "bc", "file",
                                "nano", "zstd")

W1_DIR = "/etc/bench"
#: the template a W4 drift edits (no handler: a check run reports exactly one change)
DRIFT_TEMPLATE = f"{W1_DIR}/app.conf"


def w1() -> Workload:
    """A realistic role: packages, templates, sysctls, a service with a handler, a user."""
    templates = (
        TemplateSpec("/etc/default/cron", "cron.default.j2",
                     "# Managed by the peer benchmark on {{ inventory_hostname }}\n"
                     "EXTRA_OPTS=\"{{ cron_opts }}\"\n", notify="restart cron"),
        TemplateSpec(DRIFT_TEMPLATE, "app.conf.j2",
                     "[app]\nname = {{ app_name }}\nhost = {{ inventory_hostname }}\n"
                     "port = {{ app_port }}\nworkers = 4\n"),
        TemplateSpec(f"{W1_DIR}/motd", "motd.j2",
                     "Welcome to {{ inventory_hostname }} ({{ site_name }}).\n"),
        TemplateSpec(f"{W1_DIR}/limits.conf", "limits.conf.j2",
                     "# {{ inventory_hostname }}\n* soft nofile {{ nofile }}\n"
                     "* hard nofile {{ nofile }}\n"),
        TemplateSpec(f"{W1_DIR}/env", "env.j2",
                     "SITE={{ site_name }}\nHOST={{ inventory_hostname }}\n"
                     "APP_PORT={{ app_port }}\n"),
    )
    return Workload(
        name="w1", description="10 packages, 5 templates, 10 sysctls, a service with a "
        "handler, a user",
        directories=(W1_DIR,), packages=PACKAGES_W1, templates=templates,
        sysctls=SYSCTLS_W1, sysctl_file="/etc/sysctl.d/90-bench.conf", users=("benchuser",),
        services=(ServiceSpec("cron", handler="restart cron"),),
        vars={"cron_opts": "-L 15", "app_name": "bench", "app_port": "22580",
              "site_name": "lab", "nofile": "65536"},
    )


W3_DIR = "/etc/bench3"


def w3(files: int = 40, lines: int = 40) -> Workload:
    """100 small resources: ``files`` files, ``lines`` lines, 20 sysctls."""
    sysctls = SYSCTLS_W1 + SYSCTLS_W3_MORE
    return Workload(
        name="w3", description=f"{files} files, {lines} lines, {len(sysctls)} sysctls",
        directories=(W3_DIR,),
        files=tuple(FileSpec(f"{W3_DIR}/f{i:02d}.conf", f"# bench file {i}\nkey{i} = value{i}\n")
                    for i in range(files)),
        sysctls=sysctls, sysctl_file="/etc/sysctl.d/91-bench3.conf",
        # one line per file: metalchain fails a second line resource on a file the first
        # changed in the same run ("changed since it was probed")
        lines=tuple(LineSpec(f"{W3_DIR}/line{i:02d}.conf", f"bench3_line_{i:02d} = on")
                    for i in range(lines)),
    )


def drift_hosts(hosts: list[str], fraction: float = 0.1) -> list[str]:
    """The hosts a W4 run drifts: every k-th one, ceil(fraction * N) of them (at least one).

    >>> drift_hosts([f"h{i}" for i in range(10)])
    ['h0']
    >>> len(drift_hosts([f"h{i}" for i in range(11)]))
    2
    """
    if not hosts:
        return []
    count = max(1, math.ceil(fraction * len(hosts) - 1e-9))
    step = len(hosts) / count
    return [hosts[int(i * step)] for i in range(count)]


#: the line a W4 drift appends to DRIFT_TEMPLATE on a drifted host
DRIFT_LINE = "workers = 64  # hand-edited"
