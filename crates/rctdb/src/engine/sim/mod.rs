//! One simulated cluster for every engine test: engines with in-memory stores, the links
//! between them, a clock, and the routing of what engines output. Unit tests of single
//! protocol steps, vacuuming scenarios and the seeded simulations all drive it; what differs
//! between them is what their clients do and what they check.
//!
//! The harness routes what concerns the cluster: packets onto links (or the floor), chain
//! lock and write waits, freezes, the cluster lock. What concerns clients (replies, attach
//! results, events, thaws) it hands back to the test from every call that runs an engine.
//! Faults are switches: in-order or shuffled links, loss, duplication, a partition, link
//! resets, crashes and restarts, a hung cluster lock.
//!
//! Compiled for the crate's own tests and with the `sim` feature, which the integration
//! tests get through the crate's dev-dependency on itself.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::store::LockOwner;
use super::{Engine, Input, LockOutcome, MemStore, Millis, Output};
use crate::wire::{Body, DbId, Packet, Pnn};

/// splitmix64: tiny, seedable, and the same sequence on every machine.
#[derive(Debug, Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn below64(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn percent(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    pub fn per_mille(&mut self, per_mille: u64) -> bool {
        self.next_u64() % 1000 < per_mille
    }
}

/// The simulated clients' records: counters named by number.
pub fn key_name(index: usize) -> Vec<u8> {
    format!("counter-{index}").into_bytes()
}

/// A counter's value from a record's data (little endian, absent bytes zero).
pub fn counter_value(data: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes[..data.len().min(8)].copy_from_slice(&data[..data.len().min(8)]);
    u64::from_le_bytes(bytes)
}

/// How the links treat packets.
#[derive(Debug, Clone, Copy, Default)]
pub struct Network {
    /// Each link delivers in order (TCP); otherwise any queued migration packet may be next.
    /// Membership and recovery packets keep TCP's order either way, as CTDB relies on it.
    pub in_order: bool,
    /// Per mille of packets lost on delivery.
    pub loss: u64,
    /// Per mille of migration packets sent twice (TCP never duplicates; resends do).
    pub duplication: u64,
    /// At most this many duplicates over the run, if bounded.
    pub duplicates_left: Option<u32>,
}

/// What the network did, for coverage counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetworkCounts {
    pub dropped: u64,
    pub attaches_sent: u64,
    pub link_resets: u64,
    /// Deliveries and ticks a slow node did not take when offered.
    pub postponed: u64,
    /// Cluster lock requests that waited for a hung lock helper.
    pub lock_requests_held: u64,
}

/// One packet delivered: (operation, from, to). A REQ_CALL's sender is `u32::MAX`, as it
/// may be forwarded on behalf of another node.
pub type Delivery = (u32, Pnn, Pnn);

pub struct SimNode {
    pub engine: Engine,
    pub store: MemStore,
    /// Down after a crash, until restarted: it runs nothing and hears nothing.
    pub up: bool,
    /// Chain locks the engine waits for (`Output::WaitForChainLock`).
    pub lock_waits: Vec<(DbId, Vec<u8>)>,
    /// Records whose clients wait until the file took them (`Output::WaitForWrite`).
    pub write_waits: Vec<(DbId, Vec<u8>)>,
    /// Databases to freeze once no client holds a lock (`Output::FreezeDb`).
    pub freeze_pending: BTreeSet<DbId>,
    /// Restarts so far.
    pub incarnation: u64,
    /// The daemon is stopped (SIGSTOP): its engine runs nothing, packets wait on their
    /// links, and other inputs wait here until it resumes.
    pub stopped: bool,
    pub held_inputs: VecDeque<Input>,
    /// Per mille of deliveries and ticks to this node postponed: a slow node.
    pub slowness: u64,
    /// How much faster (or, negative, slower) this node's clock runs, in parts per million.
    pub clock_rate_ppm: i64,
}

impl SimNode {
    pub fn new(engine: Engine, store: MemStore) -> SimNode {
        SimNode {
            engine,
            store,
            up: true,
            lock_waits: vec![],
            write_waits: vec![],
            freeze_pending: BTreeSet::new(),
            incarnation: 0,
            stopped: false,
            held_inputs: VecDeque::new(),
            slowness: 0,
            clock_rate_ppm: 0,
        }
    }

