#!/bin/bash
# Two stock smbd (/usr/sbin/smbd, unchanged) sharing one export directory, on a cluster
# database of the chosen backend:
#
#   cluster.sh up     DIR [--backend rctdb|ctdbd|plain]
#   cluster.sh down   DIR
#   cluster.sh status DIR
#
#   rctdb  (default) `rctdb cluster up` with 2 rctdbd on 127.0.0.2-3:4379; smbd on
#          127.0.0.2 and 127.0.0.3:445, `clustering = yes`, `ctdbd socket = DIR/rctdb/nodeK.sock`.
#   ctdbd  Samba's own ctdbd (the reference), started by the baseline's lab scripts in
#          $CTDBD_ANCHOR (3 nodes on 127.0.0.11-13, state in DIR/ctdblab); smbd on
#          127.0.0.11 and 127.0.0.12:445 talking to ctdbd nodes 0 and 1.
#   plain  the same two smbd on 127.0.0.2-3 with `clustering = no`: each keeps its own
#          locking.tdb and brlock.tdb, so neither sees the other's opens and locks. This is
#          the split-brain control case.
#
# Layout: DIR/cluster.env (backend, hosts, password; sourced by torture.sh and
# test_samba.sh), DIR/share (the one export), DIR/nodeK/{smb.conf,lock,state,cache,
# private,pid,ncalrpc,log/log.smbd}. The smbd user is root with password $SMBPASS.
#
# Environment: RCTDB_BIN_DIR (rctdb and rctdbd; default the newer of target/release and
# target/debug of this repository, built with cargo if neither has them), SMBPASS (default Rctdb.Pass1),
# SMBLOGLEVEL (default 1), SHAREDELAY_US (smbd:sharedelay, default 10000), CTDBD_ANCHOR.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
SMBD=${SMBD:-/usr/sbin/smbd}
PASS=${SMBPASS:-Rctdb.Pass1}
CTDBD_ANCHOR=${CTDBD_ANCHOR:-/work/shared/anchors/ctdbd}
SHAREDELAY_US=${SHAREDELAY_US:-10000}
NODES=2

# With clustering, smbd's db_open() hands every database it opens without
# TDB_CLEAR_IF_FIRST to ctdbd as a persistent database (DB_ATTACH_PERSISTENT), unless
# `ctdb:<file name> = no`. These hold per-node configuration (passwords, machine secrets,
# registry, share ACLs, policies, mappings, caches) and stay local, so the cluster carries
# only the volatile databases (locking.tdb, brlock.tdb, smbXsrv_*.tdb, ...). The list is
# what smbd 4.17 attached as persistent on ctdbd (`ctdb getdbmap` after torture.sh; the
# first tdbsam use converts passdb through passdb.tdb.tmp and panics when that one is
# clustered and the rename of the local file finds nothing), plus the ones a standalone
# server may open on other paths.
LOCAL_DBS=${LOCAL_DBS-"passdb.tdb passdb.tdb.tmp secrets.tdb registry.tdb share_info.tdb account_policy.tdb
group_mapping.tdb winbindd_idmap.tdb netsamlogon_cache.tdb schannel_store.tdb"}

die() { echo "cluster.sh: $*" >&2; exit 1; }

usage() {
    echo "usage: cluster.sh up|down|status DIR [--backend rctdb|ctdbd|plain]" >&2
    exit 2
}

# Hosts (smbd addresses) of a backend.
hosts_of() {
    case $1 in
        rctdb | plain) echo "127.0.0.2 127.0.0.3" ;;
        ctdbd) echo "127.0.0.11 127.0.0.12" ;;
        *) die "unknown backend '$1' (rctdb, ctdbd or plain)" ;;
    esac
}

# The pid in FILE if that process is alive and is COMM, else nothing.
live_pid() {
    local file=$1 comm=$2 pid
    [ -f "$file" ] || return 1
    pid=$(cat "$file" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ -r "/proc/$pid/comm" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
    # a zombie is not alive
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] || return 1
    echo "$pid"
}

# smbd names its pid file smbd.pid, or smbd-<config>.pid in some versions.
smbd_pid() {
    local f
    for f in "$DIR/node$1"/pid/smbd*.pid; do
        live_pid "$f" smbd && return 0
    done
    return 1
}

# Is something listening on IP:445? (true also for a wildcard listener)
port_busy() {
    ss -Hltn "sport = :445" 2>/dev/null | awk -v ip="$1" '
        $4 == ip":445" || $4 == "0.0.0.0:445" || $4 == "*:445" || $4 == "[::]:445" {found=1}
        END {exit !found}'
}

