#!/bin/bash
# smbd deletes a locking.tdb record on every last close and a brlock.tdb record on every
# last unlock (an empty record, then SCHEDULE_FOR_DELETION). After a workload that closed
# everything it opened, vacuuming must remove those records from every node's file:
#
#   samba-glue/vacuum_check.sh DIR [SECONDS]
#
# DIR is a `cluster.sh up --backend rctdb` state directory. Sets VacuumInterval to 500 ms
# on each rctdbd, then waits up to SECONDS (default 20) until no node's locking.tdb or
# brlock.tdb holds an empty record. Prints the counts before and after. Exit 0 when none is
# left, 1 otherwise.
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

# every node's counts on one line; exit status 0 when no file has an empty record
survey() {
    local k db line total empty clean=0
    line=""
    for k in 0 1; do
        for db in $DBS; do
            f="$DIR/rctdb/node$k/$db"
            [ -f "$f" ] || continue
            read -r total empty < <(count "$f")
            line+=" node$k/$db=$total($empty empty)"
            [ "$empty" -eq 0 ] || clean=1
        done
    done
    echo "$line"
    return $clean
}

echo "before:$(survey || true)"
for k in 0 1; do
    "$RCTDB" --socket "$DIR/rctdb/node$k.sock" setvar VacuumInterval 500 >/dev/null
done
deadline=$((SECONDS + WAIT))
while ! survey >/dev/null; do
    if [ "$SECONDS" -ge "$deadline" ]; then
        echo "after ${WAIT}s:$(survey || true)"
        echo "vacuum_check: empty records are still there"
        exit 1
    fi
    sleep 0.5
done
echo "after:$(survey)"
for k in 0 1; do
    "$RCTDB" --socket "$DIR/rctdb/node$k.sock" status | tr ' ' '\n' |
        grep -E '^vacuum_(deleted|copies_dropped|fetches)=' | tr '\n' ' ' | sed "s/^/node$k: /"
    echo
done
echo "vacuum_check: no empty record left"
