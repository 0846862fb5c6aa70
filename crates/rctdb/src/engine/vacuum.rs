//! Vacuuming (DESIGN §8.5): empty records — deleted by clients, or left behind by
//! migrations — are removed from every node, without a database-wide lock and without ever
//! letting an older copy come back or a key's RSN start again while a copy of it remains.
//!
//! Deleting a record leaves it empty with its header: other nodes may hold older copies,
//! and the header is what says this one is newer. Every `VacuumInterval` a node runs over
//! the keys deleted here since its last run (`Input::Deleted`, CTDB's SCHEDULE_FOR_DELETION)
//! and those of records that arrived or were created here empty (a client that only looked
//! at a record leaves it so without a word), and every `VacuumFastPathCount`th run over
//! every record it holds. For each record this node holds (DMASTER) that is still empty,
//! under a chain lock taken without waiting:
//!
//! 1. Not its LMASTER: ask the LMASTER to take it (`VacuumFetch`, CTDB's VACUUM_FETCH). The
//!    LMASTER migrates the record to itself like any record a client asks for, so a request
//!    or record lost on the wire is asked for again, and found by a recovery if need be;
//!    once the record is there, the LMASTER vacuums it. This node asks again in every run
//!    for as long as it still holds the record. Its copy stays, empty and naming the
//!    LMASTER, until step 2 drops it.
//! 2. Its LMASTER: ask every other member to drop its copy (`VacuumDrop`) unless that copy
//!    is newer or names its own node as DMASTER; each answers with the keys it kept.
//! 3. When every member answered, the LMASTER deletes its own copy of each key nobody kept,
//!    if it still holds it, empty, at the same RSN. Only then is the key gone everywhere:
//!    an LMASTER that has no record is the DMASTER of an empty one, so the key may start
//!    again at RSN 1 without any copy left to contradict it.
//!
//! Safety rests on the LMASTER deleting last, and on order: every REPLY_DMASTER for a key
//! comes from its LMASTER, on the same ordered link as the `VacuumDrop`, so a member has
//! stored any record the LMASTER handed it before it is asked to drop copies. A member with
//! work pending on the key (a migration, a record waiting for a lock) keeps its copy.
//! Rounds belong to one generation: a recovery voids them, and their keys are looked at
//! again in the next run. A member that does not answer (its link broke) voids the rounds
//! it was asked in. Members excluded from the generation are not asked: the recovery that
//! takes them back counts their copies of a record deleted meanwhile for nothing
//! (recovery.rs, `plan_record`).
//!
//! A record whose chain a client holds is skipped and retried in the next run, never
//! waited for; work per tick is bounded so that clients' requests are not held up behind a
//! run.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{Engine, Millis, Output, RecordStore};
use crate::wire::cluster::{ClusterMsg, VacuumEntry};
use crate::wire::{DbId, Generation, Pnn};

/// Records looked at per tick: a run never holds up the node's other work for long.
const KEYS_PER_TICK: usize = 256;
/// Keys remembered per database between runs. Past this, deletes are not remembered one by
/// one and the next run scans the whole database instead.
const QUEUE_LIMIT: usize = 100_000;

/// The keys deleted here (or handed here to be vacuumed) that a run has yet to look at.
#[derive(Debug, Default)]
struct DeleteQueue {
    keys: BTreeSet<Vec<u8>>,
    /// Some deletes were not remembered: the next run scans the whole database.
    overflowed: bool,
}

/// A run in progress: the records it still has to look at.
#[derive(Debug)]
struct Run {
    pending: VecDeque<(DbId, Vec<u8>)>,
    deadline: Millis,
}

/// An LMASTER's request to its peers to drop their copies, waiting for their answers.
#[derive(Debug)]
struct Round {
    generation: Generation,
    db_id: DbId,
    entries: Vec<VacuumEntry>,
    waiting: BTreeSet<Pnn>,
    kept: BTreeSet<Vec<u8>>,
    deadline: Millis,
}