# Bounded wait until a TCP connect to IP:445 succeeds. Returns 1 on timeout.
wait_port() {
    local ip=$1 secs=$2 i
    for ((i = 0; i < secs * 10; i++)); do
        if timeout 1 bash -c "exec 3<>/dev/tcp/$ip/445" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# Bounded wait until an authenticated tree connect and `ls` work.
wait_share() {
    local ip=$1 secs=$2 i out=""
    for ((i = 0; i < secs * 2; i++)); do
        if out=$(timeout 10 smbclient "//$ip/share" -U "root%$PASS" -m SMB3 -c ls 2>&1); then return 0; fi
        sleep 0.5
    done
    echo "$out" | tail -3 >&2
    return 1
}

find_rctdb_bins() {
    local d
    if [ -n "${RCTDB_BIN_DIR:-}" ]; then
        if [ ! -x "$RCTDB_BIN_DIR/rctdb" ] || [ ! -x "$RCTDB_BIN_DIR/rctdbd" ]; then
            die "RCTDB_BIN_DIR=$RCTDB_BIN_DIR has no rctdb and rctdbd"
        fi
        echo "$RCTDB_BIN_DIR"
        return
    fi
    # the newer build of the two, so a stale release build does not shadow a fresh debug one
    local best=""
    for d in "$REPO/target/release" "$REPO/target/debug"; do
        if [ ! -x "$d/rctdb" ] || [ ! -x "$d/rctdbd" ]; then continue; fi
        if [ -z "$best" ] || [ "$d/rctdbd" -nt "$best/rctdbd" ]; then best=$d; fi
    done
    if [ -n "$best" ]; then echo "$best"; return; fi
    command -v cargo >/dev/null || die "no rctdb/rctdbd in target/ and no cargo to build them"
    echo "cluster.sh: building rctdb and rctdbd (cargo build --release)" >&2
    (cd "$REPO" && cargo build --release --bins >&2) || die "cargo build failed"
    echo "$REPO/target/release"
}

# smb.conf of node K: mk_conf K IP CLUSTERING CTDBD_SOCKET
mk_conf() {
    local k=$1 ip=$2 clustering=$3 sock=$4 d="$DIR/node$1" db
    mkdir -p "$d"/{lock,state,cache,private,pid,ncalrpc,log}
    {
        cat <<EOF
# written by samba-glue/cluster.sh (backend $BACKEND, node $k)
[global]
	netbios name = RCTDBLAB
	workgroup = LAB
	server role = standalone server
	clustering = $clustering
EOF
        if [ "$clustering" = yes ]; then
            echo "	ctdbd socket = $sock"
            for db in $LOCAL_DBS; do echo "	ctdb:$db = no"; done
        fi
        cat <<EOF
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
	log file = $d/log/log.smbd
	max log size = 0
	log level = ${SMBLOGLEVEL:-1}
	load printers = no
	printing = bsd
	printcap name = /dev/null
	disable spoolss = yes
	passdb backend = tdbsam
	rpc start on demand helpers = no
	smbd:backgroundqueue = no
	server min protocol = NT1
	client min protocol = NT1
	ntlm auth = yes
	# Share modes, byte-range locks and oplocks live only in smbd's databases, so that
	# the cluster database is what makes them coherent between the nodes.
	posix locking = no
	kernel share modes = no
	kernel oplocks = no
	oplocks = yes
	level2 oplocks = yes
	smb2 leases = yes
	# An SMB1 open that meets a sharing violation is retried for this long (µs) before
	# the error; the default second would make base.deny2 (~550 conflicts) run minutes.
	smbd:sharedelay = $SHAREDELAY_US
[share]
	path = $DIR/share
	read only = no
	guest ok = no
	create mask = 0666
EOF
    } >"$d/smb.conf"
}

# Backend "rctdb": the two rctdbd.
rctdb_up() {
    local bins k all=1
    bins=$(find_rctdb_bins)
    for ((k = 0; k < NODES; k++)); do
        live_pid "$DIR/rctdb/node$k.pid" rctdbd >/dev/null || all=0
    done
    if [ $all = 1 ]; then
        echo "rctdb: cluster in $DIR/rctdb already running"
        return
    fi
    "$bins/rctdb" cluster down --dir "$DIR/rctdb" >/dev/null 2>&1 || true
    # rctdb bounds its own wait (every node serving, or an error)
    timeout 60 "$bins/rctdb" cluster up --dir "$DIR/rctdb" --nodes $NODES --first-address 127.0.0.2 ||
        die "rctdb cluster up failed; logs: $DIR/rctdb/node*.log"
}

rctdb_down() {
    local bins
    [ -d "$DIR/rctdb" ] || return 0
    bins=$(find_rctdb_bins)
    timeout 30 "$bins/rctdb" cluster down --dir "$DIR/rctdb" || echo "rctdb cluster down failed" >&2
}

# Backend "ctdbd": the baseline's scripts run Samba's ctdbd (3 nodes; node 0 and 1 serve
# our two smbd). They are called, not copied.
ctdbd_up() {
    [ -f "$CTDBD_ANCHOR/start_cluster.sh" ] ||
        die "no $CTDBD_ANCHOR/start_cluster.sh (set CTDBD_ANCHOR to the ctdbd baseline scripts)"
    [ -x /usr/sbin/ctdbd ] || die "no /usr/sbin/ctdbd (apt-get install ctdb)"
    LAB="$DIR/ctdblab" timeout 90 bash "$CTDBD_ANCHOR/start_cluster.sh" >"$DIR/ctdblab.start.log" 2>&1 ||
        die "ctdbd lab did not start; see $DIR/ctdblab.start.log"
    grep -q 'cluster healthy' "$DIR/ctdblab.start.log" ||
        grep -q 'already running' "$DIR/ctdblab.start.log" ||
        die "ctdbd lab not healthy; see $DIR/ctdblab.start.log"
    echo "ctdbd: lab in $DIR/ctdblab ($(grep -c pid= "$DIR/ctdblab.start.log") nodes)"
}

ctdbd_down() {
    [ -d "$DIR/ctdblab" ] || return 0
    local k
    # its exit status is that of its last test, not of the stop: check the pids instead
    LAB="$DIR/ctdblab" timeout 60 bash "$CTDBD_ANCHOR/stop_cluster.sh" || true
    for ((k = 0; k < 3; k++)); do
        if live_pid "$DIR/ctdblab/node$k/run/ctdbd.pid" ctdbd >/dev/null; then
            echo "ctdbd node$k still running" >&2
        fi
    done
}

ctdbd_socket() {
    case $BACKEND in
        rctdb) echo "$DIR/rctdb/node$1.sock" ;;
        ctdbd) echo "$DIR/ctdblab/node$1/run/ctdbd.socket" ;;
        plain) echo "" ;;
    esac
}

