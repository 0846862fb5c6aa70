//! ctdbd's client protocol on the node's socket, so that stock smbd with `clustering = yes`
//! (and Samba's `ctdb` tool) run on rctdbd unchanged (DESIGN §6). smbd reads and writes the
//! node's tdb files itself and asks for records with REQ_CALL, which the engine serves like
//! librctdb's calls; this module adds what smbd needs besides: srvids registered per
//! connection, messages routed to them on any node, the liveness of processes on other
//! nodes, and the controls that describe the cluster and its databases.
//!
//! Every request gets an answer, an error at worst: smbd waits for ever by default.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::controls::{error_reply, ok_reply};
use super::traverse::TraverseAnswer;
use super::Node;
use crate::engine::{ClientId, ClusterEvent, Input};
use crate::wire::control::SrvidUpdate;
use crate::wire::ctdb::{self, opcode, NodeEntry, TraverseStart};
use crate::wire::{Body, Packet, Pnn, ReplyControl, ReqControl, ReqId, ReqMessage, CURRENT_NODE};

/// How long a control sent on to another node may take before the client gets an error.
/// A link that breaks meanwhile does not end the wait: the transport sends the control
/// again after the reconnect, and only membership declaring the node dead fails it sooner.
/// (A protocol deadline kept on the daemon side for now.)
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// CTDB's srvid for "the cluster was reconfigured" (a recovery completed); no data.
const SRVID_RECONFIGURE: u64 = 0xF200_0000_0000_0000;

/// What the node knows of its CTDB clients, indexed both ways so that registering,
/// leaving and the questions smbd asks per open (CHECK_PID_SRVID, PROCESS_EXISTS) cost the
/// same with thousands of smbd connected as with one.
#[derive(Default)]
pub(super) struct CtdbClients {
    /// Each connection's process, from SO_PEERCRED, and each process's connections.
    pids: HashMap<ClientId, i32>,
    connections_of: HashMap<i32, Vec<ClientId>>,
    /// srvids each connection registered, and who registered each srvid.
    registered: HashMap<ClientId, HashSet<u64>>,
    listeners: HashMap<u64, HashSet<ClientId>>,
    /// Controls a client addressed to another node, waiting for its answer.
    forwarded: HashMap<ReqId, Forwarded>,
    /// Attach requests in CTDB's form: the answer is the db id alone.
    attaches: HashSet<(ClientId, ReqId)>,
    /// The (pid, srvid) pairs each peer's clients hold, as the peer told us
    /// (CLIENT_SRVIDS): a process a peer lists is alive, and CHECK_PID_SRVID is answered
    /// here. A process not listed is asked about at its node, which alone knows for sure.
    remote: HashMap<Pnn, HashSet<(i32, u64)>>,
}

struct Forwarded {
    client: ClientId,
    client_reqid: ReqId,
    peer: Pnn,
    deadline: Instant,
}

impl CtdbClients {
    pub(super) fn connected(&mut self, client: ClientId, pid: Option<i32>) {
        if let Some(pid) = pid {
            self.pids.insert(client, pid);
            self.connections_of.entry(pid).or_default().push(client);
        }
    }

    /// Forgets a connection; returns the (pid, srvid) pairs no connection holds any more.
    pub(super) fn gone(&mut self, client: ClientId) -> Vec<(i32, u64)> {
        let pid = self.pids.remove(&client);
        if let Some(pid) = pid {
            if let Some(clients) = self.connections_of.get_mut(&pid) {
                clients.retain(|c| *c != client);
                if clients.is_empty() {
                    self.connections_of.remove(&pid);
                }
            }
        }
        let srvids = self.registered.remove(&client).unwrap_or_default();
        for &srvid in &srvids {
            self.unlisten(client, srvid);
        }
        if !self.forwarded.is_empty() {
            self.forwarded.retain(|_, f| f.client != client);
        }
        if !self.attaches.is_empty() {
            self.attaches.retain(|(c, _)| *c != client);
        }
        let Some(pid) = pid else { return vec![] };
        srvids
            .into_iter()
            .filter(|&srvid| !self.pid_has_srvid(pid, srvid))
            .map(|srvid| (pid, srvid))
            .collect()
    }

