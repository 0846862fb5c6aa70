#!/usr/bin/env python3
"""Two unclustered smbd on one rctdb cluster: records are shared, conflicts are not.

    split_brain_demo.py HOST_A HOST_B [--share share] [--user root] [--password P]
                        [--records 'COMMAND'] [--where 'NODE=COMMAND' ...]

HOST_A and HOST_B are two smbd with `clustering = no`, each on the tdb preload and on its
own rctdb node, exporting one directory. Client A opens a file through HOST_A, takes an
exclusive byte-range lock on it and keeps it open; a second client of HOST_A is refused
the same lock (one node is coherent); then client B asks HOST_B for it. The same again
with a share mode (an open that denies everyone else). With --records and --where (as
test_preload.sh passes them) it shows, after A's lock and after B's attempt, brlock.tdb
as node B's rctdbd serves it, decoded, and which node's file holds the record: A's lock
is there for B's smbd to read, and the record migrates to node B when B's smbd does.

On a coherent cluster B would be refused both times. Here B's smbd reads A's entries but
judges them by their server_id: `clustering = no` gives every server_id vnn 0xFFFFFFFF
("this node"), so it looks for A's process in its own messaging directory, does not find
it, takes the entries for those of a dead process, deletes them and grants B's request.

Prints what each server answered and a last line `split brain: ...`. Exit status 0 when
the demo showed what it claims (A's node refused, B's node granted both conflicts), 1
otherwise, 2 when the servers could not be reached. Needs smbprotocol (pip).
"""

import argparse
import struct
import subprocess
import sys
import uuid

try:
    from smbprotocol.connection import Connection
    from smbprotocol.exceptions import SMBResponseException
    from smbprotocol.open import (
        CreateDisposition,
        CreateOptions,
        FileAttributes,
        FilePipePrinterAccessMask,
        ImpersonationLevel,
        LockFlags,
        Open,
        ShareAccess,
        SMB2LockElement,
    )
    from smbprotocol.session import Session
    from smbprotocol.tree import TreeConnect
except ImportError:
    print("split_brain_demo.py: needs smbprotocol (python3 -m pip install smbprotocol)", file=sys.stderr)
    sys.exit(2)

READ_WRITE = FilePipePrinterAccessMask.GENERIC_READ | FilePipePrinterAccessMask.GENERIC_WRITE
SHARE_ALL = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE | ShareAccess.FILE_SHARE_DELETE
EXCLUSIVE_NOW = LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY


class Client:
    """One SMB2 connection, session and tree connect to //host/share."""

    def __init__(self, host, args):
        self.host = host
        self.connection = Connection(uuid.uuid4(), host, 445)
        self.connection.connect(timeout=10)
        self.session = Session(self.connection, args.user, args.password, require_encryption=False)
        self.session.connect()
        self.tree = TreeConnect(self.session, rf"\\{host}\{args.share}")
        self.tree.connect()

    def open(self, name, share):
        handle = Open(self.tree, name)
        handle.create(
            ImpersonationLevel.Impersonation,
            READ_WRITE,
            FileAttributes.FILE_ATTRIBUTE_NORMAL,
            share,
            CreateDisposition.FILE_OPEN_IF,
            CreateOptions.FILE_NON_DIRECTORY_FILE,
        )
        return handle

    def close(self):
        self.connection.disconnect(True)


STATUS_NAMES = {0xC0000055: "STATUS_LOCK_NOT_GRANTED", 0xC0000043: "STATUS_SHARING_VIOLATION",
                0xC0000054: "STATUS_FILE_LOCK_CONFLICT"}


def status_name(e):
    return STATUS_NAMES.get(e.status, f"NT status {e.status:#010x}")


def attempt(call):
    try:
        call()
        return "granted"
    except SMBResponseException as e:
        return "refused (" + status_name(e) + ")"


def lock_0_100(handle):
    element = SMB2LockElement()
    element["offset"] = 0
    element["length"] = 100
    element["flags"] = EXCLUSIVE_NOW
    handle.lock([element], wait=True)


