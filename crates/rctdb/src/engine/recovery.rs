//! Recovery (DESIGN §8.4), led by the leader, run by every member. Its cost follows what
//! changed, not the size of the databases:
//!
//! 1. Start: every member stops serving (its generation becomes invalid, peers' work of the
//!    old generation is void) and says where it is in the cluster's history (`Epoch`) and
//!    which databases it has. Clients keep using the records their node holds.
//! 2. Trust: the members at the newest epoch, and the members that epoch's recovery
//!    included, followed the cluster's history; the others were away (a false death: a
//!    stop, a stall, a partition). A node that was away keeps its records unless a
//!    recovery took them over meanwhile (it was given up); only then does it empty its
//!    databases, as what it holds was replaced.
//! 3. Collect: members send the headers of their records (key, RSN, DMASTER),
//!    streamed in chunks, no data. Headers change only through the engine, so they are read
//!    without waiting for any client's lock.
//! 4. Plan, per record (`plan_record`, which says which copy wins and why no superseded
//!    version comes back): a member that holds it keeps it where it is. If no member holds
//!    it and its last holder is no member but may come back (heard from within
//!    `give_up_ms`), it is held for that node: nothing moves, the LMASTER keeps pointing
//!    there, requests wait. Otherwise (its holder is given up, or the handover was lost on
//!    the wire) the newest copy becomes the holder. The holder ends above every other
//!    copy's RSN; the key's LMASTER under the new map learns it. Nothing else moves. A plan
//!    that takes records over is committed only once every lease that could cover them has
//!    ended (`takeover_safe_at`, membership's lease rules).
//! 5. Commit: each member records the new epoch, map and generation, then applies its fixes
//!    under the chain locks (a fix on a chain a client holds waits behind that lock, and so
//!    does any later request for the record).
//! 6. Activate: members serve the new generation; client requests that waited are sent.
//!
//! A member that does not answer within `RecoverTimeout` is left out for
//! `RecoveryBanPeriod` and the recovery starts again without it.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{lmaster_of, ClusterEvent, Engine, Millis, Output, Record, RecordStore, Work};
use crate::record::{RecordHeader, FLAG_AUTOMATIC};
use crate::wire::cluster::{ClusterMsg, DbName, Epoch, FixEntry, HeaderEntry, RecordFix};
use crate::wire::{DbId, Generation, Pnn, INVALID_GENERATION};

/// Headers or fixes per message: large databases stream in many packets, none near the
/// packet size limit.
const CHUNK_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Ready,
    Collect,
    Commit,
}

/// One member's copy of a record, as its header says.
#[derive(Debug, Clone, Copy)]
struct Copy {
    node: Pnn,
    rsn: u64,
    dmaster: Pnn,
}

/// The leader's side of a recovery in progress.
pub(super) struct LeadRecovery {
    generation: Generation,
    started_at: Millis,
    deadline: Millis,
    phase: Phase,
    members: BTreeSet<Pnn>,
    /// Members whose answer to the current phase has not come.
    waiting: BTreeSet<Pnn>,
    ready: BTreeMap<Pnn, (Epoch, Vec<Pnn>)>,
    dbs: BTreeMap<DbId, String>,
    /// Per member, the databases whose headers are still coming, and the next chunk of each.
    pulls: BTreeMap<Pnn, BTreeMap<DbId, u32>>,
    /// Members whose records the plan keeps (the others empty their databases).
    trusted: BTreeSet<Pnn>,
    copies: HashMap<(DbId, Vec<u8>), Vec<Copy>>,
    epoch: Epoch,
    fixed: u64,
}

/// A member's side of the recovery it takes part in.
pub(super) struct MemberRecovery {
    leader: Pnn,
    generation: Generation,
    fixes: Vec<(DbId, FixEntry)>,
    /// Databases to empty once they are frozen.
    wiping: Option<BTreeSet<DbId>>,
    committed: bool,
}

#[derive(Default)]
pub(super) struct Recoveries {
    pub(super) lead: Option<LeadRecovery>,
    pub(super) member: Option<MemberRecovery>,
    /// When the first of the recoveries that end in the next activation started: live nodes
    /// are waited for until ten `RecoverTimeout`s after it.
    first_started: Option<Millis>,
}

impl Engine {
    pub(super) fn recovery_running(&self) -> bool {
        self.recoveries.lead.is_some()
    }

    /// Whether the recovery this node leads includes `pnn`.
    pub(super) fn recovery_includes(&self, pnn: Pnn) -> bool {
        self.recoveries.lead.as_ref().is_some_and(|lead| lead.members.contains(&pnn))
    }

    pub(super) fn abandon_lead(&mut self) {
        self.recoveries.lead = None;
        self.recoveries.first_started = None;
    }

    fn db_names(&self) -> Vec<DbName> {
        self.dbs.iter().map(|(&db_id, name)| DbName { db_id, name: name.clone() }).collect()
    }

