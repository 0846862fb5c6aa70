#!/bin/bash
# The tdb preload (libtdb-rctdb.so) end to end:
#
#   test_preload.sh [unit|smbd|split|all]     (default all)
#
#   unit   the preload exports exactly libtdb's functions, covers every one smbd's libraries
#          import, loads into smbd with LD_BIND_NOW, binds Samba's tdb calls to itself and
#          librctdb's to libtdb; preload_check on a routed and a plain database, unclustered
#          and clustered, and across fork (a child never uses its parent's rctdbd connection)
#   smbd   one stock smbd (clustering = no) on 127.0.0.5 with the preload, its locking.tdb
#          and brlock.tdb on node 0 of a 2-node rctdb cluster (127.0.0.31-32), passes
#          raw.oplock base.lock base.deny2 base.ntdeny2 base.open
#   split  a second smbd on 127.0.0.6 on node 1, same directory: the two see each other's
#          records (they migrate), yet node B grants a byte-range lock and an open that
#          conflict with node A's: why cross-node coherence needs smbd's clustered mode
#          (rctdbd speaking ctdbd's protocol)
#
# Environment: RCTDB_BIN_DIR (rctdb, rctdbd, librctdb.so; default the repository's
# target/release), RCTDB_SAMBA_DBS (databases routed, default locking.tdb,brlock.tdb),
# TORTURE_TESTS (the smbtorture tests of `smbd`, space-separated), SMBPASS, KEEP=1 keeps
# the work directory. Needs root (port 445), samba, smbclient, samba-testsuite, libtdb-dev,
# gcc, python3 with smbprotocol (split; pip-installed if missing). Every server it starts
# is stopped on exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
# shellcheck source=../torture_log.sh
. "$HERE/../torture_log.sh"
BIN=${RCTDB_BIN_DIR:-$REPO/target/release}
PASS=${SMBPASS:-Preload.Pass1}
DBS=${RCTDB_SAMBA_DBS-locking.tdb,brlock.tdb}
IP_A=127.0.0.5
IP_B=127.0.0.6
FIRST_NODE_IP=127.0.0.31
read -r -a TESTS <<<"${TORTURE_TESTS:-raw.oplock base.lock base.deny2 base.ntdeny2 base.open}"
WHAT=${1:-all}
case $WHAT in unit | smbd | split | all) ;; *) echo "usage: test_preload.sh [unit|smbd|split|all]" >&2; exit 2 ;; esac

for f in rctdb rctdbd librctdb.so; do
    [ -e "$BIN/$f" ] || { echo "test_preload.sh: no $BIN/$f (cargo build --release, or set RCTDB_BIN_DIR)" >&2; exit 2; }
done
WORK=$(mktemp -d /tmp/rctdb-preload.XXXXXX)
OUT=$WORK/build
PRELOAD=$OUT/libtdb-rctdb.so
# Debian's interpreter, where setup.sh installs python3-tdb and smbprotocol.
PYTHON=${PYTHON:-/usr/bin/python3}
CHECK=$OUT/preload_check
CLUSTER=$WORK/cluster
SMBD_PIDS=()

