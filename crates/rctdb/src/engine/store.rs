//! How the engine reaches records: a small trait, with libtdb behind it in the daemon and the
//! in-memory `MemStore` here for simulations and unit tests.

use std::collections::HashMap;

use crate::error::Error;
use crate::record::RecordHeader;
use crate::wire::DbId;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub header: RecordHeader,
    pub data: Vec<u8>,
}

pub trait RecordStore {
    /// Takes the record's chain lock if nobody holds it. Never waits: a client may hold the
    /// lock for a long time and the engine must keep serving other keys meanwhile.
    fn try_lock(&mut self, db: DbId, key: &[u8]) -> bool;
    fn unlock(&mut self, db: DbId, key: &[u8]);
    /// The record, read under the chain lock; `None` when absent or too short for a header.
    /// A read that fails is an error, never "absent": at an LMASTER "absent" mints a record.
    fn fetch(&mut self, db: DbId, key: &[u8]) -> Result<Option<Record>, Error>;
    fn store(&mut self, db: DbId, key: &[u8], record: &Record) -> Result<(), Error>;
    /// Why the record, stored, is not where clients read it (an errno): the file refused it
    /// and the store keeps it until it is written. Clients asking for it get that error.
    fn unwritten(&self, _db: DbId, _key: &[u8]) -> Option<i32> {
        None
    }
    /// Removes the record (vacuuming), under its chain lock. Absent already is not an error.
    fn delete(&mut self, db: DbId, key: &[u8]) -> Result<(), Error>;
    /// Every record's key and header, without taking a lock: a recovery must not wait for
    /// clients. Headers change only through the engine, so they are known without reading
    /// chains that clients hold.
    fn headers(&mut self, db: DbId) -> Result<Vec<(Vec<u8>, RecordHeader)>, Error>;
    /// Empties the database. Only called while it is frozen (`Input::Frozen`).
    fn wipe(&mut self, db: DbId) -> Result<(), Error>;
    /// Makes sure database `name` exists here (a recovery attaches every member's databases).
    fn attach(&mut self, db: DbId, name: &str) -> Result<(), Error>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockOwner {
    Engine,
    Client(u64),
}

/// Records of one node in memory, with chain locks that simulated clients can hold too.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    records: HashMap<(DbId, Vec<u8>), Record>,
    locks: HashMap<(DbId, Vec<u8>), LockOwner>,
    /// Frozen for the engine: no client can take a lock.
    pub frozen: bool,
    /// Stores fail (a full disk), for fault tests.
    pub failing: bool,
    /// Stores are kept in memory only, as the daemon keeps what its file refuses, with
    /// this errno (EAGAIN: a lock held too long; ENOSPC: a full disk).
    pub refusing: Option<i32>,
    unwritten: HashMap<(DbId, Vec<u8>), i32>,
    /// Hash chains: with `Some(n)`, keys share `n` chain locks as in a tdb file, so work on
    /// one key can wait for a lock held for another. `None`: a lock per key.
    pub chains: Option<u32>,
    /// Records `delete` removed, oldest first, for checks that follow each record's history;
    /// whoever reads it empties it.
    pub deleted: Vec<(DbId, Vec<u8>)>,
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    /// The file takes writes again, and what it refused is written.
    pub fn write_refused(&mut self) {
        self.refusing = None;
        self.unwritten.clear();
    }

    /// A store whose keys share `chains` chain locks (`None`: a lock per key).
    pub fn with_chains(chains: Option<u32>) -> MemStore {
        MemStore { chains, ..MemStore::default() }
    }

    /// The lock a key's chain lock is: the key itself, or its hash chain.
    fn lock_slot(&self, db: DbId, key: &[u8]) -> (DbId, Vec<u8>) {
        match self.chains {
            Some(n) => (db, (crate::hash::jenkins_hash(key) % n.max(1)).to_le_bytes().to_vec()),
            None => (db, key.to_vec()),
        }
    }

