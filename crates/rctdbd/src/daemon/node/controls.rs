//! The controls a node serves besides migration steps: status, tunables, fault controls,
//! and collecting records for a cluster-wide traverse (this node's part waits for
//! client-held chain locks on a lock waiter, never on the engine's thread).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::Node;
use crate::daemon::lock_wait::LockTarget;
use crate::daemon::tdb_store::CLUSTERED_TDB_FLAGS;
use crate::engine::{ClientId, Input};
use crate::status::{DbStatus, NodeStatus, PeerState, PeerStatus};
use crate::tunables::{self, Tunables};
use crate::wire::cluster::DbName;
use crate::wire::control::{self, opcode, AttachReply, RecordCopy};
use crate::wire::ctdb::TraverseStart;
use crate::wire::{Body, DbId, Packet, Pnn, ReplyControl, ReqControl, ReqId};

/// How long a traverse waits for peers before answering with what it has.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// A cluster-wide traverse this node asked its peers for on behalf of a client, waiting for
/// their copies.
pub(super) struct PendingControl {
    answer: TraverseAnswer,
    waiting_for: HashSet<Pnn>,
    deadline: Instant,
    copies: Vec<RecordCopy>,
}

/// Who gets a traverse's records, and how: librctdb's TRAVERSE_ALL wants them in its
/// reply, a CTDB client as messages to its srvid.
enum TraverseAnswer {
    Reply { client: ClientId, client_reqid: ReqId },
    Ctdb { client: ClientId, start: TraverseStart },
}

/// Who asked for this node's copies of a database's records.
pub(super) enum CopiesFor {
    Peer { node: Pnn, reqid: ReqId },
    Traverse { reqid: ReqId },
}

impl Node {
    /// This node's copies of a database's records, now or once no client holds a chain.
    fn want_copies(&mut self, db_id: DbId, wanted: CopiesFor) {
        match self.store.copies(db_id) {
            Ok(Some(copies)) => self.deliver_copies(wanted, Ok(copies)),
            Ok(None) => {
                let waiting = self.copies_wanted.entry(db_id).or_default();
                waiting.push(wanted);
                if waiting.len() > 1 {
                    return; // a waiter is on it already
                }
                match self.store.all_chains_site(db_id) {
                    Some((file, start, len)) => {
                        self.lock_waiters.wait_for(file, start, len, LockTarget::AllChains { db_id })
                    }
                    None => log::error!("db {db_id:#x}: no chain locks to wait for; its traverse is stuck"),
                }
            }
            Err(err) => self.deliver_copies(wanted, Err(err.to_string())),
        }
    }

    pub(super) fn deliver_copies(&mut self, wanted: CopiesFor, copies: Result<Vec<RecordCopy>, String>) {
        let reply = match copies {
            Ok(copies) => ok_reply(control::encode_records(&copies)),
            Err(err) => error_reply(&err),
        };
        match wanted {
            CopiesFor::Peer { node, reqid } => self.reply_to_peer(node, reqid, reply),
            // Our own copies join the traverse like a peer's reply.
            CopiesFor::Traverse { reqid } => self.peer_replied(self.pnn, reqid, reply),
        }
    }

    pub(super) fn peer_control(&mut self, from: Pnn, reqid: ReqId, request: ReqControl) {
        match request.opcode {
            opcode::CLIENT_SRVIDS => self.ctdb_peer_srvids(from, &request.data),
            opcode::PULL_DB => match self.attached_db_id(&request.data) {
                Ok(db_id) => self.want_copies(db_id, CopiesFor::Peer { node: from, reqid }),
                Err(err) => self.reply_to_peer(from, reqid, error_reply(&err)),
            },
            other => {
                let reply = self.ctdb_query(other, &request.data);
                let reply = reply.unwrap_or_else(|| error_reply(&format!("unknown control {other:#x}")));
                self.reply_to_peer(from, reqid, reply)
            }
        }
    }

    /// The db id a control names, if that database is attached here.
    fn attached_db_id(&self, data: &[u8]) -> Result<DbId, String> {
        let db_id = control::decode_db_id(data).map_err(|e| e.to_string())?;
        self.store.db(db_id).map(|_| db_id).map_err(|e| e.to_string())
    }