    pub(super) fn start_recovery(&mut self, out: &mut Vec<Output>) {
        let members = self.eligible_nodes();
        if !members.contains(&self.config.pnn) {
            self.recoveries.lead = None;
            return;
        }
        let generation = loop {
            let candidate = self.cluster.random() as Generation;
            if candidate > INVALID_GENERATION && candidate != self.cluster.epoch().1 {
                break candidate;
            }
        };
        let now = self.now;
        self.recoveries.first_started.get_or_insert(now);
        self.stats.recoveries_led += 1;
        let list: Vec<Pnn> = members.iter().copied().collect();
        log::info!("node {}: recovery to generation {generation:#x} with nodes {list:?}", self.config.pnn);
        out.push(Output::Event(ClusterEvent::RecoveryStarted { generation, members: list }));
        self.recoveries.lead = Some(LeadRecovery {
            generation,
            started_at: now,
            deadline: now + self.config.tunables.recover_timeout_ms,
            phase: Phase::Ready,
            members: members.clone(),
            waiting: members.clone(),
            ready: BTreeMap::new(),
            dbs: BTreeMap::new(),
            pulls: BTreeMap::new(),
            trusted: BTreeSet::new(),
            copies: HashMap::new(),
            epoch: Epoch::default(),
            fixed: 0,
        });
        let term = self.cluster.term();
        for member in members {
            self.send_cluster(member, ClusterMsg::RecoveryStart { term, generation }, out);
        }
    }

    /// A member we wait for whose link just came up may have missed what we sent while it
    /// was down (a node that just started is heard before our link to it is up): start
    /// again, now that it can hear us.
    pub(super) fn recovery_link_up(&mut self, pnn: Pnn, out: &mut Vec<Output>) {
        if self.recoveries.lead.as_ref().is_some_and(|lead| lead.waiting.contains(&pnn)) {
            log::info!(
                "node {}: link to node {pnn} up during a recovery; starting it again",
                self.config.pnn
            );
            self.start_recovery(out);
        }
    }

    /// After this node stalled, members get the full timeout again from now.
    pub(super) fn extend_recovery_deadline(&mut self, now: Millis) {
        let timeout = self.config.tunables.recover_timeout_ms;
        if let Some(lead) = self.recoveries.lead.as_mut() {
            lead.deadline = lead.deadline.max(now + timeout);
        }
    }

    /// Members that did not answer in time are left out for a while and the recovery starts
    /// again without them, unless leaving them out would cost records: a member that is
    /// alive and whose records count (it is trusted, or we do not know yet) is only slow —
    /// recovering a large database, or starved of CPU — so it gets more time, up to
    /// `RecoverTimeout` ten times over. A member emptying its databases waits for its
    /// clients' locks, and loses nothing by being left out.
    pub(super) fn recovery_tick(&mut self, out: &mut Vec<Output>) {
        let now = self.now;
        let timeout = self.config.tunables.recover_timeout_ms;
        let Some(lead) = self.recoveries.lead.as_ref() else { return };
        if lead.phase == Phase::Collect && lead.waiting.is_empty() {
            return self.commit_when_collected(out); // it waits for leases to end
        }
        if now < lead.deadline || lead.waiting.is_empty() {
            return;
        }
        let first_started = self.recoveries.first_started.unwrap_or(lead.started_at);
        let patient = now < first_started + 10 * timeout;
        let holds_records = |pnn: &Pnn| lead.phase == Phase::Ready || lead.trusted.contains(pnn);
        let laggards: Vec<Pnn> = lead.waiting.iter().copied().collect();
        if patient && laggards.iter().all(|p| *p != self.config.pnn && self.is_alive(*p) && holds_records(p))
        {
            // Slow, or a message was dropped (a full send queue drops silently): ask again.
            log::warn!("node {}: recovery waits on live nodes {laggards:?}; starting again", self.config.pnn);
            return self.start_recovery(out);
        }
        let phase = lead.phase;
        for pnn in laggards {
            let why = format!("no answer in recovery phase {phase:?} within {timeout} ms");
            if pnn == self.config.pnn {
                return self.ban_self(&why, out);
            }
            log::warn!("node {}: leaves node {pnn} out: {why}", self.config.pnn);
            self.cluster.exclude(pnn, now + self.ban_period());
            out.push(Output::Event(ClusterEvent::Excluded { pnn, why }));
        }
        self.start_recovery(out);
    }

