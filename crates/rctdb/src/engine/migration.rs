//! The migration steps of DESIGN §8.2, each run with the key's chain lock held.

use super::statistics::Direction;
use super::{
    CallKind, ClientCall, ClientId, Engine, FirstUse, Migration, Output, Record, RecordStore, Waiter, Work,
    CALL_OK,
};
use crate::record::{RecordHeader, FLAG_AUTOMATIC, FLAG_MIGRATED_WITH_DATA};
use crate::wire::{
    Body, DbId, Packet, Pnn, ReplyDmaster, ReqCall, ReqDmaster, ReqId, CALL_FLAG_IMMEDIATE_MIGRATION,
    CALL_NULL_FUNC,
};

impl Engine {
    pub(super) fn step_locked(
        &mut self,
        work: Work,
        record: Option<Record>,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        match work {
            // Queued behind a lock before this node stopped serving: it waits for the next
            // generation like any request that arrives now.
            Work::ClientCall(call) if !self.active() => self.defer_call(call),
            Work::ClientCall(ClientCall { client, reqid, db_id, key, first_use, kind }) => {
                let waiter = Waiter { client, reqid, first_use, kind };
                self.client_call(waiter, db_id, key, record, store, out)
            }
            Work::Fix { db_id, key, fix } => self.apply_fix(db_id, key, fix, record, store, out),
            Work::Resend { .. } if !self.active() => {}
            Work::Call { origin, reqid, call } => self.remote_call(origin, reqid, call, record, store, out),
            Work::ReqDmaster { from, reqid, req } => self.req_dmaster(from, reqid, req, record, store, out),
            Work::ReplyDmaster { from, reply } => self.reply_dmaster(from, reply, record, store, out),
            Work::Resend { db_id, key } => self.resend(db_id, key, record, store, out),
        }
    }

    /// This node is DMASTER if its copy says so, or if nobody has stored the key yet and
    /// this node is its LMASTER.
    pub(super) fn is_dmaster(&self, key: &[u8], record: &Option<Record>) -> bool {
        match record {
            Some(record) => record.header.dmaster == self.config.pnn,
            None => self.lmaster(key) == self.config.pnn && self.held_unknown(key).is_none(),
        }
    }

    fn client_call(
        &mut self,
        waiter: Waiter,
        db_id: DbId,
        key: Vec<u8>,
        record: Option<Record>,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        if self.is_dmaster(&key, &record) {
            if record.is_none() {
                // The LMASTER's made-up header becomes real so the client finds it.
                let header = RecordHeader { rsn: 1, dmaster: self.config.pnn, flags: 0 };
                let initial = Record { header, data: vec![] };
                if !self.write(store, db_id, &key, &initial) {
                    out.push(Output::ClientReply {
                        client: waiter.client,
                        reqid: waiter.reqid,
                        status: -libc::EIO,
                        data: None,
                    });
                    return;
                }
                self.vacuum_arrived(db_id, &key);
            }
            if store.unwritten(db_id, &key) == Some(libc::EAGAIN) {
                return self.wait_for_write(db_id, key, vec![waiter], out);
            }
            let data = waiter.wants_data().then(|| record.map(|r| r.data).unwrap_or_default());
            let status = store.unwritten(db_id, &key).map_or(CALL_OK, |errno| -errno);
            out.push(Output::ClientReply { client: waiter.client, reqid: waiter.reqid, status, data });
            return;
        }
        let slot = (db_id, key.clone());
        if let Some(migration) = self.keys.get_mut(&slot).and_then(|state| state.migration.as_mut()) {
            // Fetch collapse: one migration per key per node, later askers ride along.
            migration.waiters.push(waiter);
            return;
        }
        if waiter.kind == CallKind::Read {
            // A read: the record stays with its DMASTER, which answers the data.
            return self.send_fetch(waiter, db_id, key, &record, out);
        }
        self.start_migration(db_id, key, vec![waiter], &record, out);
    }

    /// Asks for the record to come here; `waiters` are answered when it does.
    pub(super) fn start_migration(
        &mut self,
        db_id: DbId,
        key: Vec<u8>,
        waiters: Vec<Waiter>,
        record: &Option<Record>,
        out: &mut Vec<Output>,
    ) {
        let reqid = self.next_reqid();
        let sent_at = self.now;
        self.keys.entry((db_id, key.clone())).or_default().migration =
            Some(Migration { reqid, waiters, sent_at, resends: 0 });
        self.send_call(db_id, key, record, reqid, out);
    }

