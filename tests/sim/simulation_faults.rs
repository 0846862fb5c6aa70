//! Deterministic simulation of membership and recovery (DESIGN §5, §7.2): 2–5 engines with
//! heartbeats, elections (with or without a cluster lock) and recoveries, on a seeded network
//! that delays, reorders, duplicates and drops packets and resets links, while nodes crash
//! and restart with empty databases, go quiet, are partitioned off and fail to store.
//! Clients use records the way smbd does: under the chain lock, each operation either
//! writes the record (its data is the operation's number) or deletes it (leaves it empty,
//! and mostly tells the engine, as smbd's SCHEDULE_FOR_DELETION does), and records are
//! created again after being deleted. Engines vacuum (DESIGN §8.5) while all this and the
//! faults go on. In some seeds keys share hash chains, so work on one record waits for a
//! client's lock on another.
//!
//! Checked after every step: no two active nodes of one generation hold a record, and no
//! node's RSN of a record goes down (unless vacuuming deleted that copy). Whenever a client
//! looks at a record it holds, and at the end for every key, what it sees is what an
//! acknowledged operation left: with no fault that may lose records, exactly the last one
//! (so a deleted record never comes back and a live one is never vacuumed); otherwise one
//! no older than the last operation acknowledged while the cluster was settled since that
//! fault. At the end, after vacuuming had time to run: no node keeps any copy of a key that
//! is deleted; every client request was answered within a bound.
//!
//! `RCTDB_SIM_SEEDS=N` runs more seeds; `RCTDB_SIM_SEED=S` replays one seed with a trace.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::sim_support;

use sim_support::{counter_value, key_name, Rng};

use rctdb::engine::store::LockOwner;
use rctdb::engine::{
    CallKind, ClientCall, ClientId, ClusterEvent, Engine, EngineConfig, Input, LockOutcome, MemStore, Output,
    Record, CALL_IO_ERROR,
};
use rctdb::wire::cluster::{ClusterMsg, DbName};
use rctdb::wire::{Body, DbId, Packet, Pnn, ReqId};

const DB: DbId = 0x5eed;
const TICK_MS: u64 = 10;
/// No client request may wait longer (simulated ms): well past a few recoveries.
const MAX_WAIT_MS: u64 = 60_000;
/// Simulated time after the clients finished and the cluster settled, for vacuuming to
/// remove what was deleted: several runs, a full one among them, and a round's timeout.
const DRAIN_MS: u64 = 4_000;

#[derive(Debug, Clone, Copy)]
struct Params {
    nodes: usize,
    clients_per_node: usize,
    increments: usize,
    keys: usize,
    cluster_lock: bool,
    fifo_links: bool,
    /// Per mille of packets lost, duplicated.
    drop: u64,
    duplicate: u64,
    /// Faults injected over the run, and the per-mille chance per step of the next one.
    faults: u32,
    fault_rate: u64,
    /// Hash chains per node's store: with few, keys share chain locks.
    chains: Option<u32>,
    /// Per mille of operations that delete the record, and of deletes the engine is told of.
    deletes: u64,
    scheduled: u64,
    vacuum_interval_ms: u64,
    vacuum_fast_path_count: u64,
}

impl Params {
    fn for_seed(seed: u64) -> Params {
        let mut rng = Rng(seed ^ 0x5a5a);
        let nodes = 2 + rng.below64(4) as usize;
        Params {
            nodes,
            clients_per_node: 1 + rng.below64(2) as usize,
            increments: 5 + rng.below64(15) as usize,
            keys: 1 + rng.below64(4) as usize,
            // Two nodes have no majority without one of them: they need the lock.
            cluster_lock: nodes == 2 || rng.per_mille(400),
            fifo_links: rng.per_mille(800),
            drop: if rng.per_mille(400) { 1 + rng.below64(20) } else { 0 },
            duplicate: if rng.per_mille(200) { 10 } else { 0 },
            faults: rng.below64(4) as u32,
            fault_rate: 1 + rng.below64(3),
            chains: if rng.per_mille(300) { Some(1 + rng.below64(2) as u32) } else { None },
            deletes: if rng.per_mille(800) { 100 + rng.below64(400) } else { 0 },
            scheduled: 500 + rng.below64(501),
            vacuum_interval_ms: 20 + rng.below64(300),
            vacuum_fast_path_count: 1 + rng.below64(5),
        }
    }
}

#[derive(Debug, PartialEq, Clone, Copy)]
enum ClientState {
    /// Attaches the database (cluster-wide) before its first increment.
    Attaching,
    WaitingAttach,
    Ready,
    WaitingLock,
    HoldingLock,
    WaitingReply {
        since: u64,
    },
    /// A read (FETCH_FUNC: the data, the record stays where it is) before asking for the
    /// record itself.
    WaitingRead {
        since: u64,
    },
    Finished,
    Crashed,
}

struct Client {
    id: ClientId,
    node: Pnn,
    key: Vec<u8>,
    state: ClientState,
    remaining: usize,
    next_reqid: ReqId,
    owes_done: bool,
    /// When the client process starts (and attaches its database).
    starts_at: u64,
}

