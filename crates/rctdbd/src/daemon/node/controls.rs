//! The controls a node serves besides migration steps: status, tunables, fault controls,
//! and the start of cluster-wide traverses (`traverse`).

use std::time::Instant;

use super::traverse::TraverseAnswer;
use super::Node;
use crate::daemon::tdb_store::CLUSTERED_TDB_FLAGS;
use crate::engine::{ClientId, Input};
use crate::status::{DbStatus, NodeStatus, PeerState, PeerStatus};
use crate::tunables::{self, Tunables};
use crate::wire::cluster::DbName;
use crate::wire::control::{self, opcode, AttachReply};
use crate::wire::{Body, DbId, Packet, Pnn, ReplyControl, ReqControl, ReqId};

impl Node {
    pub(super) fn peer_control(&mut self, from: Pnn, reqid: ReqId, request: ReqControl) {
        match request.opcode {
            opcode::CLIENT_SRVIDS => self.ctdb_peer_srvids(from, &request.data),
            opcode::PULL_DB => self.serve_chunk(from, reqid, &request.data),
            other => {
                let reply = self.ctdb_query(other, &request.data);
                let reply = reply.unwrap_or_else(|| error_reply(&format!("unknown control {other:#x}")));
                self.reply_to_peer(from, reqid, reply)
            }
        }
    }

    pub(super) fn peer_replied(&mut self, from: Pnn, reqid: ReqId, reply: ReplyControl) {
        if !self.ctdb_forward_replied(from, reqid, &reply) {
            self.traverse_chunk_replied(from, reqid, &reply);
        }
    }

    pub(super) fn expire_controls(&mut self, now: Instant) {
        self.ctdb_expire_forwards(now);
    }

    pub(super) fn client_control(&mut self, client: ClientId, reqid: ReqId, request: ReqControl) {
        match request.opcode {
            opcode::MIGRATION_DONE => {
                if let Ok((db_id, key)) = control::decode_db_key(&request.data) {
                    self.engine_input(Input::ClientDone { client, db_id, key: key.to_vec() });
                }
            }
            // No reply: a key longer than any call could use is dropped, not queued.
            opcode::DELETED => {
                if let Ok((db_id, key)) = control::decode_db_key(&request.data) {
                    if key.len() <= crate::wire::MAX_KEY_LEN {
                        self.engine_input(Input::Deleted { db_id, key: key.to_vec() });
                    }
                }
            }
            opcode::STATUS => {
                let reply =
                    serde_json::to_vec(&self.status()).map_or_else(|e| error_reply(&e.to_string()), ok_reply);
                self.reply_to_client(client, reqid, Body::ReplyControl(reply));
            }
            opcode::STATISTICS => {
                let statistics = self.engine.statistics();
                if request.data.as_slice() == control::STATISTICS_RESET {
                    log::info!("node {}: statistics reset", self.pnn);
                    self.engine.reset_statistics();
                }
                let reply =
                    serde_json::to_vec(&statistics).map_or_else(|e| error_reply(&e.to_string()), ok_reply);
                self.reply_to_client(client, reqid, Body::ReplyControl(reply));
            }
            // Attaching cluster-wide is the engine's (`engine::attach`): `Output::AttachDone`
            // answers the client.
            opcode::DB_ATTACH => match self.client_db_name(&request.data) {
                Ok(db) => self.engine_input(Input::Attach { client, reqid, db }),
                Err(err) => self.reply_to_client(client, reqid, Body::ReplyControl(error_reply(&err))),
            },
            opcode::TRAVERSE_ALL => {
                let db_id = control::decode_db_id(&request.data).map_err(|e| e.to_string());
                match db_id.and_then(|db_id| self.traverse_refusal(db_id, client).map(|()| db_id)) {
                    Ok(db_id) => self.start_traverse(db_id, TraverseAnswer::Reply { client, reqid }),
                    Err(err) => self.reply_to_client(client, reqid, Body::ReplyControl(error_reply(&err))),
                }
            }
            tunables::opcode::GET_TUNABLE => {
                let reply = match tunables::payload::decode_get_request(&request.data) {
                    Ok(name) => match self.engine.tunables().get(&name) {
                        Some(value) => ok_reply(tunables::payload::encode_value(
                            u32::try_from(value).unwrap_or(u32::MAX),
                        )),
                        None => error_reply(&format!("no tunable named {name:?} (see rctdb listvars)")),
                    },
                    Err(err) => error_reply(&err),
                };
                self.reply_to_client(client, reqid, Body::ReplyControl(reply));
            }
            tunables::opcode::SET_TUNABLE => {
                let reply = match tunables::payload::decode_set_request(&request.data) {
                    Ok((name, value)) => match self.engine.tunables_mut().set(&name, value as u64) {
                        Ok(()) => {
                            log::info!("tunable {name} set to {value}");
                            ok_reply(vec![])
                        }
                        Err(err) => error_reply(&err),
                    },
                    Err(err) => error_reply(&err),
                };
                self.reply_to_client(client, reqid, Body::ReplyControl(reply));
            }
            tunables::opcode::LIST_TUNABLES => {
                let reply = ok_reply(tunables::payload::encode_list_reply(Tunables::names()));
                self.reply_to_client(client, reqid, Body::ReplyControl(reply));
            }
            tunables::opcode::QUIET | tunables::opcode::UNQUIET => {
                let quiet = request.opcode == tunables::opcode::QUIET;
                log::warn!(
                    "node {}: told to go {}",
                    self.pnn,
                    if quiet { "quiet" } else { "back to normal" }
                );
                self.engine_input(Input::Quiet(quiet));
                self.quiet = quiet;
                self.reply_to_client(client, reqid, Body::ReplyControl(ok_reply(vec![])));
            }
            tunables::opcode::STOP_NODE => {
                log::warn!("node {}: told to leave the cluster", self.pnn);
                self.engine_input(Input::Leave);
                self.reply_to_client(client, reqid, Body::ReplyControl(ok_reply(vec![])));
                self.stopping = true;
            }
            // Everything else is ctdbd's client protocol (smbd, Samba's `ctdb` tool).
            _ => self.ctdb_client_control(client, reqid, crate::wire::CURRENT_NODE, request),
        }
    }