    /// This node serves again: our migrations that were cut off go out again now, under the
    /// new generation.
    pub(super) fn resume_migrations(&mut self) {
        let mut pending: Vec<(DbId, Vec<u8>)> =
            self.keys.iter().filter(|(_, s)| s.migration.is_some()).map(|(slot, _)| slot.clone()).collect();
        pending.sort(); // a replay order independent of the hash map's seed
        for (db_id, key) in pending {
            if let Some(migration) =
                self.keys.get_mut(&(db_id, key.clone())).and_then(|s| s.migration.as_mut())
            {
                migration.resends = 0;
            }
            self.ready.push_back(Work::Resend { db_id, key });
        }
    }

    /// A migration of ours is late: its request or the record may have been dropped on a
    /// link that went down. Ask again under a new reqid; whichever answer comes first
    /// completes it, later ones are recognised as duplicates.
    fn resend(
        &mut self,
        db_id: DbId,
        key: Vec<u8>,
        record: Option<Record>,
        store: &dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        if !self.keys.get(&(db_id, key.clone())).is_some_and(|state| state.migration.is_some()) {
            return; // it completed meanwhile
        }
        if self.is_dmaster(&key, &record) {
            let data = record.map(|r| r.data).unwrap_or_default();
            return self.finish_migration(db_id, &key, &data, store, out);
        }
        let (reqid, now) = (self.next_reqid(), self.now);
        if let Some(migration) = self.keys.get_mut(&(db_id, key.clone())).and_then(|s| s.migration.as_mut()) {
            migration.reqid = reqid;
            migration.sent_at = now;
            migration.resends += 1;
        }
        log::debug!("engine: migration of a key of db {db_id:#x} is late; asking again");
        self.stats.calls_resent += 1;
        self.send_call(db_id, key, &record, reqid, out);
    }

    /// REQ_CALL for a key this node is not DMASTER of: to where our copy says the record
    /// went, else to its LMASTER.
    fn send_call(
        &mut self,
        db_id: DbId,
        key: Vec<u8>,
        record: &Option<Record>,
        reqid: ReqId,
        out: &mut Vec<Output>,
    ) {
        let Some(destnode) = self.record_site(db_id, &key, record) else { return };
        self.stats.calls_sent += 1;
        let call = new_call(db_id, key, CALL_NULL_FUNC, CALL_FLAG_IMMEDIATE_MIGRATION);
        out.push(self.packet(destnode, self.config.pnn, reqid, Body::ReqCall(call)));
    }

    /// Where to ask for a record this node is not DMASTER of: the node our copy names,
    /// unless that node is no longer a member (the copy is from before a recovery); else
    /// the LMASTER, which always knows. `None` when that is this node itself.
    pub(super) fn record_site(&self, db_id: DbId, key: &[u8], record: &Option<Record>) -> Option<Pnn> {
        let destnode = match record {
            Some(record) if self.config.vnn_map.contains(&record.header.dmaster) => record.header.dmaster,
            _ => self.lmaster(key),
        };
        if destnode == self.config.pnn {
            // We are the LMASTER and our copy names a node that is no member: the record is
            // held for it (recovery.rs, false deaths). It comes back, or is given up, and the
            // recovery that follows sends this migration again.
            log::debug!("engine: a record of db {db_id:#x} waits for its holder to come back");
            return None;
        }
        Some(destnode)
    }

