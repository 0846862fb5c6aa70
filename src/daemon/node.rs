//! The engine thread: feeds transport and client events into the protocol engine, carries
//! out its actions, and serves the controls (attach, status, traverse) that are not
//! migration steps. Everything that touches the database files happens on this thread.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};

use super::clients::{ClientEvent, ClientLink};
use super::lock_wait::{wait_for_chain, HeldChain};
use super::tdb_store::{TdbStore, CLUSTERED_TDB_FLAGS};
use crate::control::{self, opcode, AttachReply, RecordCopy};
use crate::engine::{ClientId, Engine, EngineConfig, Input, Output};
use crate::transport::{Transport, TransportEvent};
use crate::wire::{Body, Packet, Pnn, ReplyCall, ReplyControl, ReqControl, ReqId, CALL_FLAG_FIRST_USE};

const TICK: Duration = Duration::from_millis(10);
/// How long attach and traverse wait for peers before answering with what they have.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// A control this node sent to its peers on behalf of a client, waiting for their replies.
struct PendingControl {
    client: ClientId,
    client_reqid: ReqId,
    waiting_for: HashSet<Pnn>,
    deadline: Instant,
    kind: PendingKind,
}

enum PendingKind {
    Attach { reply: AttachReply },
    Traverse { copies: Vec<RecordCopy> },
}

pub struct Node {
    pnn: Pnn,
    nodes: Vec<IpAddr>,
    engine: Engine,
    store: TdbStore,
    transport: Transport,
    clients: HashMap<ClientId, ClientLink>,
    pending: HashMap<ReqId, PendingControl>,
    /// Chain locks waiter threads took for the engine arrive here.
    held_chains: (Sender<HeldChain>, Receiver<HeldChain>),
    next_reqid: ReqId,
    started: Instant,
}

/// Every node derives the same generation from the same nodes file, so a cluster without
/// recoveries agrees on it from the start. Never 0, never the recovery generation 1.
fn initial_generation(nodes: &[IpAddr]) -> u32 {
    let text: String = nodes.iter().map(|n| format!("{n}\n")).collect();
    crate::hash::jenkins_hash(text.as_bytes()).max(2)
}

impl Node {
    pub fn new(pnn: Pnn, nodes: &[IpAddr], dbdir: &Path, transport: Transport) -> Node {
        let vnn_map = (0..nodes.len() as Pnn).collect();
        let engine = Engine::new(EngineConfig::new(pnn, initial_generation(nodes), vnn_map));
        Node {
            pnn,
            nodes: nodes.to_vec(),
            engine,
            store: TdbStore::new(dbdir),
            transport,
            clients: HashMap::new(),
            pending: HashMap::new(),
            held_chains: crossbeam_channel::unbounded(),
            next_reqid: 1,
            started: Instant::now(),
        }
    }

