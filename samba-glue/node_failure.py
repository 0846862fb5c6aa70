#!/usr/bin/env python3
"""A node of the Samba cluster dies while files are open on both nodes.

    node_failure.py HOST_A HOST_B --kill 'COMMAND' [--password P] [--within SECONDS]

Before the failure, node A holds a share-none open of one file and node B holds a
share-none open of another and an exclusive byte-range lock on a third. COMMAND then kills
node A (its rctdbd and its smbd, as a crash would). Node B must go on as one file server:

- B's own share-none open still refuses a second opener, and its byte-range lock still
  refuses a conflicting lock: the records held by a live node survive the recovery;
- A's open died with A: B can open that file exclusively, within --within seconds;
- B creates, writes and reads back a new file.

Prints PASS or FAIL per check and how long B took to serve A's file; exits 0 when every
check passed, 1 otherwise, 2 when the servers could not be reached.
"""

import argparse
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from smb_coherence import (  # noqa: E402
    EXCLUSIVE_NOW,
    OK,
    READ,
    RW,
    SHARE_ALL,
    SHARING_VIOLATION,
    BoundedConnection,
    LOCK_REFUSED,
    Node,
    SMBException,
    close_quietly,
    lock,
    status_name,
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host_a")
    parser.add_argument("host_b")
    parser.add_argument("--kill", required=True, help="shell command that kills node A")
    parser.add_argument("--share", default="share")
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default=os.environ.get("SMBPASS", "Rctdb.Pass1"))
    parser.add_argument("--within", type=float, default=30.0, help="seconds B may take to serve again")
    args = parser.parse_args()
    BoundedConnection.op_timeout = 20

    try:
        a = Node("A", args.host_a, args.share, args.user, args.password)
        b = Node("B", args.host_b, args.share, args.user, args.password)
        b2 = Node("B2", args.host_b, args.share, args.user, args.password)
    except (SMBException, OSError, ValueError) as exc:
        print(f"cannot connect: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2

    prefix = f"failure-{os.getpid()}-"
    on_a, on_b, locked, fresh = (prefix + n for n in ("on-a.dat", "on-b.dat", "locked.dat", "new.dat"))
    results = []

    def record(check, passed, detail):
        results.append(passed)
        print(f"{'PASS' if passed else 'FAIL'} {check}: {detail}", flush=True)

    a.open(on_a, RW, share=0)  # never closed: node A dies holding it
    held_by_b = b.open(on_b, RW, share=0)
    lock_file = b.open(locked, RW, SHARE_ALL)
    status = lock(lock_file, 0, 10, EXCLUSIVE_NOW)
    if status != OK:
        print(f"setup: B's byte-range lock -> {status_name(status)}", file=sys.stderr)
        return 1
    status, probe = b2.try_open(on_a, READ, SHARE_ALL)
    close_quietly(probe)
    record("before.a_open_seen_by_b", status == SHARING_VIOLATION,
           f"B's open of the file A holds share-none -> {status_name(status)}")

    killed_at = time.monotonic()
    kill = subprocess.run(args.kill, shell=True, timeout=60)
    if kill.returncode != 0:
        print(f"the kill command failed ({kill.returncode})", file=sys.stderr)
        return 1

    # A's open is gone with A: B gets the file once the cluster has recovered.
    status = None
    while time.monotonic() - killed_at < args.within:
        try:
            status, handle = b2.try_open(on_a, RW, share=0)
        except (SMBException, OSError, ValueError) as exc:
            status, handle = f"error {type(exc).__name__}", None
        if handle is not None:
            close_quietly(handle)
            break
        time.sleep(0.2)
    served = time.monotonic() - killed_at
    record("after.a_open_released", status == OK,
           f"B's share-none open of the file dead A held -> "
           f"{status_name(status) if isinstance(status, int) else status} after {served:.2f} s")

    status, probe = b2.try_open(on_b, READ, SHARE_ALL)
    close_quietly(probe)
    record("after.b_open_kept", status == SHARING_VIOLATION,
           f"a second open of the file B holds share-none -> {status_name(status)}")

    other = b2.open(locked, RW, SHARE_ALL)
    status = lock(other, 0, 10, EXCLUSIVE_NOW)
    close_quietly(other)
    record("after.b_lock_kept", status in LOCK_REFUSED,
           f"a conflicting lock on B's locked range -> {status_name(status)}")

    handle = b2.open(fresh, RW, SHARE_ALL)
    handle.write(b"still serving", 0)
    data = handle.read(0, 13)
    close_quietly(handle)
    record("after.new_file", data == b"still serving", f"wrote and read back {data!r}")

    close_quietly(held_by_b, lock_file)
    for node in (b, b2):
        node.close()
    print(f"served again: {served:.2f} s after the kill; passed {sum(results)}/{len(results)}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
