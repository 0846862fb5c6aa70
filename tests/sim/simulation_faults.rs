//! Deterministic simulation of membership and recovery (DESIGN §5, §7.2): 2–5 engines with
//! heartbeats, elections (with or without a cluster lock) and recoveries, on a seeded network
//! that delays, reorders, duplicates and drops packets and resets links, while nodes crash
//! and restart with empty databases, go quiet, are partitioned off, fail to store, have
//! their connections reset and made again at once, run slowly, freeze whole (daemon and
//! clients), see their cluster lock's helper hang, and run clocks at their own rates.
//! Clients use records the way smbd does: under the chain lock, each operation either
//! writes the record (its data is the operation's number) or deletes it (leaves it empty,
//! and mostly tells the engine, as smbd's SCHEDULE_FOR_DELETION does), and records are
//! created again after being deleted. Engines vacuum (DESIGN §8.5) while all this and the
//! faults go on. In some seeds keys share hash chains, so work on one record waits for a
//! client's lock on another.
//!
//! Checked after every step: no two nodes with write authority (active, and within the
//! lease they published, on their own clock) hold a record, whatever their generations
//! (leases stop a node the others left out before they go on), and no
//! node's RSN of a record goes down (unless vacuuming deleted that copy). Whenever a client
//! looks at a record it holds, and at the end for every key, what it sees is exactly what
//! the last acknowledged operation left (so a deleted record never comes back and a live
//! one is never vacuumed). Each operation records the node that held the record: only when
//! that node crashes (or, without gray failures, the cluster goes on without it) may the
//! values it alone had be lost, and then the record may hold what the other nodes still
//! had. At the end, after vacuuming had time to run: no node keeps any copy of a key that is
//! deleted; every client request was answered within a bound.
//!
//! `RCTDB_SIM_GRAY=1` adds what the engine does not pass yet (see `Params::gray`).
//! `RCTDB_SIM_SEEDS=N` runs more seeds, from `RCTDB_SIM_FIRST`; `RCTDB_SIM_SEED=S` replays
//! one seed with a trace.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use rctdb::engine::sim::{counter_value, key_name, Cluster, Network, Rng, SimNode};
use rctdb::engine::{
    CallKind, ClientCall, ClientId, ClusterEvent, Engine, EngineConfig, Input, MemStore, Output, Record,
    CALL_IO_ERROR,
};
use rctdb::wire::cluster::DbName;
use rctdb::wire::{Body, DbId, Pnn, ReqId};

const DB: DbId = 0x5eed;
const TICK_MS: u64 = 10;
/// No client request may wait longer (simulated ms): well past a few recoveries.
const MAX_WAIT_MS: u64 = 60_000;
/// Simulated time after the clients finished and the cluster settled, for vacuuming to
/// remove what was deleted: several runs, a full one among them, and a round's timeout.
const DRAIN_MS: u64 = 4_000;
/// The most a node's clock may run faster or slower than real time, in parts per million
/// (1%): the bound a lease must allow for.
const MAX_CLOCK_DRIFT_PPM: i64 = 10_000;
/// How long a stopped, frozen or slow node, or a hung cluster lock, stays so at most (ms).
const MAX_STALL_MS: u64 = 2_500;

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
    /// Each node's clock runs at its own rate, within `MAX_CLOCK_DRIFT_PPM`.
    clock_drift: bool,
    /// Gray failures: checks and faults the engine does not pass yet (`RCTDB_SIM_GRAY=1`).
    /// They wait for leases (a node has write authority only while its lease from the
    /// current generation lasts, so a stalled or cut-off node stops serving before the
    /// others take its records over) and for "a false death costs a pause, not data" (a
    /// node declared dead that comes back keeps what nobody changed: recovery.rs empties it
    /// today, as "behind the cluster's history"). With them:
    /// - no two nodes hold a record as active at once, whatever their generations;
    /// - what a node the cluster left out (not crashed) acknowledged must be read back too;
    /// - a daemon stops while its clients keep using the records its store says it holds.
    gray: bool,
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
            clock_drift: rng.per_mille(500),
            gray: std::env::var("RCTDB_SIM_GRAY").is_ok_and(|v| v == "1"),
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

/// When a node's faults end (the harness keeps the rest of its state).
#[derive(Debug, Default, Clone, Copy)]
struct NodeFaults {
    restart_at: Option<u64>,
    quiet_until: Option<u64>,
    failing_until: Option<u64>,
    /// Writes kept in memory (a lock libtdb needs held too long) until then.
    refusing_until: Option<u64>,
    /// The daemon is stopped, and with `whole_node` its clients too.
    stopped_until: Option<u64>,
    whole_node: bool,
    slow_until: Option<u64>,
}