struct SimNode {
    engine: Engine,
    store: MemStore,
    up: bool,
    lock_waits: Vec<Vec<u8>>,
    freeze_pending: bool,
    restart_at: Option<u64>,
    quiet_until: Option<u64>,
    failing_until: Option<u64>,
    /// Writes kept in memory (a lock libtdb needs held too long), and the keys whose
    /// clients wait for them (`Output::WaitForWrite`).
    refusing_until: Option<u64>,
    write_waits: Vec<Vec<u8>>,
    incarnation: u64,
}

struct Sim {
    seed: u64,
    p: Params,
    rng: Rng,
    now: u64,
    nodes: Vec<SimNode>,
    clients: Vec<Client>,
    links: BTreeMap<(Pnn, Pnn), VecDeque<Packet>>,
    to_engine: Vec<VecDeque<Input>>,
    to_client: Vec<VecDeque<(i32, Option<Vec<u8>>)>>,
    lock_available: VecDeque<(Pnn, Vec<u8>)>,
    lock_outcomes: VecDeque<(Pnn, LockOutcome)>,
    lock_holder: Option<Pnn>,
    /// One side of a partition and when it heals.
    partition: Option<(BTreeSet<Pnn>, u64)>,
    faults_left: u32,
    /// Every key's acknowledged operations, in order.
    histories: BTreeMap<Vec<u8>, History>,
    disrupted: bool,
    store_failures_seen: bool,
    last_rsn: BTreeMap<(Pnn, Vec<u8>), u64>,
    coverage: Coverage,
    trace: bool,
    /// Set once clients are done and the cluster settled: vacuuming runs until then.
    drain_until: Option<u64>,
}

/// What a record holds: the number of the operation that wrote it, or nothing (deleted,
/// or never written).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Written(u64),
    Deleted,
}

impl State {
    fn of(data: &[u8]) -> State {
        if data.is_empty() {
            State::Deleted
        } else {
            State::Written(counter_value(data))
        }
    }
}

/// One key's acknowledged operations: operation `n` (from 1) wrote `Written(n)` or deleted.
#[derive(Debug, Default)]
struct History {
    ops: u64,
    deletes: BTreeSet<u64>,
    /// The last operation acknowledged while the cluster was settled since the last fault
    /// that may lose records: it cannot be undone.
    sure: Option<u64>,
}

impl History {
    fn last(&self) -> State {
        match self.ops {
            0 => State::Deleted,
            n if self.deletes.contains(&n) => State::Deleted,
            n => State::Written(n),
        }
    }

    /// Whether `seen` is what some acknowledged operation left that may still be the latest
    /// one standing: exactly the last without a disruption; otherwise one no older than the
    /// last sure operation (or any, and the record lost entirely, without one).
    fn explains(&self, seen: State, disrupted: bool) -> bool {
        if !disrupted {
            return seen == self.last();
        }
        let from = self.sure.unwrap_or(0);
        match seen {
            State::Written(n) => n >= from.max(1) && n <= self.ops && !self.deletes.contains(&n),
            State::Deleted => self.sure.is_none() || self.deletes.range(from..).next().is_some(),
        }
    }
}

#[derive(Debug, Default)]
struct Coverage {
    steps: u64,
    migrations: u64,
    recoveries: u64,
    records_fixed: u64,
    crashes: u64,
    quiets: u64,
    partitions: u64,
    store_failures: u64,
    writes_held: u64,
    write_waits: u64,
    link_resets: u64,
    dropped: u64,
    max_hop_drops: u64,
    deaths: u64,
    lock_waits: u64,
    attaches_sent: u64,
    reads: u64,
    deletes: u64,
    recreations: u64,
    vacuumed: u64,
    vacuum_copies_dropped: u64,
    vacuum_copies_kept: u64,
    vacuum_rounds_abandoned: u64,
    vacuum_fetches: u64,
}

impl Coverage {
    fn add(&mut self, o: &Coverage) {
        self.steps += o.steps;
        self.migrations += o.migrations;
        self.recoveries += o.recoveries;
        self.records_fixed += o.records_fixed;
        self.crashes += o.crashes;
        self.quiets += o.quiets;
        self.partitions += o.partitions;
        self.store_failures += o.store_failures;
        self.writes_held += o.writes_held;
        self.write_waits += o.write_waits;
        self.link_resets += o.link_resets;
        self.dropped += o.dropped;
        self.max_hop_drops += o.max_hop_drops;
        self.deaths += o.deaths;
        self.lock_waits += o.lock_waits;
        self.attaches_sent += o.attaches_sent;
        self.reads += o.reads;
        self.deletes += o.deletes;
        self.recreations += o.recreations;
        self.vacuumed += o.vacuumed;
        self.vacuum_copies_dropped += o.vacuum_copies_dropped;
        self.vacuum_copies_kept += o.vacuum_copies_kept;
        self.vacuum_rounds_abandoned += o.vacuum_rounds_abandoned;
        self.vacuum_fetches += o.vacuum_fetches;
    }
}

