//! The node: feeds transport and client events into the protocol engine, carries out its
//! actions, and serves the controls (attach, status, traverse) that are not migration steps.
//! It lives behind one mutex: packets from peers and clients are handled on the reader
//! thread that decoded them (one thread wakeup per hop, as in CTDB's single event loop,
//! instead of two), and the engine thread (`run`) keeps the timers, link events and
//! lock waits. Everything that touches the database files happens under that mutex.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender};
use parking_lot::Mutex;

mod controls;
mod ctdb_clients;
mod ctdb_tool;
mod repack;
mod traverse;

use controls::error_reply;
use ctdb_clients::CtdbClients;

use super::attach_policy::AttachPolicy;
use super::clients::{ClientEvent, ClientLink};
use super::cluster_lock::{ClusterLock, ClusterLockSpec, HandedFreeze};
use super::fencing::{FenceNote, FenceWatchdog};
use super::lock_wait::{HeldLock, LockFiles, LockTarget, LockWaiters};
use super::tdb_store::TdbStore;
use crate::engine::{
    CallKind, ClientCall, ClientId, ClusterEvent, Engine, EngineConfig, Input, LockOutcome, Output,
    RecordStore,
};
use crate::transport::{Transport, TransportEvent};
use crate::wire::codec::encoded_len;
use crate::wire::{
    Body, DbId, Packet, Pnn, ReplyCall, ReplyControl, ReplyError, ReqId, CALL_FETCH_FUNC,
    CALL_FLAG_FIRST_USE, CALL_NULL_FUNC, CURRENT_NODE, MAX_KEY_LEN, MAX_PACKET_LEN,
};

const TICK: Duration = Duration::from_millis(10);
/// Threads that wait for chain locks clients hold (each wait takes turns of 100 ms).
const LOCK_WAITERS: usize = 8;
/// Calls one client may have waiting: smbd and librctdb wait for each answer, so only a
/// client that floods has more, and only its calls are refused.
const MAX_CALLS_PER_CLIENT: usize = 1000;

/// A database frozen for the engine (`Output::FreezeDb`), or on its way.
enum FreezeLock {
    Waiting,
    Held(HeldLock),
}

pub struct Node {
    pnn: Pnn,
    nodes: Vec<IpAddr>,
    /// The port every node listens on, for the node map CTDB clients read.
    port: u16,
    engine: Engine,
    cluster_lock: Option<ClusterLockSpec>,
    /// The attempt or the held lock, while the engine wants it.
    lock_attempt: Option<ClusterLock>,
    lock_outcomes: (Sender<LockOutcome>, Receiver<LockOutcome>),
    freezes: HashMap<DbId, FreezeLock>,
    /// Not talking to peers (`rctdb quiet`).
    quiet: bool,
    dbdir: std::path::PathBuf,
    /// Freezes a watchdog took when it fenced this node (the lock's, or the fencing one):
    /// adopted by `freeze`, so the databases are never unfrozen in between; what no freeze
    /// adopts is dropped at the tick after it came.
    handed_freeze: HandedFreeze,
    /// Kills the attached clients and freezes the databases if this daemon stalls past its
    /// lease (`super::fencing`).
    fence: FenceWatchdog,
    /// The process of each connected client.
    client_pids: HashMap<ClientId, i32>,
    /// Clients that attached a database (only those can hold records), as the fencing
    /// watchdog knows them: status and tool connections are never fenced.
    fenced_clients: HashSet<ClientId>,
    /// Told to leave: the engine thread exits the process.
    stopping: bool,
    store: TdbStore,
    transport: Transport,
    clients: HashMap<ClientId, ClientLink>,
    /// Calls each client has waiting for an answer.
    calls_waiting: HashMap<ClientId, usize>,
    /// What ctdbd's client protocol needs: pids, registered srvids, forwarded controls.
    ctdb: CtdbClients,
    /// When this node last went into and out of recovery, for `ctdb uptime`.
    recovery_times: ctdb_tool::RecoveryTimes,
    traverses: traverse::Traverses,
    /// Locks that waiter threads took for the engine thread arrive here.
    held_locks: (Sender<HeldLock>, Receiver<HeldLock>),
    lock_waiters: LockWaiters,
    attach_policy: AttachPolicy,
    /// Records kept in memory that clients wait for: asked again once written.
    waiting_writes: HashSet<(DbId, Vec<u8>)>,
    repacks: repack::Repacks,
    next_reqid: ReqId,
    started: Instant,
}

