#!/usr/bin/env bash
# Runs every test of rctdb, installing what they need first (Debian).
#   ./scripts/test.sh [extra cargo test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
rctdb_install_packages
cargo test "$@"
