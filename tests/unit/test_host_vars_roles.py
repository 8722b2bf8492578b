"""`inventory vars HOST` shows the defaults of the host's roles as the lowest layer, naming
the role (and its defaults.yml) each value comes from."""

from __future__ import annotations

import json

import pytest

from inventory.errors import InputError
from inventory.site import Site
from orchestrate.hostvars import explain_host_vars
from tests.conftest import write_site

pytestmark = pytest.mark.unit

INVENTORY = """\
vars: {shared: from-all}
groups:
  web:
    roles: [app]
    vars: {port: 8080}
hosts:
  web1:
    groups: [web]
    vars: {colour: blue}
  db1: {roles: [dbonly]}
  bare1: {}
"""


def _role(root, name: str, defaults: str, depends: str = "") -> None:
    d = root / "playbooks" / "roles" / name
    d.mkdir(parents=True)
    (d / "recipe.yml").write_text("[]\n")
    if defaults:
        (d / "defaults.yml").write_text(defaults)
    if depends:
        (d / "meta.yml").write_text(f"depends: [{depends}]\n")


@pytest.fixture
def site(tmp_path):
    root = write_site(tmp_path / "site", INVENTORY)
    _role(root, "common", "shared: from-common\nlog_level: info\nport: 80\n")
    _role(root, "app", "port: 8000\nworkers: 4\ncolour: red\nlog_level: debug\n", "common")
    _role(root, "nodefaults", "")
    s = Site.open(root)
    yield s
    s.close()


def test_role_defaults_are_the_lowest_layer_with_their_source(site):
    got = explain_host_vars(site, "web1")
    src = {k: v.source for k, v in got.items()}
    val = {k: v.value for k, v in got.items()}
    assert val == {"shared": "from-all", "log_level": "debug", "port": 8080, "workers": 4,
                   "colour": "blue"}
    # app depends on common: common's defaults come first, app's override them.
    assert src["workers"] == "role defaults: app (playbooks/roles/app/defaults.yml)"
    assert src["log_level"] == "role defaults: app (playbooks/roles/app/defaults.yml)"
    assert [s for s, _ in got["log_level"].overridden] == [
        "role defaults: common (playbooks/roles/common/defaults.yml)"]
    # Every inventory layer wins over every role default.
    assert src["shared"].startswith("all")
    assert src["port"].startswith("group web")
    assert [s.split(" (")[0] for s, _ in got["port"].overridden] == [
        "role defaults: common", "role defaults: app"]
    assert src["colour"].startswith("host web1")
    assert explain_host_vars(site, "web1", {"workers": "9"})["workers"].source == \
        "extra vars (command line)"


def test_a_host_without_roles_has_only_inventory_layers(site):
    got = explain_host_vars(site, "bare1")
    assert list(got) == ["shared"] and got["shared"].source.startswith("all (")


def test_an_unknown_role_names_the_host(site):
    with pytest.raises(InputError, match="host 'db1': unknown role 'dbonly'"):
        explain_host_vars(site, "db1")


def test_inventory_vars_command_shows_role_defaults(site, capsys):
    from orchestrate.cli import main

    assert main(["--site", str(site.root), "inventory", "vars", "web1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["vars"]["workers"] == {
        "value": 4, "source": "role defaults: app (playbooks/roles/app/defaults.yml)",
        "overridden": []}
    assert doc["layers"][0] == "role defaults"
    assert main(["--site", str(site.root), "inventory", "vars", "web1"]) == 0
    out = capsys.readouterr().out
    assert "role defaults: app" in out and "workers" in out
