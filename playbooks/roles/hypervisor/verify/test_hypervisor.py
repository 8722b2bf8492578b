"""testinfra checks of the hypervisor role."""

from __future__ import annotations

import re


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
    assert not host.file("/etc/systemd/network/61-metalchain-uplink.network").exists


def uplink_of(role_vars: dict) -> str:
    return "" if is_container(role_vars) else role_vars["hypervisor_bridge_uplink"]


def test_uplink_carries_the_hosts_address(host, role_vars):
    bridge = role_vars["hypervisor_bridge"]
    nic_file = host.file("/etc/systemd/network/05-metalchain-uplink.network")
    if not uplink_of(role_vars):
        assert not nic_file.exists
        assert not host.file("/etc/systemd/network/06-metalchain-bridge.network").exists
        return
    nic = next(ln.split("=", 1)[1] for ln in nic_file.content_string.splitlines()
               if ln.startswith("Name="))
    if uplink_of(role_vars) != "auto":
        assert nic == role_vars["hypervisor_bridge_uplink"]
    # The NIC is a port of the bridge, the bridge has its MAC and the inventory address.
    assert host.check_output(f"basename $(readlink /sys/class/net/{nic}/master)") == bridge
    assert host.file(f"/sys/class/net/{bridge}/address").content_string == \
        host.file(f"/sys/class/net/{nic}/address").content_string
    on_bridge = host.check_output(f"ip -o -4 addr show dev {bridge}")
    assert f" {role_vars['address']}/" in on_bridge
    assert not host.check_output(f"ip -o -4 addr show dev {nic} scope global")
    # ...and it comes back that way after a reboot: our files sort before the installer's.
    names = host.check_output("ls /etc/systemd/network").split()
    assert names.index("05-metalchain-uplink.network") < names.index(
        "06-metalchain-bridge.network") < min(
        [names.index(n) for n in names if n.startswith("1")] or [len(names)])
    mac = host.file(f"/etc/systemd/network/60-{bridge}.netdev.d/05-metalchain-mac.conf")
    assert mac.content_string.splitlines()[-1] == \
        "MACAddress=" + host.file(f"/sys/class/net/{nic}/address").content_string.strip()


def test_libvirt(host, role_vars):
    if is_container(role_vars) or not role_vars.get("hypervisor_libvirt"):
        assert not host.package("libvirt-daemon-system").is_installed
        return
    assert host.package("libvirt-daemon-system").is_installed
    assert host.service("libvirtd").is_running and host.service("libvirtd").is_enabled
    # ...for good: not with Debian's --timeout 120, after which an idle libvirtd exits.
    pid = host.check_output("systemctl show -P MainPID libvirtd")
    assert "--timeout" not in host.file(f"/proc/{pid}/cmdline").content_string
    # The guests yield to the host: machine.slice's weight, kept by systemd (and, once a
    # guest runs, in the slice's cgroup, where the kernel reads it).
    weight = role_vars.get("hypervisor_guest_cpu_weight")
    if weight:
        assert host.check_output("systemctl show -P CPUWeight machine.slice") == str(weight)
        cgroup = host.file("/sys/fs/cgroup/machine.slice/cpu.weight")
        if cgroup.exists:
            assert cgroup.content_string.strip() == str(weight)
    listed = host.run("timeout 60 virsh -c qemu:///system list --all")
    assert listed.rc == 0, listed.stderr
    assert "Name" in listed.stdout and "State" in listed.stdout
    if not role_vars.get("hypervisor_libvirt_default_network"):
        info = host.run("timeout 60 virsh -c qemu:///system net-info default")
        assert info.rc != 0 or (re.search(r"^Active:\s+no$", info.stdout, re.M)
                                and re.search(r"^Autostart:\s+no$", info.stdout, re.M)), \
            info.stdout


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
    manager = "libvirt" if role_vars.get("hypervisor_libvirt") and not is_container(
        role_vars) else "qemu"
    out = host.run(f"/usr/local/sbin/metalchain-hypervisor-ready "
                   f"{role_vars['hypervisor_bridge']} {kind} {manager}")
    assert out.rc == 0, out.stderr