#[derive(Debug, Default)]
pub(super) struct Vacuum {
    queues: BTreeMap<DbId, DeleteQueue>,
    run: Option<Run>,
    /// When the last run started: the next starts `VacuumInterval` after it, whatever the
    /// interval was when that run started.
    last_run_at: Option<Millis>,
    runs: u64,
    rounds: BTreeMap<u32, Round>,
    next_round: u32,
}

impl Vacuum {
    fn remember(&mut self, db_id: DbId, key: Vec<u8>) {
        let queue = self.queues.entry(db_id).or_default();
        if queue.keys.len() < QUEUE_LIMIT {
            queue.keys.insert(key);
        } else {
            queue.overflowed = true;
        }
    }

    /// Keys waiting for a run, and keys in a run or a round: what vacuuming still owes.
    pub(super) fn backlog(&self) -> usize {
        let queued: usize = self.queues.values().map(|q| q.keys.len()).sum();
        let running = self.run.as_ref().map_or(0, |run| run.pending.len());
        let in_rounds: usize = self.rounds.values().map(|r| r.entries.len()).sum();
        queued + running + in_rounds
    }
}

/// What one look at a record decided.
enum Verdict {
    /// Nothing to vacuum (gone, recreated, or held elsewhere): forget the key.
    Done,
    /// Locked by a client, or busy with a migration: look again in the next run.
    Later,
    /// Empty and held here, and this other node is its LMASTER: ask it to take the record
    /// (and look again in the next run, in case the request is lost).
    Fetch(Pnn),
    /// Empty, held here, and this node is its LMASTER: ask the peers to drop their copies.
    Drop(VacuumEntry),
}

impl Engine {
    /// `Input::Deleted`: a client left this record empty; vacuum it in the next run.
    pub(super) fn schedule_for_deletion(&mut self, db_id: DbId, key: Vec<u8>) {
        if self.dbs.contains_key(&db_id) {
            self.vacuum.remember(db_id, key);
        }
    }

    /// How many keys vacuuming still has to look at on this node.
    pub fn vacuum_backlog(&self) -> usize {
        self.vacuum.backlog()
    }

    /// Every tick while serving: start a run when one is due, go on with the one running,
    /// give up on rounds whose answers are late.
    pub(super) fn vacuum_tick(&mut self, store: &mut dyn RecordStore, out: &mut Vec<Output>) {
        let now = self.now;
        let late: Vec<u32> =
            self.vacuum.rounds.iter().filter(|(_, r)| r.deadline <= now).map(|(&id, _)| id).collect();
        for round in late {
            log::debug!("node {}: vacuum round {round} got no answer in time", self.config.pnn);
            self.abandon_round(round);
        }
        let interval = self.config.tunables.vacuum_interval_ms;
        if interval == 0 {
            return;
        }
        let due = self.vacuum.last_run_at.map_or(true, |last| now >= last + interval);
        if self.vacuum.run.is_none() && due {
            self.vacuum.last_run_at = Some(now);
            self.start_run(store, out);
        }
        self.continue_run(store, out);
    }

    fn start_run(&mut self, store: &mut dyn RecordStore, out: &mut Vec<Output>) {
        self.vacuum.runs += 1;
        self.stats.vacuum_runs += 1;
        let full_every = self.config.tunables.vacuum_fast_path_count.max(1);
        let me = self.config.pnn;
        let mut pending = VecDeque::new();
        let db_ids: Vec<DbId> = self.dbs.keys().copied().collect();
        for db_id in db_ids {
            let queue = self.vacuum.queues.remove(&db_id).unwrap_or_default();
            if queue.overflowed || self.vacuum.runs % full_every == 0 {
                // A full run: every record this node holds; those held elsewhere are their
                // holders' (and LMASTERs') to vacuum.
                self.stats.vacuum_full_runs += 1;
                match store.headers(db_id) {
                    Ok(headers) => pending.extend(
                        headers.into_iter().filter(|(_, h)| h.dmaster == me).map(|(key, _)| (db_id, key)),
                    ),
                    Err(err) => {
                        log::error!("vacuuming: reading the headers of db {db_id:#x}: {err}");
                        pending.extend(queue.keys.into_iter().map(|key| (db_id, key)));
                    }
                }
            } else {
                pending.extend(queue.keys.into_iter().map(|key| (db_id, key)));
            }
        }
        if pending.is_empty() {
            return;
        }
        let deadline = self.now + self.config.tunables.vacuum_max_run_time_ms;
        self.vacuum.run = Some(Run { pending, deadline });
        self.continue_run(store, out);
    }

