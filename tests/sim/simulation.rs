//! Deterministic simulation of the migration protocol (DESIGN §7.2): 3–5 engines with
//! in-memory stores on a seeded fake network that delays, reorders and duplicates packets,
//! and clients that increment counters the way smbd uses records (chain lock, check
//! DMASTER, otherwise ask for a migration and retry). Invariants are checked after every
//! step; a failing seed names itself and how to replay it.
//!
//! `RCTDB_SIM_SEEDS=N` runs more seeds; `RCTDB_SIM_SEED=S` replays one seed with a trace.

use std::collections::{BTreeMap, VecDeque};

use rctdb::engine::sim::{counter_value, key_name, packet_key, Cluster, Network, Rng, SimNode};
use rctdb::engine::{
    CallKind, ClientCall, ClientId, Engine, EngineConfig, Input, MemStore, Output, RecordStore,
};
use rctdb::wire::{DbId, Pnn, ReqId};

const DB: DbId = 0x5eed;
const GENERATION: u32 = 7;

#[derive(Debug, Clone, Copy)]
struct Params {
    nodes: usize,
    clients_per_node: usize,
    increments: usize,
    keys: usize,
    /// Deliver each link in order (TCP) or in any order.
    fifo_links: bool,
    duplicate_percent: u64,
    /// Per step, the chance that some client process dies.
    crash_percent: u64,
    /// How long a migration may take before its request is sent again.
    resend_ms: u64,
}

impl Params {
    fn for_seed(seed: u64) -> Params {
        let mut rng = Rng(seed ^ 0xa5a5);
        Params {
            nodes: 3 + rng.below(3),
            clients_per_node: 1 + rng.below(3),
            increments: 5 + rng.below(20),
            keys: 1 + rng.below(3),
            fifo_links: rng.percent(70),
            duplicate_percent: if rng.percent(30) { 3 } else { 0 },
            crash_percent: if rng.percent(20) { 1 } else { 0 },
            resend_ms: if rng.percent(30) { 5 + rng.below(300) as u64 } else { 2000 },
        }
    }
}

#[derive(Debug, PartialEq)]
enum ClientState {
    Ready,
    WaitingLock,
    /// Between taking the chain lock and the store: the engine may want the lock meanwhile.
    HoldingLock,
    WaitingReply,
    Finished,
    /// The process died: the kernel dropped its chain lock, its connection closed.
    Crashed,
}

struct Client {
    id: ClientId,
    node: Pnn,
    key: Vec<u8>,
    state: ClientState,
    remaining: usize,
    next_reqid: ReqId,
    /// Answered after a migration and not yet said it is done with the record.
    owes_done: bool,
    /// Asks for first use (and says when done), as librctdb does; raw clients do not.
    first_use: bool,
}

struct Sim {
    params: Params,
    cluster: Cluster,
    clients: Vec<Client>,
    to_engine: Vec<VecDeque<Input>>,
    to_client: Vec<VecDeque<i32>>,
    acked: BTreeMap<Vec<u8>, u64>,
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Sim {
        let params = Params::for_seed(seed);
        let vnn_map: Vec<Pnn> = (0..params.nodes as Pnn).collect();
        let nodes = (0..params.nodes as Pnn)
            .map(|pnn| {
                let mut config = EngineConfig::new(pnn, GENERATION, vnn_map.clone());
                config.tunables.migration_resend_ms = params.resend_ms;
                config.tunables.migration_resend_max_ms = params.resend_ms.max(2000);
                let mut engine = Engine::new(config);
                engine.attach_db(DB, "sim.tdb");
                SimNode::new(engine, MemStore::new())
            })
            .collect();
        let mut cluster = Cluster::new(nodes, seed);
        cluster.membership = false;
        cluster.network = Network {
            in_order: params.fifo_links,
            loss: 0,
            duplication: params.duplicate_percent * 10,
            duplicates_left: Some(30),
        };
        cluster.trace = trace;
        cluster.context = format!(
            "seed {seed} (replay: RCTDB_SIM_SEED={seed} cargo test --test sim simulation:: -- --nocapture)\n  params {params:?}\n  "
        );
        let rng = &mut cluster.rng;
        let mut clients = vec![];
        for node in 0..params.nodes {
            for _ in 0..params.clients_per_node {
                let id = clients.len() as ClientId;
                clients.push(Client {
                    id,
                    node: node as Pnn,
                    key: key_name(rng.below(params.keys)),
                    state: ClientState::Ready,
                    remaining: params.increments,
                    next_reqid: 1,
                    owes_done: false,
                    first_use: rng.percent(80),
                });
            }
        }
        let client_count = clients.len();
        Sim {
            params,
            cluster,
            clients,
            to_engine: vec![VecDeque::new(); client_count],
            to_client: vec![VecDeque::new(); client_count],
            acked: BTreeMap::new(),
        }
    }