    pub fn run(&mut self, transport: Receiver<TransportEvent>, clients: Receiver<ClientEvent>) {
        let mut next_tick = Instant::now() + TICK;
        let held_chains = self.held_chains.1.clone();
        loop {
            select! {
                recv(transport) -> event => match event {
                    Ok(event) => self.on_transport(event),
                    Err(_) => return,
                },
                recv(clients) -> event => match event {
                    Ok(event) => self.on_client(event),
                    Err(_) => return,
                },
                recv(held_chains) -> chain => {
                    if let Ok(chain) = chain {
                        self.on_chain_held(chain);
                    }
                }
                default(next_tick.saturating_duration_since(Instant::now())) => {}
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + TICK;
                self.engine_input(Input::Tick);
                self.expire_controls(now);
            }
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn engine_input(&mut self, input: Input) {
        let mut out = vec![];
        self.engine.handle(self.now_ms(), input, &mut self.store, &mut out);
        for output in out {
            match output {
                Output::Send(packet) => self.transport.send(packet.destnode, packet),
                Output::ClientReply { client, reqid, status } => {
                    let reply = Body::ReplyCall(ReplyCall { status, data: vec![] });
                    self.reply_to_client(client, reqid, reply);
                }
                Output::WaitForChainLock { db_id, key } => match self.store.chain_lock_site(db_id, &key) {
                    Some((file, offset)) => {
                        wait_for_chain(file, offset, db_id, key, self.held_chains.0.clone())
                    }
                    None => {
                        log::error!("db {db_id:#x}: no chain lock to wait for; the work for a key is stuck")
                    }
                },
            }
        }
    }

    /// A waiter holds the chain for us: run the key's waiting work as if the engine held it.
    fn on_chain_held(&mut self, chain: HeldChain) {
        self.store.held_for_us(chain.db_id, &chain.key, true);
        self.engine_input(Input::ChainLockAvailable { db_id: chain.db_id, key: chain.key.clone() });
        self.store.held_for_us(chain.db_id, &chain.key, false);
        chain.release();
    }

    fn on_transport(&mut self, event: TransportEvent) {
        match event {
            TransportEvent::Packet { from, packet } => self.on_peer_packet(from, packet),
            TransportEvent::LinkUp(pnn) => log::info!("link to node {pnn} up"),
            TransportEvent::LinkDown(pnn) => log::warn!("link to node {pnn} down"),
        }
    }

    fn on_peer_packet(&mut self, from: Pnn, packet: Packet) {
        match packet.body {
            Body::ReqCall(_) | Body::ReqDmaster(_) | Body::ReplyDmaster(_) => {
                self.engine_input(Input::Packet(packet))
            }
            Body::ReqControl(ref request) => {
                let reply = self.peer_control(request);
                let packet = Packet {
                    generation: self.engine.generation(),
                    destnode: from,
                    srcnode: self.pnn,
                    reqid: packet.reqid,
                    body: Body::ReplyControl(reply),
                };
                self.transport.send(from, packet);
            }
            Body::ReplyControl(reply) => self.peer_replied(from, packet.reqid, reply),
            Body::Keepalive(_) => {}
            other => log::warn!("node {from}: unexpected operation {}", other.operation()),
        }
    }

    fn peer_control(&mut self, request: &ReqControl) -> ReplyControl {
        match request.opcode {
            opcode::DB_ATTACH => match self.attach(&request.data) {
                Ok(reply) => ok_reply(reply.encode()),
                Err(err) => error_reply(&err),
            },
            opcode::PULL_DB => match control::decode_db_id(&request.data)
                .map_err(|e| e.to_string())
                .and_then(|db_id| self.store.copies(db_id).map_err(|e| e.to_string()))
            {
                Ok(copies) => ok_reply(control::encode_records(&copies)),
                Err(err) => error_reply(&err),
            },
            other => error_reply(&format!("unknown control {other:#x}")),
        }
    }

    fn peer_replied(&mut self, from: Pnn, reqid: ReqId, reply: ReplyControl) {
        let Some(pending) = self.pending.get_mut(&reqid) else { return };
        if !pending.waiting_for.remove(&from) {
            return;
        }
        if reply.status != 0 {
            log::warn!("node {from} failed a control: {}", String::from_utf8_lossy(&reply.errmsg));
        } else if let PendingKind::Traverse { copies } = &mut pending.kind {
            match control::decode_records(&reply.data) {
                Ok(records) => copies.extend(records),
                Err(err) => log::warn!("node {from}: {err}"),
            }
        }
        if pending.waiting_for.is_empty() {
            self.finish_control(reqid);
        }
    }

    fn expire_controls(&mut self, now: Instant) {
        let expired: Vec<ReqId> =
            self.pending.iter().filter(|(_, p)| p.deadline <= now).map(|(reqid, _)| *reqid).collect();
        for reqid in expired {
            log::warn!("control {reqid}: no reply from nodes {:?}", self.pending[&reqid].waiting_for);
            self.finish_control(reqid);
        }
    }

    fn finish_control(&mut self, reqid: ReqId) {
        let Some(pending) = self.pending.remove(&reqid) else { return };
        let data = match pending.kind {
            PendingKind::Attach { reply } => reply.encode(),
            PendingKind::Traverse { copies } => {
                let newest: Vec<RecordCopy> =
                    control::merge_newest(copies).into_iter().filter(|copy| !copy.data.is_empty()).collect();
                control::encode_records(&newest)
            }
        };
        self.reply_to_client(pending.client, pending.client_reqid, Body::ReplyControl(ok_reply(data)));
    }

    fn on_client(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Connected { client, link } => {
                self.clients.insert(client, link);
            }
            ClientEvent::Gone(client) => {
                self.clients.remove(&client);
                self.engine_input(Input::ClientGone(client));
            }
            ClientEvent::Packet { client, packet } => self.on_client_packet(client, packet),
        }
    }

    fn on_client_packet(&mut self, client: ClientId, packet: Packet) {
        match packet.body {
            Body::ReqCall(call) => self.engine_input(Input::ClientCall {
                client,
                reqid: packet.reqid,
                db_id: call.db_id,
                first_use: call.flags & CALL_FLAG_FIRST_USE != 0,
                key: call.key,
            }),
            Body::ReqControl(request) => self.client_control(client, packet.reqid, request),
            other => {
                let message = format!("unexpected operation {} on the client socket", other.operation());
                self.reply_to_client(client, packet.reqid, Body::ReplyControl(error_reply(&message)));
            }
        }
    }

    fn client_control(&mut self, client: ClientId, reqid: ReqId, request: ReqControl) {
        match request.opcode {
            opcode::MIGRATION_DONE => {
                if let Ok((db_id, key)) = control::decode_db_key(&request.data) {
                    self.engine_input(Input::ClientDone { client, db_id, key: key.to_vec() });
                }
            }
            opcode::STATUS => {
                let status = self.status_text();
                self.reply_to_client(client, reqid, Body::ReplyControl(ok_reply(status.into_bytes())));
            }
            opcode::DB_ATTACH => match self.attach(&request.data) {
                Ok(reply) => {
                    let kind = PendingKind::Attach { reply };
                    self.ask_peers(client, reqid, opcode::DB_ATTACH, request.data, kind);
                }
                Err(err) => self.reply_to_client(client, reqid, Body::ReplyControl(error_reply(&err))),
            },
            opcode::TRAVERSE_ALL => {
                let local =
                    control::decode_db_id(&request.data).map_err(|e| e.to_string()).and_then(|db_id| {
                        self.store.copies(db_id).map(|c| (db_id, c)).map_err(|e| e.to_string())
                    });
                match local {
                    Ok((db_id, copies)) => {
                        let data = db_id.to_le_bytes().to_vec();
                        self.ask_peers(
                            client,
                            reqid,
                            opcode::PULL_DB,
                            data,
                            PendingKind::Traverse { copies },
                        );
                    }
                    Err(err) => self.reply_to_client(client, reqid, Body::ReplyControl(error_reply(&err))),
                }
            }
            other => {
                let message = format!("unknown control {other:#x}");
                self.reply_to_client(client, reqid, Body::ReplyControl(error_reply(&message)));
            }
        }
    }

    /// Sends a control to every peer whose link is up and answers the client once they all
    /// replied (or the control timed out).
    fn ask_peers(
        &mut self,
        client: ClientId,
        client_reqid: ReqId,
        opcode: u32,
        data: Vec<u8>,
        kind: PendingKind,
    ) {
        let reqid = self.next_reqid;
        self.next_reqid = self.next_reqid.wrapping_add(1).max(1);
        let peers: HashSet<Pnn> =
            self.transport.link_states().iter().filter(|link| link.up).map(|link| link.pnn).collect();
        for &peer in &peers {
            let body =
                Body::ReqControl(ReqControl { opcode, srvid: 0, client_id: 0, flags: 0, data: data.clone() });
            let packet = Packet {
                generation: self.engine.generation(),
                destnode: peer,
                srcnode: self.pnn,
                reqid,
                body,
            };
            self.transport.send(peer, packet);
        }
        let deadline = Instant::now() + CONTROL_TIMEOUT;
        self.pending
            .insert(reqid, PendingControl { client, client_reqid, waiting_for: peers, deadline, kind });
        if self.pending[&reqid].waiting_for.is_empty() {
            self.finish_control(reqid);
        }
    }

    /// Attaches database `name` (a NUL may end it, as CTDB clients send it) on this node.
    fn attach(&mut self, name: &[u8]) -> Result<AttachReply, String> {
        let name = name.strip_suffix(b"\0").unwrap_or(name);
        let name = std::str::from_utf8(name).map_err(|_| "database name is not UTF-8".to_string())?;
        let db_id = control::db_id_of(name);
        let path = self.store.attach(db_id, name).map_err(|e| e.to_string())?;
        self.engine.attach_db(db_id);
        let path = path.to_str().ok_or("database path is not UTF-8")?.to_owned();
        Ok(AttachReply { db_id, pnn: self.pnn, tdb_flags: CLUSTERED_TDB_FLAGS as u32, path })
    }

    fn reply_to_client(&mut self, client: ClientId, reqid: ReqId, body: Body) {
        let Some(link) = self.clients.get(&client) else { return };
        let packet = Packet {
            generation: self.engine.generation(),
            destnode: self.pnn,
            srcnode: self.pnn,
            reqid,
            body,
        };
        link.send(&packet);
    }

    /// `key value` lines a person can read and a script can parse.
    fn status_text(&self) -> String {
        let mut text = format!(
            "pnn {}\ngeneration {:#010x}\nvnn_map {:?}\n",
            self.pnn,
            self.engine.generation(),
            self.engine.vnn_map()
        );
        let links = self.transport.link_states();
        for (pnn, addr) in self.nodes.iter().enumerate() {
            let state = if pnn as Pnn == self.pnn {
                "self".to_string()
            } else {
                match links.iter().find(|l| l.pnn == pnn as Pnn) {
                    Some(link) if link.up => {
                        format!("up sent={} received={}", link.packets_sent, link.packets_received)
                    }
                    _ => "down".to_string(),
                }
            };
            text.push_str(&format!("node {pnn} {addr} {state}\n"));
        }
        let mut dbs: Vec<_> = self.store.dbs().map(|(id, db)| (db.name.clone(), *id)).collect();
        dbs.sort();
        for (name, id) in dbs {
            text.push_str(&format!("db {name} {id:#010x}\n"));
        }
        text.push_str(&format!("stats {:?}\n", self.engine.stats()));
        text
    }
}

fn ok_reply(data: Vec<u8>) -> ReplyControl {
    ReplyControl { status: 0, data, errmsg: vec![] }
}

fn error_reply(message: &str) -> ReplyControl {
    ReplyControl { status: -1, data: vec![], errmsg: message.as_bytes().to_vec() }
}
