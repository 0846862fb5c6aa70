//! The protocol engine: a pure state machine (DESIGN §2). `handle(now, input)` takes one
//! event — a packet from a peer, a local client's request, a chain lock that became free, a
//! timer tick — and pushes the actions it decides on (packets to send, answers to clients,
//! locks to wait for). No sockets, threads, files or clocks in here: records are reached
//! through `RecordStore`, time comes in as an argument. That is what lets `tests/simulation.rs`
//! run thousands of seeded clusters with reordered and duplicated packets deterministically.

mod migration;
pub mod store;

use std::collections::{HashMap, HashSet, VecDeque};

use crate::hash::jenkins_hash;
use crate::wire::{DbId, Generation, Packet, Pnn, ReqId};
pub use store::{MemStore, Record, RecordStore};

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;
/// A local client connection, numbered by the daemon.
pub type ClientId = u64;

/// `status` of a client reply: the record is now held by this node.
pub const CALL_OK: i32 = 0;
/// `status` of a client reply: the database is not attached on this node.
pub const CALL_UNKNOWN_DB: i32 = -libc::ENOENT;

/// Where a key's LMASTER is: the same answer on every node with the same vnn_map.
pub fn lmaster_of(key: &[u8], vnn_map: &[Pnn]) -> Pnn {
    debug_assert!(!vnn_map.is_empty(), "a cluster has at least this node");
    vnn_map[jenkins_hash(key) as usize % vnn_map.len()]
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub pnn: Pnn,
    pub generation: Generation,
    /// Active nodes in LMASTER order.
    pub vnn_map: Vec<Pnn>,
    /// After a record arrives for waiting local clients, remote requests for it wait until
    /// those clients had their turn (they say so with `ClientDone`) or this long at most.
    /// Without it, a busy record can bounce between nodes with no client ever using it.
    pub first_use_timeout_ms: Millis,
    /// A migration not done after this long sends its request again (with a new reqid),
    /// then after twice as long, and so on: links drop packets while they are down.
    /// Duplicates are harmless.
    pub migration_resend_ms: Millis,
    /// Requests forwarded more often than this are logged: routing is going in circles.
    pub hopcount_warning: u32,
}

impl EngineConfig {
    pub fn new(pnn: Pnn, generation: Generation, vnn_map: Vec<Pnn>) -> EngineConfig {
        EngineConfig {
            pnn,
            generation,
            vnn_map,
            first_use_timeout_ms: 200,
            migration_resend_ms: 2000,
            hopcount_warning: 100,
        }
    }
}

/// A local client's request to migrate a record here. With `first_use`, the client promises
/// a `ClientDone` once it has used the record, and remote requests wait for that (up to
/// `first_use_timeout_ms`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCall {
    pub client: ClientId,
    pub reqid: ReqId,
    pub db_id: DbId,
    pub key: Vec<u8>,
    pub first_use: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A packet from a peer, after the transport checked who sent it.
    Packet(Packet),
    /// A local client found the record not here and asks for it to be migrated here.
    ClientCall(ClientCall),
    /// A client that was answered after a migration has used (or given up on) the record.
    ClientDone {
        client: ClientId,
        db_id: DbId,
        key: Vec<u8>,
    },
    /// A client connection closed: it waits for nothing and holds nothing any more.
    ClientGone(ClientId),
    /// The chain lock the engine asked to wait for (`Output::WaitForChainLock`) is free now.
    ChainLockAvailable {
        db_id: DbId,
        key: Vec<u8>,
    },
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send(Packet),
    ClientReply {
        client: ClientId,
        reqid: ReqId,
        status: i32,
    },
    /// A client holds this chain lock; tell the engine (`Input::ChainLockAvailable`) once it
    /// is released. Work on that key waits; work on other keys goes on.
    WaitForChainLock {
        db_id: DbId,
        key: Vec<u8>,
    },
}

