"""A canary secret that reaches real hosts shows up nowhere on the controller side.

The canary is defined both as ``{secret: NAME}`` (the site's secrets file) and ``{env: VAR}``,
rendered into command steps' arguments (success, failure, guards, output that echoes it) and
into a role template variable, then ``exec``, ``run``, ``apply``, ``drift`` and ``runs show``
run with ``--debug`` and ``--json`` against hosts behind a real OpenSSH server. stdout, stderr,
the state store (database and its WAL), the event logs and every other file the runs wrote
under the site are grepped for it. The hosts themselves must get the real values (checked).
"""

from __future__ import annotations

import json
import os

import pytest

from tests.lab.sshd import mc

pytestmark = pytest.mark.lab

FILE_CANARY = "CANARY-file-3e8d1f-never-print"
ENV_CANARY = "CANARY-env-b47c02-never-print"
ENV_VAR = "METALCHAIN_LAB_CANARY"
HOSTS = "h02,h03"


def _setup(site, work):
    (site / "secrets.yml").write_text(f"canary: {FILE_CANARY}\n")
    os.chmod(site / "secrets.yml", 0o600)
    inv = (site / "inventory.yml").read_text()
    (site / "inventory.yml").write_text(
        f"vars:\n  token_file: {{secret: canary}}\n  token_env: {{env: {ENV_VAR}}}\n" + inv)
    (site / "playbooks" / "canary.yml").write_text(f"""\
- name: canary commands
  hosts: {HOSTS}
  steps:
    - name: echo and keep
      command: [sh, -c, 'echo "got $0 $1"; echo "err $1" >&2; printf "%s %s" "$0" "$1" > "$2"',
                '{{{{ token_file }}}}', '{{{{ token_env }}}}',
                '{work}/cmd-{{{{ inventory_hostname }}}}']
    - name: guarded
      command:
        argv: [echo, '--token={{{{ token_file }}}}']
        unless: [test, '{{{{ token_env }}}}', '=', 'nope']
- name: canary failure
  hosts: h03
  steps:
    - name: fails loudly
      command: [sh, -c, 'echo "failing with $0" >&2; exit 3', '{{{{ token_env }}}}']
- name: canary in an error the runner reports
  hosts: h02
  steps:
    # The step's error names the rendered value. Masking it is the runner's job (it masks
    # every outcome before the journal, the event log and the report).
    - command: [sh, -c, 'echo "no such thing: $0" >&2; exit 4', '{{{{ token_env }}}}']
""")
    # No such role, found before any host is contacted: the error names the rendered value,
    # and validation masks it like the runner does.
    (site / "playbooks" / "canary-invalid.yml").write_text("""\
- name: canary in an error validation reports
  hosts: h02
  steps:
    - apply_role: '{{ token_env }}'
""")
    role = site / "playbooks" / "roles" / "canary"
    (role / "templates").mkdir(parents=True)
    (role / "recipe.yml").write_text(
        "- template:\n"
        f"    path: {work}/canary-{{{{ inventory_hostname }}}}.conf\n"
        "    source: canary.conf.j2\n"
        "    mode: \"0600\"\n")
    (role / "templates" / "canary.conf.j2").write_text(
        "# managed by metalchain\nfile = {{ token_file }}\nenv = {{ token_env }}\n")


def _invocations(work):
    yield "run", ["--debug", "run", "canary", "--json"], 1
    yield "run-human", ["--debug", "run", "canary"], 1
    yield "run-invalid", ["--debug", "run", "canary-invalid"], 2
    yield "apply", ["--debug", "apply", "--role", "canary", HOSTS, "--diff", "--json"], 0
    # Change the file on the hosts behind metalchain's back: drift and a re-apply show diffs.
    yield "tamper", ["exec", HOSTS, "--", "sh", "-c",
                     f"for f in {work}/canary-*.conf; do echo tampered > $f; done"], 0
    yield "drift", ["--debug", "drift", HOSTS, "--role", "canary", "--diff", "--json"], 3
    yield "apply-diff", ["--debug", "apply", "--role", "canary", HOSTS, "--diff"], 0
    yield "exec", ["--debug", "exec", HOSTS, "--json", "--", "cat",
                   f"{work}/canary-h02.conf"], 0
    yield "exec-human", ["--debug", "exec", HOSTS, "--", "cat", f"{work}/cmd-h02"], 0


