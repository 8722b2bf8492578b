"""A role's ``source:`` stays inside the role (issue 13): an absolute name, ``../`` or a
symlink out of the role is refused at load with the recipe's file:line, unless the site's
metalchain.yml lists the directory in ``role_sources``."""

from __future__ import annotations

import pytest

from configure.roles import RoleError, RoleSearch, blocks_for_host, load_role, role_search_path
from inventory.errors import InventoryError
from inventory.site import Site
from tests.conftest import write_site

pytestmark = pytest.mark.unit


@pytest.fixture
def tree(tmp_path):
    """SITE/playbooks/roles/app with files/ and templates/, a secret beside the site."""
    site = tmp_path / "site"
    role = site / "playbooks" / "roles" / "app"
    (role / "files").mkdir(parents=True)
    (role / "templates").mkdir()
    (role / "files" / "motd").write_text("hello\n")
    (role / "templates" / "app.conf.j2").write_text("port = {{ port }}\n")
    (site / "secrets.yml").write_text("bmc: hunter2\n")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "banner").write_text("shared\n")
    return site, role


def recipe(role, entry: str) -> None:
    (role / "recipe.yml").write_text("- directory: {path: /etc/app}\n" + entry)


@pytest.mark.parametrize("entry", [
    "- file: {path: /etc/x, source: /etc/passwd}\n",
    "- file: {path: /etc/x, source: ../../../../secrets.yml}\n",
    "- file: {path: /etc/x, source: ../../app/../../../secrets.yml}\n",
    "- template: {path: /etc/x, source: ../../../../secrets.yml}\n",
    "- template: {path: /etc/x, source: /etc/hostname}\n",
])
def test_a_source_out_of_the_role_is_refused_naming_file_and_line(tree, entry):
    site, role = tree
    recipe(role, entry)
    with pytest.raises(RoleError) as err:
        load_role("app", role_search_path(site / "playbooks"))
    assert f"{role / 'recipe.yml'}:2" in str(err.value)
    assert "outside the role" in str(err.value) and "role_sources" in str(err.value)


def test_a_symlink_out_of_the_role_is_an_escape(tree):
    site, role = tree
    (role / "files" / "key").symlink_to(site / "secrets.yml")
    (role / "files" / "dir").symlink_to(site)
    for name in ("key", "dir/secrets.yml"):
        recipe(role, f"- file: {{path: /etc/x, source: {name}}}\n")
        with pytest.raises(RoleError, match="outside the role"):
            load_role("app", role_search_path(site / "playbooks"))


def test_inside_the_role_is_fine_symlinks_included(tree):
    site, role = tree
    (role / "files" / "conf").symlink_to(role / "templates" / "app.conf.j2")
    recipe(role, "- file: {path: /etc/motd, source: motd}\n"
                 "- file: {path: /etc/raw, source: conf}\n"
                 "- template: {path: /etc/app.conf, source: app.conf.j2}\n")
    loaded = load_role("app", role_search_path(site / "playbooks"))
    [block] = blocks_for_host([loaded], {"port": 80, "facts": {}})
    contents = [getattr(it.resource, "content", None) for it in block.items]
    assert contents[1:] == [b"hello\n", b"port = {{ port }}\n", b"port = 80\n"]


def test_a_file_swapped_for_a_symlink_after_loading_is_refused_when_read(tree):
    site, role = tree
    recipe(role, "- file: {path: /etc/motd, source: motd}\n")
    loaded = load_role("app", role_search_path(site / "playbooks"))
    (role / "files" / "motd").unlink()
    (role / "files" / "motd").symlink_to(site / "secrets.yml")
    with pytest.raises(RoleError, match="outside the role"):
        blocks_for_host([loaded], {"facts": {}})


def test_the_site_opts_in_to_a_directory_with_role_sources(tree, tmp_path):
    site, role = tree
    shared = tmp_path / "shared"
    recipe(role, f"- file: {{path: /etc/banner, source: {shared / 'banner'}}}\n")
    with pytest.raises(RoleError, match="outside the role"):
        load_role("app", role_search_path(site / "playbooks"))
    (site / "metalchain.yml").write_text("role_sources: [../shared]\n")
    loaded = load_role("app", role_search_path(site / "playbooks"))
    [block] = blocks_for_host([loaded], {"facts": {}})
    assert block.items[1].resource.content == b"shared\n"
    # the opt-in covers that directory only
    recipe(role, "- file: {path: /etc/x, source: ../../../../secrets.yml}\n")
    with pytest.raises(RoleError, match="outside the role"):
        load_role("app", RoleSearch([site / "playbooks" / "roles"], [shared]))


def test_role_sources_must_be_a_list_of_directories(tmp_path):
    root = write_site(tmp_path / "site", "hosts: {}\n")
    (root / "metalchain.yml").write_text("role_sources: /srv\n")
    with pytest.raises(InventoryError, match="role_sources must be a list of strings"):
        Site.open(root)
    with pytest.raises(RoleError, match="role_sources must be a list"):
        role_search_path(root / "playbooks")


@pytest.mark.parametrize("name", ["x" * 300, "a\x00b", ""])
def test_a_source_name_no_file_can_have_is_an_error_not_a_traceback(tree, name):
    site, role = tree
    (role / "recipe.yml").write_text("- file: {path: /etc/x, source: \"" +
                                     name.replace("\x00", "\\0") + "\"}\n")
    with pytest.raises(RoleError) as err:
        load_role("app", role_search_path(site / "playbooks"))
    assert f"{role / 'recipe.yml'}:1" in str(err.value)