    /// Returns the (pid, srvid) pair when no other connection of the process held it yet.
    fn register(&mut self, client: ClientId, srvid: u64) -> Option<(i32, u64)> {
        let pid = self.pids.get(&client).copied();
        let held_before = pid.is_some_and(|pid| self.pid_has_srvid(pid, srvid));
        if self.registered.entry(client).or_default().insert(srvid) {
            self.listeners.entry(srvid).or_default().insert(client);
        }
        pid.filter(|_| !held_before).map(|pid| (pid, srvid))
    }

    /// `None` when the connection had not registered `srvid`; else the pair if no other
    /// connection of the process holds it.
    fn deregister(&mut self, client: ClientId, srvid: u64) -> Option<Option<(i32, u64)>> {
        let known = self.registered.get_mut(&client).is_some_and(|set| set.remove(&srvid));
        if !known {
            return None;
        }
        self.unlisten(client, srvid);
        let pid = self.pids.get(&client).copied();
        Some(pid.filter(|&pid| !self.pid_has_srvid(pid, srvid)).map(|pid| (pid, srvid)))
    }

    /// Every (pid, srvid) pair this node's clients hold.
    fn local_pairs(&self) -> Vec<(i32, u64)> {
        let mut pairs: Vec<(i32, u64)> = self
            .registered
            .iter()
            .filter_map(|(client, srvids)| self.pids.get(client).map(|&pid| (pid, srvids)))
            .flat_map(|(pid, srvids)| srvids.iter().map(move |&srvid| (pid, srvid)))
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        pairs
    }

    fn unlisten(&mut self, client: ClientId, srvid: u64) {
        if let Some(clients) = self.listeners.get_mut(&srvid) {
            clients.remove(&client);
            if clients.is_empty() {
                self.listeners.remove(&srvid);
            }
        }
    }

    /// Whether the attach `(client, reqid)` was CTDB's DB_ATTACH (and forget it).
    pub(super) fn take_attach(&mut self, client: ClientId, reqid: ReqId) -> bool {
        self.attaches.remove(&(client, reqid))
    }

    /// CTDB's PROCESS_EXISTS: the pid is a client of this node and still runs.
    fn process_exists(&self, pid: i32) -> bool {
        self.connections_of.contains_key(&pid)
            && !matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                Err(nix::errno::Errno::ESRCH)
            )
    }

    /// CTDB's CHECK_PID_SRVID: a connection of process `pid` registered `srvid`.
    fn pid_has_srvid(&self, pid: i32, srvid: u64) -> bool {
        let Some(clients) = self.connections_of.get(&pid) else { return false };
        clients.iter().any(|client| self.registered.get(client).is_some_and(|set| set.contains(&srvid)))
    }
}

fn status_reply(status: i32) -> ReplyControl {
    ReplyControl { status, data: vec![], errmsg: vec![] }
}

impl Node {
    /// A CTDB control from a local client: served here, or sent on to the node it names.
    pub(super) fn ctdb_client_control(
        &mut self,
        client: ClientId,
        reqid: ReqId,
        destnode: Pnn,
        request: ReqControl,
    ) {
        let no_reply = request.flags & crate::wire::control::FLAG_NOREPLY != 0;
        if destnode != CURRENT_NODE && destnode != self.pnn {
            if request.opcode == opcode::CHECK_PID_SRVID && self.peer_lists(destnode, &request.data) {
                // The process's node listed it, over the link that would carry its
                // departure, and that node is alive: no round trip.
                return self.reply_to_client(client, reqid, Body::ReplyControl(status_reply(0)));
            }
            return self.forward_control(client, reqid, destnode, request);
        }
        // The tool learns the leader from a message once its handler is registered, which
        // is when it reads the reply: the message must follow the reply.
        let wants_leader = request.opcode == opcode::REGISTER_SRVID && request.srvid == ctdb::SRVID_LEADER;
        if let Some(reply) = self.ctdb_local_control(client, reqid, request) {
            if !no_reply {
                self.reply_to_client(client, reqid, Body::ReplyControl(reply));
            }
        }
        if wants_leader {
            self.ctdb_tell_leader(client);
        }
    }

