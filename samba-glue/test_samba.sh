#!/bin/bash
# Stock smbd on rctdbd, end to end, in under five minutes:
#
#   samba-glue/test_samba.sh [BIN_DIR]       (BIN_DIR holds rctdb and rctdbd; default
#                                            $RCTDB_BIN_DIR, else the newer of
#                                            target/release and target/debug)
#
# 1. cluster.sh up --backend rctdb in a temporary directory: two rctdbd, two smbd with
#    clustering = yes on 127.0.0.2 and 127.0.0.3 sharing one directory;
# 2. smb_coherence.py across the two: every cross-node check must pass;
# 3. torture.sh: raw.oplock, base.lock, base.deny2, base.ntdeny2, base.open must pass;
#    then vacuum_check.sh: the records smbd deleted meanwhile are vacuumed from both nodes;
# 4. link_blips.py: node B's node links are killed with `ss -K` every 0.3 s for 20 s while
#    a client on B tries conflicting opens and locks against A's: every one is refused;
# 5. daemon_stall.py: the rctdbd of the node that does not lead is SIGSTOPped for 3 s
#    while its smbd serves a client that holds opens and a lock: a client on the other
#    node is refused every conflicting open and lock until that smbd has ended (its fencing);
#    the fenced smbd is started again;
# 6. node_failure.py: node A (its rctdbd and its smbd) is killed while files are open on
#    both nodes; node B keeps its own opens and locks, frees A's, and serves on;
# 7. the same two smbd with clustering = no (backend plain) over one directory must show
#    the split brain the cluster prevents: at least one coherence check fails (otherwise
#    the checks would prove nothing).
# Everything started is stopped on exit. Builds nothing. Needs root (port 445), smbd,
# smbclient, smbtorture (samba, smbclient, samba-testsuite); smb_coherence.py installs
# smbprotocol for $PYTHON (default /usr/bin/python3) if missing.
#
# Exit status: 0 passed; 1 failed (the state directory is kept and named); 77 a
# prerequisite is missing (nothing was run). KEEP=1 keeps the state directory anyway.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
# everything, teardown included, ends within this many seconds
TOTAL=${TEST_SAMBA_SECONDS:-320}
TEARDOWN_RESERVE=30

skip() { echo "test_samba: SKIP: $*"; exit 77; }

BIN_DIR=${1:-${RCTDB_BIN_DIR:-}}
if [ -z "$BIN_DIR" ]; then
    for d in "$REPO/target/release" "$REPO/target/debug"; do
        if [ ! -x "$d/rctdb" ] || [ ! -x "$d/rctdbd" ]; then continue; fi
        if [ -z "$BIN_DIR" ] || [ "$d/rctdbd" -nt "$BIN_DIR/rctdbd" ]; then BIN_DIR=$d; fi
    done
fi
if [ -z "$BIN_DIR" ] || [ ! -x "$BIN_DIR/rctdb" ] || [ ! -x "$BIN_DIR/rctdbd" ]; then
    skip "no rctdb and rctdbd (give BIN_DIR or RCTDB_BIN_DIR; this script builds nothing)"
fi
BIN_DIR=$(cd "$BIN_DIR" && pwd)
[ "$(id -u)" = 0 ] || skip "smbd must bind port 445: run as root"
for tool in /usr/sbin/smbd smbclient smbtorture smbpasswd; do
    command -v "$tool" >/dev/null || skip "no $tool (apt-get install samba smbclient samba-testsuite)"
done
PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi
command -v "$PYTHON" >/dev/null || skip "no $PYTHON"

STATE=$(mktemp -d /tmp/rctdb-samba.XXXXXX)
export RCTDB_BIN_DIR=$BIN_DIR
export SMBPASS=${SMBPASS:-Rctdb.Pass1}
failures=()

# shellcheck disable=SC2317  # invoked by the EXIT trap
teardown() {
    local status=$?
    trap - EXIT INT TERM
    for d in "$STATE/rctdb-backend" "$STATE/plain-backend"; do
        if [ -d "$d" ]; then timeout 25 "$HERE/cluster.sh" down "$d" >>"$STATE/teardown.log" 2>&1 || true; fi
    done
    if [ "$status" -eq 0 ] && [ "${KEEP:-0}" != 1 ]; then
        rm -rf "$STATE"
    else
        echo "test_samba: state, smbd logs (nodeK/log/log.smbd) and rctdbd logs (rctdb/nodeK.log) in $STATE"
    fi
    exit "$status"
}
trap teardown EXIT
trap 'exit 1' INT TERM

# Seconds left for a step: at most $1, and never into the teardown's reserve.
budget() {
    local left=$((TOTAL - TEARDOWN_RESERVE - SECONDS))
    [ "$left" -gt 0 ] || left=1
    [ "$1" -lt "$left" ] && left=$1
    echo "$left"
}