struct Sim {
    seed: u64,
    p: Params,
    cluster: Cluster,
    faults: Vec<NodeFaults>,
    clients: Vec<Client>,
    to_engine: Vec<VecDeque<Input>>,
    to_client: Vec<VecDeque<(i32, Option<Vec<u8>>)>>,
    /// When the partition heals, and the cluster lock answers again.
    partition_until: Option<u64>,
    lock_hung_until: Option<u64>,
    /// Nodes a generation was made without since they were last active: their copies may
    /// be emptied by the recovery that takes them back.
    left_out: BTreeSet<Pnn>,
    faults_left: u32,
    /// Every key's acknowledged operations, in order.
    histories: BTreeMap<Vec<u8>, History>,
    store_failures_seen: bool,
    last_rsn: BTreeMap<(Pnn, Vec<u8>), u64>,
    coverage: Coverage,
    /// Set once clients are done and the cluster settled: vacuuming runs until then.
    drain_until: Option<u64>,
}

/// What a record holds: the number of the operation that wrote it, or nothing (deleted,
/// or never written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

/// One key's acknowledged operations: operation `n` (from 1) wrote `Written(n)` or deleted,
/// on the node that held the record then.
#[derive(Debug, Default)]
struct History {
    ops: u64,
    deletes: BTreeSet<u64>,
    holders: Vec<Pnn>,
    /// What the record may also hold: values other nodes still had when the node that alone
    /// had the newest ones crashed (or was left out, without gray failures). Empty while
    /// only the last operation's state will do; a new operation makes it exact again.
    also: BTreeSet<State>,
}

impl History {
    fn last(&self) -> State {
        match self.ops {
            0 => State::Deleted,
            n if self.deletes.contains(&n) => State::Deleted,
            n => State::Written(n),
        }
    }

    fn last_holder(&self) -> Option<Pnn> {
        self.holders.last().copied()
    }

    /// Whether `seen` may be the record's state now: the last operation's, or one that
    /// survived the loss of the newest.
    fn explains(&self, seen: State) -> bool {
        seen == self.last() || self.also.contains(&seen)
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
    reconnects: Hits,
    stopped_daemons: Hits,
    slow_nodes: Hits,
    hung_locks: Hits,
    frozen_nodes: Hits,
    clock_drift: Hits,
}

/// How often a fault was injected, and how often it hit something.
#[derive(Debug, Default, Clone, Copy)]
struct Hits {
    injected: u64,
    hit: u64,
}

impl Hits {
    fn add(&mut self, o: Hits) {
        self.injected += o.injected;
        self.hit += o.hit;
    }

    fn both(&self) -> bool {
        self.injected > 0 && self.hit > 0
    }
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
        self.reconnects.add(o.reconnects);
        self.stopped_daemons.add(o.stopped_daemons);
        self.slow_nodes.add(o.slow_nodes);
        self.hung_locks.add(o.hung_locks);
        self.frozen_nodes.add(o.frozen_nodes);
        self.clock_drift.add(o.clock_drift);
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
        let nodes = (0..p.nodes as Pnn)
            .map(|pnn| {
                let engine = new_engine(pnn, &p, seed.wrapping_mul(31).wrapping_add(pnn as u64));
                SimNode::new(engine, MemStore::with_chains(p.chains))
            })
            .collect();
        let mut cluster = Cluster::new(nodes, seed);
        if p.clock_drift {
            let mut rng = Rng(seed ^ 0xc10c);
            for node in &mut cluster.nodes {
                let span = 2 * MAX_CLOCK_DRIFT_PPM as u64 + 1;
                node.clock_rate_ppm = rng.below64(span) as i64 - MAX_CLOCK_DRIFT_PPM;
            }
        }
        cluster.network =
            Network { in_order: p.fifo_links, loss: p.drop, duplication: p.duplicate, duplicates_left: None };
        cluster.trace = trace;
        cluster.context = format!(
            "seed {seed} (replay: RCTDB_SIM_SEED={seed} cargo test --test sim simulation_faults:: -- --nocapture)\n  params {p:?}\n  "
        );
        let mut clients = vec![];
        for node in 0..p.nodes {
            for _ in 0..p.clients_per_node {
                clients.push(Client {
                    id: clients.len() as ClientId,
                    node: node as Pnn,
                    key: key_name(cluster.rng.below64(p.keys as u64) as usize),
                    state: ClientState::Attaching,
                    remaining: p.increments,
                    next_reqid: 1,
                    owes_done: false,
                    starts_at: cluster.rng.below64(1500),
                });
            }
        }
        let n = clients.len();
        Sim {
            seed,
            p,
            cluster,
            faults: vec![NodeFaults::default(); p.nodes],
            clients,
            to_engine: vec![VecDeque::new(); n],
            to_client: vec![VecDeque::new(); n],
            partition_until: None,
            lock_hung_until: None,
            left_out: BTreeSet::new(),
            faults_left: p.faults,
            histories: BTreeMap::new(),
            store_failures_seen: false,
            last_rsn: BTreeMap::new(),
            coverage: Coverage::default(),
            drain_until: None,
        }
    }