/// The engine thread: link events, packets to ourselves, chain locks taken for us, and the
/// timers. Packets from peers and clients are handled on their reader threads.
pub fn run(node: &Mutex<Node>, transport: Receiver<TransportEvent>) {
    let mut next_tick = Instant::now() + TICK;
    let held_locks = node.lock().held_locks.1.clone();
    let lock_outcomes = node.lock().lock_outcomes.1.clone();
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
            recv(lock_outcomes) -> outcome => {
                if let Ok(outcome) = outcome {
                    node.lock().on_cluster_lock(outcome);
                }
            }
            default(next_tick.saturating_duration_since(Instant::now())) => {}
        }
        if node.lock().stopping {
            log::warn!("node left the cluster; exiting");
            std::process::exit(0);
        }
        let now = Instant::now();
        let tick = now >= next_tick;
        if tick {
            next_tick = now + TICK;
            let mut node = node.lock();
            node.engine_input(Input::Tick);
            node.expire_controls(now);
            node.check_traverses(now);
            node.check_repacks(now);
            node.rewrite_unwritten();
            node.settle_handed_freeze();
            // The engine's progress, and nothing else, keeps the watchdogs content.
            if let Some(lock) = node.lock_attempt.as_mut() {
                lock.beat();
            }
            node.tell_fence_lease();
        }
        if tick {
            // Traverse chunks, each in a hold of the mutex of its own (`traverse`).
            for _ in 0..traverse::CHUNK_READS_PER_TICK {
                if !node.lock().read_queued_chunk() {
                    break;
                }
            }
        }
    }
}

