#!/bin/bash
# Stock smbd on three databases, measured by smbtorture's bench tests in one run:
#
#   benches/samba_bench.sh            (as root; SECS=15 by default, about 4-5 minutes)
#
# Configurations, one at a time (rctdbd and ctdbd both listen on port 4379, and the
# plain and rctdb smbd share 127.0.0.2-3), each brought up and torn down by
# samba-glue/cluster.sh with the same /usr/sbin/smbd and the same smb.conf apart from
# `clustering`:
#
#   plain  one unclustered smbd (127.0.0.2; cluster.sh starts a second, idle one on .3)
#   ctdbd  two smbd (127.0.0.11/.12) on Samba's ctdbd (the anchors' lab scripts: 3 nodes,
#          127.0.0.11-13, as in the anchors' figures; CTDBD_NODES=2 runs only .11 and .12)
#   rctdb  two smbd (127.0.0.2/.3) on two rctdbd built from this tree (release)
#
# Workloads, NPROCS (4) connections for SECS seconds, torture:progress=no:
#
#   path-contention  smb2.bench.path-contention-shared: every connection opens and
#                    closes the share's root directory. torture:unclist alternates the
#                    connections between the two nodes, so the locking.tdb record of
#                    that directory moves between them on (almost) every open.
#   lock             raw.bench-lock: every connection locks and unlocks byte ranges of
#                    one file, each waiting for the range its neighbour holds. Same
#                    unclist; the brlock.tdb record of the file moves between the nodes.
#   no-contention    smb2.bench.path-contention-shared again, but as NPROCS smbtorture
#                    processes of one connection each, connection k on node k mod 2 and
#                    opening its own directory nc\ck (torture:bench_path), so no record
#                    of a file is wanted by two nodes. Plain: the same NPROCS processes
#                    and directories on the one plain smbd, i.e. the same total work.
#
# opens/s is the `open[num/s=N]` of the test's final line (summed over the processes for
# no-contention); lock ops/s is the sum of the per-connection counts over SECS, as the
# anchors' bench_smb.sh computes it. After each workload the daemons' counters are
# printed: ctdbd's `ctdb statistics` (reset before), rctdbd's `stats` and link packet
# counts from `rctdb status` (difference of before and after).
#
# The table at the end gives ours/ctdbd and ours/plain for each workload against the
# issue's goals (>= 2x ctdbd opens/s, >= 5x ctdbd lock ops/s, >= 0.9x plain without
# contention). Every line also goes to RESULTS.
#
# Environment: SECS (15), NPROCS (4), CONFIGS ("plain ctdbd rctdb"), RESULTS (default
# benches/results/samba_bench.txt), RCTDB_BIN_DIR (rctdb/rctdbd to use; default
# target/release, built first with cargo), CTDBD_NODES (3), RUN_LIMIT (470 s: the run stops and tears down
# after this), WAIT_FREE (60 s to wait for another user's smbd or ctdbd to leave the
# addresses a configuration needs), SMBPASS, CTDBD_ANCHOR, KEEP=1 keeps the work directory.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CLUSTER_SH=$REPO/samba-glue/cluster.sh
SECS=${SECS:-15}
NPROCS=${NPROCS:-4}
CONFIGS=${CONFIGS:-"plain ctdbd rctdb"}
RESULTS=${RESULTS:-$REPO/benches/results/samba_bench.txt}
RUN_LIMIT=${RUN_LIMIT:-470}
WAIT_FREE=${WAIT_FREE:-60}
CTDBD_NODES=${CTDBD_NODES:-3}
PASS=${SMBPASS:-Rctdb.Pass1}
export SMBPASS=$PASS
# smbd at level 0 so its own logging is not what we measure
export SMBLOGLEVEL=${SMBLOGLEVEL:-0}

