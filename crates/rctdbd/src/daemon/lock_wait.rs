//! Waiting for locks that clients hold, without blocking any thread that runs the engine
//! (DESIGN §2, the lock rule). A waiter thread blocks in the kernel for an
//! open-file-description lock on the bytes tdb's fcntl locks cover; OFD locks conflict with
//! the clients' fcntl locks, so once the waiter holds them no client can hold the chain (or,
//! for a whole database, any chain). The node then marks the lock as held in its own tdb
//! context (`tdb_chainlock_mark` / `tdb_lockall_mark`, as CTDB does with its lock helpers),
//! does the waiting work, unmarks and releases the OFD lock.
//!
//! A fixed pool of waiter threads, started with the daemon, serves every wait: no wait
//! depends on a thread starting later. A waiter holds out for one lock at most `TURN` while
//! other waits queue, then puts it at the back: locks that stopped clients hold for good
//! cost turns, never every waiter.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use nix::fcntl::{fcntl, FcntlArg};
use parking_lot::Mutex;

use crate::wire::DbId;

/// How long a waiter holds out for one lock while other waits queue.
const TURN: Duration = Duration::from_millis(100);
/// Idle descriptions kept per database; more are closed when given back.
const IDLE_FILES: usize = 4;

/// Open file descriptions of one database file for lock waiters. OFD locks taken through
/// the same description never conflict with each other (and one unlock drops them all), so
/// every outstanding wait has a description of its own. Closing any descriptor of a file
/// drops every fcntl lock this process (and so its tdb context) holds on it, so they are
/// closed only under the node's mutex (`HeldLock::release`), where the daemon's tdb
/// contexts hold no lock between steps.
pub struct LockFiles {
    path: PathBuf,
    idle: Mutex<Vec<File>>,
}

impl LockFiles {
    pub fn new(path: &Path) -> LockFiles {
        LockFiles { path: path.to_owned(), idle: Mutex::new(Vec::new()) }
    }

