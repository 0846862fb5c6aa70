#!/bin/bash
# One record bouncing between two nodes of a 3-node cluster, every call a migration:
# Samba's ctdbd and our rctdbd, driven by the same C client (anchors' ctdb_ring.c), plus our
# own `rctdb bench ring`, and the loopback TCP round trip as the floor — all in one run.
# Both clusters stay up (on different addresses) but only one is measured at a time; the
# systems take turns, ROUNDS times, and the table shows each row's median round (the lower
# middle one for an even count), so a scheduler mood that lasts a few seconds does not
# decide the ratio.
#
# Usage: benches/ring_vs_ctdbd.sh [SECONDS]      (default 5 per measurement)
# Env:   ROUNDS      turns per system (default 3)
#        CTDB_ANCHORS  the anchors' ctdbd dir (default: ../shared/anchors/ctdbd beside the repo)
#        OURS_FIRST_ADDRESS  node 0 of our cluster (default 127.0.0.21; ctdbd uses .11-.13)
#        RCTDB_BIN   a directory with rctdb and rctdbd to measure instead of building this tree's
#                    (e.g. another worktree's target/release)
#
# Placements (the same for both systems; ctdb_ring.c always uses the key "ringkey-c"):
#   (a) the key's LMASTER is one of the two ring nodes: 2 network messages per migration
#   (b) the key's LMASTER is the third node:             3 network messages per migration
# The LMASTER is vnn_map[jenkins(key) % 3]; the vnn map is read from each running cluster.
# `rctdb bench ring` starts its own cluster (127.0.0.31-33) and picks its own key.
set -euo pipefail

SECS=${1:-5}
ROUNDS=${ROUNDS:-3}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
ANCHORS=${CTDB_ANCHORS:-$ROOT/../shared/anchors/ctdbd}
OURS_FIRST=${OURS_FIRST_ADDRESS:-127.0.0.21}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${RCTDB_BIN:-$TARGET/release}
KEY=ringkey-c
DB=ring.tdb
STEP_TIMEOUT=$(awk -v s="$SECS" 'BEGIN { printf "%d", s + 60 }')

die() { echo "ring_vs_ctdbd: $*" >&2; exit 1; }
[ -f "$ANCHORS/ctdb_ring.c" ] || die "no $ANCHORS/ctdb_ring.c (set CTDB_ANCHORS)"
[[ "$ROUNDS" =~ ^[1-9][0-9]?$ ]] || die "ROUNDS=$ROUNDS: give 1 to 99"

# --- what the run needs --------------------------------------------------------------------
missing=()
command -v ctdbd >/dev/null 2>&1 || [ -x /usr/sbin/ctdbd ] || missing+=(ctdb)
command -v gcc >/dev/null 2>&1 || missing+=(gcc)
[ -f /usr/include/tdb.h ] || missing+=(libtdb-dev)
command -v bc >/dev/null 2>&1 || missing+=(bc) # start_cluster.sh uses it
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing packages: ${missing[*]} (install them, or run as root)"
	echo "installing ${missing[*]}"
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ "$(id -u)" = 0 ] || die "ctdbd's lab runs as root"

if [ -z "${RCTDB_BIN:-}" ]; then
	(cd "$ROOT" && cargo build --release --quiet --bin rctdb --bin rctdbd)
fi
[ -x "$BIN/rctdb" ] && [ -x "$BIN/rctdbd" ] || die "no rctdb/rctdbd in $BIN"
mkdir -p "$TARGET"
gcc -O2 "$ANCHORS/ctdb_ring.c" -o "$TARGET/ctdb_ring"
gcc -O2 "$HERE/loopback_rtt.c" -o "$TARGET/loopback_rtt"
gcc -O2 "$HERE/lmaster.c" -o "$TARGET/lmaster" -ltdb

