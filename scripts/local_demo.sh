#!/usr/bin/env bash
# The local demo of librctdb: builds the library, runs a small C program on it, shows that
# the file it wrote is a plain tdb (tdbdump, python3-tdb read it), and measures the C ABI
# against raw libtdb. Installs what it needs first (Debian).
#   ./scripts/local_demo.sh [rctdb bench local options: --keys N, --rounds N, ...]
# RCTDB_BIN_DIR: a directory with librctdb.so and rctdb to use instead of building them.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
rctdb_install_packages

echo "== building librctdb.so and the rctdb tool (release)"
lib=$(rctdb_bin_dir --lib --bin rctdb)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

echo "== compiling examples/demo.c against include/rctdb.h and $lib/librctdb.so"
gcc -std=gnu11 -Wall -Wextra -Werror -Iinclude -o "$work/demo" examples/demo.c -L"$lib" -lrctdb

echo "== running it"
LD_LIBRARY_PATH="$lib" "$work/demo" "$work/opens.tdb"

echo "== the file it wrote is a plain tdb: tdbdump reads it"
tdbdump "$work/opens.tdb"

echo "== and so does python3-tdb"
/usr/bin/python3 - "$work/opens.tdb" <<'PY'
import os, sys, tdb
db = tdb.Tdb(sys.argv[1], 0, tdb.DEFAULT, os.O_RDONLY)
for key in sorted(db.keys()):
    print(f"  {key.decode()!r:32} -> {db.get(key).decode()!r}")
PY

echo "== C ABI against raw libtdb (fetch+store; default 100k keys, 100-byte values)"
"$lib/rctdb" bench local "$@"
