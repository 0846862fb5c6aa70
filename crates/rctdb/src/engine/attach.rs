//! Attaching a database cluster-wide: the node a client attaches on opens the file, asks
//! every live peer to do the same, and answers the client once they all did (or died, or
//! did not answer within `RecoverTimeout`). A peer that missed it attaches the database when
//! the next recovery admits it, or asks for that recovery when a request for the database
//! finds it unattached.

use std::collections::BTreeSet;

use super::{ClientId, Engine, Millis, Output, RecordStore};
use crate::wire::cluster::{ClusterMsg, DbName};
use crate::wire::{DbId, Pnn, ReqId};

/// A client's attach, waiting for peers.
pub(super) struct PendingAttach {
    client: ClientId,
    reqid: ReqId,
    db_id: DbId,
    waiting: BTreeSet<Pnn>,
    deadline: Millis,
}

impl Engine {
    pub(super) fn attach_for_client(
        &mut self,
        client: ClientId,
        reqid: ReqId,
        db: DbName,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        let db_id = db.db_id;
        if let Err(err) = self.attach_here(&db, store) {
            return out.push(Output::AttachDone { client, reqid, db_id, result: Err(err) });
        }
        let me = self.config.pnn;
        let peers: BTreeSet<Pnn> =
            (0..self.config.nodes as Pnn).filter(|&p| p != me && self.is_alive(p)).collect();
        let id = self.next_attach_id;
        self.next_attach_id = self.next_attach_id.wrapping_add(1);
        for &peer in &peers {
            self.send_cluster(peer, ClusterMsg::Attach { id, db: db.clone() }, out);
        }
        let deadline = self.now + self.config.tunables.recover_timeout_ms;
        self.attaches.insert(id, PendingAttach { client, reqid, db_id, waiting: peers, deadline });
        self.finish_attach_if_answered(id, out);
    }

    fn attach_here(&mut self, db: &DbName, store: &mut dyn RecordStore) -> Result<(), String> {
        store.attach(db.db_id, &db.name).map_err(|e| e.to_string())?;
        self.dbs.insert(db.db_id, db.name.clone());
        Ok(())
    }

    /// A peer's `Attach`.
    pub(super) fn attach_asked(
        &mut self,
        from: Pnn,
        id: u32,
        db: DbName,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        let error = self.attach_here(&db, store).err().unwrap_or_default();
        if !error.is_empty() {
            log::error!("node {}: attaching {} for node {from}: {error}", self.config.pnn, db.name);
        }
        self.send_cluster(from, ClusterMsg::Attached { id, error }, out);
    }

    /// A peer's `Attached`, or (with `None`) the peer died: it is waited for no more.
    pub(super) fn attach_answered(
        &mut self,
        from: Pnn,
        answer: Option<(u32, String)>,
        out: &mut Vec<Output>,
    ) {
        let ids: Vec<u32> = match &answer {
            Some((id, _)) => vec![*id],
            None => self.attaches.keys().copied().collect(),
        };
        if let Some((_, error)) = answer.filter(|(_, error)| !error.is_empty()) {
            log::warn!("node {from} could not attach a database: {error}");
        }
        for id in ids {
            if let Some(pending) = self.attaches.get_mut(&id) {
                pending.waiting.remove(&from);
            }
            self.finish_attach_if_answered(id, out);
        }
    }

    /// Attaches whose peers did not answer in time are answered: those peers attach the
    /// database when a recovery admits them.
    pub(super) fn expire_attaches(&mut self, out: &mut Vec<Output>) {
        let now = self.now;
        let late: Vec<u32> =
            self.attaches.iter().filter(|(_, p)| p.deadline <= now).map(|(id, _)| *id).collect();
        for id in late {
            if let Some(pending) = self.attaches.get_mut(&id) {
                log::warn!("attach of db {:#x}: no answer from nodes {:?}", pending.db_id, pending.waiting);
                pending.waiting.clear();
            }
            self.finish_attach_if_answered(id, out);
        }
    }

    fn finish_attach_if_answered(&mut self, id: u32, out: &mut Vec<Output>) {
        if self.attaches.get(&id).is_some_and(|p| p.waiting.is_empty()) {
            if let Some(PendingAttach { client, reqid, db_id, .. }) = self.attaches.remove(&id) {
                out.push(Output::AttachDone { client, reqid, db_id, result: Ok(()) });
            }
        }
    }
}
