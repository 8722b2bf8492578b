"""BMC state file, password file and the QEMU power/boot mapping (no processes)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from inventory.errors import LabError
from lab.bmc import BmcState, load_state, read_password_file, save_state
from lab.machine import (
    Machine,
    MachineSpec,
    TapNetwork,
    UserNetwork,
    boot_order_for,
    power_state_of,
)
from provision.bmc import IpmiBmc

pytestmark = pytest.mark.unit


def test_state_round_trips_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "bmc.json"
    state = BmcState(boot_device="network", boot_persistent=False)
    save_state(path, state)
    assert load_state(path) == state
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["bmc.json"]  # no temp file left behind


def test_missing_state_is_a_fresh_bmc_and_corrupt_state_an_error(tmp_path: Path) -> None:
    fresh = load_state(tmp_path / "absent.json")
    assert fresh.boot_device == "default" and fresh.guid
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(LabError, match=r"bad\.json"):
        load_state(bad)
    bad.write_text(json.dumps({"boot_device": "floppy"}))
    with pytest.raises(LabError, match="floppy"):
        load_state(bad)


def test_password_file_must_be_private_and_is_never_echoed(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_text("Pässwort-1\nignored\n", encoding="utf-8")
    os.chmod(path, 0o644)
    with pytest.raises(LabError) as error:
        read_password_file(path)
    assert "Pässwort" not in str(error.value)
    os.chmod(path, 0o600)
    assert read_password_file(path) == "Pässwort-1"


@pytest.mark.parametrize(("run_state", "power"), [
    ("prelaunch", "off"), ("paused", "off"), ("shutdown", "off"),
    ("running", "on"), ("internal-error", "on"), ("guest-panicked", "on"),
])
def test_power_state_of_run_state(run_state: str, power: str) -> None:
    assert power_state_of(run_state) == power


@pytest.mark.parametrize(("device", "order"), [("network", "nc"), ("disk", "cn"),
                                               ("default", "cn")])
def test_boot_order_puts_the_device_first(device: str, order: str) -> None:
    assert boot_order_for(device) == order


def test_boot_order_rejects_unknown_devices() -> None:
    with pytest.raises(LabError):
        boot_order_for("floppy")


def test_command_line_for_tap_in_a_namespace(tmp_path: Path) -> None:
    spec = MachineSpec("node1", tmp_path, "52:54:00:aa:bb:01", network=TapNetwork("tap1"),
                       netns="lab0", accel="tcg")
    argv = Machine(spec).command_line()
    assert argv[:4] == ["ip", "netns", "exec", "lab0"]
    assert "tap,id=net0,ifname=tap1,script=no,downscript=no" in argv
    assert "virtio-net-pci,netdev=net0,mac=52:54:00:aa:bb:01" in argv
    assert {"-S", "-daemonize", "-no-shutdown"} <= set(argv)
    assert "tcg,thread=multi" in argv


def test_command_line_user_network_and_no_network(tmp_path: Path) -> None:
    user = Machine(MachineSpec("n2", tmp_path, "52:54:00:aa:bb:02",
                               network=UserNetwork(tftp_root=tmp_path, bootfile="boot.ipxe"),
                               accel="tcg")).command_line()
    assert f"user,id=net0,tftp={tmp_path},bootfile=boot.ipxe" in user
    bare = Machine(MachineSpec("n3", tmp_path, "52:54:00:aa:bb:03", accel="tcg")).command_line()
    assert "-netdev" not in bare


@pytest.mark.parametrize("bad", [{"mac": "52-54-00-aa-bb-01"}, {"name": "no spaces"},
                                 {"memory_mib": 8}, {"boot_order": "xz"}])
def test_machine_spec_validation(tmp_path: Path, bad: dict[str, object]) -> None:
    fields: dict[str, object] = {"name": "n1", "workdir": tmp_path, "mac": "52:54:00:aa:bb:01"}
    fields.update(bad)
    with pytest.raises(LabError):
        Machine(MachineSpec(**fields))  # type: ignore[arg-type]


def test_driver_repr_hides_credentials() -> None:
    driver = IpmiBmc("node1", "127.0.0.1", port=6230, user="admin", password=b"hunter2")
    assert "hunter2" not in repr(driver) and "admin" not in repr(driver)
