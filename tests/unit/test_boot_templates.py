"""Unit tests of the boot server's templates and settings: render for a sample inventory and
check each output with the tool that will read it (dnsmasq --test, pykickstart, debconf, YAML).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from inventory.errors import InventoryError
from inventory.site import Site
from provision import contract
from provision.bootserver.dnsmasq import DnsmasqFiles, render_config, render_hosts, script_url
from provision.bootserver.http import NodeConfig, render_config_env, shell_quote_value
from provision.bootserver.interfaces import BootNode, BootNodes
from provision.settings import BootSettings
from provision.templates import (
    DistroInstall,
    TemplateRenderError,
    render,
    render_distro,
)
from tests.conftest import write_site

pytestmark = pytest.mark.unit

TOKEN = "tok_ABCdef0123456789-xyz"
HOST_KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n"
            "-----END OPENSSH PRIVATE KEY-----\n")
SAMPLE_NODES = BootNodes.of([
    BootNode("node1", "52:54:00:00:00:01", "10.77.0.11", "debian-12"),
    BootNode("node2.dc1.example", "52:54:00:00:00:02", "10.77.0.12", "debian-12"),
])


def settings(tmp_path: Path, **overrides: object) -> BootSettings:
    data: dict[str, object] = {"interface": "mclab-demo", "address": "10.77.0.1",
                               "subnet": "10.77.0.0/24"}
    data.update(overrides)
    return BootSettings.from_mapping(data, site_root=tmp_path)


def distro_install(**overrides: object) -> DistroInstall:
    values: dict[str, object] = dict(
        hostname="node2.dc1.example", mac="52:54:00:00:00:02", ip="10.77.0.12", prefixlen=24,
        base_url="http://10.77.0.1:8080", node="node2.dc1.example", token=TOKEN,
        host_key=HOST_KEY, host_key_pub="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 root@node2",
        authorized_keys=("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 ops {{ 7*7 }} it's",),
        gateway="10.77.0.254", nameservers=("10.77.0.53",), root_device="/dev/vda",
        packages=("vim", "curl"))
    values.update(overrides)
    return DistroInstall(**values)  # type: ignore[arg-type]


# -- settings ------------------------------------------------------------------------------------

def test_settings_defaults_live_under_the_site(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert s.http_port == 8080 and s.ipv6_ra is True and s.token_ttl == 3600
    assert s.state_dir == tmp_path / "boot"
    assert s.images_dir == tmp_path / "boot" / "images"
    assert s.installer_dir == tmp_path / "boot" / "installer"
    assert s.base_url == "http://10.77.0.1:8080"
    assert s.node_network.gateway is None and s.node_network.nameservers == ()


def test_installed_nodes_get_a_static_address_from_the_inventory_and_the_subnet(
        tmp_path: Path) -> None:
    net = settings(tmp_path, gateway="10.77.0.254", nameservers=["10.77.0.53"]).node_network
    assert net.interface("10.77.0.11") == "10.77.0.11/24"
    assert str(net.gateway) == "10.77.0.254" and [str(a) for a in net.nameservers] == [
        "10.77.0.53"]
    with pytest.raises(ValueError, match=r"not inside boot\.subnet"):
        net.interface("10.78.0.11")


@pytest.mark.parametrize(("boot", "key", "words"), [
    ("{address: 10.77.0.1, subnet: 10.77.0.0/24}", "boot.interface", "is required"),
    ("{interface: br0, address: 10.78.0.1, subnet: 10.77.0.0/24}", "boot.address",
     "not inside"),
    ("{interface: br0, address: nope, subnet: 10.77.0.0/24}", "boot.address", "IPv4"),
    ("{interface: br0, address: 10.77.0.1, subnet: 10.77.0.1/24}", "boot.subnet", "CIDR"),
    ("{interface: br0, address: 10.77.0.1, subnet: 10.77.0.0/24, http_port: 70000}",
     "boot.http_port", "TCP port"),
    ("{interface: br0, address: 10.77.0.1, subnet: 10.77.0.0/24, ipv6_ra: 'yes'}",
     "boot.ipv6_ra", "true or false"),
    ("{interface: br0, address: 10.77.0.1, subnet: 10.77.0.0/24, token_ttl: -1}",
     "boot.token_ttl", "positive"),
    ("{interface: 'br0; rm', address: 10.77.0.1, subnet: 10.77.0.0/24}", "boot.interface",
     "interface name"),
    ("{interface: br0, address: 10.77.0.1, subnet: 10.77.0.0/24, kernel_args: 'a $x'}",
     "boot.kernel_args", "not allowed"),
    ("{interface: br0, address: 10.77.0.1, subnet: 10.77.0.0/24, dhcp: true}", "boot.dhcp",
     "unknown key"),
    ("{interface: br0, address: 10.77.0.1, subnet: 10.77.0.0/24, gateway: 10.78.0.1}",
     "boot.gateway", "not a usable address"),
    ("{interface: br0, address: 10.77.0.1, subnet: 10.77.0.0/24, nameservers: [dns1]}",
     "boot.nameservers", "IPv4"),
])
def test_settings_errors_name_the_file_the_line_and_the_key(tmp_path: Path, boot: str, key: str,
                                                           words: str) -> None:
    root = write_site(tmp_path / "site", "hosts: {}\n")
    (root / "metalchain.yml").write_text(f"state: state/x.db\nboot: {boot}\n")
    site = Site.open(root)
    with pytest.raises(InventoryError) as err:
        BootSettings.from_site(site)
    message = str(err.value)
    assert message.startswith(f"{root / 'metalchain.yml'}:2: {key}: "), message
    assert words in message


def test_site_without_boot_settings_says_what_is_missing(tmp_path: Path) -> None:
    site = Site.open(write_site(tmp_path / "site", "hosts: {}\n"))
    with pytest.raises(InventoryError, match=r"boot.interface, boot.address and boot.subnet"):
        BootSettings.from_site(site)


# -- dnsmasq -------------------------------------------------------------------------------------

def test_dnsmasq_config_passes_dnsmasq_test(tmp_path: Path) -> None:
    s = settings(tmp_path, state_dir=str(tmp_path / "state"))
    files = DnsmasqFiles(s.state_dir)
    s.state_dir.mkdir()
    conf = render_config(s, "http://10.77.0.1:8080", files, efi=True)
    hosts = render_hosts(s, SAMPLE_NODES)
    files.conf.write_text(conf)
    files.hostsfile.write_text(hosts)
    lines = conf.splitlines()
    for wanted in ("port=0", "bind-interfaces", "interface=mclab-demo", "except-interface=lo",
                   "dhcp-ignore=tag:!known", "dhcp-match=set:ipxe,175",
                   "dhcp-boot=tag:ipxe,http://10.77.0.1:8080/boot/${net0/mac:hexhyp}.ipxe",
                   "dhcp-boot=tag:!ipxe,tag:!efi64,undionly.kpxe", "enable-tftp",
                   f"tftp-root={files.tftp_root}", "enable-ra",
                   "dhcp-range=::,constructor:mclab-demo,ra-only", "ra-param=mclab-demo,0,0",
                   f"dhcp-leasefile={files.leases}", f"pid-file={files.pid}",
                   f"dhcp-hostsfile={files.hostsfile}"):
        assert wanted in lines, wanted
    assert hosts.splitlines()[1:] == ["52:54:00:00:00:01,10.77.0.11,node1",
                                      "52:54:00:00:00:02,10.77.0.12,node2"]
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is not installed")
    proc = subprocess.run(["dnsmasq", "--test", f"--conf-file={files.conf}"],
                          capture_output=True, text=True, timeout=10, check=False)
    assert proc.returncode == 0, proc.stderr


def test_dnsmasq_config_without_ra_has_no_ra_lines(tmp_path: Path) -> None:
    s = settings(tmp_path, ipv6_ra=False)
    conf = render_config(s, "http://10.77.0.1:8080", DnsmasqFiles(s.state_dir))
    assert "enable-ra" not in conf and "ra-param" not in conf and "snponly" not in conf
    assert script_url("http://h:1") == "http://h:1/boot/${net0/mac:hexhyp}.ipxe"


@pytest.mark.parametrize(("node", "words"), [
    (BootNode("zz9", "52:54:00:00:00:09", "10.99.0.9"), "not a usable address"),
    (BootNode("zz9", "52:54:00:00:00:09", "10.77.0.1"), "not a usable address"),
    (BootNode("zz9", "52:54:00:00:00:09", None), "no provision.ip"),
    (BootNode("zz9", "52:54:00:00:00:09", "10.77.0.11"), "also node1's"),
])
def test_hosts_file_refuses_unusable_addresses_naming_the_host(tmp_path: Path, node: BootNode,
                                                               words: str) -> None:
    nodes = BootNodes.of([*SAMPLE_NODES.by_name.values(), node])
    with pytest.raises(InventoryError, match=words) as err:
        render_hosts(settings(tmp_path), nodes)
    assert err.value.host == "zz9"


# -- iPXE ----------------------------------------------------------------------------------------

def test_ipxe_scripts_install_and_local() -> None:
    local = render("boot.ipxe.j2", install=False, node="node1")
    assert local.startswith("#!ipxe\n") and local.rstrip().endswith("exit")
    base = "http://10.77.0.1:8080"
    install = render("boot.ipxe.j2", install=True, node="node1", token=TOKEN, base_url=base,
                     kernel_url=base + contract.INSTALLER_KERNEL,
                     initrd_url=base + contract.INSTALLER_INITRD,
                     kernel_args=("console=ttyS0,115200n8",), karg_url=contract.KARG_URL,
                     karg_node=contract.KARG_NODE, karg_token=contract.KARG_TOKEN)
    kernel = next(line for line in install.splitlines() if line.startswith("kernel "))
    assert kernel.split()[1] == base + contract.INSTALLER_KERNEL
    assert f"mc.url={base}" in kernel.split() and "mc.node=node1" in kernel.split()
    assert f"mc.token={TOKEN}" in kernel.split()
    assert f"initrd {base}{contract.INSTALLER_INITRD} || goto failed" in install


def test_undefined_variables_are_errors_not_empty_strings() -> None:
    with pytest.raises(TemplateRenderError, match=r"boot\.ipxe\.j2.*undefined"):
        render("boot.ipxe.j2", install=True, node="node1")


# -- config.env ----------------------------------------------------------------------------------

def test_config_env_quotes_every_value_and_keeps_contract_order() -> None:
    config = NodeConfig(hostname="node1", image_url="/images/debian-12.raw",
                        image_sha256="0" * 64, image_size=123,
                        authorized_keys="ssh-ed25519 AAA it's\n", host_key=HOST_KEY,
                        host_key_pub="ssh-ed25519 AAA", mac="52:54:00:00:00:01",
                        ipv4="10.77.0.11/24", gateway="10.77.0.254",
                        nameservers=("10.77.0.53", "10.77.0.54"))
    text = render_config_env(config, "http://10.77.0.1:8080")
    lines = text.splitlines()
    assert [line.split("=", 1)[0] for line in lines] == list(contract.CONFIG_KEYS)
    assert all(line.split("=", 1)[1].startswith("'") for line in lines)
    assert "MC_IMAGE_URL='http://10.77.0.1:8080/images/debian-12.raw'" in lines
    assert shell_quote_value("it's") == "'it'\"'\"'s'"
    assert "OPENSSH" not in text  # keys travel base64-encoded
    with pytest.raises(ValueError, match="image_sha256"):
        render_config_env(NodeConfig(**{**config.__dict__, "image_sha256": "x"}), "http://h")


def test_config_env_carries_the_static_network_of_the_installed_system() -> None:
    config = NodeConfig(hostname="node1", image_url="/images/debian-12.raw",
                        image_sha256="0" * 64, image_size=123,
                        authorized_keys="ssh-ed25519 AAA\n", host_key=HOST_KEY,
                        host_key_pub="ssh-ed25519 AAA", mac="52:54:00:00:00:01",
                        ipv4="10.77.0.11/24", gateway="10.77.0.254",
                        nameservers=("10.77.0.53", "10.77.0.54"))
    lines = render_config_env(config, "http://10.77.0.1:8080").splitlines()
    assert "MC_IPV4='10.77.0.11/24'" in lines
    assert "MC_GATEWAY='10.77.0.254'" in lines
    assert "MC_NAMESERVERS='10.77.0.53 10.77.0.54'" in lines
    for bad in ({"ipv4": "10.77.0.11"}, {"ipv4": "node1/24"}, {"gateway": "gw"},
                {"nameservers": ("8.8.8.8; reboot",)}):
        with pytest.raises(ValueError, match="ipv4, gateway or nameservers"):
            render_config_env(NodeConfig(**{**config.__dict__, **bad}), "http://h")


# -- distribution installers ----------------------------------------------------------------------

def test_kickstart_is_valid_for_pykickstart() -> None:
    parser_mod = pytest.importorskip("pykickstart.parser")
    version_mod = pytest.importorskip("pykickstart.version")
    text = render_distro("kickstart", distro_install())["kickstart.cfg.j2"]
    handler = version_mod.makeVersion()
    parser = parser_mod.KickstartParser(handler, errorsAreFatal=True)
    parser.readKickstartFromString(text)
    assert handler.network.network[0].hostname == "node2.dc1.example"
    assert handler.network.network[0].ip == "10.77.0.12"
    assert handler.sshkey.sshUserList[0].key.endswith("{{ 7*7 }} it's")
    assert "curl" in handler.packages.packageList
    assert f"{contract.TOKEN_HEADER}: {TOKEN}" in handler.scripts[0].script


def test_preseed_passes_debconf_checkonly(tmp_path: Path) -> None:
    text = render_distro("preseed", distro_install())["preseed.cfg.j2"]
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            owner, question, kind, *rest = line.split(None, 3)
            assert owner in ("d-i", "tasksel") and kind in ("string", "boolean", "select",
                                                            "multiselect", "password", "note")
            values[question] = rest[0] if rest else ""
    assert values["netcfg/get_ipaddress"] == "10.77.0.12"
    assert values["netcfg/get_hostname"] == "node2" and values["netcfg/get_domain"] == "dc1.example"
    assert values["partman-auto/disk"] == "/dev/vda"
    assert TOKEN in values["preseed/late_command"]
    if shutil.which("debconf-set-selections") is None:
        pytest.skip("debconf-set-selections is not installed")
    path = tmp_path / "preseed.cfg"
    path.write_text(text)
    proc = subprocess.run(["debconf-set-selections", "--checkonly", str(path)],
                          capture_output=True, text=True, timeout=20, check=False)
    assert proc.returncode == 0, proc.stderr


def test_cloud_init_user_data_and_meta_data() -> None:
    files = render_distro("cloud-init", distro_install())
    user_data = files["cloud-init-user-data.j2"]
    assert user_data.startswith("#cloud-config\n")
    doc = yaml.safe_load(user_data)
    assert doc["hostname"] == "node2" and doc["fqdn"] == "node2.dc1.example"
    assert doc["users"][0]["ssh_authorized_keys"] == [
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 ops {{ 7*7 }} it's"]
    assert doc["ssh_keys"]["ed25519_private"] == HOST_KEY
    assert doc["packages"] == ["vim", "curl"]
    assert f"{contract.TOKEN_HEADER}: {TOKEN}" in doc["runcmd"][0]
    assert doc["runcmd"][0][-1] == "http://10.77.0.1:8080/v1/nodes/node2.dc1.example/done"
    meta = yaml.safe_load(files["cloud-init-meta-data.j2"])
    assert meta == {"instance-id": "metalchain-node2.dc1.example", "local-hostname": "node2"}


@pytest.mark.parametrize("bad", [
    {"hostname": "bad_name"}, {"mac": "52-54-00-00-00-02"}, {"ip": "10.77.0.300"},
    {"packages": ("vim; rm -rf /",)}, {"authorized_keys": ("ssh-ed25519 AAA\nevil",)},
    {"mirror_url": "ftp://x/debian"}, {"token": "a b"}, {"timezone": "Europe/Paris x"},
])
def test_distro_values_are_checked_before_rendering(bad: dict[str, object]) -> None:
    with pytest.raises(TemplateRenderError):
        distro_install(**bad)