    pub(super) fn recovery_message(
        &mut self,
        from: Pnn,
        msg: ClusterMsg,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        match msg {
            ClusterMsg::RecoveryStart { term, generation } => self.join_recovery(from, term, generation, out),
            ClusterMsg::Pull { generation, dbs } if self.sent_by_my_leader(from, generation) => {
                self.send_headers(from, generation, &dbs, store, out)
            }
            ClusterMsg::Wipe { generation, dbs } if self.sent_by_my_leader(from, generation) => {
                self.start_wipe(&dbs, store, out)
            }
            ClusterMsg::Fixes { generation, db_id, fixes } if self.sent_by_my_leader(from, generation) => {
                if let Some(member) = self.recoveries.member.as_mut() {
                    member.fixes.extend(fixes.into_iter().map(|fix| (db_id, fix)));
                }
            }
            ClusterMsg::Commit { generation, epoch, vnn_map, dbs, fixes }
                if self.sent_by_my_leader(from, generation) =>
            {
                self.commit(generation, epoch, vnn_map, &dbs, fixes, store, out)
            }
            ClusterMsg::Activate { generation } if self.sent_by_my_leader(from, generation) => {
                self.activate(generation, out)
            }
            ClusterMsg::RecoveryReady { generation, epoch, participants, dbs } => {
                if let Some(lead) = self.lead_in_phase(generation, Phase::Ready, from) {
                    lead.ready.insert(from, (epoch, participants));
                    lead.dbs.extend(dbs.into_iter().map(|db| (db.db_id, db.name)));
                    lead.waiting.remove(&from);
                    if lead.waiting.is_empty() {
                        self.begin_collect(out);
                    }
                }
            }
            ClusterMsg::Headers { generation, db_id, chunk, entries, last } => {
                let Some(lead) = self.lead_in_phase(generation, Phase::Collect, from) else { return };
                let pulls = lead.pulls.entry(from).or_default();
                if pulls.get(&db_id) != Some(&chunk) {
                    log::warn!("recovery: headers of node {from} arrived with a gap; starting again");
                    return self.start_recovery(out);
                }
                pulls.insert(db_id, chunk + 1);
                if last {
                    pulls.remove(&db_id);
                    if pulls.is_empty() {
                        lead.waiting.remove(&from);
                    }
                }
                for e in entries {
                    let copy = Copy { node: from, rsn: e.rsn, dmaster: e.dmaster };
                    lead.copies.entry((db_id, e.key)).or_default().push(copy);
                }
                self.commit_when_collected(out);
            }
            ClusterMsg::Wiped { generation } => {
                if let Some(lead) = self.lead_in_phase(generation, Phase::Collect, from) {
                    lead.waiting.remove(&from);
                    self.commit_when_collected(out);
                }
            }
            ClusterMsg::RecoveryFailed { generation } => {
                if self.recoveries.lead.as_ref().is_some_and(|lead| lead.generation == generation) {
                    log::warn!("recovery: node {from} missed part of it; starting again");
                    self.start_recovery(out);
                }
            }
            ClusterMsg::Committed { generation } => {
                if let Some(lead) = self.lead_in_phase(generation, Phase::Commit, from) {
                    lead.waiting.remove(&from);
                    if lead.waiting.is_empty() {
                        self.finish_recovery(out);
                    }
                }
            }
            other => log::debug!("node {}: ignored {other:?} from node {from}", self.config.pnn),
        }
    }

    fn sent_by_my_leader(&self, from: Pnn, generation: Generation) -> bool {
        self.recoveries.member.as_ref().is_some_and(|m| m.leader == from && m.generation == generation)
    }

    fn lead_in_phase(
        &mut self,
        generation: Generation,
        phase: Phase,
        from: Pnn,
    ) -> Option<&mut LeadRecovery> {
        self.recoveries.lead.as_mut().filter(|lead| {
            lead.generation == generation && lead.phase == phase && lead.waiting.contains(&from)
        })
    }

    // ---- member side

    fn join_recovery(&mut self, from: Pnn, term: u64, generation: Generation, out: &mut Vec<Output>) {
        let me = self.config.pnn;
        if from != me && !self.leader_claim(from, term, out) {
            return;
        }
        if from == me && !self.cluster.leads() {
            return;
        }
        if self.recoveries.member.as_ref().is_some_and(|m| m.leader == from && m.generation == generation) {
            return; // a copy of the start we answered already
        }
        self.pause_for_recovery(from, out);
        self.recoveries.member =
            Some(MemberRecovery { leader: from, generation, fixes: vec![], wiping: None, committed: false });
        self.stats.recoveries_joined += 1;
        let ready = ClusterMsg::RecoveryReady {
            generation,
            epoch: self.cluster.epoch().0,
            participants: self.cluster.epoch().2.to_vec(),
            dbs: self.db_names(),
        };
        self.send_cluster(from, ready, out);
    }

    fn send_headers(
        &mut self,
        leader: Pnn,
        generation: Generation,
        dbs: &[DbId],
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        for &db_id in dbs {
            let headers = if self.dbs.contains_key(&db_id) {
                match store.headers(db_id) {
                    Ok(headers) => headers,
                    Err(err) => {
                        return self.ban_self(&format!("reading the headers of db {db_id:#x}: {err}"), out)
                    }
                }
            } else {
                vec![]
            };
            let (mut entries, mut bytes, mut chunk) = (vec![], 0, 0);
            for (key, header) in headers {
                bytes += key.len() + 16;
                entries.push(HeaderEntry { key, rsn: header.rsn, dmaster: header.dmaster });
                if bytes >= CHUNK_BYTES {
                    let entries = std::mem::take(&mut entries);
                    bytes = 0;
                    let msg = ClusterMsg::Headers { generation, db_id, chunk, entries, last: false };
                    self.send_cluster(leader, msg, out);
                    chunk += 1;
                }
            }
            let msg = ClusterMsg::Headers { generation, db_id, chunk, entries, last: true };
            self.send_cluster(leader, msg, out);
        }
    }

