#!/bin/sh
# Managed by metalchain (role hypervisor): can this host run guests?
#   metalchain-hypervisor-ready BRIDGE host|host-tcg|container [libvirt|qemu [TIMEOUT_S]]
# Prints what is missing and exits 1. A container checks the software side only: it has no
# /dev/kvm and cannot create /dev/net/tun. With "libvirt", libvirtd must answer
# `virsh -c qemu:///system list` within TIMEOUT_S (default 60).
set -u
bridge=$1
kind=$2
manager=${3:-qemu}
timeout_s=${4:-60}
missing=0
fail() { echo "not ready: $*" >&2; missing=1; }

qemu-system-x86_64 --version >/dev/null 2>&1 || fail "qemu-system-x86_64 does not run"
qemu-img --version >/dev/null 2>&1 || fail "qemu-img does not run"
ip -o link show dev "$bridge" up 2>/dev/null | grep -q . || fail "bridge $bridge is not up"
if [ "$kind" = host ]; then
    [ -c /dev/kvm ] || fail "no /dev/kvm (kvm module, BIOS virtualization setting)"
fi
if [ "$kind" != container ]; then
    [ -c /dev/net/tun ] || fail "no /dev/net/tun (tun module)"
fi
if [ "$manager" = libvirt ]; then
    systemctl is-active --quiet libvirtd || fail "libvirtd is not running"
    timeout "$timeout_s" virsh -q -c qemu:///system list >/dev/null 2>&1 ||
        fail "libvirtd does not answer virsh -c qemu:///system list within ${timeout_s} s"
fi
[ $missing = 0 ] && echo "ready: $(qemu-system-x86_64 --version | head -n 1)"
exit $missing
