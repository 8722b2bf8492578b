#!/usr/bin/env bash
# The main job on the built-in lab, as far as the chain exists today:
#   1. bring the lab up: 2 bare-metal QEMU nodes behind IPMI BMCs, 5 SSH fleet hosts
#   2. show the inventory it wrote, the nodes' power state (over IPMI) and the fleet (over SSH)
#   3. run an ad-hoc command on the fleet in parallel
# Idempotent: re-running reuses the running lab. `make demo-down` removes it.
set -euo pipefail
cd "$(dirname "$0")/.."
site=${1:-demo-site}
MC=.venv/bin/metalchain
$MC lab up --dir "$site" --nodes 2 --fleet 5
$MC --site "$site" inventory validate
$MC --site "$site" inventory graph
$MC --site "$site" lab status
$MC --site "$site" exec fleet -- uname -n -r
echo
echo "The lab is running in $site. Try: $MC --site $site inventory list"
echo "Tear it down with: make demo-down"
