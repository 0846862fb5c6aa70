//! The protocol engine: a pure state machine (DESIGN §2). `handle(now, input)` takes one
//! event — a packet from a peer, a local client's request, a chain lock that became free, a
//! timer tick — and pushes the actions it decides on (packets to send, answers to clients,
//! locks to wait for). No sockets, threads, files or clocks in here: records are reached
//! through `RecordStore`, time comes in as an argument. That is what lets `tests/sim/simulation.rs`
//! run thousands of seeded clusters with reordered, duplicated and lost packets, crashes,
//! restarts and partitions deterministically.
//!
//! Besides migration (`migration`), the engine keeps membership (`membership`: heartbeats,
//! who is alive, who leads, leases) and runs recoveries (`recovery`): a node serves only
//! while it is active in a generation its leader admitted it to and holds a lease; the
//! rule lives in `membership.rs` alone. `membership_rules` tests each rule.

mod attach;
mod fetch;
mod membership;
mod migration;
mod recovery;
#[cfg(any(test, feature = "sim"))]
pub mod sim;
pub mod statistics;
pub mod store;
mod vacuum;

use std::collections::{BTreeMap, HashMap, VecDeque};

use crate::wire::cluster::DbName;

use crate::hash::jenkins_hash;
use crate::tunables::Tunables;
use crate::wire::cluster::{ClusterMsg, RecordFix};
use crate::wire::{DbId, Generation, Packet, Pnn, ReqId, INVALID_GENERATION};
use membership::Membership;
pub use membership::{ClusterStatus, LockOutcome};
pub use store::{MemStore, Record, RecordStore};

/// Milliseconds on the caller's monotonic clock.
pub type Millis = u64;
/// A local client connection, numbered by the daemon.
pub type ClientId = u64;

/// `status` of a client reply: the record is now held by this node.
pub const CALL_OK: i32 = 0;
/// `status` of a client reply: the database is not attached on this node.
pub const CALL_UNKNOWN_DB: i32 = -libc::ENOENT;
/// `status` of a client reply: the record could not be read or written on this node.
pub const CALL_IO_ERROR: i32 = -libc::EIO;
/// Refused: `MAX_WAITERS_PER_KEY` requests wait for the key already.
pub const CALL_KEY_BUSY: i32 = -libc::EBUSY;
/// Requests that may wait for one key at a node. smbd and librctdb have one outstanding
/// request per connection, so only a client that floods reaches it, and only it is refused.
pub const MAX_WAITERS_PER_KEY: usize = 10_000;

/// Where a key's LMASTER is: the same answer on every node with the same vnn_map.
pub fn lmaster_of(key: &[u8], vnn_map: &[Pnn]) -> Pnn {
    debug_assert!(!vnn_map.is_empty(), "a cluster has at least this node");
    vnn_map[jenkins_hash(key) as usize % vnn_map.len()]
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub pnn: Pnn,
    /// Nodes in the nodes file: a majority is counted against this.
    pub nodes: usize,
    /// The generation a node starts in: `INVALID_GENERATION` until a recovery admits it,
    /// unless membership is off.
    pub generation: Generation,
    /// Active nodes in LMASTER order.
    pub vnn_map: Vec<Pnn>,
    /// Timers and bounds, settable at run time (`rctdb setvar`).
    pub tunables: Tunables,
    /// Heartbeats, elections and recoveries. Off only in tests of single migration steps,
    /// where every node is active in `generation` from the start and nobody ever fails.
    pub membership: bool,
    /// Leadership needs the cluster lock (`Output::TakeClusterLock`) instead of a majority.
    pub cluster_lock: bool,
    /// Seeds the generations this node picks when it leads a recovery.
    pub seed: u64,
}

impl EngineConfig {
    /// A fixed cluster: every node active in `generation` with `vnn_map`, no membership.
    pub fn new(pnn: Pnn, generation: Generation, vnn_map: Vec<Pnn>) -> EngineConfig {
        EngineConfig {
            pnn,
            nodes: vnn_map.len(),
            generation,
            vnn_map,
            tunables: Tunables::default(),
            membership: false,
            cluster_lock: false,
            seed: pnn as u64,
        }
    }

