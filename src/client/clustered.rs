//! A clustered database as a client process sees it (DESIGN §2, §8.6): the node's local tdb
//! file, read and written directly under the tdb chain lock, but only while the record's
//! header names this node as DMASTER. Otherwise the chain lock is dropped, the daemon
//! migrates the record here, and we try again, until a deadline.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use super::DaemonConnection;
use crate::control::RecordCopy;
use crate::error::{Error, ErrorCode, Result};
use crate::local::{StoreFlag, Tdb};
use crate::record::{RecordHeader, HEADER_LEN};
use crate::wire::{DbId, Pnn};

/// How long attach and status requests may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// A chain lock the caller holds through `chainlock`.
struct HeldLock {
    depth: u32,
    /// The record was migrated here for this lock: tell the daemon once we are done with it.
    owes_done: bool,
}

pub struct ClusteredDb {
    tdb: Tdb,
    daemon: DaemonConnection,
    name: String,
    db_id: DbId,
    pnn: Pnn,
    migrate_timeout: Duration,
    held: HashMap<Vec<u8>, HeldLock>,
}

impl ClusteredDb {
    /// Attaches `name` through the daemon at `socket` and opens this node's file of it.
    pub fn open(socket: &Path, name: &str, migrate_timeout: Duration) -> Result<ClusteredDb> {
        ClusteredDb::open_with_flags(socket, name, migrate_timeout, 0)
    }

    /// `open`, with `extra_tdb_flags` added to the daemon's tdb_flags for this process's
    /// context of the file (the C ABI passes a caller's TDB_SEQNUM on).
    pub fn open_with_flags(
        socket: &Path,
        name: &str,
        migrate_timeout: Duration,
        extra_tdb_flags: i32,
    ) -> Result<ClusteredDb> {
        let mut daemon = DaemonConnection::connect(socket)?;
        let attached = daemon.attach(name, CONTROL_TIMEOUT)?;
        let tdb_flags = attached.tdb_flags as i32 | extra_tdb_flags;
        let tdb = Tdb::open(Path::new(&attached.path), 0, tdb_flags, libc::O_RDWR, 0o600)?;
        Ok(ClusteredDb {
            tdb,
            daemon,
            name: name.to_owned(),
            db_id: attached.db_id,
            pnn: attached.pnn,
            migrate_timeout,
            held: HashMap::new(),
        })
    }

    pub fn db_id(&self) -> DbId {
        self.db_id
    }

    pub fn pnn(&self) -> Pnn {
        self.pnn
    }

    /// The database's name, as attached.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The change counter of this node's file (tdb_get_seqnum).
    pub fn get_seqnum(&self) -> i32 {
        self.tdb.get_seqnum()
    }

    /// Closes this node's file; the daemon connection closes with it.
    pub fn close(self) -> Result<()> {
        self.tdb.close()
    }

    pub fn chainlock(&mut self, key: &[u8]) -> Result<()> {
        if let Some(held) = self.held.get_mut(key) {
            held.depth += 1;
            return Ok(());
        }
        let owes_done = self.lock_here(key)?;
        self.held.insert(key.to_vec(), HeldLock { depth: 1, owes_done });
        Ok(())
    }

    /// `chainlock` without waiting and without migrating: takes the lock only if no other
    /// process holds the chain and the record is here (this node is DMASTER); else fails
    /// with `ErrorCode::Lock`.
    pub fn chainlock_nonblock(&mut self, key: &[u8]) -> Result<()> {
        if let Some(held) = self.held.get_mut(key) {
            held.depth += 1;
            return Ok(());
        }
        self.tdb.lock_chain_nonblock(key)?;
        match self.is_here(key) {
            Ok(true) => {}
            Ok(false) => {
                self.tdb.unlock_chain(key)?;
                return Err(Error::new(
                    ErrorCode::Lock,
                    format!(
                        "{}: the record is not on node {} (a non-blocking chain lock does not migrate it)",
                        self.name, self.pnn
                    ),
                ));
            }
            Err(err) => {
                let _ = self.tdb.unlock_chain(key);
                return Err(err);
            }
        }
        self.held.insert(key.to_vec(), HeldLock { depth: 1, owes_done: false });
        Ok(())
    }

    pub fn chainunlock(&mut self, key: &[u8]) -> Result<()> {
        let Some(held) = self.held.get_mut(key) else {
            return Err(Error::new(
                ErrorCode::Lock,
                format!("{}: chainunlock: this process does not hold that lock", self.name),
            ));
        };
        held.depth -= 1;
        if held.depth > 0 {
            return Ok(());
        }
        let owes_done = held.owes_done;
        self.held.remove(key);
        self.unlock(key, owes_done)
    }

    /// The record's data; `None` when absent or deleted (an empty record).
    pub fn fetch(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.with_record(key, |tdb| read_data(tdb, key, |data| data.to_vec()))
    }

    pub fn parse<R>(&mut self, key: &[u8], parser: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        self.with_record(key, |tdb| read_data(tdb, key, parser))
    }

    pub fn exists(&mut self, key: &[u8]) -> Result<bool> {
        Ok(self.parse(key, |_| ())?.is_some())
    }

