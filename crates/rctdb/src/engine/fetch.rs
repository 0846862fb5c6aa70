//! Reads without migration (CTDB's FETCH_FUNC without IMMEDIATE_MIGRATION): smbd parses a
//! record it has no usable copy of, and the record's DMASTER answers with the data. The
//! record stays where it is, so a node reading what another node keeps writing does not
//! pull it away from the writer on every read.
//!
//! A fetch is a REQ_CALL routed like a migration request (to the DMASTER our copy names,
//! else the LMASTER, forwarded from there); the DMASTER answers REPLY_CALL with the data
//! straight to the node that asked. A lost request or answer (a broken link, a recovery
//! that voids the generation) is asked again with a new reqid, as late migrations are.

use super::migration::new_call;
use super::*;
use crate::wire::{Body, ReplyCall, ReqCall, CALL_FETCH_FUNC, CALL_FLAG_IMMEDIATE_MIGRATION};

/// A read this node sent for local clients and has no answer for yet.
#[derive(Debug)]
pub(super) struct Fetch {
    db_id: DbId,
    key: Vec<u8>,
    waiters: Vec<Waiter>,
    sent_at: Millis,
    resends: u32,
}

/// Whether a REQ_CALL asks only for the record's data.
pub(super) fn is_fetch(call: &ReqCall) -> bool {
    call.callid == CALL_FETCH_FUNC && call.flags & CALL_FLAG_IMMEDIATE_MIGRATION == 0
}

impl Engine {
    /// A local client wants the data of a record another node holds: ask that node, unless
    /// a read of it is on its way already (the client then shares its answer).
    pub(super) fn send_fetch(
        &mut self,
        waiter: Waiter,
        db_id: DbId,
        key: Vec<u8>,
        record: &Option<Record>,
        out: &mut Vec<Output>,
    ) {
        if let Some(fetch) = self.fetches.values_mut().find(|f| f.db_id == db_id && f.key == key) {
            return fetch.waiters.push(waiter);
        }
        let Some(destnode) = self.record_site(db_id, &key, record) else {
            // Held for a node that may come back: wait with the migrations, which a
            // recovery sends again.
            return self.start_migration(db_id, key, vec![waiter], record, out);
        };
        let reqid = self.next_reqid();
        self.stats.fetches_sent += 1;
        let call = new_call(db_id, key.clone(), CALL_FETCH_FUNC, 0);
        out.push(self.packet(destnode, self.config.pnn, reqid, Body::ReqCall(call)));
        let sent_at = self.now;
        self.fetches.insert(reqid, Fetch { db_id, key, waiters: vec![waiter], sent_at, resends: 0 });
    }

    /// A peer's read of a record: answered here if this node is its DMASTER, else passed on.
    pub(super) fn remote_fetch(
        &mut self,
        origin: Pnn,
        reqid: ReqId,
        call: ReqCall,
        record: Option<Record>,
        out: &mut Vec<Output>,
    ) {
        if !self.is_dmaster(&call.key, &record) {
            return self.forward(origin, reqid, call, record, out);
        }
        // An absent record at its LMASTER does not exist: empty data, nothing minted.
        let data = record.map(|r| r.data).unwrap_or_default();
        if origin == self.config.pnn {
            // Our own read came round after the record came here.
            return self.fetch_answered(reqid, data, out);
        }
        self.stats.fetches_answered += 1;
        let reply = Body::ReplyCall(ReplyCall { status: CALL_OK, data });
        out.push(self.packet(origin, self.config.pnn, reqid, reply));
    }

    /// The answer to one of our reads; a duplicate or late one finds nothing waiting.
    pub(super) fn fetch_answered(&mut self, reqid: ReqId, data: Vec<u8>, out: &mut Vec<Output>) {
        let Some(fetch) = self.fetches.remove(&reqid) else {
            self.stats.duplicates_dropped += 1;
            return;
        };
        out.extend(fetch.waiters.into_iter().map(|w| Output::ClientReply {
            client: w.client,
            reqid: w.reqid,
            status: CALL_OK,
            data: Some(data.clone()),
        }));
    }

    /// Reads unanswered for a while are asked again, waits doubling as for migrations.
    pub(super) fn resend_late_fetches(&mut self, out: &mut Vec<Output>) {
        let (now, resend_ms, max_ms) = (
            self.now,
            self.config.tunables.migration_resend_ms,
            self.config.tunables.migration_resend_max_ms,
        );
        let late: Vec<ReqId> = self
            .fetches
            .iter()
            .filter(|(_, f)| resend_due(f.sent_at, f.resends, now, resend_ms, max_ms))
            .map(|(reqid, _)| *reqid)
            .collect();
        for old in late {
            let Some(mut fetch) = self.fetches.remove(&old) else { continue };
            self.stats.calls_resent += 1;
            // Asked of the LMASTER: the copy that named the DMASTER may be what went stale.
            let destnode = self.lmaster(&fetch.key);
            if destnode == self.config.pnn {
                // We are the LMASTER: the record's work goes through our own queue again.
                for waiter in fetch.waiters {
                    self.ready.push_back(Work::ClientCall(ClientCall {
                        client: waiter.client,
                        reqid: waiter.reqid,
                        db_id: fetch.db_id,
                        key: fetch.key.clone(),
                        first_use: waiter.first_use,
                        kind: waiter.kind,
                    }));
                }
                continue;
            }
            let reqid = self.next_reqid();
            let call = new_call(fetch.db_id, fetch.key.clone(), CALL_FETCH_FUNC, 0);
            out.push(self.packet(destnode, self.config.pnn, reqid, Body::ReqCall(call)));
            fetch.sent_at = now;
            fetch.resends += 1;
            self.fetches.insert(reqid, fetch);
        }
    }

    /// A client that went away is not answered.
    pub(super) fn forget_fetches_of(&mut self, client: ClientId) {
        for fetch in self.fetches.values_mut() {
            fetch.waiters.retain(|w| w.client != client);
        }
        self.fetches.retain(|_, f| !f.waiters.is_empty());
    }
}
