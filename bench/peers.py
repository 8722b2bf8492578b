"""Configuration side by side: metalchain, ansible-core and pyinfra on the same fleet hosts, in
the same run, for the same desired state (issue 14, workloads W1-W4).

Usage (as root, from the repository; on the shared 2-CPU machine under nice and the lock):
    nice -n 19 flock /tmp/metalchain-light.lock \\
        .venv/bin/python bench/peers.py --fleet 10 --repeat 3 --json /tmp/peers-10.json \
            --plots /tmp/peers-plots

Workloads (bench/peerkit/workload.py, written once and generated as a metalchain role, an
Ansible playbook and a pyinfra deploy):
  W1  10 packages from the site's mirror, 5 templates, 10 sysctls, a service with a handler,
      a user: a first apply on fresh hosts (every timed run gets a fresh fleet)
  W2  W1 again with nothing to change (converged re-run); also W2+lat, through a delay
      forwarder adding 10 ms to every round trip (bench/peerkit/delay.py: no sch_netem here)
  W3  100 small file/line/sysctl resources, converged
  W4  W1's state drifted on 10% of the hosts, found in check mode (nothing is changed)

Before anything is timed, each workload is applied crosswise (metalchain, Ansible and pyinfra
each on a third of the hosts), then every tool runs on all hosts and must change nothing: the
three descriptions are equivalent. Timed runs are interleaved between the tools after a
warm-up run of each; every timed run is checked (changed counts per host must be what the
workload implies: 0 for W2/W3, exactly the drifted hosts for W4).

Reported per tool and workload: wall time (median), controller CPU seconds (the tool's process
tree, ssh clients and ControlPersist masters included), controller peak RSS (sum over the
tree, sampled every 0.25 s), SSH connections and commands per host (from each host's sshd
journal at LogLevel VERBOSE), changed counts. Ratios are peer / metalchain medians.

Peers live in their own venvs under /tmp (ansible-core 2.19 + the ansible package for
ansible.posix.sysctl; pyinfra 3.10.0; matplotlib for the plots), installed by this script.
The fleet's image has python3 and python3-apt (Ansible needs them): `lab up --fleet-package`.
Everything started here (lab, mirror server, forwarder, ControlPersist masters) is stopped at
the end, also on failure or Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from harness import METALCHAIN, BenchError, must, report, run
from peer_converge import ensure_pyinfra, must_output
from peerkit import (
    ansible_play,
    counts,
    metalchain_role,
    proctree,
    pyinfra_deploy,
    table,
    workload,
)

from configure.mirror import KEYRING_NAME, KEYRING_PATH
from lab.fleet import HostRecord, exec_in_host, load_records

SUBNET = "10.131.0.0/24"
CONTROLLER = "10.131.0.1"
MIRROR_PORT = 22510
DELAY_PORT = 22600
LONG = 3600.0  # seconds: the limit of one tool run or lab step
ANSIBLE_VENV = Path("/tmp/mc-bench-ansible")
ANSIBLE_CORE_VERSION = "2.19.14"
ANSIBLE_VERSION = "12.3.0"  # the package with ansible.posix (sysctl); requires core 2.19
PYINFRA_VENV = Path("/tmp/mc-bench-pyinfra")
PYINFRA_VERSION = "3.10.0"
PLOT_VENV = Path("/tmp/mc-bench-plot")
PROFILE_VENV = Path("/tmp/mc-bench-profile")
PY_SPY_VERSION = "0.4.1"
FLEET_PACKAGES = ("python3", "python3-apt")
TOOLS = table.TOOLS
BENCH = Path(__file__).resolve().parent
SSHD_VERBOSE = "# bench/peers.py: one log line per SSH connection and per command\n" \
               "LogLevel VERBOSE\n"


# --- venvs ---------------------------------------------------------------------------------

def pip_install(venv: Path, requirements: Sequence[str]) -> None:
    must_output(["python3", "-m", "venv", "--clear", str(venv)], 300)
    must_output([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                 "--timeout", "60", *requirements], 1800)


def ensure_ansible(venv: Path) -> str:
    """ansible-core + the ansible package (ansible.posix) in their own venv."""
    exe = venv / "bin" / "ansible-playbook"
    probe = [str(venv / "bin" / "python"), "-c",
             "import ansible, importlib.metadata as m, ansible_collections.ansible.posix; "
             "print(ansible.__version__, m.version('ansible'))"]
    if exe.exists() and run(probe, 60)[1].stdout.split() == [ANSIBLE_CORE_VERSION,
                                                             ANSIBLE_VERSION]:
        return str(exe)
    pip_install(venv, [f"ansible-core=={ANSIBLE_CORE_VERSION}", f"ansible=={ANSIBLE_VERSION}"])
    _, out = must_output(probe, 60)
    if out.split()[:2] != [ANSIBLE_CORE_VERSION, ANSIBLE_VERSION]:
        raise BenchError(f"{venv}: ansible reports {out.strip()!r}")
    return str(exe)


def ensure_plot_venv(venv: Path) -> str | None:
    py = venv / "bin" / "python"
    if py.exists() and run([str(py), "-c", "import matplotlib"], 60)[1].returncode == 0:
        return str(py)
    try:
        pip_install(venv, ["matplotlib"])
    except BenchError as exc:
        print(f"peers: no plots (matplotlib did not install): {exc}", file=sys.stderr)
        return None
    return str(py)


def ensure_py_spy(venv: Path) -> str:
    exe = venv / "bin" / "py-spy"
    if exe.exists() and PY_SPY_VERSION in run([str(exe), "--version"], 60)[1].stdout:
        return str(exe)
    pip_install(venv, [f"py-spy=={PY_SPY_VERSION}"])
    return str(exe)


# --- measuring one run ---------------------------------------------------------------------

def become_subreaper() -> None:
    """Orphans of a tool (OpenSSH ControlPersist masters fork away) become our children, so
    their CPU time is counted when we reap them and their memory is in our tree."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise BenchError(f"prctl(PR_SET_CHILD_SUBREAPER): errno {ctypes.get_errno()}")


