"""The seed a VM boots with: its identity, network and SSH keys on a small read-only ISO.

One volume serves two readers:

- an ordinary cloud image with cloud-init's NoCloud datasource (volume id ``cidata``):
  ``meta-data``, ``user-data`` (``#cloud-config``: hostname, root login by key only, the
  controller's ed25519 host key in ``ssh_keys`` with ``ssh_deletekeys``, the authorized keys)
  and ``network-config`` (version 2, static, the NIC matched by its MAC);
- metalchain's lab guest (provision/guest/init, busybox sh), which reads shell-friendly files
  instead of YAML::

      metalchain/guest.env                 KEY='value' lines (shlex-quoted; `. guest.env`)
      metalchain/ssh_host_ed25519_key      the private host key (Rock Ridge mode 0600)
      metalchain/ssh_host_ed25519_key.pub  its public half
      metalchain/authorized_keys           one key per line, for root

  guest.env holds MC_SEED_VERSION, MC_INSTANCE_ID, MC_HOSTNAME, MC_MAC, MC_IPV4 (CIDR),
  MC_ADDRESS, MC_PREFIX, MC_GATEWAY (empty: none) and MC_NAMESERVERS (space separated).

Why an ISO and not a FAT or ext image: NoCloud finds its seed by the filesystem label
``cidata`` on any block device; ISO 9660 is the one format both cloud-init and a busybox
initramfs (the kernel's iso9660 module) read without extra tools, and pycdlib writes it in
pure Python, so building a seed needs no subprocess and no root.

The private host key is a secret: it appears in ``user-data`` (cloud-init's interface for it)
and in its own file, never in ``repr()``, in guest.env, or in an error message.
"""

from __future__ import annotations

import io
import ipaddress
import re
import shlex
import threading
import time
import types
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import yaml

from inventory.errors import InputError
from inventory.loader import normalize_mac, valid_hostname

#: Bump when the lab guest's files change shape; the guest's init checks it.
SEED_VERSION = 1
VOLUME_ID = "cidata"
LAB_DIR = "metalchain"

#: Every date in the ISO (volume descriptors, directory records, Rock Ridge timestamps):
#: the same seed gives the same bytes. 2024-01-01T00:00:00Z.
FIXED_EPOCH = 1704067200.0

_PRIVATE_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----"
_PRIVATE_END = "-----END OPENSSH PRIVATE KEY-----"
_PUBLIC_KEY = re.compile(r"^ssh-ed25519 [A-Za-z0-9+/]+={0,3}( [\x21-\x7e ]*)?$")
_AUTHORIZED_KEY = re.compile(
    r"^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) "
    r"[A-Za-z0-9+/]+={0,3}( [\x20-\x7e]*)?$")
_PRINTABLE = re.compile(r"^[\x21-\x7e]+$")
_BASE64_LINE = re.compile(r"^[A-Za-z0-9+/=]+$")


class SeedError(InputError):
    """A seed value that cannot go into a VM's seed. Never carries the private key."""


@dataclass(frozen=True)
class GuestSeed:
    """What a VM needs at first boot. ``host_key`` is a secret (hidden from ``repr``)."""

    instance_id: str
    hostname: str
    mac: str  # lower-case aa:bb:cc:dd:ee:ff
    ipv4: str  # CIDR, e.g. "10.77.0.31/24"
    gateway: str | None
    nameservers: tuple[str, ...]
    host_key: str = field(repr=False)  # OpenSSH ed25519 private key text
    host_key_pub: str  # "ssh-ed25519 AAAA..."
    authorized_keys: tuple[str, ...]


