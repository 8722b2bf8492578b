"""Facts: what a host is (OS, kernel, CPUs, memory, addresses), read in one SSH round trip.

The probe is one POSIX shell script printing ``key=value`` lines; :func:`parse_facts` is a pure
parser, so it is tested without a host. Facts are cached in the state store (``metalchain
facts TARGET`` refreshes them) and can select hosts (``fact.os_id=debian``).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from jinja2.exceptions import UndefinedError

from configure.ssh import Shell
from inventory.contracts import HostContext, StepOutcome, time_left
from inventory.errors import ResourceError

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

#: every key the probe prints (facts are read as ``facts.KEY``)
FACT_KEYS = ("os_id", "os_version_id", "os_codename", "os_pretty", "hostname", "kernel", "arch",
             "cpus", "memory_mb", "init", "pkg_manager", "ipv4", "virtualization")
INT_FACTS = ("cpus", "memory_mb")
LIST_FACTS = ("ipv4",)
#: what the state store adds to stored facts; not a fact of the host
STORED_ONLY = ("gathered_at",)
GATHER_TIMEOUT_S = 30.0


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


def gather_facts(conn: Any, *, timeout: float = GATHER_TIMEOUT_S) -> dict[str, Any]:
    """Run the fact probe on ``conn`` (one round trip) and parse it. TransportError if the
    host cannot be reached, ResourceError if the probe fails there."""
    result = conn.run(PROBE, timeout=timeout)
    if not result.ok:
        raise ResourceError(f"host '{conn.host}': fact probe failed (exit {result.exit_code}): "
                            f"{result.tail(3)}")
    return parse_facts(result.stdout)


def could_be_fact(name: str) -> bool:
    """Could ``name`` be a fact rather than a variable (only a host can tell)? Validation
    before contact does not call such a name undefined."""
    return name in FACT_KEYS or name.startswith("ansible_")


def has_facts(facts: Mapping[str, Any] | None) -> bool:
    """Were facts ever gathered (stored facts carry more than the store's own keys)?"""
    return bool(facts) and any(k not in STORED_ONLY for k in facts)  # type: ignore[union-attr]


class UngatheredFact(UndefinedError):
    """A template or ``when:`` read a fact that was not gathered from the host."""


_MISSING = object()
_ALL = "*"


class GatheredFacts(Mapping[str, Any]):
    """The facts a recipe sees: reading one that was not gathered is an error (not None), and
    every read is recorded, so a plan made from stored facts can be checked against fresh
    ones (:meth:`same_reads`).

    >>> f = GatheredFacts({"os_id": "debian"})
    >>> f["os_id"], f.reads
    ('debian', {'os_id': 'debian'})
    """

    def __init__(self, facts: Mapping[str, Any], host: str = "") -> None:
        self._facts = {k: v for k, v in facts.items() if k not in STORED_ONLY}
        self._host = host
        self.reads: dict[str, Any] = {}
        self._asked: dict[str, bool] = {}    # ``key in facts`` answers

    def _missing(self, key: str) -> UngatheredFact:
        who = f" from host '{self._host}'" if self._host else ""
        if not self._facts:
            return UngatheredFact(f"fact '{key}' was not gathered{who} (no facts were)")
        return UngatheredFact(f"fact '{key}' was not gathered{who} (gathered: "
                              f"{', '.join(sorted(self._facts))})")

    def __getitem__(self, key: str) -> Any:
        value = self._facts.get(key, _MISSING)
        self.reads[key] = value
        if value is _MISSING:
            raise self._missing(key)
        return value

    def get(self, key: str, default: Any = None) -> Any:
        # A default does not make an ungathered fact readable: None would decide `when:`.
        return self[key]

    def __contains__(self, key: object) -> bool:
        found = key in self._facts
        if isinstance(key, str):
            self._asked[key] = found
        return found

    def __iter__(self) -> Iterator[str]:
        self.reads[_ALL] = dict(self._facts)
        return iter(self._facts)

    def __len__(self) -> int:
        self.reads[_ALL] = dict(self._facts)
        return len(self._facts)

    @property
    def missing(self) -> list[str]:
        """Facts that were read but not gathered."""
        return [k for k, v in self.reads.items() if v is _MISSING]

    def changed_from(self, fresh: Mapping[str, Any]) -> bool:
        """Do ``fresh`` facts differ from these (store-only keys aside)?"""
        return self._facts != {k: v for k, v in fresh.items() if k not in STORED_ONLY}

    def same_reads(self, fresh: Mapping[str, Any]) -> bool:
        """Would every read made so far give the same answer with ``fresh`` facts?"""
        fresh = {k: v for k, v in fresh.items() if k not in STORED_ONLY}
        for key, value in self.reads.items():
            if key == _ALL:
                if value != fresh:
                    return False
            elif fresh.get(key, _MISSING) != value:
                return False
        return all((key in fresh) == found for key, found in self._asked.items())


class GatherFactsStep:
    name = "gather_facts"
    description = "read the host's facts (OS, kernel, CPUs, memory, addresses)"

    def parse(self, raw: Any) -> None:
        if raw not in (None, {}, True):
            raise ValueError("gather_facts takes no arguments")

    def run(self, ctx: HostContext, args: None) -> StepOutcome:
        try:
            facts = gather_facts(ctx.connection(),
                                 timeout=time_left(ctx.deadline, GATHER_TIMEOUT_S))
        except ResourceError as exc:
            return StepOutcome("failed", str(exc))
        return StepOutcome("ok", f"{facts.get('os_pretty', '')}", data={"facts": facts})