    fn fail(&self, what: &str) -> ! {
        self.cluster.fail(what)
    }

    fn rng(&mut self) -> &mut Rng {
        &mut self.cluster.rng
    }

    /// Node `x`'s copies may be gone: it crashed (its files were volatile), or without gray
    /// failures the cluster went on without it. Every key whose newest values only `x` may
    /// have had may now hold whatever the other nodes still have, in their stores or on the
    /// wire between them (or nothing, if none has a copy).
    fn may_lose(&mut self, x: Pnn) {
        if self.cluster.trace {
            println!("t={} node {x} may lose its copies; left out: {:?}", self.cluster.now, self.left_out);
        }
        let nodes = &self.cluster.nodes;
        // Copies on nodes the cluster went on without may be emptied when they come back.
        let gone = |p: Pnn| p == x || !self.p.gray && self.left_out.contains(&p);
        for (key, history) in &mut self.histories {
            let holds = nodes[x as usize].store.peek(DB, key).is_some_and(|r| r.header.dmaster == x);
            if !(history.last_holder() == Some(x) || holds || !history.also.is_empty()) {
                continue;
            }
            let stored = (0..nodes.len() as Pnn)
                .filter(|&p| nodes[p as usize].up && !gone(p))
                .filter_map(|p| nodes[p as usize].store.peek(DB, key).map(|r| State::of(&r.data)));
            let in_flight =
                self.cluster.packets().filter(|p| !gone(p.srcnode) && !gone(p.destnode)).filter_map(|p| {
                    match &p.body {
                        Body::ReqDmaster(d) if d.key == *key => Some(State::of(&d.data)),
                        Body::ReplyDmaster(r) if r.key == *key => Some(State::of(&r.data)),
                        _ => None,
                    }
                });
            let survivors: BTreeSet<State> = stored.chain(in_flight).collect();
            if survivors.is_empty() {
                history.also.insert(State::Deleted);
            }
            history.also.insert(history.last());
            history.also.extend(survivors);
        }
    }

    /// Node `active` went active: the nodes its generation was made without are left out,
    /// its members are not (the recovery that made it planned with their copies, even of a
    /// member that has not activated yet).
    fn activated(&mut self, active: Pnn) {
        let members = self.cluster.nodes[active as usize].engine.vnn_map().to_vec();
        self.left_out.retain(|p| !members.contains(p));
        let newly: Vec<Pnn> =
            self.cluster.pnns().filter(|p| !members.contains(p) && self.left_out.insert(*p)).collect();
        if !self.p.gray {
            for pnn in newly {
                self.may_lose(pnn);
            }
        }
    }

    fn run_engine(&mut self, pnn: Pnn, input: Input) {
        for output in self.cluster.input(pnn, input) {
            self.output(pnn, output);
        }
    }

    fn outputs(&mut self, outputs: Vec<(Pnn, Output)>) {
        for (pnn, output) in outputs {
            self.output(pnn, output);
        }
    }

