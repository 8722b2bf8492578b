#!/usr/bin/env bash
# `make demo-down`: stop what `make demo` started (serve, the monitoring stack, the mirror
# server) and remove the lab (QEMU nodes, BMCs, fleet, network namespace, its disks and
# files: --purge), then the demo's site directory. Idempotent.
set -uo pipefail
cd "$(dirname "$0")/.."
site=${1:-demo-site}
MC=.venv/bin/metalchain
[ -d "$site" ] || { echo "no demo site in $site"; exit 0; }
pid_file="$site/serve.pid"
if [ -f "$pid_file" ]; then
  pid=$(cat "$pid_file")
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' < "/proc/$pid/cmdline" | grep -q "serve"; then
    kill -TERM "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -f "$pid_file"
fi
$MC --site "$site" monitor down || true
$MC --site "$site" mirror stop || true
$MC lab down --purge --dir "$site" || exit 1
# The site itself (inventory, state, mirror, keys) was written by lab up for the demo.
if head -n 1 "$site/inventory.yml" 2>/dev/null | grep -q "Written by \`metalchain lab up\`"; then
  rm -rf -- "$site"
  echo "removed $site"
fi
