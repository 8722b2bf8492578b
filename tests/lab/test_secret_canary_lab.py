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