die() {
    echo "samba_bench.sh: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || die "run as root (smbd binds port 445)"
command -v smbtorture >/dev/null || die "no smbtorture (apt-get install samba-testsuite)"
[ -x /usr/sbin/smbd ] || die "no /usr/sbin/smbd (apt-get install samba)"
[ -f "$CLUSTER_SH" ] || die "no $CLUSTER_SH"
[[ $SECS =~ ^[0-9]+$ ]] && [ "$SECS" -gt 0 ] || die "SECS must be a positive integer"
[ "$CTDBD_NODES" = 2 ] || [ "$CTDBD_NODES" = 3 ] || die "CTDBD_NODES must be 2 or 3"
[[ $NPROCS =~ ^[0-9]+$ ]] && [ "$NPROCS" -gt 0 ] || die "NPROCS must be a positive integer"

WORK=$(mktemp -d /tmp/samba_bench.XXXXXX)
UP_DIRS=()
WATCHDOG=""

# Every cluster this run brought up goes down, however the run ends. cluster.sh down
# stops only the processes whose pid files are in our directories.
teardown() {
    local d
    for d in "${UP_DIRS[@]}"; do
        timeout 90 bash "$CLUSTER_SH" down "$d" >>"$WORK/teardown.log" 2>&1 ||
            echo "samba_bench.sh: teardown of $d failed; see $WORK/teardown.log" >&2
    done
    UP_DIRS=()
    [ -n "$WATCHDOG" ] && kill "$WATCHDOG" 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then
        echo "work directory kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap teardown EXIT
trap 'echo "samba_bench.sh: interrupted" >&2; exit 130' INT TERM

# The whole run is bounded: after RUN_LIMIT seconds the watchdog TERMs us (the trap
# tears down; a running smbtorture ends first, within its own timeout).
(
    sleep "$RUN_LIMIT" &
    nap=$!
    trap 'kill $nap 2>/dev/null; exit 0' TERM
    wait $nap || exit 0
    echo "samba_bench.sh: RUN_LIMIT ${RUN_LIMIT}s reached" >&2
    kill -TERM $$ 2>/dev/null
) &
WATCHDOG=$!

mkdir -p "$(dirname "$RESULTS")"
: >"$RESULTS"
# a line for the screen and the results file
say() { echo "$*" | tee -a "$RESULTS"; }
# raw output: the results file only
raw() { cat >>"$RESULTS"; }

# rctdb binaries: an explicit RCTDB_BIN_DIR is used as it is; else a release build of
# this tree (cargo only rebuilds what changed).
if [ -n "${RCTDB_BIN_DIR:-}" ]; then
    BINS=$RCTDB_BIN_DIR
elif [[ " $CONFIGS " == *" rctdb "* ]]; then
    BINS=$REPO/target/release
    if command -v cargo >/dev/null; then
        echo "building rctdb (cargo build --release --bins)"
        (cd "$REPO" && cargo build --release --bins) >"$WORK/build.log" 2>&1 ||
            { tail -20 "$WORK/build.log" >&2; die "cargo build --release failed"; }
    fi
else
    BINS=$REPO/target/release
fi
if [[ " $CONFIGS " == *" rctdb "* ]]; then
    [ -x "$BINS/rctdb" ] && [ -x "$BINS/rctdbd" ] || die "no rctdb and rctdbd in $BINS"
fi
export RCTDB_BIN_DIR=$BINS

# The anchors' lab has three ctdbd; for two, cluster.sh runs a copy of its scripts whose
# env.sh lists only the two addresses our smbd use.
CTDBD_ANCHOR=${CTDBD_ANCHOR:-/work/shared/anchors/ctdbd}
if [ "$CTDBD_NODES" = 2 ] && [[ " $CONFIGS " == *" ctdbd "* ]]; then
    cp -r "$CTDBD_ANCHOR" "$WORK/anchor2"
    sed -i -e 's/^NODES=.*/NODES="127.0.0.11 127.0.0.12"/' -e 's/^NNODES=.*/NNODES=2/' "$WORK/anchor2/env.sh"
    CTDBD_ANCHOR=$WORK/anchor2
fi
export CTDBD_ANCHOR

say "# samba_bench.sh $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
say "# rctdb $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null)$(git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || echo ' (src modified)'), binaries $BINS"
say "# $(/usr/sbin/smbd --version), $(smbtorture --version | head -1), $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg)"
say "# SECS=$SECS NPROCS=$NPROCS CONFIGS=\"$CONFIGS\" CTDBD_NODES=$CTDBD_NODES"

# Addresses (ip:port) a configuration's smbd and daemons listen on.
needed_addrs() {
    case $1 in
        plain) echo "127.0.0.2:445 127.0.0.3:445" ;;
        rctdb) echo "127.0.0.2:445 127.0.0.3:445 127.0.0.2:4379 127.0.0.3:4379" ;;
        ctdbd)
            if [ "$CTDBD_NODES" = 3 ]; then
                echo "127.0.0.11:445 127.0.0.12:445 127.0.0.11:4379 127.0.0.12:4379 127.0.0.13:4379"
            else
                echo "127.0.0.11:445 127.0.0.12:445 127.0.0.11:4379 127.0.0.12:4379"
            fi
            ;;
    esac
}

