#!/usr/bin/env bash
# The main job: `rctdb demo`. A 3-node rctdb cluster on loopback under a contended workload
# (6 worker processes incrementing counters under chain locks, records migrating all the
# time), with a live progress line; one node killed with SIGKILL, its detection, the recovery
# and the workload resuming shown as they happen; the node started again and admitted; a
# check that no acknowledged update was lost; a table; and everything stopped again.
# Installs what it needs first (Debian), builds in release mode.
#   ./scripts/demo.sh [rctdb demo options: --seconds N, --dir DIR, --keep, ...]
# RCTDB_BIN_DIR: a directory with rctdb and rctdbd to run instead of building them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
rctdb_install_packages

echo "== building rctdbd and the rctdb tool (release)"
bin=$(rctdb_bin_dir --bins)
exec "$bin/rctdb" demo "$@"
