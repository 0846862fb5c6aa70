#!/usr/bin/env bash
# The C ABI on a cluster, step by step: a local 3-node rctdb cluster on loopback (127.0.0.11-13) with a workload.
# Six processes, two per node, increment one shared counter under rctdb_chainlock through
# the C ABI; the record migrates between the nodes and ends at exactly 6000. Then the
# cluster's state: status, a cluster-wide dump, Samba's ltdbtool reading a node's file; a
# node killed with kill -9 while the others keep counting, detected and recovered from, and
# started again; and a short migration benchmark. Installs what it needs first (Debian).
#   ./scripts/c_demo.sh [DIR]   (./scripts/demo.sh is the main demo: `rctdb demo`)
# Environment: FIRST_ADDRESS (node 0 of the cluster, default 127.0.0.11), RING_ADDRESS (node 0
# of the benchmark's own cluster, default 127.0.0.31), RING_SECONDS (default 3), RCTDB_BIN_DIR
# (a directory with rctdb, rctdbd and librctdb.so to use instead of building them).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
rctdb_install_packages

dir="${1:-/tmp/rctdb-demo}"
first="${FIRST_ADDRESS:-127.0.0.11}"
ring_first="${RING_ADDRESS:-127.0.0.31}"
echo "== building rctdbd, the rctdb tool and librctdb.so (release)"
bin=$(rctdb_bin_dir --lib --bins)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
gcc -std=gnu11 -O2 -Wall -Wextra -Werror -Iinclude -o "$work/ring" tests/c/ring.c -L"$bin" -lrctdb
export LD_LIBRARY_PATH="$bin"

"$bin/rctdb" cluster down --dir "$dir" >/dev/null 2>&1 || true
trap '"$bin/rctdb" cluster down --dir "$dir" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
echo "== starting 3 rctdbd from $first (state in $dir)"
"$bin/rctdb" cluster up --nodes 3 --dir "$dir" --first-address "$first"

echo "== 2 processes per node, 1000 locked increments each, of one counter in counters.tdb"
pids=()
for node in 0 1 2; do
	for _ in 1 2; do
		echo go | RCTDB_SOCKET="$dir/node$node.sock" "$work/ring" incr counters.tdb hits 1000 >/dev/null &
		pids+=($!)
	done
done
for pid in "${pids[@]}"; do wait "$pid"; done
for node in 0 1 2; do
	echo "   node $node reads hits = $(RCTDB_SOCKET="$dir/node$node.sock" "$work/ring" get counters.tdb hits)"
done

echo "== rctdb status (node 1)"
"$bin/rctdb" --socket "$dir/node1.sock" status
echo "== rctdb writekey / readkey across nodes"
"$bin/rctdb" --socket "$dir/node0.sock" writekey counters.tdb greeting "hello from node 0"
echo "   node 2 reads: $("$bin/rctdb" --socket "$dir/node2.sock" readkey counters.tdb greeting)"
echo "== rctdb dump (every record of the cluster, newest copy)"
"$bin/rctdb" --socket "$dir/node0.sock" dump counters.tdb
echo "== Samba's ltdbtool reads node 2's file, record headers included"
ltdbtool dump -p "$dir/node2/counters.tdb"

echo "== kill -9 node 2 while nodes 0 and 1 go on counting (4 processes x 500 more)"
pids=()
for node in 0 1; do
	for _ in 1 2; do
		echo go | RCTDB_SOCKET="$dir/node$node.sock" "$work/ring" incr counters.tdb hits 500 >/dev/null &
		pids+=($!)
	done
done
"$bin/rctdb" cluster kill --dir "$dir" --node 2
for pid in "${pids[@]}"; do wait "$pid"; done
echo "   node 0 reads hits = $(RCTDB_SOCKET="$dir/node0.sock" "$work/ring" get counters.tdb hits)" \
	"(8000 if node 2 did not hold the record when it died; else what recovery restored + the rest)"
grep -h "NodeDead\|RecoveryDone" "$dir/node0.log" "$dir/node1.log" | tail -3 | sed 's/^/   /'
"$bin/rctdb" --socket "$dir/node0.sock" status | sed -n '2,7p' | sed 's/^/   /'
echo "== node 2 starts again and is admitted by a recovery"
"$bin/rctdb" cluster start --dir "$dir" --node 2
echo "   node 2 reads hits = $(RCTDB_SOCKET="$dir/node2.sock" "$work/ring" get counters.tdb hits)"

"$bin/rctdb" cluster down --dir "$dir"
echo "== migration benchmark (its own cluster from $ring_first)"
"$bin/rctdb" bench ring --nodes 2 --seconds "${RING_SECONDS:-3}" --first-address "$ring_first"