# step NAME MAX_SECONDS CMD...: run, record a failure, never stop the script
step() {
    local name=$1 limit rc=0
    limit=$(budget "$2")
    shift 2
    echo "== $name"
    timeout --kill-after=5 "$limit" "$@" || rc=$?
    if [ "$rc" -ne 0 ]; then
        [ "$rc" -eq 124 ] && echo "   (timed out after ${limit}s)"
        failures+=("$name")
    fi
    return "$rc"
}

# Backend rctdb: must be coherent and pass smbtorture.
A="$STATE/rctdb-backend"
if step "rctdb: cluster up" 90 "$HERE/cluster.sh" up "$A" --backend rctdb; then
    step "rctdb: smb_coherence.py 127.0.0.2 127.0.0.3" 60 \
        "$PYTHON" "$HERE/smb_coherence.py" --timeout 15 127.0.0.2 127.0.0.3 || true
    # smbtorture deletes what it opened and locked: keep those deletes for vacuum_check.sh
    for k in 0 1; do
        "$BIN_DIR/rctdb" --socket "$A/rctdb/node$k.sock" setvar VacuumInterval 0 >/dev/null || true
    done
    TORTURE_TIMEOUT=120 step "rctdb: torture.sh" 200 "$HERE/torture.sh" "$A" || true
    # Everything is closed now: smbd's deleted records must be vacuumed from both nodes.
    step "rctdb: vacuum_check.sh (smbd's deletes vacuumed)" 30 "$HERE/vacuum_check.sh" "$A" 20 || true
    # Link blips must be invisible to smbd: a conflicting open or lock is never granted.
    echo "== rctdb: link_blips.py (B's node links killed every 0.3 s for 20 s)"
    rc=0
    timeout --kill-after=5 "$(budget 60)" "$PYTHON" "$HERE/link_blips.py" --kill-address 127.0.0.3 \
        --seconds 20 --every 0.3 127.0.0.2 127.0.0.3 || rc=$?
    case $rc in
        0) ;;
        77) echo "   link blips: SKIPPED (ss -K cannot kill sockets here)" ;;
        *) failures+=("rctdb: link_blips.py") ;;
    esac
    # A stalled daemon's node is fenced before the other node grants what its clients hold.
    step "rctdb: daemon_stall.py (the follower's rctdbd stopped for 3 s)" 40 \
        "$PYTHON" "$HERE/daemon_stall.py" --stall 3 --after 5 "$A" || true
    # the fencing ended that node's smbd: serve again for node_failure.py
    step "rctdb: cluster up (smbd after the fencing)" 30 "$HERE/cluster.sh" up "$A" --backend rctdb || true
    # Last: it leaves the cluster with one node. smbd exits by itself when its rctdbd dies.
    kill_a="'$BIN_DIR/rctdb' cluster kill --dir '$A/rctdb' --node 0; pkill -9 -x -f '/usr/sbin/smbd -D -s $A/node0/smb.conf'; true"
    step "rctdb: node_failure.py (node A killed under open files)" 60 \
        "$PYTHON" "$HERE/node_failure.py" --within 30 --kill "$kill_a" 127.0.0.2 127.0.0.3 || true
    # controls smbd sent that rctdbd refuses, persistent databases smbd tried to attach
    if grep -h -E 'not served by rctdbd|persistent database|ERROR' "$A"/rctdb/node*.log \
        >"$STATE/rctdbd-refusals.txt" 2>/dev/null; then
        echo "== rctdbd refusals (first 10 of $(wc -l <"$STATE/rctdbd-refusals.txt")):"
        head -10 "$STATE/rctdbd-refusals.txt" | sed 's/^/   /'
    fi
else
    tail -n 6 "$A"/rctdb/node*.log "$A"/node*/log/log.smbd 2>/dev/null | sed 's/^/   /' || true
fi
timeout 25 "$HERE/cluster.sh" down "$A" >>"$STATE/teardown.log" 2>&1 || true

# Backend plain: the control case must show the split brain.
P="$STATE/plain-backend"
if step "plain: cluster up" 45 "$HERE/cluster.sh" up "$P" --backend plain; then
    step "plain: smb_coherence.py --expect-split-brain" 45 \
        "$PYTHON" "$HERE/smb_coherence.py" --timeout 10 --expect-split-brain 127.0.0.2 127.0.0.3 || true
fi
timeout 25 "$HERE/cluster.sh" down "$P" >>"$STATE/teardown.log" 2>&1 || true

if [ ${#failures[@]} -eq 0 ]; then
    echo "test_samba: PASS (${SECONDS}s)"
    exit 0
fi
echo "test_samba: FAIL (${SECONDS}s): ${failures[*]}"
exit 1
