"""`metalchain image guest`: build and publish the lab's guest image for the site.

The logic is in :mod:`orchestrate.guest_image`; this module parses and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from orchestrate import output
from orchestrate.commands.common import json_option
from orchestrate.guest_image import publish_guest_image
from orchestrate.output import emit_json, human_size

__all__ = ["image"]


@click.group()
def image() -> None:
    """Disk images the site builds and serves to its hypervisors.

    \b
    Examples:
      metalchain image guest
      metalchain image guest --json
    """


@image.command()
@click.option("--exporter-deb", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="Debian's prometheus-node-exporter .deb to use (default: apt-get download).")
@json_option
@click.pass_obj
def guest(obj: Any, exporter_deb: Path | None, as_json: bool) -> None:
    """Build (if needed) and publish the lab's tiny guest image under SITE/mirror/images.

    Prints the image_store_images entry ({name, url, sha256}) hypervisors download it by;
    the mirror server (`metalchain mirror serve`) serves it at /images/.

    \b
    Examples:
      metalchain image guest
      metalchain --site demo-site image guest --json
    """
    published = publish_guest_image(obj.site, exporter_deb=exporter_deb)
    if as_json:
        emit_json("image.guest", published.to_json())
        return
    entry = published.store_entry()
    how = (f"built in {published.build_seconds:.1f} s" if published.build_seconds is not None
           else "from cache")
    output.line(f"guest image {published.image.key} ({human_size(published.image.image.size)}, "
               f"{how})\n  name:   {entry['name']}\n  url:    {entry['url']}\n"
               f"  sha256: {entry['sha256']}")
