#!/usr/bin/env python3
"""Conflicting opens and locks across two clustered smbd while the cluster's links are
killed again and again (link blips must be invisible to Samba).

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
from smb_coherence import HeldFiles, Node, Tally  # noqa: E402


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
    held = HeldFiles(a, b, f"blips-{os.getpid()}-", args.files)
    if not held.locked:
        print(f"A could not lock {held.lock_name}: nothing to test")
        return 1
    tally = Tally()
    # Without kills every attempt must be refused too: otherwise the check proves nothing.
    held.try_conflicts(tally)
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
            held.try_conflicts(tally)
            if time.monotonic() - last_report >= 1:
                last_report = time.monotonic()
                print(f"{last_report - started:5.1f}s: {tally.attempts} attempts, {tally.granted} granted, "
                      f"{tally.errors} errors, {counts['kills']} kills", flush=True)
    finally:
        stop.set()
        thread.join()
    held.close()
    a.close()
    b.close()

    print(f"{tally.summary()}; {counts['kills']} kills, {counts['connections']} connections killed")
    if counts["connections"] == 0:
        print("link_blips: ss -K killed no connection (kernel without CONFIG_INET_DIAG_DESTROY?): SKIP")
        return 77
    if tally.attempts == 0:
        print("link_blips: no attempt was made: FAIL")
        return 1
    return 0 if tally.granted == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