    fn fail(&self, what: &str) -> ! {
        self.cluster.fail(what)
    }

    fn run_engine(&mut self, pnn: Pnn, input: Input) {
        let outputs = self.cluster.input(pnn, input);
        self.outputs(outputs.into_iter().map(|o| (pnn, o)).collect());
    }

    /// The replies the harness hands back (a fixed cluster fails on anything else).
    fn outputs(&mut self, outputs: Vec<(Pnn, Output)>) {
        for (_, output) in outputs {
            let Output::ClientReply { client, reqid, status, .. } = output else {
                self.fail(&format!("the harness handed back {output:?}"))
            };
            if self.clients[client as usize].state == ClientState::Crashed {
                continue; // nobody reads a dead process's socket
            }
            let expected = self.clients[client as usize].next_reqid;
            if reqid != expected {
                self.fail(&format!("client {client} got reply {reqid}, expected {expected}"));
            }
            self.to_client[client as usize].push_back(status);
        }
    }

    /// The client's read-modify-write: Samba's fetch-locked contract.
    fn run_client(&mut self, index: usize) {
        let (node, id, key) = {
            let c = &self.clients[index];
            (c.node as usize, c.id, c.key.clone())
        };
        if self.clients[index].state == ClientState::Ready {
            let locked = self.cluster.client_lock(node as Pnn, DB, &key, id);
            self.clients[index].state =
                if locked { ClientState::HoldingLock } else { ClientState::WaitingLock };
            return;
        }
        let record = self.cluster.nodes[node].store.fetch(DB, &key).expect("memory store");
        let here = record.as_ref().is_some_and(|r| r.header.dmaster == node as Pnn);
        if let (true, Some(mut record)) = (here, record) {
            // A store under the chain lock keeps the header it read.
            record.data = (counter_value(&record.data) + 1).to_le_bytes().to_vec();
            self.cluster.nodes[node].store.store(DB, &key, &record).expect("memory store");
            *self.acked.entry(key.clone()).or_default() += 1;
        }
        self.release_client_lock(node, &key);
        let client = &mut self.clients[index];
        if client.owes_done && client.first_use {
            client.owes_done = false;
            self.to_engine[index].push_back(Input::ClientDone { client: id, db_id: DB, key: key.clone() });
        }
        let client = &mut self.clients[index];
        if here {
            client.remaining -= 1;
            client.state = if client.remaining == 0 { ClientState::Finished } else { ClientState::Ready };
            if client.remaining > 0 && self.cluster.rng.percent(30) {
                self.clients[index].key = key_name(self.cluster.rng.below(self.params.keys));
            }
        } else {
            client.next_reqid += 1;
            let (reqid, first_use) = (client.next_reqid, client.first_use);
            client.state = ClientState::WaitingReply;
            self.to_engine[index].push_back(Input::ClientCall(ClientCall {
                client: id,
                reqid,
                db_id: DB,
                key,
                first_use,
                kind: CallKind::Migrate,
            }));
        }
    }

    /// A client process dies wherever it is: its lock goes (the kernel drops fcntl locks),
    /// and the daemon sees its connection close after what it had already sent.
    fn crash_client(&mut self, index: usize) {
        let (node, id, key) = {
            let c = &self.clients[index];
            (c.node as usize, c.id, c.key.clone())
        };
        if self.clients[index].state == ClientState::HoldingLock {
            self.release_client_lock(node, &key);
        }
        self.clients[index].state = ClientState::Crashed;
        self.to_client[index].clear();
        self.to_engine[index].push_back(Input::ClientGone(id));
    }