/// Counters an operator (and a test) can read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineStats {
    pub calls_sent: u64,
    pub calls_resent: u64,
    pub calls_forwarded: u64,
    pub calls_parked: u64,
    pub handovers: u64,
    pub migrations_completed: u64,
    pub stale_generation_dropped: u64,
    pub duplicates_dropped: u64,
    pub unknown_db_dropped: u64,
    /// An LMASTER got a record from a node it did not believe to be DMASTER.
    pub protocol_violations: u64,
    pub store_errors: u64,
    pub lock_waits: u64,
    pub max_hopcount: u32,
}

impl std::fmt::Display for EngineStats {
    /// `name=value` pairs, one line: easy to read and to grep.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "calls_sent={} calls_resent={} calls_forwarded={} calls_parked={} handovers={} migrations_completed={} \
             stale_generation_dropped={} duplicates_dropped={} unknown_db_dropped={} \
             protocol_violations={} store_errors={} lock_waits={} max_hopcount={}",
            self.calls_sent,
            self.calls_resent,
            self.calls_forwarded,
            self.calls_parked,
            self.handovers,
            self.migrations_completed,
            self.stale_generation_dropped,
            self.duplicates_dropped,
            self.unknown_db_dropped,
            self.protocol_violations,
            self.store_errors,
            self.lock_waits,
            self.max_hopcount
        )
    }
}

/// A local client waiting for a migration.
#[derive(Debug)]
struct Waiter {
    client: ClientId,
    reqid: ReqId,
    first_use: bool,
}

/// A migration this node asked for and has not received yet.
#[derive(Debug)]
struct Migration {
    reqid: ReqId,
    waiters: Vec<Waiter>,
    /// When the REQ_CALL went out (again): a request lost on a broken link is sent anew.
    sent_at: Millis,
    /// How often it was sent again; each time the wait doubles, so resends cannot storm.
    resends: u32,
}

impl Migration {
    fn resend_due(&self, now: Millis, resend_ms: Millis) -> bool {
        let wait = resend_ms.saturating_mul(1 << self.resends.min(16));
        now.saturating_sub(self.sent_at) >= wait
    }
}

/// The clients answered by the last arrival, who get the first go at the record.
#[derive(Debug)]
struct FirstUse {
    clients: Vec<ClientId>,
    deadline: Millis,
}

/// Everything the engine remembers about one key; dropped as soon as it is all empty.
#[derive(Debug, Default)]
struct KeyState {
    migration: Option<Migration>,
    first_use: Option<FirstUse>,
    /// Remote requests for the record, waiting until the local clients had their first use.
    parked: VecDeque<Work>,
    /// Work waiting for a chain lock that a client holds, in arrival order.
    lock_wait: VecDeque<Work>,
}

impl KeyState {
    fn is_idle(&self) -> bool {
        self.migration.is_none()
            && self.first_use.is_none()
            && self.parked.is_empty()
            && self.lock_wait.is_empty()
    }
}

/// One step of work on one key; each needs that key's chain lock.
#[derive(Debug, Clone)]
enum Work {
    Call {
        origin: Pnn,
        reqid: ReqId,
        call: crate::wire::ReqCall,
    },
    ReqDmaster {
        from: Pnn,
        reqid: ReqId,
        req: crate::wire::ReqDmaster,
    },
    ReplyDmaster {
        from: Pnn,
        reply: crate::wire::ReplyDmaster,
    },
    ClientCall(ClientCall),
    /// Our migration of this key has taken too long: ask again.
    Resend {
        db_id: DbId,
        key: Vec<u8>,
    },
}

impl Work {
    fn slot(&self) -> (DbId, &[u8]) {
        match self {
            Work::Call { call, .. } => (call.db_id, &call.key),
            Work::ReqDmaster { req, .. } => (req.db_id, &req.key),
            Work::ReplyDmaster { reply, .. } => (reply.db_id, &reply.key),
            Work::ClientCall(ClientCall { db_id, key, .. }) | Work::Resend { db_id, key } => (*db_id, key),
        }
    }
}

