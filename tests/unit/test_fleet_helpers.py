"""Pure helpers of the lab network, the fleet and the golden image: no processes."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from inventory.errors import LabError
from lab.fleet import (
    HostRecord,
    check_hostname,
    check_pubkey,
    overlay_options,
    plan_hosts,
)
from lab.network import LabNetwork, check_ifname, link_kind, short_ifname
from provision import image
from runtime.filelock import file_lock
from runtime.pidfile import ProcStat, parse_stat

pytestmark = pytest.mark.unit

NET = ipaddress.IPv4Network("10.77.0.0/24")


def test_plan_hosts_names_and_addresses() -> None:
    hosts = plan_hosts(3, NET)
    assert [h.name for h in hosts] == ["node01", "node02", "node03"]
    assert [str(h.ipv4) for h in hosts] == ["10.77.0.100/24", "10.77.0.101/24",
                                            "10.77.0.102/24"]
    assert plan_hosts(100, NET, first=10)[-1].name == "node100"


@pytest.mark.parametrize(("count", "first"), [(200, 100), (1, 1), (1, 2), (-1, 100)])
def test_plan_hosts_refuses_what_does_not_fit(count: int, first: int) -> None:
    with pytest.raises(LabError):
        plan_hosts(count, NET, first=first)


@pytest.mark.parametrize("name", ["node01", "a", "web-1", "x" * 63])
def test_good_hostnames(name: str) -> None:
    assert check_hostname(name) == name


@pytest.mark.parametrize("name", ["", "Node01", "-a", "a-", "a_b", "a.b", "x" * 64, "é"])
def test_bad_hostnames(name: str) -> None:
    with pytest.raises(LabError):
        check_hostname(name)


def test_short_ifname_fits_and_is_stable() -> None:
    assert short_ifname("vh-", "node07") == "vh-node07"
    long_name = short_ifname("vh-", "a-very-long-host-name")
    assert len(long_name) == 15 and long_name.startswith("vh-")
    assert long_name == short_ifname("vh-", "a-very-long-host-name")
    assert long_name != short_ifname("vh-", "a-very-long-host-namf")


@pytest.mark.parametrize("name", ["", "x" * 16, "a b", "a;b", "a/b", "a.b"])
def test_bad_ifnames(name: str) -> None:
    with pytest.raises(LabError):
        check_ifname(name)


def test_network_addresses_and_uplink_name() -> None:
    net = LabNetwork("mclab-demo")
    assert str(net.controller_ipv4) == "10.77.0.1/24"
    assert str(net.bridge_ipv4) == "10.77.0.2/24"
    assert str(net.controller_ipv6) == "fd6d:6c61:6200::1/64"
    assert str(net.bridge_ipv6) == "fd6d:6c61:6200::2/64"
    assert net.uplink == "mclab-demo"
    long_net = LabNetwork("mclab-a-rather-long-site-name")
    assert len(long_net.uplink) <= 15 and long_net.uplink.startswith("mc")
    with pytest.raises(LabError):
        LabNetwork("bad name")


def test_link_kind() -> None:
    assert link_kind({"linkinfo": {"info_kind": "tun", "info_data": {"type": "tap"}}}) == "tap"
    assert link_kind({"linkinfo": {"info_kind": "bridge"}}) == "bridge"
    assert link_kind({"ifname": "lo"}) == ""


def test_pubkey_must_be_one_line() -> None:
    good = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMqv controller@x"
    assert check_pubkey(good + "\n") == good
    for bad in ["", "ssh-ed25519", good + "\nssh-ed25519 AAAA evil", "-----BEGIN OPENSSH"]:
        with pytest.raises(LabError):
            check_pubkey(bad)


def test_overlay_options_refuse_separators() -> None:
    ok = overlay_options(Path("/l"), Path("/u"), Path("/w"))
    assert ok == "lowerdir=/l,upperdir=/u,workdir=/w"
    for bad in ("/a,b", "/a:b", "/a b"):
        with pytest.raises(LabError):
            overlay_options(Path(bad), Path("/u"), Path("/w"))


def test_parse_stat_with_awkward_comm() -> None:
    fields = ["S", "77"] + ["0"] * 17 + ["123456"] + ["0"] * 10
    stat = "42 (sy) (s) temd) " + " ".join(fields)
    assert parse_stat(stat) == ProcStat("S", 77, 123456)


def test_known_hosts_line_pins_address_and_key() -> None:
    record = HostRecord(name="node01", ipv4="10.77.0.100/24",
                        host_key="ssh-ed25519 AAAAkey root@node01", lab_netns="n",
                        netns="n-node01", lab_ifname="vh-node01", dir="/d", lower="/l",
                        upper="/u", work="/w", root="/r")
    assert record.known_hosts_line() == "10.77.0.100 ssh-ed25519 AAAAkey"


def test_image_key_ignores_order_and_duplicates_but_not_content() -> None:
    base = image.ImageSpec()
    shuffled = image.ImageSpec(packages=(*reversed(base.packages), base.packages[0]))
    assert base.key() == shuffled.key()
    assert base.key() != image.ImageSpec(packages=(*base.packages, "vim")).key()
    assert base.key() != image.ImageSpec(customize_version=base.customize_version + 1).key()
    assert base.key() != image.ImageSpec(suite="trixie").key()


def test_mmdebstrap_runs_in_its_own_namespaces(tmp_path: Path) -> None:
    argv = image.mmdebstrap_argv(image.ImageSpec(), tmp_path / "rootfs")
    assert argv[:4] == ["setpriv", "--pdeathsig", "KILL", "--"]
    wrapper = argv[4:argv.index("mmdebstrap")]
    assert {"--mount", "--pid", "--fork", "--kill-child"} <= set(wrapper)
    assert "--variant=minbase" in argv
    include = next(a for a in argv if a.startswith("--include="))
    assert "openssh-server" in include and "linux-image-cloud-amd64" in include
    assert argv[argv.index("bookworm") + 1] == str(tmp_path / "rootfs")


def test_build_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    lock = tmp_path / "k.lock"
    with file_lock(lock, 1.0, LabError), pytest.raises(LabError, match="lock"), \
            file_lock(lock, 0.2, LabError):
        pass
    with file_lock(lock, 0.2, LabError):
        pass  # released when the holder left


def test_cached_image_is_found_without_building(tmp_path: Path) -> None:
    spec = image.ImageSpec()
    final = tmp_path / spec.key()
    (final / "rootfs/lib/systemd").mkdir(parents=True)
    (final / "rootfs/lib/systemd/systemd").write_text("")
    (final / "image.json").write_text('{"key": "x"}')
    found = image.ensure_image(spec, tmp_path)
    assert found.rootfs == final / "rootfs" and found.build_seconds is None


def test_half_built_image_is_not_used(tmp_path: Path) -> None:
    spec = image.ImageSpec()
    (tmp_path / spec.key() / "rootfs").mkdir(parents=True)  # no image.json: not finished
    assert image._cached(spec, tmp_path / spec.key()) is None