# The needed addresses something listens on (exact or wildcard), as "ip:port(process)".
busy_addrs() {
    ss -Hltnp 2>/dev/null | awk -v want="$(needed_addrs "$1")" '
        BEGIN { n = split(want, w, " "); for (i = 1; i <= n; i++) need[w[i]] = 1 }
        {
            split($4, a, ":"); port = a[length(a)]
            proc = $6; sub(/^users:\(\("/, "", proc); sub(/".*/, "", proc)
            if ($4 in need) print $4 "(" proc ")"
            else if ($4 ~ /^(0\.0\.0\.0|\*|\[::\]):/) {
                for (k in need) if (k ~ (":" port "$")) print $4 "(" proc ")"
            }
        }' | sort -u | tr '\n' ' '
}

# Bounded wait until nobody else listens where configuration $1 will.
wait_free() {
    local cfg=$1 busy i
    for ((i = 0; i < WAIT_FREE; i++)); do
        busy=$(busy_addrs "$cfg")
        [ -z "$busy" ] && return 0
        [ "$i" = 0 ] && echo "$cfg: waiting up to ${WAIT_FREE}s for $busy"
        sleep 1
    done
    echo "$cfg: still in use after ${WAIT_FREE}s: $busy" >&2
    return 1
}

# smbd addresses the bench connections go to: the plain case uses one smbd.
bench_hosts() {
    case $1 in
        plain) echo "127.0.0.2" ;;
        rctdb) echo "127.0.0.2 127.0.0.3" ;;
        ctdbd) echo "127.0.0.11 127.0.0.12" ;;
    esac
}

# Daemon counters around a workload: snapshot before (ctdbd: reset), summary after.
ctdb_on() {
    local dir=$1 n=$2
    shift 2
    CTDB_TEST_MODE=yes CTDB_BASE="$dir/ctdblab/node$n" CTDB_SOCKET="$dir/ctdblab/node$n/run/ctdbd.socket" \
        timeout 10 ctdb "$@"
}

counters_before() {
    local cfg=$1 dir=$2 n
    case $cfg in
        ctdbd) for n in 0 1; do ctdb_on "$dir" $n statisticsreset >/dev/null 2>&1; done ;;
        rctdb)
            for n in 0 1; do
                timeout 5 "$BINS/rctdb" --socket "$dir/rctdb/node$n.sock" status --json >"$WORK/status.$n.before" 2>&1
            done
            ;;
    esac
}

# key=value counters of `rctdb status --json`, and the link packet counts as
# sent_to_K / received_from_K.
rctdb_counters() {
    /usr/bin/python3 - "$1" <<'PY' 2>/dev/null || true
import json, sys
status = json.load(open(sys.argv[1]))
for name, value in status["stats"].items():
    if isinstance(value, int):
        print(f"{name}={value}")
for node in status["nodes"]:
    if node["state"] == "alive" and node["link_up"]:
        print(f"sent_to_{node['pnn']}={node['packets_sent']}")
        print(f"received_from_{node['pnn']}={node['packets_received']}")
PY
}

counters_after() {
    local cfg=$1 dir=$2 n
    case $cfg in
        ctdbd)
            for n in 0 1; do
                ctdb_on "$dir" $n statistics 2>&1 | awk -v n=$n '
                    /^ node/ {s = "node"} /^ client/ {s = "client"} /^ timeouts/ {s = ""}
                    s == "client" && $1 == "req_call" {cr = $2}
                    s == "node" && $1 == "req_call" {nr = $2}
                    s == "node" && $1 == "req_dmaster" {rd = $2}
                    s == "node" && $1 == "reply_dmaster" {pd = $2}
                    s == "node" && $1 == "req_message" {rm = $2}
                    /^ *call_latency/ {lat = $3}
                    /^ *locks_latency|^ *lock_latency/ {llat = $3}
                    END {printf "    ctdbd node%d: client req_call=%s node req_call=%s req_dmaster=%s reply_dmaster=%s req_message=%s call_latency min/avg/max=%s s\n", n, cr, nr, rd, pd, rm, lat}'
            done
            ;;
        rctdb)
            for n in 0 1; do
                timeout 5 "$BINS/rctdb" --socket "$dir/rctdb/node$n.sock" status --json >"$WORK/status.$n.after" 2>&1
                {
                    rctdb_counters "$WORK/status.$n.before" | sed 's/^/before /'
                    rctdb_counters "$WORK/status.$n.after" | sed 's/^/after /'
                } | awk -F'[ =]' -v n=$n '
                    $1 == "before" {b[$2] = $3}
                    $1 == "after" {a[$2] = $3; if (!($2 in seen)) {seen[$2] = 1; order[++k] = $2}}
                    END {
                        line = ""
                        for (i = 1; i <= k; i++) {
                            key = order[i]; d = a[key] - b[key]
                            if (key == "max_hopcount") d = a[key]
                            if (d != 0) line = line " " key "=" d
                        }
                        printf "    rctdbd node%d:%s\n", n, (line == "" ? " (no change)" : line)
                    }'
            done
            ;;
    esac
}