    /// What the harness hands back: replies to clients, attach results, thaws, events.
    fn output(&mut self, pnn: Pnn, output: Output) {
        match output {
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
            Output::ThawDb { .. } => self.wake_lock_waiters(pnn, None),
            Output::Event(event) => match event {
                ClusterEvent::NodeDead(dead) => {
                    self.coverage.deaths += 1;
                    let faults = self.faults[dead as usize];
                    if faults.stopped_until.is_some() && faults.whole_node {
                        self.coverage.frozen_nodes.hit += 1;
                    }
                    if self.p.clock_drift {
                        self.coverage.clock_drift.hit += 1;
                    }
                }
                ClusterEvent::Activated { .. } => self.activated(pnn),
                // An emptied database starts its RSNs again.
                ClusterEvent::Emptied => self.last_rsn.retain(|(node, _), _| *node != pnn),
                ClusterEvent::RecoveryDone { fixed, .. } => {
                    self.coverage.recoveries += 1;
                    self.coverage.records_fixed += fixed;
                }
                _ => {}
            },
            other => self.fail(&format!("the harness handed back {other:?}")),
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
        if self.cluster.partition.is_some() {
            return false;
        }
        let mut generations = BTreeSet::new();
        for (node, faults) in self.cluster.nodes.iter().zip(&self.faults) {
            if !node.up
                || faults.quiet_until.is_some()
                || faults.failing_until.is_some()
                || faults.stopped_until.is_some()
                || !node.engine.active()
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
        let now = self.cluster.now;
        if self.clients[index].state == ClientState::Attaching {
            let client = &mut self.clients[index];
            if now < client.starts_at {
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
            let locked = self.cluster.client_lock(node as Pnn, DB, &key, id);
            self.clients[index].state =
                if locked { ClientState::HoldingLock } else { ClientState::WaitingLock };
            return;
        }
        let record = self.cluster.nodes[node].store.peek(DB, &key).cloned();
        let here = record.as_ref().is_some_and(|r| r.header.dmaster == node as Pnn && r.header.rsn > 0);
        if let (true, Some(mut record)) = (here, record) {
            let seen = State::of(&record.data);
            // Without gray failures a node the cluster went on without may serve a copy the
            // others superseded, and what it acknowledges may be lost.
            let left_out = self.left_out.contains(&(node as Pnn)) && !self.p.gray;
            if self.faults[node].stopped_until.is_some() {
                self.coverage.stopped_daemons.hit += 1;
            }
            let history = self.histories.entry(key.clone()).or_default();
            if !left_out && !history.explains(seen) {
                let (ops, last, also) = (history.ops, history.last(), history.also.clone());
                self.fail(&format!(
                    "client {index} on node {node} sees {seen:?} in {key:?}; the last of {ops} operations left {last:?}, what survived a loss: {also:?}"
                ));
            }
            let deletes = self.p.deletes;
            let delete = seen != State::Deleted && self.rng().per_mille(deletes);
            let history = self.histories.entry(key.clone()).or_default();
            if left_out {
                let before = history.last();
                history.also.insert(before);
            } else {
                history.also.clear();
            }
            history.ops += 1;
            history.holders.push(node as Pnn);
            if self.cluster.trace {
                let op = if delete { "deletes" } else { "writes" };
                println!(
                    "t={now} client {index} on node {node} {op} {key:?} (operation {}, saw {seen:?})",
                    history.ops
                );
            }
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
            self.cluster.nodes[node].store.put(DB, &key, record);
            let scheduled = self.p.scheduled;
            if delete && self.rng().per_mille(scheduled) {
                self.to_engine[index].push_back(Input::Deleted { db_id: DB, key: key.clone() });
            }
        }
        self.release_client_lock(node, &key);
        let client = &mut self.clients[index];
        if client.owes_done {
            client.owes_done = false;
            self.to_engine[index].push_back(Input::ClientDone { client: id, db_id: DB, key: key.clone() });
        }
        if here {
            let client = &mut self.clients[index];
            client.remaining -= 1;
            client.state = if client.remaining == 0 { ClientState::Finished } else { ClientState::Ready };
            if client.remaining > 0 && self.rng().per_mille(300) {
                let keys = self.p.keys as u64;
                self.clients[index].key = key_name(self.rng().below64(keys) as usize);
            }
        } else {
            // Sometimes it reads the record where it is first, as smbd parses a record.
            let read = self.rng().per_mille(250);
            let client = &mut self.clients[index];
            client.next_reqid += 1;
            let reqid = client.next_reqid;
            client.state = if read {
                ClientState::WaitingRead { since: now }
            } else {
                ClientState::WaitingReply { since: now }
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
        self.cluster.client_unlock(node as Pnn, DB, key);
        self.wake_lock_waiters(node as Pnn, None);
    }

    fn crash_node(&mut self, k: Pnn) {
        self.coverage.crashes += 1;
        self.may_lose(k);
        let restart_at = self.cluster.now + 50 + self.rng().below64(1500);
        self.faults[k as usize] = NodeFaults { restart_at: Some(restart_at), ..NodeFaults::default() };
        for index in 0..self.clients.len() {
            if self.clients[index].node == k && self.clients[index].state != ClientState::Finished {
                self.clients[index].state = ClientState::Crashed;
                self.to_engine[index].clear();
                self.to_client[index].clear();
            }
        }
        let outputs = self.cluster.crash(k);
        self.outputs(outputs);
    }

    fn restart_node(&mut self, k: Pnn) {
        let incarnation = self.cluster.nodes[k as usize].incarnation + 1;
        let seed = self.seed.wrapping_mul(31).wrapping_add(k as u64).wrapping_add(incarnation << 20);
        let engine = new_engine(k, &self.p, seed);
        self.faults[k as usize].restart_at = None;
        let outputs = self.cluster.restart(k, engine, MemStore::with_chains(self.p.chains));
        self.outputs(outputs);
    }

    fn inject_fault(&mut self) {
        let n = self.cluster.len() as u64;
        let k = self.rng().below64(n) as Pnn;
        if !self.cluster.nodes[k as usize].up || self.cluster.partition.is_some() {
            return;
        }
        self.faults_left -= 1;
        let now = self.cluster.now;
        let stall_until = now + 100 + self.rng().below64(MAX_STALL_MS - 100);
        let fault = self.rng().below64(11);
        if self.cluster.trace {
            const FAULTS: [&str; 11] = [
                "crash",
                "quiet",
                "partition",
                "store failure",
                "writes held",
                "link reset",
                "reconnects",
                "stopped daemon",
                "frozen node",
                "slow node",
                "hung cluster lock",
            ];
            println!("t={now} fault: {} on node {k} (stalls until t={stall_until})", FAULTS[fault as usize]);
        }
        match fault {
            0 => self.crash_node(k),
            1 => {
                self.coverage.quiets += 1;
                self.faults[k as usize].quiet_until = Some(now + 100 + self.rng().below64(2000));
                self.run_engine(k, Input::Quiet(true));
            }
            2 => {
                self.coverage.partitions += 1;
                let side: BTreeSet<Pnn> = (0..n as Pnn).filter(|_| self.rng().per_mille(500)).collect();
                let side =
                    if side.is_empty() || side.len() == n as usize { BTreeSet::from([k]) } else { side };
                self.cluster.partition = Some(side);
                self.partition_until = Some(now + 200 + self.rng().below64(3000));
            }
            3 => {
                self.coverage.store_failures += 1;
                self.store_failures_seen = true;
                self.cluster.nodes[k as usize].store.failing = true;
                self.faults[k as usize].failing_until = Some(now + 5 + self.rng().below64(100));
            }
            4 => {
                // A client holds a lock libtdb needs to write: writes stay in memory and
                // clients wait for them. Nothing may be lost, so the cluster is not disrupted.
                self.coverage.writes_held += 1;
                let until = now + 5 + self.rng().below64(200);
                self.cluster.nodes[k as usize].store.refusing = Some(libc::EAGAIN);
                self.faults[k as usize].refusing_until = Some(until);
            }
            5 => {
                // A connection reset: what was queued on it is gone. Not a fault that may
                // lose records: the protocol must find a handover lost this way.
                if let Some(((a, _), outputs)) = self.cluster.reset_busy_link() {
                    self.outputs(outputs.into_iter().map(|o| (a, o)).collect());
                }
            }
            6 => {
                // Connections of one node reset and made again at once, a few times over
                // (`ss -K`): what was queued on them is gone.
                self.coverage.reconnects.injected += 1;
                for _ in 0..1 + self.rng().below64(5) {
                    let peer = (k + 1 + self.rng().below64(n - 1) as Pnn) % n as Pnn;
                    let (lost, outputs) = self.cluster.reset_connection(k, peer);
                    self.coverage.reconnects.hit += lost;
                    self.outputs(outputs);
                }
            }
            7 => {
                // The daemon stops (SIGSTOP, a VM's CPU steal) and its clients keep using
                // the records its store says it holds: only with gray failures.
                if self.p.gray {
                    self.stop_node(k, stall_until, false);
                }
            }
            8 => {
                // The whole node freezes, daemon and clients (a VM paused).
                self.stop_node(k, stall_until, true);
            }
            9 => {
                self.coverage.slow_nodes.injected += 1;
                self.cluster.nodes[k as usize].slowness = 500 + self.rng().below64(450);
                self.faults[k as usize].slow_until = Some(stall_until);
            }
            _ => {
                // The cluster lock's helper stops answering (a hung cluster filesystem).
                if self.p.cluster_lock && self.lock_hung_until.is_none() {
                    self.coverage.hung_locks.injected += 1;
                    self.cluster.hang_lock(true);
                    self.lock_hung_until = Some(stall_until);
                }
            }
        }
    }

    fn stop_node(&mut self, k: Pnn, until: u64, whole_node: bool) {
        let count =
            if whole_node { &mut self.coverage.frozen_nodes } else { &mut self.coverage.stopped_daemons };
        count.injected += 1;
        let outputs = self.cluster.stop(k, true);
        self.outputs(outputs);
        let faults = &mut self.faults[k as usize];
        faults.stopped_until = Some(until);
        faults.whole_node = whole_node;
    }

    fn heal(&mut self) {
        let now = self.cluster.now;
        for k in self.cluster.pnns() {
            if self.faults[k as usize].restart_at.is_some_and(|t| t <= now) {
                self.restart_node(k);
            }
            let faults = &mut self.faults[k as usize];
            if faults.quiet_until.is_some_and(|t| t <= now) {
                faults.quiet_until = None;
                self.run_engine(k, Input::Quiet(false));
            }
            let faults = &mut self.faults[k as usize];
            if faults.failing_until.is_some_and(|t| t <= now) {
                faults.failing_until = None;
                self.cluster.nodes[k as usize].store.failing = false;
            }
            let faults = &mut self.faults[k as usize];
            if faults.refusing_until.is_some_and(|t| t <= now) {
                faults.refusing_until = None;
                self.cluster.writes_accepted(k);
            }
            let faults = &mut self.faults[k as usize];
            if faults.stopped_until.is_some_and(|t| t <= now) {
                faults.stopped_until = None;
                let outputs = self.cluster.stop(k, false);
                self.outputs(outputs);
            }
            let faults = &mut self.faults[k as usize];
            if faults.slow_until.is_some_and(|t| t <= now) {
                faults.slow_until = None;
                self.cluster.nodes[k as usize].slowness = 0;
            }
        }
        if self.lock_hung_until.is_some_and(|until| until <= now) {
            self.lock_hung_until = None;
            self.coverage.hung_locks.hit += self.cluster.counts.lock_requests_held;
            self.cluster.counts.lock_requests_held = 0;
            self.cluster.hang_lock(false);
        }
        if self.partition_until.is_some_and(|until| until <= now) {
            self.partition_until = None;
            self.cluster.partition = None;
        }
    }

    fn nothing_in_flight(&self) -> bool {
        self.cluster.network_idle()
            && self.to_engine.iter().all(VecDeque::is_empty)
            && self.to_client.iter().all(VecDeque::is_empty)
    }

    fn all_clients_done(&self) -> bool {
        self.clients.iter().all(|c| matches!(c.state, ClientState::Finished | ClientState::Crashed))
    }

    fn healed(&self) -> bool {
        self.cluster.partition.is_none()
            && self.lock_hung_until.is_none()
            && self.cluster.nodes.iter().zip(&self.faults).all(|(n, f)| {
                n.up && f.quiet_until.is_none()
                    && f.failing_until.is_none()
                    && f.refusing_until.is_none()
                    && f.stopped_until.is_none()
                    && f.slow_until.is_none()
            })
    }

    /// One step of simulated time; false once every client is done and the cluster settled.
    fn step(&mut self) -> bool {
        self.cluster.now += 1;
        if self.drain_until.is_some() && self.nothing_in_flight() {
            // Draining with nothing on the wire or waiting: skip to the next tick.
            self.cluster.now = self.cluster.now.next_multiple_of(TICK_MS);
        }
        self.heal();
        let fault_rate = self.p.fault_rate;
        if self.faults_left > 0 && self.rng().per_mille(fault_rate) {
            self.inject_fault();
        }
        if self.cluster.now % TICK_MS == 0 {
            let outputs = self.cluster.tick_all();
            self.outputs(outputs);
        }
        let outputs = self.cluster.complete_freezes();
        self.outputs(outputs);
        // A record may be in flight even when no engine waits for it (a stale request
        // moved it): at rest means nothing but membership traffic on the wire.
        let engines_idle = self.cluster.nodes.iter().all(|n| n.engine.keys_pending() == 0)
            && self.cluster.packets().all(|p| matches!(p.body, Body::Cluster(_)));
        if self.all_clients_done() && self.faults_left == 0 && self.healed() && self.settled() && engines_idle
        {
            let until = *self.drain_until.get_or_insert(self.cluster.now + DRAIN_MS);
            if self.cluster.now >= until {
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
        let ready: Vec<usize> = (0..self.clients.len())
            .filter(|&i| {
                matches!(
                    self.clients[i].state,
                    ClientState::Ready | ClientState::HoldingLock | ClientState::Attaching
                ) && !self.client_frozen(i)
            })
            .collect();
        let engine_inbox: Vec<usize> =
            (0..self.clients.len()).filter(|&i| !self.to_engine[i].is_empty()).collect();
        let client_inbox: Vec<usize> = (0..self.clients.len())
            .filter(|&i| !self.to_client[i].is_empty() && !self.client_frozen(i))
            .collect();
        let mut choices = vec![];
        for (choice, available) in [
            (0, self.cluster.packets_in_flight() > 0),
            (1, !ready.is_empty()),
            (2, !engine_inbox.is_empty()),
            (3, !client_inbox.is_empty()),
            (4, !self.cluster.lock_available.is_empty()),
            (5, !self.cluster.lock_outcomes.is_empty()),
        ] {
            if available {
                choices.push(choice);
            }
        }
        if choices.is_empty() {
            return;
        }
        match choices[self.rng().below64(choices.len() as u64) as usize] {
            0 => {
                let outputs = self.cluster.deliver_one();
                self.outputs(outputs);
            }
            1 => {
                let index = ready[self.rng().below64(ready.len() as u64) as usize];
                self.run_client(index);
            }
            2 => {
                let index = engine_inbox[self.rng().below64(engine_inbox.len() as u64) as usize];
                let input = self.to_engine[index].pop_front().expect("non-empty");
                self.run_engine(self.clients[index].node, input);
            }
            3 => {
                let index = client_inbox[self.rng().below64(client_inbox.len() as u64) as usize];
                self.client_hears(index);
            }
            4 => {
                let outputs = self.cluster.deliver_lock_available();
                self.outputs(outputs);
            }
            _ => {
                let outputs = self.cluster.deliver_lock_outcome();
                self.outputs(outputs);
            }
        }
    }

    /// Whether client `index` is frozen with its whole node, or blocked by its node's
    /// watchdog: a stopped daemon publishes no later lease, so the watchdog freezes the
    /// databases once the last `lease_until` it published is past on the node's clock.
    fn client_frozen(&self, index: usize) -> bool {
        let pnn = self.clients[index].node as usize;
        let faults = &self.faults[pnn];
        let node = &self.cluster.nodes[pnn];
        let fenced =
            node.engine.lease_until().is_some_and(|until| node.local_time(self.cluster.now) >= until);
        faults.stopped_until.is_some() && (faults.whole_node || fenced)
    }

    /// Client `index` reads the next answer to it.
    fn client_hears(&mut self, index: usize) {
        let (status, data) = self.to_client[index].pop_front().expect("non-empty");
        let now = self.cluster.now;
        let (since, read) = match self.clients[index].state {
            ClientState::WaitingReply { since } => (since, false),
            ClientState::WaitingRead { since } => (since, true),
            _ => self.fail(&format!("client {index} got a reply it did not wait for")),
        };
        // A store that failed on the node is a clear error; the client tries again.
        if status != 0 && !(status == CALL_IO_ERROR && self.store_failures_seen) {
            self.fail(&format!("client {index} got status {status}"));
        }
        if now - since > MAX_WAIT_MS {
            self.fail(&format!("client {index} waited {} ms for a record", now - since));
        }
        if read && status == 0 {
            // A read sees only what was written: never an operation not acknowledged.
            let key = self.clients[index].key.clone();
            let Some(data) = data else { self.fail(&format!("client {index}: a read answered no data")) };
            let ops = self.histories.get(&key).map_or(0, |h| h.ops);
            if let State::Written(n) = State::of(&data) {
                if n > ops {
                    self.fail(&format!("client {index} read operation {n} of {key:?}, only {ops} were done"));
                }
            }
            self.coverage.reads += 1;
        } else if !read {
            self.clients[index].owes_done = true;
        }
        self.clients[index].state = ClientState::Ready;
    }

    fn check_invariants(&mut self) {
        for (pnn, node) in self.cluster.nodes.iter_mut().enumerate() {
            // A key vacuumed everywhere starts its RSNs again.
            for (_, key) in node.store.deleted.drain(..) {
                self.last_rsn.remove(&(pnn as Pnn, key));
            }
        }
        let now = self.cluster.now;
        for index in 0..self.p.keys {
            let key = key_name(index);
            let mut holders: BTreeMap<u32, Vec<Pnn>> = BTreeMap::new();
            for (pnn, node) in self.cluster.nodes.iter().enumerate() {
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
                        if has_write_authority(node, now) && record.header.dmaster == pnn as Pnn {
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
            // Write authority: active and holding the record, in any generation.
            let authorities: Vec<(Pnn, u32)> = holders
                .iter()
                .flat_map(|(generation, nodes)| nodes.iter().map(|&n| (n, *generation)))
                .collect();
            if authorities.len() > 1 {
                self.fail(&format!("{key:?} held by active nodes in several generations: {authorities:?}"));
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
                .cluster
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
            if !history.explains(seen) {
                self.fail(&format!(
                    "{key:?} ends as {seen:?}: {} operations acknowledged, the last left {:?} on node {:?}, what survived a loss: {:?}",
                    history.ops,
                    history.last(),
                    history.last_holder(),
                    history.also
                ));
            }
            if seen == State::Deleted && self.p.vacuum_interval_ms > 0 {
                let copies: Vec<(Pnn, Record)> = (0..self.cluster.nodes.len() as Pnn)
                    .filter_map(|p| {
                        self.cluster.nodes[p as usize].store.peek(DB, key).map(|r| (p, r.clone()))
                    })
                    .collect();
                if !copies.is_empty() {
                    self.fail(&format!(
                        "{key:?} is deleted, yet copies are left after vacuuming: {copies:?}"
                    ));
                }
            }
        }
        for node in &self.cluster.nodes {
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

/// Whether `node` may change the records it holds at cluster time `now`: it serves, and
/// the lease it holds (if it needs one) has not run out on its own clock. A node whose lease
/// ran out while it was stopped still says it serves, but it lets go of its records at its
/// first input, before anything else, and its clients (fenced by the watchdog) stop then.
fn has_write_authority(node: &SimNode, now: u64) -> bool {
    node.engine.active() && node.engine.lease_until().map_or(true, |until| node.local_time(now) < until)
}

fn run_seed(seed: u64, trace: bool) -> Coverage {
    let mut sim = Sim::new(seed, trace);
    while sim.step() {
        sim.coverage.steps += 1;
        sim.check_invariants();
        if sim.coverage.steps > 400_000 {
            let nodes: Vec<String> = sim
                .cluster
                .nodes
                .iter()
                .map(|n| {
                    format!("up={} {:?} gen={:#x}", n.up, n.engine.cluster_status(), n.engine.generation())
                })
                .collect();
            let clients: Vec<ClientState> = sim.clients.iter().map(|c| c.state).collect();
            let pending: Vec<usize> = sim.cluster.nodes.iter().map(|n| n.engine.keys_pending()).collect();
            println!("keys pending per node: {pending:?}");
            sim.fail(&format!(
                "not settled after 400000 ms (livelock?): nodes {nodes:#?} clients {clients:?}"
            ));
        }
    }
    sim.check_final();
    if sim.p.clock_drift {
        sim.coverage.clock_drift.injected += 1;
    }
    sim.coverage.slow_nodes.hit = sim.cluster.counts.postponed;
    let network = sim.cluster.counts;
    (sim.coverage.dropped, sim.coverage.link_resets) = (network.dropped, network.link_resets);
    sim.coverage.attaches_sent = network.attaches_sent;
    for node in &sim.cluster.nodes {
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
    let mut failures = vec![];
    // Every seed runs: the failures are counted and listed, the first of each in full.
    let quiet_panics = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for seed in first..first + seeds {
        match std::panic::catch_unwind(|| run_seed(seed, false)) {
            Ok(coverage) => total.add(&coverage),
            Err(panic) => {
                let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
                failures.push((seed, message));
            }
        }
    }
    std::panic::set_hook(quiet_panics);
    println!("{seeds} seeds: {total:?}");
    for (seed, message) in &failures {
        let what = message.lines().last().unwrap_or_default();
        println!("seed {seed}: {what}");
    }
    if let Some((_, message)) = failures.first() {
        panic!("{} of {seeds} seeds failed; the first:\n{message}", failures.len());
    }
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
    // Gray failures: each injected, and each hit something (packets lost to a reset,
    // deliveries a slow node postponed, a frozen node declared dead, a lock request that
    // waited for the hung helper, a death among drifting clocks, a client of a stopped
    // daemon using a record).
    assert!(total.reconnects.both() && total.slow_nodes.both() && total.frozen_nodes.both(), "{total:?}");
    assert!(total.hung_locks.both() && total.clock_drift.both(), "{total:?}");
    if Params::for_seed(0).gray {
        assert!(total.stopped_daemons.both(), "{total:?}");
    }
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let (a, b) = (run_seed(7, false), run_seed(7, false));
    assert_eq!((a.steps, a.migrations, a.recoveries), (b.steps, b.migrations, b.recoveries));
}
