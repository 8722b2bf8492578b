"""The lab's guest image as a site sees it: built, published next to the package mirror, and
described as an ``image_store_images`` entry hypervisors download it by.

The image (provision/guestimage.py) goes to ``SITE/mirror/images/``, which the site's mirror
server serves at ``/images/`` on the controller's lab address (configure/mirror_server.py).
The entry's ``name`` is stable (``lab-guest.qcow2``: what a VM's ``vm.image`` names);
its ``url`` carries the content key, so a rebuilt image is a new URL and the image store's
sha256 check sees the change.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from configure.mirror import DEFAULT_CACHE_DIR, mirror_url
from configure.mirror_server import IMAGES_DIR_NAME, IMAGES_PREFIX
from inventory.errors import InputError
from orchestrate.mirror_site import (
    default_address,
    default_port,
    mirror_dir,
    server_state,
    settings,
)
from provision.guestimage import STORE_NAME, GuestImage, ensure_guest_image, fetch_exporter_deb


@dataclass(frozen=True)
class PublishedGuest:
    """The published image and where hosts download it."""

    image: GuestImage
    url: str
    build_seconds: float | None  # None when it came from the cache

    def store_entry(self) -> dict[str, str]:
        """One ``image_store_images`` item: ``{name, url, sha256}``."""
        return {"name": STORE_NAME, "url": self.url, "sha256": self.image.sha256}

    def to_json(self) -> dict[str, Any]:
        return {"image": self.store_entry(), "path": str(self.image.path),
                "key": self.image.key, "size_bytes": self.image.image.size,
                "virtual_size_bytes": self.image.virtual_size,
                "kernel_version": self.image.kernel_version,
                "built": self.build_seconds is not None, "build_seconds": self.build_seconds}


def images_dir(site: Any) -> Path:
    """Where the site's published images live (served at /images/ by the mirror server)."""
    return mirror_dir(site) / IMAGES_DIR_NAME


def image_url(site: Any, filename: str) -> str:
    """The URL hosts download ``filename`` from: the running mirror server's address and
    port, else the site's configured ones.

    Raises ``InputError`` when the site names no address (``mirror.address``/``boot.address``).
    """
    state = server_state(mirror_dir(site)) or {}
    address = state.get("address") or default_address(site)
    port = state.get("port") or default_port(site)
    if not address:
        raise InputError("no address to publish images on: set mirror.address (or "
                         "boot.address) in metalchain.yml")
    return f"{mirror_url(str(address), int(port))}{IMAGES_PREFIX}/{filename}"


def publish_guest_image(site: Any, *, exporter_deb: Path | None = None) -> PublishedGuest:
    """Build the guest image if needed, publish it for the site, and say where it is.

    Example::

        published = publish_guest_image(site)
        vars["image_store_images"] = [published.store_entry()]
    """
    image_url(site, STORE_NAME)  # no address: fail before spending a build
    if exporter_deb is None:
        # The mirror's download cache: the node_exporter role mirrors the same package, so
        # the .deb is usually there already (checked against the archive's SHA256 either way).
        exporter_deb = fetch_exporter_deb(site.root / settings(site).get("cache_dir",
                                                                          DEFAULT_CACHE_DIR))
    image, seconds = ensure_guest_image(images_dir(site), exporter_deb=exporter_deb)
    return PublishedGuest(image=image, url=image_url(site, image.path.name),
                          build_seconds=seconds)


def guest_image_entry(site: Any) -> dict[str, str]:
    """``{name, url, sha256}`` of the site's guest image (built and published if needed)."""
    return publish_guest_image(site).store_entry()
