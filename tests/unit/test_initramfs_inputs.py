"""The pure parts of the installer build: ldd parsing, module lookup, cache key, the script."""

from __future__ import annotations

from pathlib import Path

import pytest

from provision import contract
from provision.diskimage import ImageBuildError
from provision.initramfs import INIT_SCRIPT, MODULES, installer_key, module_paths, parse_ldd

pytestmark = pytest.mark.unit

LDD = """\
\tlinux-vdso.so.1 (0x00007ffd5c9e4000)
\tlibfdisk.so.1 => /lib/x86_64-linux-gnu/libfdisk.so.1 (0x00007f0b1d2a0000)
\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0b1d0be000)
\t/lib64/ld-linux-x86-64.so.2 (0x00007f0b1d39b000)
"""


def test_parse_ldd_keeps_paths_and_the_loader_skips_vdso() -> None:
    assert parse_ldd(LDD) == [Path("/lib/x86_64-linux-gnu/libfdisk.so.1"),
                              Path("/lib/x86_64-linux-gnu/libc.so.6"),
                              Path("/lib64/ld-linux-x86-64.so.2")]


def _modules_tree(tmp_path: Path, builtin: tuple[str, ...] = ()) -> Path:
    lines = []
    for name in MODULES:
        if name in builtin:
            continue
        sub = "net" if "net" in name or "failover" in name else "virtio"
        lines.append(f"kernel/drivers/{sub}/{name}.ko: kernel/drivers/virtio/virtio.ko")
    (tmp_path / "modules.dep").write_text("\n".join(reversed(lines)) + "\n")
    (tmp_path / "modules.builtin").write_text(
        "".join(f"kernel/drivers/x/{b}.ko\n" for b in builtin))
    return tmp_path


def test_module_paths_follow_the_load_order(tmp_path: Path) -> None:
    paths = module_paths(_modules_tree(tmp_path))
    assert [p.name for p in paths] == [f"{m}.ko" for m in MODULES]


def test_builtin_modules_are_skipped_missing_ones_are_an_error(tmp_path: Path) -> None:
    tree = _modules_tree(tmp_path, builtin=("virtio_blk",))
    assert "virtio_blk.ko" not in [p.name for p in module_paths(tree)]
    (tree / "modules.builtin").write_text("")
    with pytest.raises(ImageBuildError, match="virtio_blk"):
        module_paths(tree)


def test_key_changes_with_any_input() -> None:
    base = installer_key("g1", {"/init": "aa", "/bin/busybox": "bb"})
    assert base == installer_key("g1", {"/bin/busybox": "bb", "/init": "aa"})
    assert base != installer_key("g2", {"/init": "aa", "/bin/busybox": "bb"})
    assert base != installer_key("g1", {"/init": "ab", "/bin/busybox": "bb"})
    assert base != installer_key("g1", {"/init": "aa", "/bin/busybox": "bb"}, build_version=99)


def test_script_speaks_the_contract() -> None:
    """The shell script cannot import contract.py: check it names what the contract names."""
    script = INIT_SCRIPT.read_text(encoding="utf-8")
    assert script.startswith("#!/bin/sh\n")
    for name in (contract.KARG_URL, contract.KARG_NODE, contract.KARG_TOKEN,
                 contract.TOKEN_HEADER):
        assert name in script
    for key in contract.CONFIG_KEYS:
        assert key in script
    for stage in contract.INSTALL_STAGES:
        assert f"progress {stage} " in script or f"stage={stage}" in script
    for path in (contract.NODE_CONFIG, contract.NODE_PROGRESS, contract.NODE_DONE,
                 contract.NODE_FAILED):
        leaf = path.rsplit("/", 1)[-1]
        assert f"node_url {leaf})" in script
    assert f"/{contract.API_VERSION}/nodes/$MC_NODE/" in script
    # Secrets never go to the log or console: no `set -x`, no echo of the token or key.
    code = [line for line in script.splitlines() if not line.lstrip().startswith("#")]
    assert not any("set -x" in line for line in code)
    assert 'echo "$MC_TOKEN' not in script and 'log "$MC_HOST_KEY' not in script