    fn attach_all(&mut self, dbs: &[DbName], store: &mut dyn RecordStore, out: &mut Vec<Output>) -> bool {
        for db in dbs {
            if self.dbs.contains_key(&db.db_id) {
                continue;
            }
            if let Err(err) = store.attach(db.db_id, &db.name) {
                self.ban_self(&format!("attaching {}: {err}", db.name), out);
                return false;
            }
            self.dbs.insert(db.db_id, db.name.clone());
        }
        true
    }

    fn start_wipe(&mut self, dbs: &[DbName], store: &mut dyn RecordStore, out: &mut Vec<Output>) {
        if !self.attach_all(dbs, store, out) {
            return;
        }
        let all: BTreeSet<DbId> = self.dbs.keys().copied().collect();
        self.freeze_databases(out);
        if let Some(member) = self.recoveries.member.as_mut() {
            member.wiping = Some(all);
        }
        self.finish_wipe_when_frozen(store, out);
    }

    pub(super) fn finish_wipe_when_frozen(&mut self, store: &mut dyn RecordStore, out: &mut Vec<Output>) {
        let Some(member) = self.recoveries.member.as_ref() else { return };
        let Some(wiping) = member.wiping.as_ref() else { return };
        if !wiping.iter().all(|&db| self.cluster.is_frozen(db)) {
            return;
        }
        let (leader, generation) = (member.leader, member.generation);
        for db_id in wiping.clone() {
            if let Err(err) = store.wipe(db_id) {
                return self.ban_self(&format!("emptying db {db_id:#x}: {err}"), out);
            }
        }
        if let Some(member) = self.recoveries.member.as_mut() {
            member.wiping = None;
        }
        out.push(Output::Event(ClusterEvent::Emptied));
        self.send_cluster(leader, ClusterMsg::Wiped { generation }, out);
    }

    #[allow(clippy::too_many_arguments)]
    fn commit(
        &mut self,
        generation: Generation,
        epoch: Epoch,
        vnn_map: Vec<Pnn>,
        dbs: &[DbName],
        fixes: u64,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        let Some(member) = self.recoveries.member.as_ref() else { return };
        let (received, leader) = (member.fixes.len() as u64, member.leader);
        if received != fixes {
            // Some were lost on a reset link: committing without them could mint a record.
            log::warn!("recovery: {received} of {fixes} fixes arrived; not committing");
            self.recoveries.member = None;
            return self.send_cluster(leader, ClusterMsg::RecoveryFailed { generation }, out);
        }
        if !self.attach_all(dbs, store, out) {
            return;
        }
        // The history entry first: if the leader dies before activating, the next leader
        // knows this node took part in it, whatever fixes are still to come.
        self.cluster.commit_epoch(epoch, generation, vnn_map.clone(), self.now);
        let old_map = std::mem::replace(&mut self.config.vnn_map, vnn_map);
        self.map_replaced(&old_map, &self.config.vnn_map.clone());
        let Some(member) = self.recoveries.member.as_mut() else { return };
        member.committed = true;
        let leader = member.leader;
        let fixes = std::mem::take(&mut member.fixes);
        for (db_id, FixEntry { key, fix }) in fixes {
            let slot = (db_id, key.clone());
            self.step(Work::Fix { db_id, key, fix }, store, out);
            self.drop_if_idle(&slot);
        }
        if self.recoveries.member.is_some() {
            // Not banned by a fix that could not be stored.
            self.send_cluster(leader, ClusterMsg::Committed { generation }, out);
        }
    }

    /// Applies one fix under the record's chain lock (`Work::Fix`).
    pub(super) fn apply_fix(
        &mut self,
        db_id: DbId,
        key: Vec<u8>,
        fix: RecordFix,
        record: Option<Record>,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        let me = self.config.pnn;
        let (header, data) = match record {
            Some(Record { header, data }) => (header, data),
            None => (RecordHeader { rsn: 0, dmaster: me, flags: 0 }, vec![]),
        };
        let flags = header.flags & !FLAG_AUTOMATIC;
        let header = match fix {
            RecordFix::Promote { rsn } => RecordHeader { rsn, dmaster: me, flags },
            RecordFix::Point { dmaster } => RecordHeader { rsn: header.rsn, dmaster, flags },
        };
        self.stats.records_fixed += 1;
        if !self.write(store, db_id, &key, &Record { header, data }) {
            self.ban_self(&format!("a recovery could not store a record of db {db_id:#x}"), out);
        }
    }

    fn activate(&mut self, generation: Generation, out: &mut Vec<Output>) {
        if !self.recoveries.member.as_ref().is_some_and(|m| m.committed) || self.cluster.banned() {
            return;
        }
        self.recoveries.member = None;
        self.start_serving(generation, out);
    }

    // ---- leader side