    /// Serves a control about this node; `None` when the answer comes later.
    fn ctdb_local_control(
        &mut self,
        client: ClientId,
        reqid: ReqId,
        request: ReqControl,
    ) -> Option<ReplyControl> {
        let data = &request.data;
        let reply = match request.opcode {
            opcode::REGISTER_SRVID => {
                // smbd's forked children register their own srvid but attach nothing (the
                // parent did): they serve opens, so a stall must end them too.
                self.fence_client(client);
                if let Some(pair) = self.ctdb.register(client, request.srvid) {
                    self.tell_peers_srvids(SrvidUpdate::Added(vec![pair]));
                }
                ok_reply(vec![])
            }
            opcode::DEREGISTER_SRVID => match self.ctdb.deregister(client, request.srvid) {
                Some(released) => {
                    if let Some(pair) = released {
                        self.tell_peers_srvids(SrvidUpdate::Removed(vec![pair]));
                    }
                    ok_reply(vec![])
                }
                None => status_reply(-1),
            },
            opcode::DB_ATTACH => match self.client_db_name(data) {
                Ok(db) => {
                    self.ctdb.attaches.insert((client, reqid));
                    self.engine_input(Input::Attach { client, reqid, db });
                    return None;
                }
                Err(err) => error_reply(&err),
            },
            opcode::DB_ATTACH_PERSISTENT | opcode::DB_ATTACH_REPLICATED => {
                let name = String::from_utf8_lossy(data.strip_suffix(b"\0").unwrap_or(data)).into_owned();
                log::warn!(
                    "a client asked for persistent database {name:?}: rctdb clusters volatile \
                     databases only; keep it local (smb.conf: ctdb:{name} = no)"
                );
                error_reply(&format!(
                    "persistent database {name:?} is not clustered by rctdb; set `ctdb:{name} = no`"
                ))
            }
            opcode::DB_OPEN_FLAGS => match self
                .ctdb_db(data)
                .and_then(|(id, ..)| self.store.open_flags(id).map_err(|e| e.to_string()))
            {
                Ok(flags) => ok_reply(flags.to_le_bytes().to_vec()),
                Err(err) => error_reply(&err),
            },
            opcode::ENABLE_SEQNUM => match self
                .ctdb_db(data)
                .and_then(|(id, ..)| self.store.enable_seqnum(id).map_err(|e| e.to_string()))
            {
                Ok(()) => ok_reply(vec![]),
                Err(err) => error_reply(&err),
            },
            // No read-only delegations yet: smbd then asks for the record itself.
            opcode::SET_DB_READONLY => match self.ctdb_db(data) {
                Ok(_) => ok_reply(vec![]),
                Err(err) => error_reply(&err),
            },
            // Notifications of our own health are not sent; registering them is harmless.
            opcode::REGISTER_NOTIFY | opcode::DEREGISTER_NOTIFY => ok_reply(vec![]),
            // rctdb moves no public addresses, so there is nothing to tickle on failover.
            opcode::TCP_CLIENT => ok_reply(vec![]),
            opcode::GET_PUBLIC_IPS => ok_reply(ctdb::encode_empty_list()),
            // smbd deleted a record (left it empty): vacuuming removes it from every node.
            opcode::SCHEDULE_FOR_DELETION => match ctdb::decode_schedule_for_deletion(data) {
                Ok((_, key)) if key.len() > crate::wire::MAX_KEY_LEN => error_reply(&format!(
                    "a key of {} bytes: keys hold at most {}",
                    key.len(),
                    crate::wire::MAX_KEY_LEN
                )),
                Ok((db_id, key)) => {
                    self.engine_input(Input::Deleted { db_id, key });
                    ok_reply(vec![])
                }
                Err(err) => error_reply(&err.to_string()),
            },
            opcode::TRAVERSE_START | opcode::TRAVERSE_START_EXT => {
                match TraverseStart::decode(data, request.opcode == opcode::TRAVERSE_START_EXT) {
                    Ok(start) => return self.ctdb_traverse(client, reqid, start),
                    Err(err) => error_reply(&err.to_string()),
                }
            }
            other => match self.ctdb_query(other, data) {
                Some(reply) => reply,
                None => {
                    log::warn!("client {client}: CTDB control {other} is not served by rctdbd");
                    error_reply(&format!("control {other} is not served by rctdbd"))
                }
            },
        };
        Some(reply)
    }

