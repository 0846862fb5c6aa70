//! Repacking after vacuuming (CTDB's RepackLimit). Vacuuming frees many small records (empty
//! ones: a key and a header), and tdb puts each at the head of its free list, where every
//! allocation of a full-size record walks past them while holding the free-list lock:
//! under open/close churn a store then costs ~190 µs instead of ~4 (benches/README.md).
//! Once vacuuming has removed records, a database whose free list is longer than
//! `RepackLimit` pieces is rewritten: a lock waiter takes every chain (clients finish what
//! they hold; no thread that serves others waits), the live records are read, the file
//! emptied into one free record, and the records stored again. Clients wait only for that
//! rewrite; the engine never blocks on it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::Node;
use crate::daemon::lock_wait::HeldLock;
use crate::daemon::lock_wait::LockTarget;
use crate::wire::DbId;

/// How often the free lists are looked at, at most (and only after vacuuming removed records).
const CHECK_EVERY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Repacks {
    /// Databases whose lock waiter is on its way.
    waiting: HashSet<DbId>,
    /// Vacuuming's removals when the free lists were last looked at.
    removed_seen: u64,
    last_check: Option<Instant>,
    pub(super) done: u64,
}

impl Node {
    /// On the timer: after vacuuming removed records, repack the databases whose free list
    /// grew past `RepackLimit`.
    pub(super) fn check_repacks(&mut self, now: Instant) {
        let limit = self.engine.tunables().repack_limit;
        if limit == 0 || self.repacks.last_check.is_some_and(|at| now < at + CHECK_EVERY) {
            return;
        }
        self.repacks.last_check = Some(now);
        let stats = self.engine.stats();
        let removed = stats.vacuum_deleted + stats.vacuum_copies_dropped;
        if removed == self.repacks.removed_seen {
            return;
        }
        self.repacks.removed_seen = removed;
        let db_ids: Vec<DbId> = self.store.dbs().map(|(&id, _)| id).collect();
        for db_id in db_ids {
            if self.repacks.waiting.contains(&db_id) || self.freezes.contains_key(&db_id) {
                continue;
            }
            match self.store.free_pieces(db_id) {
                Ok(pieces) if pieces as u64 > limit => {
                    if let Some((file, start, len)) = self.store.all_chains_site(db_id) {
                        log::info!("db {db_id:#x}: free list in {pieces} pieces; repacking");
                        self.repacks.waiting.insert(db_id);
                        self.lock_waiters.wait_for(file, start, len, LockTarget::Repack { db_id });
                    }
                }
                Ok(_) => {}
                Err(err) => log::error!("db {db_id:#x}: reading the free list: {err}"),
            }
        }
    }

    /// The waiter holds every chain of the database: rewrite it, then give the lock back.
    pub(super) fn repack_held(&mut self, db_id: DbId, lock: HeldLock) {
        self.repacks.waiting.remove(&db_id);
        // A recovery froze it meanwhile: it holds the chains itself, and may empty it.
        if !self.freezes.contains_key(&db_id) {
            let started = Instant::now();
            match self.store.repack_held_for_us(db_id) {
                Ok(records) => {
                    self.repacks.done += 1;
                    let pieces = self.store.free_pieces(db_id).unwrap_or_default();
                    log::info!(
                        "db {db_id:#x}: repacked {records} records in {:?}; free list now {pieces} pieces",
                        started.elapsed()
                    );
                }
                Err(err) => log::error!("db {db_id:#x}: repacking: {err}"),
            }
        }
        lock.release();
    }
}