    /// Everyone answered: decide whom to trust and ask for headers (or an empty database).
    fn begin_collect(&mut self, out: &mut Vec<Output>) {
        let Some(lead) = self.recoveries.lead.as_mut() else { return };
        let newest = lead.ready.values().map(|(epoch, _)| *epoch).max().unwrap_or_default();
        let newest_members: BTreeSet<Pnn> = lead
            .ready
            .values()
            .filter(|(epoch, _)| *epoch == newest)
            .flat_map(|(_, members)| members.iter().copied())
            .collect();
        let trusted: BTreeSet<Pnn> = lead
            .ready
            .iter()
            .filter(|(pnn, (epoch, _))| *epoch == newest || newest_members.contains(pnn))
            .map(|(pnn, _)| *pnn)
            .collect();
        lead.trusted = trusted.clone();
        let term = self.cluster.term();
        lead.epoch = if newest.term < term {
            Epoch { term, seq: 1 }
        } else {
            Epoch { term: newest.term, seq: newest.seq + 1 }
        };
        lead.phase = Phase::Collect;
        lead.deadline = self.now + self.config.tunables.recover_timeout_ms;
        lead.waiting = lead.members.clone();
        let db_ids: Vec<DbId> = lead.dbs.keys().copied().collect();
        let names: Vec<DbName> =
            lead.dbs.iter().map(|(&db_id, name)| DbName { db_id, name: name.clone() }).collect();
        let generation = lead.generation;
        let members: Vec<Pnn> = lead.members.iter().copied().collect();
        for member in members {
            if trusted.contains(&member) || !self.was_given_up(member) {
                if let Some(lead) = self.recoveries.lead.as_mut() {
                    lead.pulls.insert(member, db_ids.iter().map(|&db| (db, 0)).collect());
                    if db_ids.is_empty() {
                        lead.waiting.remove(&member);
                    }
                }
                self.send_cluster(member, ClusterMsg::Pull { generation, dbs: db_ids.clone() }, out);
            } else {
                log::warn!(
                    "node {}: node {member} comes back after its records were taken over; it empties its databases",
                    self.config.pnn
                );
                self.send_cluster(member, ClusterMsg::Wipe { generation, dbs: names.clone() }, out);
            }
        }
        self.commit_when_collected(out);
    }

    fn commit_when_collected(&mut self, out: &mut Vec<Output>) {
        let Some(lead) = self.recoveries.lead.as_ref() else { return };
        if lead.phase != Phase::Collect || !lead.waiting.is_empty() {
            return;
        }
        let vnn_map: Vec<Pnn> = lead.members.iter().copied().collect();
        let behind: BTreeSet<Pnn> = lead.members.difference(&lead.trusted).copied().collect();
        let held: BTreeSet<Pnn> = (0..self.config.nodes as Pnn)
            .filter(|p| !lead.members.contains(p) && !self.given_up(*p))
            .collect();
        let mut fixes: BTreeMap<(Pnn, DbId), Vec<FixEntry>> = BTreeMap::new();
        let (mut held_for, mut taken_from) = (BTreeSet::new(), BTreeSet::new());
        for ((db_id, key), copies) in &lead.copies {
            let plan = plan_record(key, copies, &vnn_map, &behind, &held);
            held_for.extend(plan.held_for);
            taken_from.extend(plan.taken_from);
            for (node, fix) in plan.fixes {
                fixes.entry((node, *db_id)).or_default().push(FixEntry { key: key.clone(), fix });
            }
        }
        let promotes = fixes.values().flatten().any(|entry| matches!(entry.fix, RecordFix::Promote { .. }));
        let safe_at = self.takeover_safe_at(&lead.members);
        if promotes && self.now < safe_at {
            // A node that is no member may still hold a lease on records this plan moves:
            // wait (`recovery_tick` asks again) rather than make a second holder.
            log::debug!(
                "node {}: recovery waits {} ms for leases to end",
                self.config.pnn,
                safe_at - self.now
            );
            return;
        }
        // Every node left out is held for until its time is up (a key only it knows has no
        // plan here), and one whose time is up is given up: if it comes back it empties
        // its databases, as the others may have made its keys anew meanwhile.
        let nodes = self.config.nodes as Pnn;
        let left_out: Vec<Pnn> = (0..nodes).filter(|p| !vnn_map.contains(p)).collect();
        for pnn in left_out {
            if held.contains(&pnn) || held_for.contains(&pnn) {
                self.hold_back(pnn);
            } else if pnn != self.config.pnn {
                self.gave_up(pnn);
            }
        }
        for pnn in taken_from {
            log::warn!("node {}: records of node {pnn} are taken over from their copies", self.config.pnn);
            self.gave_up(pnn);
        }
        let Some(lead) = self.recoveries.lead.as_mut() else { return };
        lead.copies.clear();
        lead.fixed = fixes.values().map(|f| f.len() as u64).sum();
        lead.phase = Phase::Commit;
        lead.deadline = self.now + self.config.tunables.recover_timeout_ms;
        lead.waiting = lead.members.clone();
        let (generation, epoch) = (lead.generation, lead.epoch);
        let dbs: Vec<DbName> =
            lead.dbs.iter().map(|(&db_id, name)| DbName { db_id, name: name.clone() }).collect();
        let mut counts: BTreeMap<Pnn, u64> = BTreeMap::new();
        for ((node, _), entries) in &fixes {
            *counts.entry(*node).or_default() += entries.len() as u64;
        }
        for ((node, db_id), mut entries) in fixes {
            entries.sort_by(|a, b| a.key.cmp(&b.key)); // the same order on every run
            let mut chunk = vec![];
            let mut bytes = 0;
            for entry in entries {
                bytes += entry.key.len() + 16;
                chunk.push(entry);
                if bytes >= CHUNK_BYTES {
                    bytes = 0;
                    let fixes = std::mem::take(&mut chunk);
                    self.send_cluster(node, ClusterMsg::Fixes { generation, db_id, fixes }, out);
                }
            }
            if !chunk.is_empty() {
                self.send_cluster(node, ClusterMsg::Fixes { generation, db_id, fixes: chunk }, out);
            }
        }
        for &member in &vnn_map {
            let count = counts.get(&member).copied().unwrap_or(0);
            let commit = ClusterMsg::Commit {
                generation,
                epoch,
                vnn_map: vnn_map.clone(),
                dbs: dbs.clone(),
                fixes: count,
            };
            self.send_cluster(member, commit, out);
        }
    }