    /// The controls any node answers the same for a local client or a peer that forwards
    /// one: facts about this node, its processes and its databases.
    pub(super) fn ctdb_query(&self, opcode: u32, data: &[u8]) -> Option<ReplyControl> {
        let reply = match opcode {
            opcode::GET_PNN => status_reply(self.pnn as i32),
            opcode::GET_PID => status_reply(std::process::id() as i32),
            opcode::PING => status_reply(self.clients.len() as i32),
            opcode::PROCESS_EXISTS => match ctdb::decode_pid(data) {
                Ok(pid) => status_reply(if self.ctdb.process_exists(pid) { 0 } else { -1 }),
                Err(err) => error_reply(&err.to_string()),
            },
            opcode::CHECK_PID_SRVID => match ctdb::decode_pid_srvid(data) {
                Ok((pid, srvid)) => status_reply(if self.ctdb.pid_has_srvid(pid, srvid) { 0 } else { -1 }),
                Err(err) => error_reply(&err.to_string()),
            },
            opcode::GET_NODEMAP => ok_reply(ctdb::encode_node_map(&self.node_entries(), self.port)),
            opcode::GETVNNMAP => {
                ok_reply(ctdb::encode_vnn_map(self.engine.generation(), self.engine.vnn_map()))
            }
            opcode::GET_RECMODE => {
                let active = self.engine.cluster_status().state == "active";
                status_reply(if active { ctdb::RECOVERY_NORMAL } else { ctdb::RECOVERY_ACTIVE })
            }
            opcode::GET_RECMASTER => match self.engine.cluster_status().leader {
                Some(leader) => status_reply(leader as i32),
                None => error_reply("no leader yet"),
            },
            opcode::GET_CAPABILITIES => ok_reply(ctdb::CAPABILITIES.to_le_bytes().to_vec()),
            opcode::GETDBPATH => match self.ctdb_db(data) {
                Ok((_, path, _)) => ok_reply(ctdb::c_string(&path)),
                Err(err) => error_reply(&err),
            },
            opcode::GET_DBNAME => match self.ctdb_db(data) {
                Ok((_, _, name)) => ok_reply(ctdb::c_string(&name)),
                Err(err) => error_reply(&err),
            },
            opcode::GET_RUNSTATE => {
                // RUNNING from the first recovery that admitted this node on, as ctdbd.
                let running = self.engine.cluster_status().state == "active" || self.ctdb_has_served();
                let state = if running { ctdb::RUNSTATE_RUNNING } else { ctdb::RUNSTATE_FIRST_RECOVERY };
                ok_reply(state.to_le_bytes().to_vec())
            }
            opcode::GET_DBMAP => {
                let mut ids: Vec<_> = self.store.dbs().map(|(id, _)| *id).collect();
                ids.sort_unstable();
                ok_reply(ctdb::encode_db_map(&ids))
            }
            // What only Samba's `ctdb` tool asks for.
            other => return self.ctdb_tool_query(other, data),
        };
        Some(reply)
    }