def brlock_entries(data):
    """Samba's byte-range lock records: 72-byte lock_structs, of which we show the range, the
    type and the owner's server_id (pid, vnn)."""
    for at in range(0, len(data) - 71, 72):
        pid, vnn = struct.unpack_from("<Q", data, at + 16)[0], struct.unpack_from("<I", data, at + 28)[0]
        start, size = struct.unpack_from("<QQ", data, at + 40)
        kind = {0: "READ", 1: "WRITE"}.get(struct.unpack_from("<I", data, at + 64)[0], "?")
        yield f"bytes {start}-{start + size - 1} {kind}, owner smbd pid {pid} vnn {vnn:#x}"


def run(command):
    done = subprocess.run(command, shell=True, timeout=60, capture_output=True, text=True, check=False)
    return done.stdout.splitlines()


def show(args, label):
    """brlock.tdb as node B's rctdbd serves it, and where its records live."""
    if not args.records:
        return
    print(f"    [{label}] brlock.tdb read through node B's rctdbd:")
    keys = set()
    for line in run(args.records):
        words = line.split()
        if len(words) != 4 or words[0] != "key":
            continue
        keys.add(words[1])
        key, data = bytes.fromhex(words[1]), bytes.fromhex(words[3])
        dev, ino = struct.unpack_from("<QQ", key)
        for entry in brlock_entries(data):
            print(f"      file {dev:#x}:{ino:#x}: lock {entry}")
    for where in args.where or []:
        node, _, command = where.partition("=")
        for line in run(command):
            words = line.split()
            if len(words) == 8 and words[1] in keys and words[7] != "0":
                print(f"      its header in {node}'s file: dmaster {words[3]}, rsn {words[5]}")
    sys.stdout.flush()


def byte_range_lock(a, a2, b, args):
    name = f"brl-{uuid.uuid4().hex[:8]}.dat"
    held = a.open(name, SHARE_ALL)
    held.write(b"x" * 100, 0)
    lock_0_100(held)
    print(f"A  ({a.host}) exclusive lock on {name} bytes 0-99: granted, held")
    show(args, "after A's lock")
    same_node = attempt(lambda: lock_0_100(a2.open(name, SHARE_ALL)))
    print(f"A2 ({a2.host}) the same lock, same node: {same_node}")
    other_node = attempt(lambda: lock_0_100(b.open(name, SHARE_ALL)))
    print(f"B  ({b.host}) the same lock, other node: {other_node}")
    show(args, "after B's attempt")
    return same_node.startswith("refused"), other_node == "granted"


def share_mode(a, a2, b):
    name = f"share-{uuid.uuid4().hex[:8]}.dat"
    a.open(name, 0)
    print(f"A  ({a.host}) open of {name} denying read, write and delete to others: granted, held")
    same_node = attempt(lambda: a2.open(name, SHARE_ALL))
    print(f"A2 ({a2.host}) open of the same file, same node: {same_node}")
    other_node = attempt(lambda: b.open(name, SHARE_ALL))
    print(f"B  ({b.host}) open of the same file, other node: {other_node}")
    return same_node.startswith("refused"), other_node == "granted"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host_a")
    parser.add_argument("host_b")
    parser.add_argument("--share", default="share")
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", required=True)
    parser.add_argument("--records", help="command printing brlock.tdb through node B's rctdbd "
                        "as 'key HEX data HEX' lines (preload_check DIR dump brlock.tdb)")
    parser.add_argument("--where", action="append", help="NODE=COMMAND printing the record headers "
                        "of that node's file (preload_check - headers FILE); repeatable")
    args = parser.parse_args()
    try:
        a, a2, b = Client(args.host_a, args), Client(args.host_a, args), Client(args.host_b, args)
    except Exception as e:  # any failure to connect or log on
        print(f"split_brain_demo.py: cannot reach the servers: {e}", file=sys.stderr)
        return 2
    try:
        brl_refused_here, brl_granted_there = byte_range_lock(a, a2, b, args)
        print()
        share_refused_here, share_granted_there = share_mode(a, a2, b)
    finally:
        for client in (a, a2, b):
            client.close()
    conflicts = [
        what
        for what, granted in (("byte-range lock", brl_granted_there), ("share mode", share_granted_there))
        if granted
    ]
    print()
    if brl_refused_here and share_refused_here and len(conflicts) == 2:
        print("split brain: node A refused both conflicts to its own clients; node B granted both "
              "(" + ", ".join(conflicts) + ")")
        return 0
    print(f"split brain not shown: same node refused lock={brl_refused_here} share={share_refused_here}; "
          f"other node granted {conflicts or 'nothing'}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
