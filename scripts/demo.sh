#!/usr/bin/env bash
# The main job on the built-in lab: bare metal to a monitored, self-healing VM, in one playbook.
#   1. the lab: 2 blank bare-metal QEMU nodes behind IPMI BMCs, 3 SSH fleet hosts, and the
#      inventory of the whole chain (roles, an image store, one VM on node1)
#   2. the site's signed package mirror (the lab has no other way to get packages), which
#      also serves the lab's guest image
#   3. metalchain serve: boot server, install callbacks, webhook receiver, remediation
#   4. metalchain run playbooks/site.yml: provision -> roles -> VM -> monitoring
#   5. two faults, each healed by remediation: a stopped exporter on a hypervisor, then the
#      VM's QEMU process killed on its hypervisor
# Idempotent: re-running skips what is done. `make demo-down` removes it all.
set -euo pipefail
cd "$(dirname "$0")/.."
site=${1:-demo-site}
MC=.venv/bin/metalchain
PY=.venv/bin/python
step() { printf '\n== %s\n' "$*"; }
t_start=$(date +%s)

step "lab: 2 bare-metal nodes, 3 fleet hosts, 1 VM (the whole chain's inventory)"
$MC lab up --dir "$site" --nodes 2 --fleet 3 --chain --vms 1 --memory 1536
$MC --site "$site" inventory graph

step "package mirror (signed), with the lab's guest image next to it"
$MC --site "$site" mirror build --sign --packages \
  sudo,systemd-timesyncd,prometheus-node-exporter,qemu-system-x86,qemu-utils,libvirt-daemon-system,nginx,wget
$MC --site "$site" mirror stop >/dev/null   # a re-run restarts it on the current release
$MC --site "$site" mirror serve --daemon

# The shipped alerts wait 1 minute before they fire (a flapping scrape is not an outage); the
# demo's copy waits 15 s so the faults below are seen soon. A site's playbooks/alerts.yml
# replaces the shipped one.
mkdir -p "$site/playbooks"
sed 's/^  for: 1m /  for: 15s /' playbooks/alerts.yml > "$site/playbooks/alerts.yml"

step "metalchain serve: boot server, callbacks, webhook receiver, remediation (background)"
serve_pid_file="$site/serve.pid"
if [ -f "$serve_pid_file" ] && kill -0 "$(cat "$serve_pid_file")" 2>/dev/null; then
  echo "serve already runs (pid $(cat "$serve_pid_file"))"
else
  setsid $MC --site "$site" serve >"$site/serve.log" 2>&1 < /dev/null &
  echo $! > "$serve_pid_file"
  for _ in $(seq 1 120); do
    grep -q "serving" "$site/serve.log" 2>/dev/null && break
    kill -0 "$(cat "$serve_pid_file")" 2>/dev/null || { cat "$site/serve.log"; exit 1; }
    sleep 0.5
  done
  head -n 3 "$site/serve.log"
fi

step "the whole chain: metalchain run playbooks/site.yml"
t_chain=$(date +%s)
$MC --site "$site" run playbooks/site.yml
t_chain_done=$(date +%s)

step "monitoring: Prometheus targets (hypervisors, fleet and the VM)"
# serve's own metrics target is new to Prometheus until its first scrape: wait for that.
for _ in $(seq 1 30); do
  $MC --site "$site" monitor status >/dev/null 2>&1 && break
  sleep 2
done
$MC --site "$site" monitor status

# healed TARGET ALERT SINCE: wait for that incident to end, show its timeline; fail unless healed.
healed() {
  local doc id
  doc=$($MC --site "$site" incidents wait --target "$1" --alert "$2" --since "$3" \
        --timeout 600 --json) || { echo "$doc"; exit 1; }
  id=$(printf '%s' "$doc" | $PY -c 'import json, sys; print(json.load(sys.stdin)["incident"]["id"])')
  $MC --site "$site" incidents show "$id"
}

step "fault 1: stop node_exporter on hypervisor node1 (remediation restarts it)"
t1=$(date +%s)
$MC --site "$site" exec node1 -- systemctl stop prometheus-node-exporter
healed node1 ExporterDown "$t1"

step "fault 2: kill vm1's QEMU process on node1 (remediation starts the VM again)"
t2=$(date +%s)
$MC --site "$site" exec node1 -- sh -c 'kill -9 "$(cat /run/libvirt/qemu/vm1.pid)"'
healed vm1 VmDown "$t2"
$MC --site "$site" exec vm1 -- hostname

t_end=$(date +%s)
echo
echo "The chain ran in $((t_chain_done - t_chain)) s; the whole demo took $((t_end - t_start)) s."
echo "Where to look:"
echo "  Prometheus and Alertmanager:   $MC --site $site monitor status  (addresses above)"
echo "  incidents and their timelines: $MC --site $site incidents list"
echo "  runs and their journal:        $MC --site $site runs list"
echo "  serve's log:                   $site/serve.log"
echo "  the VM's serial console:       /var/log/metalchain/guests/vm1.console.log on node1"
echo "A second run changes nothing:  $MC --site $site run playbooks/site.yml"
echo "Tear it down with: make demo-down"
