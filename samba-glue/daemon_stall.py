#!/usr/bin/env python3
"""Conflicting opens and locks across two clustered smbd while one node's rctdbd is
stopped and its smbd keeps serving (a stall must not let the other node grant
what the stalled node's clients hold).

    daemon_stall.py DIR [--stall 3] [--before 1] [--after 5] [--files 10]
                    [--share share] [--user root] [--password P]

DIR is a cluster of cluster.sh (backend rctdb). Node A is the node that does not lead,
node B the leader (`rctdb status --json`). A client on A holds FILES files open with no
sharing and an exclusive byte-range lock on one more; it writes into one of its files
every 0.1 s. A client on B tries conflicting opens and the lock in a loop: BEFORE
seconds, then for STALL seconds while A's rctdbd is SIGSTOPped (A's smbd runs on), then
AFTER seconds more after its SIGCONT.

When the stall outlasts A's lease, A's fencing watchdog kills the smbd processes that
attached a database and freezes the databases; the smbd serving A's client ends then or
once the freeze lifts, and A's client loses its session and, with it, its opens and lock.
From then on B may have the files. Until then every attempt is a conflict and must be
refused: a grant answered before the holder was seen to end (its pidfd readable, or A's
connection closed by the server, whichever is seen first) is a split brain.

Prints one line per second, when A's smbd died and when A's client saw its first error,
and a summary `conflicting attempts: N, granted: G, ...`. Exit status: 0 when no
conflicting attempt was granted (with attempts made during the stall); 1 otherwise; 77
when not root (a stopped daemon and port 445 need it).
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smb_coherence import BoundedConnection, HeldFiles, Node, Tally  # noqa: E402

WRITE_EVERY = 0.1


def rctdb_binary():
    bin_dir = os.environ.get("RCTDB_BIN_DIR")
    return os.path.join(bin_dir, "rctdb") if bin_dir else "rctdb"


def cluster_roles(rctdb_dir):
    """(node A, node B, {pnn: address}): A does not lead, B leads."""
    out = subprocess.run([rctdb_binary(), "--socket", os.path.join(rctdb_dir, "node0.sock"), "status", "--json"],
                         capture_output=True, text=True, timeout=10, check=True)
    status = json.loads(out.stdout)
    addresses = {node["pnn"]: node["address"] for node in status["nodes"]}
    leader = status["leader"]
    others = [pnn for pnn in sorted(addresses) if pnn != leader]
    if leader not in addresses or not others:
        raise ValueError(f"no leader and follower in {sorted(addresses)} (leader {leader})")
    return others[0], leader, addresses


def serving_smbd(node):
    """The pid of the smbd process that serves NODE's connection (found by its socket)."""
    local_ip, local_port = node.conn.transport._sock.getsockname()[:2]
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :445 and dst {local_ip}:{local_port} )"],
                         capture_output=True, text=True, timeout=10, check=True)
    pids = set(re.findall(r'"smbd",pid=(\d+)', out.stdout))
    if len(pids) != 1:
        raise ValueError(f"no single smbd serves {local_ip}:{local_port}: {out.stdout.strip()!r}")
    return int(pids.pop())