    pub(super) fn peer_replied(&mut self, from: Pnn, reqid: ReqId, reply: ReplyControl) {
        if self.ctdb_forward_replied(from, reqid, &reply) {
            return;
        }
        let Some(pending) = self.pending.get_mut(&reqid) else { return };
        if !pending.waiting_for.remove(&from) {
            return;
        }
        if reply.status != 0 {
            log::warn!("node {from} failed a control: {}", String::from_utf8_lossy(&reply.errmsg));
        } else {
            match control::decode_records(&reply.data) {
                Ok(records) => pending.copies.extend(records),
                Err(err) => log::warn!("node {from}: {err}"),
            }
        }
        if pending.waiting_for.is_empty() {
            self.finish_control(reqid);
        }
    }

    pub(super) fn expire_controls(&mut self, now: Instant) {
        self.ctdb_expire_forwards(now);
        let expired: Vec<ReqId> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(reqid, _)| *reqid).collect();
        for reqid in expired {
            log::warn!("control {reqid}: no reply from nodes {:?}", self.pending[&reqid].waiting_for);
            self.finish_control(reqid);
        }
    }

    fn finish_control(&mut self, reqid: ReqId) {
        let Some(pending) = self.pending.remove(&reqid) else { return };
        let newest = control::merge_newest(pending.copies);
        match pending.answer {
            TraverseAnswer::Reply { client, client_reqid } => {
                let records: Vec<RecordCopy> =
                    newest.into_iter().filter(|copy| !copy.data.is_empty()).collect();
                let data = control::encode_records(&records);
                self.reply_to_client(client, client_reqid, Body::ReplyControl(ok_reply(data)));
            }
            TraverseAnswer::Ctdb { client, start } => self.ctdb_traverse_done(client, start, newest),
        }
    }

    /// A CTDB client's traverse (TRAVERSE_START), already answered: its records follow as
    /// messages once every node sent its copies.
    pub(super) fn traverse_for_ctdb(&mut self, client: ClientId, start: TraverseStart) {
        let data = start.db_id.to_le_bytes().to_vec();
        let traverse = self.ask_nodes(TraverseAnswer::Ctdb { client, start }, opcode::PULL_DB, data);
        self.want_copies(start.db_id, CopiesFor::Traverse { reqid: traverse });
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
            opcode::TRAVERSE_ALL => match self.attached_db_id(&request.data) {
                Ok(db_id) => {
                    let data = db_id.to_le_bytes().to_vec();
                    let answer = TraverseAnswer::Reply { client, client_reqid: reqid };
                    let traverse = self.ask_nodes(answer, opcode::PULL_DB, data);
                    self.want_copies(db_id, CopiesFor::Traverse { reqid: traverse });
                }
                Err(err) => self.reply_to_client(client, reqid, Body::ReplyControl(error_reply(&err))),
            },
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

    /// Sends a control to every live peer whose link is up (and counts this node in, for
    /// the caller to answer itself) and answers the client once all replied, or the control
    /// timed out. Returns the control's reqid.
    fn ask_nodes(&mut self, answer: TraverseAnswer, opcode: u32, data: Vec<u8>) -> ReqId {
        let reqid = self.take_control_reqid();
        // Peers membership believes alive and our link reaches: a dead or stopped peer
        // would only make the client wait for the timeout.
        let alive = self.engine.cluster_status().alive;
        let mut nodes: HashSet<Pnn> = self
            .transport
            .link_states()
            .iter()
            .filter(|link| link.up && alive.contains(&link.pnn))
            .map(|link| link.pnn)
            .collect();
        for &peer in &nodes {
            self.send_control(peer, reqid, opcode, data.clone());
        }
        nodes.insert(self.pnn);
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        let pending = PendingControl { answer, waiting_for: nodes, deadline, copies: vec![] };
        self.pending.insert(reqid, pending);
        reqid
    }

    pub(super) fn take_control_reqid(&mut self) -> ReqId {
        let reqid = self.next_reqid;
        self.next_reqid = self.next_reqid.wrapping_add(1).max(1);
        reqid
    }

    fn send_control(&mut self, peer: Pnn, reqid: ReqId, opcode: u32, data: Vec<u8>) {
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