    fn finish_recovery(&mut self, out: &mut Vec<Output>) {
        let Some(lead) = self.recoveries.lead.take() else { return };
        let first_started = self.recoveries.first_started.take().unwrap_or(lead.started_at);
        let millis = self.now.saturating_sub(first_started);
        self.stats.note_recovery(millis);
        self.cluster.settle(self.now);
        self.readmitted(&lead.members);
        let members: Vec<Pnn> = lead.members.iter().copied().collect();
        log::info!(
            "node {}: recovery to generation {:#x} done in {millis} ms: members {members:?}, {} records fixed",
            self.config.pnn,
            lead.generation,
            lead.fixed
        );
        out.push(Output::Event(ClusterEvent::RecoveryDone {
            generation: lead.generation,
            millis,
            fixed: lead.fixed,
            members: members.clone(),
        }));
        for member in members {
            self.send_cluster(member, ClusterMsg::Activate { generation: lead.generation }, out);
        }
    }
}

/// What a recovery does with one record.
#[derive(Debug, Default, PartialEq, Eq)]
struct RecordPlan {
    /// The fixes it needs, by node.
    fixes: Vec<(Pnn, RecordFix)>,
    /// Its holder is no member but may come back: it stays where it is, unavailable.
    held_for: Option<Pnn>,
    /// Its holder is no member and was given up: a copy took its place.
    taken_from: Option<Pnn>,
}

