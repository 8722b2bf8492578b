"""Rendering of provision/'s jinja2 templates (dnsmasq, iPXE, distribution installers).

Every template is rendered in a ``SandboxedEnvironment`` with ``StrictUndefined``: a misspelt
variable is an error instead of an empty string in a boot script, and inventory values (which
an operator typed and may contain ``{{``) are only ever passed in as data, never compiled as
templates. Filters that quote for a target syntax live here so templates never build quoting
by hand.

Example::

    text = render("boot.ipxe.j2", install=False, node="node1")
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import json
import re
import shlex
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import FileSystemLoader, StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

from inventory.errors import MetalchainError
from provision import contract

TEMPLATES_DIR = Path(__file__).with_name("templates")


class TemplateRenderError(MetalchainError):
    """A provision template failed to render (a bug or a value the target syntax cannot hold)."""


def _one_line(value: Any) -> str:
    """For line-oriented formats (debconf, dnsmasq): a newline would start a new directive."""
    text = str(value)
    if any(ch in text for ch in "\r\n\0"):
        raise TemplateRenderError("a value meant for one line contains a line break")
    return text


def _shell_quote(value: Any) -> str:
    return shlex.quote(_no_nul(value))


def _no_nul(value: Any) -> str:
    text = str(value)
    if "\0" in text:
        raise TemplateRenderError("a value contains a NUL byte")
    return text


def _yaml_string(value: Any) -> str:
    """A double-quoted scalar: JSON strings are valid YAML, and quoting stops type guessing."""
    return json.dumps(_no_nul(value), ensure_ascii=False)


@functools.cache
def environment() -> SandboxedEnvironment:
    """The one environment for provision/ templates (built on first use, not at import)."""
    env = SandboxedEnvironment(
        loader=FileSystemLoader(str(TEMPLATES_DIR), encoding="utf-8"),
        undefined=StrictUndefined,
        autoescape=False,  # none of the targets is HTML
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shell_quote"] = _shell_quote
    env.filters["one_line"] = _one_line
    env.filters["yaml_string"] = _yaml_string
    return env


def render(name: str, /, **context: Any) -> str:
    """Render the package template ``name`` with ``context`` as data.

    Raises TemplateRenderError naming the template (never the values: they may be secrets).
    """
    try:
        return environment().get_template(name).render(**context)
    except TemplateRenderError as exc:
        raise TemplateRenderError(f"template {name}: {exc}") from None
    except TemplateError as exc:
        raise TemplateRenderError(f"template {name}: {exc.__class__.__name__}: "
                                  f"{exc.message}") from None


# -- distribution installers (kickstart, preseed, cloud-init) ---------------------------------

_HOST_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
_WORD = re.compile(r"^[A-Za-z0-9_.+@/-]{1,64}$")
_PACKAGE = re.compile(r"^[A-Za-z0-9@^][A-Za-z0-9_.+:@^-]{0,127}$")
_DEVICE = re.compile(r"^(auto|/dev/[A-Za-z0-9/_-]{1,64})$")

DISTRO_TEMPLATES = {
    "kickstart": ("kickstart.cfg.j2",),
    "preseed": ("preseed.cfg.j2",),
    "cloud-init": ("cloud-init-user-data.j2", "cloud-init-meta-data.j2"),
}


@dataclass(frozen=True)
class DistroInstall:
    """What a distribution installer (Anaconda, debian-installer, cloud-init) needs for a host.

    Not used by the image path (our own installer reads ``config.env``); for operators who
    install with their distribution's installer and still want the node's host key pinned and
    its ``done`` callback sent. Every field is checked here, so the templates can place values
    without guessing how the target syntax would read them.
    """

    hostname: str
    mac: str
    ip: str
    prefixlen: int
    base_url: str
    node: str
    token: str
    host_key: str
    host_key_pub: str
    authorized_keys: tuple[str, ...] = ()
    gateway: str | None = None
    nameservers: tuple[str, ...] = ()
    root_device: str = "auto"
    mirror_url: str = "http://deb.debian.org/debian"
    packages: tuple[str, ...] = ()
    timezone: str = "UTC"
    locale: str = "en_US.UTF-8"
    keyboard: str = "us"

    def __post_init__(self) -> None:
        labels = self.hostname.split(".")
        if len(self.hostname) > 253 or not all(_HOST_LABEL.match(x) for x in labels):
            raise TemplateRenderError(f"{self.hostname!r} is not an RFC 1123 host name")
        if not _MAC.match(self.mac):
            raise TemplateRenderError(f"{self.mac!r} is not a lower-case MAC address")
        try:
            ipaddress.IPv4Interface(f"{self.ip}/{self.prefixlen}")
            for addr in (self.gateway, *self.nameservers):
                if addr is not None:
                    ipaddress.ip_address(addr)
        except ValueError as exc:
            raise TemplateRenderError(f"host {self.hostname}: {exc}") from None
        url = urllib.parse.urlsplit(self.mirror_url)
        if url.scheme not in ("http", "https") or not url.hostname or any(
                c.isspace() for c in self.mirror_url):
            raise TemplateRenderError(f"mirror URL {self.mirror_url!r} is not http(s)://HOST/..")
        for what, value, pattern in (("time zone", self.timezone, _WORD),
                                     ("locale", self.locale, _WORD),
                                     ("keyboard", self.keyboard, _WORD),
                                     ("root device", self.root_device, _DEVICE)):
            if not pattern.match(value):
                raise TemplateRenderError(f"host {self.hostname}: bad {what} {value!r}")
        for package in self.packages:
            if not _PACKAGE.match(package):
                raise TemplateRenderError(f"host {self.hostname}: bad package name "
                                          f"{package!r}")
        for key in (*self.authorized_keys, self.host_key_pub):
            if any(c in key for c in "\r\n\0") or len(key.split()) < 2:
                raise TemplateRenderError(f"host {self.hostname}: an SSH public key is not "
                                          "one 'TYPE BASE64 [comment]' line")
        if not self.token or not all(c.isalnum() or c in "-_" for c in self.token):
            raise TemplateRenderError(f"host {self.hostname}: the deploy token is malformed")

    @property
    def netmask(self) -> str:
        return str(ipaddress.IPv4Network(f"0.0.0.0/{self.prefixlen}").netmask)

    @property
    def short_hostname(self) -> str:
        return self.hostname.split(".", 1)[0]

    @property
    def domain(self) -> str:
        return self.hostname.split(".", 1)[1] if "." in self.hostname else ""

    @property
    def mirror_host(self) -> str:
        return urllib.parse.urlsplit(self.mirror_url).netloc

    @property
    def mirror_path(self) -> str:
        return urllib.parse.urlsplit(self.mirror_url).path or "/"

    @property
    def host_key_b64(self) -> str:
        return base64.b64encode(self.host_key.encode("utf-8")).decode("ascii")

    @property
    def host_key_pub_b64(self) -> str:
        return base64.b64encode(self.host_key_pub.encode("utf-8")).decode("ascii")

    @property
    def authorized_keys_b64(self) -> str:
        text = "".join(f"{key}\n" for key in self.authorized_keys)
        return base64.b64encode(text.encode("utf-8")).decode("ascii")

    @property
    def token_header_line(self) -> str:
        return f"{contract.TOKEN_HEADER}: {self.token}"

    @property
    def done_url(self) -> str:
        return self.base_url + contract.NODE_DONE.format(node=self.node)

    @property
    def progress_url(self) -> str:
        return self.base_url + contract.NODE_PROGRESS.format(node=self.node)

    @property
    def instance_id(self) -> str:
        return f"metalchain-{self.node}"

    @property
    def preseed_late_command(self) -> str:
        """One shell line for ``preseed/late_command``: keys into /target, then ``done``."""
        q = shlex.quote
        steps = [
            "mkdir -p /target/root/.ssh /target/etc/ssh",
            f"echo {q(self.authorized_keys_b64)} | base64 -d > "
            "/target/root/.ssh/authorized_keys",
            "chmod 0700 /target/root/.ssh",
            "chmod 0600 /target/root/.ssh/authorized_keys",
            "rm -f /target/etc/ssh/ssh_host_*",
            f"echo {q(self.host_key_b64)} | base64 -d > /target/etc/ssh/ssh_host_ed25519_key",
            f"echo {q(self.host_key_pub_b64)} | base64 -d > "
            "/target/etc/ssh/ssh_host_ed25519_key.pub",
            "chmod 0600 /target/etc/ssh/ssh_host_ed25519_key",
            f"wget -q -O /dev/null --header={q(self.token_header_line)} --post-data= "
            f"{q(self.done_url)}",
        ]
        return "; ".join(steps)


def render_distro(kind: str, install: DistroInstall) -> dict[str, str]:
    """Render the files of one distribution installer: ``{template name: text}``.

    >>> sorted(render_distro("cloud-init", install))   # doctest: +SKIP
    ['cloud-init-meta-data.j2', 'cloud-init-user-data.j2']
    """
    try:
        names = DISTRO_TEMPLATES[kind]
    except KeyError:
        raise TemplateRenderError(f"unknown installer kind {kind!r}; known: "
                                  f"{', '.join(DISTRO_TEMPLATES)}") from None
    return {name: render(name, i=install) for name in names}
