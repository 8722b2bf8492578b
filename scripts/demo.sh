#!/usr/bin/env bash
# The main job on the built-in lab: from bare metal to configured, monitored-ready hosts.
#   1. bring the lab up: 2 blank bare-metal QEMU nodes behind IPMI BMCs, 3 SSH fleet hosts
#   2. build the site's signed package mirror (the lab has no other way to get packages)
#   3. provision the bare-metal nodes: IPMI power + PXE + image install -> active
#   4. configure nodes and fleet with base + node_exporter + hypervisor, verify with testinfra
#   5. show node_exporter answering on an installed node
# Idempotent: re-running skips what is done. `make demo-down` removes it all.
set -euo pipefail
cd "$(dirname "$0")/.."
site=${1:-demo-site}
MC=.venv/bin/metalchain
step() { printf '\n== %s\n' "$*"; }

step "lab: 2 bare-metal nodes + 3 fleet hosts"
$MC lab up --dir "$site" --nodes 2 --fleet 3
$MC --site "$site" inventory graph
$MC --site "$site" lab status

step "package mirror (signed)"
$MC --site "$site" mirror build --sign \
  --packages sudo,systemd-timesyncd,prometheus-node-exporter,qemu-system-x86,qemu-utils,libvirt-daemon-system
$MC --site "$site" mirror stop >/dev/null   # a re-run restarts it on the current release
$MC --site "$site" mirror serve --daemon

step "provision the bare-metal nodes (IPMI + PXE + image install; ~1 minute under TCG)"
$MC --site "$site" provision nodes --skip-active
$MC --site "$site" state show

step "configure: base + node_exporter + hypervisor on every host, then verify"
$MC --site "$site" facts all >/dev/null
# The lab's nodes are emulated (TCG): no hardware virtualization to require.
$MC --site "$site" apply --role base --role node_exporter --role hypervisor all \
  -e hypervisor_require_kvm=false
$MC --site "$site" verify all --role base --role node_exporter --role hypervisor \
  -e hypervisor_require_kvm=false

step "node_exporter on node1"
ip=$($MC --site "$site" inventory show node1 --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["host"]["address"])')
python3 - "$ip" <<'PY'
import sys, urllib.request
body = urllib.request.urlopen(f"http://{sys.argv[1]}:9100/metrics", timeout=10).read().decode()
print(next(line for line in body.splitlines() if line.startswith("node_exporter_build_info")))
PY

echo
echo "The lab is running in $site. Try: $MC --site $site drift all --role base"
echo "Tear it down with: make demo-down"
