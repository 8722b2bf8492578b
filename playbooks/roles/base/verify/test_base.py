"""testinfra checks of the base role."""

from __future__ import annotations

import pytest


def is_container(role_vars: dict) -> bool:
    virt = (role_vars.get("facts") or {}).get("virtualization")
    return virt in role_vars["container_virtualization"]


def test_hostname(host, role_vars):
    name = role_vars["inventory_hostname"]
    assert host.check_output("hostname") == name
    assert host.file("/etc/hostname").content_string == name + "\n"


def test_hosts_file_names_the_host(host, role_vars):
    hosts = host.file("/etc/hosts")
    assert hosts.user == "root" and hosts.mode == 0o644
    lines = [ln.split() for ln in hosts.content_string.splitlines() if ln and ln[0] != "#"]
    assert ["127.0.0.1", "localhost"] in lines
    assert [role_vars["address"], role_vars["inventory_hostname"]] in lines


def test_mirror_is_the_only_apt_source(host, role_vars):
    mirror = role_vars.get("metalchain_mirror")
    if not mirror:
        pytest.skip("no metalchain_mirror: apt sources are left alone")
    listed = host.file("/etc/apt/sources.list.d/metalchain.list")
    assert listed.content_string == mirror["source"] + "\n"
    assert not host.file("/etc/apt/sources.list").exists
    assert host.file("/etc/apt/sources.list.d").listdir() == ["metalchain.list"]
    if mirror["signed"]:
        keyring = host.file(mirror["keyring_path"])
        assert keyring.mode == 0o644
        assert host.check_output(f"base64 -w0 {mirror['keyring_path']}") == \
            mirror["keyring_b64"]


def test_time_sync_configured_and_enabled(host, role_vars):
    assert host.package("systemd-timesyncd").is_installed
    service = host.service("systemd-timesyncd")
    assert service.is_enabled
    if not is_container(role_vars):  # timesyncd refuses to run in containers, by design
        assert service.is_running
    conf = host.file("/etc/systemd/timesyncd.conf.d/metalchain.conf").content_string
    if role_vars["ntp_server"]:
        assert f"NTP={role_vars['ntp_server']}" in conf.splitlines()
    else:
        assert "NTP=" not in conf


def test_admin_users(host, role_vars):
    for admin in role_vars["admin_users"]:
        user = host.user(admin["name"])
        assert user.exists and user.shell == "/bin/bash"
        keys = host.file(f"{user.home}/.ssh/authorized_keys")
        assert keys.user == admin["name"] and keys.mode == 0o600
        assert keys.content_string.splitlines() == list(admin.get("ssh_keys") or [])
        assert host.file(f"{user.home}/.ssh").mode == 0o700
        with host.sudo(admin["name"]):
            assert host.run("sudo -n true").rc == 0


def test_sudoers_file_is_valid(host, role_vars):
    sudoers = host.file("/etc/sudoers.d/metalchain-admins")
    assert sudoers.user == "root" and sudoers.mode == 0o440
    for admin in role_vars["admin_users"]:
        assert f"{admin['name']} ALL=(ALL:ALL) NOPASSWD: ALL" in sudoers.content_string
    assert host.run("visudo -c -q").rc == 0


def test_sshd_hardened_and_running(host, role_vars):
    assert host.service("ssh").is_enabled and host.service("ssh").is_running
    effective = dict(line.split(" ", 1) for line in host.check_output("sshd -T").splitlines()
                     if " " in line)
    assert effective["passwordauthentication"] == "no"
    assert effective["kbdinteractiveauthentication"] == "no"
    assert effective["permitemptypasswords"] == "no"
    assert effective["x11forwarding"] == "no"
    want = role_vars["ssh_permit_root_login"]
    # sshd -T prints the old alias of prohibit-password
    assert effective["permitrootlogin"] in ({want, "without-password"}
                                            if want == "prohibit-password" else {want})
    assert not host.file("/etc/ssh/sshd_config.d/10-metalchain-hardening.conf.rejected").exists
