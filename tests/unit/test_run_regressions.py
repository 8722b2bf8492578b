"""Regression tests, through the CLI in-process, for three runner defects of issue 9.

They patch only what exists the same way before and after the fix (step kinds' ``run``,
``StateStore.journal_intent``, ``configure.verify._run_pytest``), so they ran — and failed —
on the code before the fix:

- defect 3: one host's state-store error ended the whole run and dropped the others' reports;
- defect 4: a step's ``timeout:`` was validated and then ignored;
- defect 5: ``apply -e X=false --verify`` checked against another value of X than it applied.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from configure.apply import ApplyRolesStep
from configure.command import CommandStep
from inventory.contracts import StepOutcome
from inventory.errors import StateError
from inventory.state import StateStore
from tests.conftest import write_site

pytestmark = pytest.mark.unit

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOv1bDYYpd4f7yJ1qXQ0pHkD0sYtKc3qUuT4pQj6Yk2a"
INVENTORY = f"""\
hosts:
  h1: {{address: 127.0.0.1, ssh: {{host_key: "{KEY}"}}, roles: [check], vars: {{x: true}}}}
  h2: {{address: 127.0.0.2, ssh: {{host_key: "{KEY}"}}, roles: [check], vars: {{x: true}}}}
  h3: {{address: 127.0.0.3, ssh: {{host_key: "{KEY}"}}, roles: [check], vars: {{x: true}}}}
"""


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = write_site(tmp_path / "site", INVENTORY, secrets="")
    role = root / "playbooks" / "roles" / "check"
    (role / "verify").mkdir(parents=True)
    (role / "recipe.yml").write_text("- directory: {path: /tmp/check}\n", encoding="utf-8")
    (role / "verify" / "test_check.py").write_text("def test_x(role_vars):\n    pass\n",
                                                    encoding="utf-8")
    return root


def test_one_hosts_journal_error_fails_that_host_only(site, run_cli, monkeypatch):
    """Defect 3."""
    real = StateStore.journal_intent

    def intent(self: Any, run_uid: str, host: str, step_index: int, step: str) -> int:
        if host == "h2":
            raise StateError("state store: OperationalError: database is locked")
        return real(self, run_uid, host, step_index, step)

    monkeypatch.setattr(StateStore, "journal_intent", intent)
    monkeypatch.setattr(CommandStep, "run",
                        lambda self, ctx, args: StepOutcome("changed", "ran", data={
                            "exit_code": 0, "stdout": "hi\n", "stderr": ""}))
    r = run_cli("--site", str(site), "exec", "all", "--json", "--", "true")
    assert r.code == 1, r.err
    doc = json.loads(r.out)
    assert {h: v["status"] for h, v in doc["hosts"].items()} == {
        "h1": "changed", "h2": "failed", "h3": "changed"}
    assert "database is locked" in doc["hosts"]["h2"]["message"]


def test_a_steps_timeout_is_enforced(site, run_cli, monkeypatch):
    """Defect 4: the step ignores every deadline; the runner still ends it at timeout:."""
    try:
        import orchestrate.backend
    except ImportError:  # before the fix there was no backend module
        pass
    else:
        monkeypatch.setattr(orchestrate.backend, "TIMEOUT_GRACE", 0.05)
    release = threading.Event()

    def stuck(self: Any, ctx: Any, args: Any) -> StepOutcome:
        if ctx.host == "h1":
            release.wait(3)
        return StepOutcome("changed", "ran")

    monkeypatch.setattr(CommandStep, "run", stuck)
    (site / "playbooks" / "slow.yml").write_text(
        "- hosts: all\n  steps:\n    - name: slow\n      command: [sleep, '60']\n"
        "      timeout: 0.2\n", encoding="utf-8")
    try:
        start = time.monotonic()
        r = run_cli("--site", str(site), "run", "slow", "--json")
        took = time.monotonic() - start
    finally:
        release.set()
    assert r.code == 1, r.out + r.err
    doc = json.loads(r.out)
    step = doc["hosts"]["h1"]["steps"][0]
    assert step["status"] == "failed" and step["message"].startswith("timed out after 0.2 s")
    assert doc["hosts"]["h2"]["status"] == "changed"
    assert took < 2.5, took


def test_apply_with_extra_vars_then_verify_see_the_same_value(site, run_cli, monkeypatch):
    """Defect 5: -e wins over host vars in apply and in its --verify alike."""
    import configure.verify

    applied: dict[str, Any] = {}
    verified: dict[str, Any] = {}

    def apply_run(self: Any, ctx: Any, args: Any) -> StepOutcome:
        applied[ctx.host] = ctx.vars["x"]
        return StepOutcome("ok", "converged")

    def run_pytest(plan: Any, target: Any, result: Any, timeout: float) -> Any:
        verified[plan.host] = plan.variables["x"]
        result.status, result.message = "passed", "1 checks passed"
        return result

    monkeypatch.setattr(ApplyRolesStep, "run", apply_run)
    monkeypatch.setattr(configure.verify, "_run_pytest", run_pytest)
    r = run_cli("--site", str(site), "apply", "--role", "check", "all", "-e", "x=false",
                "--verify", "--json")
    assert r.code == 0, r.out + r.err
    assert applied == {"h1": False, "h2": False, "h3": False}
    assert verified == applied
    verified.clear()
    r = run_cli("--site", str(site), "verify", "all", "-e", "x=false", "--json")
    assert r.code == 0, r.out + r.err
    assert verified == applied
    assert json.loads(r.out)["hosts"]["h1"]["status"] == "passed"