    /// Looks at the next few records of the run; the LMASTER's empty ones go out in one
    /// round per database.
    fn continue_run(&mut self, store: &mut dyn RecordStore, out: &mut Vec<Output>) {
        let Some(mut run) = self.vacuum.run.take() else { return };
        if self.now >= run.deadline {
            log::warn!(
                "node {}: vacuuming stopped after VacuumMaxRunTime with {} records left for the next run",
                self.config.pnn,
                run.pending.len()
            );
            for (db_id, key) in run.pending {
                self.vacuum.remember(db_id, key);
            }
            return;
        }
        let mut drops: BTreeMap<DbId, Vec<VacuumEntry>> = BTreeMap::new();
        let mut fetches: BTreeMap<(Pnn, DbId), Vec<Vec<u8>>> = BTreeMap::new();
        for _ in 0..KEYS_PER_TICK {
            let Some((db_id, key)) = run.pending.pop_front() else { break };
            match self.vacuum_look(db_id, &key, store) {
                Verdict::Done => {}
                Verdict::Later => {
                    self.stats.vacuum_skipped += 1;
                    self.vacuum.remember(db_id, key);
                }
                Verdict::Fetch(lmaster) => {
                    self.vacuum.remember(db_id, key.clone());
                    fetches.entry((lmaster, db_id)).or_default().push(key);
                }
                Verdict::Drop(entry) => drops.entry(db_id).or_default().push(entry),
            }
        }
        if !run.pending.is_empty() {
            self.vacuum.run = Some(run);
        }
        let generation = self.config.generation;
        for ((lmaster, db_id), keys) in fetches {
            self.stats.vacuum_fetches_sent += keys.len() as u64;
            self.send_cluster(lmaster, ClusterMsg::VacuumFetch { generation, db_id, keys }, out);
        }
        for (db_id, entries) in drops {
            self.start_round(db_id, entries, store, out);
        }
    }

    /// One record of a run, under its chain lock if that is free.
    fn vacuum_look(&mut self, db_id: DbId, key: &[u8], store: &mut dyn RecordStore) -> Verdict {
        if !self.dbs.contains_key(&db_id) {
            return Verdict::Done;
        }
        if self.key_busy(db_id, key) || !store.try_lock(db_id, key) {
            return Verdict::Later;
        }
        let verdict = match store.fetch(db_id, key) {
            Ok(Some(record)) if record.data.is_empty() && record.header.dmaster == self.config.pnn => {
                match self.lmaster(key) {
                    lmaster if lmaster == self.config.pnn => {
                        Verdict::Drop(VacuumEntry { key: key.to_vec(), rsn: record.header.rsn })
                    }
                    lmaster => Verdict::Fetch(lmaster),
                }
            }
            Ok(_) => Verdict::Done,
            Err(err) => {
                log::error!("vacuuming: reading a record of db {db_id:#x}: {err}");
                Verdict::Later
            }
        };
        store.unlock(db_id, key);
        verdict
    }