    /// Every node of the nodes file with CTDB's flags: dead peers are DISCONNECTED, a
    /// banned node BANNED.
    fn node_entries(&self) -> Vec<NodeEntry> {
        let status = self.engine.cluster_status();
        (0..self.nodes.len())
            .map(|index| {
                let pnn = index as Pnn;
                let flags = if pnn == self.pnn {
                    if status.state == "banned" {
                        ctdb::NODE_FLAGS_BANNED
                    } else {
                        0
                    }
                } else if status.alive.contains(&pnn) {
                    0
                } else {
                    ctdb::NODE_FLAGS_DISCONNECTED
                };
                NodeEntry { pnn, flags, addr: self.nodes[index] }
            })
            .collect()
    }

    /// The attached database a control's db id argument names: `(id, path, name)`.
    pub(super) fn ctdb_db(&self, data: &[u8]) -> Result<(u32, String, String), String> {
        let db_id = ctdb::decode_u32_arg(data, "db_id").map_err(|e| e.to_string())?;
        let db = self.store.db(db_id).map_err(|e| format!("{e} on node {}", self.pnn))?;
        let path = db.tdb.path().to_str().ok_or("database path is not UTF-8")?.to_owned();
        Ok((db_id, path, db.name.clone()))
    }

    /// Whether live peer `peer` listed the (pid, srvid) a CHECK_PID_SRVID asks about. Its
    /// updates reach us in order across link breaks, so its list holds while it lives.
    fn peer_lists(&self, peer: Pnn, data: &[u8]) -> bool {
        let Ok(pair) = ctdb::decode_pid_srvid(data) else { return false };
        self.ctdb.remote.get(&peer).is_some_and(|pairs| pairs.contains(&pair)) && self.engine.is_alive(peer)
    }

    /// A connection closed: its peers learn which of its processes' srvids went with it.
    pub(super) fn ctdb_client_gone(&mut self, client: ClientId) {
        let released = self.ctdb.gone(client);
        if !released.is_empty() {
            self.tell_peers_srvids(SrvidUpdate::Removed(released));
        }
    }

    /// The link to `peer` is up: it gets every pair our clients hold, in place of what it
    /// had from us before.
    pub(super) fn ctdb_link_up(&mut self, peer: Pnn) {
        let update = SrvidUpdate::All(self.ctdb.local_pairs());
        self.send_srvids(peer, &update);
    }

    /// A peer's CLIENT_SRVIDS.
    pub(super) fn ctdb_peer_srvids(&mut self, peer: Pnn, data: &[u8]) {
        let update = match SrvidUpdate::decode(data) {
            Ok(update) => update,
            Err(err) => return log::warn!("node {peer}: CLIENT_SRVIDS: {err}"),
        };
        let pairs = self.ctdb.remote.entry(peer).or_default();
        match update {
            SrvidUpdate::All(all) => *pairs = all.into_iter().collect(),
            SrvidUpdate::Added(added) => pairs.extend(added),
            SrvidUpdate::Removed(removed) => {
                for pair in removed {
                    pairs.remove(&pair);
                }
            }
        }
    }

    /// To every peer that is alive or linked (a link that is down now gets it after the
    /// reconnect, in order with the rest).
    fn tell_peers_srvids(&mut self, update: SrvidUpdate) {
        let peers: Vec<Pnn> = self
            .transport
            .link_states()
            .iter()
            .filter(|l| l.up || self.engine.is_alive(l.pnn))
            .map(|l| l.pnn)
            .collect();
        for peer in peers {
            self.send_srvids(peer, &update);
        }
    }

    fn send_srvids(&mut self, peer: Pnn, update: &SrvidUpdate) {
        let request = ReqControl {
            opcode: crate::wire::control::opcode::CLIENT_SRVIDS,
            srvid: 0,
            client_id: 0,
            flags: crate::wire::control::FLAG_NOREPLY,
            data: update.encode(),
        };
        let generation = self.engine.generation();
        let body = Body::ReqControl(request);
        self.send_to_peer(Packet { generation, destnode: peer, srcnode: self.pnn, reqid: 0, body });
    }