    /// A node of a cluster of `nodes` that must be admitted by a recovery before it serves.
    pub fn clustered(pnn: Pnn, nodes: usize, cluster_lock: bool, seed: u64) -> EngineConfig {
        EngineConfig {
            pnn,
            nodes,
            generation: INVALID_GENERATION,
            vnn_map: (0..nodes as Pnn).collect(),
            tunables: Tunables::default(),
            membership: true,
            cluster_lock,
            seed,
        }
    }
}

/// A local client's request to migrate a record here. With `first_use`, the client promises
/// a `ClientDone` once it has used the record, and remote requests wait for that (up to
/// `FirstUseTimeoutMs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCall {
    pub client: ClientId,
    pub reqid: ReqId,
    pub db_id: DbId,
    pub key: Vec<u8>,
    pub first_use: bool,
    pub kind: CallKind,
}

/// What a client call asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// The record, here (CTDB's NULL_FUNC with IMMEDIATE_MIGRATION): answered once it is.
    Migrate,
    /// The record here and its data in the answer: a read whose data a client caches by
    /// this node's change counter must bring the record, or a change on the node that
    /// keeps it would not move that counter.
    MigrateAndRead,
    /// Only the data (CTDB's FETCH_FUNC): answered by wherever the record is; it stays.
    Read,
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
    /// A client attaches database `db`: here, and on every live peer.
    Attach {
        client: ClientId,
        reqid: ReqId,
        db: DbName,
    },
    /// A client connection closed: it waits for nothing and holds nothing any more.
    ClientGone(ClientId),
    /// A client left this record empty (a delete, CTDB's SCHEDULE_FOR_DELETION): vacuuming
    /// removes it from every node.
    Deleted {
        db_id: DbId,
        key: Vec<u8>,
    },
    /// The chain lock the engine asked to wait for (`Output::WaitForChainLock`) is free now.
    ChainLockAvailable {
        db_id: DbId,
        key: Vec<u8>,
    },
    /// Every chain of the database is held for us (`Output::FreezeDb`): no client can use a
    /// record of it until `Output::ThawDb`.
    Frozen {
        db_id: DbId,
    },
    /// The connection to this peer broke: it is dead unless heard from again soon.
    LinkDown(Pnn),
    /// Connecting to this peer was refused: no daemon runs there, it is dead now.
    Refused(Pnn),
    /// The connection to this peer is up again: what was lost on it may be asked again.
    LinkUp(Pnn),
    /// What became of `Output::TakeClusterLock`, or that a held lock was lost.
    ClusterLock(LockOutcome),
    /// Stop (or resume) talking to peers while staying alive: a fault for tests.
    Quiet(bool),
    /// Leave the cluster: tell the peers, stop serving.
    Leave,
    Tick,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send(Packet),
    ClientReply {
        client: ClientId,
        reqid: ReqId,
        status: i32,
        /// The record's data (no header), for calls that asked for it (`CallKind`).
        data: Option<Vec<u8>>,
    },
    /// A client holds this chain lock; tell the engine (`Input::ChainLockAvailable`) once it
    /// is released. Work on that key waits; work on other keys goes on.
    WaitForChainLock {
        db_id: DbId,
        key: Vec<u8>,
    },
    /// The record is kept in memory because the file refused it for a while (a lock libtdb
    /// takes by itself was held too long); say `Input::ChainLockAvailable` once it is written.
    WaitForWrite {
        db_id: DbId,
        key: Vec<u8>,
    },
    /// Hold every chain of the database for us (clients block) and say `Input::Frozen`.
    FreezeDb {
        db_id: DbId,
    },
    /// Give back what `FreezeDb` took, or stop waiting for it.
    ThawDb {
        db_id: DbId,
    },
    /// The answer to `Input::Attach`: attached here and on every peer that answered.
    AttachDone {
        client: ClientId,
        reqid: ReqId,
        db_id: DbId,
        result: Result<(), String>,
    },
    /// Try to take the cluster lock; answer with `Input::ClusterLock`.
    TakeClusterLock,
    ReleaseClusterLock,
    /// Something an operator wants to see in the log.
    Event(ClusterEvent),
}

