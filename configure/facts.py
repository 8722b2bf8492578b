"""Facts: what a host is (OS, kernel, CPUs, memory, addresses), read in one SSH round trip.

The probe is one POSIX shell script printing ``key=value`` lines; :func:`parse_facts` is a pure
parser, so it is tested without a host. Facts are cached in the state store (``metalchain
facts TARGET`` refreshes them) and can select hosts (``fact.os_id=debian``).
"""

from __future__ import annotations

from typing import Any

from configure.ssh import Shell
from inventory.contracts import HostContext, StepOutcome

# Each line: key=value. No Python needed on the host.
PROBE = Shell(r"""
. /etc/os-release 2>/dev/null
echo "os_id=${ID:-unknown}"
echo "os_version_id=${VERSION_ID:-}"
echo "os_codename=${VERSION_CODENAME:-}"
echo "os_pretty=${PRETTY_NAME:-}"
echo "hostname=$(hostname 2>/dev/null || cat /etc/hostname)"
echo "kernel=$(uname -r)"
echo "arch=$(uname -m)"
echo "cpus=$(getconf _NPROCESSORS_ONLN 2>/dev/null || nproc)"
awk '/^MemTotal:/ {print "memory_mb=" int($2/1024)}' /proc/meminfo
if [ -d /run/systemd/system ]; then echo "init=systemd"; else echo "init=other"; fi
if command -v apt-get >/dev/null 2>&1; then echo "pkg_manager=apt";
elif command -v dnf >/dev/null 2>&1; then echo "pkg_manager=dnf"; else echo "pkg_manager=none"; fi
ip -o -4 addr show scope global 2>/dev/null | awk '{print "ipv4=" $4}'
echo "virtualization=$(systemd-detect-virt 2>/dev/null || echo unknown)"
""".strip())

INT_FACTS = ("cpus", "memory_mb")
LIST_FACTS = ("ipv4",)


def parse_facts(text: str) -> dict[str, Any]:
    """``key=value`` lines -> facts; repeated list keys collect, ints become ints."""
    facts: dict[str, Any] = {k: [] for k in LIST_FACTS}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or not key:
            continue
        value = value.strip()
        if key in LIST_FACTS:
            facts[key].append(value)
        elif key in INT_FACTS:
            try:
                facts[key] = int(value)
            except ValueError:
                facts[key] = None
        else:
            facts[key] = value
    return facts


class GatherFactsStep:
    name = "gather_facts"
    description = "read the host's facts (OS, kernel, CPUs, memory, addresses)"

    def parse(self, raw: Any) -> None:
        if raw not in (None, {}, True):
            raise ValueError("gather_facts takes no arguments")

    def run(self, ctx: HostContext, args: None) -> StepOutcome:
        result = ctx.connection().run(PROBE, timeout=30)
        if not result.ok:
            return StepOutcome("failed", f"fact probe failed: {result.tail(3)}")
        facts = parse_facts(result.stdout)
        return StepOutcome("ok", f"{facts.get('os_pretty', '')}", data={"facts": facts})