    /// The node's own clock at cluster time `now`: monotonic, at its own rate.
    pub fn local_time(&self, now: Millis) -> Millis {
        let ppm = 1_000_000i128 + self.clock_rate_ppm as i128;
        (now as i128 * ppm / 1_000_000) as Millis
    }
}

pub struct Cluster {
    pub now: Millis,
    pub nodes: Vec<SimNode>,
    /// Packets queued from one node to another, each stamped with its send order.
    links: BTreeMap<(Pnn, Pnn), VecDeque<(u64, Packet)>>,
    sent: u64,
    pub network: Network,
    pub counts: NetworkCounts,
    /// One side of a partition: nothing crosses between it and the rest.
    pub partition: Option<BTreeSet<Pnn>>,
    pub rng: Rng,
    /// Who holds the cluster lock, and what lock requests were answered.
    pub lock_holder: Option<Pnn>,
    pub lock_outcomes: VecDeque<(Pnn, LockOutcome)>,
    /// The lock helper answers nothing (a hung cluster filesystem): requests wait.
    lock_hung: bool,
    lock_requests_held: Vec<Pnn>,
    /// Chain locks (or written records) the engines may go on with now.
    pub lock_available: VecDeque<(Pnn, DbId, Vec<u8>)>,
    /// With membership off, an output that only membership produces is a failure.
    pub membership: bool,
    /// Every packet delivered, if kept.
    pub deliveries: Option<Vec<Delivery>>,
    pub trace: bool,
    /// Said with every failure: the seed and how to replay it.
    pub context: String,
}

impl Cluster {
    pub fn new(nodes: Vec<SimNode>, seed: u64) -> Cluster {
        Cluster {
            now: 0,
            nodes,
            links: BTreeMap::new(),
            sent: 0,
            network: Network { in_order: true, ..Network::default() },
            counts: NetworkCounts::default(),
            partition: None,
            rng: Rng(seed),
            lock_holder: None,
            lock_outcomes: VecDeque::new(),
            lock_hung: false,
            lock_requests_held: vec![],
            lock_available: VecDeque::new(),
            membership: true,
            deliveries: None,
            trace: false,
            context: String::new(),
        }
    }

    /// A fixed cluster for step-by-step scenarios: in-order links, no membership, every
    /// delivery logged.
    pub fn fixed(engines: Vec<Engine>) -> Cluster {
        let nodes = engines.into_iter().map(|engine| SimNode::new(engine, MemStore::new())).collect();
        let mut cluster = Cluster::new(nodes, 0);
        cluster.membership = false;
        cluster.deliveries = Some(vec![]);
        cluster
    }

