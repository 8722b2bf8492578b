"""Where a site publishes the lab's guest image and the image_store entry it hands out."""

from __future__ import annotations

from pathlib import Path

import pytest

from inventory.errors import InputError
from inventory.site import Site
from orchestrate.guest_image import PublishedGuest, image_url, images_dir
from orchestrate.mirror_site import write_server_state
from provision.diskimage import DiskImage
from provision.guestimage import GuestImage

pytestmark = pytest.mark.unit


def _site(root: Path, settings: dict) -> Site:
    return Site(root=root, inventory_path=root / "inventory.yml", secrets_path=root / "s.yml",
                state_url="sqlite://", ssh_key_path=root / "k", settings=settings)


def test_images_live_next_to_the_mirror_and_urls_use_its_address(tmp_path: Path) -> None:
    site = _site(tmp_path, {"mirror": {"address": "10.96.0.1", "port": 19781}})
    assert images_dir(site) == tmp_path / "mirror" / "images"
    assert image_url(site, "g-1.qcow2") == "http://10.96.0.1:19781/images/g-1.qcow2"
    boot_only = _site(tmp_path / "b", {"boot": {"address": "10.96.0.2"}})
    assert image_url(boot_only, "g.qcow2") == "http://10.96.0.2:8081/images/g.qcow2"


def test_a_running_mirror_server_decides_the_url(tmp_path: Path) -> None:
    site = _site(tmp_path, {"mirror": {"address": "10.96.0.1"}})
    (tmp_path / "mirror").mkdir()
    write_server_state(tmp_path / "mirror", {"address": "10.96.0.9", "port": 19799,
                                             "pidfile": str(tmp_path / "p")})
    assert image_url(site, "g.qcow2") == "http://10.96.0.9:19799/images/g.qcow2"


def test_no_address_is_an_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"mirror\.address"):
        image_url(_site(tmp_path, {}), "g.qcow2")


def test_store_entry_has_the_stable_name_and_the_keyed_url(tmp_path: Path) -> None:
    disk = DiskImage(name="metalchain-guest-abc", path=tmp_path / "metalchain-guest-abc.qcow2",
                     sha256="5" * 64, size=10, fs_uuid="u")
    published = PublishedGuest(GuestImage(disk, "abc", "6.1.0", 100),
                               "http://10.96.0.1:8081/images/metalchain-guest-abc.qcow2", None)
    assert published.store_entry() == {
        "name": "lab-guest.qcow2",
        "url": "http://10.96.0.1:8081/images/metalchain-guest-abc.qcow2", "sha256": "5" * 64}
    doc = published.to_json()
    assert doc["built"] is False and doc["image"] == published.store_entry()
