#!/usr/bin/env bash
# Installs everything metalchain needs on a fresh Debian 12 machine: Debian packages (as root),
# a virtualenv in .venv, and metalchain itself with its test extras. Idempotent: a second run
# only checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-venv
  qemu-system-x86 qemu-utils ipxe-qemu ipxe
  dnsmasq-base busybox-static mmdebstrap extlinux syslinux-common
  fdisk e2fsprogs iproute2 cpio apt-utils curl debconf
  openssh-client openssh-server ipmitool
  prometheus prometheus-alertmanager
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "bootstrap: missing Debian packages (run as root to install): ${missing[*]}" >&2
    exit 2
  fi
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 900 apt-get update -qq
  timeout 1800 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.metalchain-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [[ ! -f $stamp || $(cat "$stamp") != "$want" ]]; then
  echo "bootstrap: installing Python packages into .venv"
  timeout 900 .venv/bin/pip install -q --upgrade pip
  timeout 1800 .venv/bin/pip install -q -e '.[test]'
  echo "$want" > "$stamp"
fi
