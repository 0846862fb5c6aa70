#!/usr/bin/env python3
"""Cross-node coherence of two SMB servers that export one directory.

    smb_coherence.py HOST_A HOST_B [--share share] [--user root] [--password P]
                     [--expect-split-brain]

Node A and node B are two smbd of one cluster (cluster.sh puts them on 127.0.0.2 and
127.0.0.3). Each check opens the same file through both and asks whether B sees what A
holds: byte-range locks (a conflicting lock, an overlapping one, a shared one on an
exclusive one, a write into a locked range, a waiter woken by the unlock, locks dropped
by a close), share modes (an exclusive open, a deny-write open, compatible opens, the
file free again after a close) and an oplock break sent to the other node. Each check
prints PASS or FAIL with what the servers answered, then a line `coherent: N/M`.

Exit status: 0 when every check passed; 1 when one failed. With --expect-split-brain
(the plain backend: two unclustered smbd over one directory) the control case: 0 only
when every check of a cross-node conflict failed and every check without one
(NO_CONFLICT) passed, with no errors, so that each check is shown to tell a cluster
from a split brain; 1 otherwise. 2: the servers could not be reached.

Written against smbprotocol's low-level API (smbprotocol.connection/session/tree/open);
installs smbprotocol with pip for this interpreter if it is missing.
"""

import argparse
import importlib
import os
import subprocess
import sys
import time
import uuid


def ensure_smbprotocol():
    try:
        importlib.import_module("smbprotocol")
        return
    except ImportError:
        pass
    print(f"installing smbprotocol for {sys.executable}", file=sys.stderr)
    base = [sys.executable, "-m", "pip", "install", "--quiet", "smbprotocol"]
    # Debian's python refuses plain pip installs (PEP 668) unless told
    for cmd in (base, base + ["--break-system-packages"]):
        if subprocess.run(cmd, timeout=300).returncode == 0:
            importlib.invalidate_caches()
            return
    sys.exit(f"cannot install smbprotocol for {sys.executable}")


ensure_smbprotocol()

from smbprotocol.connection import Connection, Request  # noqa: E402
from smbprotocol.exceptions import SMBException, SMBResponseException  # noqa: E402
from smbprotocol.header import NtStatus, SMB2HeaderRequest  # noqa: E402
from smbprotocol.open import (  # noqa: E402
    CreateDisposition,
    CreateOptions,
    FileAttributes,
    FilePipePrinterAccessMask as Access,
    ImpersonationLevel,
    LockFlags,
    Open,
    RequestedOplockLevel,
    ShareAccess,
    SMB2LockElement,
)
from smbprotocol.session import Session  # noqa: E402
from smbprotocol.tree import TreeConnect  # noqa: E402

STATUS_FILE_LOCK_CONFLICT = 0xC0000054
STATUS_LOCK_NOT_GRANTED = 0xC0000055
LOCK_REFUSED = (STATUS_LOCK_NOT_GRANTED, STATUS_FILE_LOCK_CONFLICT)
OK = NtStatus.STATUS_SUCCESS
PENDING = NtStatus.STATUS_PENDING
SHARING_VIOLATION = NtStatus.STATUS_SHARING_VIOLATION

# An oplock break notification carries this message id (MS-SMB2 3.3.4.6).
UNSOLICITED = 0xFFFFFFFFFFFFFFFF

RW = Access.FILE_READ_DATA | Access.FILE_WRITE_DATA | Access.FILE_READ_ATTRIBUTES
READ = Access.FILE_READ_DATA | Access.FILE_READ_ATTRIBUTES
WRITE = Access.FILE_WRITE_DATA | Access.FILE_READ_ATTRIBUTES
SHARE_RW = ShareAccess.FILE_SHARE_READ | ShareAccess.FILE_SHARE_WRITE
SHARE_ALL = SHARE_RW | ShareAccess.FILE_SHARE_DELETE

OPLOCK_NAMES = {0: "none", 1: "level II", 8: "exclusive", 9: "batch", 0xFF: "lease"}