cleanup() {
    local pid
    for pid in "${SMBD_PIDS[@]}"; do
        # each smbd was started with setsid: its process group is its own pid
        kill -TERM -- "-$pid" 2>/dev/null || true
    done
    for pid in "${SMBD_PIDS[@]}"; do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL -- "-$pid" 2>/dev/null || true
    done
    [ -d "$CLUSTER" ] && timeout 60 "$BIN/rctdb" cluster down --dir "$CLUSTER" >/dev/null 2>&1 || true
    if [ "${KEEP:-0}" = 1 ]; then echo "work directory kept: $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

failures=0
pass() { echo "ok   $*"; }
fail() { echo "FAIL $*"; failures=$((failures + 1)); }

echo "== build"
make -s -C "$HERE" OUT="$OUT" RCTDB_INCLUDE="$REPO/include" >/dev/null
echo "$PRELOAD"

# The environment of a process on the preload; $1: the socket of its rctdbd, or "".
preload_env() {
    local socket=$1
    echo "LD_PRELOAD=$PRELOAD RCTDB_LIBRCTDB=$BIN/librctdb.so RCTDB_SAMBA_DBS=$DBS${socket:+ RCTDB_SOCKET=$socket}"
}

cluster_up() {
    [ -S "$CLUSTER/node0.sock" ] && return 0
    timeout 120 "$BIN/rctdb" cluster up --dir "$CLUSTER" --nodes 2 --first-address "$FIRST_NODE_IP" |
        sed 's/^/     /'
}

unit() {
    local libtdb exported imported missing unclustered_dir clustered_dir got
    echo "== unit"
    libtdb=$(ldconfig -p | awk '/libtdb\.so\.1 / {print $NF; exit}')
    nm -D --defined-only "$libtdb" | awk '$2 == "T" {sub(/@.*/, "", $3); print $3}' | sort >"$WORK/libtdb.syms"
    nm -D --defined-only "$PRELOAD" | awk '{print $3}' | sort >"$WORK/preload.syms"
    exported=$(wc -l <"$WORK/preload.syms")
    if diff -q "$WORK/libtdb.syms" "$WORK/preload.syms" >/dev/null; then
        pass "the preload exports exactly libtdb's $exported functions and nothing else"
    else
        fail "exports differ from libtdb's: $(diff "$WORK/libtdb.syms" "$WORK/preload.syms" | grep '^[<>]' | tr '\n' ' ')"
    fi
    for lib in $(ldd /usr/sbin/smbd | awk '$3 ~ /^\// {print $3}'); do
        nm -D --undefined-only "$lib" | awk '{sub(/@.*/, "", $2); print $2}'
    done | sort -u | comm -12 - "$WORK/libtdb.syms" >"$WORK/smbd.imports"
    imported=$(wc -l <"$WORK/smbd.imports")
    missing=$(comm -23 "$WORK/smbd.imports" "$WORK/preload.syms" | tr '\n' ' ')
    [ -z "$missing" ] && pass "smbd's libraries import $imported libtdb functions; the preload defines all" ||
        fail "the preload lacks $missing"

    if LD_BIND_NOW=1 LD_DEBUG=bindings LD_PRELOAD=$PRELOAD /usr/sbin/smbd --version \
        >"$WORK/version.txt" 2>"$WORK/bindings.txt"; then
        pass "LD_BIND_NOW=1 smbd --version on the preload: $(cat "$WORK/version.txt")"
    else
        fail "smbd does not load with the preload and LD_BIND_NOW=1"
    fi
    # Samba's references to libtdb functions, and where the dynamic linker bound them
    # (dlsym lookups of our own show no version and are left out).
    # Every one must go to the preload, or smbd would use libtdb behind its back.
    if bound=$("$PYTHON" - "$WORK/bindings.txt" "$WORK/libtdb.syms" <<'EOF'
import re, sys
functions = set(open(sys.argv[2]).read().split())
targets = {}
for line in open(sys.argv[1]):
    m = re.search(r"binding file (\S+) \[0\] to (\S+) \[0\]: normal symbol `(\w+)' \[TDB_", line)
    if m and m.group(3) in functions:
        targets.setdefault(m.group(2).rsplit("/", 1)[-1], set()).add((m.group(1), m.group(3)))
print("in smbd, versioned references to libtdb functions bound to: " +
      ", ".join(f"{t} {len(refs)}" for t, refs in sorted(targets.items())) +
      " (libtdb's own calls to itself included: they come back through the preload)")
sys.exit(0 if targets and set(targets) == {"libtdb-rctdb.so"} else 1)
EOF
    ); then
        pass "$bound"
    else
        fail "$bound"
    fi

    cluster_up
    unclustered_dir=$WORK/unclustered
    clustered_dir=$WORK/clustered
    mkdir -p "$unclustered_dir" "$clustered_dir"
    for mode in calls fork; do
        if env $(preload_env "") RCTDB_PRELOAD_LOG="$WORK/unit.log" timeout 120 "$CHECK" "$unclustered_dir" "$mode" \
            >"$WORK/unit-$mode-local.txt" 2>&1; then
            sed 's/^ok: /ok   unclustered: /' "$WORK/unit-$mode-local.txt"
        else
            fail "preload_check $mode, unclustered:"; sed 's/^/     /' "$WORK/unit-$mode-local.txt"
        fi
        if env $(preload_env "$CLUSTER/node0.sock") RCTDB_PRELOAD_LOG="$WORK/unit.log" timeout 120 \
            "$CHECK" "$clustered_dir" "$mode" >"$WORK/unit-$mode-cluster.txt" 2>&1; then
            sed 's/^ok: /ok   clustered: /' "$WORK/unit-$mode-cluster.txt"
        else
            fail "preload_check $mode, clustered:"; sed 's/^/     /' "$WORK/unit-$mode-cluster.txt"
        fi
    done
    env $(preload_env "$CLUSTER/node0.sock") timeout 60 "$CHECK" "$clustered_dir" store alice "from node 0"
    got=$(env $(preload_env "$CLUSTER/node1.sock") timeout 60 "$CHECK" "$WORK/elsewhere" fetch alice 2>&1 || true)
    [ "$got" = "from node 0" ] && pass "locking.tdb record stored through node 0, fetched through node 1: \"$got\"" ||
        fail "cross-node fetch got \"$got\""
    if [ ! -e "$clustered_dir/locking.tdb" ]; then
        fail "clustered: no $clustered_dir/locking.tdb marker (tdb_fd needs it)"
    elif [ -s "$clustered_dir/locking.tdb" ]; then
        fail "clustered: $clustered_dir/locking.tdb has data: a local file was written"
    else
        pass "clustered: the caller's locking.tdb is an empty marker (tdb_fd); the records are rctdbd's"
    fi
    # librctdb opened RTLD_DEEPBIND: its tdb calls go to libtdb, not back to the preload.
    env $(preload_env "$CLUSTER/node0.sock") LD_DEBUG=bindings timeout 60 "$CHECK" "$clustered_dir" fetch alice \
        >/dev/null 2>"$WORK/bindings2.txt" || true
    got=$(grep "binding file $BIN/librctdb.so \[0\] to" "$WORK/bindings2.txt" | grep -c "symbol \`tdb_" || true)
    if [ "$got" -gt 0 ] && ! grep "binding file $BIN/librctdb.so \[0\] to" "$WORK/bindings2.txt" |
        grep "symbol \`tdb_" | grep -q libtdb-rctdb; then
        pass "librctdb's $got tdb_* references bind to libtdb.so.1 (RTLD_DEEPBIND), none to the preload"
    else
        fail "librctdb's tdb_* references: $got found, or some bound to the preload"
    fi
}

# smb.conf for an smbd with its own state under $1, serving $3 on address $2.
write_smb_conf() {
    local d=$1 ip=$2 share=$3 name=$4
    mkdir -p "$d"/{lock,state,cache,private,pid,ncalrpc,log}
    cat >"$d/smb.conf" <<EOF
[global]
	netbios name = $name
	workgroup = RCTDB
	server role = standalone server
	clustering = no
	interfaces = $ip/8
	bind interfaces only = yes
	smb ports = 445
	disable netbios = yes
	lock directory = $d/lock
	state directory = $d/state
	cache directory = $d/cache
	private dir = $d/private
	pid directory = $d/pid
	ncalrpc dir = $d/ncalrpc
	log file = $d/log/log.%m
	max log size = 0
	log level = 1
	load printers = no
	printing = bsd
	printcap name = /dev/null
	disable spoolss = yes
	passdb backend = tdbsam
	posix locking = no
	kernel share modes = no
	kernel oplocks = no
	rpc start on demand helpers = no
	smbd:backgroundqueue = no
	server min protocol = NT1
	ntlm auth = yes
[share]
	path = $share
	read only = no
EOF
}

# Starts smbd NAME on IP with the preload, talking to rctdb node NODE.
start_smbd() {
    local name=$1 ip=$2 node=$3 d=$WORK/$1 pid
    if ss -Hltn "src $ip:445" 2>/dev/null | grep -q .; then
        echo "test_preload.sh: $ip:445 is taken: $(ss -Hltnp "src $ip:445" | head -1)" >&2
        return 1
    fi
    write_smb_conf "$d" "$ip" "$WORK/share" "PRELOAD$node"
    printf '%s\n%s\n' "$PASS" "$PASS" | smbpasswd -s -a root -c "$d/smb.conf" >/dev/null 2>&1
    env $(preload_env "$CLUSTER/node$node.sock") RCTDB_PRELOAD_LOG="$d/log/preload.log" \
        setsid /usr/sbin/smbd --foreground --no-process-group -s "$d/smb.conf" >"$d/log/stdout" 2>&1 &
    pid=$!
    SMBD_PIDS+=("$pid")
    for _ in $(seq 100); do
        ss -Hltn "src $ip:445" 2>/dev/null | grep -q . && { echo "     smbd $name on $ip, pid $pid, rctdb node $node"; return 0; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    echo "test_preload.sh: smbd $name did not start:" >&2
    tail -20 "$d/log/log.smbd" "$d/log/stdout" >&2 2>/dev/null || true
    return 1
}

# One smbtorture test against $IP_A; a test passes only with exit status 0, no failure: or
# error: line, at least one success:, and no "(N failures)" count of its own.
torture() {
    local test=$1 log=$WORK/torture/$1.log rc=0 extra=() start=$SECONDS
    mkdir -p "$WORK/torture"
    [ "$test" = base.ntdeny2 ] && extra=(--num-ops=500)
    # --target=samba3: Samba's documented deviations from Windows (raw.oplock's setpathinfo
    # break counts, stream1) are expected, as for any smbd.
    timeout --kill-after=10 600 smbtorture --target=samba3 "//$IP_A/share" -U "root%$PASS" \
        --failures=1000 --option=torture:progress=no "${extra[@]}" "$test" >"$log" 2>&1 || rc=$?
    torture_counts "$log"
    if torture_passed "$rc"; then
        pass "$test: $TORTURE_GOOD passed, $TORTURE_SKIPPED skipped, 0 failed ($((SECONDS - start)) s)"
    else
        fail "$test: $TORTURE_GOOD passed, $TORTURE_SKIPPED skipped, $TORTURE_BAD failed, exit status $rc; log $log"
        tr '\r' '\n' <"$log" | grep -E '^(failure|error):' -A2 | head -20 | sed 's/^/     /'
    fi
}

smbd_single() {
    echo "== smbd on the preload ($IP_A, rctdb node 0; routed: $DBS)"
    cluster_up
    mkdir -p "$WORK/share" && chmod 777 "$WORK/share"
    start_smbd a "$IP_A" 0
    for test in "${TESTS[@]}"; do torture "$test"; done
    local log=$WORK/a/log/preload.log
    local routed errors summary
    routed=$(grep -c 'routed to rctdb' "$log" || true)
    errors=$(grep -c ': error: ' "$log" || true)
    summary="preload log: $routed routed opens, $(grep -c 'tdb_reopen_all in process' "$log" || true) forked children reopened theirs, $errors errors"
    # Without routed opens smbd ran on local files and smbtorture proved nothing about us.
    if [ "$routed" -gt 0 ] && [ "$errors" -eq 0 ]; then pass "$summary"; else fail "$summary"; fi
    grep ': error: ' "$log" | head -5 | sed 's/^/     /' || true
    "$BIN/rctdb" --socket "$CLUSTER/node0.sock" status | grep -E '^(db|stats) ' | sed 's/^/     /'
}

split() {
    echo "== two unclustered smbd on one rctdb cluster ($IP_A on node 0, $IP_B on node 1, one directory)"
    cluster_up
    mkdir -p "$WORK/share" && chmod 777 "$WORK/share"
    ss -Hltn "src $IP_A:445" 2>/dev/null | grep -q . || start_smbd a "$IP_A" 0
    start_smbd b "$IP_B" 1
    "$PYTHON" -c 'import smbprotocol' 2>/dev/null ||
        "$PYTHON" -m pip install --quiet --break-system-packages smbprotocol >/dev/null 2>&1 ||
        "$PYTHON" -m pip install --quiet smbprotocol >/dev/null
    echo "     smbd processes: A $(pgrep -s "${SMBD_PIDS[0]}" | tr '\n' ' ')| B $(pgrep -s "${SMBD_PIDS[-1]}" | tr '\n' ' ')"
    local records headers0 headers1 rc=0
    records="env $(preload_env "$CLUSTER/node1.sock") $CHECK $WORK/b/lock dump brlock.tdb"
    headers0="node 0=env RCTDB_SAMBA_DBS= LD_PRELOAD=$PRELOAD $CHECK - headers $CLUSTER/node0/brlock.tdb"
    headers1="node 1=env RCTDB_SAMBA_DBS= LD_PRELOAD=$PRELOAD $CHECK - headers $CLUSTER/node1/brlock.tdb"
    timeout 120 "$PYTHON" "$HERE/split_brain_demo.py" "$IP_A" "$IP_B" --password "$PASS" \
        --records "$records" --where "$headers0" --where "$headers1" | sed 's/^/     /' || rc=$?
    [ "$rc" -eq 0 ] && pass "split brain shown: records shared and migrating, conflicts granted across nodes" ||
        fail "the split-brain demo did not show what it claims (exit status $rc)"
}

case $WHAT in
unit) unit ;;
smbd) smbd_single ;;
split) split ;;
all) unit; smbd_single; split ;;
esac
echo "== $([ $failures -eq 0 ] && echo "all passed" || echo "$failures FAILED")"
[ $failures -eq 0 ]