    fn release_client_lock(&mut self, node: usize, key: &[u8]) {
        self.cluster.client_unlock(node as Pnn, DB, key);
        for client in &mut self.clients {
            if client.node == node as Pnn && client.key == key && client.state == ClientState::WaitingLock {
                client.state = ClientState::Ready;
            }
        }
    }

    /// One scheduling decision; false when nothing is left to do.
    fn step(&mut self) -> bool {
        self.cluster.now += self.cluster.rng.below(3) as u64;
        let ready_clients: Vec<usize> = (0..self.clients.len())
            .filter(|&i| matches!(self.clients[i].state, ClientState::Ready | ClientState::HoldingLock))
            .collect();
        let engine_inbox: Vec<usize> =
            (0..self.clients.len()).filter(|&i| !self.to_engine[i].is_empty()).collect();
        let client_inbox: Vec<usize> =
            (0..self.clients.len()).filter(|&i| !self.to_client[i].is_empty()).collect();
        let mut choices = vec![];
        for (choice, available) in [
            (0, self.cluster.packets_in_flight() > 0),
            (1, !ready_clients.is_empty()),
            (2, !engine_inbox.is_empty()),
            (3, !client_inbox.is_empty()),
            (4, !self.cluster.lock_available.is_empty()),
        ] {
            if available {
                choices.push(choice);
            }
        }
        let alive: Vec<usize> = (0..self.clients.len())
            .filter(|&i| !matches!(self.clients[i].state, ClientState::Finished | ClientState::Crashed))
            .collect();
        let rng = &mut self.cluster.rng;
        if self.params.crash_percent > 0 && !alive.is_empty() && rng.percent(self.params.crash_percent) {
            let index = alive[rng.below(alive.len())];
            self.crash_client(index);
            return true;
        }
        if choices.is_empty() {
            return false;
        }
        match choices[rng.below(choices.len())] {
            0 => {
                let outputs = self.cluster.deliver_one();
                self.outputs(outputs);
            }
            1 => {
                let index = ready_clients[rng.below(ready_clients.len())];
                self.run_client(index);
            }
            2 => {
                let index = engine_inbox[rng.below(engine_inbox.len())];
                let input = self.to_engine[index].pop_front().expect("non-empty");
                self.run_engine(self.clients[index].node, input);
            }
            3 => {
                let index = client_inbox[rng.below(client_inbox.len())];
                let status = self.to_client[index].pop_front().expect("non-empty");
                if status != 0 {
                    self.fail(&format!("client {index} got status {status}"));
                }
                self.clients[index].owes_done = true;
                self.clients[index].state = ClientState::Ready;
            }
            _ => {
                let outputs = self.cluster.deliver_lock_available();
                self.outputs(outputs);
            }
        }
        if self.cluster.rng.percent(5) {
            let outputs = self.cluster.tick_all();
            self.outputs(outputs);
        }
        true
    }

    /// Nodes whose copy of `key` names themselves as DMASTER (the LMASTER too, while the key
    /// was never stored anywhere).
    fn holders(&self, key: &[u8]) -> Vec<Pnn> {
        let lmaster = self.cluster.nodes[0].engine.lmaster(key);
        (0..self.cluster.nodes.len() as Pnn)
            .filter(|&pnn| match self.cluster.nodes[pnn as usize].store.peek(DB, key) {
                Some(record) => record.header.dmaster == pnn,
                None => pnn == lmaster,
            })
            .collect()
    }

    fn key_quiet(&self, key: &[u8]) -> bool {
        let in_network = self.cluster.packets().any(|p| packet_key(p) == Some(key));
        let in_engines = self.cluster.nodes.iter().any(|n| n.engine.key_busy(DB, key));
        !in_network && !in_engines
    }

    fn check_invariants(&self) {
        for index in 0..self.params.keys {
            let key = key_name(index);
            let holders = self.holders(&key);
            if holders.len() > 1 {
                self.fail(&format!("{} held by several nodes: {holders:?}", String::from_utf8_lossy(&key)));
            }
            if !self.key_quiet(&key) {
                continue;
            }
            let lmaster = self.cluster.nodes[0].engine.lmaster(&key);
            let recorded = match self.cluster.nodes[lmaster as usize].store.peek(DB, &key) {
                Some(record) => record.header.dmaster,
                None => lmaster,
            };
            if holders != [recorded] {
                self.fail(&format!(
                    "{} quiet, LMASTER {lmaster} records DMASTER {recorded}, holders {holders:?}",
                    String::from_utf8_lossy(&key)
                ));
            }
        }
    }