def test_canary_reaches_hosts_and_nothing_else(lab_site, monkeypatch):
    monkeypatch.setenv(ENV_VAR, ENV_CANARY)   # inherited by the metalchain processes
    work = lab_site.work
    _setup(lab_site, work)
    seen = {}
    for label, args, want in _invocations(work):
        r = mc(lab_site, *args)
        seen[label] = r
        for canary in (FILE_CANARY, ENV_CANARY):
            assert canary not in r.stdout, (label, "stdout", r.stdout)
            assert canary not in r.stderr, (label, "stderr", r.stderr[-3000:])
        assert r.returncode == want, (label, r.returncode, r.stdout[-2000:], r.stderr[-2000:])
    # The values did reach the hosts (so the paths above really carried them) ...
    for h in ("h02", "h03"):
        assert (work / f"cmd-{h}").read_text() == f"{FILE_CANARY} {ENV_CANARY}"
        assert (work / f"canary-{h}.conf").read_text() == (
            f"# managed by metalchain\nfile = {FILE_CANARY}\nenv = {ENV_CANARY}\n")
    # ... and were masked where they were reported.
    run_doc = json.loads(seen["run"].stdout)
    assert run_doc["hosts"]["h03"]["status"] == "failed"
    assert run_doc["hosts"]["h02"]["status"] == "failed"
    assert "***" in seen["run"].stdout and "***" in seen["exec"].stdout
    assert "unknown role '***'" in seen["run-invalid"].stderr
    assert "***" in seen["apply-diff"].stdout
    r = mc(lab_site, "--debug", "runs", "show", run_doc["run"], "--json")
    assert r.returncode == 0, r.stderr
    assert "***" in r.stdout
    for canary in (FILE_CANARY, ENV_CANARY):
        assert canary not in r.stdout + r.stderr
    # Nothing under the site holds either value: state store (and its WAL), event logs,
    # schedule or run logs, anything else. The secrets file holds the file canary by design.
    files = [f for f in lab_site.rglob("*") if f.is_file() and f.name != "secrets.yml"]
    names = {f.relative_to(lab_site).as_posix() for f in files}
    assert "state/metalchain.db" in names
    assert any(n.startswith("runs/") and n.endswith(".jsonl") for n in names)
    for f in files:
        data = f.read_bytes()
        for canary in (FILE_CANARY, ENV_CANARY):
            assert canary.encode() not in data, f


# ---------------------------------------------------------------------------------------------
# The campaign (issue 13): a canary in every secret, every command of the CLI at --debug, and
# every process metalchain starts sampled while it runs.
# ---------------------------------------------------------------------------------------------

BMC_CANARY = "CANARY-bmc-5d21aa"   # IPMI 2.0: at most 20 bytes
WEBHOOK_CANARY = "CANARY-webhook-90c4e1-never-print"
EVENT_KEY_CANARY = "CANARY-eventkey-1f7b3d-never-print"
CAMPAIGN_HOSTS = "h02,h03"
# Ports of this helper's range (20600-20649): nothing listens on the BMC port (power commands
# go down their failure path with the password in hand).
BMC_PORT, PROM_PORT, AM_PORTS, CLUSTER_PORTS, RECEIVER_PORT = 20620, 20630, (20631, 20632), \
    (20633, 20634), 20635

#: Files under the site that hold a secret for its consumer, each with the mode it must have.
CONSUMER_FILES = {"secrets.yml": 0o600,
                  "monitor/secrets/webhook-token": 0o600}   # Alertmanager's credentials_file

#: Commands not run here, and why. Every other leaf of the click tree is run.
SKIPPED = {
    ("lab", "up"): "starts QEMU nodes and netns: tests/lab/test_lab_cli.py runs it with a "
                   "canary BMC password",
    ("lab", "down"): "as lab up",
    ("lab", "console"): "needs a lab node's serial log (lab up)",
    ("provision",): "installs QEMU nodes (the CI size cannot afford another TCG install); "
                    "its secrets: the BMC password in tests/lab/test_bmc.py, the deploy "
                    "token through the whole install flow in tests/lab/test_ipxe_token.py "
                    "(logs at DEBUG, the store, every file) and test_bootserver.py",
    ("image", "guest"): "builds a guest image with mmdebstrap (minutes)",
    ("mirror", "build"): "downloads packages with apt-get (minutes; no network in CI)",
    ("mirror", "serve"): "serves a built mirror (needs mirror build)",
}


