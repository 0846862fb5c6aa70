#!/bin/bash
# smbd deletes a locking.tdb record on every last close and a brlock.tdb record on every
# last unlock (an empty record, then SCHEDULE_FOR_DELETION). After a workload that closed
# everything it opened, vacuuming must remove those records from every node's file:
#
#   samba-glue/vacuum_check.sh DIR [SECONDS]
#
# DIR is a `cluster.sh up --backend rctdb` state directory whose rctdbd ran the workload
# with vacuuming off (VacuumInterval 0), so that smbd's deletes are still there: at least
# one empty record must be, or the check would prove nothing. Sets VacuumIntervalMs to 500
# on each rctdbd, then waits up to SECONDS (default 20) until no node's locking.tdb or
# brlock.tdb holds an empty record. Prints the counts before and after. Exit 0 when none is
# left, 1 otherwise (a missing file, nothing deleted to begin with, or records left).
set -euo pipefail

DIR=${1:?usage: vacuum_check.sh DIR [SECONDS]}
WAIT=${2:-20}
RCTDB=${RCTDB_BIN_DIR:?set RCTDB_BIN_DIR to the directory holding rctdb}/rctdb
PYTHON=${PYTHON:-/usr/bin/python3}
DBS="locking.tdb brlock.tdb"

# "total empty" records of one clustered file (empty: the 24-byte header and no data)
count() {
    "$PYTHON" - "$1" <<'EOF'
import os, sys, tdb
t = tdb.Tdb(sys.argv[1], 0, tdb.INCOMPATIBLE_HASH, os.O_RDONLY)
values = [t.get(k) for k in t.keys()]
print(len(values), sum(1 for v in values if v is not None and len(v) == 24))
EOF
}

# every node's counts on one line; sets EMPTY to the empty records of all files
survey() {
    local k db f total empty line=""
    EMPTY=0
    for k in 0 1; do
        for db in $DBS; do
            f="$DIR/rctdb/node$k/$db"
            [ -f "$f" ] || { echo "vacuum_check: no $f" >&2; exit 1; }
            read -r total empty < <(count "$f")
            line+=" node$k/$db=$total($empty empty)"
            EMPTY=$((EMPTY + empty))
        done
    done
    echo "$line"
}

survey >"$DIR/vacuum_check.before"
echo "before:$(cat "$DIR/vacuum_check.before")"
if [ "$EMPTY" -eq 0 ]; then
    echo "vacuum_check: no empty record before vacuuming (was VacuumInterval 0 during the workload?)"
    exit 1
fi
for k in 0 1; do
    "$RCTDB" --socket "$DIR/rctdb/node$k.sock" setvar VacuumIntervalMs 500 >/dev/null
done
deadline=$((SECONDS + WAIT))
while :; do
    survey >"$DIR/vacuum_check.after"
    [ "$EMPTY" -eq 0 ] && break
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "after ${WAIT}s:$(cat "$DIR/vacuum_check.after")"
        echo "vacuum_check: empty records are still there"
        exit 1
    fi
    sleep 0.5 # polling the files while the daemons vacuum
done
echo "after:$(cat "$DIR/vacuum_check.after")"
for k in 0 1; do
    "$RCTDB" --socket "$DIR/rctdb/node$k.sock" status | tr ' ' '\n' |
        grep -E '^vacuum_(deleted|copies_dropped|fetches)=' | tr '\n' ' ' | sed "s/^/node$k: /"
    echo
done
echo "vacuum_check: no empty record left"