    /// Step 1 at the LMASTER: a holder asks it to take these empty records. Each is taken
    /// under its chain lock if that is free and nothing is pending on the key; otherwise
    /// it is skipped, never waited for: the holder asks again in its next run.
    pub(super) fn vacuum_fetch_asked(
        &mut self,
        generation: Generation,
        db_id: DbId,
        keys: Vec<Vec<u8>>,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        if !self.active() || generation != self.config.generation || !self.dbs.contains_key(&db_id) {
            return;
        }
        for key in keys {
            // Asked under an older map, or busy: skipped.
            if self.lmaster(&key) != self.config.pnn
                || self.key_busy(db_id, &key)
                || !store.try_lock(db_id, &key)
            {
                continue;
            }
            match store.fetch(db_id, &key) {
                // Here already: vacuumed in the next run.
                Ok(record) if self.is_dmaster(&key, &record) => self.vacuum_arrived(db_id, &key),
                // Vacuumed once it arrives (`vacuum_arrived`).
                Ok(record) => {
                    self.stats.vacuum_fetches += 1;
                    self.start_migration(db_id, key.clone(), vec![], &record, out);
                }
                Err(err) => log::error!("vacuuming: reading a record of db {db_id:#x}: {err}"),
            }
            store.unlock(db_id, &key);
        }
    }

    /// Step 2: ask every other member to drop its copies of these records.
    fn start_round(
        &mut self,
        db_id: DbId,
        entries: Vec<VacuumEntry>,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        let me = self.config.pnn;
        let peers: BTreeSet<Pnn> = self.config.vnn_map.iter().copied().filter(|&p| p != me).collect();
        let round = self.vacuum.next_round;
        self.vacuum.next_round = self.vacuum.next_round.wrapping_add(1);
        let generation = self.config.generation;
        for &peer in &peers {
            let msg = ClusterMsg::VacuumDrop { generation, round, db_id, entries: entries.clone() };
            self.send_cluster(peer, msg, out);
        }
        let deadline = self.now + self.config.tunables.recover_timeout_ms;
        self.vacuum.rounds.insert(
            round,
            Round { generation, db_id, entries, waiting: peers, kept: BTreeSet::new(), deadline },
        );
        self.finish_round_if_answered(round, store);
    }

