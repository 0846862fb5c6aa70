//! Waiting for locks that clients hold, without blocking any thread that runs the engine
//! (DESIGN §2, the lock rule). A waiter thread blocks in the kernel for an
//! open-file-description lock on the bytes tdb's fcntl locks cover; OFD locks conflict with
//! the clients' fcntl locks, so once the waiter holds them no client can hold the chain (or,
//! for a whole database, any chain). The node then marks the lock as held in its own tdb
//! context (`tdb_chainlock_mark` / `tdb_lockall_mark`, as CTDB does with its lock helpers),
//! does the waiting work, unmarks and releases the OFD lock.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use nix::fcntl::{fcntl, FcntlArg};
use parking_lot::Mutex;

use crate::wire::DbId;

/// Open file descriptions of one database file for lock waiters. OFD locks taken through
/// the same description never conflict with each other (and one unlock drops them all), so
/// every outstanding wait has a description of its own. They are reused, never closed:
/// closing any descriptor of a file drops every fcntl lock this process (and so its tdb
/// context) holds on it.
pub struct LockFiles {
    path: PathBuf,
    idle: Mutex<Vec<File>>,
}

impl LockFiles {
    pub fn new(path: &Path) -> LockFiles {
        LockFiles { path: path.to_owned(), idle: Mutex::new(Vec::new()) }
    }

    fn take(&self) -> std::io::Result<File> {
        match self.idle.lock().pop() {
            Some(file) => Ok(file),
            None => File::options().read(true).write(true).open(&self.path),
        }
    }

    fn give_back(&self, file: File) {
        self.idle.lock().push(file);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockTarget {
    /// One record's chain, write-locked: the engine may change the record.
    Chain { db_id: DbId, key: Vec<u8> },
    /// Every chain of a database, read-locked: the engine may read a consistent snapshot.
    AllChains { db_id: DbId },
    /// Every chain of a database, write-locked until thawed: no client uses its records.
    Freeze { db_id: DbId },
    /// Every chain of a database, write-locked while it is repacked.
    Repack { db_id: DbId },
}

/// A lock a waiter thread took on the node's behalf.
pub struct HeldLock {
    pub target: LockTarget,
    files: Arc<LockFiles>,
    file: File,
    start: u64,
    len: u64,
}

impl HeldLock {
    /// Gives the lock back, and the description it was taken through to the pool.
    pub fn release(self) {
        match ofd_lock(&self.file, self.start, self.len, libc::F_UNLCK, false) {
            Ok(()) => self.files.give_back(self.file),
            // A description that may still hold the lock is not reused (nor closed).
            Err(err) => {
                log::error!("releasing the lock on {:?}: {err}", self.target);
                std::mem::forget(self.file);
            }
        }
    }
}

/// Starts a thread that waits until it holds `len` bytes at `start` of the file (a write
/// lock for a chain, a read lock for all chains) and hands the lock to the node.
pub fn wait_for(files: Arc<LockFiles>, start: u64, len: u64, target: LockTarget, held: Sender<HeldLock>) {
    let kind = match target {
        LockTarget::Chain { .. } | LockTarget::Freeze { .. } | LockTarget::Repack { .. } => libc::F_WRLCK,
        LockTarget::AllChains { .. } => libc::F_RDLCK,
    };
    let spawned = std::thread::Builder::new().name("lock-wait".into()).spawn(move || {
        let file = loop {
            // Errors here are the machine's (no file descriptions, no locks left), not a
            // client's: keep trying rather than leave the key's work waiting for ever.
            let failure = match files.take() {
                Ok(file) => match ofd_lock(&file, start, len, kind, true) {
                    Ok(()) => break file,
                    Err(err) => {
                        files.give_back(file);
                        err.to_string()
                    }
                },
                Err(err) => err.to_string(),
            };
            log::error!("waiting for the lock on {target:?}: {failure}; trying again");
            std::thread::sleep(Duration::from_millis(100));
        };
        let lock = HeldLock { target, files, file, start, len };
        if let Err(unsent) = held.send(lock) {
            unsent.into_inner().release(); // the daemon is shutting down
        }
    });
    if let Err(err) = spawned {
        log::error!("starting a lock waiter: {err}");
    }
}

pub(super) fn ofd_lock(file: &File, start: u64, len: u64, kind: libc::c_int, wait: bool) -> nix::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn file_of(bytes: usize) -> PathBuf {
        let path = std::env::temp_dir().join(format!("rctdb-lockwait-{}-{bytes}", std::process::id()));
        std::fs::write(&path, vec![0u8; bytes]).expect("scratch file");
        path
    }

    /// Two waits for the same byte must exclude each other although one pool serves both
    /// (OFD locks through one shared description would not).
    #[test]
    fn waits_for_the_same_byte_exclude_each_other() {
        let files = Arc::new(LockFiles::new(&file_of(64)));
        let (held, arrived) = crossbeam_channel::unbounded();
        let chain = |key: &[u8]| LockTarget::Chain { db_id: 1, key: key.to_vec() };
        wait_for(files.clone(), 8, 1, chain(b"a"), held.clone());
        let first = arrived.recv_timeout(Duration::from_secs(5)).expect("the first wait gets the lock");
        wait_for(files.clone(), 8, 1, chain(b"b"), held.clone());
        wait_for(files.clone(), 0, 64, LockTarget::AllChains { db_id: 1 }, held);
        assert!(
            arrived.recv_timeout(Duration::from_millis(300)).is_err(),
            "nobody else gets the byte while the first holds it"
        );
        first.release();
        let second = arrived.recv_timeout(Duration::from_secs(5)).expect("then another wait gets it");
        assert!(arrived.recv_timeout(Duration::from_millis(300)).is_err(), "but only one");
        second.release();
        arrived.recv_timeout(Duration::from_secs(5)).expect("and then the last");
    }
}