smbd_start() {
    local k=$1 ip=$2 pid conf="$DIR/node$1/smb.conf"
    if pid=$(smbd_pid "$k"); then
        echo "node$k: smbd already running (pid $pid) on $ip"
        return
    fi
    if port_busy "$ip"; then
        die "port 445 on $ip is in use: $(ss -Hltnp 'sport = :445' | awk -v ip="$ip" '$4 == ip":445" || $4 !~ /^127\./ {print $4, $6}')"
    fi
    # passdb stays local to the node, so each node gets the user
    printf '%s\n%s\n' "$PASS" "$PASS" |
        timeout 30 smbpasswd -s -a root -c "$conf" >"$DIR/node$k/log/smbpasswd.out" 2>&1 ||
        die "node$k: smbpasswd failed: $(tail -3 "$DIR/node$k/log/smbpasswd.out")"
    if ! timeout 30 "$SMBD" -D -s "$conf"; then
        tail -n 6 "$DIR/node$k/log/log.smbd" >&2 || true
        die "node$k: $SMBD -D failed; see $DIR/node$k/log/log.smbd"
    fi
}

smbd_wait() {
    local k=$1 ip=$2
    if ! wait_port "$ip" 30; then
        smbd_pid "$k" >/dev/null || echo "node$k: smbd exited" >&2
        tail -15 "$DIR/node$k/log/log.smbd" >&2 || true
        die "node$k: smbd does not answer on $ip:445 after 30 s"
    fi
    wait_share "$ip" 30 || {
        tail -15 "$DIR/node$k/log/log.smbd" >&2 || true
        die "node$k: //$ip/share does not accept root after 30 s"
    }
}

smbd_stop() {
    local k=$1 pid i
    pid=$(smbd_pid "$k") || return 0
    kill -TERM "$pid" 2>/dev/null || true # it may have exited since
    for ((i = 0; i < 100; i++)); do
        smbd_pid "$k" >/dev/null || break
        sleep 0.1
    done
    if smbd_pid "$k" >/dev/null; then kill -KILL "$pid" 2>/dev/null || true; fi
    # The parent's children (one per client) end when it does; collect stragglers that
    # still have this node's config so a restart finds the port free.
    pkill_node_children "$k"
    echo "node$k: smbd $pid stopped"
}

