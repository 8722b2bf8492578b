"""testinfra checks of the hypervisor role."""

from __future__ import annotations


def is_container(role_vars: dict) -> bool:
    virt = (role_vars.get("facts") or {}).get("virtualization")
    return virt in role_vars["container_virtualization"]


def test_qemu_installed_and_runs(host):
    for name in ("qemu-system-x86", "qemu-utils"):
        assert host.package(name).is_installed
    assert host.check_output("qemu-system-x86_64 --version").startswith("QEMU emulator")
    assert host.run("qemu-img --version").rc == 0


def test_bridge_is_up(host, role_vars):
    bridge = role_vars["hypervisor_bridge"]
    link = host.check_output(f"ip -o -d link show dev {bridge}")
    flags = link.split("<", 1)[1].split(">", 1)[0].split(",")
    assert "UP" in flags and " bridge " in link
    netdev = host.file(f"/etc/systemd/network/60-{bridge}.netdev").content_string
    assert f"Name={bridge}" in netdev and "Kind=bridge" in netdev
    assert host.service("systemd-networkd").is_running
    if not role_vars["hypervisor_bridge_uplink"]:
        assert not host.file("/etc/systemd/network/61-metalchain-uplink.network").exists


def test_sysctls(host):
    assert host.sysctl("net.ipv4.ip_forward") == 1
    assert host.sysctl("net.ipv4.conf.all.send_redirects") == 0
    assert host.file("/etc/sysctl.d/90-metalchain-net.ipv4.ip_forward.conf").content_string \
        == "net.ipv4.ip_forward = 1\n"


def test_kernel_side(host, role_vars):
    if is_container(role_vars):
        # Containers share the machine's kernel: nothing to load, no /dev/kvm of their own.
        assert not host.file("/etc/modules-load.d/metalchain-kvm.conf").exists
        return
    for module in ("kvm", "vhost_net", "tun"):
        assert host.file(f"/sys/module/{module}").is_directory
    if role_vars.get("hypervisor_require_kvm", True):
        assert host.run("test -c /dev/kvm").rc == 0    # testinfra has no char-device test
    assert host.run("test -c /dev/net/tun").rc == 0


def test_ready_to_run_guests(host, role_vars):
    kind = "container" if is_container(role_vars) else (
        "host" if role_vars.get("hypervisor_require_kvm", True) else "host-tcg")
    out = host.run(f"/usr/local/sbin/metalchain-hypervisor-ready "
                   f"{role_vars['hypervisor_bridge']} {kind}")
    assert out.rc == 0, out.stderr
