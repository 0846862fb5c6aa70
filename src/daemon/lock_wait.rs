//! Waiting for a chain lock a client holds, without blocking the engine thread (DESIGN §2,
//! the lock rule). A waiter thread blocks in the kernel for an open-file-description lock on
//! the byte tdb's chain lock covers; OFD locks conflict with the clients' fcntl locks, so
//! once it holds it, no client can hold the chain. The engine thread then marks the chain
//! as locked in its own tdb context (`tdb_chainlock_mark`, as CTDB does with its lock
//! helpers), runs the work waiting for that key, unmarks and releases the OFD lock.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crossbeam_channel::Sender;
use nix::fcntl::{fcntl, FcntlArg};

use crate::wire::DbId;

/// A chain lock a waiter thread took on the engine thread's behalf.
pub struct HeldChain {
    pub db_id: DbId,
    pub key: Vec<u8>,
    file: Arc<File>,
    offset: u64,
}

impl HeldChain {
    /// Gives the lock back; the waiter's file stays open, since closing any descriptor of a
    /// file drops every fcntl lock this process (and its tdb context) holds on it.
    pub fn release(self) {
        if let Err(err) = ofd_lock(&self.file, self.offset, libc::F_UNLCK, false) {
            log::error!("releasing the chain lock at byte {} of db {:#x}: {err}", self.offset, self.db_id);
        }
    }
}

/// Starts a thread that waits for the chain lock at `offset` of `file` and hands it to the
/// engine thread through `held`.
pub fn wait_for_chain(file: Arc<File>, offset: u64, db_id: DbId, key: Vec<u8>, held: Sender<HeldChain>) {
    let spawned = std::thread::Builder::new().name("chain-wait".into()).spawn(move || {
        match ofd_lock(&file, offset, libc::F_WRLCK, true) {
            Ok(()) => {
                let chain = HeldChain { db_id, key, file, offset };
                if let Err(unsent) = held.send(chain) {
                    unsent.into_inner().release(); // the daemon is shutting down
                }
            }
            Err(err) => log::error!("waiting for the chain lock at byte {offset} of db {db_id:#x}: {err}"),
        }
    });
    if let Err(err) = spawned {
        log::error!("starting a chain-lock waiter: {err}");
    }
}

fn ofd_lock(file: &File, offset: u64, kind: libc::c_int, wait: bool) -> nix::Result<()> {
    // SAFETY: flock is a plain C struct for which all-zero bytes are a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = offset as libc::off_t;
    lock.l_len = 1;
    loop {
        let arg = if wait { FcntlArg::F_OFD_SETLKW(&lock) } else { FcntlArg::F_OFD_SETLK(&lock) };
        match fcntl(file.as_raw_fd(), arg) {
            Err(nix::errno::Errno::EINTR) => continue,
            result => return result.map(drop),
        }
    }
}