def _cpu_children() -> float:
    ru = os.times()
    return ru.children_user + ru.children_system


class Measured:
    def __init__(self, wall: float, cpu: float, peak_rss: int, out: str, err: str, rc: int
                 ) -> None:
        self.wall, self.cpu, self.peak_rss, self.rc = wall, cpu, peak_rss, rc
        self.out, self.err = out, err


def measured(argv: list[str], cwd: Path | None, env: dict[str, str] | None, timeout: float,
             after: Callable[[], None] | None = None, interval: float = 0.25) -> Measured:
    """Run ``argv`` and measure wall time, CPU (the whole tree) and peak RSS (summed)."""
    me = os.getpid()
    before = proctree.descendants(proctree.snapshot(), [me])
    cpu0 = _cpu_children()
    done = threading.Event()
    peak = [0]

    tool = [0]

    def sample() -> None:
        while not done.is_set():
            tab = proctree.snapshot()
            pids = proctree.run_tree(tab, me, tool[0], before)
            peak[0] = max(peak[0], proctree.tree_rss_bytes(tab, pids))
            done.wait(interval)

    with tempfile.TemporaryFile("w+", encoding="utf-8") as out, \
            tempfile.TemporaryFile("w+", encoding="utf-8") as err:
        start = time.monotonic()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
        tool[0] = proc.pid
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            rc = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
            raise BenchError(f"timed out after {timeout:.0f} s: {' '.join(argv)}") from None
        finally:
            wall = time.monotonic() - start
            if after is not None:
                after()
            reap_orphans(before | {me})
            done.set()
            sampler.join(5)
        out.seek(0)
        err.seek(0)
        text, errors = out.read(), err.read()
    return Measured(wall, _cpu_children() - cpu0, peak[0], text, errors, rc)


def reap_orphans(keep: set[int], timeout: float = 10.0) -> None:
    """Wait for the processes a run left as our children (we are their subreaper)."""
    deadline = time.monotonic() + timeout
    me = os.getpid()
    while True:
        tab = proctree.snapshot()
        left = [p for p, (ppid, _) in tab.items() if ppid == me and p not in keep]
        for pid in left:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
        if not left:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"processes {left} a run left behind did not exit in "
                             f"{timeout:.0f} s")
        time.sleep(0.1)


# --- the hosts -----------------------------------------------------------------------------