    /// A member's side of step 2: drop what may be dropped, say what was kept.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn vacuum_drop(
        &mut self,
        from: Pnn,
        generation: Generation,
        round: u32,
        db_id: DbId,
        entries: Vec<VacuumEntry>,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        if !self.active() || generation != self.config.generation {
            return; // the round is void; its LMASTER gives up on it
        }
        let mut kept = vec![];
        for entry in entries {
            if !self.drop_copy(db_id, &entry, store) {
                kept.push(entry.key);
            }
        }
        self.stats.vacuum_copies_kept += kept.len() as u64;
        self.send_cluster(from, ClusterMsg::VacuumKept { generation, round, kept }, out);
    }

    /// Drops this node's copy unless it is newer than the LMASTER's, is held here, has work
    /// pending, or its chain is locked; true if no copy is left.
    fn drop_copy(&mut self, db_id: DbId, entry: &VacuumEntry, store: &mut dyn RecordStore) -> bool {
        if !self.dbs.contains_key(&db_id) {
            return true;
        }
        if self.key_busy(db_id, &entry.key) || !store.try_lock(db_id, &entry.key) {
            return false;
        }
        let dropped = match store.fetch(db_id, &entry.key) {
            Ok(None) => true,
            Ok(Some(record)) if record.header.dmaster == self.config.pnn || record.header.rsn > entry.rsn => {
                false
            }
            Ok(Some(_)) => {
                let dropped = remove(store, db_id, &entry.key);
                self.stats.vacuum_copies_dropped += u64::from(dropped);
                dropped
            }
            Err(err) => {
                log::error!("vacuuming: reading a record of db {db_id:#x}: {err}");
                false
            }
        };
        store.unlock(db_id, &entry.key);
        dropped
    }

    /// The LMASTER hears back from a member.
    pub(super) fn vacuum_kept(
        &mut self,
        from: Pnn,
        generation: Generation,
        round: u32,
        kept: Vec<Vec<u8>>,
        store: &mut dyn RecordStore,
    ) {
        let Some(r) = self.vacuum.rounds.get_mut(&round) else { return };
        if r.generation != generation || !r.waiting.remove(&from) {
            return;
        }
        r.kept.extend(kept);
        self.finish_round_if_answered(round, store);
    }

    /// Step 3, once every member answered: delete this node's copy of every key nobody
    /// kept, if it is still held here, empty, at the RSN the members were told.
    fn finish_round_if_answered(&mut self, round: u32, store: &mut dyn RecordStore) {
        if !self.vacuum.rounds.get(&round).is_some_and(|r| r.waiting.is_empty()) {
            return;
        }
        let Some(Round { db_id, entries, kept, .. }) = self.vacuum.rounds.remove(&round) else { return };
        for entry in entries {
            if kept.contains(&entry.key) || !self.delete_own_copy(db_id, &entry, store) {
                self.stats.vacuum_skipped += 1;
                self.vacuum.remember(db_id, entry.key);
            }
        }
    }

    /// False if the record must be looked at again (locked or busy).
    fn delete_own_copy(&mut self, db_id: DbId, entry: &VacuumEntry, store: &mut dyn RecordStore) -> bool {
        if self.key_busy(db_id, &entry.key) || !store.try_lock(db_id, &entry.key) {
            return false;
        }
        let me = self.config.pnn;
        let done = match store.fetch(db_id, &entry.key) {
            Ok(Some(record))
                if record.data.is_empty()
                    && record.header.dmaster == me
                    && record.header.rsn == entry.rsn =>
            {
                let deleted = remove(store, db_id, &entry.key);
                self.stats.vacuum_deleted += u64::from(deleted);
                deleted
            }
            // Recreated, migrated away or deleted meanwhile: not this round's to delete.
            Ok(_) => true,
            Err(err) => {
                log::error!("vacuuming: reading a record of db {db_id:#x}: {err}");
                false
            }
        };
        store.unlock(db_id, &entry.key);
        done
    }

    /// A round that cannot complete: its keys wait for the next run. What members dropped
    /// meanwhile were older copies, which nothing needs.
    fn abandon_round(&mut self, round: u32) {
        if let Some(r) = self.vacuum.rounds.remove(&round) {
            self.stats.vacuum_rounds_abandoned += 1;
            for entry in r.entries {
                self.vacuum.remember(r.db_id, entry.key);
            }
        }
    }

    /// The generation ended: rounds of it are void, and so is the run (its records are
    /// looked at again, under the next generation's map).
    pub(super) fn vacuum_generation_ended(&mut self) {
        let rounds: Vec<u32> = self.vacuum.rounds.keys().copied().collect();
        for round in rounds {
            self.abandon_round(round);
        }
        if let Some(run) = self.vacuum.run.take() {
            for (db_id, key) in run.pending {
                self.vacuum.remember(db_id, key);
            }
        }
    }

    /// The link to `pnn` broke: an answer it owed may be lost with it.
    pub(super) fn vacuum_link_down(&mut self, pnn: Pnn) {
        let rounds: Vec<u32> =
            self.vacuum.rounds.iter().filter(|(_, r)| r.waiting.contains(&pnn)).map(|(&id, _)| id).collect();
        for round in rounds {
            self.abandon_round(round);
        }
    }

    /// A record arrived here empty (through step 1, or for a client that may never write
    /// to it), or was created here empty: vacuum it in the next run unless it has data then.
    pub(super) fn vacuum_arrived(&mut self, db_id: DbId, key: &[u8]) {
        self.vacuum.remember(db_id, key.to_vec());
    }
}

/// Deletes a record under its chain lock; false (and logged) if the store fails.
fn remove(store: &mut dyn RecordStore, db_id: DbId, key: &[u8]) -> bool {
    match store.delete(db_id, key) {
        Ok(()) => true,
        Err(err) => {
            log::error!("vacuuming: deleting a record of db {db_id:#x}: {err}");
            false
        }
    }
}