    pub fn path(&self) -> &Path {
        &self.path
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

    /// Closes idle descriptions past `IDLE_FILES`. Only under the node's mutex (see above).
    fn trim(&self) {
        let extra: Vec<File> = {
            let mut idle = self.idle.lock();
            let keep = idle.len().min(IDLE_FILES);
            idle.split_off(keep)
        };
        drop(extra);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockTarget {
    /// One record's chain, write-locked: the engine may change the record.
    Chain { db_id: DbId, key: Vec<u8> },
    /// One record's chain, for a traverse to read the record (`TdbStore::read_chunk`).
    TraverseChain { db_id: DbId, key: Vec<u8> },
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
    /// A lock another process took through `file` (a description of this database's file)
    /// and handed over: held as if a waiter had taken it.
    pub fn adopted(target: LockTarget, files: Arc<LockFiles>, file: File, start: u64, len: u64) -> HeldLock {
        HeldLock { target, files, file, start, len }
    }

    /// Gives the lock back, and the description it was taken through to the pool. Called
    /// under the node's mutex only.
    pub fn release(self) {
        match ofd_lock(&self.file, self.start, self.len, libc::F_UNLCK, false) {
            Ok(()) => {
                self.files.give_back(self.file);
                self.files.trim();
            }
            // A description that may still hold the lock is not reused (nor closed).
            Err(err) => {
                log::error!("releasing the lock on {:?}: {err}", self.target);
                std::mem::forget(self.file);
            }
        }
    }
}

/// A lock to wait for: `len` bytes at `start` of the file.
struct Wait {
    files: Arc<LockFiles>,
    start: u64,
    len: u64,
    target: LockTarget,
}

/// The waiter threads, and the queue of waits they serve.
pub struct LockWaiters {
    waits: Sender<Wait>,
}

impl LockWaiters {
    /// Starts `count` waiter threads; the locks they take arrive on `held`.
    pub fn start(count: usize, held: Sender<HeldLock>) -> std::io::Result<LockWaiters> {
        let (waits, queue) = crossbeam_channel::unbounded();
        for i in 0..count {
            let (queue, requeue, held) = (queue.clone(), waits.clone(), held.clone());
            std::thread::Builder::new()
                .name(format!("lock-wait{i}"))
                .spawn(move || serve_waits(queue, requeue, held))?;
        }
        Ok(LockWaiters { waits })
    }

    /// Waits for `len` bytes at `start` of the file (a write lock for a chain, a read lock
    /// for all chains) and hands the lock to the node.
    pub fn wait_for(&self, files: Arc<LockFiles>, start: u64, len: u64, target: LockTarget) {
        // The waiters outlive the node, which owns this sender.
        let _ = self.waits.send(Wait { files, start, len, target });
    }
}

fn serve_waits(queue: Receiver<Wait>, requeue: Sender<Wait>, held: Sender<HeldLock>) {
    while let Ok(wait) = queue.recv() {
        let kind = match wait.target {
            LockTarget::Chain { .. }
            | LockTarget::TraverseChain { .. }
            | LockTarget::Freeze { .. }
            | LockTarget::Repack { .. } => libc::F_WRLCK,
        };
        let file = match wait.files.take() {
            Ok(file) => file,
            Err(err) => {
                // The machine's limits (no descriptors), not a client's: wait keeps its turn.
                log::error!("waiting for the lock on {:?}: {err}; trying again", wait.target);
                std::thread::sleep(TURN);
                let _ = requeue.send(wait);
                continue;
            }
        };
        let taken = loop {
            match super::lock_bound::within(TURN, || ofd_lock_once(&file, wait.start, wait.len, kind)) {
                Ok(()) => break true,
                // The turn is over: others first, if any wait.
                Err(nix::errno::Errno::EINTR) if queue.is_empty() => continue,
                Err(nix::errno::Errno::EINTR) => break false,
                Err(err) => {
                    log::error!("waiting for the lock on {:?}: {err}; trying again", wait.target);
                    std::thread::sleep(TURN);
                    break false;
                }
            }
        };
        if !taken {
            wait.files.give_back(file);
            let _ = requeue.send(wait);
            continue;
        }
        let Wait { files, start, len, target } = wait;
        if let Err(unsent) = held.send(HeldLock { target, files, file, start, len }) {
            unsent.into_inner().release(); // the daemon is shutting down
        }
    }
}

fn flock(start: u64, len: u64, kind: libc::c_int) -> libc::flock {
    // SAFETY: flock is a plain C struct for which all-zero bytes are a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = start as libc::off_t;
    lock.l_len = len as libc::off_t;
    lock
}

pub(super) fn ofd_lock(file: &File, start: u64, len: u64, kind: libc::c_int, wait: bool) -> nix::Result<()> {
    let lock = flock(start, len, kind);
    loop {
        let arg = if wait { FcntlArg::F_OFD_SETLKW(&lock) } else { FcntlArg::F_OFD_SETLK(&lock) };
        match fcntl(file.as_raw_fd(), arg) {
            Err(nix::errno::Errno::EINTR) => continue,
            result => return result.map(drop),
        }
    }
}

/// One waiting attempt: EINTR when a signal (the turn's timer) ended it.
fn ofd_lock_once(file: &File, start: u64, len: u64, kind: libc::c_int) -> nix::Result<()> {
    fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLKW(&flock(start, len, kind))).map(drop)
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
        let waiters = LockWaiters::start(2, held).unwrap();
        let chain = |key: &[u8]| LockTarget::Chain { db_id: 1, key: key.to_vec() };
        waiters.wait_for(files.clone(), 8, 1, chain(b"a"));
        let first = arrived.recv_timeout(Duration::from_secs(5)).expect("the first wait gets the lock");
        waiters.wait_for(files.clone(), 8, 1, chain(b"b"));
        waiters.wait_for(files.clone(), 8, 1, LockTarget::TraverseChain { db_id: 1, key: b"c".to_vec() });
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

    /// Locks held for good (by stopped clients) take turns, not every waiter: a free lock
    /// queued behind more held locks than there are waiters is still taken.
    #[test]
    fn locks_held_for_good_do_not_starve_a_free_one() {
        let path = file_of(128);
        let files = Arc::new(LockFiles::new(&path));
        let holder = File::options().read(true).write(true).open(&path).unwrap();
        let chain = |byte: u64| LockTarget::Chain { db_id: 1, key: vec![byte as u8] };
        let (held, arrived) = crossbeam_channel::unbounded();
        let waiters = LockWaiters::start(2, held).unwrap();
        for byte in 0..3 {
            ofd_lock(&holder, byte, 1, libc::F_WRLCK, false).unwrap();
            waiters.wait_for(files.clone(), byte, 1, chain(byte));
        }
        waiters.wait_for(files.clone(), 10, 1, chain(10));
        let lock = arrived.recv_timeout(Duration::from_secs(5)).expect("the free lock is taken");
        assert_eq!(lock.target, chain(10));
        lock.release();
        ofd_lock(&holder, 1, 1, libc::F_UNLCK, false).unwrap();
        let lock = arrived.recv_timeout(Duration::from_secs(5)).expect("a lock given up is taken");
        assert_eq!(lock.target, chain(1));
    }
}