class Fleet:
    """The lab's fleet hosts, read from the lab's records; commands run via nsenter (no SSH,
    so they do not count in the sshd journals)."""

    def __init__(self, site: Path) -> None:
        self.site = site
        self.records: dict[str, HostRecord] = {}
        self.cursors: dict[str, str] = {}

    def load(self) -> None:
        self.records = {r.name: r for r in load_records(self.site / "lab")}

    def names(self) -> list[str]:
        return sorted(self.records)

    def each(self, fn: Callable[[HostRecord], Any]) -> dict[str, Any]:
        with ThreadPoolExecutor(max_workers=8) as pool:
            return dict(zip(self.names(), pool.map(fn, [self.records[n] for n in self.names()]),
                            strict=True))

    def exec(self, record: HostRecord, argv: list[str], timeout: float = 120.0) -> str:
        r = exec_in_host(record, argv, timeout=timeout)
        if r.returncode != 0:
            raise BenchError(f"{record.name}: {' '.join(argv)[:120]} failed ({r.returncode}): "
                             f"{r.stdout[-1000:]}{r.stderr[-1000:]}")
        return r.stdout

    def prepare(self, mirror_source: str, keyring_b64: str) -> None:
        """sshd at LogLevel VERBOSE, the site's (signed) mirror as the only apt source."""
        script = (
            'set -e\nprintf "%s" "$1" > /etc/ssh/sshd_config.d/90-bench-verbose.conf\n'
            "systemctl reload ssh\n"
            f"mkdir -p {shlex.quote(str(Path(KEYRING_PATH).parent))}\n"
            f'printf "%s" "$3" | base64 -d > {shlex.quote(KEYRING_PATH)}\n'
            f"chmod 644 {shlex.quote(KEYRING_PATH)}\n"
            "mkdir -p /etc/apt/sources.disabled-by-bench\n"
            "for f in /etc/apt/sources.list /etc/apt/sources.list.d/*; do\n"
            '  [ -e "$f" ] && mv -f "$f" /etc/apt/sources.disabled-by-bench/ || true\ndone\n'
            'printf "%s\\n" "$2" > /etc/apt/sources.list.d/bench-mirror.list\n'
            "apt-get -q -o Acquire::Retries=2 update >/dev/null\n")
        self.each(lambda r: self.exec(r, ["/bin/sh", "-c", script, "sh", SSHD_VERBOSE,
                                          mirror_source, keyring_b64], 300))
        self.mark()

    def _journal(self, record: HostRecord, cursor: str | None) -> tuple[list[str], str]:
        argv = ["journalctl", "-q", "-t", "sshd", "-t", "sshd-session", "-o", "cat",
                "--show-cursor", "--no-pager"]
        argv += [f"--after-cursor={cursor}"] if cursor else ["-n", "0"]
        out = self.exec(record, argv, 60)
        lines, new = [], cursor or ""
        for line in out.splitlines():
            if line.startswith("-- cursor: "):
                new = line.removeprefix("-- cursor: ").strip()
            else:
                lines.append(line)
        return lines, new

    def mark(self) -> None:
        got = self.each(lambda r: self._journal(r, None))
        self.cursors = {n: c for n, (_, c) in got.items()}

    def ssh_counts(self) -> dict[str, tuple[int, int]]:
        """Per host, (connections, commands) since the last call (or mark)."""
        got = self.each(lambda r: self._journal(r, self.cursors.get(r.name)))
        self.cursors = {n: c for n, (_, c) in got.items()}
        return {n: counts.sshd_counts(lines) for n, (lines, _) in got.items()}


# --- the tools -------------------------------------------------------------------------------