    fn forward_control(&mut self, client: ClientId, reqid: ReqId, destnode: Pnn, request: ReqControl) {
        let no_reply = request.flags & crate::wire::control::FLAG_NOREPLY != 0;
        if !opcode::is_ctdb(request.opcode) {
            // Our own node-to-node controls speak for this node (its clients' srvids, its
            // copies): a client may not send them in its name.
            let message =
                format!("control {:#x} is not one a client may send to another node", request.opcode);
            return self.reply_to_client(client, reqid, Body::ReplyControl(error_reply(&message)));
        }
        // A link that is down for a moment is no reason: the control waits for the
        // reconnect. Only a node membership counts dead is answered for at once.
        let reachable = (destnode as usize) < self.nodes.len() && self.engine.is_alive(destnode);
        if !reachable {
            // As ctdbd does for a disconnected node: an error at once, which smbd reads as
            // "that process is gone" (the node's processes are).
            if !no_reply {
                let message = format!("node {destnode} is not connected");
                self.reply_to_client(client, reqid, Body::ReplyControl(error_reply(&message)));
            }
            return;
        }
        let forward_reqid = self.take_control_reqid();
        if !no_reply {
            let deadline = Instant::now() + FORWARD_TIMEOUT;
            self.ctdb
                .forwarded
                .insert(forward_reqid, Forwarded { client, client_reqid: reqid, peer: destnode, deadline });
        }
        let generation = self.engine.generation();
        let body = Body::ReqControl(request);
        self.send_to_peer(Packet { generation, destnode, srcnode: self.pnn, reqid: forward_reqid, body });
    }

    /// A peer's answer to a control we forwarded for a client; false if it is not one.
    pub(super) fn ctdb_forward_replied(&mut self, from: Pnn, reqid: ReqId, reply: &ReplyControl) -> bool {
        if !self.ctdb.forwarded.get(&reqid).is_some_and(|f| f.peer == from) {
            return false;
        }
        let Some(forwarded) = self.ctdb.forwarded.remove(&reqid) else { return false };
        self.reply_to_client(forwarded.client, forwarded.client_reqid, Body::ReplyControl(reply.clone()));
        true
    }

    pub(super) fn ctdb_expire_forwards(&mut self, now: Instant) {
        self.fail_forwards(|f| f.deadline <= now, "the node the control was for did not answer");
    }

    /// What a CTDB client must hear of a cluster event: controls sent on to a node
    /// membership declared dead fail now (as ctdbd answers for a disconnected node; a link
    /// that merely broke does not count), and after every recovery the clients registered
    /// for CTDB_SRVID_RECONFIGURE hear of it (smbd then revalidates its byte-range locks),
    /// as ctdbd's recovery daemon broadcasts it when a recovery completes.
    pub(super) fn ctdb_cluster_event(&mut self, event: &ClusterEvent) {
        match event {
            ClusterEvent::NodeDead(peer) => {
                self.ctdb.remote.remove(peer);
                self.fail_forwards(|f| f.peer == *peer, "the node the control was for is dead");
            }
            ClusterEvent::Activated { .. } => {
                let reconfigured = ReqMessage { srvid: SRVID_RECONFIGURE, data: vec![] };
                self.deliver_message(self.pnn, reconfigured);
            }
            _ => {}
        }
    }

    fn fail_forwards(&mut self, failed: impl Fn(&Forwarded) -> bool, why: &str) {
        let reqids: Vec<ReqId> =
            self.ctdb.forwarded.iter().filter(|(_, f)| failed(f)).map(|(reqid, _)| *reqid).collect();
        for reqid in reqids {
            if let Some(f) = self.ctdb.forwarded.remove(&reqid) {
                self.reply_to_client(f.client, f.client_reqid, Body::ReplyControl(error_reply(why)));
            }
        }
    }

