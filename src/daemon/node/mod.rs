//! The node: feeds transport and client events into the protocol engine, carries out its
//! actions, and serves the controls (attach, status, traverse) that are not migration steps.
//! It lives behind one mutex: packets from peers and clients are handled on the reader
//! thread that decoded them (one thread wakeup per hop, as in CTDB's single event loop,
//! instead of two), and the engine thread (`run`) keeps the timers, link events and
//! lock waits. Everything that touches the database files happens under that mutex.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use parking_lot::Mutex;

mod controls;

use controls::{error_reply, CopiesFor, PendingControl};

use super::clients::{ClientEvent, ClientLink};
use super::lock_wait::{wait_for, HeldLock, LockTarget};
use super::tdb_store::TdbStore;
use crate::engine::{ClientCall, ClientId, Engine, EngineConfig, Input, Output};
use crate::transport::{Transport, TransportEvent};
use crate::wire::codec::encoded_len;
use crate::wire::{
    Body, DbId, Packet, Pnn, ReplyCall, ReplyControl, ReqId, CALL_FLAG_FIRST_USE, MAX_PACKET_LEN,
};

const TICK: Duration = Duration::from_millis(10);
pub struct Node {
    pnn: Pnn,
    nodes: Vec<IpAddr>,
    engine: Engine,
    store: TdbStore,
    transport: Transport,
    clients: HashMap<ClientId, ClientLink>,
    pending: HashMap<ReqId, PendingControl>,
    /// Locks that waiter threads took for the engine thread arrive here.
    held_locks: (Sender<HeldLock>, Receiver<HeldLock>),
    /// Who waits for a database's records while a client holds one of its chains.
    copies_wanted: HashMap<DbId, Vec<CopiesFor>>,
    next_reqid: ReqId,
    started: Instant,
}

/// The engine thread: link events, packets to ourselves, chain locks taken for us, and the
/// timers. Packets from peers and clients are handled on their reader threads.
pub fn run(node: &Mutex<Node>, transport: Receiver<TransportEvent>) {
    let mut next_tick = Instant::now() + TICK;
    let held_locks = node.lock().held_locks.1.clone();
    loop {
        select! {
            recv(transport) -> event => match event {
                Ok(event) => node.lock().on_transport(event),
                Err(_) => return,
            },
            recv(held_locks) -> lock => {
                if let Ok(lock) = lock {
                    node.lock().on_lock_held(lock);
                }
            }
            default(next_tick.saturating_duration_since(Instant::now())) => {}
        }
        let now = Instant::now();
        if now >= next_tick {
            next_tick = now + TICK;
            let mut node = node.lock();
            node.engine_input(Input::Tick);
            node.expire_controls(now);
        }
    }
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
            held_locks: crossbeam_channel::unbounded(),
            copies_wanted: HashMap::new(),
            next_reqid: 1,
            started: Instant::now(),
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
                Output::WaitForChainLock { db_id, key } => match self.store.chain_site(db_id, &key) {
                    Some((file, start, len)) => {
                        let target = LockTarget::Chain { db_id, key };
                        wait_for(file, start, len, target, self.held_locks.0.clone())
                    }
                    None => {
                        log::error!("db {db_id:#x}: no chain lock to wait for; the work for a key is stuck")
                    }
                },
            }
        }
    }

    /// A waiter holds a lock for us: do the work that waited for it, as if the engine
    /// thread held the lock itself, then give it back.
    fn on_lock_held(&mut self, lock: HeldLock) {
        match &lock.target {
            LockTarget::Chain { db_id, key } => {
                self.store.held_for_us(*db_id, key, true);
                self.engine_input(Input::ChainLockAvailable { db_id: *db_id, key: key.clone() });
                self.store.held_for_us(*db_id, key, false);
            }
            LockTarget::AllChains { db_id } => {
                let copies = self.store.copies_held_for_us(*db_id).map_err(|e| e.to_string());
                for wanted in self.copies_wanted.remove(db_id).unwrap_or_default() {
                    self.deliver_copies(wanted, copies.clone());
                }
            }
        }
        lock.release();
    }

    fn on_transport(&mut self, event: TransportEvent) {
        match event {
            TransportEvent::Packet { from, packet } => self.on_peer_packet(from, packet),
            TransportEvent::LinkUp(pnn) => {
                log::info!("link to node {pnn} up");
                self.attach_on_peer(pnn);
            }
            TransportEvent::LinkDown(pnn) => log::warn!("link to node {pnn} down"),
        }
    }

    pub fn on_peer_packet(&mut self, from: Pnn, packet: Packet) {
        match packet.body {
            Body::ReqCall(_) | Body::ReqDmaster(_) | Body::ReplyDmaster(_) => {
                self.engine_input(Input::Packet(packet))
            }
            Body::ReqControl(request) => self.peer_control(from, packet.reqid, request),
            Body::ReplyControl(reply) => self.peer_replied(from, packet.reqid, reply),
            Body::Keepalive(_) => {}
            other => log::warn!("node {from}: unexpected operation {}", other.operation()),
        }
    }

    fn reply_to_peer(&mut self, node: Pnn, reqid: ReqId, reply: ReplyControl) {
        let generation = self.engine.generation();
        let body = Body::ReplyControl(reply);
        self.transport.send(node, Packet { generation, destnode: node, srcnode: self.pnn, reqid, body });
    }

    pub fn on_client(&mut self, event: ClientEvent) {
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
            Body::ReqCall(call) => self.engine_input(Input::ClientCall(ClientCall {
                client,
                reqid: packet.reqid,
                db_id: call.db_id,
                first_use: call.flags & CALL_FLAG_FIRST_USE != 0,
                key: call.key,
            })),
            Body::ReqControl(request) => self.client_control(client, packet.reqid, request),
            other => {
                let message = format!("unexpected operation {} on the client socket", other.operation());
                self.reply_to_client(client, packet.reqid, Body::ReplyControl(error_reply(&message)));
            }
        }
    }

    fn reply_to_client(&mut self, client: ClientId, reqid: ReqId, body: Body) {
        let Some(link) = self.clients.get(&client) else { return };
        let (generation, node) = (self.engine.generation(), self.pnn);
        let mut packet = Packet { generation, destnode: node, srcnode: node, reqid, body };
        let len = encoded_len(&packet);
        if len > MAX_PACKET_LEN {
            // The client would refuse the frame and lose its place in the stream.
            let message =
                format!("the reply would be {len} bytes, more than a packet may carry ({MAX_PACKET_LEN})");
            packet.body = Body::ReplyControl(error_reply(&message));
        }
        link.send(&packet);
    }
}