    pub fn fail(&self, what: &str) -> ! {
        panic!("{}failed at t={}: {what}", self.context, self.now)
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn pnns(&self) -> std::ops::Range<Pnn> {
        0..self.nodes.len() as Pnn
    }

    /// Runs `input` on node `pnn` (nothing, if it is down) and routes its outputs; returns
    /// what the node's clients and the test must hear.
    pub fn input(&mut self, pnn: Pnn, input: Input) -> Vec<Output> {
        let node = &mut self.nodes[pnn as usize];
        if !node.up {
            return vec![];
        }
        if node.stopped {
            // A stopped process misses no event, only time: ticks are not kept.
            if input != Input::Tick {
                node.held_inputs.push_back(input);
            }
            return vec![];
        }
        if self.trace {
            println!("t={} node {pnn} <- {input:?}", self.now);
        }
        let mut out = vec![];
        let now = node.local_time(self.now);
        node.engine.handle(now, input, &mut node.store, &mut out);
        let mut for_test = vec![];
        for output in out {
            if self.trace {
                println!("        node {pnn} -> {output:?}");
            }
            self.route(pnn, output, &mut for_test);
        }
        for_test
    }

    fn route(&mut self, pnn: Pnn, output: Output, for_test: &mut Vec<Output>) {
        let node = &mut self.nodes[pnn as usize];
        match output {
            Output::Send(packet) => self.send(pnn, packet),
            Output::WaitForChainLock { db_id, key } => node.lock_waits.push((db_id, key)),
            Output::WaitForWrite { db_id, key } => node.write_waits.push((db_id, key)),
            Output::ClientReply { .. } => for_test.push(output),
            other if !self.membership => {
                self.fail(&format!("a fixed cluster has no membership, yet {other:?}"))
            }
            Output::FreezeDb { db_id } => {
                node.freeze_pending.insert(db_id);
            }
            Output::ThawDb { db_id } => {
                node.freeze_pending.remove(&db_id);
                node.store.frozen = false;
                for_test.push(Output::ThawDb { db_id });
            }
            Output::TakeClusterLock => {
                if self.lock_hung {
                    self.counts.lock_requests_held += 1;
                    self.lock_requests_held.push(pnn);
                    return;
                }
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
            Output::AttachDone { .. } | Output::Event(_) => for_test.push(output),
        }
    }

    /// Queues a packet from `from` on its link, once or (a duplicated resend) twice.
    pub fn send(&mut self, from: Pnn, packet: Packet) {
        let to = packet.destnode;
        let forwarded_call = matches!(packet.body, Body::ReqCall(_));
        if to == from || to as usize >= self.nodes.len() || packet.srcnode != from && !forwarded_call {
            self.fail(&format!("node {from} sent a misaddressed packet {packet:?}"));
        }
        if matches!(packet.body, Body::Cluster(crate::wire::cluster::ClusterMsg::Attach { .. })) {
            self.counts.attaches_sent += 1;
        }
        let duplicable = !matches!(packet.body, Body::Cluster(_)) && self.network.duplicates_left != Some(0);
        let copies = if duplicable && self.rng.per_mille(self.network.duplication) {
            if let Some(left) = &mut self.network.duplicates_left {
                *left -= 1;
            }
            2
        } else {
            1
        };
        let link = self.links.entry((from, to)).or_default();
        for _ in 0..copies {
            self.sent += 1;
            link.push_back((self.sent, packet.clone()));
        }
    }

    pub fn packets(&self) -> impl Iterator<Item = &Packet> {
        self.links.values().flatten().map(|(_, packet)| packet)
    }

    pub fn packets_in_flight(&self) -> usize {
        self.links.values().map(VecDeque::len).sum()
    }

    fn busy_links(&self) -> Vec<(Pnn, Pnn)> {
        self.links.iter().filter(|(_, queue)| !queue.is_empty()).map(|(link, _)| *link).collect()
    }

    /// Whether the partition separates `a` from `b`.
    pub fn cut_off(&self, a: Pnn, b: Pnn) -> bool {
        self.partition.as_ref().is_some_and(|side| side.contains(&a) != side.contains(&b))
    }

    /// Delivers one packet of a link the RNG picks (lost, if cut off or unlucky); returns
    /// what its destination's clients must hear.
    pub fn deliver_one(&mut self) -> Vec<(Pnn, Output)> {
        let busy = self.busy_links();
        if busy.is_empty() {
            return vec![];
        }
        let (a, b) = busy[self.rng.below(busy.len())];
        let to = &self.nodes[b as usize];
        if to.stopped {
            return vec![]; // it waits in the socket
        }
        if to.slowness > 0 && self.rng.per_mille(to.slowness) {
            self.counts.postponed += 1;
            return vec![];
        }
        let queue = self.links.get_mut(&(a, b)).expect("busy link");
        let mut at = if self.network.in_order { 0 } else { self.rng.below(queue.len()) };
        if matches!(queue[at].1.body, Body::Cluster(_)) {
            at = queue.iter().position(|(_, p)| matches!(p.body, Body::Cluster(_))).expect("one is");
        }
        let (_, packet) = queue.remove(at).expect("in range");
        if self.cut_off(a, b) || self.rng.per_mille(self.network.loss) {
            self.counts.dropped += 1;
            return vec![];
        }
        self.deliver(packet).into_iter().map(|output| (b, output)).collect()
    }

    /// The packet sent first of all still queued, off its link.
    pub fn take_next_packet(&mut self) -> Option<Packet> {
        let (_, link) = self
            .links
            .iter()
            .filter_map(|(link, queue)| queue.front().map(|(sent, _)| (*sent, *link)))
            .min()?;
        self.links.get_mut(&link).and_then(VecDeque::pop_front).map(|(_, packet)| packet)
    }

    /// Delivers packets in the order they were sent until none is left.
    pub fn deliver_all(&mut self) -> Vec<(Pnn, Output)> {
        let mut for_test = vec![];
        while let Some(packet) = self.take_next_packet() {
            let to = packet.destnode;
            for_test.extend(self.deliver(packet).into_iter().map(|output| (to, output)));
        }
        for_test
    }

    /// Hands a packet to its destination now.
    pub fn deliver(&mut self, packet: Packet) -> Vec<Output> {
        let to = packet.destnode;
        if let Some(log) = &mut self.deliveries {
            let from = if matches!(packet.body, Body::ReqCall(_)) { u32::MAX } else { packet.srcnode };
            log.push((packet.body.operation(), from, to));
        }
        self.input(to, Input::Packet(packet))
    }

    /// Drops every queued packet for which `lost` says so (a connection's buffers gone).
    pub fn lose_packets(&mut self, lost: impl Fn(&Packet) -> bool) {
        for queue in self.links.values_mut() {
            queue.retain(|(_, packet)| !lost(packet));
        }
    }

    /// A connection reset on a busy link the RNG picks: what was queued on it is gone, and
    /// its sender reconnects at once. Returns the link, if any was busy.
    pub fn reset_busy_link(&mut self) -> Option<((Pnn, Pnn), Vec<Output>)> {
        let busy = self.busy_links();
        let &(a, b) = busy.get(self.rng.below(busy.len().max(1)))?;
        Some(((a, b), self.reset_link(a, b)))
    }

    /// Resets the connection from `a` to `b`: queued packets are lost, `a` sees it go down
    /// and come back.
    pub fn reset_link(&mut self, a: Pnn, b: Pnn) -> Vec<Output> {
        self.counts.link_resets += 1;
        self.links.remove(&(a, b));
        let mut for_test = self.input(a, Input::LinkDown(b));
        for_test.extend(self.input(a, Input::LinkUp(b)));
        for_test
    }

    /// Engines whose freeze no client lock holds up any more are told they are frozen.
    pub fn complete_freezes(&mut self) -> Vec<(Pnn, Output)> {
        let mut for_test = vec![];
        for pnn in self.pnns() {
            let node = &mut self.nodes[pnn as usize];
            if !node.up || node.stopped || node.freeze_pending.is_empty() || node.store.client_holds_a_lock()
            {
                continue;
            }
            node.store.frozen = true;
            for db_id in std::mem::take(&mut node.freeze_pending) {
                for_test.extend(self.input(pnn, Input::Frozen { db_id }).into_iter().map(|o| (pnn, o)));
            }
        }
        for_test
    }

    /// Ticks every node (a slow one, mostly).
    pub fn tick_all(&mut self) -> Vec<(Pnn, Output)> {
        let mut for_test = vec![];
        for pnn in self.pnns() {
            let slowness = self.nodes[pnn as usize].slowness;
            if slowness > 0 && self.rng.per_mille(slowness) {
                self.counts.postponed += 1;
                continue;
            }
            for_test.extend(self.input(pnn, Input::Tick).into_iter().map(|o| (pnn, o)));
        }
        for_test
    }

    /// A client on `pnn` takes `key`'s chain lock, if it is free.
    pub fn client_lock(&mut self, pnn: Pnn, db: DbId, key: &[u8], client: u64) -> bool {
        self.nodes[pnn as usize].store.lock_as(db, key, LockOwner::Client(client))
    }

    /// A client on `pnn` releases `key`'s chain lock: every key the engine waits for on that
    /// chain may go on (the engine retries the others).
    pub fn client_unlock(&mut self, pnn: Pnn, db: DbId, key: &[u8]) {
        let node = &mut self.nodes[pnn as usize];
        node.store.unlock_any(db, key);
        let (freed, waiting): (Vec<_>, Vec<_>) =
            node.lock_waits.drain(..).partition(|(d, k)| *d == db && node.store.same_chain(db, k, key));
        node.lock_waits = waiting;
        self.lock_available.extend(freed.into_iter().map(|(db, key)| (pnn, db, key)));
    }

    /// The file of `pnn` takes writes again: records kept in memory are written and their
    /// clients may go on.
    pub fn writes_accepted(&mut self, pnn: Pnn) {
        let node = &mut self.nodes[pnn as usize];
        node.store.write_refused();
        let written: Vec<_> = node.write_waits.drain(..).collect();
        self.lock_available.extend(written.into_iter().map(|(db, key)| (pnn, db, key)));
    }

    /// Tells the first engine waiting for a chain lock (or a write) that it may go on.
    pub fn deliver_lock_available(&mut self) -> Vec<(Pnn, Output)> {
        let Some((pnn, db_id, key)) = self.lock_available.pop_front() else { return vec![] };
        self.input(pnn, Input::ChainLockAvailable { db_id, key }).into_iter().map(|o| (pnn, o)).collect()
    }

    /// Tells the first engine that asked for the cluster lock what became of it.
    pub fn deliver_lock_outcome(&mut self) -> Vec<(Pnn, Output)> {
        let Some((pnn, outcome)) = self.lock_outcomes.pop_front() else { return vec![] };
        self.input(pnn, Input::ClusterLock(outcome)).into_iter().map(|o| (pnn, o)).collect()
    }

    /// The lock helper stops answering (or, `false`, answers again, every request that
    /// waited).
    pub fn hang_lock(&mut self, hung: bool) {
        self.lock_hung = hung;
        if !hung {
            for pnn in std::mem::take(&mut self.lock_requests_held) {
                self.route(pnn, Output::TakeClusterLock, &mut vec![]);
            }
        }
    }

    /// Stops node `pnn`'s daemon (SIGSTOP) or resumes it (SIGCONT), when it handles what
    /// waited for it.
    pub fn stop(&mut self, pnn: Pnn, stopped: bool) -> Vec<(Pnn, Output)> {
        let node = &mut self.nodes[pnn as usize];
        node.stopped = stopped;
        let mut for_test = vec![];
        if !stopped {
            for input in std::mem::take(&mut node.held_inputs) {
                for_test.extend(self.input(pnn, input).into_iter().map(|o| (pnn, o)));
            }
        }
        for_test
    }

    /// Resets the connection between `a` and `b`, and both reconnect at once: what was
    /// queued either way is lost, each side sees the link go down and come up.
    pub fn reset_connection(&mut self, a: Pnn, b: Pnn) -> (u64, Vec<(Pnn, Output)>) {
        self.counts.link_resets += 1;
        let lost =
            [(a, b), (b, a)].iter().filter_map(|link| self.links.remove(link)).map(|q| q.len() as u64).sum();
        let mut for_test = vec![];
        for (from, to) in [(a, b), (b, a)] {
            for input in [Input::LinkDown(to), Input::LinkUp(to)] {
                for_test.extend(self.input(from, input).into_iter().map(|o| (from, o)));
            }
        }
        (lost, for_test)
    }

    /// Node `k` crashes: its process and everything in memory are gone, its lock is dropped
    /// by the kernel, its connections close; peers see the links go down and, half the time,
    /// their reconnect refused.
    pub fn crash(&mut self, k: Pnn) -> Vec<(Pnn, Output)> {
        let node = &mut self.nodes[k as usize];
        node.up = false;
        node.stopped = false;
        node.held_inputs.clear();
        node.store.clear();
        node.lock_waits.clear();
        node.write_waits.clear();
        node.freeze_pending.clear();
        if self.lock_holder == Some(k) {
            self.lock_holder = None;
        }
        self.lock_requests_held.retain(|&p| p != k);
        self.lock_available.retain(|(p, _, _)| *p != k);
        self.lock_outcomes.retain(|(p, _)| *p != k);
        self.links.retain(|(a, b), _| *a != k && *b != k);
        let mut for_test = vec![];
        for peer in self.pnns().filter(|&p| p != k) {
            for_test.extend(self.input(peer, Input::LinkDown(k)).into_iter().map(|o| (peer, o)));
            if self.rng.percent(50) {
                // Its reconnect found no listener.
                for_test.extend(self.input(peer, Input::Refused(k)).into_iter().map(|o| (peer, o)));
            }
        }
        for_test
    }

    /// Node `k` starts again with `engine` and an empty `store`; its peers connect to it.
    pub fn restart(&mut self, k: Pnn, engine: Engine, store: MemStore) -> Vec<(Pnn, Output)> {
        let node = &mut self.nodes[k as usize];
        node.incarnation += 1;
        node.engine = engine;
        node.store = store;
        node.up = true;
        let mut for_test = vec![];
        for peer in self.pnns().filter(|&p| p != k) {
            for_test.extend(self.input(peer, Input::LinkUp(k)).into_iter().map(|o| (peer, o)));
        }
        for_test
    }

    /// Nothing queued on any link, for any lock, or from the lock helper.
    pub fn network_idle(&self) -> bool {
        self.links.values().all(VecDeque::is_empty)
            && self.lock_available.is_empty()
            && self.lock_outcomes.is_empty()
    }

    /// Operations of packets delivered so far, with their destinations.
    pub fn delivered_operations(&self) -> Vec<(u32, Pnn)> {
        self.deliveries.iter().flatten().map(|(op, _, to)| (*op, *to)).collect()
    }

    /// Forgets the deliveries logged so far.
    pub fn clear_deliveries(&mut self) {
        if let Some(log) = &mut self.deliveries {
            log.clear();
        }
    }
}

/// Whether a packet carries a migration of `key` (a request or a handover).
pub fn packet_key(packet: &Packet) -> Option<&[u8]> {
    match &packet.body {
        Body::ReqCall(c) => Some(&c.key),
        Body::ReqDmaster(d) => Some(&d.key),
        Body::ReplyDmaster(r) => Some(&r.key),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::wire::{Keepalive, Packet};

    fn two_nodes() -> Cluster {
        let engines = (0..2).map(|pnn| Engine::new(EngineConfig::new(pnn, 1, vec![0, 1]))).collect();
        Cluster::fixed(engines)
    }

    fn keepalive(from: Pnn, to: Pnn, reqid: u32) -> Packet {
        Packet {
            generation: 1,
            destnode: to,
            srcnode: from,
            reqid,
            body: Body::Keepalive(Keepalive { version: 1, uptime: 0 }),
        }
    }

    #[test]
    fn packets_leave_in_the_order_they_were_sent_across_links() {
        let mut cluster = two_nodes();
        cluster.send(0, keepalive(0, 1, 1));
        cluster.send(1, keepalive(1, 0, 2));
        cluster.send(0, keepalive(0, 1, 3));
        let order: Vec<u32> = std::iter::from_fn(|| cluster.take_next_packet()).map(|p| p.reqid).collect();
        assert_eq!(order, vec![1, 2, 3]);
    }

    #[test]
    fn a_node_clock_runs_at_its_own_rate_and_never_backwards() {
        let mut node = two_nodes().nodes.remove(0);
        node.clock_rate_ppm = -10_000;
        assert_eq!(node.local_time(100_000), 99_000);
        node.clock_rate_ppm = 10_000;
        assert_eq!(node.local_time(100_000), 101_000);
        assert!((0..1000).all(|t| node.local_time(t) <= node.local_time(t + 1)));
    }

    #[test]
    fn a_stopped_node_keeps_what_it_is_sent_until_it_resumes() {
        let mut cluster = two_nodes();
        cluster.send(0, keepalive(0, 1, 1));
        cluster.stop(1, true);
        assert!(cluster.deliver_one().is_empty());
        assert_eq!(cluster.packets_in_flight(), 1, "the packet waits on its link");
        cluster.input(1, Input::LinkDown(0));
        cluster.input(1, Input::Tick);
        assert_eq!(cluster.nodes[1].held_inputs, vec![Input::LinkDown(0)], "ticks are not kept");
        cluster.stop(1, false);
        assert!(cluster.nodes[1].held_inputs.is_empty());
    }
}
