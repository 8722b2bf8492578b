"""Template injection from a hostile host (Ansible's CVE-2016-9587 is the model bug): facts
read over real SSH hold template payloads, and a role renders them.

One OpenSSH server on 127.0.0.2-11 (tests/lab/sshd.py) stands for ten hosts. Its
``ForceCommand`` runs each command in a private mount namespace where ``/etc/os-release`` is
the hostile file of the address the client connected to, so each host answers the fact probe
with its own ``ID``/``PRETTY_NAME`` holding a payload from :data:`tests.netfuzz.SSTI_PAYLOADS`
(the ``os.popen('touch CANARY')`` escapes included); the same payloads sit in the host's
inventory vars. ``metalchain facts`` and ``metalchain apply --role`` then run as an operator
would. Property: what the role wrote on the host and what the CLI printed hold each payload
literally (the files are compared byte for byte, so ``49`` in place of ``{{ 7*7 }}`` fails),
``facts --json`` shows each value as it is, and no canary file is created on the controller.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path

import pytest

from tests import netfuzz
from tests.lab.sshd import LocalSshd, addresses, keygen, mc

pytestmark = pytest.mark.lab

ROLE = "ssti_probe"


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ssti")
    site, work = tmp / "site", tmp / "work"
    (site / "keys").mkdir(parents=True)
    work.mkdir()
    pub = keygen(site / "keys" / "id_ed25519")
    sshd = LocalSshd(tmp / "sshd", pub, tuple(addresses()))
    wrapper = tmp / "sshd" / "hostile-host.sh"
    # $SSH_CONNECTION is "client port server port": the server address picks the host.
    wrapper.write_text(
        "#!/bin/sh\nset -- $SSH_CONNECTION\n"
        "exec unshare --mount sh -c 'mount --bind \"$0\" /etc/os-release && "
        "exec sh -c \"$SSH_ORIGINAL_COMMAND\"' " + shlex.quote(str(work)) + "/os-release-$3\n")
    wrapper.chmod(0o755)
    with open(sshd.config, "a", encoding="utf-8") as fh:
        fh.write(f"ForceCommand {wrapper}\n")
    role = site / "playbooks" / "roles" / ROLE
    (role / "templates").mkdir(parents=True)
    (role / "templates" / "probe.j2").write_text(
        "pretty={{ facts.os_pretty }}\nid={{ facts.os_id }}\nnote={{ note }}\n")
    (role / "recipe.yml").write_text(
        f"- template: {{source: probe.j2, path: '{work}/tpl-{{{{ inventory_hostname }}}}'}}\n"
        f"- file:\n    path: '{work}/file-{{{{ inventory_hostname }}}}'\n"
        "    content: \"{{ facts.os_pretty }}|{{ note }}\\n\"\n"
        "  when: facts.os_id != '49'\n")
    sshd.start()
    try:
        yield site, work, sshd
    finally:
        sshd.stop()


def _round(site: Path, work: Path, sshd: LocalSshd, payloads: list[str]) -> list[str]:
    hosts = {}
    for i, (addr, p) in enumerate(zip(addresses(), payloads, strict=False)):
        (work / f"os-release-{addr}").write_text(
            f"ID={shlex.quote(p)}\nPRETTY_NAME={shlex.quote(p)}\nVERSION_ID=12\n")
        hosts[f"h{i:02d}"] = {"address": addr, "groups": ["fleet"],
                              "ssh": {"port": sshd.port, "host_key": sshd.host_pub},
                              "labels": {"note": p}, "vars": {"note": p}}
    (site / "inventory.yml").write_text(json.dumps({"groups": {"fleet": {}}, "hosts": hosts}))
    (site / "secrets.yml").write_text("{}\n")
    os.chmod(site / "secrets.yml", 0o600)
    problems = []
    facts = mc(site, "facts", "fleet", "--json")
    if facts.returncode != 0:
        problems.append(f"facts exit {facts.returncode}: {facts.stderr[-500:]}")
    applied = mc(site, "apply", "--role", ROLE, "fleet", "--json")
    if applied.returncode != 0:
        problems.append(f"apply exit {applied.returncode}: {applied.stdout[-800:]}"
                        f"{applied.stderr[-500:]}")
    for i, p in enumerate(payloads[:len(hosts)]):
        name = f"h{i:02d}"
        tpl = (work / f"tpl-{name}").read_text() if (work / f"tpl-{name}").exists() else ""
        plain = (work / f"file-{name}").read_text() if (work / f"file-{name}").exists() else ""
        if tpl != f"pretty={p}\nid={p}\nnote={p}\n":
            problems.append(f"{name} template: {tpl!r} for {p!r}")
        if plain != f"{p}|{p}\n":
            problems.append(f"{name} file: {plain!r} for {p!r}")
        if facts.returncode == 0 and p not in _strings(json.loads(facts.stdout)):
            problems.append(f"{name}: `facts --json` does not show {p!r} as it is")
    return problems


def _strings(doc: object) -> set[str]:
    if isinstance(doc, str):
        return {doc}
    if isinstance(doc, dict):
        return set().union(*(_strings(v) for v in doc.values())) if doc else set()
    if isinstance(doc, list):
        return set().union(*(_strings(v) for v in doc)) if doc else set()
    return set()


def test_facts_and_vars_from_a_hostile_host_are_rendered_literally(hostile, tmp_path):
    site, work, sshd = hostile
    canary = tmp_path / "canary-from-host"
    one_line = [p for p in netfuzz.ssti_payloads(str(canary)) if "\n" not in p
                and "\0" not in p and p.strip() == p and p]
    problems: list[str] = []
    n = len(addresses())
    for start in range(0, len(one_line), n):
        problems += _round(site, work, sshd, one_line[start:start + n])
    assert problems == []
    assert not canary.exists()
    assert len(one_line) >= 18