# smbd children of node K (their command line names node K's smb.conf), by pid.
pkill_node_children() {
    local k=$1 p i
    for ((i = 0; i < 30; i++)); do
        local left=()
        for p in $(pgrep -x smbd || true); do
            if tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | grep -qF "$DIR/node$k/smb.conf"; then
                left+=("$p")
            fi
        done
        [ ${#left[@]} -eq 0 ] && return
        if [ "$i" -ge 20 ]; then kill -KILL "${left[@]}" 2>/dev/null || true; fi
        sleep 0.1
    done
}

write_env() {
    {
        echo "BACKEND=$BACKEND"
        echo "HOSTS=\"$(hosts_of "$BACKEND")\""
        printf 'SMBPASS=%q\n' "$PASS"
    } >"$DIR/cluster.env"
}

cmd_up() {
    local hosts k ip
    [ -x "$SMBD" ] || die "no $SMBD (apt-get install samba)"
    command -v smbclient >/dev/null || die "no smbclient (apt-get install smbclient)"
    if [ -f "$DIR/cluster.env" ]; then
        local old
        old=$(sed -n 's/^BACKEND=//p' "$DIR/cluster.env")
        if [ "$old" != "$BACKEND" ] && { smbd_pid 0 >/dev/null || smbd_pid 1 >/dev/null; }; then
            die "$DIR runs backend $old; run 'cluster.sh down $DIR' first"
        fi
    fi
    mkdir -p "$DIR/share"
    chmod 777 "$DIR/share"
    write_env
    case $BACKEND in
        rctdb) rctdb_up ;;
        ctdbd) ctdbd_up ;;
        plain) ;;
    esac
    read -r -a hosts <<<"$(hosts_of "$BACKEND")"
    for ((k = 0; k < NODES; k++)); do
        if [ "$BACKEND" = plain ]; then
            mk_conf "$k" "${hosts[k]}" no ""
        else
            mk_conf "$k" "${hosts[k]}" yes "$(ctdbd_socket "$k")"
        fi
    done
    for ((k = 0; k < NODES; k++)); do smbd_start "$k" "${hosts[k]}"; done
    for ((k = 0; k < NODES; k++)); do smbd_wait "$k" "${hosts[k]}"; done
    echo "backend $BACKEND: smbd on ${hosts[*]} share $DIR/share"
    for ip in "${hosts[@]}"; do
        printf '  smbclient //%s/share -U %q\n' "$ip" "root%$PASS"
    done
}

cmd_down() {
    local k
    for ((k = 0; k < NODES; k++)); do smbd_stop "$k"; done
    case $BACKEND in
        rctdb) rctdb_down ;;
        ctdbd) ctdbd_down ;;
        plain) ;;
    esac
}

cmd_status() {
    local hosts k pid rc=0
    read -r -a hosts <<<"$(hosts_of "$BACKEND")"
    echo "backend $BACKEND ($DIR)"
    for ((k = 0; k < NODES; k++)); do
        if pid=$(smbd_pid "$k"); then
            if wait_port "${hosts[k]}" 1; then
                echo "node$k: smbd pid $pid on ${hosts[k]}:445 answers"
            else
                echo "node$k: smbd pid $pid on ${hosts[k]}:445 does NOT answer"
                rc=1
            fi
        else
            echo "node$k: smbd not running"
            rc=1
        fi
    done
    case $BACKEND in
        rctdb)
            local bins
            bins=$(find_rctdb_bins)
            for ((k = 0; k < NODES; k++)); do
                if pid=$(live_pid "$DIR/rctdb/node$k.pid" rctdbd); then
                    echo "rctdbd node$k: pid $pid"
                    timeout 5 "$bins/rctdb" --socket "$DIR/rctdb/node$k.sock" status 2>&1 | sed 's/^/    /' || rc=1
                else
                    echo "rctdbd node$k: not running"
                    rc=1
                fi
            done
            ;;
        ctdbd)
            CTDB_TEST_MODE=yes CTDB_BASE="$DIR/ctdblab/node0" CTDB_SOCKET="$DIR/ctdblab/node0/run/ctdbd.socket" \
                timeout 10 ctdb status 2>&1 | sed 's/^/    /' || rc=1
            ;;
        plain) ;;
    esac
    return $rc
}

[ $# -ge 2 ] || usage
CMD=$1
DIR=$2
shift 2
BACKEND=""
while [ $# -gt 0 ]; do
    case $1 in
        --backend) [ $# -ge 2 ] || usage; BACKEND=$2; shift 2 ;;
        --backend=*) BACKEND=${1#--backend=}; shift ;;
        *) usage ;;
    esac
done

case $CMD in
    up)
        mkdir -p "$DIR"
        DIR=$(cd "$DIR" && pwd)
        BACKEND=${BACKEND:-rctdb}
        hosts_of "$BACKEND" >/dev/null
        cmd_up
        ;;
    down | status)
        [ -d "$DIR" ] || die "no directory $DIR"
        DIR=$(cd "$DIR" && pwd)
        if [ -z "$BACKEND" ] && [ -f "$DIR/cluster.env" ]; then
            BACKEND=$(sed -n 's/^BACKEND=//p' "$DIR/cluster.env")
        fi
        BACKEND=${BACKEND:-rctdb}
        hosts_of "$BACKEND" >/dev/null
        "cmd_$CMD"
        ;;
    *) usage ;;
esac
