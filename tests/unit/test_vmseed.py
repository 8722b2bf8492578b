"""The VM seed: cloud-init NoCloud files, the lab guest's files, and the ISO that holds them."""

from __future__ import annotations

import dataclasses
import io
import shlex
import time

import pycdlib
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from configure.vmseed import (
    FIXED_EPOCH,
    VOLUME_ID,
    GuestSeed,
    SeedError,
    build_seed_iso,
    seed_files,
)

pytestmark = pytest.mark.unit


def _keypair() -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return private, public


PRIVATE, PUBLIC = _keypair()
_, OPERATOR = _keypair()


def make_seed(**changes: object) -> GuestSeed:
    seed = GuestSeed(instance_id="vm1-6f2a", hostname="vm1", mac="52:54:00:aa:00:31",
                     ipv4="10.77.0.31/24", gateway="10.77.0.1",
                     nameservers=("10.77.0.1", "10.77.0.2"), host_key=PRIVATE,
                     host_key_pub=PUBLIC, authorized_keys=(OPERATOR + " op@ctl",))
    return dataclasses.replace(seed, **changes)


def read_iso(data: bytes) -> dict[str, tuple[bytes, int]]:
    """Every file by its Rock Ridge path, with its Rock Ridge mode."""
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        found: dict[str, tuple[bytes, int]] = {}
        for dirname, _dirs, files in iso.walk(rr_path="/"):
            for name in files:
                path = f"{dirname.rstrip('/')}/{name}"
                out = io.BytesIO()
                iso.get_file_from_iso_fp(out, rr_path=path)
                record = iso.get_record(rr_path=path)
                found[path.lstrip("/")] = (out.getvalue(), record.rock_ridge.get_file_mode())
        return found
    finally:
        iso.close()


def test_cloud_init_files_say_what_nocloud_needs() -> None:
    files = seed_files(make_seed())
    meta = yaml.safe_load(files["meta-data"])
    assert meta == {"instance-id": "vm1-6f2a", "local-hostname": "vm1"}
    assert files["user-data"].startswith(b"#cloud-config\n")
    user = yaml.safe_load(files["user-data"])
    assert user["hostname"] == "vm1"
    assert user["disable_root"] is False and user["ssh_pwauth"] is False
    assert user["ssh_deletekeys"] is True and user["ssh_genkeytypes"] == []
    assert user["ssh_keys"] == {"ed25519_private": PRIVATE, "ed25519_public": PUBLIC}
    assert user["ssh_authorized_keys"] == [OPERATOR + " op@ctl"]
    net = yaml.safe_load(files["network-config"])
    assert net == {"version": 2, "ethernets": {"nic0": {
        "match": {"macaddress": "52:54:00:aa:00:31"}, "addresses": ["10.77.0.31/24"],
        "routes": [{"to": "default", "via": "10.77.0.1"}],
        "nameservers": {"addresses": ["10.77.0.1", "10.77.0.2"]}}}}


def test_no_gateway_and_no_nameservers_leave_those_keys_out() -> None:
    files = seed_files(make_seed(gateway=None, nameservers=()))
    nic = yaml.safe_load(files["network-config"])["ethernets"]["nic0"]
    assert "routes" not in nic and "nameservers" not in nic
    env = _parse_env(files["metalchain/guest.env"])
    assert env["MC_GATEWAY"] == "" and env["MC_NAMESERVERS"] == ""


def _parse_env(data: bytes) -> dict[str, str]:
    env = {}
    for line in data.decode().splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        words = shlex.split(value)
        assert len(words) <= 1, line  # one shell word per value: quoted properly
        env[key] = words[0] if words else ""
    return env


def test_guest_env_is_shell_quoted_settings() -> None:
    env = _parse_env(seed_files(make_seed())["metalchain/guest.env"])
    assert env == {"MC_SEED_VERSION": "1", "MC_INSTANCE_ID": "vm1-6f2a", "MC_HOSTNAME": "vm1",
                   "MC_MAC": "52:54:00:aa:00:31", "MC_IPV4": "10.77.0.31/24",
                   "MC_ADDRESS": "10.77.0.31", "MC_PREFIX": "24", "MC_GATEWAY": "10.77.0.1",
                   "MC_NAMESERVERS": "10.77.0.1 10.77.0.2"}


def test_instance_id_with_shell_and_yaml_metacharacters_stays_data() -> None:
    nasty = "id'$(reboot)`x`;#:{a}"
    files = seed_files(make_seed(instance_id=nasty))
    assert yaml.safe_load(files["meta-data"])["instance-id"] == nasty
    assert _parse_env(files["metalchain/guest.env"])["MC_INSTANCE_ID"] == nasty