#: Exit codes of the commands whose success the campaign depends on (the canary playbook fails
#: on purpose: exit 1).
EXPECT = {("run",): 1, ("inventory", "validate"): 0, ("monitor", "up"): 0}


def campaign_canaries(site_names=("h02", "h03")) -> dict[str, str]:
    from monitor.events import derive_token

    found = {"file": FILE_CANARY, "env": ENV_CANARY, "bmc": BMC_CANARY,
             "webhook": WEBHOOK_CANARY, "event_key": EVENT_KEY_CANARY}
    # The per-host event tokens derived from the key are secrets too (hosts' configs hold them).
    for h in site_names:
        found[f"event_token:{h}"] = derive_token(EVENT_KEY_CANARY, h)
    return found


def _campaign_setup(site, work):
    _setup(site, work)
    (site / "secrets.yml").write_text(
        f"canary: {FILE_CANARY}\nbmc-pw: {BMC_CANARY}\nmonitor_webhook_token: {WEBHOOK_CANARY}\n"
        f"monitor_event_key: {EVENT_KEY_CANARY}\n")
    os.chmod(site / "secrets.yml", 0o600)
    inv = (site / "inventory.yml").read_text()
    inv = inv.replace("hosts:\n", "hosts:\n  bmc1:\n    bmc: {address: 127.0.0.1, port: "
                      f"{BMC_PORT}, username: admin, password: {{secret: bmc-pw}}}}\n"
                      "    provision: {mac: \"52:54:00:13:06:20\", ip: 10.106.0.20}\n", 1)
    (site / "inventory.yml").write_text(inv)
    (site / "metalchain.yml").write_text(
        f"monitor:\n  prometheus_port: {PROM_PORT}\n  alertmanager_ports: {list(AM_PORTS)}\n"
        f"  cluster_ports: {list(CLUSTER_PORTS)}\n  receiver_port: {RECEIVER_PORT}\n"
        "  scrape_interval: 1\n  evaluation_interval: 1\n  bmc_poll_interval: 1\n")


def campaign_plan(site, work, tmp):
    """path -> list of argument lists (after ``--debug``). A path missing here and in
    SKIPPED fails the test: a new command gets a canary run or a written reason."""
    h = CAMPAIGN_HOSTS
    return {
        ("init",): [["init", str(tmp / "new-site")]],
        ("inventory", "validate"): [["inventory", "validate"], ["inventory", "validate",
                                                                "--json"]],
        ("inventory", "list"): [["inventory", "list", "all", "--json"]],
        ("inventory", "show"): [["inventory", "show", "bmc1"], ["inventory", "show", "bmc1",
                                                                "--json"]],
        ("inventory", "vars"): [["inventory", "vars", "h02"], ["inventory", "vars", "h02",
                                                               "--json"]],
        ("inventory", "graph"): [["inventory", "graph"]],
        ("state", "show"): [["state", "show"], ["state", "show", "bmc1", "--json"]],
        ("state", "release"): [["state", "release", "h02"]],
        ("state", "forget"): [["state", "forget", "h09"]],
        ("run",): [["run", "canary", "--json"], ["run", "canary"]],
        ("exec",): [["exec", h, "--json", "--", "cat", f"{work}/cmd-h02"]],
        ("facts",): [["facts", h], ["facts", h, "--cached", "--json"]],
        ("apply",): [["apply", "--role", "canary", h, "--diff"]],
        ("drift",): [["drift", h, "--role", "canary", "--diff", "--json"]],
        ("verify",): [["verify", h, "--role", "canary"]],
        ("runs", "list"): [["runs", "list", "--json"]],
        ("runs", "show"): [["runs", "show", "{last_run}", "--json"], ["runs", "show",
                                                                        "{last_run}"]],
        ("runs", "leases"): [["runs", "leases", "--json"]],
        ("schedule", "add"): [["schedule", "add", "canary", "--playbook", "canary", "--every",
                               "1d", "--cron-dir", str(tmp / "cron")]],
        ("schedule", "list"): [["schedule", "list", "--cron-dir", str(tmp / "cron")]],
        ("schedule", "remove"): [["schedule", "remove", "canary", "--cron-dir",
                                  str(tmp / "cron")]],
        ("power", "status"): [["power", "status", "bmc1", "--json"]],
        ("power", "on"): [["power", "on", "bmc1"]],
        ("power", "off"): [["power", "off", "bmc1"]],
        ("power", "soft-off"): [["power", "soft-off", "bmc1"]],
        ("power", "cycle"): [["power", "cycle", "bmc1"]],
        ("power", "bootdev"): [["power", "bootdev", "bmc1", "network"]],
        ("lab", "status"): [["lab", "status", "--dir", str(tmp / "no-lab")]],
        ("mirror", "status"): [["mirror", "status"]],
        ("mirror", "stop"): [["mirror", "stop"]],
        ("monitor", "up"): [["monitor", "up"]],
        ("monitor", "status"): [["monitor", "status", "--json"], ["monitor", "status"]],
        ("monitor", "refresh"): [["monitor", "refresh"]],
        ("serve",): [["serve", "--no-boot"]],          # run in the background, then SIGTERM
        ("incidents", "list"): [["incidents", "list", "--json"]],
        ("incidents", "show"): [["incidents", "show", "1"]],
        ("incidents", "wait"): [["incidents", "wait", "--target", "h02", "--timeout", "0"]],
        ("remediation", "pause"): [["remediation", "pause"]],
        ("remediation", "resume"): [["remediation", "resume"]],
        ("remediation", "status"): [["remediation", "status", "--json"]],
        ("monitor", "down"): [["monitor", "down"]],
    }