    /// Whether two keys share a chain lock.
    pub fn same_chain(&self, db: DbId, a: &[u8], b: &[u8]) -> bool {
        self.lock_slot(db, a) == self.lock_slot(db, b)
    }

    pub fn lock_as(&mut self, db: DbId, key: &[u8], owner: LockOwner) -> bool {
        let slot = self.lock_slot(db, key);
        if self.locks.contains_key(&slot) || self.frozen && owner != LockOwner::Engine {
            return false;
        }
        self.locks.insert(slot, owner);
        true
    }

    /// Releases the lock, returning who held it.
    pub fn unlock_any(&mut self, db: DbId, key: &[u8]) -> Option<LockOwner> {
        let slot = self.lock_slot(db, key);
        self.locks.remove(&slot)
    }

    pub fn lock_owner(&self, db: DbId, key: &[u8]) -> Option<LockOwner> {
        self.locks.get(&self.lock_slot(db, key)).copied()
    }

    /// Reads without the lock: for invariant checks that look at every node at once.
    pub fn peek(&self, db: DbId, key: &[u8]) -> Option<&Record> {
        self.records.get(&(db, key.to_vec()))
    }

    pub fn put(&mut self, db: DbId, key: &[u8], record: Record) {
        self.records.insert((db, key.to_vec()), record);
    }

    pub fn records(&self) -> impl Iterator<Item = (&(DbId, Vec<u8>), &Record)> {
        self.records.iter()
    }

    /// Whether a client holds any lock: a freeze waits until none does.
    pub fn client_holds_a_lock(&self) -> bool {
        self.locks.values().any(|owner| matches!(owner, LockOwner::Client(_)))
    }

    /// A restart: the process's records are gone, and so are its locks.
    pub fn clear(&mut self) {
        *self = MemStore { chains: self.chains, ..MemStore::default() };
    }
}

impl RecordStore for MemStore {
    fn try_lock(&mut self, db: DbId, key: &[u8]) -> bool {
        self.lock_as(db, key, LockOwner::Engine)
    }

    fn unlock(&mut self, db: DbId, key: &[u8]) {
        let owner = self.unlock_any(db, key);
        debug_assert_eq!(owner, Some(LockOwner::Engine), "engine unlocked a lock it did not hold");
    }

    fn fetch(&mut self, db: DbId, key: &[u8]) -> Result<Option<Record>, Error> {
        Ok(self.peek(db, key).cloned())
    }

    fn unwritten(&self, db: DbId, key: &[u8]) -> Option<i32> {
        self.unwritten.get(&(db, key.to_vec())).copied()
    }

    fn store(&mut self, db: DbId, key: &[u8], record: &Record) -> Result<(), Error> {
        if self.failing {
            return Err(Error::io("simulated full disk".to_string()));
        }
        match self.refusing {
            Some(errno) => self.unwritten.insert((db, key.to_vec()), errno),
            None => self.unwritten.remove(&(db, key.to_vec())),
        };
        self.put(db, key, record.clone());
        Ok(())
    }

    fn delete(&mut self, db: DbId, key: &[u8]) -> Result<(), Error> {
        if self.failing {
            return Err(Error::io("simulated full disk".to_string()));
        }
        if self.records.remove(&(db, key.to_vec())).is_some() {
            self.deleted.push((db, key.to_vec()));
        }
        Ok(())
    }

    fn headers(&mut self, db: DbId) -> Result<Vec<(Vec<u8>, RecordHeader)>, Error> {
        let mut headers: Vec<(Vec<u8>, RecordHeader)> = self
            .records
            .iter()
            .filter(|((id, _), _)| *id == db)
            .map(|((_, key), record)| (key.clone(), record.header))
            .collect();
        headers.sort_by(|a, b| a.0.cmp(&b.0)); // the same order on every run
        Ok(headers)
    }

    fn wipe(&mut self, db: DbId) -> Result<(), Error> {
        self.records.retain(|(id, _), _| *id != db);
        Ok(())
    }

    fn attach(&mut self, _db: DbId, _name: &str) -> Result<(), Error> {
        Ok(())
    }
}