    fn remote_call(
        &mut self,
        origin: Pnn,
        reqid: ReqId,
        call: ReqCall,
        record: Option<Record>,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        if super::fetch::is_fetch(&call) {
            return self.remote_fetch(origin, reqid, call, record, out);
        }
        let me = self.config.pnn;
        let is_dmaster = self.is_dmaster(&call.key, &record);
        let state = self.keys.entry((call.db_id, call.key.clone())).or_default();
        let own_migration = state.migration.as_ref().map(|m| m.reqid);
        if origin == me {
            match own_migration {
                Some(in_flight) if in_flight == reqid => {}
                // An old copy of a request of ours that was answered long ago.
                _ => {
                    self.stats.duplicates_dropped += 1;
                    return;
                }
            }
            if is_dmaster {
                // Our own request came round to us after the record did.
                let data = record.as_ref().map_or(&[][..], |r| &r.data);
                self.finish_migration(call.db_id, &call.key, data, store, out);
                return;
            }
        } else if is_dmaster {
            if state.first_use.is_some() {
                self.stats.calls_parked += 1;
                // Fairness: a request that travelled further has waited longer; it goes
                // before the neighbour that lost the record a moment ago and asked again.
                let at = state
                    .parked
                    .iter()
                    .position(|w| matches!(w, Work::Call { call: c, .. } if c.hopcount < call.hopcount))
                    .unwrap_or(state.parked.len());
                state.parked.insert(at, Work::Call { origin, reqid, call });
                return;
            }
            self.hand_over(origin, reqid, call, record, store, out);
            return;
        }
        // Not DMASTER, even if a migration to us is in flight: parking here could wait on a
        // node that waits on us. Pass it on instead; with in-order links the LMASTER only
        // sends it back after the record it sent us.
        self.forward(origin, reqid, call, record, out);
    }

    /// Not DMASTER: pass the request on. Only the LMASTER knows the DMASTER for certain;
    /// anyone else's copy may name a node the record has long left.
    pub(super) fn forward(
        &mut self,
        origin: Pnn,
        reqid: ReqId,
        mut call: ReqCall,
        record: Option<Record>,
        out: &mut Vec<Output>,
    ) {
        let lmaster = self.lmaster(&call.key);
        let destnode = match record {
            Some(record) if lmaster == self.config.pnn => record.header.dmaster,
            _ => lmaster,
        };
        if destnode == self.config.pnn {
            // The LMASTER without a copy of a key a node left out may hold: the requester
            // asks again, after the recovery that takes that node back or gives it up.
            log::debug!("engine: a record of db {:#x} may be held by a node left out", call.db_id);
            return;
        }
        call.hopcount = call.hopcount.saturating_add(1);
        self.stats.max_hopcount = self.stats.max_hopcount.max(call.hopcount);
        if call.hopcount as u64 >= self.config.tunables.max_hops {
            // Nobody claims the record: a handover was lost on the wire. Only a recovery
            // can find it again (its newest copy is still on the old holder); the
            // requester's resend succeeds after that.
            self.stats.calls_dropped_max_hops += 1;
            let reason = format!(
                "request {reqid} of node {origin} for a record of db {:#x} was forwarded {} times",
                call.db_id, call.hopcount
            );
            return self.report_trouble(reason, out);
        }
        self.stats.calls_forwarded += 1;
        out.push(self.packet(destnode, origin, reqid, Body::ReqCall(call)));
    }

    /// DMASTER, step 4: give the record to `origin` through the LMASTER (or directly, when
    /// this node is the LMASTER). The local copy keeps the data but names the new DMASTER.
    fn hand_over(
        &mut self,
        origin: Pnn,
        reqid: ReqId,
        call: ReqCall,
        record: Option<Record>,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        let me = self.config.pnn;
        let Record { header, data } =
            record.unwrap_or(Record { header: RecordHeader::initial(me), data: vec![] });
        let mut flags = header.flags & !FLAG_AUTOMATIC;
        if !data.is_empty() {
            flags |= FLAG_MIGRATED_WITH_DATA;
        }
        let left_behind = Record { header: RecordHeader { rsn: header.rsn, dmaster: origin, flags }, data };
        if !self.write(store, call.db_id, &call.key, &left_behind) {
            return; // still DMASTER; the requester's migration resends its request
        }
        self.stats.handovers += 1;
        self.note_migration(call.db_id, &call.key, Direction::Out, call.hopcount);
        let Record { header, data } = left_behind;
        let lmaster = self.lmaster(&call.key);
        let body = if lmaster == me {
            Body::ReplyDmaster(ReplyDmaster {
                db_id: call.db_id,
                rsn: header.rsn,
                key: call.key,
                data,
                record_flags: flags,
            })
        } else {
            Body::ReqDmaster(ReqDmaster {
                db_id: call.db_id,
                rsn: header.rsn,
                dmaster: origin,
                key: call.key,
                data,
                record_flags: flags,
            })
        };
        let destnode = if lmaster == me { origin } else { lmaster };
        out.push(self.packet(destnode, me, reqid, body));
    }