fn new_engine(pnn: Pnn, p: &Params, seed: u64) -> Engine {
    let mut config = EngineConfig::clustered(pnn, p.nodes, p.cluster_lock, seed);
    config.tunables.keepalive_interval_ms = 100;
    config.tunables.keepalive_limit = 6;
    config.tunables.recover_timeout_ms = 1000;
    config.tunables.recovery_ban_period_ms = 500;
    config.tunables.max_hops = 20;
    config.tunables.vacuum_interval_ms = p.vacuum_interval_ms;
    config.tunables.vacuum_fast_path_count = p.vacuum_fast_path_count;
    // No database: clients attach it, and a restarted node gets it from the recovery that
    // admits it.
    Engine::new(config)
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Sim {
        let p = Params::for_seed(seed);
        let mut rng = Rng(seed);
        let nodes = (0..p.nodes as Pnn)
            .map(|pnn| SimNode {
                engine: new_engine(pnn, &p, seed.wrapping_mul(31).wrapping_add(pnn as u64)),
                store: MemStore::with_chains(p.chains),
                up: true,
                lock_waits: vec![],
                freeze_pending: false,
                restart_at: None,
                quiet_until: None,
                failing_until: None,
                refusing_until: None,
                write_waits: vec![],
                incarnation: 0,
            })
            .collect();
        let mut clients = vec![];
        for node in 0..p.nodes {
            for _ in 0..p.clients_per_node {
                clients.push(Client {
                    id: clients.len() as ClientId,
                    node: node as Pnn,
                    key: key_name(rng.below64(p.keys as u64) as usize),
                    state: ClientState::Attaching,
                    remaining: p.increments,
                    next_reqid: 1,
                    owes_done: false,
                    starts_at: rng.below64(1500),
                });
            }
        }
        let n = clients.len();
        Sim {
            seed,
            p,
            rng,
            now: 0,
            nodes,
            clients,
            links: BTreeMap::new(),
            to_engine: vec![VecDeque::new(); n],
            to_client: vec![VecDeque::new(); n],
            lock_available: VecDeque::new(),
            lock_outcomes: VecDeque::new(),
            lock_holder: None,
            partition: None,
            faults_left: p.faults,
            histories: BTreeMap::new(),
            disrupted: false,
            store_failures_seen: false,
            last_rsn: BTreeMap::new(),
            coverage: Coverage::default(),
            trace,
            drain_until: None,
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "seed {} failed at t={}: {what}\n  params {:?}\n  replay: RCTDB_SIM_SEED={} cargo test --test sim simulation_faults:: -- --nocapture",
            self.seed, self.now, self.p, self.seed
        )
    }

    /// A fault that may lose records: what was acknowledged before it is no longer sure.
    fn disrupt(&mut self) {
        self.disrupted = true;
        for history in self.histories.values_mut() {
            history.sure = None;
        }
    }

    fn run_engine(&mut self, pnn: Pnn, input: Input) {
        if !self.nodes[pnn as usize].up {
            return;
        }
        if self.trace {
            println!("t={} node {pnn} <- {input:?}", self.now);
        }
        let mut out = vec![];
        let node = &mut self.nodes[pnn as usize];
        node.engine.handle(self.now, input, &mut node.store, &mut out);
        for output in out {
            if self.trace {
                println!("        node {pnn} -> {output:?}");
            }
            self.output(pnn, output);
        }
    }

    fn output(&mut self, pnn: Pnn, output: Output) {
        match output {
            Output::Send(packet) => {
                if matches!(packet.body, Body::Cluster(ClusterMsg::Attach { .. })) {
                    self.coverage.attaches_sent += 1;
                }
                if packet.destnode == pnn || packet.destnode as usize >= self.nodes.len() {
                    self.fail(&format!("node {pnn} sent a misaddressed packet {packet:?}"));
                }
                // TCP never duplicates; resends of migration requests do, so only those are.
                let duplicable = !matches!(packet.body, Body::Cluster(_));
                let copies = if duplicable && self.rng.per_mille(self.p.duplicate) { 2 } else { 1 };
                let link = self.links.entry((pnn, packet.destnode)).or_default();
                for _ in 0..copies {
                    link.push_back(packet.clone());
                }
            }
            Output::ClientReply { client, reqid, status, data } => {
                let c = &self.clients[client as usize];
                if c.state == ClientState::Crashed {
                    return;
                }
                if reqid != c.next_reqid {
                    self.fail(&format!("client {client} got reply {reqid}, expected {}", c.next_reqid));
                }
                self.to_client[client as usize].push_back((status, data));
            }
            Output::WaitForChainLock { key, .. } => self.nodes[pnn as usize].lock_waits.push(key),
            Output::WaitForWrite { key, .. } => self.nodes[pnn as usize].write_waits.push(key),
            Output::AttachDone { client, reqid, result, .. } => {
                let c = &mut self.clients[client as usize];
                if c.state != ClientState::WaitingAttach || reqid != c.next_reqid {
                    return; // a dead client's
                }
                c.state = match result {
                    Ok(()) => ClientState::Ready,
                    Err(_) if self.store_failures_seen => ClientState::Attaching,
                    Err(err) => self.fail(&format!("client {client}: attach failed: {err}")),
                };
            }
            Output::FreezeDb { .. } => self.nodes[pnn as usize].freeze_pending = true,
            Output::ThawDb { .. } => {
                let node = &mut self.nodes[pnn as usize];
                node.freeze_pending = false;
                node.store.frozen = false;
                self.wake_lock_waiters(pnn, None);
            }
            Output::TakeClusterLock => {
                let free = self.lock_holder.map_or(true, |h| h == pnn || !self.nodes[h as usize].up);
                let outcome = if free {
                    self.lock_holder = Some(pnn);
                    LockOutcome::Held
                } else {
                    LockOutcome::Contention
                };
                self.lock_outcomes.push_back((pnn, outcome));
            }
            Output::ReleaseClusterLock => {
                if self.lock_holder == Some(pnn) {
                    self.lock_holder = None;
                }
            }
            Output::Event(event) => match event {
                ClusterEvent::NodeDead(_) => {
                    self.coverage.deaths += 1;
                    self.disrupt();
                }
                ClusterEvent::Excluded { .. } | ClusterEvent::SteppedDown { .. } => self.disrupt(),
                // An emptied database starts its RSNs again.
                ClusterEvent::Emptied => self.last_rsn.retain(|(node, _), _| *node != pnn),
                ClusterEvent::RecoveryDone { fixed, .. } => {
                    self.coverage.recoveries += 1;
                    self.coverage.records_fixed += fixed;
                }
                _ => {}
            },
        }
    }

    fn wake_lock_waiters(&mut self, node: Pnn, key: Option<&[u8]>) {
        for client in &mut self.clients {
            if client.node == node
                && client.state == ClientState::WaitingLock
                && key.map_or(true, |k| k == client.key.as_slice())
            {
                client.state = ClientState::Ready;
            }
        }
    }

    fn settled(&self) -> bool {
        if self.partition.is_some() {
            return false;
        }
        let mut generations = BTreeSet::new();
        for node in &self.nodes {
            if !node.up || node.quiet_until.is_some() || node.failing_until.is_some() || !node.engine.active()
            {
                return false;
            }
            generations.insert(node.engine.generation());
        }
        generations.len() == 1
    }

    fn run_client(&mut self, index: usize) {
        let (node, id, key) = {
            let c = &self.clients[index];
            (c.node as usize, c.id, c.key.clone())
        };
        if self.clients[index].state == ClientState::Attaching {
            let client = &mut self.clients[index];
            if self.now < client.starts_at {
                return;
            }
            client.next_reqid += 1;
            client.state = ClientState::WaitingAttach;
            let db = DbName { db_id: DB, name: "sim.tdb".into() };
            let attach = Input::Attach { client: id, reqid: client.next_reqid, db };
            self.to_engine[index].push_back(attach);
            return;
        }
        if self.clients[index].state == ClientState::Ready {
            let locked = self.nodes[node].store.lock_as(DB, &key, LockOwner::Client(id));
            self.clients[index].state =
                if locked { ClientState::HoldingLock } else { ClientState::WaitingLock };
            return;
        }
        let record = self.nodes[node].store.peek(DB, &key).cloned();
        let here = record.as_ref().is_some_and(|r| r.header.dmaster == node as Pnn && r.header.rsn > 0);
        if let (true, Some(mut record)) = (here, record) {
            let seen = State::of(&record.data);
            let (disrupted, settled) = (self.disrupted, self.settled());
            let history = self.histories.entry(key.clone()).or_default();
            if !history.explains(seen, disrupted) {
                let (ops, last) = (history.ops, history.last());
                self.fail(&format!(
                    "client {index} on node {node} sees {seen:?} in {key:?}; the last of {ops} operations left {last:?} (disrupted: {disrupted})"
                ));
            }
            let delete = seen != State::Deleted && self.rng.per_mille(self.p.deletes);
            let history = self.histories.entry(key.clone()).or_default();
            history.ops += 1;
            if delete {
                history.deletes.insert(history.ops);
                record.data.clear();
                self.coverage.deletes += 1;
            } else {
                if seen == State::Deleted && history.ops > 1 {
                    self.coverage.recreations += 1;
                }
                record.data = history.ops.to_le_bytes().to_vec();
            }
            if settled {
                history.sure = Some(history.ops);
            }
            self.nodes[node].store.put(DB, &key, record);
            if delete && self.rng.per_mille(self.p.scheduled) {
                self.to_engine[index].push_back(Input::Deleted { db_id: DB, key: key.clone() });
            }
        }
        self.release_client_lock(node, &key);
        let client = &mut self.clients[index];
        if client.owes_done {
            client.owes_done = false;
            self.to_engine[index].push_back(Input::ClientDone { client: id, db_id: DB, key: key.clone() });
        }
        let client = &mut self.clients[index];
        if here {
            client.remaining -= 1;
            client.state = if client.remaining == 0 { ClientState::Finished } else { ClientState::Ready };
            if client.remaining > 0 && self.rng.per_mille(300) {
                self.clients[index].key = key_name(self.rng.below64(self.p.keys as u64) as usize);
            }
        } else {
            // Sometimes it reads the record where it is first, as smbd parses a record.
            let read = self.rng.per_mille(250);
            let client = &mut self.clients[index];
            client.next_reqid += 1;
            let reqid = client.next_reqid;
            client.state = if read {
                ClientState::WaitingRead { since: self.now }
            } else {
                ClientState::WaitingReply { since: self.now }
            };
            let call = ClientCall {
                client: id,
                reqid,
                db_id: DB,
                key,
                first_use: !read,
                kind: if read { CallKind::Read } else { CallKind::Migrate },
            };
            self.to_engine[index].push_back(Input::ClientCall(call));
        }
    }

    fn release_client_lock(&mut self, node: usize, key: &[u8]) {
        self.nodes[node].store.unlock_any(DB, key);
        // Every key that waited for this chain may go on (the engine retries the others).
        let n = &mut self.nodes[node];
        let (freed, waiting): (Vec<Vec<u8>>, Vec<Vec<u8>>) =
            n.lock_waits.drain(..).partition(|k| n.store.same_chain(DB, k, key));
        n.lock_waits = waiting;
        for k in freed {
            self.lock_available.push_back((node as Pnn, k));
        }
        self.wake_lock_waiters(node as Pnn, None);
    }

    fn crash_node(&mut self, k: Pnn) {
        self.coverage.crashes += 1;
        self.disrupt();
        let node = &mut self.nodes[k as usize];
        node.up = false;
        node.store.clear();
        node.lock_waits.clear();
        node.freeze_pending = false;
        node.quiet_until = None;
        node.failing_until = None;
        node.refusing_until = None;
        node.write_waits.clear();
        node.restart_at = Some(self.now + 50 + self.rng.below64(1500));
        if self.lock_holder == Some(k) {
            self.lock_holder = None; // the kernel drops a dead process's lock
        }
        for index in 0..self.clients.len() {
            if self.clients[index].node == k && self.clients[index].state != ClientState::Finished {
                self.clients[index].state = ClientState::Crashed;
                self.to_engine[index].clear();
                self.to_client[index].clear();
            }
        }
        self.lock_available.retain(|(p, _)| *p != k);
        self.lock_outcomes.retain(|(p, _)| *p != k);
        self.links.retain(|(a, b), _| *a != k && *b != k);
        for peer in 0..self.nodes.len() as Pnn {
            if peer != k {
                self.run_engine(peer, Input::LinkDown(k));
                if self.rng.percent(50) {
                    self.run_engine(peer, Input::Refused(k)); // its reconnect found no listener
                }
            }
        }
    }

    fn restart_node(&mut self, k: Pnn) {
        let node = &mut self.nodes[k as usize];
        node.incarnation += 1;
        let seed = self.seed.wrapping_mul(31).wrapping_add(k as u64).wrapping_add(node.incarnation << 20);
        node.engine = new_engine(k, &self.p, seed);
        node.store = MemStore::with_chains(self.p.chains);
        node.up = true;
        node.restart_at = None;
        for peer in 0..self.nodes.len() as Pnn {
            if peer != k {
                self.run_engine(peer, Input::LinkUp(k));
            }
        }
    }

    fn inject_fault(&mut self) {
        let n = self.nodes.len() as u64;
        let k = self.rng.below64(n) as Pnn;
        if !self.nodes[k as usize].up || self.partition.is_some() {
            return;
        }
        self.faults_left -= 1;
        match self.rng.below64(6) {
            0 => self.crash_node(k),
            1 => {
                self.coverage.quiets += 1;
                self.disrupt();
                self.nodes[k as usize].quiet_until = Some(self.now + 100 + self.rng.below64(2000));
                self.run_engine(k, Input::Quiet(true));
            }
            2 => {
                self.coverage.partitions += 1;
                self.disrupt();
                let side: BTreeSet<Pnn> = (0..n as Pnn).filter(|_| self.rng.per_mille(500)).collect();
                let side =
                    if side.is_empty() || side.len() == n as usize { BTreeSet::from([k]) } else { side };
                self.partition = Some((side, self.now + 200 + self.rng.below64(3000)));
            }
            3 => {
                self.coverage.store_failures += 1;
                self.store_failures_seen = true;
                self.disrupt();
                self.nodes[k as usize].store.failing = true;
                self.nodes[k as usize].failing_until = Some(self.now + 5 + self.rng.below64(100));
            }
            4 => {
                // A client holds a lock libtdb needs to write: writes stay in memory and
                // clients wait for them. Nothing may be lost, so the cluster is not disrupted.
                self.coverage.writes_held += 1;
                let until = self.now + 5 + self.rng.below64(200);
                let node = &mut self.nodes[k as usize];
                node.store.refusing = Some(libc::EAGAIN);
                node.refusing_until = Some(until);
            }
            _ => {
                // A connection reset: what was queued on it is gone. Not a fault that may
                // lose records: the protocol must find a handover lost this way.
                let busy: Vec<(Pnn, Pnn)> =
                    self.links.iter().filter(|(_, q)| !q.is_empty()).map(|(l, _)| *l).collect();
                if let Some(&(a, b)) = busy.get(self.rng.below64(busy.len().max(1) as u64) as usize) {
                    self.coverage.link_resets += 1;
                    self.links.remove(&(a, b));
                    self.run_engine(a, Input::LinkDown(b));
                    self.run_engine(a, Input::LinkUp(b));
                }
            }
        }
    }

    fn heal(&mut self) {
        let now = self.now;
        for k in 0..self.nodes.len() as Pnn {
            let node = &mut self.nodes[k as usize];
            if node.restart_at.is_some_and(|t| t <= now) {
                self.restart_node(k);
            }
            let node = &mut self.nodes[k as usize];
            if node.quiet_until.is_some_and(|t| t <= now) {
                node.quiet_until = None;
                self.run_engine(k, Input::Quiet(false));
            }
            let node = &mut self.nodes[k as usize];
            if node.failing_until.is_some_and(|t| t <= now) {
                node.failing_until = None;
                node.store.failing = false;
            }
            let node = &mut self.nodes[k as usize];
            if node.refusing_until.is_some_and(|t| t <= now) {
                node.refusing_until = None;
                node.store.write_refused();
                let written: Vec<Vec<u8>> = node.write_waits.drain(..).collect();
                self.lock_available.extend(written.into_iter().map(|key| (k, key)));
            }
        }
        if self.partition.as_ref().is_some_and(|(_, until)| *until <= now) {
            self.partition = None;
        }
    }

    fn cut_off(&self, a: Pnn, b: Pnn) -> bool {
        self.partition.as_ref().is_some_and(|(side, _)| side.contains(&a) != side.contains(&b))
    }

    fn nothing_in_flight(&self) -> bool {
        self.links.values().all(VecDeque::is_empty)
            && self.to_engine.iter().all(VecDeque::is_empty)
            && self.to_client.iter().all(VecDeque::is_empty)
            && self.lock_available.is_empty()
            && self.lock_outcomes.is_empty()
    }

    fn all_clients_done(&self) -> bool {
        self.clients.iter().all(|c| matches!(c.state, ClientState::Finished | ClientState::Crashed))
    }

    fn healed(&self) -> bool {
        self.partition.is_none()
            && self.nodes.iter().all(|n| {
                n.up && n.quiet_until.is_none() && n.failing_until.is_none() && n.refusing_until.is_none()
            })
    }

    /// One step of simulated time; false once every client is done and the cluster settled.
    fn step(&mut self) -> bool {
        self.now += 1;
        if self.drain_until.is_some() && self.nothing_in_flight() {
            // Draining with nothing on the wire or waiting: skip to the next tick.
            self.now = self.now.next_multiple_of(TICK_MS);
        }
        self.heal();
        if self.faults_left > 0 && self.rng.per_mille(self.p.fault_rate) {
            self.inject_fault();
        }
        if self.now % TICK_MS == 0 {
            for pnn in 0..self.nodes.len() as Pnn {
                self.run_engine(pnn, Input::Tick);
            }
        }
        for pnn in 0..self.nodes.len() {
            let node = &mut self.nodes[pnn];
            if node.up && node.freeze_pending && !node.store.client_holds_a_lock() {
                node.freeze_pending = false;
                node.store.frozen = true;
                self.run_engine(pnn as Pnn, Input::Frozen { db_id: DB });
            }
        }
        // A record may be in flight even when no engine waits for it (a stale request
        // moved it): at rest means nothing but membership traffic on the wire.
        let engines_idle = self.nodes.iter().all(|n| n.engine.keys_pending() == 0)
            && self.links.values().flatten().all(|p| matches!(p.body, Body::Cluster(_)));
        if self.all_clients_done() && self.faults_left == 0 && self.healed() && self.settled() && engines_idle
        {
            let until = *self.drain_until.get_or_insert(self.now + DRAIN_MS);
            if self.now >= until {
                return false;
            }
        }
        // Several events may happen in one millisecond.
        for _ in 0..4 {
            self.one_event();
        }
        true
    }

    fn one_event(&mut self) {
        let busy: Vec<(Pnn, Pnn)> =
            self.links.iter().filter(|(_, q)| !q.is_empty()).map(|(l, _)| *l).collect();
        let ready: Vec<usize> = (0..self.clients.len())
            .filter(|&i| {
                matches!(
                    self.clients[i].state,
                    ClientState::Ready | ClientState::HoldingLock | ClientState::Attaching
                )
            })
            .collect();
        let engine_inbox: Vec<usize> =
            (0..self.clients.len()).filter(|&i| !self.to_engine[i].is_empty()).collect();
        let client_inbox: Vec<usize> =
            (0..self.clients.len()).filter(|&i| !self.to_client[i].is_empty()).collect();
        let mut choices = vec![];
        for (choice, available) in [
            (0, !busy.is_empty()),
            (1, !ready.is_empty()),
            (2, !engine_inbox.is_empty()),
            (3, !client_inbox.is_empty()),
            (4, !self.lock_available.is_empty()),
            (5, !self.lock_outcomes.is_empty()),
        ] {
            if available {
                choices.push(choice);
            }
        }
        if choices.is_empty() {
            return;
        }
        match choices[self.rng.below64(choices.len() as u64) as usize] {
            0 => {
                let (a, b) = busy[self.rng.below64(busy.len() as u64) as usize];
                let queue = self.links.get_mut(&(a, b)).expect("busy link");
                let mut at =
                    if self.p.fifo_links { 0 } else { self.rng.below64(queue.len() as u64) as usize };
                if matches!(queue[at].body, Body::Cluster(_)) {
                    // Membership and recovery rely on TCP's order, as CTDB's do; only
                    // migration packets are shuffled.
                    at = queue.iter().position(|p| matches!(p.body, Body::Cluster(_))).expect("one is");
                }
                let packet = queue.remove(at).expect("in range");
                if self.cut_off(a, b) || self.rng.per_mille(self.p.drop) {
                    self.coverage.dropped += 1;
                    return;
                }

                self.run_engine(b, Input::Packet(packet));
            }
            1 => {
                let index = ready[self.rng.below64(ready.len() as u64) as usize];
                self.run_client(index);
            }
            2 => {
                let index = engine_inbox[self.rng.below64(engine_inbox.len() as u64) as usize];
                let input = self.to_engine[index].pop_front().expect("non-empty");
                self.run_engine(self.clients[index].node, input);
            }
            3 => {
                let index = client_inbox[self.rng.below64(client_inbox.len() as u64) as usize];
                let (status, data) = self.to_client[index].pop_front().expect("non-empty");
                let (since, read) = match self.clients[index].state {
                    ClientState::WaitingReply { since } => (since, false),
                    ClientState::WaitingRead { since } => (since, true),
                    _ => self.fail(&format!("client {index} got a reply it did not wait for")),
                };
                // A store that failed on the node is a clear error; the client tries again.
                if status != 0 && !(status == CALL_IO_ERROR && self.store_failures_seen) {
                    self.fail(&format!("client {index} got status {status}"));
                }
                if self.now - since > MAX_WAIT_MS {
                    self.fail(&format!("client {index} waited {} ms for a record", self.now - since));
                }
                if read && status == 0 {
                    // A read sees only what was written: never an operation not acknowledged.
                    let key = self.clients[index].key.clone();
                    let Some(data) = data else {
                        self.fail(&format!("client {index}: a read answered no data"))
                    };
                    let ops = self.histories.get(&key).map_or(0, |h| h.ops);
                    if let State::Written(n) = State::of(&data) {
                        if n > ops {
                            self.fail(&format!(
                                "client {index} read operation {n} of {key:?}, only {ops} were done"
                            ));
                        }
                    }
                    self.coverage.reads += 1;
                } else if !read {
                    self.clients[index].owes_done = true;
                }
                self.clients[index].state = ClientState::Ready;
            }
            4 => {
                let (pnn, key) = self.lock_available.pop_front().expect("non-empty");
                self.run_engine(pnn, Input::ChainLockAvailable { db_id: DB, key });
            }
            _ => {
                let (pnn, outcome) = self.lock_outcomes.pop_front().expect("non-empty");
                self.run_engine(pnn, Input::ClusterLock(outcome));
            }
        }
    }

    fn check_invariants(&mut self) {
        for (pnn, node) in self.nodes.iter_mut().enumerate() {
            // A key vacuumed everywhere starts its RSNs again.
            for (_, key) in node.store.deleted.drain(..) {
                self.last_rsn.remove(&(pnn as Pnn, key));
            }
        }
        for index in 0..self.p.keys {
            let key = key_name(index);
            let mut holders: BTreeMap<u32, Vec<Pnn>> = BTreeMap::new();
            for (pnn, node) in self.nodes.iter().enumerate() {
                if !node.up {
                    continue;
                }
                let record = node.store.peek(DB, &key);
                let slot = (pnn as Pnn, key.clone());
                match record {
                    Some(record) => {
                        let last = self.last_rsn.get(&slot).copied().unwrap_or(0);
                        if record.header.rsn < last {
                            self.fail(&format!(
                                "node {pnn}: RSN of {key:?} went down from {last} to {}",
                                record.header.rsn
                            ));
                        }
                        self.last_rsn.insert(slot, record.header.rsn);
                        if node.engine.active() && record.header.dmaster == pnn as Pnn {
                            holders.entry(node.engine.generation()).or_default().push(pnn as Pnn);
                        }
                    }
                    None => {
                        self.last_rsn.remove(&slot); // wiped, vacuumed, or never there
                    }
                }
            }
            if let Some((generation, nodes)) = holders.iter().find(|(_, nodes)| nodes.len() > 1) {
                self.fail(&format!("{key:?} held by {nodes:?} in generation {generation:#x}"));
            }
        }
    }

    fn check_final(&self) {
        for client in &self.clients {
            if !matches!(client.state, ClientState::Finished | ClientState::Crashed) {
                self.fail(&format!("client {} stuck in {:?}", client.id, client.state));
            }
        }
        for (key, history) in &self.histories {
            let holders: Vec<&SimNode> = self
                .nodes
                .iter()
                .enumerate()
                .filter(|(pnn, n)| n.store.peek(DB, key).is_some_and(|r| r.header.dmaster == *pnn as Pnn))
                .map(|(_, n)| n)
                .collect();
            let seen = match holders.as_slice() {
                [] => State::Deleted,
                [holder] => State::of(&holder.store.peek(DB, key).expect("holder has it").data),
                _ => self.fail(&format!("{key:?} held by {} nodes at rest", holders.len())),
            };
            if !history.explains(seen, self.disrupted) {
                self.fail(&format!(
                    "{key:?} ends as {seen:?}: {} operations acknowledged, the last left {:?}, the last sure one is {:?} (disrupted: {})",
                    history.ops,
                    history.last(),
                    history.sure,
                    self.disrupted
                ));
            }
            if seen == State::Deleted && self.p.vacuum_interval_ms > 0 {
                let copies: Vec<(Pnn, Record)> = (0..self.nodes.len() as Pnn)
                    .filter_map(|p| self.nodes[p as usize].store.peek(DB, key).map(|r| (p, r.clone())))
                    .collect();
                if !copies.is_empty() {
                    self.fail(&format!(
                        "{key:?} is deleted, yet copies are left after vacuuming: {copies:?}"
                    ));
                }
            }
        }
        for node in &self.nodes {
            if node.engine.keys_pending() > 0 {
                self.fail(&format!(
                    "node {} still tracks {} keys at rest",
                    node.engine.pnn(),
                    node.engine.keys_pending()
                ));
            }
        }
    }
}

