#!/usr/bin/env python3
"""Conflicting opens and locks across two clustered smbd while the cluster's links are
killed again and again (issue 15: link blips must be invisible to Samba).

    link_blips.py HOST_A HOST_B --kill-address ADDR [--port 4379] [--seconds 20]
                  [--every 0.3] [--files 10] [--share share] [--user root] [--password P]

A client on HOST_A opens FILES files with no sharing and holds an exclusive byte-range
lock on one more file (opened with sharing, so that the other node can try the lock).
For SECONDS seconds a client on HOST_B tries to open each of those files and to take the
lock, in a loop, while every TCP connection of the cluster's node links on ADDR (port
PORT, either end) is killed every EVERY seconds with `ss -K` (root). Every attempt must
be refused: a granted one means HOST_B's smbd thought HOST_A's opens were gone.

Prints one line per second and a summary `conflicting attempts: N, granted: G, ...`.
Exit status: 0 when nothing was granted (with attempts made and links killed); 1 when a
conflicting open or lock was granted, or nothing was tested; 77 when `ss -K` cannot kill
here (not root, or a kernel without CONFIG_INET_DIAG_DESTROY).
"""

import argparse
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smb_coherence import (  # noqa: E402
    EXCLUSIVE_NOW,
    LOCK_REFUSED,
    OK,
    RW,
    SHARE_ALL,
    SHARING_VIOLATION,
    Node,
    close_quietly,
    lock,
    status_name,
    unlock,
)
from smbprotocol.exceptions import SMBException  # noqa: E402

NO_SHARING = 0
LOCK_RANGE = (0, 100)


def kill_links(address, port):
    """Kills the node links with an end on ADDR:PORT or from ADDR to PORT; returns how
    many connections `ss` listed."""
    killed = 0
    for side in ("src", "dst"):
        flt = f"{side} {address} and ( sport = :{port} or dport = :{port} )"
        out = subprocess.run(["ss", "-K", "-t", "-n", flt], capture_output=True, text=True, timeout=10)
        killed += sum(1 for line in out.stdout.splitlines() if "ESTAB" in line)
    return killed


def killer(address, port, every, stop, counts):
    while not stop.wait(every):
        counts["kills"] += 1
        counts["connections"] += kill_links(address, port)


class Tally:
    def __init__(self):
        self.attempts = 0
        self.granted = 0
        self.errors = 0
        self.refusals = {}

    def refused(self, status):
        self.attempts += 1
        name = status_name(status)
        self.refusals[name] = self.refusals.get(name, 0) + 1


def try_conflicts(b, names, lock_name, tally, lock_handle):
    """One round: each no-sharing file opened from B, then A's locked range."""
    for name in names:
        try:
            status, handle = b.try_open(name, RW, SHARE_ALL)
        except (SMBException, OSError, ValueError) as exc:
            tally.errors += 1
            print(f"error opening {name} on B: {type(exc).__name__}: {exc}", flush=True)
            continue
        if status == OK:
            tally.attempts += 1
            tally.granted += 1
            print(f"GRANTED: B opened {name}, which A holds with no sharing", flush=True)
            close_quietly(handle)
        elif status == SHARING_VIOLATION:
            tally.refused(status)
        else:
            tally.errors += 1
            print(f"B's open of {name}: {status_name(status)}", flush=True)
    try:
        status = lock(lock_handle, *LOCK_RANGE, EXCLUSIVE_NOW)
    except (SMBException, OSError, ValueError) as exc:
        tally.errors += 1
        print(f"error locking {lock_name} on B: {type(exc).__name__}: {exc}", flush=True)
        return
    if status == OK:
        tally.attempts += 1
        tally.granted += 1
        print(f"GRANTED: B locked {LOCK_RANGE} of {lock_name}, which A holds", flush=True)
        unlock(lock_handle, *LOCK_RANGE)
    elif status in LOCK_REFUSED:
        tally.refused(status)
    else:
        tally.errors += 1
        print(f"B's lock of {lock_name}: {status_name(status)}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host_a")
    parser.add_argument("host_b")
    parser.add_argument("--kill-address", required=True, help="the node address whose links are killed")
    parser.add_argument("--port", type=int, default=4379, help="the node links' port")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--every", type=float, default=0.3)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--share", default="share")
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default=os.environ.get("SMBPASS", "Rctdb.Pass1"))
    args = parser.parse_args()

    if os.geteuid() != 0:
        print("link_blips: SKIP: ss -K needs root")
        return 77

    a = Node("A", args.host_a, args.share, args.user, args.password)
    b = Node("B", args.host_b, args.share, args.user, args.password)
    prefix = f"blips-{os.getpid()}-"
    names = [f"{prefix}{i}.dat" for i in range(args.files)]
    lock_name = f"{prefix}lock.dat"
    held = [a.open(name, RW, NO_SHARING) for name in names]
    a_lock = a.open(lock_name, RW, SHARE_ALL)
    if lock(a_lock, *LOCK_RANGE) != OK:
        print(f"A could not lock {lock_name}: nothing to test")
        return 1
    b_lock = b.open(lock_name, RW, SHARE_ALL)
    tally = Tally()
    # Without kills every attempt must be refused too: otherwise the check proves nothing.
    try_conflicts(b, names, lock_name, tally, b_lock)
    if tally.granted or tally.errors:
        print(f"without kills: {tally.granted} granted, {tally.errors} errors: the setup is wrong")
        return 1

    counts = {"kills": 0, "connections": 0}
    stop = threading.Event()
    thread = threading.Thread(target=killer, args=(args.kill_address, args.port, args.every, stop, counts))
    thread.start()
    started = time.monotonic()
    last_report = started
    try:
        while time.monotonic() - started < args.seconds:
            try_conflicts(b, names, lock_name, tally, b_lock)
            if time.monotonic() - last_report >= 1:
                last_report = time.monotonic()
                print(f"{last_report - started:5.1f}s: {tally.attempts} attempts, {tally.granted} granted, "
                      f"{tally.errors} errors, {counts['kills']} kills", flush=True)
    finally:
        stop.set()
        thread.join()
    close_quietly(b_lock)
    close_quietly(a_lock, *held)
    a.close()
    b.close()

    refusals = ", ".join(f"{n} {name}" for name, n in sorted(tally.refusals.items()))
    print(f"conflicting attempts: {tally.attempts}, granted: {tally.granted}, errors: {tally.errors} "
          f"({refusals}); {counts['kills']} kills, {counts['connections']} connections killed")
    if counts["connections"] == 0:
        print("link_blips: ss -K killed no connection (kernel without CONFIG_INET_DIAG_DESTROY?): SKIP")
        return 77
    if tally.attempts == 0:
        print("link_blips: no attempt was made: FAIL")
        return 1
    return 0 if tally.granted == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