    /// LMASTER, step 5: record the new DMASTER and pass the record on.
    fn req_dmaster(
        &mut self,
        from: Pnn,
        reqid: ReqId,
        req: ReqDmaster,
        record: Option<Record>,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        let me = self.config.pnn;
        if self.lmaster(&req.key) != me {
            let why = format!(
                "REQ_DMASTER from node {from} for a key of db {:#x} this node is not LMASTER of",
                req.db_id
            );
            return self.protocol_violation(why, out);
        }
        let recorded_dmaster = match &record {
            Some(record) => {
                let seen = record.header.rsn > req.rsn
                    || (record.header.rsn == req.rsn && record.header.dmaster == req.dmaster);
                if seen {
                    self.stats.duplicates_dropped += 1;
                    return;
                }
                record.header.dmaster
            }
            None => me,
        };
        if recorded_dmaster != from {
            // Two nodes may believe they hold the record. The handover goes on (the record
            // must land somewhere); the recovery this asks for keeps one holder.
            let why = format!(
                "node {from} handed over a record of db {:#x} whose DMASTER this LMASTER knows as node {recorded_dmaster}",
                req.db_id
            );
            self.protocol_violation(why, out);
        }
        if req.dmaster == me {
            let arrived = ReplyDmaster {
                db_id: req.db_id,
                rsn: req.rsn,
                key: req.key,
                data: req.data,
                record_flags: req.record_flags,
            };
            return self.store_arrived(from, arrived, store, out);
        }
        let header = RecordHeader { rsn: req.rsn, dmaster: req.dmaster, flags: req.record_flags };
        let lmaster_copy = Record { header, data: req.data };
        if !self.write(store, req.db_id, &req.key, &lmaster_copy) {
            let why = format!("storing the LMASTER's copy of a record of db {:#x} failed", req.db_id);
            return self.ban_self(&why, out);
        }
        let reply = ReplyDmaster {
            db_id: req.db_id,
            rsn: req.rsn,
            key: req.key,
            data: lmaster_copy.data,
            record_flags: req.record_flags,
        };
        out.push(self.packet(req.dmaster, me, reqid, Body::ReplyDmaster(reply)));
    }

    /// New DMASTER, step 6: store the record with the next RSN and answer the waiters.
    fn reply_dmaster(
        &mut self,
        from: Pnn,
        reply: ReplyDmaster,
        record: Option<Record>,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        // Every handover raises the RSN, so a copy we already hold at this RSN or later
        // means this reply is a duplicate or outlived by newer history.
        if record.is_some_and(|record| record.header.rsn >= reply.rsn) {
            self.stats.duplicates_dropped += 1;
            return;
        }
        self.store_arrived(from, reply, store, out);
    }

    /// This node becomes DMASTER of a record that arrived (from the LMASTER, or as the
    /// LMASTER itself): stored with the next RSN, then its waiters are answered.
    fn store_arrived(
        &mut self,
        from: Pnn,
        arrived: ReplyDmaster,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        let me = self.config.pnn;
        let Some(header) =
            self.bumped(RecordHeader { rsn: arrived.rsn, dmaster: me, flags: arrived.record_flags })
        else {
            return self.refuse_rsn(from, arrived.rsn);
        };
        let record = Record { header, data: arrived.data };
        if self.write(store, arrived.db_id, &arrived.key, &record) {
            self.finish_migration(arrived.db_id, &arrived.key, &record.data, store, out);
        } else {
            // The record's last copy in flight is in this packet; its older copy on the old
            // holder is found by the recovery that follows this node's departure.
            self.ban_self(&format!("storing a record that arrived for db {:#x} failed", arrived.db_id), out);
        }
    }