    pub(super) fn take_control_reqid(&mut self) -> ReqId {
        let reqid = self.next_reqid;
        self.next_reqid = self.next_reqid.wrapping_add(1).max(1);
        reqid
    }

    pub(super) fn send_control(&mut self, peer: Pnn, reqid: ReqId, opcode: u32, data: Vec<u8>) {
        let body = Body::ReqControl(ReqControl { opcode, srvid: 0, client_id: 0, flags: 0, data });
        let generation = self.engine.generation();
        self.send_to_peer(Packet { generation, destnode: peer, srcnode: self.pnn, reqid, body });
    }

    /// What a client that attached `db_id` needs to open this node's file of it.
    pub(super) fn attach_reply(&self, db_id: DbId) -> Result<AttachReply, String> {
        let (_, db) = self.store.dbs().find(|(id, _)| **id == db_id).ok_or("database not attached")?;
        let path = db.tdb.path().to_str().ok_or("database path is not UTF-8")?.to_owned();
        Ok(AttachReply { db_id, pnn: self.pnn, tdb_flags: CLUSTERED_TDB_FLAGS as u32, path })
    }

    /// What `rctdb status` shows.
    fn status(&self) -> NodeStatus {
        let cluster = self.engine.cluster_status();
        let links = self.transport.link_states();
        let nodes = self
            .nodes
            .iter()
            .enumerate()
            .map(|(pnn, addr)| {
                let pnn = pnn as Pnn;
                let link = links.iter().find(|l| l.pnn == pnn && l.up);
                let queue = links.iter().find(|l| l.pnn == pnn);
                PeerStatus {
                    pnn,
                    address: addr.to_string(),
                    state: match pnn == self.pnn {
                        true => PeerState::Me,
                        false if cluster.alive.contains(&pnn) => PeerState::Alive,
                        false => PeerState::Dead,
                    },
                    link_up: link.is_some(),
                    packets_sent: link.map_or(0, |l| l.packets_sent),
                    packets_received: link.map_or(0, |l| l.packets_received),
                    packets_queued: queue.map_or(0, |l| l.packets_queued),
                    packets_resent: queue.map_or(0, |l| l.packets_resent),
                    packets_dropped: queue.map_or(0, |l| l.packets_dropped),
                    refused: links.iter().find(|l| l.pnn == pnn && !l.up).and_then(|l| l.auth_error.clone()),
                }
            })
            .collect();
        let mut dbs: Vec<DbStatus> =
            self.store.dbs().map(|(id, db)| DbStatus { name: db.name.clone(), db_id: *id }).collect();
        dbs.sort_by(|a, b| (&a.name, a.db_id).cmp(&(&b.name, b.db_id)));
        NodeStatus {
            pnn: self.pnn,
            state: cluster.state.to_owned(),
            leader: cluster.leader,
            term: cluster.term,
            generation: self.engine.generation(),
            vnn_map: self.engine.vnn_map().to_vec(),
            nodes,
            dbs,
            vacuum_backlog: self.engine.vacuum_backlog() as u64,
            repacks: self.repacks.done,
            records_unwritten: self.store.unwritten_count(),
            stats: self.engine.stats().clone(),
        }
    }
}

/// Database `name` of an attach request (a NUL may end it, as CTDB clients send it).
impl Node {
    /// The database a client asks to attach, if this node lets it (`--allow-db`,
    /// `--max-databases`): checked before any file is created.
    pub(super) fn client_db_name(&self, data: &[u8]) -> Result<DbName, String> {
        let db = db_name(data)?;
        let attached = self.store.dbs().count();
        let is_attached = self.store.db(db.db_id).is_ok();
        match self.attach_policy.refusal(&db.name, attached, is_attached) {
            Some(why) => {
                log::warn!("refused a client's attach: {why}");
                Err(why)
            }
            None => Ok(db),
        }
    }
}

pub(super) fn db_name(data: &[u8]) -> Result<DbName, String> {
    let name = data.strip_suffix(b"\0").unwrap_or(data);
    let name = std::str::from_utf8(name).map_err(|_| "database name is not UTF-8".to_string())?;
    Ok(DbName { db_id: control::db_id_of(name), name: name.to_owned() })
}

pub(super) fn ok_reply(data: Vec<u8>) -> ReplyControl {
    ReplyControl { status: 0, data, errmsg: vec![] }
}

pub(super) fn error_reply(message: &str) -> ReplyControl {
    ReplyControl { status: -1, data: vec![], errmsg: message.as_bytes().to_vec() }
}