pub struct Engine {
    config: EngineConfig,
    dbs: HashSet<DbId>,
    keys: HashMap<(DbId, Vec<u8>), KeyState>,
    ready: VecDeque<Work>,
    next_reqid: ReqId,
    now: Millis,
    stats: EngineStats,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            config,
            dbs: HashSet::new(),
            keys: HashMap::new(),
            ready: VecDeque::new(),
            next_reqid: 1,
            now: 0,
            stats: EngineStats::default(),
        }
    }

    pub fn pnn(&self) -> Pnn {
        self.config.pnn
    }

    pub fn generation(&self) -> Generation {
        self.config.generation
    }

    pub fn vnn_map(&self) -> &[Pnn] {
        &self.config.vnn_map
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Volatile databases the engine migrates records of; packets for others are dropped.
    pub fn attach_db(&mut self, db_id: DbId) {
        self.dbs.insert(db_id);
    }

    pub fn lmaster(&self, key: &[u8]) -> Pnn {
        lmaster_of(key, &self.config.vnn_map)
    }

    /// How many keys have something pending: bounded by what is in flight, not by traffic.
    pub fn keys_pending(&self) -> usize {
        self.keys.len()
    }

    /// Whether the engine has anything pending for `key`: a migration, parked or locked-out
    /// work, or clients' first use.
    pub fn key_busy(&self, db_id: DbId, key: &[u8]) -> bool {
        self.keys.get(&(db_id, key.to_vec())).is_some_and(|state| !state.is_idle())
    }

    pub fn handle(&mut self, now: Millis, input: Input, store: &mut dyn RecordStore, out: &mut Vec<Output>) {
        self.now = now;
        match input {
            Input::Packet(packet) => self.accept_packet(packet),
            Input::ClientCall(call) => self.ready.push_back(Work::ClientCall(call)),
            Input::ClientDone { client, db_id, key } => self.end_first_use(db_id, &key, Some(client)),
            Input::ClientGone(client) => self.forget_client(client),
            Input::ChainLockAvailable { db_id, key } => {
                if let Some(state) = self.keys.get_mut(&(db_id, key)) {
                    self.ready.extend(state.lock_wait.drain(..));
                }
            }
            Input::Tick => {
                self.expire_first_uses();
                self.resend_late_migrations();
            }
        }
        while let Some(work) = self.ready.pop_front() {
            let slot = (work.slot().0, work.slot().1.to_vec());
            self.step(work, store, out);
            self.drop_if_idle(&slot);
        }
    }

    /// Keeps `keys` to the keys with something pending, so nothing grows with traffic.
    fn drop_if_idle(&mut self, slot: &(DbId, Vec<u8>)) {
        if self.keys.get(slot).is_some_and(KeyState::is_idle) {
            self.keys.remove(slot);
        }
    }

    fn accept_packet(&mut self, packet: Packet) {
        use crate::wire::Body;
        if packet.generation != self.config.generation {
            // A packet from before a recovery: its view of who holds what is void.
            self.stats.stale_generation_dropped += 1;
            return;
        }
        let work = match packet.body {
            Body::ReqCall(call) => Work::Call { origin: packet.srcnode, reqid: packet.reqid, call },
            Body::ReqDmaster(req) => Work::ReqDmaster { from: packet.srcnode, reqid: packet.reqid, req },
            Body::ReplyDmaster(reply) => Work::ReplyDmaster { from: packet.srcnode, reply },
            other => {
                log::warn!("engine: unexpected operation {} from node {}", other.operation(), packet.srcnode);
                return;
            }
        };
        self.ready.push_back(work);
    }

    fn forget_client(&mut self, client: ClientId) {
        // Sorted: the order work is replayed in must not depend on the hash map's seed.
        let mut keys: Vec<(DbId, Vec<u8>)> = self.keys.keys().cloned().collect();
        keys.sort();
        for slot in keys {
            if let Some(state) = self.keys.get_mut(&slot) {
                // Its requests that wait for a chain lock go; a migration already asked
                // for goes on: the record must land somewhere, and another client may ask
                // for it before it does.
                state
                    .lock_wait
                    .retain(|work| !matches!(work, Work::ClientCall(call) if call.client == client));
                if let Some(migration) = state.migration.as_mut() {
                    migration.waiters.retain(|waiter| waiter.client != client);
                }
            }
            self.end_first_use(slot.0, &slot.1, Some(client));
            self.drop_if_idle(&slot);
        }
    }

    fn expire_first_uses(&mut self) {
        let now = self.now;
        let mut expired: Vec<(DbId, Vec<u8>)> = self
            .keys
            .iter()
            .filter(|(_, state)| state.first_use.as_ref().is_some_and(|f| f.deadline <= now))
            .map(|(slot, _)| slot.clone())
            .collect();
        expired.sort(); // a replay order independent of the hash map's seed
        for (db_id, key) in expired {
            log::debug!("engine: first use of a record in db {db_id:#x} timed out");
            self.end_first_use(db_id, &key, None);
        }
    }

    fn resend_late_migrations(&mut self) {
        let (now, resend_ms) = (self.now, self.config.migration_resend_ms);
        let mut late: Vec<(DbId, Vec<u8>)> = self
            .keys
            .iter()
            .filter(|(_, state)| state.migration.as_ref().is_some_and(|m| m.resend_due(now, resend_ms)))
            .map(|(slot, _)| slot.clone())
            .collect();
        late.sort(); // a replay order independent of the hash map's seed
        self.ready.extend(late.into_iter().map(|(db_id, key)| Work::Resend { db_id, key }));
    }

    /// `client` is done with its first use (or, with `None`, everybody is): once no
    /// reserved client is left, the parked remote requests run.
    fn end_first_use(&mut self, db_id: DbId, key: &[u8], client: Option<ClientId>) {
        let Some(state) = self.keys.get_mut(&(db_id, key.to_vec())) else { return };
        let Some(first_use) = state.first_use.as_mut() else { return };
        match client {
            Some(client) => first_use.clients.retain(|c| *c != client),
            None => first_use.clients.clear(),
        }
        if first_use.clients.is_empty() {
            state.first_use = None;
            self.ready.extend(state.parked.drain(..));
            self.drop_if_idle(&(db_id, key.to_vec()));
        }
    }

    fn next_reqid(&mut self) -> ReqId {
        let reqid = self.next_reqid;
        self.next_reqid = self.next_reqid.wrapping_add(1).max(1);
        reqid
    }

    /// Runs one piece of work under its key's chain lock, or queues it behind the lock.
    fn step(&mut self, work: Work, store: &mut dyn RecordStore, out: &mut Vec<Output>) {
        let (db_id, key) = work.slot();
        if !self.dbs.contains(&db_id) {
            self.stats.unknown_db_dropped += 1;
            log::warn!("engine: request for unattached db {db_id:#x}");
            if let Work::ClientCall(call) = work {
                out.push(Output::ClientReply {
                    client: call.client,
                    reqid: call.reqid,
                    status: CALL_UNKNOWN_DB,
                });
            }
            return;
        }
        let slot = (db_id, key.to_vec());
        let state = self.keys.entry(slot).or_default();
        // Keep arrival order per key: nothing overtakes work already waiting for the lock.
        if !state.lock_wait.is_empty() {
            state.lock_wait.push_back(work);
            return;
        }
        if !store.try_lock(db_id, work.slot().1) {
            self.stats.lock_waits += 1;
            let key = work.slot().1.to_vec();
            state.lock_wait.push_back(work);
            out.push(Output::WaitForChainLock { db_id, key });
            return;
        }
        let key = work.slot().1.to_vec();
        let record = store.fetch(db_id, &key);
        self.step_locked(work, record, store, out);
        store.unlock(db_id, &key);
    }
}

#[cfg(test)]
mod tests;
