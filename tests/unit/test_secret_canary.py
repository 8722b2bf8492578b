"""A canary secret never shows up: not in output, logs, tracebacks, JSON or state files.

Every leaf command of the CLI is run with --debug, successfully and with failures, against an
inventory whose secrets (file and environment) hold the canary.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from orchestrate.cli import cli
from tests.conftest import write_site

pytestmark = pytest.mark.unit

CANARY = "CANARY-7f3a9c-do-not-print"

INVENTORY = """\
vars:
  api_token: {secret: api-token}
groups:
  nodes:
    vars:
      group_token: {env: METALCHAIN_CANARY_ENV}
hosts:
  node1:
    groups: [nodes]
    bmc: {address: 127.0.0.1, port: 6230, username: admin, password: {secret: bmc-node1}}
    provision: {mac: "52:54:00:00:00:01", ip: 10.77.0.11}
    vars:
      nested: {list: [{secret: bmc-node1}], plain: visible}
"""


def leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from leaf_commands(cmd, (*prefix, name))
        else:
            yield (*prefix, name), cmd


# Values for the arguments commands take; a new command with an argument not listed here fails
# this test on purpose, so that it gets covered.
ARGUMENT_VALUES = {"host": "node1", "target": "all", "directory": None,
                   "playbook": "site.yml", "command": "true", "run_id": "nope",
                   "name": "canary", "node": "node1",
                   "device": "disk", "playbook_or_target": "site.yml", "incident_id": "1"}
# Commands that start machines and networks: their canary check is in tests/lab/test_lab_cli.py,
# which runs them against a lab whose BMC password is a canary.
STARTS_MACHINES = {("lab", "up"), ("lab", "down"), ("serve",), ("provision",)}
PLAYBOOK = """\
- name: touch
  hosts: all
  steps:
    - command: [echo, "{{ api_token }}"]
"""


def invocations(tmp_path: Path):
    for path, cmd in leaf_commands(cli):
        if path in STARTS_MACHINES:
            continue
        args: list[str] = []
        for param in cmd.params:
            if isinstance(param, click.Argument):
                if param.name not in ARGUMENT_VALUES:
                    raise AssertionError(f"{' '.join(path)}: no test value for {param.name}")
                value = ARGUMENT_VALUES[param.name]
                args.append(str(tmp_path / "new-site") if value is None else value)
        json_flag = ["--json"] if any(p.name == "as_json" for p in cmd.params) else []
        if "command" in [p.name for p in cmd.params]:
            # exec's COMMAND comes last, after the options.
            yield [*path, *args[:-1], *json_flag, "--", args[-1]]
            yield [*path, *args[:-1], "--", args[-1]]
            continue
        yield [*path, *args, *json_flag]
        yield [*path, *args]


def test_canary_never_printed(tmp_path, run_cli, monkeypatch, caplog):
    monkeypatch.setenv("METALCHAIN_CANARY_ENV", CANARY)
    site = write_site(tmp_path / "site", INVENTORY,
                      secrets=f"bmc-node1: {CANARY}\napi-token: {CANARY}\n")
    (site / "playbooks").mkdir()
    (site / "playbooks" / "site.yml").write_text(PLAYBOOK, encoding="utf-8")
    ran = 0
    for args in invocations(tmp_path):
        result = run_cli("--debug", "--site", str(site), *args)
        blob = result.out + result.err + caplog.text
        assert CANARY not in blob, args
        assert result.code in (0, 1, 2), (args, result)
        ran += 1
    assert ran >= 12
    # Failure paths, with --debug tracebacks: unknown host, bad target, broken reference.
    for args in (["inventory", "show", "nope"], ["inventory", "vars", "nope"],
                 ["inventory", "list", "nomatch*"], ["state", "show", "nope"]):
        result = run_cli("--debug", "--site", str(site), *args)
        assert result.code == 2 and CANARY not in result.out + result.err
    # Nothing written to disk by those commands holds it either (the secrets file itself does).
    for f in site.rglob("*"):
        if f.is_file() and f.name != "secrets.yml":
            assert CANARY.encode() not in f.read_bytes(), f


def test_canary_in_wrong_type_secret_file_is_not_echoed(tmp_path, run_cli):
    site = write_site(tmp_path / "site", INVENTORY,
                      secrets=f"bmc-node1: [{CANARY}]\napi-token: x\n")
    result = run_cli("--debug", "--site", str(site), "inventory", "validate")
    assert result.code == 2
    assert "secret 'bmc-node1' must be a string" in result.err
    assert CANARY not in result.out + result.err


def test_literal_password_is_not_echoed(tmp_path, run_cli):
    inv = ("hosts:\n  node1:\n    bmc: {address: 127.0.0.1, username: a, password: "
           f"{CANARY}}}\n")
    site = write_site(tmp_path / "site", inv)
    result = run_cli("--debug", "--site", str(site), "inventory", "validate")
    assert result.code == 2
    assert CANARY not in result.out + result.err