class Tools:
    """How each tool applies a workload on the hosts (or a subset), in apply or check mode."""

    def __init__(self, site: Path, work: Path, ansible: str, pyinfra: str, forks: int) -> None:
        self.site, self.work, self.ansible, self.pyinfra = site, work, ansible, pyinfra
        self.forks = forks
        self.runs = 0
        self.hosts: list[str] = []

    def write(self, workloads: Sequence[workload.Workload], endpoints: dict[str, tuple[str, int]]
              ) -> None:
        """Roles, playbooks, deploys, inventories and known_hosts for these endpoints."""
        for w in workloads:
            role = self.site / "playbooks" / "roles" / f"bench_{w.name}"
            shutil.rmtree(role, ignore_errors=True)
            for rel, text in metalchain_role.role_files(w).items():
                _write(role / rel, text)
            for rel, text in ansible_play.template_files(w).items():
                _write(self.work / "ansible" / rel, text)
            _write(self.work / "ansible" / f"{w.name}.yml", ansible_play.playbook(w))
            for rel, text in pyinfra_deploy.template_files(w).items():
                _write(self.work / "pyinfra" / rel, text)
            _write(self.work / "pyinfra" / f"{w.name}.py", pyinfra_deploy.deploy(w))
        self.write_endpoints(endpoints)

    def write_endpoints(self, endpoints: dict[str, tuple[str, int]]) -> None:
        self.hosts = sorted(endpoints)
        inv_path = self.site / "inventory.yml"
        text = inv_path.read_text(encoding="utf-8")
        header = text.split("\n", 1)[0] + "\n"
        inv = yaml.safe_load(text)
        keys = {}
        for name, (addr, port) in endpoints.items():
            h = inv["hosts"][name]
            h["address"] = addr
            h.setdefault("ssh", {})["port"] = port
            keys[name] = " ".join(h["ssh"]["host_key"].split()[:2])
        # the lab's header stays: lab up may rewrite the file (and does, for a fresh fleet)
        _write(inv_path, header + yaml.safe_dump(inv, sort_keys=False))
        known = "".join(f"{addr if port == 22 else f'[{addr}]:{port}'} {keys[n]}\n"
                        for n, (addr, port) in endpoints.items())
        key = str(self.site / "keys" / "id_ed25519")
        for d in ("ansible", "pyinfra"):
            _write(self.work / d / "known_hosts", known)
        _write(self.work / "ansible" / "inventory.yml", ansible_play.inventory(endpoints, key))
        _write(self.work / "ansible" / "ansible.cfg", ansible_play.config(
            self.forks, str(self.work / "ansible" / "known_hosts"), "%(directory)s"))
        _write(self.work / "pyinfra" / "inventory.py", pyinfra_deploy.inventory(
            endpoints, key, str(self.work / "pyinfra" / "known_hosts")))

    def apply(self, tool: str, w: workload.Workload, *, check: bool = False,
              limit: Sequence[str] | None = None
              ) -> tuple[Measured, dict[str, int], dict[str, list[str]]]:
        """One run; returns its measurement, the changed count per host and, per host, what
        changed (resource, task or operation names)."""
        self.runs += 1
        if tool == "metalchain":
            argv = [METALCHAIN, "--site", str(self.site), "apply", "--role", f"bench_{w.name}",
                    "fleet", "--json", "--parallel", str(self.forks)]
            argv += (["--check"] if check else []) + (["--limit", ",".join(limit)] if limit
                                                      else [])
            m = measured(argv, None, None, LONG)
            try:
                doc = json.loads(m.out[m.out.index("{"):])
            except ValueError:
                raise BenchError(f"metalchain apply ({m.rc}) printed no JSON:\n"
                                 f"{m.out[-3000:]}\n{m.err[-3000:]}") from None
            bad = counts.metalchain_failures(doc)
            if bad or m.rc not in (0,):
                raise BenchError(f"metalchain apply failed ({m.rc}): {bad[:5]}")
            return m, counts.metalchain_changed(doc), counts.metalchain_changed_items(doc)
        if tool == "ansible":
            cp = Path(tempfile.mkdtemp(prefix="cp-", dir=self.work))
            env = {**os.environ, "ANSIBLE_CONFIG": str(self.work / "ansible" / "ansible.cfg"),
                   "ANSIBLE_SSH_CONTROL_PATH_DIR": str(cp), "ANSIBLE_NOCOLOR": "1",
                   "ANSIBLE_HOME": str(self.work / "ansible" / "home")}
            argv = [self.ansible, f"{w.name}.yml"] + (["--check"] if check else []) + \
                (["--limit", ",".join(limit)] if limit else [])
            m = measured(argv, self.work / "ansible", env, LONG,
                         after=lambda: close_masters(cp))
            shutil.rmtree(cp, ignore_errors=True)
            recap = ansible_play.recap(m.out)
            bad = {h: r for h, r in recap.items() if r["failed"] or r["unreachable"]}
            if m.rc != 0 or bad or not recap:
                raise BenchError(f"ansible-playbook failed ({m.rc}): {bad}\n{m.out[-3000:]}"
                                 f"\n{m.err[-2000:]}")
            return (m, {h: r["changed"] for h, r in recap.items()},
                    ansible_play.changed_tasks(m.out))
        # --dry without -y: -y turns pyinfra's change detection off (State(check_for_changes))
        argv = [self.pyinfra, "--parallel", str(self.forks)]
        argv += ["--dry", "--json"] if check else ["-y"]
        for h in limit or ():
            argv += ["--limit", h]
        argv += ["inventory.py", f"{w.name}.py"]
        m = measured(argv, self.work / "pyinfra", None, LONG)
        if check:
            # --dry runs no operation: what it would change is the plan (its --json output)
            try:
                plan = pyinfra_deploy.dry_changes(json.loads(m.out))
            except ValueError:
                raise BenchError(f"pyinfra --dry --json ({m.rc}) printed no JSON:\n"
                                 f"{m.out[-2000:]}\n{m.err[-2000:]}") from None
            if m.rc != 0:
                raise BenchError(f"pyinfra --dry failed ({m.rc}):\n{m.err[-3000:]}")
            hosts = list(limit) if limit else list(self.hosts)
            return (m, {h: len(plan.get(h, [])) for h in hosts},
                    {h: plan.get(h, []) for h in hosts})
        m.out = m.out + m.err  # pyinfra logs its results on stderr
        out = pyinfra_deploy.outcomes(m.out)
        bad = {h: dict(c) for h, c in out.items() if c["Error"]}
        if m.rc != 0 or bad or not out:
            raise BenchError(f"pyinfra failed ({m.rc}): {bad}\n{m.out[-3000:]}")
        return m, {h: c["Success"] for h, c in out.items()}, pyinfra_deploy.changed_ops(m.out)