    /// Stores under the header the record already has: a client store never changes who is
    /// DMASTER or the RSN (DESIGN §8.1).
    pub fn store(&mut self, key: &[u8], parts: &[&[u8]], flag: StoreFlag) -> Result<()> {
        let name = self.name.clone();
        self.with_record(key, |tdb| {
            let (header, exists) = read_header(tdb, key)?;
            match flag {
                StoreFlag::Insert if exists => {
                    return Err(Error::new(
                        ErrorCode::Exists,
                        format!("{name}: a record with this key exists (TDB_INSERT only creates records)"),
                    ))
                }
                StoreFlag::Modify if !exists => {
                    return Err(Error::new(
                        ErrorCode::NoExist,
                        format!("{name}: no record with this key (TDB_MODIFY only changes existing records)"),
                    ))
                }
                _ => {}
            }
            let header = header.encode();
            let mut value: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
            value.push(&header);
            value.extend_from_slice(parts);
            tdb.storev(key, &value, StoreFlag::Replace)
        })
    }

    /// Deleting leaves the header with no data: other nodes may hold older copies, and the
    /// header is what says this one is newer (vacuuming drops it later, DESIGN §8.5).
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        let name = self.name.clone();
        self.with_record(key, |tdb| {
            let (header, exists) = read_header(tdb, key)?;
            if !exists {
                return Err(Error::new(ErrorCode::NoExist, format!("{name}: no record with this key")));
            }
            tdb.store(key, &header.encode(), StoreFlag::Replace)
        })
    }

    /// Every record of the cluster once, newest copy, through the daemon.
    /// Refused while this process holds a chain lock of the database: the daemons read every
    /// chain of their files for it, and would wait for that lock.
    pub fn traverse(&mut self, mut visit: impl FnMut(&[u8], &[u8]) -> bool) -> Result<usize> {
        if !self.held.is_empty() {
            return Err(Error::new(
                ErrorCode::Lock,
                format!(
                    "{}: traverse while this process holds {} chain lock(s) of the database: the \
                     daemons must read every chain for it (chainunlock first)",
                    self.name,
                    self.held.len()
                ),
            ));
        }
        let records: Vec<RecordCopy> = self.daemon.traverse_all(self.db_id, CONTROL_TIMEOUT)?;
        let mut count = 0;
        for record in &records {
            count += 1;
            if !visit(&record.key, &record.data) {
                break;
            }
        }
        Ok(count)
    }

    /// Runs `op` with the chain locked and this node DMASTER: under the caller's lock if it
    /// holds one, else under one taken (and migrated) for this call alone.
    fn with_record<R>(&mut self, key: &[u8], op: impl FnOnce(&Tdb) -> Result<R>) -> Result<R> {
        if self.held.contains_key(key) {
            return op(&self.tdb);
        }
        let owes_done = self.lock_here(key)?;
        let result = op(&self.tdb);
        let unlocked = self.unlock(key, owes_done);
        let value = result?;
        unlocked.map(|()| value)
    }

    /// Samba's fetch-locked loop: lock; if this node is DMASTER keep the lock; else unlock,
    /// have the daemon migrate the record here, and retry. Returns whether the daemon is owed
    /// a "done" for a migration made for us.
    fn lock_here(&mut self, key: &[u8]) -> Result<bool> {
        let deadline = Instant::now() + self.migrate_timeout;
        let mut owes_done = false;
        loop {
            self.tdb.lock_chain(key)?;
            let here = match self.is_here(key) {
                Ok(here) => here,
                Err(err) => {
                    let _ = self.tdb.unlock_chain(key);
                    return Err(err);
                }
            };
            if here {
                return Ok(owes_done);
            }
            self.tdb.unlock_chain(key)?;
            if owes_done {
                // Our turn came and went before we got the lock: let the others have it.
                self.daemon.migration_done(self.db_id, key)?;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.migrate_timed_out());
            }
            self.daemon.migrate(self.db_id, key, true, left).map_err(|err| match err.code {
                ErrorCode::LockTimeout => self.migrate_timed_out(),
                _ => err,
            })?;
            owes_done = true;
        }
    }

    #[cold]
    fn migrate_timed_out(&self) -> Error {
        Error::new(
            ErrorCode::LockTimeout,
            format!(
                "{}: the record did not migrate to node {} within {:?} (another process may hold \
                 its chain lock on the node that has it)",
                self.name, self.pnn, self.migrate_timeout
            ),
        )
    }

    /// Whether this node is the record's DMASTER (call with the chain locked).
    fn is_here(&self, key: &[u8]) -> Result<bool> {
        let (header, _) = read_header(&self.tdb, key)?;
        Ok(header.dmaster == self.pnn && header.rsn > 0)
    }

    fn unlock(&mut self, key: &[u8], owes_done: bool) -> Result<()> {
        self.tdb.unlock_chain(key)?;
        if owes_done {
            self.daemon.migration_done(self.db_id, key)?;
        }
        Ok(())
    }
}

/// The header stored for `key` (a made-up one if there is none) and whether the record has
/// data.
fn read_header(tdb: &Tdb, key: &[u8]) -> Result<(RecordHeader, bool)> {
    let found =
        tdb.parse_record(key, |value| RecordHeader::decode(value).map(|(h, data)| (h, !data.is_empty())))?;
    Ok(found.flatten().unwrap_or((RecordHeader::default(), false)))
}

fn read_data<R>(tdb: &Tdb, key: &[u8], parser: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
    let found =
        tdb.parse_record(key, |value| (value.len() > HEADER_LEN).then(|| parser(&value[HEADER_LEN..])))?;
    Ok(found.flatten())
}