# Value N of the `open[num/s=N` in the final line of a path-contention run.
opens_per_sec() {
    tr '\r' '\n' <"$1" | grep -E '^[0-9.]+ second: open\[' | tail -1 | sed -nE 's/.*open\[num\/s=([0-9]+),.*/\1/p'
}

# smbtorture's verdict: ok, or the first failure lines.
verdict() {
    local f=$1
    if tr '\r' '\n' <"$f" | grep -qE '^success:'; then
        echo ok
    elif [ "$(cat "$f.rc" 2>/dev/null)" = 124 ] && tr '\r' '\n' <"$f" | grep -qE '^\[[0-9]+\] [0-9]+ ops'; then
        # raw.bench-lock sometimes never finishes its cleanup (a blocking lock with a 100 s
        # timeout still pending); its counts are complete by then
        echo "ok (counts printed, then hung in its cleanup: killed)"
    else
        echo "FAILED: $(tr '\r' '\n' <"$f" | grep -E '^(failure|error)|Failed|NT_STATUS' | head -2 | tr '\n' ' ')"
    fi
}

# torture OUT HOST ARGS...: smbtorture against //HOST/share; its exit status goes to OUT.rc
torture() {
    local out=$1 host=$2 rc=0
    shift 2
    timeout --kill-after=5 $((SECS + 20)) smbtorture --target=samba3 "//$host/share" -U "root%$PASS" \
        --option=torture:timelimit="$SECS" --option=torture:progress=no "$@" >"$out" 2>&1 || rc=$?
    echo "$rc" >"$out.rc"
}

declare -A RESULT

# One workload on configuration $cfg: run_workload CFG DIR WORKLOAD
run_workload() {
    local cfg=$1 dir=$2 wl=$3 hosts unclist out res v k pids total
    read -r -a hosts <<<"$(bench_hosts "$cfg")"
    unclist="$WORK/unclist.$cfg"
    printf '//%s/share\n' "${hosts[@]}" >"$unclist"
    out="$WORK/$cfg.$wl.out"
    counters_before "$cfg" "$dir"
    case $wl in
        path-contention)
            torture "$out" "${hosts[0]}" --option=torture:unclist="$unclist" \
                --option=torture:nprocs="$NPROCS" smb2.bench.path-contention-shared
            res=$(opens_per_sec "$out")
            v=$(verdict "$out")
            ;;
        lock)
            torture "$out" "${hosts[0]}" --option=torture:unclist="$unclist" \
                --option=torture:nprocs="$NPROCS" raw.bench-lock
            res=$(tr '\r' '\n' <"$out" | awk -v t="$SECS" '/^\[[0-9]+\] [0-9]+ ops/ {s += $2; n++}
                END {if (n) printf "%.1f", s / t}')
            v=$(verdict "$out")
            ;;
        no-contention)
            # connection k: its own smbtorture, its own node, its own directory
            pids=()
            for ((k = 0; k < NPROCS; k++)); do
                mkdir -p "$dir/share/nc/c$k"
                torture "$out.$k" "${hosts[k % ${#hosts[@]}]}" --option=torture:nprocs=1 \
                    "--option=torture:bench_path=nc\\c$k" smb2.bench.path-contention-shared &
                pids+=($!)
            done
            wait "${pids[@]}"
            total=0
            v=ok
            : >"$out"
            for ((k = 0; k < NPROCS; k++)); do
                {
                    echo "--- connection $k -> //${hosts[k % ${#hosts[@]}]}/share nc\\c$k"
                    cat "$out.$k"
                } >>"$out"
                res=$(opens_per_sec "$out.$k")
                if [ -z "$res" ]; then
                    total=""
                elif [ -n "$total" ]; then
                    total=$((total + res))
                fi
                [ "$(verdict "$out.$k")" = ok ] || v="FAILED (connection $k): $(verdict "$out.$k")"
            done
            res=$total
            ;;
    esac
    RESULT[$cfg.$wl]=${res:-}
    {
        echo "=== $cfg $wl: raw smbtorture output"
        tr '\r' '\n' <"$out" | grep -vE '^\s*$'
    } | raw
    local unit="opens/s"
    [ "$wl" = lock ] && unit="lock ops/s"
    say "$(printf '%-6s %-16s %10s %-10s %s' "$cfg" "$wl" "${res:-?}" "$unit" "$v")"
    counters_after "$cfg" "$dir" | tee -a "$RESULTS"
}