impl Node {
    /// A node starts serving nothing: a recovery admits it (DESIGN §5).
    pub fn new(
        pnn: Pnn,
        nodes: &[IpAddr],
        daemon: &super::DaemonConfig,
        transport: Transport,
    ) -> std::io::Result<Node> {
        let cluster_lock = daemon.cluster_lock.clone();
        // Generations this node picks must differ from any other node's and run's.
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ ((std::process::id() as u64) << 32)
            ^ pnn as u64;
        let mut config = EngineConfig::clustered(pnn, nodes.len(), cluster_lock.is_some(), seed);
        config.tunables = daemon.tunables.clone();
        let held_locks = crossbeam_channel::unbounded();
        let lock_waiters = LockWaiters::start(LOCK_WAITERS, held_locks.0.clone())?;
        let handed_freeze = HandedFreeze::default();
        let fence = start_fence_watchdog(&daemon.dbdir, &daemon.tunables, handed_freeze.clone())?;
        Ok(Node {
            pnn,
            nodes: nodes.to_vec(),
            port: daemon.port,
            engine: Engine::new(config),
            cluster_lock,
            lock_attempt: None,
            lock_outcomes: crossbeam_channel::unbounded(),
            freezes: HashMap::new(),
            quiet: false,
            dbdir: daemon.dbdir.clone(),
            handed_freeze,
            fence,
            client_pids: HashMap::new(),
            fenced_clients: HashSet::new(),
            stopping: false,
            store: TdbStore::new(&daemon.dbdir),
            transport,
            clients: HashMap::new(),
            calls_waiting: HashMap::new(),
            ctdb: CtdbClients::default(),
            recovery_times: Default::default(),
            traverses: Default::default(),
            held_locks,
            lock_waiters,
            waiting_writes: HashSet::new(),
            attach_policy: daemon.attach_policy.clone(),
            repacks: Default::default(),
            next_reqid: 1,
            started: Instant::now(),
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn engine_input(&mut self, input: Input) {
        let mut out = vec![];
        self.engine.handle(self.now_ms(), input, &mut self.store, &mut out);
        for output in out {
            match output {
                Output::Send(packet) => self.send_to_peer(packet),
                Output::ClientReply { client, reqid, status, data } => {
                    if let Some(waiting) = self.calls_waiting.get_mut(&client) {
                        *waiting = waiting.saturating_sub(1);
                    }
                    let reply = match status {
                        0 => Body::ReplyCall(ReplyCall { status, data: data.unwrap_or_default() }),
                        // ctdbd refuses a call with REPLY_ERROR; smbd takes a REPLY_CALL of any
                        // status for success.
                        crate::engine::CALL_KEY_BUSY => Body::ReplyError(ReplyError {
                            status,
                            msg: format!(
                                "node {}: {} requests wait for this key already, the limit; \
                                 refused",
                                self.pnn,
                                crate::engine::MAX_WAITERS_PER_KEY
                            )
                            .into_bytes(),
                        }),
                        _ => Body::ReplyError(ReplyError {
                            status,
                            msg: format!(
                                "node {}: call failed: {}",
                                self.pnn,
                                nix::errno::Errno::from_raw(-status)
                            )
                            .into_bytes(),
                        }),
                    };
                    self.reply_to_client(client, reqid, reply);
                }
                Output::WaitForChainLock { db_id, key } => match self.store.chain_site(db_id, &key) {
                    Some((file, start, len)) => {
                        let target = LockTarget::Chain { db_id, key };
                        self.lock_waiters.wait_for(file, start, len, target)
                    }
                    None => {
                        log::error!("db {db_id:#x}: no chain lock to wait for; the work for a key is stuck")
                    }
                },
                Output::WaitForWrite { db_id, key } => {
                    self.waiting_writes.insert((db_id, key));
                }
                Output::FreezeDb { db_id } => self.freeze(db_id),
                Output::ThawDb { db_id } => self.thaw(db_id),
                Output::TakeClusterLock => match &self.cluster_lock {
                    Some(spec) => self.lock_attempt = Some(self.attempt_cluster_lock(spec)),
                    None => log::error!("the engine wants a cluster lock but none is configured"),
                },
                Output::ReleaseClusterLock => {
                    if let Some(lock) = self.lock_attempt.take() {
                        lock.release();
                    }
                    // Nothing is reported after a release: what is queued is about the attempt
                    // just given up, and must not be taken for the next one's.
                    while self.lock_outcomes.1.try_recv().is_ok() {}
                }
                Output::Event(event) => {
                    log_event(self.pnn, &event);
                    self.ctdb_tool_event(&event);
                    self.ctdb_cluster_event(&event);
                }
                Output::AttachDone { client, reqid, db_id, result } => {
                    if result.is_ok() {
                        self.fence_client(client);
                    }
                    let ctdb_form = self.ctdb.take_attach(client, reqid);
                    let reply = match result.and_then(|()| self.attach_reply(db_id)) {
                        Ok(_) if ctdb_form => controls::ok_reply(db_id.to_le_bytes().to_vec()),
                        Ok(attached) => controls::ok_reply(attached.encode()),
                        Err(err) => error_reply(&err),
                    };
                    self.reply_to_client(client, reqid, Body::ReplyControl(reply));
                }
            }
        }
    }

    /// Writes records the files refused before; clients waiting for one are asked again
    /// once it is in its file.
    fn rewrite_unwritten(&mut self) {
        self.store.rewrite_unwritten();
        let written: Vec<(DbId, Vec<u8>)> = self
            .waiting_writes
            .iter()
            .filter(|(db_id, key)| self.store.unwritten(*db_id, key) != Some(libc::EAGAIN))
            .cloned()
            .collect();
        for (db_id, key) in written {
            self.waiting_writes.remove(&(db_id, key.clone()));
            self.engine_input(Input::ChainLockAvailable { db_id, key });
        }
    }

    fn freeze(&mut self, db_id: DbId) {
        if self.freezes.contains_key(&db_id) {
            return;
        }
        match self.store.all_chains_site(db_id) {
            Some((files, start, len)) => {
                self.freezes.insert(db_id, FreezeLock::Waiting);
                let target = LockTarget::Freeze { db_id };
                match self.take_handed_freeze(&files) {
                    Some(file) => self.adopt_freeze(HeldLock::adopted(target, files, file, start, len)),
                    None => self.lock_waiters.wait_for(files, start, len, target),
                }
            }
            None => log::error!("db {db_id:#x}: no chain locks to freeze"),
        }
    }

    /// The watchdog's frozen description of this database's file, if it handed one over.
    fn take_handed_freeze(&mut self, files: &LockFiles) -> Option<std::fs::File> {
        use std::os::unix::fs::MetadataExt;
        let ours = std::fs::metadata(files.path()).ok()?;
        let same = |file: &std::fs::File| {
            file.metadata().is_ok_and(|meta| (meta.dev(), meta.ino()) == (ours.dev(), ours.ino()))
        };
        let mut handed = self.handed_freeze.lock();
        let at = handed.iter().position(same)?;
        Some(handed.swap_remove(at))
    }

    /// A freeze the watchdog handed over arrives like a lock a waiter took.
    fn adopt_freeze(&self, lock: HeldLock) {
        log::info!("{:?}: taken over from a watchdog's freeze, handed over", lock.target);
        let _ = self.held_locks.0.send(lock);
    }

    /// What no freeze adopted goes at the tick after it came (it would hold a database
    /// frozen for ever: the engine, whose lease ran out, asked for its freezes at its first
    /// input), except for freezes still waiting: a description that came late is adopted
    /// by them.
    fn settle_handed_freeze(&mut self) {
        // While a lock attempt lives, its loss may not be taken in yet (the engine freezes
        // once it is): nothing handed goes before.
        if self.lock_attempt.is_some() || self.handed_freeze.lock().is_empty() {
            return;
        }
        let waiting: Vec<DbId> = self
            .freezes
            .iter()
            .filter(|(_, f)| matches!(f, FreezeLock::Waiting))
            .map(|(&db, _)| db)
            .collect();
        for db_id in waiting {
            if let Some((files, start, len)) = self.store.all_chains_site(db_id) {
                if let Some(file) = self.take_handed_freeze(&files) {
                    let target = LockTarget::Freeze { db_id };
                    self.adopt_freeze(HeldLock::adopted(target, files, file, start, len));
                }
            }
        }
        self.handed_freeze.lock().clear();
    }

    fn thaw(&mut self, db_id: DbId) {
        match self.freezes.remove(&db_id) {
            Some(FreezeLock::Held(lock)) => {
                if let Err(err) = self.store.frozen_for_us(db_id, false) {
                    log::error!("thawing db {db_id:#x}: {err}");
                }
                lock.release();
            }
            // Still on its way: released when it arrives.
            Some(FreezeLock::Waiting) | None => {}
        }
    }

    fn attempt_cluster_lock(&self, spec: &ClusterLockSpec) -> ClusterLock {
        let events = self.lock_outcomes.0.clone();
        match std::env::current_exe() {
            Ok(rctdbd) => {
                let watchdog = super::watchdog::config(rctdbd, &self.dbdir, self.engine.tunables());
                ClusterLock::attempt(spec, &watchdog, events, self.handed_freeze.clone())
            }
            Err(err) => {
                let _ = events
                    .send(LockOutcome::Error(format!("finding rctdbd to run the lock watchdog: {err}")));
                ClusterLock::idle()
            }
        }
    }

    /// Until when this node may hold records, for the fencing watchdog: the engine's lease
    /// (on the engine's clock, `now_ms`), or, leading with the cluster lock, for as long as
    /// the lock's watchdog waits for a beat before it fences. A lease already over is none.
    fn tell_fence_lease(&mut self) {
        let until = match self.engine.lease_until() {
            Some(ms) => Some(self.started + Duration::from_millis(ms)),
            None if self.engine.active() && self.lock_attempt.is_some() => {
                Some(Instant::now() + super::watchdog::stall_bound(self.engine.tunables()))
            }
            None => None,
        };
        let until = until.filter(|&until| until > Instant::now());
        self.fence.tell(FenceNote::Lease(until.map(super::fencing::instant_ns)));
    }

    /// A client that attached a database, asked for a record or registered for messages
    /// (smbd's children, which inherit their parent's attaches) may use records: the
    /// watchdog kills it if this daemon stalls past its lease.
    fn fence_client(&mut self, client: ClientId) {
        let Some(&pid) = self.client_pids.get(&client) else { return };
        if self.fenced_clients.insert(client) {
            self.fence.tell(FenceNote::Attached(pid));
        }
    }

    fn on_cluster_lock(&mut self, outcome: LockOutcome) {
        // A watchdog that fenced this node holds its databases frozen until it is dropped:
        // dropped only once the engine has asked for a freeze of its own.
        let ended = match outcome {
            LockOutcome::Held => None,
            _ => self.lock_attempt.take(),
        };
        self.engine_input(Input::ClusterLock(outcome));
        drop(ended);
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
            LockTarget::TraverseChain { db_id, key } => self.traverse_chain_held(*db_id, key),
            LockTarget::Freeze { db_id } => {
                let db_id = *db_id;
                if !matches!(self.freezes.get(&db_id), Some(FreezeLock::Waiting)) {
                    return lock.release(); // thawed while it was on its way
                }
                if let Err(err) = self.store.frozen_for_us(db_id, true) {
                    log::error!("freezing db {db_id:#x}: {err}");
                    self.freezes.remove(&db_id);
                    return lock.release();
                }
                self.freezes.insert(db_id, FreezeLock::Held(lock));
                return self.engine_input(Input::Frozen { db_id });
            }
            LockTarget::Repack { db_id } => return self.repack_held(*db_id, lock),
        }
        lock.release();
    }

    fn on_transport(&mut self, event: TransportEvent) {
        match event {
            TransportEvent::Packet { from, packet } => self.on_peer_packet(from, packet),
            TransportEvent::LinkUp(pnn) => {
                log::info!("link to node {pnn} up");
                self.ctdb_link_up(pnn);
                // A peer that (re)started attaches our databases when a recovery admits it.
                self.engine_input(Input::LinkUp(pnn));
            }
            TransportEvent::Refused(pnn) => self.engine_input(Input::Refused(pnn)),
            TransportEvent::LinkDown(pnn) => {
                // What was sent to it waits for the reconnect; membership decides its death.
                log::warn!("link to node {pnn} down");
                self.engine_input(Input::LinkDown(pnn));
            }
        }
    }

    pub fn on_peer_packet(&mut self, from: Pnn, packet: Packet) {
        if self.quiet {
            return;
        }
        match packet.body {
            Body::ReqCall(_)
            | Body::ReplyCall(_)
            | Body::ReqDmaster(_)
            | Body::ReplyDmaster(_)
            | Body::Cluster(_) => self.engine_input(Input::Packet(packet)),
            Body::ReqControl(request) => self.peer_control(from, packet.reqid, request),
            Body::ReplyControl(reply) => self.peer_replied(from, packet.reqid, reply),
            Body::Message(message) => self.deliver_message(from, message),
            Body::Keepalive(_) => {}
            other => log::warn!("node {from}: unexpected operation {}", other.operation()),
        }
    }

    /// Sends to a peer unless this node is quiet.
    fn send_to_peer(&mut self, packet: Packet) {
        if !self.quiet {
            self.transport.send(packet.destnode, packet);
        }
    }

    fn reply_to_peer(&mut self, node: Pnn, reqid: ReqId, reply: ReplyControl) {
        let generation = self.engine.generation();
        let body = Body::ReplyControl(reply);
        self.send_to_peer(Packet { generation, destnode: node, srcnode: self.pnn, reqid, body });
    }

    pub fn on_client(&mut self, event: ClientEvent) {
        match event {
            ClientEvent::Connected { client, pid, link } => {
                self.clients.insert(client, link);
                if let Some(pid) = pid {
                    self.client_pids.insert(client, pid);
                }
                self.ctdb.connected(client, pid);
            }
            ClientEvent::Gone(client) => {
                self.clients.remove(&client);
                let pid = self.client_pids.remove(&client);
                if let Some(pid) = pid.filter(|_| self.fenced_clients.remove(&client)) {
                    self.fence.tell(FenceNote::Detached(pid));
                }
                self.calls_waiting.remove(&client);
                self.ctdb_client_gone(client);
                self.client_traverses_gone(client);
                self.engine_input(Input::ClientGone(client));
            }
            ClientEvent::Packet { client, packet } => self.on_client_packet(client, packet),
        }
    }

    fn on_client_packet(&mut self, client: ClientId, packet: Packet) {
        match packet.body {
            // NULL_FUNC migrates the record here (librctdb, smbd's fetch_locked). FETCH_FUNC
            // (smbd's parse of a record it has no copy of) is answered where the record is,
            // except in a database with a change counter: smbd caches those reads by this
            // node's counter, which moves only when records here change.
            Body::ReqCall(call) if call.key.len() > MAX_KEY_LEN => {
                let msg = format!("a key of {} bytes: keys hold at most {MAX_KEY_LEN} bytes", call.key.len());
                let body = Body::ReplyError(ReplyError { status: -libc::EINVAL, msg: msg.into_bytes() });
                self.reply_to_client(client, packet.reqid, body);
            }
            Body::ReqCall(_)
                if self.calls_waiting.get(&client).is_some_and(|&n| n >= MAX_CALLS_PER_CLIENT) =>
            {
                let msg =
                    format!("{MAX_CALLS_PER_CLIENT} calls of this client wait already, the limit; refused");
                let body = Body::ReplyError(ReplyError { status: -libc::EBUSY, msg: msg.into_bytes() });
                self.reply_to_client(client, packet.reqid, body);
            }
            Body::ReqCall(call) if call.callid == CALL_NULL_FUNC || call.callid == CALL_FETCH_FUNC => {
                self.fence_client(client);
                *self.calls_waiting.entry(client).or_default() += 1;
                let kind = match call.callid {
                    CALL_NULL_FUNC => CallKind::Migrate,
                    _ if self.store.seqnum_enabled(call.db_id) => CallKind::MigrateAndRead,
                    _ => CallKind::Read,
                };
                self.engine_input(Input::ClientCall(ClientCall {
                    client,
                    reqid: packet.reqid,
                    db_id: call.db_id,
                    first_use: call.flags & CALL_FLAG_FIRST_USE != 0,
                    kind,
                    key: call.key,
                }))
            }
            Body::ReqCall(call) => {
                let msg = format!("call function {:#x} is not served by rctdbd", call.callid).into_bytes();
                self.reply_to_client(
                    client,
                    packet.reqid,
                    Body::ReplyError(ReplyError { status: -libc::ENOSYS, msg }),
                );
            }
            Body::ReqControl(request) if packet.destnode != CURRENT_NODE && packet.destnode != self.pnn => {
                self.ctdb_client_control(client, packet.reqid, packet.destnode, request)
            }
            Body::ReqControl(request) => self.client_control(client, packet.reqid, request),
            Body::Message(message) => self.ctdb_client_message(client, packet.destnode, message),
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

/// Every node's fencing watchdog: it fences two keepalive intervals after the lease's end
/// (a daemon that runs says so sooner: it ticks every 10 ms), and waits for the freeze at
/// most a dead time. DESIGN §5 has the bounds: lease, grace and freeze end before the hold.
fn start_fence_watchdog(
    dbdir: &std::path::Path,
    tunables: &crate::tunables::Tunables,
    handed: HandedFreeze,
) -> std::io::Result<FenceWatchdog> {
    let interval = Duration::from_millis(tunables.keepalive_interval_ms);
    let dead = interval.saturating_mul(u32::try_from(tunables.keepalive_limit).unwrap_or(u32::MAX));
    FenceWatchdog::start(&std::env::current_exe()?, dbdir, dead, 2 * interval, handed)
}

fn log_event(pnn: Pnn, event: &ClusterEvent) {
    match event {
        ClusterEvent::NodeDead(_) | ClusterEvent::SteppedDown { .. } | ClusterEvent::Excluded { .. } => {
            log::warn!("node {pnn}: {event:?}")
        }
        ClusterEvent::Deactivated { .. } => log::warn!("node {pnn}: {event:?}"),
        _ => log::info!("node {pnn}: {event:?}"),
    }
}