/// Membership and recovery events, for the log and the statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    NodeDead(Pnn),
    NodeAlive(Pnn),
    BecameLeader {
        term: u64,
    },
    SteppedDown {
        why: String,
    },
    RecoveryStarted {
        generation: Generation,
        members: Vec<Pnn>,
    },
    /// A recovery finished: `fixed` records changed, `excluded` nodes left out.
    RecoveryDone {
        generation: Generation,
        millis: Millis,
        fixed: u64,
        members: Vec<Pnn>,
    },
    Excluded {
        pnn: Pnn,
        why: String,
    },
    Deactivated {
        why: String,
    },
    Activated {
        generation: Generation,
    },
    /// This node's databases were emptied: a recovery took its records over while it was
    /// away, so its copies are from a history the cluster left.
    Emptied,
}

/// Counters an operator (and a test) can read.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct EngineStats {
    /// Requests local clients sent (records not here; a client's local hits never reach
    /// the daemon).
    pub client_calls: u64,
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
    /// Client requests refused because `MAX_WAITERS_PER_KEY` waited for their key.
    pub calls_refused_busy: u64,
    /// Clients that waited for a record to reach the file (`Output::WaitForWrite`).
    pub write_waits: u64,
    /// Milliseconds work waited for chain locks clients held, in all and at most.
    pub lock_wait_ms_total: u64,
    pub lock_wait_ms_max: u64,
    pub max_hopcount: u32,
    /// Records handed over, by how often their request was forwarded before it reached
    /// this node (`statistics::hop_bucket`).
    pub hop_buckets: [u64; statistics::HOP_BUCKETS],
    /// Requests dropped because they were forwarded `MaxHops` times (a record lost in
    /// flight: a recovery finds it again).
    pub calls_dropped_max_hops: u64,
    /// Reads (FETCH_FUNC) this node sent, and answered for peers, without moving records.
    pub fetches_sent: u64,
    pub fetches_answered: u64,
    /// Client requests that waited while this node was not serving.
    pub calls_deferred: u64,
    pub recoveries_led: u64,
    pub recoveries_joined: u64,
    /// Milliseconds the last recovery this node led took, start to activation.
    pub last_recovery_ms: u64,
    /// Of every recovery this node led: milliseconds in all and at most.
    pub recovery_ms_total: u64,
    pub recovery_ms_max: u64,
    pub records_fixed: u64,
    pub nodes_died: u64,
    /// Vacuuming: runs started, and of those the full ones (every record, not only the
    /// deleted ones).
    pub vacuum_runs: u64,
    pub vacuum_full_runs: u64,
    /// Empty records this node held and asked their LMASTER to take, and records this
    /// LMASTER migrated to itself to vacuum them.
    pub vacuum_fetches_sent: u64,
    pub vacuum_fetches: u64,
    /// Records this LMASTER deleted once every member had dropped its copy.
    pub vacuum_deleted: u64,
    /// Copies dropped at an LMASTER's request, and kept (newer, held here, or locked).
    pub vacuum_copies_dropped: u64,
    pub vacuum_copies_kept: u64,
    /// Records skipped because a client held their chain or work was pending on them:
    /// looked at again in the next run.
    pub vacuum_skipped: u64,
    /// Rounds given up because a recovery ended their generation, a member's link broke,
    /// or answers were late; their keys wait for the next run.
    pub vacuum_rounds_abandoned: u64,
}

impl std::fmt::Display for EngineStats {
    /// `name=value` pairs, one line: easy to read and to grep.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "client_calls={} calls_sent={} calls_resent={} calls_forwarded={} calls_parked={} handovers={} migrations_completed={} \
             stale_generation_dropped={} duplicates_dropped={} unknown_db_dropped={} \
             protocol_violations={} store_errors={} lock_waits={} calls_refused_busy={} write_waits={} lock_wait_ms_total={} lock_wait_ms_max={} max_hopcount={} calls_dropped_max_hops={} \
             fetches_sent={} fetches_answered={} calls_deferred={} recoveries_led={} recoveries_joined={} last_recovery_ms={} recovery_ms_total={} recovery_ms_max={} records_fixed={} \
             nodes_died={} vacuum_runs={} vacuum_full_runs={} vacuum_fetches_sent={} vacuum_fetches={} vacuum_deleted={} \
             vacuum_copies_dropped={} vacuum_copies_kept={} vacuum_skipped={} vacuum_rounds_abandoned={}",
            self.client_calls,
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
            self.calls_refused_busy,
            self.write_waits,
            self.lock_wait_ms_total,
            self.lock_wait_ms_max,
            self.max_hopcount,
            self.calls_dropped_max_hops,
            self.fetches_sent,
            self.fetches_answered,
            self.calls_deferred,
            self.recoveries_led,
            self.recoveries_joined,
            self.last_recovery_ms,
            self.recovery_ms_total,
            self.recovery_ms_max,
            self.records_fixed,
            self.nodes_died,
            self.vacuum_runs,
            self.vacuum_full_runs,
            self.vacuum_fetches_sent,
            self.vacuum_fetches,
            self.vacuum_deleted,
            self.vacuum_copies_dropped,
            self.vacuum_copies_kept,
            self.vacuum_skipped,
            self.vacuum_rounds_abandoned
        )
    }
}

