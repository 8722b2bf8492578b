"""The site's masker knows every secret value, also {env: VAR} ones and also before (or
without) the inventory loading; the CLI's scrubber masks log records and their tracebacks."""

from __future__ import annotations

import io
import logging

import pytest

from inventory.site import Site
from orchestrate.cli import _Scrubber
from tests.conftest import write_site

pytestmark = pytest.mark.unit

FILE_CANARY = "CANARY-file-5d1e"
ENV_CANARY = "CANARY-env-0c7a"
INVENTORY = """\
vars:
  from_file: {secret: token}
hosts:
  h1:
    vars:
      deep: {list: [{env: MC_TEST_CANARY_ENV}]}
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.setenv("MC_TEST_CANARY_ENV", ENV_CANARY)
    return write_site(tmp_path / "site", INVENTORY, secrets=f"token: {FILE_CANARY}\n")


def test_masker_knows_env_values_before_the_inventory_loads(site):
    s = Site.open(site)
    text = s.masker().text(f"a {FILE_CANARY} b {ENV_CANARY} c")
    assert text == "a *** b *** c"


def test_masker_scans_an_inventory_that_does_not_load(site):
    (site / "inventory.yml").write_text(INVENTORY + "    bogus_key: 1\n", encoding="utf-8")
    s = Site.open(site)
    with pytest.raises(Exception):  # noqa: B017 - any load error; the masker must still work
        s.inventory  # noqa: B018
    assert ENV_CANARY not in s.masker().text(ENV_CANARY)


def test_masker_after_loading_and_with_a_broken_secrets_file(site):
    s = Site.open(site)
    s.inventory  # noqa: B018
    assert s.masker().text(ENV_CANARY + FILE_CANARY) == "******"
    (site / "secrets.yml").chmod(0o644)   # refused by SecretStore.load: masker never raises
    assert Site.open(site).masker().text(ENV_CANARY) == "***"


def test_scrubber_masks_messages_arguments_and_tracebacks(site):
    scrub = _Scrubber()
    scrub.site = Site.open(site)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(scrub)
    log = logging.getLogger("test.scrubber")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("value %s and %s", ENV_CANARY, FILE_CANARY)
        try:
            raise RuntimeError(f"boom {ENV_CANARY}")
        except RuntimeError:
            log.exception("failed with %s", FILE_CANARY)
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert "RuntimeError: boom ***" in out and "value *** and ***" in out
    assert ENV_CANARY not in out and FILE_CANARY not in out