def close_masters(control_dir: Path) -> None:
    """Stop the ControlPersist masters of one Ansible run (each timed run starts cold, as
    metalchain's and pyinfra's do; their CPU is then counted when we reap them)."""
    for sock in control_dir.iterdir() if control_dir.exists() else ():
        with contextlib.suppress(BenchError):
            run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "bench"], 15)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


# --- the benchmark ---------------------------------------------------------------------------

class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path) -> None:
        self.args = args
        self.site, self.work = tmp / "lab", tmp / "work"
        self.fleet = Fleet(self.site)
        self.delay: subprocess.Popen[str] | None = None
        self.mirror_source = self.keyring_b64 = ""
        self.tools: Tools | None = None
        self.fig: dict[str, Any] = {"hosts": args.fleet, "repeat": args.repeat,
                                    "warmup": 1, "subnet": SUBNET}

    # lab ------------------------------------------------------------------------------------
    def lab_up(self, fleet: int) -> float:
        argv = [METALCHAIN, "lab", "up", "--dir", str(self.site), "--nodes", "0", "--fleet",
                str(fleet), "--subnet", SUBNET]
        for p in FLEET_PACKAGES:
            argv += ["--fleet-package", p]
        took, _ = must_output(argv, LONG)
        return took

    def fresh_fleet(self) -> None:
        """Every host new (an empty overlay): stop the fleet and start it again."""
        self.lab_up(0)
        self.lab_up(self.args.fleet)
        self.fleet.load()
        self.fleet.prepare(self.mirror_source, self.keyring_b64)
        assert self.tools is not None
        self.tools.write_endpoints(self.direct_endpoints())

    def direct_endpoints(self) -> dict[str, tuple[str, int]]:
        return {n: (r.address, 22) for n, r in self.fleet.records.items()}

    def delayed_endpoints(self) -> dict[str, tuple[str, int]]:
        # one loopback address per host (metalchain refuses two hosts with one address)
        return {n: (f"127.0.131.{i + 1}", DELAY_PORT) for i, n in enumerate(self.fleet.names())}

    def start_mirror(self) -> None:
        must([METALCHAIN, "--site", str(self.site), "mirror", "build", "--packages",
              ",".join(workload.PACKAGES_W1)], LONG)
        must([METALCHAIN, "--site", str(self.site), "mirror", "serve", "--daemon", "--address",
              CONTROLLER, "--port", str(MIRROR_PORT)], 120)
        _, r = must([METALCHAIN, "--site", str(self.site), "mirror", "status", "--json"], 60)
        doc = json.loads(r.stdout)
        self.mirror_source = doc.get("source") or ""
        keyring = Path(doc.get("root") or "/nonexistent") / KEYRING_NAME
        if not self.mirror_source or not keyring.is_file():
            raise BenchError(f"mirror status: no source line or no {keyring}: "
                             f"{r.stdout[:500]}")
        self.keyring_b64 = base64.b64encode(keyring.read_bytes()).decode()

    @contextlib.contextmanager
    def delayed(self) -> Iterator[None]:
        """The delay forwarder between the tools and every host's sshd."""
        one_way = self.args.latency_ms / 2
        mapping = [f"{addr}:{port}={self.fleet.records[n].address}:22"
                   for n, (addr, port) in self.delayed_endpoints().items()]
        self.delay = subprocess.Popen(
            [sys.executable, "-m", "peerkit.delay", "--one-way-ms", str(one_way), "--map",
             *mapping], cwd=BENCH, stdout=subprocess.PIPE, text=True)
        ready = threading.Event()
        first = self.delay.stdout.readline  # type: ignore[union-attr]
        threading.Thread(target=lambda: (first(), ready.set()), daemon=True).start()
        if not ready.wait(30) or self.delay.poll() is not None:
            raise BenchError("the delay forwarder did not start")
        assert self.tools is not None
        self.tools.write_endpoints(self.delayed_endpoints())
        try:
            yield
        finally:
            self.tools.write_endpoints(self.direct_endpoints())
            self.fig["delay_forwarded_connections"] = self.stop_delay()

    def stop_delay(self) -> int | None:
        """Stop the forwarder; returns how many connections it forwarded."""
        forwarded = None
        if self.delay is not None and self.delay.poll() is None:
            self.delay.terminate()
            try:
                rest, _ = self.delay.communicate(timeout=10)
                for line in rest.splitlines():
                    if line.startswith("connections "):
                        forwarded = int(line.split()[1])
            except subprocess.TimeoutExpired:
                self.delay.kill()
                self.delay.wait(10)
        self.delay = None
        return forwarded

    # runs -----------------------------------------------------------------------------------
    def one(self, tool: str, w: workload.Workload, *, check: bool = False,
            limit: Sequence[str] | None = None) -> dict[str, Any]:
        assert self.tools is not None
        self.fleet.mark()
        m, changed, items = self.tools.apply(tool, w, check=check, limit=limit)
        ssh = self.fleet.ssh_counts()
        hosts = list(limit) if limit else self.fleet.names()
        missing = sorted(set(hosts) - set(changed))
        if missing:
            raise BenchError(f"{tool} reported no result for {missing[:5]}")
        return {"wall_s": m.wall, "cpu_s": round(m.cpu, 3),
                "peak_rss_mb": round(m.peak_rss / 2**20, 1),
                "sessions_per_host": counts.per_host_spread(
                    {h: ssh[h][0] for h in hosts}),
                "commands_per_host": counts.per_host_spread(
                    {h: ssh[h][1] for h in hosts}),
                "changed": {h: changed[h] for h in hosts},
                "changed_total": sum(changed[h] for h in hosts),
                "changed_items_first_host": items.get(hosts[0], [])}

    def equivalence(self, w: workload.Workload) -> dict[str, Any]:
        """Crosswise first apply on thirds, then every tool on all hosts: nothing to change."""
        names = self.fleet.names()
        tools = self.args.tools
        parts = {t: names[i::len(tools)] for i, t in enumerate(tools)}
        out: dict[str, Any] = {"first_apply_changed_per_host": {}}
        for tool, part in parts.items():
            if not part:
                continue
            r = self.one(tool, w, limit=part)
            out["first_apply_changed_per_host"][tool] = sorted(set(r["changed"].values()))
            out.setdefault("first_apply_changed_items", {})[tool] = r["changed_items_first_host"]
            out[f"first_apply_{tool}_on_{len(part)}_s"] = round(r["wall_s"], 2)
        for tool in tools:
            r = self.one(tool, w)
            bad = {h: c for h, c in r["changed"].items() if c}
            if bad:
                owner = {h: t for t, p in parts.items() for h in p}
                raise BenchError(f"{w.name}: {tool} would change hosts others converged: "
                                 + ", ".join(f"{h} ({owner[h]}'s): {c}"
                                             for h, c in sorted(bad.items())))
        out["equivalent"] = True
        print(f"peers: {w.name} equivalent; first apply, changed per host: "
              f"{out['first_apply_changed_per_host']}", file=sys.stderr, flush=True)
        return out

    def timed(self, label: str, w: workload.Workload, *, check: bool = False,
              expect: Callable[[dict[str, int]], str | None],
              before_each: Callable[[], None] | None = None, warmup: bool = True
              ) -> dict[str, Any]:
        runs: dict[str, list[dict[str, Any]]] = {t: [] for t in self.args.tools}
        for rep in range((1 if warmup else 0) + self.args.repeat):
            for tool in self.args.tools:
                if before_each:
                    before_each()
                r = self.one(tool, w, check=check)
                problem = expect(r["changed"])
                if problem:
                    raise BenchError(f"{label}: {tool}: {problem}")
                if rep >= (1 if warmup else 0):
                    runs[tool].append(r)
                print(f"peers: {label} {tool} run {rep}: {r['wall_s']:.2f} s, changed "
                      f"{r['changed_total']}", file=sys.stderr, flush=True)
        summary = {t: table.summarize(rs) for t, rs in runs.items()}
        for t, rs in runs.items():
            if rs and rs[-1]["changed_items_first_host"]:
                summary[t]["changed_items_first_host"] = rs[-1]["changed_items_first_host"]
        return {"tools": summary, "ratios": table.ratios(summary)}

    def measure(self) -> dict[str, Any]:
        a = self.args
        ansible = ensure_ansible(a.ansible_venv) if "ansible" in a.tools else "ansible-playbook"
        pyinfra = (ensure_pyinfra(a.pyinfra_venv, PYINFRA_VERSION) if "pyinfra" in a.tools
                   else "pyinfra")
        self.fig["tools"] = list(a.tools)
        self.fig["versions"] = {}
        if "ansible" in a.tools:
            self.fig["versions"].update(
                ansible=must_output([ansible, "--version"], 120)[1].splitlines()[0],
                ansible_package=ANSIBLE_VERSION)
        if "pyinfra" in a.tools:
            self.fig["versions"]["pyinfra"] = must_output([pyinfra, "--version"], 120)[1].strip()
        self.fig["lab_up_s"] = round(self.lab_up(a.fleet), 1)
        self.start_mirror()
        self.fleet.load()
        if len(self.fleet.records) != a.fleet:
            raise BenchError(f"{len(self.fleet.records)} fleet hosts, expected {a.fleet}")
        self.fleet.prepare(self.mirror_source, self.keyring_b64)
        self.tools = Tools(self.site, self.work, ansible, pyinfra, a.fleet)
        w1, w3 = workload.w1(), workload.w3()
        self.tools.write([w1, w3], self.direct_endpoints())
        results: dict[str, Any] = {}
        wanted = set(a.workloads)

        self.fig["w1_equivalence"] = self.equivalence(w1)
        if "W1" in wanted:
            changed_w1 = self.fig["w1_equivalence"]["first_apply_changed_per_host"]
            results["W1"] = self.timed(
                "W1", w1, expect=lambda c: None if all(c.values()) else "a host unchanged",
                before_each=self.fresh_fleet, warmup=False)
            results["W1"]["first_apply_changed_per_host_split"] = changed_w1
            # the last fresh fleet is converged by the last tool: W2 onwards start there
        converged = lambda c: None if not any(c.values()) else f"changed {c}"  # noqa: E731
        if "W2" in wanted:
            results["W2"] = self.timed("W2", w1, expect=converged)
        if a.profile is not None:
            self.fig["profile"] = self.profile(w1, a.profile)
        if "W2lat" in wanted:
            with self.delayed():
                results["W2+lat"] = self.timed("W2+lat", w1, expect=converged)
            results["W2+lat"]["added_rtt_ms"] = a.latency_ms
        if "W3" in wanted:
            self.fig["w3_equivalence"] = self.equivalence(w3)
            results["W3"] = self.timed("W3", w3, expect=converged)
        if "W4" in wanted:
            drifted = workload.drift_hosts(self.fleet.names())
            for h in drifted:
                self.fleet.exec(self.fleet.records[h], [
                    "/bin/sh", "-c", 'printf "%s\\n" "$1" >> "$2"', "sh", workload.DRIFT_LINE,
                    workload.DRIFT_TEMPLATE])

            def exactly_drifted(c: dict[str, int]) -> str | None:
                got = {h for h, n in c.items() if n}
                if got != set(drifted) or any(c[h] != 1 for h in drifted):
                    return f"expected one change on {drifted}, got {c}"
                return None
            results["W4"] = self.timed("W4", w1, check=True, expect=exactly_drifted)
            results["W4"]["drifted_hosts"] = len(drifted)
            self.tools.apply("metalchain", w1)  # undo the drift
        for res in results.values():
            # per host, every tool the same count (W1: see first_apply_changed_items)
            res["changed_agree"] = len({tuple(s["changed"]) for s in res["tools"].values()}) == 1
        self.fig["results"] = results
        self.fig["table"] = table.render(results)
        return self.fig

    def profile(self, w: workload.Workload, out: Path) -> dict[str, Any]:
        """Two more converged runs of metalchain, recorded by py-spy (not timed: py-spy
        samples them): a flame graph of every thread, idle ones included (SVG: where the
        wall time waits), and the stacks that held the GIL (raw collapsed stacks: where the
        controller's CPU goes; the top frames in RESULTS.md come from these)."""
        spy = ensure_py_spy(PROFILE_VENV)
        out.mkdir(parents=True, exist_ok=True)
        argv = [METALCHAIN, "--site", str(self.site), "apply", "--role", f"bench_{w.name}",
                "fleet", "--json", "--parallel", str(self.args.fleet)]
        files = {}
        for kind, how, name in (("wall", ["--threads", "--idle", "--format", "flamegraph"],
                                 f"w2-{self.args.fleet}.svg"),
                                ("gil", ["--gil", "--format", "raw"],
                                 f"w2-{self.args.fleet}-gil.txt")):
            must([spy, "record", "--rate", "200", *how, "--output", str(out / name), "--",
                  *argv], LONG)
            files[kind] = str(out / name)
        return {"py_spy": PY_SPY_VERSION, "files": files}

    def cleanup(self) -> list[str]:
        """Stop everything this run started; returns what failed."""
        problems = []
        self.stop_delay()
        if self.site.exists():
            for argv, timeout in (
                    ([METALCHAIN, "--site", str(self.site), "mirror", "stop"], 60),
                    ([METALCHAIN, "lab", "down", "--purge", "--dir", str(self.site)], 900)):
                try:
                    _, r = run(argv, timeout)
                    if r.returncode != 0:
                        problems.append(f"{' '.join(argv[-3:])}: {r.stderr[-1000:]}")
                except BenchError as exc:
                    problems.append(str(exc))
        with contextlib.suppress(BenchError):
            reap_orphans({os.getpid()}, timeout=5)
        return problems