/// A local client waiting for a migration.
#[derive(Debug)]
struct Waiter {
    client: ClientId,
    reqid: ReqId,
    first_use: bool,
    kind: CallKind,
}

impl Waiter {
    /// Whether its answer carries the record's data.
    fn wants_data(&self) -> bool {
        self.kind != CallKind::Migrate
    }
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
    /// Waits double with every resend, up to `max_ms`: a lost request is asked again soon,
    /// an unreachable record is not asked for in a storm.
    fn resend_due(&self, now: Millis, resend_ms: Millis, max_ms: Millis) -> bool {
        resend_due(self.sent_at, self.resends, now, resend_ms, max_ms)
    }
}

/// Whether a request sent at `sent_at` and resent `resends` times is late: the wait
/// doubles with every resend, up to `max_ms`.
fn resend_due(sent_at: Millis, resends: u32, now: Millis, resend_ms: Millis, max_ms: Millis) -> bool {
    let wait = resend_ms.saturating_mul(1 << resends.min(16)).min(max_ms);
    now.saturating_sub(sent_at) >= wait
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
    /// Since when `lock_wait` waits, for the statistics.
    locked_out_since: Option<Millis>,
}

impl KeyState {
    /// Requests waiting for the key: behind its lock, its migration, or first use.
    fn waiting(&self) -> usize {
        self.lock_wait.len() + self.parked.len() + self.migration.as_ref().map_or(0, |m| m.waiters.len())
    }

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
    /// A recovery's change to this node's copy of the record.
    Fix {
        db_id: DbId,
        key: Vec<u8>,
        fix: RecordFix,
    },
}

impl Work {
    /// Work a peer sent in this generation: void once the generation ends.
    fn is_remote(&self) -> bool {
        matches!(self, Work::Call { .. } | Work::ReqDmaster { .. } | Work::ReplyDmaster { .. })
    }
}

impl Work {
    fn slot(&self) -> (DbId, &[u8]) {
        match self {
            Work::Call { call, .. } => (call.db_id, &call.key),
            Work::ReqDmaster { req, .. } => (req.db_id, &req.key),
            Work::ReplyDmaster { reply, .. } => (reply.db_id, &reply.key),
            Work::ClientCall(ClientCall { db_id, key, .. })
            | Work::Resend { db_id, key }
            | Work::Fix { db_id, key, .. } => (*db_id, key),
        }
    }
}

pub struct Engine {
    config: EngineConfig,
    /// Attached databases by id, with their names (a recovery attaches them everywhere).
    dbs: BTreeMap<DbId, String>,
    keys: HashMap<(DbId, Vec<u8>), KeyState>,
    ready: VecDeque<Work>,
    /// Cluster messages from peers and from this node itself (the leader is a member of its
    /// own recoveries), handled in arrival order.
    inbox: VecDeque<(Pnn, ClusterMsg)>,
    next_reqid: ReqId,
    now: Millis,
    stats: EngineStats,
    cluster: Membership,
    recoveries: recovery::Recoveries,
    attaches: BTreeMap<u32, attach::PendingAttach>,
    next_attach_id: u32,
    /// Reads sent for local clients, by reqid.
    fetches: BTreeMap<ReqId, fetch::Fetch>,
    vacuum: vacuum::Vacuum,
    traffic: statistics::Traffic,
}

