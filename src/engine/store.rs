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
    fn fetch(&mut self, db: DbId, key: &[u8]) -> Option<Record>;
    fn store(&mut self, db: DbId, key: &[u8], record: &Record) -> Result<(), Error>;
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
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }

    pub fn lock_as(&mut self, db: DbId, key: &[u8], owner: LockOwner) -> bool {
        let slot = (db, key.to_vec());
        if self.locks.contains_key(&slot) {
            return false;
        }
        self.locks.insert(slot, owner);
        true
    }

    /// Releases the lock, returning who held it.
    pub fn unlock_any(&mut self, db: DbId, key: &[u8]) -> Option<LockOwner> {
        self.locks.remove(&(db, key.to_vec()))
    }

    pub fn lock_owner(&self, db: DbId, key: &[u8]) -> Option<LockOwner> {
        self.locks.get(&(db, key.to_vec())).copied()
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
}

impl RecordStore for MemStore {
    fn try_lock(&mut self, db: DbId, key: &[u8]) -> bool {
        self.lock_as(db, key, LockOwner::Engine)
    }

    fn unlock(&mut self, db: DbId, key: &[u8]) {
        let owner = self.unlock_any(db, key);
        debug_assert_eq!(owner, Some(LockOwner::Engine), "engine unlocked a lock it did not hold");
    }

    fn fetch(&mut self, db: DbId, key: &[u8]) -> Option<Record> {
        self.peek(db, key).cloned()
    }

    fn store(&mut self, db: DbId, key: &[u8], record: &Record) -> Result<(), Error> {
        self.put(db, key, record.clone());
        Ok(())
    }
}