def plot(py: str | None, figures_json: Path, out_dir: Path) -> list[str]:
    if py is None:
        return []
    _, r = must([py, "-m", "peerkit.plot", "--out", str(out_dir), str(figures_json)], 300,
                cwd=BENCH)
    return r.stdout.split()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fleet", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=10.0,
                    help="Round-trip time added for W2+lat (half each way).")
    ap.add_argument("--workloads", nargs="+", default=["W1", "W2", "W2lat", "W3", "W4"],
                    choices=["W1", "W2", "W2lat", "W3", "W4"])
    ap.add_argument("--ansible-venv", type=Path, default=ANSIBLE_VENV)
    ap.add_argument("--pyinfra-venv", type=Path, default=PYINFRA_VENV)
    ap.add_argument("--plot-venv", type=Path, default=PLOT_VENV)
    ap.add_argument("--plots", type=Path, help="Write PNG plots into this directory.")
    ap.add_argument("--tools", nargs="+", default=list(TOOLS), choices=list(TOOLS),
                    help="A subset, for profiling (metalchain is always one: ratios are "
                         "against it).")
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="After W2, record one more metalchain run with py-spy into DIR.")
    ap.add_argument("--keep", action="store_true",
                    help="Leave the lab, its mirror server and the tools' files up; prints "
                         "where they are (stop with: metalchain lab down --purge --dir D).")
    ap.add_argument("--json", type=Path, help="Also write the figures to this file.")
    args = ap.parse_args()
    if args.fleet < 3 or args.repeat < 1:
        ap.error("--fleet must be at least 3 (the first apply is split between the tools) "
                 "and --repeat at least 1")
    if "metalchain" not in args.tools:
        ap.error("--tools must include metalchain")
    args.tools = [t for t in TOOLS if t in args.tools]
    if args.fleet > 150:
        ap.error("at most 150 hosts (lab up's limit; the forwarder uses 127.0.131.1-150)")
    # SIGTERM runs the same clean-up as Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    become_subreaper()
    plot_py = ensure_plot_venv(args.plot_venv) if args.plots else None
    tmp = Path(tempfile.mkdtemp(prefix="mc-peers-"))
    bench = Bench(args, tmp)
    started = time.monotonic()
    figures: dict[str, Any] | None = None
    try:
        figures = bench.measure()
    except BenchError as exc:
        print(f"peers: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("peers: interrupted; cleaning up", file=sys.stderr)
    finally:
        if args.keep:
            bench.stop_delay()
            problems = []
            print(f"peers: kept the lab in {bench.site} and the tools' files in "
                  f"{bench.work}; stop with: {METALCHAIN} --site {bench.site} mirror stop; "
                  f"{METALCHAIN} lab down --purge --dir {bench.site}", file=sys.stderr)
        else:
            problems = bench.cleanup()
            shutil.rmtree(tmp, ignore_errors=True)
        for p in problems:
            print(f"peers: clean-up: {p}", file=sys.stderr)
    if figures is None:
        return 1
    figures["bench_s"] = round(time.monotonic() - started, 1)
    figures["date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    sys.stderr.write(figures["table"])
    report(figures, args.json)
    if args.plots and args.json:
        for png in plot(plot_py, args.json, args.plots):
            print(f"peers: wrote {png}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