    /// The record (holding `data`) is here: answer the clients that asked, give them the
    /// first go, and let parked remote requests run once they had it.
    pub(super) fn finish_migration(
        &mut self,
        db_id: DbId,
        key: &[u8],
        data: &[u8],
        store: &dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        self.stats.migrations_completed += 1;
        // Kept in memory because the file refused it: the clients would not find it there.
        let status = store.unwritten(db_id, key).map_or(CALL_OK, |errno| -errno);
        self.note_migration(db_id, key, Direction::In, 0);
        let deadline = self.now + self.config.tunables.first_use_timeout_ms;
        let state = self.keys.entry((db_id, key.to_vec())).or_default();
        let waiters = state.migration.take().map(|m| m.waiters).unwrap_or_default();
        let first_users: Vec<ClientId> = waiters.iter().filter(|w| w.first_use).map(|w| w.client).collect();
        if first_users.is_empty() {
            self.ready.extend(state.parked.drain(..));
        } else {
            state.first_use = Some(FirstUse { clients: first_users, deadline });
        }
        // Arrived empty (vacuuming asked for it, or a client that may never write to it:
        // smbd leaves records it only looked at empty, and tells nobody): vacuum it.
        if data.is_empty() {
            self.vacuum_arrived(db_id, key);
        }
        if status == -libc::EAGAIN {
            // Answered once the file has it; remote requests queue behind them meanwhile.
            return self.wait_for_write(db_id, key.to_vec(), waiters, out);
        }
        out.extend(waiters.into_iter().map(|w| Output::ClientReply {
            client: w.client,
            reqid: w.reqid,
            status,
            data: w.wants_data().then(|| data.to_vec()),
        }));
    }

    /// The record is here but not yet in the file: a lock libtdb takes by itself was held
    /// too long. Its clients are asked again once the node wrote it (`Input::ChainLockAvailable`).
    fn wait_for_write(&mut self, db_id: DbId, key: Vec<u8>, waiters: Vec<Waiter>, out: &mut Vec<Output>) {
        self.stats.write_waits += 1;
        let state = self.keys.entry((db_id, key.clone())).or_default();
        state.lock_wait.extend(waiters.into_iter().map(|w| {
            let Waiter { client, reqid, first_use, kind } = w;
            Work::ClientCall(ClientCall { client, reqid, db_id, key: key.clone(), first_use, kind })
        }));
        out.push(Output::WaitForWrite { db_id, key });
    }

    /// The header this node writes when it stores a record it is DMASTER of.
    /// `None` when the RSN cannot go up: a peer sent the largest one there is, which no
    /// real history reaches.
    fn bumped(&self, header: RecordHeader) -> Option<RecordHeader> {
        let rsn = header.rsn.checked_add(1)?;
        Some(RecordHeader { rsn, dmaster: self.config.pnn, flags: header.flags & !FLAG_AUTOMATIC })
    }

    /// A peer broke the protocol's invariants (DESIGN §8.2 step 5): only a recovery, which
    /// rebuilds who holds what from every member's copies, can mend what follows from it.
    fn protocol_violation(&mut self, why: String, out: &mut Vec<Output>) {
        log::error!("engine: protocol violation: {why}");
        self.stats.protocol_violations += 1;
        self.report_trouble(why, out);
    }

    fn refuse_rsn(&mut self, from: Pnn, rsn: u64) {
        log::error!("engine: node {from} sent a record with RSN {rsn}, which cannot be raised");
        self.stats.protocol_violations += 1;
    }

    pub(super) fn write(
        &mut self,
        store: &mut dyn RecordStore,
        db_id: DbId,
        key: &[u8],
        record: &Record,
    ) -> bool {
        match store.store(db_id, key, record) {
            Ok(()) => true,
            Err(err) => {
                self.stats.store_errors += 1;
                log::error!("engine: storing a record of db {db_id:#x} failed: {err}");
                false
            }
        }
    }

    pub(super) fn packet(&self, destnode: Pnn, srcnode: Pnn, reqid: ReqId, body: Body) -> Output {
        Output::Send(Packet { generation: self.config.generation, destnode, srcnode, reqid, body })
    }
}

/// A request for `key` as this node first sends it: to migrate the record (NULL_FUNC with
/// IMMEDIATE_MIGRATION) or to read it where it is (FETCH_FUNC).
pub(super) fn new_call(db_id: DbId, key: Vec<u8>, callid: u32, flags: u32) -> ReqCall {
    ReqCall { flags, db_id, callid, hopcount: 0, key, calldata: vec![] }
}
