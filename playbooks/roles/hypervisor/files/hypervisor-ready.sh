#!/bin/sh
# Managed by metalchain (role hypervisor): can this host run guests?
#   metalchain-hypervisor-ready BRIDGE host|host-tcg|container
# Prints what is missing and exits 1. A container checks the software side only: it has no
# /dev/kvm and cannot create /dev/net/tun.
set -u
bridge=$1
kind=$2
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
[ $missing = 0 ] && echo "ready: $(qemu-system-x86_64 --version | head -n 1)"
exit $missing