run_config() {
    local cfg=$1 dir="$WORK/$1" wl
    wait_free "$cfg" || { say "$cfg: skipped (addresses in use)"; return; }
    UP_DIRS+=("$dir")
    echo "$cfg: starting"
    if ! timeout 180 bash "$CLUSTER_SH" up "$dir" --backend "$cfg" >"$WORK/$cfg.up.log" 2>&1; then
        say "$cfg: cluster.sh up failed:"
        tail -8 "$WORK/$cfg.up.log" | tee -a "$RESULTS"
        return
    fi
    say "--- $cfg: $(grep -E '^backend ' "$WORK/$cfg.up.log" | head -1), load $(cut -d' ' -f1-3 /proc/loadavg)"
    for wl in path-contention lock no-contention; do
        run_workload "$cfg" "$dir" "$wl"
    done
    timeout 90 bash "$CLUSTER_SH" down "$dir" >"$WORK/$cfg.down.log" 2>&1 ||
        say "$cfg: cluster.sh down failed: $(tail -3 "$WORK/$cfg.down.log")"
    # down, so the trap need not do it again
    local kept=()
    for d in "${UP_DIRS[@]}"; do [ "$d" = "$dir" ] || kept+=("$d"); done
    UP_DIRS=("${kept[@]}")
}

for cfg in $CONFIGS; do
    case $cfg in
        plain | ctdbd | rctdb) run_config "$cfg" ;;
        *) die "unknown configuration '$cfg' (plain, ctdbd, rctdb)" ;;
    esac
done

# ratio A/B to two decimals, or - when either is missing or B is 0
ratio() {
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN {if (a == "" || b == "" || b + 0 == 0) print "-"; else printf "%.2f", a / b}'
}

# goal text: goal RATIO MIN LABEL
goal() {
    awk -v r="$1" -v m="$2" -v l="$3" 'BEGIN {
        if (r == "-") print "-"; else if (r + 0 >= m) printf "%s >= %s ok\n", l, m; else printf "%s < %s MISSED\n", l, m }'
}

say ""
say "$(printf '%-42s %9s %9s %9s %11s %10s  %s' workload plain ctdbd rctdbd ours/ctdbd ours/plain goal)"
for wl in path-contention lock no-contention; do
    case $wl in
        path-contention) label="smb2 path-contention-shared opens/s" ;;
        lock) label="raw.bench-lock lock ops/s" ;;
        no-contention) label="no contention (own dir per conn) opens/s" ;;
    esac
    p=${RESULT[plain.$wl]:-}
    c=${RESULT[ctdbd.$wl]:-}
    r=${RESULT[rctdb.$wl]:-}
    rc=$(ratio "$r" "$c")
    rp=$(ratio "$r" "$p")
    case $wl in
        path-contention) g=$(goal "$rc" 2 ours/ctdbd) ;;
        lock) g=$(goal "$rc" 5 ours/ctdbd) ;;
        no-contention) g=$(goal "$rp" 0.9 ours/plain) ;;
    esac
    say "$(printf '%-42s %9s %9s %9s %11s %10s  %s' "$label" "${p:--}" "${c:--}" "${r:--}" "$rc" "$rp" "$g")"
done
say "(plain: one smbd; ctdbd ($CTDBD_NODES ctdbd nodes), rctdbd (2 nodes): two smbd, connections alternating between them; $NPROCS connections, ${SECS}s each)"
say "# done $(date -u '+%H:%M:%S UTC') after ${SECONDS}s, load $(cut -d' ' -f1-3 /proc/loadavg); raw output in $RESULTS"