def leaf_paths():
    import click

    from orchestrate.cli import cli

    def walk(group, prefix=()):
        for name, cmd in sorted(group.commands.items()):
            if isinstance(cmd, click.Group):
                yield from walk(cmd, (*prefix, name))
            else:
                yield (*prefix, name)

    return list(walk(cli))


class ProcSampler:
    """Every ~50 ms: every process descended from the metalchain processes the test started
    (also those that daemonized: any process whose command line names the test's directory),
    its /proc cmdline and environ searched for each canary."""

    def __init__(self, canaries: dict[str, str], marker: str, host_side: int) -> None:
        import threading

        #: the test hosts' sshd: its sessions are the hosts' side (they get the values)
        self.host_side = host_side
        self.canaries = {k: v.encode() for k, v in canaries.items()}
        self.marker = marker.encode()
        self.roots: set[int] = set()
        self.seen: dict[tuple[int, str], bytes] = {}   # (pid, start time) -> cmdline
        self.hits: list[tuple[str, int, str, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.rounds = 0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def _loop(self):
        while not self._stop.is_set():
            self.scan()
            self._stop.wait(0.05)

    def scan(self):
        import pathlib

        parents: dict[int, tuple[int, str]] = {}
        for d in pathlib.Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()
            parents[int(d.name)] = (int(fields[1]), fields[19])   # ppid, start time
        self.rounds += 1
        me = os.getpid()
        # Every metalchain process the test itself started (mc() calls too) is a root: it
        # has the {env: VAR} canary from the test by design.
        self.roots |= {pid for pid, (ppid, _s) in parents.items()
                       if ppid == me and pid != self.host_side}   # the hosts' sshd is not
        for pid, (_ppid, start) in parents.items():
            chain, p, ours, host = [], pid, False, False
            while p in parents and len(chain) < 64:
                if p in self.roots:
                    ours = True
                    break
                if p == self.host_side:
                    host = True
                    break
                chain.append(p)
                p = parents[p][0]
            if host:
                continue
            try:
                cmdline = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if not ours and self.marker not in cmdline:
                continue
            try:
                environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes()
            except OSError:
                environ = b""
            self.seen[(pid, start)] = cmdline
            for name, value in self.canaries.items():
                if value in cmdline:
                    self.hits.append((name, pid, "cmdline", cmdline[:300]))
                # The metalchain processes the test started get the {env: VAR} canary from
                # the test itself (that is how an env secret is given); nothing they start
                # may have it, nor any process any other secret.
                if value in environ and not (name == "env" and pid in self.roots):
                    self.hits.append((name, pid, "environ", cmdline[:300]))


def test_every_command_at_debug_leaks_no_secret(lab_site, monkeypatch, tmp_path):
    import signal
    import subprocess
    import time

    from tests.lab.sshd import METALCHAIN

    monkeypatch.setenv(ENV_VAR, ENV_CANARY)
    work = lab_site.work
    _campaign_setup(lab_site, work)
    canaries = campaign_canaries()
    plan = campaign_plan(lab_site, work, tmp_path)
    leaves = leaf_paths()
    missing = [p for p in leaves if p not in plan and p not in SKIPPED]
    assert not missing, f"commands with neither a canary run nor a reason to skip: {missing}"
    assert not [p for p in plan if p not in leaves], "plan names commands that do not exist"
    # Commands run in the plan's order (monitor up before status, serve with it, down last).
    ran: list[tuple[str, int]] = []
    outputs: list[tuple[str, str]] = []
    with ProcSampler(canaries, str(lab_site), host_side=lab_site.sshd.proc.pid) as sampler:
        proc = None
        try:
            last_run = None
            for path, invocations in plan.items():
                for args in invocations:
                    if "{last_run}" in args:
                        if last_run is None:
                            doc = json.loads(mc(lab_site, "runs", "list", "--json").stdout)
                            assert doc["runs"], ("no run recorded", ran, outputs[-12:])
                            last_run = doc["runs"][0]["uid"]
                        args = [a.replace("{last_run}", last_run) for a in args]
                    argv = [METALCHAIN, "--site", str(lab_site), "--debug", *args]
                    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                            stdin=subprocess.DEVNULL, text=True, cwd=tmp_path)
                    sampler.roots.add(proc.pid)
                    if path == ("serve",):
                        _serve_briefly(proc, lab_site, canaries)
                    try:
                        out, err = proc.communicate(timeout=180)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        out, err = proc.communicate()
                        raise AssertionError((args, "hung", out[-2000:], err[-2000:])) from None
                    ran.append((" ".join(args), proc.returncode))
                    outputs.append((" ".join(args), out + err))
                    if path in EXPECT:
                        assert proc.returncode == EXPECT[path], (args, proc.returncode,
                                                                 out[-2000:], err[-3000:])
                    assert proc.returncode in (0, 1, 2, 3, 130, -signal.SIGTERM), (
                        args, proc.returncode, err[-3000:])
        finally:   # no serve, Prometheus, Alertmanager or mirror server outlives the test
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
            mc(lab_site, "monitor", "down")
            mc(lab_site, "mirror", "stop")
        time.sleep(0.1)
    # Output, then files, then processes.
    hits = [(label, name) for label, text in outputs for name, v in canaries.items()
            if v in text]
    # The site, and what commands wrote outside it (a new site, cron files). The work dir
    # and the sshd's are the hosts' side: they get the values by design.
    files = [f for d in (lab_site, tmp_path / "new-site", tmp_path / "cron")
             for f in d.rglob("*")]
    scanned = 0
    for f in files:
        rel = f.relative_to(lab_site).as_posix() if lab_site in f.parents else None
        if rel in CONSUMER_FILES:
            assert (f.stat().st_mode & 0o777) == CONSUMER_FILES[rel], (rel, oct(f.stat().st_mode))
            continue
        if f.is_symlink() or not f.is_file():
            continue
        try:
            data = f.read_bytes()
        except OSError:
            continue
        scanned += 1
        hits += [(str(f), name) for name, v in canaries.items() if v.encode() in data]
    hits += [(f"pid {pid} {where}: {cmd!r}", name)
             for name, pid, where, cmd in sampler.hits]
    report = (f"commands: {len(ran)} invocations of {len(plan)} commands "
              f"({len(SKIPPED)} skipped); processes sampled: {len(sampler.seen)} in "
              f"{sampler.rounds} rounds; files scanned: {scanned}; hits: {len(hits)}")
    print(report)
    assert not hits, (report, hits[:20])
    # The campaign saw what it meant to: monitoring children, the receiver, and hosts.
    assert (lab_site / "monitor" / "secrets" / "webhook-token").is_file()
    assert (lab_site / "monitor" / "secrets").stat().st_mode & 0o777 == 0o700
    assert len(sampler.seen) >= 20 and scanned >= 20, report


def _serve_briefly(proc, site, canaries):
    """serve --no-boot: wait for its receiver, push one event with a host's token and an
    alert with the webhook token, then SIGTERM."""
    import urllib.request

    from tests.waiting import wait_for

    url = f"http://127.0.0.1:{RECEIVER_PORT}"

    def up():
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return True
        except OSError:
            return proc.poll() is not None

    wait_for(up, 60, "serve's receiver")
    for path, token, body in (
            ("/v1/alerts", WEBHOOK_CANARY, b'{"version": "4", "status": "firing", '
                                               b'"alerts": []}'),
            ("/v1/events", canaries["event_token:h02"], b'{"host": "h02"}')):
        req = urllib.request.Request(url + path, data=body, method="POST", headers={
            "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=5).close()
        except OSError:
            pass    # a 4xx for a body it rejects is fine: the token went through the checks
    proc.send_signal(15)