    fn check_final_values(&self) {
        for client in &self.clients {
            if !matches!(client.state, ClientState::Finished | ClientState::Crashed) {
                self.fail(&format!("client {} stuck in {:?}", client.id, client.state));
            }
        }
        for (key, acked) in &self.acked {
            let holder = self.holders(key)[0];
            let record =
                self.cluster.nodes[holder as usize].store.peek(DB, key).expect("holder has the record");
            let value = counter_value(&record.data);
            if value != *acked {
                self.fail(&format!(
                    "{} is {value}, {acked} increments acknowledged",
                    String::from_utf8_lossy(key)
                ));
            }
            assert!(record.header.rsn >= 1, "a stored record has a real RSN: {:?}", record.header);
        }
        for node in &self.cluster.nodes {
            if node.engine.keys_pending() > 0 {
                self.fail(&format!(
                    "node {} still tracks {} keys at rest",
                    node.engine.pnn(),
                    node.engine.keys_pending()
                ));
            }
            if node.engine.stats().protocol_violations > 0 {
                self.fail(&format!(
                    "node {} saw protocol violations: {:?}",
                    node.engine.pnn(),
                    node.engine.stats()
                ));
            }
        }
    }
}

/// What one run did, summed over seeds to show which protocol paths the seeds reached.
#[derive(Debug, Default)]
struct Coverage {
    steps: u64,
    migrations: u64,
    forwards: u64,
    parked: u64,
    lock_waits: u64,
    duplicates_dropped: u64,
    crashes: u64,
    resends: u64,
}

impl Coverage {
    fn add(&mut self, other: &Coverage) {
        self.steps += other.steps;
        self.migrations += other.migrations;
        self.forwards += other.forwards;
        self.parked += other.parked;
        self.lock_waits += other.lock_waits;
        self.duplicates_dropped += other.duplicates_dropped;
        self.crashes += other.crashes;
        self.resends += other.resends;
    }
}

fn run_seed(seed: u64, trace: bool) -> Coverage {
    let mut sim = Sim::new(seed, trace);
    let mut coverage = Coverage::default();
    while sim.step() {
        coverage.steps += 1;
        sim.check_invariants();
        if coverage.steps > 1_000_000 {
            sim.fail("no progress after a million steps (livelock?)");
        }
    }
    sim.check_final_values();
    coverage.crashes = sim.clients.iter().filter(|c| c.state == ClientState::Crashed).count() as u64;
    for stats in sim.cluster.nodes.iter().map(|node| node.engine.stats()) {
        coverage.add(&Coverage {
            migrations: stats.migrations_completed,
            forwards: stats.calls_forwarded,
            parked: stats.calls_parked,
            lock_waits: stats.lock_waits,
            duplicates_dropped: stats.duplicates_dropped,
            resends: stats.calls_resent,
            ..Coverage::default()
        });
    }
    coverage
}

#[test]
fn seeded_clusters_never_lose_an_increment() {
    if let Ok(seed) = std::env::var("RCTDB_SIM_SEED") {
        let seed: u64 = seed.parse().expect("RCTDB_SIM_SEED is a number");
        println!("seed {seed}: {:?}", run_seed(seed, true));
        return;
    }
    let seeds: u64 = std::env::var("RCTDB_SIM_SEEDS").ok().and_then(|n| n.parse().ok()).unwrap_or(2000);
    let mut total = Coverage::default();
    for seed in 0..seeds {
        total.add(&run_seed(seed, false));
    }
    println!("{seeds} seeds: {total:?}");
    // The seeds must keep reaching the interesting paths, or passing means little.
    assert!(total.migrations > seeds, "{total:?}");
    assert!(total.forwards > 0 && total.parked > 0 && total.lock_waits > 0, "{total:?}");
    assert!(total.duplicates_dropped > 0 && total.crashes > 0 && total.resends > 0, "{total:?}");
}

#[test]
fn the_same_seed_replays_the_same_run() {
    let (first, second) = (run_seed(42, false), run_seed(42, false));
    assert_eq!((first.steps, first.migrations), (second.steps, second.migrations));
}