def status_name(status):
    names = {
        OK: "STATUS_SUCCESS",
        PENDING: "STATUS_PENDING",
        SHARING_VIOLATION: "STATUS_SHARING_VIOLATION",
        STATUS_LOCK_NOT_GRANTED: "STATUS_LOCK_NOT_GRANTED",
        STATUS_FILE_LOCK_CONFLICT: "STATUS_FILE_LOCK_CONFLICT",
    }
    return names.get(status, f"0x{status:08X}")


class BoundedConnection(Connection):
    """A Connection whose every wait for a response ends after op_timeout seconds, so a
    server that never answers fails a check instead of hanging the script."""

    op_timeout = 20

    def receive(self, request, wait=True, timeout=None, resolve_symlinks=True):
        if timeout is None:
            timeout = self.op_timeout
        return super().receive(request, wait=wait, timeout=timeout, resolve_symlinks=resolve_symlinks)


class Node:
    """One authenticated tree connect to one server, with a slot that catches the
    oplock break notifications smbprotocol itself does not expect."""

    def __init__(self, label, host, share, user, password):
        self.label = label
        self.host = host
        self.conn = BoundedConnection(uuid.uuid4(), host, 445)
        self.conn.connect(timeout=10)
        self.session = Session(self.conn, user, password, require_encryption=False)
        self.session.connect()
        self.tree = TreeConnect(self.session, rf"\\{host}\{share}")
        self.tree.connect()
        self.breaks = self._break_slot()

    def _break_slot(self):
        # smbprotocol's receiver looks every response up by message id; without an entry
        # for the unsolicited id a break notification would stop its receive thread.
        header = SMB2HeaderRequest()
        header["message_id"] = UNSOLICITED
        slot = Request(header, None, self.conn, self.session.session_id)
        self.conn.outstanding_requests[UNSOLICITED] = slot
        return slot

    def open(self, name, access=RW, share=SHARE_RW, oplock=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_NONE):
        handle = Open(self.tree, name)
        handle.create(
            ImpersonationLevel.Impersonation,
            access,
            FileAttributes.FILE_ATTRIBUTE_NORMAL,
            share,
            CreateDisposition.FILE_OPEN_IF,
            CreateOptions.FILE_NON_DIRECTORY_FILE,
            oplock_level=oplock,
        )
        return handle

    def try_open(self, name, access=RW, share=SHARE_RW):
        """(status, handle or None)"""
        try:
            return OK, self.open(name, access, share)
        except SMBResponseException as exc:
            return exc.status, None

    def close(self):
        try:
            self.tree.disconnect()
            self.session.disconnect()
        except SMBException:
            pass
        self.conn.disconnect()


def lock_element(offset, length, flags):
    element = SMB2LockElement()
    element["offset"] = offset
    element["length"] = length
    element["flags"] = flags
    return element


EXCLUSIVE_NOW = LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY
SHARED_NOW = LockFlags.SMB2_LOCKFLAG_SHARED_LOCK | LockFlags.SMB2_LOCKFLAG_FAIL_IMMEDIATELY


def lock(handle, offset, length, flags=EXCLUSIVE_NOW):
    try:
        handle.lock([lock_element(offset, length, flags)])
        return OK
    except SMBResponseException as exc:
        return exc.status


def unlock(handle, offset, length):
    return lock(handle, offset, length, LockFlags.SMB2_LOCKFLAG_UNLOCK)


def write(handle, offset, data):
    try:
        handle.write(data, offset)
        return OK
    except SMBResponseException as exc:
        return exc.status


def close_quietly(*handles):
    for handle in handles:
        if handle is None:
            continue
        try:
            handle.close()
        except SMBException:
            pass


NO_SHARING = 0
CONFLICT_RANGE = (0, 100)


class Tally:
    """Node B's conflicting attempts: how each was answered, and each grant's time
    (time.monotonic() when its answer came) and what it granted."""

    def __init__(self):
        self.attempts = 0
        self.granted = 0
        self.grant_times = []
        self.errors = 0
        self.refusals = {}

    def refused(self, status):
        self.attempts += 1
        name = status_name(status)
        self.refusals[name] = self.refusals.get(name, 0) + 1

    def grant(self, what):
        self.attempts += 1
        self.granted += 1
        self.grant_times.append((time.monotonic(), what))

    def summary(self):
        refusals = ", ".join(f"{n} {name}" for name, n in sorted(self.refusals.items()))
        return f"conflicting attempts: {self.attempts}, granted: {self.granted}, errors: {self.errors} ({refusals})"


