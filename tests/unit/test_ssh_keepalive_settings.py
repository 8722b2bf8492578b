"""Per-host SSH keepalives (``ssh.keepalive_interval`` / ``ssh.keepalive_timeout``): read from
the inventory with errors naming file:line, carried to paramiko's connection and to OpenSSH's
ssh_config (verify) with one meaning; unset, both use configure/ssh.py's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest

from configure.connect import keepalives
from configure.ssh import (
    DEFAULT_CONNECT_TIMEOUT,
    KEEPALIVE_INTERVAL,
    KEEPALIVE_TIMEOUT,
    SshConnection,
    SshTarget,
)
from configure.verify import server_alive, ssh_config_text
from inventory.errors import InventoryError
from inventory.loader import load_inventory
from inventory.model import SshSettings
from inventory.secrets import SecretStore
from tests.conftest import write_site

pytestmark = pytest.mark.unit

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def inventory(tmp_path: Path, ssh: str):
    site = write_site(tmp_path, "hosts:\n  far1:\n    address: 10.0.0.9\n"
                                f"    ssh: {ssh}\n", secrets="{}\n")
    return load_inventory(site / "inventory.yml", SecretStore({}))


def test_a_far_host_gets_its_own_keepalives_everywhere(tmp_path):
    inv = inventory(tmp_path, "{keepalive_interval: 15, keepalive_timeout: 90}")
    settings = inv.host("far1").ssh
    assert (settings.keepalive_interval, settings.keepalive_timeout) == (15, 90)
    target = SshTarget("far1", "10.0.0.9", (KEY,), **keepalives(settings))
    conn = SshConnection(target)
    assert (conn.keepalive_interval, conn.keepalive_timeout) == (15.0, 90.0)
    config = ssh_config_text(target, Path("/kh"), Path("/cm"))
    assert "  ServerAliveInterval 15\n  ServerAliveCountMax 6\n" in config


def test_unset_means_the_defaults_and_zero_turns_them_off(tmp_path):
    assert keepalives(SshSettings()) == {}
    conn = SshConnection(SshTarget("h", "10.0.0.9", (KEY,)))
    assert (conn.keepalive_interval, conn.keepalive_timeout) == (KEEPALIVE_INTERVAL,
                                                                 KEEPALIVE_TIMEOUT)
    assert server_alive(SshTarget("h", "10.0.0.9", (KEY,))) == [
        "  ServerAliveInterval 5", "  ServerAliveCountMax 4"]
    off = inventory(tmp_path, "{keepalive_interval: 0}").host("far1").ssh
    target = SshTarget("far1", "10.0.0.9", (KEY,), **keepalives(off))
    assert SshConnection(target).keepalive_interval == 0.0
    assert server_alive(target) == ["  ServerAliveInterval 0"]
    # An explicit argument (tests, tools) still wins over the target's.
    assert SshConnection(target, keepalive_interval=2).keepalive_interval == 2


@pytest.mark.parametrize("ssh, message", [
    ("{keepalive_interval: -1}", "ssh.keepalive_interval must be an integer 0-3600, got -1"),
    ("{keepalive_timeout: 0}", "ssh.keepalive_timeout must be an integer 1-86400, got 0"),
    ("{keepalive_timeout: '20'}", "ssh.keepalive_timeout must be an integer 1-86400"),
    ("{keepalive_interval: 30, keepalive_timeout: 10}",
     "ssh.keepalive_timeout (10 s) is shorter than ssh.keepalive_interval (30 s)"),
    ("{keepalive: 5}", "keepalive"),
])
def test_bad_keepalives_name_the_file_and_line(tmp_path, ssh, message):
    with pytest.raises(InventoryError) as info:
        inventory(tmp_path, ssh)
    assert "inventory.yml:4" in str(info.value) and message in str(info.value), info.value


def test_an_interval_alone_longer_than_the_default_timeout_is_refused(tmp_path):
    """keepalive_interval: 30 with the default 20 s timeout would call a host lost before its
    second keepalive was sent."""
    with pytest.raises(InventoryError) as info:
        inventory(tmp_path, "{keepalive_interval: 30}")
    assert "inventory.yml:4" in str(info.value)
    assert ("ssh.keepalive_timeout (20 s, the default) is shorter than "
            "ssh.keepalive_interval (30 s)") in str(info.value)
    settings = inventory(tmp_path, "{keepalive_interval: 30, keepalive_timeout: 90}").host(
        "far1").ssh
    assert (settings.keepalive_interval, settings.keepalive_timeout) == (30, 90)


def test_a_slow_host_gets_its_own_connect_timeout_in_both_clients(tmp_path):
    """ssh.connect_timeout: paramiko's connect/banner/auth timeouts and OpenSSH's
    ConnectTimeout (verify); unset, configure/ssh.py's default; an argument still wins."""
    slow = inventory(tmp_path, "{connect_timeout: 30}").host("far1").ssh
    assert slow.connect_timeout == 30
    target = SshTarget("far1", "10.0.0.9", (KEY,), **keepalives(slow))
    assert SshConnection(target).connect_timeout == 30.0
    assert "  ConnectTimeout 30\n" in ssh_config_text(target, Path("/kh"), Path("/cm"))
    assert SshConnection(target, 3).connect_timeout == 3
    plain = SshTarget("h", "10.0.0.9", (KEY,))
    assert SshConnection(plain).connect_timeout == DEFAULT_CONNECT_TIMEOUT
    assert f"  ConnectTimeout {round(DEFAULT_CONNECT_TIMEOUT)}\n" in ssh_config_text(
        plain, Path("/kh"), Path("/cm"))
    with pytest.raises(InventoryError) as info:
        inventory(tmp_path, "{connect_timeout: 0}")
    assert "inventory.yml:4" in str(info.value) and \
        "ssh.connect_timeout must be an integer 1-600, got 0" in str(info.value)