fn run_seed(seed: u64, trace: bool) -> Coverage {
    let mut sim = Sim::new(seed, trace);
    while sim.step() {
        sim.coverage.steps += 1;
        sim.check_invariants();
        if sim.coverage.steps > 400_000 {
            let nodes: Vec<String> = sim
                .nodes
                .iter()
                .map(|n| {
                    format!("up={} {:?} gen={:#x}", n.up, n.engine.cluster_status(), n.engine.generation())
                })
                .collect();
            let clients: Vec<ClientState> = sim.clients.iter().map(|c| c.state).collect();
            let pending: Vec<usize> = sim.nodes.iter().map(|n| n.engine.keys_pending()).collect();
            println!("keys pending per node: {pending:?}");
            sim.fail(&format!(
                "not settled after 400000 ms (livelock?): nodes {nodes:#?} clients {clients:?}"
            ));
        }
    }
    sim.check_final();
    for node in &sim.nodes {
        let stats = node.engine.stats();
        sim.coverage.migrations += stats.migrations_completed;
        sim.coverage.max_hop_drops += stats.calls_dropped_max_hops;
        sim.coverage.lock_waits += stats.lock_waits;
        sim.coverage.write_waits += stats.write_waits;
        sim.coverage.vacuumed += stats.vacuum_deleted;
        sim.coverage.vacuum_copies_dropped += stats.vacuum_copies_dropped;
        sim.coverage.vacuum_copies_kept += stats.vacuum_copies_kept;
        sim.coverage.vacuum_rounds_abandoned += stats.vacuum_rounds_abandoned;
        sim.coverage.vacuum_fetches += stats.vacuum_fetches;
    }
    sim.coverage
}

