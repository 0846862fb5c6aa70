//! A clustered database as a client process sees it (DESIGN §2, §8.6): the node's local tdb
//! file, read and written directly under the tdb chain lock, but only while the record's
//! header names this node as DMASTER. Otherwise the chain lock is dropped, the daemon
//! migrates the record here, and we try again, until a deadline.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::DaemonConnection;
use crate::error::{Error, ErrorCode, Result};
use crate::local::{StoreFlag, Tdb};
use crate::record::{RecordHeader, HEADER_LEN};
use crate::wire::{DbId, Pnn};

/// How long attach and status requests may take.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// What a chain lock tells about its record, read once when it is taken: nobody else can
/// change the record while we hold the lock, so later calls need not read it again.
#[derive(Debug, Clone, Copy)]
struct LockedRecord {
    header: RecordHeader,
    has_data: bool,
    /// The record was migrated here for this lock: tell the daemon once we are done with it.
    owes_done: bool,
}

/// A chain lock the caller holds through `chainlock`.
struct HeldLock {
    key: Vec<u8>,
    depth: u32,
    record: LockedRecord,
}

pub struct ClusteredDb {
    tdb: Tdb,
    daemon: DaemonConnection,
    /// Shared with error closures, which a cheap clone keeps off the hot path.
    name: Arc<str>,
    db_id: DbId,
    pnn: Pnn,
    migrate_timeout: Duration,
    /// A process holds one or two chain locks at a time: a list beats a hash map.
    held: Vec<HeldLock>,
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
            name: Arc::from(name),
            db_id: attached.db_id,
            pnn: attached.pnn,
            migrate_timeout,
            held: Vec::new(),
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
        if let Some(held) = self.held_mut(key) {
            held.depth += 1;
            return Ok(());
        }
        let record = self.lock_here(key)?;
        self.hold(key, record);
        Ok(())
    }

    /// `chainlock` without waiting and without migrating: takes the lock only if no other
    /// process holds the chain and the record is here (this node is DMASTER); else fails
    /// with `ErrorCode::Lock`.
    pub fn chainlock_nonblock(&mut self, key: &[u8]) -> Result<()> {
        if let Some(held) = self.held_mut(key) {
            held.depth += 1;
            return Ok(());
        }
        self.tdb.lock_chain_nonblock(key)?;
        match self.read_locked(key) {
            Ok(record) if self.is_here(&record) => {
                self.hold(key, record);
                Ok(())
            }
            Ok(_) => {
                self.tdb.unlock_chain(key)?;
                Err(Error::new(
                    ErrorCode::Lock,
                    format!(
                        "{}: the record is not on node {} (a non-blocking chain lock does not migrate it)",
                        self.name, self.pnn
                    ),
                ))
            }
            Err(err) => {
                let _ = self.tdb.unlock_chain(key);
                Err(err)
            }
        }
    }

    pub fn chainunlock(&mut self, key: &[u8]) -> Result<()> {
        let Some(at) = self.held.iter().position(|held| held.key == key) else {
            return Err(Error::new(
                ErrorCode::Lock,
                format!("{}: chainunlock: this process does not hold that lock", self.name),
            ));
        };
        self.held[at].depth -= 1;
        if self.held[at].depth > 0 {
            return Ok(());
        }
        let held = self.held.swap_remove(at);
        self.unlock(key, held.record.owes_done)
    }

    /// The record's data; `None` when absent or deleted (an empty record).
    pub fn fetch(&mut self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.parse(key, |data| data.to_vec())
    }

    pub fn parse<R>(&mut self, key: &[u8], parser: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
        self.with_record(key, |tdb, record| match record.has_data {
            true => read_data(tdb, key, parser),
            false => Ok(None),
        })
    }

    pub fn exists(&mut self, key: &[u8]) -> Result<bool> {
        self.with_record(key, |_, record| Ok(record.has_data))
    }

    /// Stores under the header the record already has: a client store never changes who is
    /// DMASTER or the RSN (DESIGN §8.1).
    pub fn store(&mut self, key: &[u8], parts: &[&[u8]], flag: StoreFlag) -> Result<()> {
        let len = key.len() + crate::record::HEADER_LEN + parts.iter().map(|p| p.len()).sum::<usize>();
        if len > crate::wire::MAX_RECORD_LEN {
            return Err(Error::einval(format!(
                "{}: a record of {len} bytes could not migrate: records hold at most {} bytes, \
                 key and header included",
                self.name,
                crate::wire::MAX_RECORD_LEN
            )));
        }
        let name = Arc::clone(&self.name);
        self.with_record(key, |tdb, record| {
            match flag {
                StoreFlag::Insert if record.has_data => {
                    return Err(Error::new(
                        ErrorCode::Exists,
                        format!("{name}: a record with this key exists (TDB_INSERT only creates records)"),
                    ))
                }
                StoreFlag::Modify if !record.has_data => {
                    return Err(Error::new(
                        ErrorCode::NoExist,
                        format!("{name}: no record with this key (TDB_MODIFY only changes existing records)"),
                    ))
                }
                _ => {}
            }
            let header = record.header.encode();
            match parts {
                [data] => tdb.storev(key, &[&header, data], StoreFlag::Replace)?,
                _ => {
                    let value: Vec<&[u8]> =
                        std::iter::once(&header[..]).chain(parts.iter().copied()).collect();
                    tdb.storev(key, &value, StoreFlag::Replace)?
                }
            }
            record.has_data = parts.iter().any(|part| !part.is_empty());
            Ok(())
        })
    }

    /// Deleting leaves the header with no data: other nodes may hold older copies, and the
    /// header is what says this one is newer. The daemon is told, and its vacuuming removes
    /// the record from every node (DESIGN §8.5).
    pub fn delete(&mut self, key: &[u8]) -> Result<()> {
        let name = Arc::clone(&self.name);
        self.with_record(key, |tdb, record| {
            if !record.has_data {
                return Err(Error::new(ErrorCode::NoExist, format!("{name}: no record with this key")));
            }
            tdb.store(key, &record.header.encode(), StoreFlag::Replace)?;
            record.has_data = false;
            Ok(())
        })?;
        self.daemon.deleted(self.db_id, key)
    }

    /// Every record of the cluster once, newest copy, through the daemon, as it streams them.
    /// Refused while this process holds a chain lock of the database: the daemons read every
    /// chain of their files for it, and would wait for that lock. An error if the traverse
    /// could not finish, even after `visit` saw records: they are not all of them.
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
        let mut count = 0;
        self.daemon.traverse_all(self.db_id, CONTROL_TIMEOUT, |record| {
            count += 1;
            visit(&record.key, &record.data)
        })?;
        Ok(count)
    }

    fn hold(&mut self, key: &[u8], record: LockedRecord) {
        self.held.push(HeldLock { key: key.to_vec(), depth: 1, record });
    }

    fn held_mut(&mut self, key: &[u8]) -> Option<&mut HeldLock> {
        self.held.iter_mut().find(|held| held.key == key)
    }

    /// Runs `op` with the chain locked and this node DMASTER: under the caller's lock if it
    /// holds one, else under one taken (and migrated) for this call alone.
    fn with_record<R>(
        &mut self,
        key: &[u8],
        op: impl FnOnce(&Tdb, &mut LockedRecord) -> Result<R>,
    ) -> Result<R> {
        if let Some(at) = self.held.iter().position(|held| held.key == key) {
            let HeldLock { record, .. } = &mut self.held[at];
            return op(&self.tdb, record);
        }
        let mut record = self.lock_here(key)?;
        let result = op(&self.tdb, &mut record);
        let unlocked = self.unlock(key, record.owes_done);
        let value = result?;
        unlocked.map(|()| value)
    }

    /// Samba's fetch-locked loop: lock; if this node is DMASTER keep the lock; else unlock,
    /// have the daemon migrate the record here, and retry.
    fn lock_here(&mut self, key: &[u8]) -> Result<LockedRecord> {
        if key.len() > crate::wire::MAX_KEY_LEN {
            return Err(Error::einval(format!(
                "{}: a key of {} bytes: keys hold at most {} bytes",
                self.name,
                key.len(),
                crate::wire::MAX_KEY_LEN
            )));
        }
        let deadline = Instant::now() + self.migrate_timeout;
        let mut owes_done = false;
        loop {
            self.lock_chain_until(key, deadline)?;
            let record = match self.read_locked(key) {
                Ok(record) => record,
                Err(err) => {
                    let _ = self.tdb.unlock_chain(key);
                    return Err(err);
                }
            };
            if self.is_here(&record) {
                return Ok(LockedRecord { owes_done, ..record });
            }
            self.tdb.unlock_chain(key)?;
            if owes_done {
                // Our turn came and went before we got the lock: let the others have it.
                self.daemon.migration_done(self.db_id, key)?;
            }
            self.refuse_if_chain_held(key)?;
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

    /// The chain lock, waited for until `deadline` at most. Other clients hold a chain for
    /// the length of a read-modify-write; a node that is not serving (it left the cluster, or
    /// it waits to be admitted again) holds every chain until it serves again, which may be
    /// long: the caller gets a clear error instead of hanging. Waits in growing pauses,
    /// since fcntl locks cannot be waited for with a timeout.
    fn lock_chain_until(&self, key: &[u8], deadline: Instant) -> Result<()> {
        let mut pause = Duration::from_micros(20);
        loop {
            match self.tdb.lock_chain_nonblock(key) {
                Err(err) if err.code == ErrorCode::Lock => {}
                done => return done,
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::new(
                    ErrorCode::LockTimeout,
                    format!(
                        "{}: the chain lock stayed taken for {:?}: another process holds it, or node {} \
                         does not serve (it is out of the cluster or recovering)",
                        self.name, self.migrate_timeout, self.pnn
                    ),
                ));
            }
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_millis(1));
        }
    }

    /// A record cannot migrate into a hash chain this process holds locked for another key:
    /// the daemon would wait for the lock and we for the daemon. Say so now rather than at
    /// the timeout.
    fn refuse_if_chain_held(&self, key: &[u8]) -> Result<()> {
        let chain = self.tdb.chain_lock_offset(key);
        match self.held.iter().find(|held| chain.is_some() && self.tdb.chain_lock_offset(&held.key) == chain)
        {
            None => Ok(()),
            Some(_) => Err(Error::new(
                ErrorCode::Lock,
                format!(
                    "{}: the record is on another node and this process holds the chain lock of \
                     another key in the same hash chain, so it cannot migrate here (unlock first)",
                    self.name
                ),
            )),
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

    /// The record's header, read with the chain locked (a made-up one, rsn 0, if absent).
    fn read_locked(&self, key: &[u8]) -> Result<LockedRecord> {
        let found = self
            .tdb
            .parse_record(key, |value| RecordHeader::decode(value).map(|(h, data)| (h, !data.is_empty())))?;
        let (header, has_data) = found.flatten().unwrap_or((RecordHeader::default(), false));
        Ok(LockedRecord { header, has_data, owes_done: false })
    }

    /// Whether this node is the record's DMASTER. A made-up header (rsn 0) is nobody's.
    fn is_here(&self, record: &LockedRecord) -> bool {
        record.header.dmaster == self.pnn && record.header.rsn > 0
    }

    fn unlock(&mut self, key: &[u8], owes_done: bool) -> Result<()> {
        self.tdb.unlock_chain(key)?;
        if owes_done {
            self.daemon.migration_done(self.db_id, key)?;
        }
        Ok(())
    }
}

fn read_data<R>(tdb: &Tdb, key: &[u8], parser: impl FnOnce(&[u8]) -> R) -> Result<Option<R>> {
    let found =
        tdb.parse_record(key, |value| (value.len() > HEADER_LEN).then(|| parser(&value[HEADER_LEN..])))?;
    Ok(found.flatten())
}