def validate(seed: GuestSeed) -> None:
    """Raise ``SeedError`` naming the first bad field (and the hostname, when it is valid)."""
    who = seed.hostname if isinstance(seed.hostname, str) and valid_hostname(
        seed.hostname) else None

    def bad(what: str) -> SeedError:
        return SeedError(f"VM '{who}': {what}" if who else f"VM seed: {what}")

    if not isinstance(seed.hostname, str) or not valid_hostname(seed.hostname):
        raise bad(f"hostname {_shown(seed.hostname)} is not a valid RFC 1123 host name")
    if not isinstance(seed.instance_id, str) or not _PRINTABLE.match(seed.instance_id) \
            or len(seed.instance_id) > 128:
        raise bad(f"instance_id {_shown(seed.instance_id)} must be 1-128 printable "
                  f"characters without spaces")
    if not isinstance(seed.mac, str) or normalize_mac(seed.mac) != seed.mac:
        raise bad(f"mac {_shown(seed.mac)} is not a lower-case aa:bb:cc:dd:ee:ff address")
    if not isinstance(seed.ipv4, str) or "/" not in seed.ipv4:
        raise bad(f"ipv4 {_shown(seed.ipv4)} is not an address with a prefix (10.0.0.5/24)")
    try:
        iface = ipaddress.IPv4Interface(seed.ipv4)
    except ValueError:
        raise bad(f"ipv4 {_shown(seed.ipv4)} is not an IPv4 address with a prefix") from None
    if str(iface) != seed.ipv4:
        raise bad(f"ipv4 {_shown(seed.ipv4)} is not in canonical form ({iface})")
    if seed.gateway is not None:
        gateway = _ipv4(seed.gateway, "gateway", bad)
        if gateway not in iface.network:
            raise bad(f"gateway {seed.gateway} is not in {iface.network}")
    if not isinstance(seed.nameservers, tuple):
        raise bad("nameservers must be a tuple of IPv4 addresses")
    for server in seed.nameservers:
        _ipv4(server, "nameserver", bad)
    _check_private_key(seed.host_key, bad)
    if not isinstance(seed.host_key_pub, str) or not _PUBLIC_KEY.match(seed.host_key_pub):
        raise bad("host_key_pub is not one 'ssh-ed25519 BASE64' line")
    if not isinstance(seed.authorized_keys, tuple) or not seed.authorized_keys:
        raise bad("authorized_keys must be a non-empty tuple of public key lines")
    for number, key in enumerate(seed.authorized_keys, 1):
        if not isinstance(key, str) or not _AUTHORIZED_KEY.match(key):
            raise bad(f"authorized key #{number} is not one 'TYPE BASE64 [comment]' line")


def _ipv4(value: object, what: str, bad) -> ipaddress.IPv4Address:  # type: ignore[no-untyped-def]
    if not isinstance(value, str):
        raise bad(f"{what} {_shown(value)} is not an IPv4 address")
    try:
        address = ipaddress.IPv4Address(value)
    except ValueError:
        raise bad(f"{what} {_shown(value)} is not an IPv4 address") from None
    if str(address) != value:
        raise bad(f"{what} {_shown(value)} is not in canonical form ({address})")
    return address


def _check_private_key(text: object, bad) -> None:  # type: ignore[no-untyped-def]
    # The messages never quote the text: it is the secret.
    if not isinstance(text, str):
        raise bad("host_key is not text")
    lines = text.strip("\n").split("\n")
    if len(lines) < 3 or lines[0] != _PRIVATE_BEGIN or lines[-1] != _PRIVATE_END:
        raise bad("host_key is not an OpenSSH private key (BEGIN/END OPENSSH PRIVATE KEY)")
    if not all(_BASE64_LINE.match(line) for line in lines[1:-1]):
        raise bad("host_key has characters outside base64 between its BEGIN and END lines")


def _shown(value: object) -> str:
    """A value for an error message: repr (control characters visible), cut at 40."""
    text = repr(value)
    return text if len(text) <= 42 else text[:39] + "...'"


def _private_key_text(seed: GuestSeed) -> str:
    return seed.host_key.strip("\n") + "\n"


def meta_data(seed: GuestSeed) -> str:
    return _yaml({"instance-id": seed.instance_id, "local-hostname": seed.hostname})


