#!/bin/bash
# Failure, recovery and rejoin times side by side, in one run: Samba's ctdbd (the anchors'
# 3-node loopback lab, start_cluster.sh + failure_test.sh, 127.0.0.11-13) and our rctdbd
# (`rctdb bench recovery`, its own cluster on 127.0.0.51-53), for the same scenarios:
#
#   cold start            start all nodes -> all serving
#   kill -9 non-leader    SIGKILL of a node that does not lead (ctdbd: its TCP links reset)
#   SIGSTOP non-leader    a hung node: only keepalives can tell
#   kill -9 leader        SIGKILL of the node that leads (holds the cluster lock)
#   rejoin                the victim restarted -> all nodes serving again
#
# Times are ms from the fault: detected (a survivor marks the victim dead/disconnected),
# recovered (the survivors serve a new generation: ctdbd's recovery mode NORMAL with a new
# generation), served (a client's read of a record the victim held returned).
#
# What differs, because the anchors' scripts measure it so:
#   - ctdbd runs with its default tunables (KeepaliveInterval 5 s x KeepaliveLimit 5,
#     RerecoveryTimeout 10 s) and holds one record (the test's); rctdbd runs with its defaults
#     (100 ms x 6) and holds RECORDS records.
#   - ctdbd's times come from a shell loop around the `ctdb` tool (a poll every 50 ms plus
#     ~20-30 ms per tool call), so they are good to ~0.1 s; its "served" is a `ctdb readkey`
#     started after the loop saw the recovery. rctdbd's are polled every 2 ms in process, and
#     its client asks at the fault and waits.
#   - failure_test.sh kills a SIGSTOPped ctdbd and restarts it; rctdb SIGCONTs it.
#
# Usage: benches/recovery_vs_ctdbd.sh                  (as root: ctdbd's lab runs as root)
# Env:   RECORDS       record counts for rctdbd, space-separated (default "10000 100000")
#        CTDB_ANCHORS  the anchors' ctdbd dir (default: ../shared/anchors/ctdbd beside the repo)
#        CTDB_NODES    ctdbd's three addresses (default "127.0.0.11 127.0.0.12 127.0.0.13", the
#                      anchors'); the anchors' scripts run from a copy with this NODES line
#        RCTDB_FIRST   node 0 of rctdbd's cluster (default 127.0.0.51, `rctdb bench recovery`'s)
#        RCTDB_BIN     a directory with rctdb and rctdbd to measure instead of building this tree's
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
ANCHORS=${CTDB_ANCHORS:-$ROOT/../shared/anchors/ctdbd}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${RCTDB_BIN:-$TARGET/release}
RECORDS=${RECORDS:-10000 100000}
RCTDB_FIRST=${RCTDB_FIRST:-127.0.0.51}