class HeldFiles:
    """Node A holds FILES files open with no sharing and an exclusive byte-range lock on
    one more (opened with sharing, so that node B can try the lock); node B tries to open
    each of those files and to take the lock. Every attempt must be refused."""

    def __init__(self, a, b, prefix, files):
        self.a = a
        self.b = b
        self.names = [f"{prefix}{i}.dat" for i in range(files)]
        self.lock_name = f"{prefix}lock.dat"
        self.held = [a.open(name, RW, NO_SHARING) for name in self.names]
        self.a_lock = a.open(self.lock_name, RW, SHARE_ALL)
        self.locked = lock(self.a_lock, *CONFLICT_RANGE) == OK
        self.b_lock = b.open(self.lock_name, RW, SHARE_ALL)

    def try_conflicts(self, tally, show_grants=True):
        """One round: each no-sharing file opened from B, then A's locked range."""
        for name in self.names:
            try:
                status, handle = self.b.try_open(name, RW, SHARE_ALL)
            except (SMBException, OSError, ValueError) as exc:
                tally.errors += 1
                print(f"error opening {name} on B: {type(exc).__name__}: {exc}", flush=True)
                continue
            if status == OK:
                tally.grant(f"B opened {name}, which A holds with no sharing")
                if show_grants:
                    print(f"GRANTED: {tally.grant_times[-1][1]}", flush=True)
                close_quietly(handle)
            elif status == SHARING_VIOLATION:
                tally.refused(status)
            else:
                tally.errors += 1
                print(f"B's open of {name}: {status_name(status)}", flush=True)
        try:
            status = lock(self.b_lock, *CONFLICT_RANGE, EXCLUSIVE_NOW)
        except (SMBException, OSError, ValueError) as exc:
            tally.errors += 1
            print(f"error locking {self.lock_name} on B: {type(exc).__name__}: {exc}", flush=True)
            return
        if status == OK:
            tally.grant(f"B locked {CONFLICT_RANGE} of {self.lock_name}, which A holds")
            if show_grants:
                print(f"GRANTED: {tally.grant_times[-1][1]}", flush=True)
            unlock(self.b_lock, *CONFLICT_RANGE)
        elif status in LOCK_REFUSED:
            tally.refused(status)
        else:
            tally.errors += 1
            print(f"B's lock of {self.lock_name}: {status_name(status)}", flush=True)

    def close(self):
        close_quietly(self.b_lock)
        close_quietly(self.a_lock, *self.held)


# Checks that two unclustered smbd pass too: nothing on the other node conflicts.
NO_CONFLICT = {
    "lock.disjoint_granted",
    "lock.granted_after_unlock",
    "share.deny_write_admits_reader",
    "share.compatible_opens",
}