def user_data(seed: GuestSeed) -> str:
    """cloud-config: the hostname, root by key only, the controller's host key, nothing else.

    ``disable_root: false`` gives root the ``ssh_authorized_keys`` without cloud-init's
    "please log in as user" prefix; ``ssh_deletekeys`` + an empty ``ssh_genkeytypes`` leave
    the injected ed25519 key as the only host key, so the pinned key is the one sshd shows.
    """
    doc = {
        "hostname": seed.hostname,
        "preserve_hostname": False,
        "disable_root": False,
        "ssh_pwauth": False,
        "ssh_deletekeys": True,
        "ssh_genkeytypes": [],
        "ssh_keys": {
            "ed25519_private": _private_key_text(seed),
            "ed25519_public": seed.host_key_pub,
        },
        "ssh_authorized_keys": list(seed.authorized_keys),
    }
    return "#cloud-config\n" + _yaml(doc)


def network_config(seed: GuestSeed) -> str:
    ethernet: dict[str, object] = {
        "match": {"macaddress": seed.mac},
        "addresses": [seed.ipv4],
    }
    if seed.gateway:
        ethernet["routes"] = [{"to": "default", "via": seed.gateway}]
    if seed.nameservers:
        ethernet["nameservers"] = {"addresses": list(seed.nameservers)}
    return _yaml({"version": 2, "ethernets": {"nic0": ethernet}})


def guest_env(seed: GuestSeed) -> str:
    """The lab guest's settings: one ``KEY=quoted`` line each, safe to ``.`` in sh."""
    iface = ipaddress.IPv4Interface(seed.ipv4)
    values = {
        "MC_SEED_VERSION": str(SEED_VERSION),
        "MC_INSTANCE_ID": seed.instance_id,
        "MC_HOSTNAME": seed.hostname,
        "MC_MAC": seed.mac,
        "MC_IPV4": seed.ipv4,
        "MC_ADDRESS": str(iface.ip),
        "MC_PREFIX": str(iface.network.prefixlen),
        "MC_GATEWAY": seed.gateway or "",
        "MC_NAMESERVERS": " ".join(seed.nameservers),
    }
    lines = ["# Written by metalchain (configure/vmseed.py); read by the lab guest's init."]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