    /// A message from a local client: to its srvid on the node it names, or on every node.
    pub(super) fn ctdb_client_message(&mut self, client: ClientId, destnode: Pnn, message: ReqMessage) {
        let generation = self.engine.generation();
        let peers: Vec<Pnn> = match destnode {
            _ if destnode == CURRENT_NODE || destnode == self.pnn => vec![],
            ctdb::BROADCAST_ALL | ctdb::BROADCAST_ACTIVE | ctdb::BROADCAST_CONNECTED | ctdb::MULTICAST => {
                // Queued to a live node whose link is down for a moment, as ctdbd does.
                (0..self.nodes.len() as Pnn).filter(|&p| p != self.pnn && self.engine.is_alive(p)).collect()
            }
            peer if (peer as usize) < self.nodes.len() => vec![peer],
            other => {
                log::warn!("client {client}: a message for node {other:#x}, which does not exist; dropped");
                return;
            }
        };
        for &peer in &peers {
            let body = Body::Message(message.clone());
            self.send_to_peer(Packet { generation, destnode: peer, srcnode: self.pnn, reqid: 0, body });
        }
        let local = destnode == CURRENT_NODE || destnode == self.pnn || destnode >= ctdb::BROADCAST_ALL;
        if local {
            self.deliver_message(self.pnn, message);
        }
    }

    /// Hands a message to every local connection that registered its srvid. A message for a
    /// srvid nobody registered is dropped, as in CTDB.
    pub(super) fn deliver_message(&mut self, srcnode: Pnn, message: ReqMessage) {
        let Some(listeners) = self.ctdb.listeners.get(&message.srvid) else { return };
        let generation = self.engine.generation();
        let packet =
            Packet { generation, destnode: self.pnn, srcnode, reqid: 0, body: Body::Message(message) };
        for client in listeners {
            if let Some(link) = self.clients.get(client) {
                link.send(&packet);
            }
        }
    }

    /// TRAVERSE_START: the control is answered at once, then the newest copy of every
    /// record, cluster-wide, goes to the client's srvid, and an empty record ends it (a
    /// status ends a traverse that failed: `traverse`).
    fn ctdb_traverse(
        &mut self,
        client: ClientId,
        reqid: ReqId,
        start: TraverseStart,
    ) -> Option<ReplyControl> {
        if let Err(err) = self.traverse_refusal(start.db_id, client) {
            return Some(error_reply(&err));
        }
        self.reply_to_client(client, reqid, Body::ReplyControl(ok_reply(vec![])));
        self.start_traverse(start.db_id, TraverseAnswer::Ctdb { client, start });
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two connections of one process: a srvid counts as released only when neither
    /// holds it, and the indexes forget a process with its last connection.
    #[test]
    fn srvids_are_tracked_per_process_across_its_connections() {
        let mut clients = CtdbClients::default();
        let pid = std::process::id() as i32;
        clients.connected(1, Some(pid));
        clients.connected(2, Some(pid));
        clients.connected(3, Some(pid + 1));
        assert_eq!(clients.register(1, 10), Some((pid, 10)));
        assert_eq!(clients.register(2, 10), None, "the process held it already");
        assert_eq!(clients.register(3, 10), Some((pid + 1, 10)));
        assert!(clients.pid_has_srvid(pid, 10) && !clients.pid_has_srvid(pid, 11));
        assert_eq!(clients.listeners[&10].len(), 3);
        assert_eq!(clients.deregister(1, 10), Some(None), "connection 2 still holds it");
        assert_eq!(clients.deregister(1, 10), None, "not registered any more");
        assert!(clients.process_exists(pid));
        assert_eq!(clients.gone(2), vec![(pid, 10)]);
        assert!(!clients.pid_has_srvid(pid, 10));
        assert_eq!(clients.gone(1), vec![]);
        assert!(!clients.process_exists(pid), "no connection of it left");
        assert!(!clients.connections_of.contains_key(&pid));
        assert_eq!(clients.listeners[&10].len(), 1);
        assert_eq!(clients.gone(3), vec![(pid + 1, 10)]);
        assert!(clients.listeners.is_empty() && clients.registered.is_empty() && clients.pids.is_empty());
    }
}
