"""Regressions: a command that cannot run (its binary missing) is a one-line metalchain error,
not a raw FileNotFoundError that the CLI prints as a traceback. Each case used to raise
FileNotFoundError (lab's ssh-keygen and qemu-img, the golden image's systemctl)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inventory.errors import LabError
from lab import machine as machine_mod
from lab.lab import Lab
from lab.machine import Machine, MachineSpec
from provision import image

pytestmark = pytest.mark.lab


@pytest.fixture
def no_tools(tmp_path: Path, monkeypatch) -> Path:
    """A PATH on which no tool is found."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    return empty


def test_lab_key_without_ssh_keygen(tmp_path: Path, no_tools: Path) -> None:
    with pytest.raises(LabError, match="cannot run ssh-keygen"):
        Lab(tmp_path / "site").ensure_key()


def test_machine_disk_without_qemu_img(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(machine_mod, "QEMU_IMG", str(tmp_path / "no-qemu-img"))
    node = Machine(MachineSpec(name="node1", workdir=tmp_path / "node1",
                               mac="52:54:00:00:00:01"))
    with pytest.raises(LabError, match=r"cannot run .*no-qemu-img \(machine node1: qemu-img"):
        node.ensure_disk()


def test_image_systemctl_without_systemctl(tmp_path: Path, no_tools: Path) -> None:
    with pytest.raises(LabError, match="cannot run systemctl"):
        image._systemctl(tmp_path, "enable", "ssh.service")