class Checks:
    """The checks, in order; each returns (passed, what happened). Later checks of a
    group build on the state the earlier ones left (A's locks, A's open handles)."""

    def __init__(self, a, b):
        self.a = a
        self.b = b
        self.prefix = f"coherence-{os.getpid()}-"
        self.files = []
        self.results = []
        # checks that ended in an error rather than an answer
        self.errors = []

    def name(self, what):
        name = f"{self.prefix}{what}.dat"
        self.files.append(name)
        return name

    def record(self, check, passed, detail):
        self.results.append((check, passed))
        print(f"{'PASS' if passed else 'FAIL'} {check}: {detail}", flush=True)

    def run(self, check, func, *args):
        try:
            passed, detail = func(*args)
        except (SMBException, OSError, ValueError) as exc:
            passed, detail = False, f"error: {type(exc).__name__}: {exc}"
            self.errors.append(check)
        self.record(check, passed, detail)

    def expect_refused(self, handle, offset, length, flags, what):
        """B asks for a lock that A's lock excludes; a grant is a split brain (and is
        given back so the later checks start from A's lock alone)."""
        status = lock(handle, offset, length, flags)
        if status == OK:
            unlock(handle, offset, length)
            return False, f"{what} was GRANTED on {self.b.label} while {self.a.label} holds the range"
        return status in LOCK_REFUSED, f"{what} -> {status_name(status)}"

    # --- byte-range locks -------------------------------------------------------
    def byte_range_locks(self):
        name = self.name("brl")
        fa = self.a.open(name)
        fb = None
        try:
            status = lock(fa, 0, 100)
            if status != OK:
                self.record("lock.setup", False, f"A's exclusive lock [0,100) -> {status_name(status)}")
                self.errors.append("lock.setup")
                return
            fb = self.b.open(name)
            self.run("lock.exclusive_conflicts", self.expect_refused, fb, 0, 100, EXCLUSIVE_NOW,
                     "B's exclusive lock [0,100) on A's exclusive [0,100)")
            self.run("lock.overlap_conflicts", self.expect_refused, fb, 50, 100, EXCLUSIVE_NOW,
                     "B's exclusive lock [50,150) overlapping A's [0,100)")
            self.run("lock.shared_conflicts", self.expect_refused, fb, 10, 10, SHARED_NOW,
                     "B's shared lock [10,20) inside A's exclusive [0,100)")
            self.run("lock.disjoint_granted", self.disjoint_granted, fb)
            self.run("lock.write_into_locked_range", self.write_into_locked, fb)
            self.run("lock.granted_after_unlock", self.granted_after_unlock, fa, fb)
            self.run("lock.reverse_direction", self.expect_refused_reverse, fa, fb)
            self.run("lock.waiter_woken_by_unlock", self.waiter_woken, fa, fb)
            self.run("lock.released_by_close", self.released_by_close, fa, fb)
            fa = None  # released_by_close closed it
        finally:
            close_quietly(fa, fb)

    def disjoint_granted(self, fb):
        status = lock(fb, 200, 100)
        if status == OK:
            unlock(fb, 200, 100)
        return status == OK, f"B's exclusive lock [200,300) beside A's [0,100) -> {status_name(status)}"

    def write_into_locked(self, fb):
        status = write(fb, 0, b"from node B")
        if status == OK:
            return False, "B's write at 0 into A's exclusive [0,100) SUCCEEDED"
        return status == STATUS_FILE_LOCK_CONFLICT, f"B's write at 0 into A's exclusive [0,100) -> {status_name(status)}"

    def granted_after_unlock(self, fa, fb):
        status = unlock(fa, 0, 100)
        if status != OK:
            return False, f"A's unlock [0,100) -> {status_name(status)}"
        status = lock(fb, 0, 100)
        return status == OK, f"after A's unlock, B's exclusive lock [0,100) -> {status_name(status)}"

    def expect_refused_reverse(self, fa, fb):
        # B holds [0,100) from the check before (when it got it)
        status = lock(fa, 0, 100)
        if status == OK:
            unlock(fa, 0, 100)
            unlock(fb, 0, 100)
            return False, "A's exclusive lock [0,100) was GRANTED while B holds it"
        unlock(fb, 0, 100)
        return status in LOCK_REFUSED, f"A's exclusive lock [0,100) on B's -> {status_name(status)}"

    def waiter_woken(self, fa, fb):
        """B waits for A's range (no FAIL_IMMEDIATELY); A's unlock on the other node must
        wake B's server."""
        status = lock(fa, 300, 10)
        if status != OK:
            return False, f"A's exclusive lock [300,310) -> {status_name(status)}"
        request_msg, receive = fb.lock([lock_element(300, 10, LockFlags.SMB2_LOCKFLAG_EXCLUSIVE_LOCK)], send=False)
        request = self.b.conn.send(request_msg, self.b.session.session_id, self.b.tree.tree_connect_id)
        request.response_event.wait(timeout=1.0)
        early = request.response["status"].get_value() if request.response is not None else None
        if early not in (None, PENDING):
            unlock(fa, 300, 10)
            if early == OK:
                unlock(fb, 300, 10)
                return False, "B's blocking lock [300,310) was GRANTED at once while A holds it"
            return False, f"B's blocking lock [300,310) -> {status_name(early)} at once"
        unlock(fa, 300, 10)
        try:
            receive(request)
        except SMBResponseException as exc:
            return False, f"B's blocking lock after A's unlock -> {status_name(exc.status)}"
        except SMBException as exc:
            request.cancel()
            return False, f"B's blocking lock was not granted after A's unlock: {exc}"
        unlock(fb, 300, 10)
        return True, "B's blocking lock [300,310) waited, then was granted after A's unlock"

    def released_by_close(self, fa, fb):
        status = lock(fa, 400, 10)
        if status != OK:
            return False, f"A's exclusive lock [400,410) -> {status_name(status)}"
        before = lock(fb, 400, 10)
        if before == OK:
            unlock(fb, 400, 10)
            fa.close()
            return False, "B's lock [400,410) was GRANTED while A holds it (before the close)"
        fa.close()
        status = lock(fb, 400, 10)
        if status == OK:
            unlock(fb, 400, 10)
        return status == OK, (f"B's lock [400,410): {status_name(before)} while A holds it, "
                              f"{status_name(status)} after A's close")

    # --- share modes ------------------------------------------------------------
    def share_modes(self):
        self.run("share.exclusive_open_conflicts", self.exclusive_open)
        self.run("share.deny_write_refuses_writer", self.deny_write, WRITE, False)
        self.run("share.deny_write_admits_reader", self.deny_write, READ, True)
        self.run("share.compatible_opens", self.compatible_opens)
        self.run("share.free_after_close", self.free_after_close)

    def exclusive_open(self):
        name = self.name("share-excl")
        fa = self.a.open(name, RW, share=0)
        try:
            status, fb = self.b.try_open(name, READ, SHARE_ALL)
            close_quietly(fb)
        finally:
            fa.close()
        if status == OK:
            return False, "B's read open SUCCEEDED while A has the file open with share access none"
        return status == SHARING_VIOLATION, f"B's read open against A's share-none open -> {status_name(status)}"

    def deny_write(self, access, allowed):
        name = self.name(f"share-denywrite-{'r' if allowed else 'w'}")
        fa = self.a.open(name, RW, share=ShareAccess.FILE_SHARE_READ)
        try:
            status, fb = self.b.try_open(name, access, SHARE_ALL)
            close_quietly(fb)
        finally:
            fa.close()
        what = "read" if allowed else "write"
        detail = f"B's {what} open against A's read+write open sharing read only -> {status_name(status)}"
        return (status == OK) if allowed else (status == SHARING_VIOLATION), detail

    def compatible_opens(self):
        name = self.name("share-compatible")
        fa = self.a.open(name, RW, SHARE_RW)
        try:
            status, fb = self.b.try_open(name, RW, SHARE_RW)
            close_quietly(fb)
        finally:
            fa.close()
        return status == OK, f"B's read+write open beside A's, both sharing read+write -> {status_name(status)}"

    def free_after_close(self):
        name = self.name("share-after-close")
        fa = self.a.open(name, RW, share=0)
        fa.close()
        status, fb = self.b.try_open(name, RW, share=0)
        if fb is None:
            return False, f"after A closed its share-none open, B's share-none open -> {status_name(status)}"
        try:
            back, fa = self.a.try_open(name, READ, SHARE_ALL)
            close_quietly(fa)
        finally:
            fb.close()
        passed = back == SHARING_VIOLATION
        return passed, (f"after A's close B opened share-none ({status_name(status)}); "
                        f"A's read open then -> {status_name(back)}")

    # --- oplocks ----------------------------------------------------------------
    def oplocks(self):
        self.run("oplock.break_to_other_node", self.oplock_break)

    def oplock_break(self):
        """A holds a batch oplock; B's open must make B's server break it on A's node
        before it answers B."""
        name = self.name("oplock")
        fa = self.a.open(name, RW, SHARE_ALL, oplock=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_BATCH)
        if fa.oplock_level != RequestedOplockLevel.SMB2_OPLOCK_LEVEL_BATCH:
            fa.close()
            return False, f"A was not granted a batch oplock (got {OPLOCK_NAMES.get(fa.oplock_level)})"
        fb = Open(self.b.tree, name)
        request_msg, receive = fb.create(
            ImpersonationLevel.Impersonation, RW, FileAttributes.FILE_ATTRIBUTE_NORMAL, SHARE_ALL,
            CreateDisposition.FILE_OPEN_IF, CreateOptions.FILE_NON_DIRECTORY_FILE,
            oplock_level=RequestedOplockLevel.SMB2_OPLOCK_LEVEL_BATCH, send=False)
        request = self.b.conn.send(request_msg, self.b.session.session_id, self.b.tree.tree_connect_id)
        broke = self.wait_break_or_answer(request)
        if not broke:
            b_done = request.response is not None and request.response["status"].get_value() != PENDING
            fa.close()
            if b_done:
                receive(request)
                fb.close()
                return False, (f"B's open was answered (oplock {OPLOCK_NAMES.get(fb.oplock_level)}) while A holds "
                               "a batch oplock, and A got no break")
            request.cancel()
            return False, "A got no oplock break within 5 s and B's open did not complete"
        level = self.a.breaks.response["data"].get_value()[2]
        # closing the handle answers the break
        fa.close()
        receive(request)
        fb.close()
        return True, (f"A got a break to {OPLOCK_NAMES.get(level, level)}; B's open completed after A's close "
                      f"with oplock {OPLOCK_NAMES.get(fb.oplock_level)}")

    def wait_break_or_answer(self, request, seconds=5.0):
        """True once A has a break notification; False if B's open got its final answer
        first or nothing happened within `seconds`."""
        deadline = seconds
        step = 0.05
        while deadline > 0:
            if self.a.breaks.response_event.wait(timeout=step):
                return True
            response = request.response
            if response is not None and response["status"].get_value() != PENDING:
                # give a break that crossed with the answer a moment to arrive
                return self.a.breaks.response_event.wait(timeout=0.5)
            deadline -= step
        return False

    def cleanup(self):
        for name in self.files:
            handle = Open(self.a.tree, name)
            try:
                handle.create(
                    ImpersonationLevel.Impersonation, Access.DELETE, FileAttributes.FILE_ATTRIBUTE_NORMAL,
                    SHARE_ALL, CreateDisposition.FILE_OPEN,
                    CreateOptions.FILE_NON_DIRECTORY_FILE | CreateOptions.FILE_DELETE_ON_CLOSE)
                handle.close()
            except SMBException:
                pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("host_a")
    parser.add_argument("host_b")
    parser.add_argument("--share", default="share")
    parser.add_argument("--user", default="root")
    parser.add_argument("--password", default=os.environ.get("SMBPASS", "Rctdb.Pass1"))
    parser.add_argument("--timeout", type=int, default=20, help="seconds to wait for any one answer")
    parser.add_argument("--expect-split-brain", action="store_true",
                        help="succeed only if at least one cross-node conflict went unnoticed")
    args = parser.parse_args()
    BoundedConnection.op_timeout = args.timeout

    try:
        a = Node("A", args.host_a, args.share, args.user, args.password)
        b = Node("B", args.host_b, args.share, args.user, args.password)
    except (SMBException, OSError, ValueError) as exc:
        print(f"cannot connect: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(f"node A = //{args.host_a}/{args.share} ({a.conn.dialect:#x}), "
          f"node B = //{args.host_b}/{args.share} ({b.conn.dialect:#x})", flush=True)
    checks = Checks(a, b)
    try:
        for group in (checks.byte_range_locks, checks.share_modes, checks.oplocks):
            try:
                group()
            except (SMBException, OSError, ValueError) as exc:
                checks.record(group.__name__, False, f"error: {type(exc).__name__}: {exc}")
                checks.errors.append(group.__name__)
        checks.cleanup()
    finally:
        a.close()
        b.close()

    passed = sum(1 for _, ok in checks.results if ok)
    total = len(checks.results)
    print(f"coherent: {passed}/{total}")
    if args.expect_split_brain:
        # Each conflict check must catch the split brain, and only those may fail.
        wrong = [check for check, ok in checks.results if ok != (check in NO_CONFLICT)]
        if checks.errors or wrong or total < len(NO_CONFLICT) + 1:
            print(f"split brain NOT shown as expected: errors {checks.errors}, "
                  f"checks with the wrong verdict {wrong}")
            return 1
        print(f"split brain shown by every conflict check ({total - passed} of {total})")
        return 0
    return 0 if passed == total else 1


if __name__ == "__main__":
    sys.exit(main())
