"""``{env: VAR}`` secrets stay with the site: a command takes them out of the process
environment (so ssh, pytest, Prometheus, gpg... started by it do not inherit them), resolves
and masks them from the site's copy, and gives them back when it is done (issue 13)."""

from __future__ import annotations

import os

import pytest

from inventory.variables import host_vars
from orchestrate.cli import Context
from tests.conftest import write_site

pytestmark = pytest.mark.unit

INV = "vars:\n  token: {env: MC_TEST_WITHHELD}\nhosts:\n  web1: {address: 10.0.0.5}\n"


def test_env_secret_is_withheld_from_children_and_given_back(tmp_path, monkeypatch):
    monkeypatch.setenv("MC_TEST_WITHHELD", "s3cr3t-value")
    monkeypatch.setenv("MC_TEST_OTHER", "plain")
    site_dir = write_site(tmp_path / "s", INV, secrets="{}\n")
    ctx = Context(site_option=str(site_dir))
    site = ctx.site
    assert "MC_TEST_WITHHELD" not in os.environ          # what a child would inherit
    assert os.environ["MC_TEST_OTHER"] == "plain"        # nothing else is touched
    assert host_vars(site.inventory, "web1")["token"].reveal() == "s3cr3t-value"
    assert site.masker().text("x s3cr3t-value y") == "x *** y"
    assert host_vars(site.reload_inventory(), "web1")["token"].reveal() == "s3cr3t-value"
    assert "MC_TEST_WITHHELD" not in os.environ
    ctx.close()
    assert os.environ["MC_TEST_WITHHELD"] == "s3cr3t-value"