@pytest.mark.parametrize(("change", "message"), [
    ({"hostname": "vm1\nevil"}, "hostname 'vm1\\nevil' is not a valid RFC 1123"),
    ({"hostname": "-vm"}, "not a valid RFC 1123"),
    ({"instance_id": "a b"}, "instance_id"),
    ({"instance_id": "a\tb"}, "instance_id"),
    ({"instance_id": ""}, "instance_id"),
    ({"mac": "52:54:00:AA:00:31"}, "mac"),
    ({"mac": "52:54:00:aa:00"}, "mac"),
    ({"ipv4": "10.77.0.31"}, "with a prefix"),
    ({"ipv4": "10.77.0.300/24"}, "ipv4"),
    ({"ipv4": "fd00::5/64"}, "ipv4"),
    ({"gateway": "10.78.0.1"}, "not in 10.77.0.0/24"),
    ({"gateway": "gw"}, "gateway"),
    ({"nameservers": ("10.77.0.1\n",)}, "nameserver"),
    ({"nameservers": ["10.77.0.1"]}, "tuple"),
    ({"host_key_pub": PUBLIC + "\nssh-ed25519 AAAA"}, "host_key_pub"),
    ({"host_key_pub": "ssh-rsa AAAA"}, "host_key_pub"),
    ({"authorized_keys": ()}, "authorized_keys"),
    ({"authorized_keys": (OPERATOR + "\nssh-ed25519 AAAA x",)}, "authorized key #1"),
    ({"authorized_keys": ("command=\"x\" " + OPERATOR,)}, "authorized key #1"),
])
def test_bad_values_are_refused_with_the_field_named(change: dict[str, object],
                                                     message: str) -> None:
    with pytest.raises(SeedError) as err:
        seed_files(make_seed(**change))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("key", [
    "not a key",
    PRIVATE.replace("OPENSSH PRIVATE KEY", "RSA PRIVATE KEY"),
    PRIVATE.replace("\n", "\n'\n", 2),
])
def test_bad_private_key_is_refused_without_quoting_it(key: str) -> None:
    with pytest.raises(SeedError) as err:
        seed_files(make_seed(host_key=key))
    assert "host_key" in str(err.value)
    body = PRIVATE.splitlines()[1]
    assert body not in str(err.value) and "not a key" not in str(err.value)


def test_private_key_is_not_in_repr() -> None:
    seed = make_seed()
    body = PRIVATE.splitlines()[1]
    assert body not in repr(seed) and body not in str(seed)
    assert "host_key_pub" in repr(seed)


def test_iso_holds_every_file_under_its_rock_ridge_and_joliet_name() -> None:
    seed = make_seed()
    files = seed_files(seed)
    data = build_seed_iso(seed)
    found = read_iso(data)
    assert {path: content for path, (content, _mode) in found.items()} == files
    assert found["metalchain/ssh_host_ed25519_key"][1] & 0o777 == 0o400
    assert found["user-data"][1] & 0o777 == 0o444
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(data))
    try:
        assert iso.pvd.volume_identifier.rstrip(b" ") == VOLUME_ID.encode()
        assert iso.has_rock_ridge() and iso.has_joliet()
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path="/network-config")
        assert out.getvalue() == files["network-config"]
    finally:
        iso.close()


def test_private_key_appears_only_in_its_file_and_cloud_init_user_data() -> None:
    seed = make_seed()
    found = read_iso(build_seed_iso(seed))
    body_lines = PRIVATE.splitlines()[1:-1]
    holders = {path for path, (content, _mode) in found.items()
               if any(line.encode() in content for line in body_lines)}
    assert holders == {"metalchain/ssh_host_ed25519_key", "user-data"}
    data = build_seed_iso(seed)
    assert data.count(body_lines[0].encode()) == 2


def test_same_seed_gives_the_same_bytes_whatever_the_clock_and_timezone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    first = build_seed_iso(make_seed())
    monkeypatch.setenv("TZ", "Pacific/Chatham")
    time.tzset()
    try:
        second = build_seed_iso(make_seed())
    finally:
        monkeypatch.undo()
        time.tzset()
    assert first == second
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(first))
    try:
        created = iso.pvd.volume_creation_date
        stamp = time.gmtime(FIXED_EPOCH)
        assert (created.year, created.month, created.dayofmonth, created.gmtoffset) == (
            stamp.tm_year, stamp.tm_mon, stamp.tm_mday, 0)
    finally:
        iso.close()
    assert build_seed_iso(make_seed(hostname="vm2")) != first


def test_the_writer_leaves_the_real_clock_alone() -> None:
    build_seed_iso(make_seed())
    import pycdlib.headervd

    assert pycdlib.headervd.time is time
    assert abs(time.time() - FIXED_EPOCH) > 86400