class _SeedDumper(yaml.SafeDumper):
    """safe_dump, with multi-line strings (the private key) as literal blocks."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_SeedDumper.add_representer(str, _represent_str)


def _yaml(doc: object) -> str:
    return yaml.dump(doc, Dumper=_SeedDumper, sort_keys=False, default_flow_style=False,
                     allow_unicode=False, width=4096)


def seed_files(seed: GuestSeed) -> dict[str, bytes]:
    """Every file of the seed volume by path (``/`` separated, no leading slash).

    Raises ``SeedError`` for a value that cannot go into a seed.

    >>> sorted(seed_files(example_seed()))[:3]
    ['meta-data', 'metalchain/authorized_keys', 'metalchain/guest.env']
    """
    validate(seed)
    files = {
        "meta-data": meta_data(seed),
        "user-data": user_data(seed),
        "network-config": network_config(seed),
        f"{LAB_DIR}/guest.env": guest_env(seed),
        f"{LAB_DIR}/ssh_host_ed25519_key": _private_key_text(seed),
        f"{LAB_DIR}/ssh_host_ed25519_key.pub": seed.host_key_pub + "\n",
        f"{LAB_DIR}/authorized_keys": "".join(key + "\n" for key in seed.authorized_keys),
    }
    return {path: text.encode("ascii") for path, text in files.items()}


_SECRET_FILES = frozenset({f"{LAB_DIR}/ssh_host_ed25519_key"})


def build_seed_iso(seed: GuestSeed) -> bytes:
    """The seed volume: ISO 9660 with Rock Ridge and Joliet names, volume id ``cidata``.

    Deterministic: the same seed gives the same bytes (every date is ``FIXED_EPOCH``, files
    in sorted order). Read-only modes: 0444 for files, 0400 for the private key.

    Example::

        Path("seed.iso").write_bytes(build_seed_iso(seed))
    """
    import pycdlib  # a dependency only the seed writer needs; keep the import local

    files = seed_files(seed)
    iso = pycdlib.PyCdlib()
    with _fixed_pycdlib_clock():
        iso.new(interchange_level=3, vol_ident=VOLUME_ID, sys_ident="LINUX",
                rock_ridge="1.09", joliet=3)
        made: set[str] = set()
        for index, path in enumerate(sorted(files)):
            parts = path.split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    iso.add_directory(_iso_name(directory, None), rr_name=parts[depth - 1],
                                      joliet_path="/" + directory, file_mode=0o40555)
                    made.add(directory)
            data = files[path]
            mode = 0o100400 if path in _SECRET_FILES else 0o100444
            iso.add_fp(io.BytesIO(data), len(data), _iso_name(path, index), rr_name=parts[-1],
                       joliet_path="/" + path, file_mode=mode)
        out = io.BytesIO()
        iso.write_fp(out)
        iso.close()
    return out.getvalue()


def _iso_name(path: str, index: int | None) -> str:
    """The plain ISO 9660 name (d-characters) under the Rock Ridge and Joliet ones.

    Readers use the Rock Ridge names; the plain names only have to be unique and legal.
    Files get ``F<n>.;1`` (n = position in sorted order), directories their upper-cased
    name with anything outside A-Z0-9_ turned into ``_``.
    """
    parts = path.split("/")
    dirs = [re.sub(r"[^A-Z0-9_]", "_", part.upper())[:31] for part in parts[:-1]]
    last = parts[-1]
    leaf = re.sub(r"[^A-Z0-9_]", "_", last.upper())[:31] if index is None else f"F{index}.;1"
    return "/" + "/".join([*dirs, leaf])


# pycdlib stamps its records with time.time() and renders them with time.localtime(). It takes
# no date argument, so for reproducible bytes the seed writer gives pycdlib's modules (and only
# those) a clock that always answers FIXED_EPOCH in UTC while a seed is written. The lock keeps
# two threads writing seeds from restoring each other's clock out of order.
_CLOCK_LOCK = threading.Lock()
_PYCDLIB_MODULES = ("pycdlib.pycdlib", "pycdlib.headervd", "pycdlib.dates", "pycdlib.utils",
                    "pycdlib.dr", "pycdlib.rockridge")


def _fixed_clock() -> types.SimpleNamespace:
    return types.SimpleNamespace(
        time=lambda: FIXED_EPOCH, localtime=lambda tm=None: time.gmtime(
            FIXED_EPOCH if tm is None else tm),
        gmtime=lambda tm=None: time.gmtime(FIXED_EPOCH if tm is None else tm),
        strftime=time.strftime, struct_time=time.struct_time)


@contextmanager
def _fixed_pycdlib_clock() -> Iterator[None]:
    import importlib

    with _CLOCK_LOCK:
        saved: list[tuple[types.ModuleType, object]] = []
        clock = _fixed_clock()
        try:
            for name in _PYCDLIB_MODULES:
                module = importlib.import_module(name)
                if getattr(module, "time", None) is time:
                    saved.append((module, module.time))
                    module.time = clock  # type: ignore[attr-defined]
            yield
        finally:
            for module, original in saved:
                module.time = original  # type: ignore[attr-defined]


def example_seed() -> GuestSeed:
    """A valid seed with a made-up key (for doctests and documentation only)."""
    return GuestSeed(
        instance_id="vm1-0001", hostname="vm1", mac="52:54:00:12:34:56", ipv4="10.77.0.31/24",
        gateway="10.77.0.1", nameservers=("10.77.0.1",),
        host_key=_PRIVATE_BEGIN + "\nAAAAexample\n" + _PRIVATE_END + "\n",
        host_key_pub="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample",
        authorized_keys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOperator operator@example",))
