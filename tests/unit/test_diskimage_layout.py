"""The pure parts of the raw disk image build: MBR, sizes, boot menu, checksum line, cache key."""

from __future__ import annotations

import pytest

from provision.diskimage import (
    MIB,
    PARTITION_OFFSET,
    ImageBuildError,
    disk_image_key,
    extlinux_conf,
    fstab,
    image_size_for,
    inode_count_for,
    mbr_sector,
    sha256_line,
    tree_usage,
)

pytestmark = pytest.mark.unit

UUID = "51fa15f4-b85c-4a13-b6b3-61067f0df01b"


def test_mbr_has_boot_code_one_bootable_linux_partition_and_signature() -> None:
    code = bytes(range(200)) * 3  # longer than 440: only the boot code area is used
    sector = mbr_sector(code, 2048, 1_000_000)
    assert len(sector) == 512
    assert sector[:440] == code[:440]
    entry = sector[446:462]
    assert entry[0] == 0x80 and entry[4] == 0x83
    assert int.from_bytes(entry[8:12], "little") == 2048
    assert int.from_bytes(entry[12:16], "little") == 1_000_000
    assert sector[462:510] == bytes(48)  # the other three entries stay empty
    assert sector[510:] == b"\x55\xaa"


def test_mbr_chs_of_lba_2048_and_clamped_beyond_8_gib() -> None:
    sector = mbr_sector(b"", 2048, 100 * 1024**3 // 512)
    # LBA 2048 = cylinder 0, head 32, sector 33 with 255/63 geometry
    assert sector[447:450] == bytes([32, 33, 0])
    assert sector[451:454] == bytes([254, 0xC0 | 63, 0xFF])


@pytest.mark.parametrize(("start", "count"), [(0, 10), (2048, 0), (2048, 2**32)])
def test_mbr_refuses_partitions_it_cannot_describe(start: int, count: int) -> None:
    with pytest.raises(ImageBuildError):
        mbr_sector(b"", start, count)


def test_image_size_is_whole_mib_and_leaves_room() -> None:
    blocks, inodes = 92_000, 13_000  # roughly the golden rootfs
    size = image_size_for(blocks, inodes)
    assert size % MIB == 0
    fs = size - PARTITION_OFFSET
    needed = blocks * 4096 + inode_count_for(inodes) * 256 + 16 * MIB
    assert needed + 32 * MIB <= fs <= needed * 1.2 + 32 * MIB


def test_inode_count_leaves_headroom() -> None:
    assert inode_count_for(10_000) >= 15_000


def test_extlinux_conf_boots_by_uuid_on_the_serial_console() -> None:
    conf = extlinux_conf("/boot/vmlinuz-6.1", "/boot/initrd.img-6.1", UUID)
    assert "DEFAULT linux" in conf and "PROMPT 0" in conf and "SERIAL 0 115200" in conf
    append = next(line for line in conf.splitlines() if "APPEND" in line)
    assert f"root=UUID={UUID}" in append and "console=ttyS0" in append
    assert "    LINUX /boot/vmlinuz-6.1" in conf and "    INITRD /boot/initrd.img-6.1" in conf
    assert "INITRD" not in extlinux_conf("/boot/vmlinuz-6.1", None, UUID)


def test_fstab_mounts_root_by_uuid() -> None:
    assert f"UUID={UUID} / ext4 " in fstab(UUID)


def test_sha256_line_is_sha256sum_format() -> None:
    assert sha256_line("ab" * 32, "x.raw") == "ab" * 32 + "  x.raw\n"


def test_key_follows_golden_image_and_build_version() -> None:
    assert disk_image_key("aaaa") == disk_image_key("aaaa")
    assert disk_image_key("aaaa") != disk_image_key("bbbb")
    assert disk_image_key("aaaa", 1) != disk_image_key("aaaa", 2)
    assert len(disk_image_key("aaaa")) == 16


def test_tree_usage_counts_blocks_and_inodes(tmp_path) -> None:
    (tmp_path / "a").write_bytes(b"x" * 5000)   # 2 blocks
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b").write_bytes(b"")     # 0 blocks
    (tmp_path / "l").symlink_to("a")            # fast symlink: in the inode
    blocks, inodes = tree_usage(tmp_path)
    assert inodes == 5  # two directories, two files, one symlink
    assert blocks == 2 + 2  # two directory blocks + the file
