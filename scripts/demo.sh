#!/usr/bin/env bash
# The main job on the built-in lab. Until the chain exists: scaffold the example site,
# validate its inventory and list its hosts and groups.
set -euo pipefail
cd "$(dirname "$0")/.."
site=${1:-demo-site}
MC=.venv/bin/metalchain
[[ -d $site ]] || $MC init "$site"
$MC --site "$site" inventory validate
$MC --site "$site" inventory list
$MC --site "$site" inventory graph
