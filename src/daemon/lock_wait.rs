//! Waiting for locks that clients hold, without blocking any thread that runs the engine
//! (DESIGN §2, the lock rule). A waiter thread blocks in the kernel for an
//! open-file-description lock on the bytes tdb's fcntl locks cover; OFD locks conflict with
//! the clients' fcntl locks, so once the waiter holds them no client can hold the chain (or,
//! for a whole database, any chain). The node then marks the lock as held in its own tdb
//! context (`tdb_chainlock_mark` / `tdb_lockall_mark`, as CTDB does with its lock helpers),
//! does the waiting work, unmarks and releases the OFD lock.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crossbeam_channel::Sender;
use nix::fcntl::{fcntl, FcntlArg};

use crate::wire::DbId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockTarget {
    /// One record's chain, write-locked: the engine may change the record.
    Chain { db_id: DbId, key: Vec<u8> },
    /// Every chain of a database, read-locked: the engine may read a consistent snapshot.
    AllChains { db_id: DbId },
}

/// A lock a waiter thread took on the node's behalf.
pub struct HeldLock {
    pub target: LockTarget,
    file: Arc<File>,
    start: u64,
    len: u64,
}

impl HeldLock {
    /// Gives the lock back. The waiter's file stays open: closing any descriptor of a file
    /// drops every fcntl lock this process (and so its tdb contexts) holds on it.
    pub fn release(self) {
        if let Err(err) = ofd_lock(&self.file, self.start, self.len, libc::F_UNLCK, false) {
            log::error!("releasing the lock on {:?}: {err}", self.target);
        }
    }
}

/// Starts a thread that waits until it holds `len` bytes at `start` of `file` (a write lock
/// for a chain, a read lock for all chains) and hands the lock to the node.
pub fn wait_for(file: Arc<File>, start: u64, len: u64, target: LockTarget, held: Sender<HeldLock>) {
    let kind = match target {
        LockTarget::Chain { .. } => libc::F_WRLCK,
        LockTarget::AllChains { .. } => libc::F_RDLCK,
    };
    let spawned = std::thread::Builder::new().name("lock-wait".into()).spawn(move || {
        match ofd_lock(&file, start, len, kind, true) {
            Ok(()) => {
                if let Err(unsent) = held.send(HeldLock { target, file, start, len }) {
                    unsent.into_inner().release(); // the daemon is shutting down
                }
            }
            Err(err) => log::error!("waiting for the lock on {target:?}: {err}"),
        }
    });
    if let Err(err) = spawned {
        log::error!("starting a lock waiter: {err}");
    }
}

fn ofd_lock(file: &File, start: u64, len: u64, kind: libc::c_int, wait: bool) -> nix::Result<()> {
    // SAFETY: flock is a plain C struct for which all-zero bytes are a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = start as libc::off_t;
    lock.l_len = len as libc::off_t;
    loop {
        let arg = if wait { FcntlArg::F_OFD_SETLKW(&lock) } else { FcntlArg::F_OFD_SETLK(&lock) };
        match fcntl(file.as_raw_fd(), arg) {
            Err(nix::errno::Errno::EINTR) => continue,
            result => return result.map(drop),
        }
    }
}
