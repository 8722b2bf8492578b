"""The pure parts of the lab guest image build: cache key, UUID, boot menu, debugfs script."""

from __future__ import annotations

import pytest

from provision.diskimage import ImageBuildError
from provision.guestimage import (
    GUEST_DIR,
    GUEST_FILES,
    GUEST_MODULES,
    debugfs_normalize_script,
    fs_uuid_for,
    guest_extlinux_conf,
    guest_image_key,
    parse_print_uri,
    source_date_epoch,
)

pytestmark = pytest.mark.unit


def test_key_changes_with_any_input_digest_and_the_epoch() -> None:
    base = guest_image_key({"kernel": "a", "sshd": "b"}, 100)
    assert base == guest_image_key({"sshd": "b", "kernel": "a"}, 100)
    assert base != guest_image_key({"kernel": "a", "sshd": "c"}, 100)
    assert base != guest_image_key({"kernel": "a", "sshd": "b"}, 101)
    assert base != guest_image_key({"kernel": "a", "sshd": "b"}, 100, build_version=99)


def test_filesystem_uuid_is_a_function_of_the_key() -> None:
    assert fs_uuid_for("0123") == fs_uuid_for("0123")
    assert fs_uuid_for("0123") != fs_uuid_for("0124")
    assert len(fs_uuid_for("0123")) == 36


def test_boot_menu_has_serial_console_root_by_uuid_and_panic_reboot() -> None:
    conf = guest_extlinux_conf("/boot/vmlinuz-6.1", "/boot/initrd.img", "u-u-i-d")
    assert "LINUX /boot/vmlinuz-6.1" in conf and "INITRD /boot/initrd.img" in conf
    assert "root=UUID=u-u-i-d" in conf and "console=ttyS0,115200n8" in conf
    assert "panic=10" in conf


def test_debugfs_script_resets_superblock_and_every_path() -> None:
    script = debugfs_normalize_script(["/", "/etc/passwd"], 1704067200).splitlines()
    assert "ssv mtime 20240101000000" in script and "ssv mnt_count 0" in script
    for path in ("/", "/etc/passwd"):
        for field in ("atime", "mtime", "ctime", "crtime"):
            assert f'sif "{path}" {field} 20240101000000' in script
        assert f'sif "{path}" generation 0' in script


def test_print_uri_line_parsed_and_bad_lines_refused() -> None:
    line = ("'http://deb.debian.org/debian/pool/main/p/x.deb' "
            "prometheus-node-exporter_1.5.0-1+b6_amd64.deb 4079352 SHA256:" + "8c" * 32)
    assert parse_print_uri(line) == ("prometheus-node-exporter_1.5.0-1+b6_amd64.deb", "8c" * 32)
    for bad in ("", "'u' ../x.deb 1 SHA256:" + "a" * 64, "'u' x.deb 1 MD5Sum:abc",
                "'u' x.deb 1 SHA256:" + "A" * 64):
        with pytest.raises(ImageBuildError, match="apt-get update"):
            parse_print_uri(bad)


def test_source_date_epoch_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    assert source_date_epoch() == 1704067200
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert source_date_epoch() == 1700000000
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(ImageBuildError, match="SOURCE_DATE_EPOCH"):
        source_date_epoch()


def test_guest_files_exist_and_modules_load_dependencies_first() -> None:
    for name in GUEST_FILES:
        assert (GUEST_DIR / name).is_file(), name
    order = list(GUEST_MODULES)
    assert order.index("virtio") < order.index("virtio_blk")
    assert order.index("failover") < order.index("net_failover") < order.index("virtio_net")
    assert order.index("cdrom") < order.index("isofs")


def test_guest_scripts_read_the_seed_files_vmseed_writes() -> None:
    from configure.vmseed import example_seed, seed_files

    setup = (GUEST_DIR / "setup").read_text(encoding="utf-8")
    written = seed_files(example_seed())
    for path in ("metalchain/guest.env", "metalchain/ssh_host_ed25519_key",
                 "metalchain/ssh_host_ed25519_key.pub", "metalchain/authorized_keys"):
        assert path in written and f"/run/seed/{path}" in setup
    env = written["metalchain/guest.env"].decode()
    for variable in ("MC_SEED_VERSION", "MC_HOSTNAME", "MC_MAC", "MC_IPV4", "MC_GATEWAY",
                     "MC_NAMESERVERS"):
        assert f"{variable}=" in env and f"${variable}" in setup