#[test]
fn seeded_clusters_with_faults_keep_one_holder_and_every_sure_operation() {
    if let Ok(seed) = std::env::var("RCTDB_SIM_SEED") {
        let seed: u64 = seed.parse().expect("RCTDB_SIM_SEED is a number");
        println!("seed {seed}: {:?}", run_seed(seed, true));
        return;
    }
    let seeds: u64 = std::env::var("RCTDB_SIM_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(2000);
    let first: u64 = std::env::var("RCTDB_SIM_FIRST").ok().and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut total = Coverage::default();
    for seed in first..first + seeds {
        total.add(&run_seed(seed, false));
    }
    println!("{seeds} seeds: {total:?}");
    // The seeds must keep reaching the interesting paths, or passing means little.
    assert!(total.migrations > seeds && total.recoveries > seeds, "{total:?}");
    assert!(total.crashes > 0 && total.quiets > 0 && total.partitions > 0, "{total:?}");
    assert!(total.store_failures > 0 && total.link_resets > 0 && total.dropped > 0, "{total:?}");
    assert!(total.records_fixed > 0 && total.max_hop_drops > 0 && total.deaths > 0, "{total:?}");
    assert!(total.lock_waits > 0 && total.attaches_sent > 0 && total.reads > 0, "{total:?}");
    assert!(total.deletes > 0 && total.recreations > 0 && total.vacuumed > 0, "{total:?}");
    assert!(total.vacuum_copies_dropped > 0 && total.vacuum_copies_kept > 0, "{total:?}");
    // Recoveries and broken links in the middle of vacuuming rounds.
    assert!(total.vacuum_rounds_abandoned > 0, "{total:?}");
    // Records held in memory while a client holds a lock libtdb needs, clients waiting.
    assert!(total.writes_held > 0 && total.write_waits > 0, "{total:?}");
    // Holders asking LMASTERs to take their empty records, taken by migration.
    assert!(total.vacuum_fetches > 0, "{total:?}");
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let (a, b) = (run_seed(7, false), run_seed(7, false));
    assert_eq!((a.steps, a.migrations, a.recoveries), (b.steps, b.migrations, b.recoveries));
}