die() { echo "recovery_vs_ctdbd: $*" >&2; exit 1; }
[ -f "$ANCHORS/failure_test.sh" ] || die "no $ANCHORS/failure_test.sh (set CTDB_ANCHORS)"
for n in $RECORDS; do [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "RECORDS=$RECORDS: give record counts"; done

# --- what the run needs --------------------------------------------------------------------
missing=()
command -v ctdbd >/dev/null 2>&1 || [ -x /usr/sbin/ctdbd ] || missing+=(ctdb)
command -v bc >/dev/null 2>&1 || missing+=(bc) # the anchors' scripts use it
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

# --- clean up whatever happens ----------------------------------------------------------------
WORK=$(mktemp -d /tmp/recovery_vs_ctdbd.XXXXXX)
export LAB=$WORK/ctdblab
OUT=$WORK/out
mkdir -p "$OUT"
cleanup() {
	set +e
	[ -d "$LAB" ] && bash "$ANCHORS/stop_cluster.sh" >/dev/null 2>&1
	"$BIN/rctdb" cluster down --dir "$WORK/ours" >/dev/null 2>&1
	rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
step() { timeout --kill-after=5 "$@"; }
load() { awk '{ printf "%s %s %s", $1, $2, $3 }' /proc/loadavg; }
echo "recovery_vs_ctdbd: $(nproc) CPUs, ctdb $(ctdb version 2>/dev/null), rctdbd from $BIN"
echo "load at start: $(load)"

# --- Samba's ctdbd ----------------------------------------------------------------------------
# The anchors' scripts, copied so that their addresses can move (their env.sh fixes NODES).
CTDB_NODES=${CTDB_NODES:-127.0.0.11 127.0.0.12 127.0.0.13}
for ip in $CTDB_NODES; do
	! ss -Hltn "src $ip:4379" | grep -q . || die "something listens on $ip:4379 already: set CTDB_NODES to three free addresses"
done
cp -r "$ANCHORS" "$WORK/anchors"
chmod -R u+w "$WORK/anchors"
sed -i "s/^NODES=.*/NODES=\"$CTDB_NODES\"/" "$WORK/anchors/env.sh"
ANCHORS=$WORK/anchors
. "$ANCHORS/env.sh"
echo "ctdbd: cold start (LAB=$LAB)"
step 120 bash "$ANCHORS/start_cluster.sh" >"$OUT/ctdbd_start.out" 2>&1 || { cat "$OUT/ctdbd_start.out"; die "ctdbd did not start"; }
grep -q 'cluster healthy' "$OUT/ctdbd_start.out" || { cat "$OUT/ctdbd_start.out"; die "ctdbd cluster not healthy"; }
LEADER=$(nctdb 0 leader)
[[ "$LEADER" =~ ^[0-2]$ ]] || die "ctdbd leader: $LEADER"
OTHER=2; [ "$LEADER" = 2 ] && OTHER=1 # the highest-numbered node that does not lead
echo "ctdbd: leader node $LEADER; non-leader victim node $OTHER"
# Each run restarts its victim and waits until all three nodes are OK again. That restart can
# fail (after `stop`, the killed ctdbd's ctdb-eventd lingers ~3 s and the new ctdbd's event
# daemon cannot start), so the next test starts only once start_cluster.sh saw all three OK.
ctdbd_test() { # NAME MODE VICTIM
	echo "ctdbd: failure_test.sh $2 $3 (load $(load))"
	step 300 bash "$ANCHORS/failure_test.sh" "$2" "$3" >"$OUT/ctdbd_$1.out" 2>&1 \
		|| { cat "$OUT/ctdbd_$1.out"; die "failure_test.sh $2 $3 failed"; }
	grep -q '^\[rejoin\]' "$OUT/ctdbd_$1.out" || echo "  node $3 did not rejoin; starting it again"
	sleep 5 # a killed ctdbd's helpers notice their parent is gone within ~3 s
	step 120 bash "$ANCHORS/start_cluster.sh" >"$OUT/ctdbd_$1_restart.out" 2>&1 \
		&& grep -q 'cluster healthy' "$OUT/ctdbd_$1_restart.out" \
		|| { cat "$OUT/ctdbd_$1_restart.out"; die "ctdbd not healthy after failure_test.sh $2 $3"; }
}
ctdbd_test kill kill "$OTHER"
ctdbd_test stop stop "$OTHER"
LEADER=$(nctdb 0 leader) # it may have moved meanwhile
ctdbd_test leader kill "$LEADER"
bash "$ANCHORS/stop_cluster.sh" >/dev/null || true # its status is its last kill -0

# --- our rctdbd -----------------------------------------------------------------------------------
for n in $RECORDS; do
	echo "rctdbd: rctdb bench recovery --records $n (load $(load))"
	step 1800 "$BIN/rctdb" bench recovery --records "$n" --first-address "$RCTDB_FIRST" --dir "$WORK/ours" \
		>"$OUT/rctdbd_$n.out" 2>&1 \
		|| echo "  (it stopped early or missed a check: see its output below)"
done

# --- the table ----------------------------------------------------------------------------------
# ctdbd: seconds printed as "[12.345] ..." from the fault, and "healthy after X s" / "OK X s after".
ctdb_ms() { awk -v re="$2" '$0 ~ re { s = $0; sub(/^\[/, "", s); sub(/\].*/, "", s); printf "%.0f", s * 1000; exit }' "$1"; }
ctdb_rejoin_ms() { sed -nE 's/^\[rejoin\] all 3 nodes OK ([0-9.]+)s.*/\1/p' "$1" | awk '{ printf "%.0f", $1 * 1000 }'; }
ctdb_row() { # FILE -> "detected recovered served"
	printf '%s %s %s' "$(ctdb_ms "$1" 'observer sees')" "$(ctdb_ms "$1" 'recovery done')" "$(ctdb_ms "$1" '^\[[0-9.]+\] readkey victim')"
}
cold_ctdb=$(sed -nE 's/^cluster healthy after ([0-9.]+) s.*/\1/p' "$OUT/ctdbd_start.out" | awk '{ printf "%.0f", $1 * 1000 }')
declare -A C
C[cold]="- ${cold_ctdb:--} -"
for t in kill stop leader; do
	C[$t]=$(ctdb_row "$OUT/ctdbd_$t.out")
	C[rejoin_$t]="- $(ctdb_rejoin_ms "$OUT/ctdbd_$t.out") -"
done

# rctdbd: the rows of its table, in its fixed order; columns after the 30-character title.
ours_row() { # FILE ROW -> "detected recovered served"
	awk -v want="$2" '/^scenario \(ms from the fault\)/ { t = 1; next } t && NF { n++; if (n == want) { print substr($0, 32) } }' "$1" \
		| awk '{ printf "%s %s %s", $2, $3, $4 }'
}
keys=(cold kill rejoin_kill stop rejoin_stop leader rejoin_leader)
names=("cold start" "kill -9 non-leader" "rejoin after kill -9" "SIGSTOP non-leader" "rejoin after SIGSTOP" "kill -9 leader" "rejoin after leader kill")
echo
echo "load at end: $(load)"
printf '%-26s | %-26s' "ms from the fault" "ctdbd (1 record)"
for n in $RECORDS; do printf ' | %-26s' "rctdbd ($n records)"; done
echo
printf '%-26s | %8s %8s %8s' "" detected recovered served
for n in $RECORDS; do printf ' | %8s %8s %8s' detected recovered served; done
echo
for i in "${!keys[@]}"; do
	read -r d r s <<<"${C[${keys[$i]}]}"
	printf '%-26s | %8s %8s %8s' "${names[$i]}" "${d:--}" "${r:--}" "${s:--}"
	for n in $RECORDS; do
		read -r d r s <<<"$(ours_row "$OUT/rctdbd_$n.out" $((i + 1)))"
		printf ' | %8s %8s %8s' "${d:--}" "${r:--}" "${s:--}"
	done
	echo
done
echo "ctdbd rejoin after SIGSTOP: failure_test.sh SIGKILLs the stopped node and restarts it (rctdbd: SIGCONT);"
echo "  '-' when that restart failed (the old ctdb-eventd still ran) and the node did not rejoin."
echo "ctdbd rejoin rows: restart -> all 3 nodes OK, recovery mode NORMAL (recovered column)."
echo
for f in "$OUT"/ctdbd_start.out "$OUT"/ctdbd_kill.out "$OUT"/ctdbd_stop.out "$OUT"/ctdbd_leader.out "$OUT"/rctdbd_*.out; do
	echo "===== $(basename "$f")"
	cat "$f"
done