# --- clean up whatever happens ----------------------------------------------------------------
WORK=$(mktemp -d /tmp/ring_vs_ctdbd.XXXXXX)
export LAB=$WORK/ctdblab
cleanup() {
	set +e
	[ -d "$LAB" ] && bash "$ANCHORS/stop_cluster.sh" >/dev/null 2>&1
	[ -d "$WORK/ours" ] && "$BIN/rctdb" cluster down --dir "$WORK/ours" >/dev/null 2>&1
	[ -d "$WORK/bench" ] && "$BIN/rctdb" cluster down --dir "$WORK/bench" >/dev/null 2>&1
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ROWS=$WORK/rows
: >"$ROWS"
# One measurement: order|system|placement|rate|p50|p99 (order keeps the table's row order).
row() { printf '%s|%s|%s|%s|%s|%s\n' "$1" "$2" "$3" "$4" "$5" "$6" >>"$ROWS"; }
step() { timeout --kill-after=5 "$STEP_TIMEOUT" "$@"; }

# ctdb_ring.c: "... : 45521 calls/s, p50 21 us, p99 45 us"
parse_ring() { sed -E 's/.*: ([0-9.]+) calls\/s, p50 ([0-9.]+) us, p99 ([0-9.]+) us.*/\1 \2 \3/'; }
ring() { # ORDER SYSTEM PLACEMENT DBID SOCKET SOCKET
	local rate p50 p99
	read -r rate p50 p99 < <(step "$TARGET/ctdb_ring" "$4" "$SECS" "$5" "$6" | parse_ring)
	[ -n "$p99" ] || die "$2 $3: ctdb_ring failed"
	row "$1" "$2" "$3" "$rate" "$p50" "$p99"
}

# The two ring nodes of each placement, from the LMASTER of the key: (a) LMASTER and the
# next node, (b) the two nodes that are not the LMASTER.
placements() { # LMASTER -> "a0 a1 b0 b1"
	local l=$1 others=()
	for n in 0 1 2; do [ "$n" = "$l" ] || others+=("$n"); done
	echo "$l ${others[0]} ${others[0]} ${others[1]}"
}

load() { awk '{ printf "%s %s %s", $1, $2, $3 }' /proc/loadavg; }
echo "ring_vs_ctdbd: ${SECS}s per measurement, $ROUNDS rounds, $(nproc) CPUs, rctdbd from $BIN"
echo "load at start: $(load)"

# --- Samba's ctdbd: up ----------------------------------------------------------------------------
. "$ANCHORS/env.sh"
echo "starting ctdbd (LAB=$LAB)"
step bash "$ANCHORS/start_cluster.sh" >"$WORK/ctdbd_start.log" 2>&1 || { cat "$WORK/ctdbd_start.log"; die "ctdbd did not start"; }
grep -q 'cluster healthy' "$WORK/ctdbd_start.log" || { cat "$WORK/ctdbd_start.log"; die "ctdbd cluster not healthy"; }
nctdb 0 attach "$DB" >/dev/null
CTDB_DBID=$(nctdb 0 getdbmap | sed -nE "s/^dbid:0x([0-9a-f]+) name:$DB .*/\1/p")
[ -n "$CTDB_DBID" ] || die "ctdbd: $DB not in getdbmap"
for n in 1 2; do nctdb "$n" getdbmap | grep -q "name:$DB " || die "ctdbd node $n did not attach $DB"; done
# "hash:0 lmaster:0" lines, in hash order: the vnn map
mapfile -t CTDB_VNN < <(nctdb 0 status | sed -nE 's/^hash:[0-9]+ lmaster:([0-9]+)$/\1/p')
[ ${#CTDB_VNN[@]} = 3 ] || die "ctdbd vnn map: ${CTDB_VNN[*]}"
CTDB_L=$("$TARGET/lmaster" "$KEY" "${CTDB_VNN[@]}")
read -r ca0 ca1 cb0 cb1 < <(placements "$CTDB_L")
echo "ctdbd: db $DB 0x$CTDB_DBID, vnn map [${CTDB_VNN[*]}], LMASTER of $KEY: node $CTDB_L"

# --- our rctdbd: up -------------------------------------------------------------------------------
echo "starting rctdbd (first address $OURS_FIRST)"
step "$BIN/rctdb" cluster up --nodes 3 --dir "$WORK/ours" --first-address "$OURS_FIRST" >/dev/null
ours_sock() { echo "$WORK/ours/node$1.sock"; }
for n in 0 1 2; do "$BIN/rctdb" --socket "$(ours_sock $n)" writekey "$DB" attach yes >/dev/null; done
# the database's id (8 hex digits, as ctdb prints it) and the vnn map, from `rctdb status --json`
read -r OUR_DBID OUR_VNN_LIST < <("$BIN/rctdb" --socket "$(ours_sock 0)" status --json | /usr/bin/python3 -c '
import json, sys
status = json.load(sys.stdin)
ids = ["%08x" % db["db_id"] for db in status["dbs"] if db["name"] == sys.argv[1]]
print(ids[0] if ids else "-", ",".join(map(str, status["vnn_map"])))' "$DB")
[ "${OUR_DBID:--}" != - ] || die "rctdbd: $DB not in status"
IFS=, read -r -a OUR_VNN <<<"$OUR_VNN_LIST"
[ ${#OUR_VNN[@]} = 3 ] || die "rctdbd vnn map: ${OUR_VNN[*]}"
OUR_L=$("$TARGET/lmaster" "$KEY" "${OUR_VNN[@]}")
[ "$OUR_L" = "$CTDB_L" ] || echo "note: LMASTER of $KEY is node $OUR_L here, node $CTDB_L on ctdbd"
read -r oa0 oa1 ob0 ob1 < <(placements "$OUR_L")
echo "rctdbd: db $DB 0x$OUR_DBID, vnn map [${OUR_VNN[*]}], LMASTER of $KEY: node $OUR_L"

# --- the rounds: one system measured at a time, taking turns ---------------------------------------
for round in $(seq "$ROUNDS"); do
	echo "round $round/$ROUNDS (load $(load))"
	read -r rate p50 p99 < <(step "$TARGET/loopback_rtt" "$SECS" | sed -E 's/.*: ([0-9.]+) \/s, p50 ([0-9.]+) us, p99 ([0-9.]+) us.*/\1 \2 \3/')
	row 0 "loopback TCP RTT" "-" "$rate" "$p50" "$p99"
	ring 1 "ctdbd + ctdb_ring.c" "(a) LMASTER in ring: nodes $ca0,$ca1" "$CTDB_DBID" "$(node_sock "$ca0")" "$(node_sock "$ca1")"
	ring 3 "rctdbd + ctdb_ring.c" "(a) LMASTER in ring: nodes $oa0,$oa1" "$OUR_DBID" "$(ours_sock "$oa0")" "$(ours_sock "$oa1")"
	ring 2 "ctdbd + ctdb_ring.c" "(b) LMASTER outside: nodes $cb0,$cb1" "$CTDB_DBID" "$(node_sock "$cb0")" "$(node_sock "$cb1")"
	ring 4 "rctdbd + ctdb_ring.c" "(b) LMASTER outside: nodes $ob0,$ob1" "$OUR_DBID" "$(ours_sock "$ob0")" "$(ours_sock "$ob1")"
	# our own client; it starts (and stops) its own cluster while the others sit idle
	for placement in ring other; do
		out=$(step "$BIN/rctdb" bench ring --nodes 2 --seconds "$SECS" --lmaster "$placement" --dir "$WORK/bench")
		read -r rate p50 p99 < <(echo "$out" | awk '/rctdbd migrations/ { print $3, $4, $5 }')
		[ -n "$p99" ] || die "rctdb bench ring --lmaster $placement: $out"
		if [ "$placement" = ring ]; then
			row 5 "rctdbd + rctdb bench ring" "(a) LMASTER in ring: nodes 0,1" "$rate" "$p50" "$p99"
		else
			row 6 "rctdbd + rctdb bench ring" "(b) LMASTER outside: nodes 0,1" "$rate" "$p50" "$p99"
		fi
	done
done
bash "$ANCHORS/stop_cluster.sh" >/dev/null || true # its status is its last kill -0
"$BIN/rctdb" cluster down --dir "$WORK/ours" >/dev/null

# --- the table: each row's median round (by rate), ratios of medians ---------------------------------
echo
echo "load at end: $(load)"
echo "every round (system | placement | migrations/s | p50 us | p99 us):"
sort -t'|' -k1,1n -s "$ROWS" | cut -d'|' -f2- | sed 's/^/  /'
echo
sort -t'|' -k1,1n -k4,4g "$ROWS" | awk -F'|' -v rounds="$ROUNDS" '
	{ n[$1]++; if (n[$1] == int((rounds + 1) / 2)) { sys[$1] = $2; pl[$1] = $3; rate[$1] = $4; p50[$1] = $5; p99[$1] = $6 } }
	END {
		floor = p50[0]
		for (k in sys) if (sys[k] ~ /^ctdbd/) base[substr(pl[k], 1, 3)] = rate[k]
		printf "median of %d rounds\n", rounds
		printf "%-26s %-34s %12s %9s %9s %11s %12s\n", "system", "placement", "migrations/s", "p50 us", "p99 us", "ours/ctdbd", "p99/floor50"
		for (k = 0; k <= 6; k++) {
			if (!(k in sys)) continue
			ratio = "-"
			key = substr(pl[k], 1, 3)
			if (sys[k] ~ /^rctdbd/ && (key in base) && base[key] > 0) ratio = sprintf("%.2f", rate[k] / base[key])
			pf = (k == 0) ? "-" : sprintf("%.1f", p99[k] / floor)
			printf "%-26s %-34s %12.0f %9.1f %9.1f %11s %12s\n", sys[k], pl[k], rate[k], p50[k], p99[k], ratio, pf
		}
		print "goal: ours/ctdbd >= 2 with the same placement; p99 within 2x the loopback floor (p99/floor50 <= 2)"
	}'