impl Engine {
    pub fn new(config: EngineConfig) -> Engine {
        let cluster = Membership::new(&config);
        Engine {
            config,
            dbs: BTreeMap::new(),
            keys: HashMap::new(),
            ready: VecDeque::new(),
            inbox: VecDeque::new(),
            next_reqid: 1,
            now: 0,
            stats: EngineStats::default(),
            cluster,
            recoveries: recovery::Recoveries::default(),
            attaches: BTreeMap::new(),
            next_attach_id: 1,
            fetches: BTreeMap::new(),
            vacuum: vacuum::Vacuum::default(),
            traffic: statistics::Traffic::default(),
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

    fn waiting_on(&self, db_id: DbId, key: &[u8]) -> usize {
        // A lookup without building the (db, key) pair's owned key would need a borrowed
        // form of it; the copy is one small allocation per call.
        self.keys.get(&(db_id, key.to_vec())).map_or(0, KeyState::waiting)
    }

    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Volatile databases the engine migrates records of; packets for others are dropped.
    pub fn attach_db(&mut self, db_id: DbId, name: &str) {
        self.dbs.insert(db_id, name.to_owned());
    }

    pub fn tunables(&self) -> &Tunables {
        &self.config.tunables
    }

    pub fn tunables_mut(&mut self) -> &mut Tunables {
        &mut self.config.tunables
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
        if self.cluster.quiet() && !matches!(input, Input::Quiet(_) | Input::Leave) {
            // Quiet: deaf to peers; clients' requests wait like while not serving.
            match input {
                Input::Packet(_) | Input::LinkDown(_) | Input::LinkUp(_) | Input::Refused(_) => return,
                _ => {}
            }
        }
        self.check_lease(out);
        match input {
            Input::Packet(packet) => self.accept_packet(packet, out),
            Input::ClientCall(call) if !self.active() => {
                self.stats.client_calls += 1;
                self.stats.calls_deferred += 1;
                self.defer_call(call);
            }
            Input::ClientCall(call) => {
                self.stats.client_calls += 1;
                if self.waiting_on(call.db_id, &call.key) >= MAX_WAITERS_PER_KEY {
                    self.stats.calls_refused_busy += 1;
                    let (client, reqid) = (call.client, call.reqid);
                    out.push(Output::ClientReply { client, reqid, status: CALL_KEY_BUSY, data: None });
                    return;
                }
                self.ready.push_back(Work::ClientCall(call))
            }
            Input::Attach { client, reqid, db } => self.attach_for_client(client, reqid, db, store, out),
            Input::ClientDone { client, db_id, key } => self.end_first_use(db_id, &key, Some(client)),
            Input::ClientGone(client) => self.forget_client(client),
            Input::Deleted { db_id, key } => self.schedule_for_deletion(db_id, key),
            Input::ChainLockAvailable { db_id, key } => {
                if let Some(state) = self.keys.get_mut(&(db_id, key)) {
                    if let Some(since) = state.locked_out_since.take() {
                        self.stats.note_lock_wait(now.saturating_sub(since));
                    }
                    self.ready.extend(state.lock_wait.drain(..));
                }
            }
            Input::Frozen { db_id } => self.frozen(db_id, store, out),
            Input::LinkDown(pnn) => {
                self.vacuum_link_down(pnn);
                self.link_down(pnn)
            }
            Input::Refused(pnn) => self.refused(pnn, out),
            Input::LinkUp(pnn) => self.link_up(pnn, out),
            Input::ClusterLock(outcome) => self.cluster_lock_outcome(outcome, out),
            Input::Quiet(quiet) => self.set_quiet(quiet, out),
            Input::Leave => self.leave(out),
            Input::Tick => {
                self.expire_first_uses();
                self.expire_attaches(out);
                if self.active() {
                    self.resend_late_migrations();
                    self.resend_late_fetches(out);
                    self.vacuum_tick(store, out);
                }
                self.membership_tick(out);
            }
        }
        self.run_ready(store, out);
    }

    /// Runs queued work and messages to ourselves until none is left.
    fn run_ready(&mut self, store: &mut dyn RecordStore, out: &mut Vec<Output>) {
        loop {
            if let Some(work) = self.ready.pop_front() {
                let slot = (work.slot().0, work.slot().1.to_vec());
                self.step(work, store, out);
                self.drop_if_idle(&slot);
            } else if let Some((from, msg)) = self.inbox.pop_front() {
                self.cluster_message(from, msg, store, out);
            } else {
                return;
            }
        }
    }

    /// Keeps `keys` to the keys with something pending, so nothing grows with traffic.
    fn drop_if_idle(&mut self, slot: &(DbId, Vec<u8>)) {
        if self.keys.get(slot).is_some_and(KeyState::is_idle) {
            self.keys.remove(slot);
        }
    }

    fn accept_packet(&mut self, packet: Packet, out: &mut Vec<Output>) {
        use crate::wire::Body;
        if let Body::Cluster(msg) = packet.body {
            return self.inbox.push_back((packet.srcnode, msg));
        }
        if !self.active() || packet.generation != self.config.generation {
            // A packet from before a recovery: its view of who holds what is void.
            self.stats.stale_generation_dropped += 1;
            return;
        }
        let work = match packet.body {
            Body::ReqCall(call) => Work::Call { origin: packet.srcnode, reqid: packet.reqid, call },
            Body::ReqDmaster(req) => Work::ReqDmaster { from: packet.srcnode, reqid: packet.reqid, req },
            Body::ReplyDmaster(reply) => Work::ReplyDmaster { from: packet.srcnode, reply },
            Body::ReplyCall(reply) => return self.fetch_answered(packet.reqid, reply.data, out),
            other => {
                log::warn!("engine: unexpected operation {} from node {}", other.operation(), packet.srcnode);
                return;
            }
        };
        self.ready.push_back(work);
    }

    fn forget_client(&mut self, client: ClientId) {
        self.forget_fetches_of(client);
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
        let now = self.now;
        let (resend_ms, max_ms) =
            (self.config.tunables.migration_resend_ms, self.config.tunables.migration_resend_max_ms);
        let mut late: Vec<(DbId, Vec<u8>)> = self
            .keys
            .iter()
            .filter(|(_, state)| {
                state.migration.as_ref().is_some_and(|m| m.resend_due(now, resend_ms, max_ms))
            })
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
        if !self.dbs.contains_key(&db_id) {
            self.stats.unknown_db_dropped += 1;
            log::warn!("engine: request for unattached db {db_id:#x}");
            if work.is_remote() {
                // A peer has it: we missed its attach. The recovery this asks for attaches
                // every member's databases.
                self.report_trouble(format!("a peer uses db {db_id:#x}, which is not attached here"), out);
            }
            if let Work::ClientCall(call) = work {
                out.push(Output::ClientReply {
                    client: call.client,
                    reqid: call.reqid,
                    status: CALL_UNKNOWN_DB,
                    data: None,
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
            state.locked_out_since = Some(self.now);
            let key = work.slot().1.to_vec();
            state.lock_wait.push_back(work);
            out.push(Output::WaitForChainLock { db_id, key });
            return;
        }
        let key = work.slot().1.to_vec();
        match store.fetch(db_id, &key) {
            Ok(record) => self.step_locked(work, record, store, out),
            Err(err) => self.unreadable(work, &err.to_string(), out),
        }
        store.unlock(db_id, &key);
    }

    /// A record could not be read. Never taken for "absent": at an LMASTER that would mint a
    /// second DMASTER. A record arriving here that cannot be read over cannot be kept
    /// either, so this node leaves the cluster and a recovery finds the record's other copy.
    fn unreadable(&mut self, work: Work, err: &str, out: &mut Vec<Output>) {
        self.stats.store_errors += 1;
        let (db_id, _) = work.slot();
        log::error!("engine: reading a record of db {db_id:#x} failed: {err}");
        match work {
            Work::ClientCall(call) => out.push(Output::ClientReply {
                client: call.client,
                reqid: call.reqid,
                status: CALL_IO_ERROR,
                data: None,
            }),
            Work::ReqDmaster { .. } | Work::ReplyDmaster { .. } | Work::Fix { .. } => {
                self.ban_self(&format!("reading a record of db {db_id:#x} failed: {err}"), out)
            }
            Work::Call { .. } | Work::Resend { .. } => {}
        }
    }
}

#[cfg(test)]
mod membership_rules;
#[cfg(test)]
mod tests;