/// Which copy of a record wins (the rule of DESIGN §8.4, step 4):
/// 1. A member that holds it (its copy names itself) keeps it. Should two claim it, a
///    member that followed the cluster's history wins over one that was away (`behind`),
///    then the higher RSN. The losers' copies point to the winner.
/// 2. Nobody holds it: if a copy names a node that is no member and is `held` (not given
///    up), nothing moves — it comes back with its record, or is given up later.
///    Otherwise the newest copy of a member that followed the history (else of any member)
///    becomes the holder. A copy that a member away brings back, naming a member that has
///    no copy or a later one, counts for nothing: that member deleted the record (vacuuming removed it)
///    while the other was away, and it must not come back. If only such copies are left,
///    a member that followed the history holds the record again, empty, above their RSNs.
/// 3. The holder's RSN ends above every other copy's, so no older copy can ever pass for
///    newer (RSNs change only when records move, not when clients write).
/// 4. The key's LMASTER under the new map learns the holder.
///
/// Why a superseded version cannot come back: a node's claim is kept over the others' only
/// when nobody took the record over while it was away — taking over happens only once the
/// node is given up, and a given-up node empties its databases when it returns — so the
/// claim it brings back is the last version anyone wrote (its lease stopped its clients
/// before the others could act).
fn plan_record(
    key: &[u8],
    copies: &[Copy],
    vnn_map: &[Pnn],
    behind: &BTreeSet<Pnn>,
    held: &BTreeSet<Pnn>,
) -> RecordPlan {
    let lmaster = lmaster_of(key, vnn_map);
    let mut plan = RecordPlan::default();
    // Ties go to the lower node number, so every leader plans alike.
    let newest = |a: &&Copy, b: &&Copy| a.rsn.cmp(&b.rsn).then(b.node.cmp(&a.node));
    let followed_history = |c: &&Copy| !behind.contains(&c.node);
    let top_rsn = copies.iter().map(|c| c.rsn).max().unwrap_or(0);
    let claims: Vec<&Copy> = copies.iter().filter(|c| c.dmaster == c.node).collect();
    let claim = claims.iter().copied().filter(followed_history).max_by(newest);
    let holder = match claim.or_else(|| claims.iter().copied().max_by(newest)) {
        Some(holder) => {
            for other in claims.iter().filter(|c| c.node != holder.node) {
                if !behind.contains(&other.node) {
                    // Two members of the history both hold it: the protocol's invariant broke.
                    log::error!(
                        "recovery: nodes {} and {} both hold a record; keeping node {}'s",
                        holder.node,
                        other.node,
                        holder.node
                    );
                }
                plan.fixes.push((other.node, RecordFix::Point { dmaster: holder.node }));
            }
            if copies.iter().any(|c| c.node != holder.node && c.rsn >= holder.rsn) {
                plan.fixes.push((holder.node, RecordFix::Promote { rsn: top_rsn.saturating_add(1) }));
            }
            holder.node
        }
        None => {
            // A copy kept by a member that was away, naming a member that has no copy (or
            // one it got later), is superseded: the record went on from there and was
            // deleted (vacuumed) meanwhile.
            let superseded = |c: &&Copy| {
                behind.contains(&c.node)
                    && vnn_map.contains(&c.dmaster)
                    && copies.iter().find(|other| other.node == c.dmaster).map_or(true, |d| d.rsn > c.rsn)
            };
            let live: Vec<Copy> = copies.iter().filter(|c| !superseded(c)).copied().collect();
            let Some(last) = live.iter().max_by(newest) else {
                if copies.is_empty() {
                    return plan;
                }
                // Deleted while they were away: a member that followed the history (the
                // LMASTER, if it did) holds it again, empty, above their RSNs, so no stale
                // copy passes for newer and vacuuming removes them all.
                let holder = if behind.contains(&lmaster) {
                    vnn_map.iter().copied().find(|p| !behind.contains(p)).unwrap_or(lmaster)
                } else {
                    lmaster
                };
                plan.fixes.push((holder, RecordFix::Promote { rsn: top_rsn.saturating_add(1) }));
                if lmaster != holder {
                    plan.fixes.push((lmaster, RecordFix::Point { dmaster: holder }));
                }
                return plan;
            };
            let copies = live.as_slice();
            // Any copy naming a node held for may be the newest word on it: an LMASTER's
            // pointer (RSN 0) is newer than a handed-over copy whatever the RSNs say.
            if let Some(away) = copies.iter().filter(|c| held.contains(&c.dmaster)).max_by(newest) {
                let lmaster_knows = copies.iter().any(|c| c.node == lmaster && c.dmaster == away.dmaster);
                if !lmaster_knows {
                    // Or the LMASTER, finding no copy, would make a new record.
                    plan.fixes.push((lmaster, RecordFix::Point { dmaster: away.dmaster }));
                }
                plan.held_for = Some(away.dmaster);
                return plan;
            }
            if !vnn_map.contains(&last.dmaster) {
                plan.taken_from = Some(last.dmaster);
            }
            let source = copies.iter().filter(followed_history).max_by(newest).unwrap_or(last);
            plan.fixes.push((source.node, RecordFix::Promote { rsn: top_rsn.saturating_add(1) }));
            source.node
        }
    };
    let lmaster_knows = copies.iter().any(|c| c.node == lmaster && c.dmaster == holder)
        || plan.fixes.iter().any(|(node, _)| *node == lmaster);
    if lmaster != holder && !lmaster_knows {
        plan.fixes.push((lmaster, RecordFix::Point { dmaster: holder }));
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn copy(node: Pnn, rsn: u64, dmaster: Pnn) -> Copy {
        Copy { node, rsn, dmaster }
    }

    /// The fixes for a record when every member followed the history and nothing is held.
    fn fixes_of(key: &[u8], copies: &[Copy], map: &[Pnn]) -> Vec<(Pnn, RecordFix)> {
        plan_record(key, copies, map, &BTreeSet::new(), &BTreeSet::new()).fixes
    }

    /// A key whose LMASTER under `map` is `lmaster`.
    fn key_with_lmaster(lmaster: Pnn, map: &[Pnn]) -> Vec<u8> {
        (0u32..)
            .map(|i| format!("key-{i}").into_bytes())
            .find(|k| lmaster_of(k, map) == lmaster)
            .expect("some key")
    }

    #[test]
    fn a_living_holder_keeps_its_record_and_the_lmaster_learns_of_it() {
        let map = [0, 1, 2];
        let key = key_with_lmaster(0, &map);
        // Node 2 holds it at RSN 5; node 0, the new LMASTER, has an old copy naming node 1.
        let fixes = fixes_of(&key, &[copy(2, 5, 2), copy(0, 3, 1), copy(1, 4, 2)], &map);
        assert_eq!(fixes, vec![(0, RecordFix::Point { dmaster: 2 })]);
        // Nothing to do when the LMASTER knows already.
        assert!(fixes_of(&key, &[copy(2, 5, 2), copy(0, 4, 2)], &map).is_empty());
    }

    #[test]
    fn a_record_nobody_holds_goes_to_its_newest_copy_above_every_other_rsn() {
        let map = [0, 1];
        let key = key_with_lmaster(1, &map);
        // Handed over by node 0 to a node that died: copies on 0 (RSN 7) and the LMASTER 1 (RSN 7).
        let fixes = fixes_of(&key, &[copy(0, 7, 2), copy(1, 7, 2)], &map);
        assert_eq!(fixes, vec![(0, RecordFix::Promote { rsn: 8 }), (1, RecordFix::Point { dmaster: 0 })]);
        let fixes = fixes_of(&key, &[copy(0, 6, 2), copy(1, 7, 2)], &map);
        assert_eq!(fixes, vec![(1, RecordFix::Promote { rsn: 8 })]);
    }

    #[test]
    fn two_claims_keep_the_newer() {
        let map = [0, 1];
        let key = key_with_lmaster(0, &map);
        let fixes = fixes_of(&key, &[copy(0, 3, 0), copy(1, 9, 1)], &map);
        assert_eq!(fixes, vec![(0, RecordFix::Point { dmaster: 1 })]);
    }
}

#[cfg(test)]
mod false_death {
    use super::*;

    fn copy(node: Pnn, rsn: u64, dmaster: Pnn) -> Copy {
        Copy { node, rsn, dmaster }
    }

    fn key_with_lmaster(lmaster: Pnn, map: &[Pnn]) -> Vec<u8> {
        (0u32..)
            .map(|i| format!("key-{i}").into_bytes())
            .find(|k| lmaster_of(k, map) == lmaster)
            .expect("some key")
    }

    #[test]
    fn the_records_of_a_node_that_may_come_back_stay_where_they_are() {
        // Node 2 holds the record (RSN 5); node 0 has the copy it handed over (RSN 4).
        let map = [0, 1];
        let key = key_with_lmaster(1, &map);
        let held = BTreeSet::from([2]);
        let plan = plan_record(&key, &[copy(0, 4, 2)], &map, &BTreeSet::new(), &held);
        assert_eq!(plan.held_for, Some(2));
        assert_eq!(plan.fixes, vec![(1, RecordFix::Point { dmaster: 2 })], "the LMASTER must not mint it");
        // A pointer to it (RSN 0, as the LMASTER's) outweighs an older handover's copy.
        let plan = plan_record(&key, &[copy(0, 4, 3), copy(1, 0, 2)], &map, &BTreeSet::new(), &held);
        assert_eq!((plan.held_for, plan.fixes), (Some(2), vec![]), "the LMASTER points there already");
        // Given up: the newest copy takes its place.
        let plan = plan_record(&key, &[copy(0, 4, 2)], &map, &BTreeSet::new(), &BTreeSet::new());
        assert_eq!(plan.taken_from, Some(2));
        assert_eq!(plan.fixes[0], (0, RecordFix::Promote { rsn: 5 }));
    }

    #[test]
    fn a_node_back_from_a_false_death_keeps_what_nobody_took_over() {
        // Node 2 comes back (behind the history) holding the record at RSN 5; the others
        // kept pointing at it.
        let map = [0, 1, 2];
        let key = key_with_lmaster(0, &map);
        let behind = BTreeSet::from([2]);
        let copies = [copy(2, 5, 2), copy(0, 0, 2), copy(1, 4, 2)];
        let plan = plan_record(&key, &copies, &map, &behind, &BTreeSet::new());
        assert_eq!(plan.fixes, vec![], "its copy is the record");
    }

    #[test]
    fn a_stale_copy_brought_back_does_not_revive_a_record_deleted_meanwhile() {
        // Node 0 handed the record to node 1 and was then left out; node 1 deleted it and
        // vacuuming removed every copy but node 0's, which names node 1.
        let map = [0, 1, 2];
        let key = key_with_lmaster(2, &map);
        let behind = BTreeSet::from([0]);
        let plan = plan_record(&key, &[copy(0, 4, 1)], &map, &behind, &BTreeSet::new());
        assert_eq!(plan.fixes, vec![(2, RecordFix::Promote { rsn: 5 })], "it stays deleted, above the copy");
        // The LMASTER was away too, with an older copy naming node 0: node 1 holds it.
        let behind = BTreeSet::from([0, 2]);
        let plan = plan_record(&key, &[copy(0, 4, 1), copy(2, 2, 0)], &map, &behind, &BTreeSet::new());
        let deleted = vec![(1, RecordFix::Promote { rsn: 5 }), (2, RecordFix::Point { dmaster: 1 })];
        assert_eq!(plan.fixes, deleted, "node 1 holds it again, empty, above both copies");
        let behind = BTreeSet::from([0]);
        // Naming a node that is no member and was given up, it is the last copy there is.
        let plan = plan_record(&key, &[copy(0, 4, 3)], &map, &behind, &BTreeSet::new());
        assert_eq!(plan.fixes[0], (0, RecordFix::Promote { rsn: 5 }));
    }

    #[test]
    fn a_claim_of_a_node_that_followed_the_history_wins_and_ends_above_every_rsn() {
        // Node 1 holds the record at RSN 3 (taken over while node 2 was away); node 2 comes
        // back claiming it at RSN 7: RSNs say nothing about client writes, history does.
        let map = [0, 1, 2];
        let key = key_with_lmaster(0, &map);
        let behind = BTreeSet::from([2]);
        let copies = [copy(1, 3, 1), copy(2, 7, 2), copy(0, 3, 1)];
        let plan = plan_record(&key, &copies, &map, &behind, &BTreeSet::new());
        assert_eq!(
            plan.fixes,
            vec![(2, RecordFix::Point { dmaster: 1 }), (1, RecordFix::Promote { rsn: 8 })]
        );
    }
}