def smbd_parent(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


# Run as its own process, so that no thread of ours holding the GIL delays its clock
# readings: prints `KEY TIME` (time.monotonic()) when each watched fd signals its end.
WATCHER = """
import os, select, sys, time
PIDFDS = {int(fd) for fd in sys.argv[1].split(",")}
ends = dict(arg.split("=", 1) for arg in sys.argv[2:])
poll = select.poll()
for fd in ends:
    # a pidfd reads when its process has exited; a socket hangs up when its peer closed
    poll.register(int(fd), select.POLLIN if int(fd) in PIDFDS else select.POLLRDHUP)
while ends:
    for fd, _ in poll.poll():
        print(ends.pop(str(fd)), time.monotonic(), flush=True)
        poll.unregister(fd)
"""


def watch_ends(events, pids, sockets):
    """Records in events[KEY] when each process of PIDS {KEY: pid} exits (its pidfd reads)
    and when the server closes each socket of SOCKETS {KEY: socket} (POLLRDHUP)."""
    fds = {key: os.pidfd_open(pid) for key, pid in pids.items()}
    fds.update({key: sock.fileno() for key, sock in sockets.items()})
    pidfds = ",".join(str(fds[key]) for key in pids)
    watcher = subprocess.Popen([sys.executable, "-c", WATCHER, pidfds] + [f"{fd}={key}" for key, fd in fds.items()],
                               pass_fds=list(fds.values()), stdout=subprocess.PIPE, text=True)
    for key in pids:
        os.close(fds[key])

    def read():
        for line in watcher.stdout:
            key, at = line.rsplit(" ", 1)
            events[key] = float(at)

    threading.Thread(target=read, daemon=True).start()
    return watcher


def keep_writing(node, handle, stop, events):
    """A's client uses its open: a write every WRITE_EVERY s until its first error."""
    while not stop.wait(WRITE_EVERY):
        try:
            handle.write(b"A", 0)
            events["a writes"] = events.get("a writes", 0) + 1
        except Exception as exc:  # any failure is what A's user would see: record it
            events["a error"] = time.monotonic()
            events["a error text"] = f"{type(exc).__name__}: {exc}"
            return


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="the cluster.sh state directory (backend rctdb)")
    parser.add_argument("--stall", type=float, default=3.0, help="seconds A's rctdbd stays stopped")
    parser.add_argument("--before", type=float, default=1.0)
    parser.add_argument("--after", type=float, default=5.0)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--share", default="share")
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default=os.environ.get("SMBPASS", "Rctdb.Pass1"))
    args = parser.parse_args()
    # a grant's answer waits for the GIL at most this long before its time is taken
    sys.setswitchinterval(0.001)

    if os.geteuid() != 0:
        print("daemon_stall: SKIP: needs root")
        return 77
    rctdb_dir = os.path.join(args.dir, "rctdb")
    node_a, node_b, addresses = cluster_roles(rctdb_dir)
    with open(os.path.join(rctdb_dir, f"node{node_a}.pid")) as f:
        daemon_a = int(f.read().strip())
    print(f"node A = {node_a} ({addresses[node_a]}, rctdbd pid {daemon_a}), "
          f"node B = {node_b} ({addresses[node_b]}, the leader)", flush=True)

    # Longer than any stall: an answer that waits is counted when it comes.
    BoundedConnection.op_timeout = 15
    a = Node("A", addresses[node_a], args.share, args.user, args.password)
    b = Node("B", addresses[node_b], args.share, args.user, args.password)
    held = HeldFiles(a, b, f"stall-{os.getpid()}-", args.files)
    if not held.locked:
        print(f"A could not lock {held.lock_name}: nothing to test")
        return 1
    check = Tally()
    # Without a stall every attempt must be refused too: otherwise the check proves nothing.
    held.try_conflicts(check)
    if check.granted or check.errors:
        print(f"without a stall: {check.granted} granted, {check.errors} errors: the setup is wrong")
        return 1
    holder = serving_smbd(a)
    events = {}
    parent = smbd_parent(holder)
    watcher = watch_ends(events, {"holder died": holder, "parent died": parent},
                         {"a closed": a.conn.transport._sock})
    print(f"A's client is served by smbd pid {holder} (child of smbd {parent})", flush=True)

    # Attempts started while the holder lives are conflicts; later ones are not.
    while_held, after_death = Tally(), Tally()
    stop = threading.Event()

    def attempts():
        while not stop.is_set():
            if "holder died" in events or "a closed" in events:
                held.try_conflicts(after_death, show_grants=False)
            else:
                held.try_conflicts(while_held)

    writer = threading.Thread(target=keep_writing, args=(a, held.held[0], stop, events))
    trier = threading.Thread(target=attempts)
    started = time.monotonic()
    writer.start()
    trier.start()
    stopped_at = resumed_at = None
    try:
        while time.monotonic() - started < args.before + args.stall + args.after:
            now = time.monotonic()
            if stopped_at is None and now - started >= args.before:
                os.kill(daemon_a, signal.SIGSTOP)
                stopped_at = time.monotonic()
                print(f"{stopped_at - started:5.1f}s: SIGSTOP to A's rctdbd", flush=True)
            elif stopped_at is not None and resumed_at is None and now - stopped_at >= args.stall:
                os.kill(daemon_a, signal.SIGCONT)
                resumed_at = time.monotonic()
                print(f"{resumed_at - started:5.1f}s: SIGCONT to A's rctdbd", flush=True)
            stop.wait(0.05)
            if int(now - started) != int(time.monotonic() - started):
                print(f"{time.monotonic() - started:5.1f}s: while held {while_held.attempts} attempts, "
                      f"{while_held.granted} granted; after A's smbd ended {after_death.attempts} attempts, "
                      f"{after_death.granted} granted; A wrote {events.get('a writes', 0)} times", flush=True)
    finally:
        if resumed_at is None and stopped_at is not None:
            os.kill(daemon_a, signal.SIGCONT)
            resumed_at = time.monotonic()
        stop.set()
        trier.join()
        writer.join()
    watcher.kill()
    held.close()
    for node in (a, b):
        try:
            node.close()
        except Exception:  # A's session may be gone with its smbd
            pass

    # A stops holding the files when its smbd dies or closes A's connection (exiting, it
    # closes its sockets before its pidfd says so), whichever is seen first; both are seen
    # late, never early, so a grant answered before is counted a conflict.
    died = min((events[k] for k in ("holder died", "a closed") if k in events), default=None)
    conflicts = [(t, what) for t, what in while_held.grant_times if died is None or t < died]
    # A grant answered after the holder died is no conflict: counted with the later attempts.

    def since_stop(t):
        return "never" if t is None else f"{t - stopped_at:.2f} s after the SIGSTOP"

    print(f"stall: {resumed_at - stopped_at:.2f} s; A's smbd (pid {holder}) died {since_stop(died)}, "
          f"its parent (pid {parent}) {since_stop(events.get('parent died'))}; A's connection closed by the server "
          f"{since_stop(events.get('a closed'))}; "
          f"A's client's first error {since_stop(events.get('a error'))}"
          f"{': ' + events['a error text'] if 'a error' in events else ''}; A wrote {events.get('a writes', 0)} times")
    late = while_held.granted - len(conflicts)
    first_after = min((t for t, _ in after_death.grant_times + while_held.grant_times[len(conflicts):]),
                      default=None)
    print(f"after A's smbd ended: {after_death.attempts + late} attempts, {after_death.granted + late} granted "
          f"(first {since_stop(first_after)}), {after_death.errors} errors")
    refusals = ", ".join(f"{n} {name}" for name, n in sorted(while_held.refusals.items()))
    print(f"conflicting attempts: {while_held.attempts - late}, granted: {len(conflicts)}, "
          f"errors: {while_held.errors} ({refusals}); A's rctdbd stopped {resumed_at - stopped_at:.1f} s")
    for t, what in conflicts:
        print(f"CONFLICT: {what}, {since_stop(t)} ({t - resumed_at:+.3f} s from the SIGCONT), "
              f"{died - t if died else float('inf'):.3f} s before A's smbd was seen to end")
    if while_held.attempts == 0:
        print("daemon_stall: no conflicting attempt was answered: FAIL")
        return 1
    return 0 if not conflicts else 1


if __name__ == "__main__":
    sys.exit(main())
