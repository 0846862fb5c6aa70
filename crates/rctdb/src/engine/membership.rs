//! Membership (DESIGN §5): heartbeats, who is alive, elections, who leads, and whether this
//! node serves.
//!
//! `Membership`'s state is its own: recovery and migration go through its methods, and
//! whether this node serves is switched only by the serving rules in this file
//! (`start_serving`, `stop_serving`, `defer_call`).
//!
//! The rules that keep one DMASTER per record:
//! - A node serves (is *active*) only after its leader activated it in a generation, and
//!   only while it hears that leader and holds a lease (below). A node that starts, loses
//!   its leader, goes quiet, is banned, sees the cluster move on without it or whose lease
//!   runs out stops at once and freezes its databases (clients block), so a node the
//!   others gave up on cannot keep changing records.
//! - One leader at a time: with a cluster lock, whoever holds it; without one, a candidate
//!   needs the votes of a strict majority of the nodes file, one vote per node per term,
//!   and a node that hears a live leader votes for nobody. A leader that loses its lock or
//!   its majority steps down, and tells its followers at once (a heartbeat without the
//!   leader flag), so they stop serving with it.
//! - Liveness: a heartbeat to every peer each `KeepaliveInterval`; a peer silent for
//!   `KeepaliveInterval * KeepaliveLimit` is dead. A broken connection is evidence: a peer
//!   not heard from within two intervals after it broke is dead (the transport reconnects
//!   at once, so a reset link to a live peer costs no membership change, a dead peer is
//!   noticed in a fraction of the dead time). A refused reconnect (nothing listens at the
//!   peer's address) is death at once.
//!
//! Leases (fencing by time). A node may hold records — serve, or let its clients use what
//! it holds — only while it holds a lease, and every lease ends, on its holder's own
//! monotonic clock, before anyone else can take those records over:
//! - A follower asks its leader each `KeepaliveInterval` (`LeaseAsk`, stamped with its own
//!   `now`); the leader grants (`LeaseGrant`) to the members of its recovery while one
//!   runs, else of its generation. The lease runs `lease_ms` (the dead time) from the *asker's* stamp, so
//!   no delay of the answer, and no stop of the asker, lengthens it. Activation is the
//!   first grant, counted from when the member committed.
//! - The leader's own lease: with a cluster lock, the lock (whoever releases it must freeze
//!   first); by majority, the grants of a majority of the nodes file, itself included.
//! - A grantor counts a lease as running until `lease_bound` after it granted it:
//!   `lease_ms` stretched by `CLOCK_RATE_BOUND_PER_MILLE` both ways (the holder's clock
//!   may run slow, the grantor's fast). It votes for nobody, and stands for nobody, while
//!   a lease it granted may run: a majority that elects a new leader has seen the old
//!   leader's lease end. A leader does not promote copies of records (a recovery that
//!   moves records off a node that is no member) until the leases it granted to non-members
//!   and, after an election, any lease the previous leader granted, are over.
//! - A node whose lease runs out stops serving and freezes its databases at its next
//!   input (the daemon ticks every interval): a stopped, starved or cut-off node fences
//!   itself before the others can act, whatever its peers' clocks say. Paused for a
//!   recovery, it only freezes; the recovery goes on.
//!
//! What leases do not cover: clients that write through the files while their daemon is
//! stopped (the engine cannot run then; a watchdog outside the daemon must freeze the
//! databases at `lease_until`), and a whole node frozen (nothing on it runs). Records of a
//! node left out are held for it for `give_up_ms` (recovery.rs), which is what keeps them
//! safe there.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::{ClientCall, ClusterEvent, Engine, EngineConfig, Millis, Output, RecordStore};
use crate::wire::cluster::{flags, ClusterMsg, Epoch, Heartbeat, NO_LEADER};
use crate::wire::{Body, DbId, Generation, Packet, Pnn, INVALID_GENERATION};

/// How far apart two nodes' clocks may run, per mille of real time each way: a lease of
/// `lease_ms` on its holder's clock ends, on any other node's clock, within
/// `lease_ms * (1000 + bound) / (1000 - bound)`. 10 %: far beyond what NTP slewing
/// (0.05 %) or a virtual machine's clock does, and it costs only a longer wait after a
/// false death.
pub const CLOCK_RATE_BOUND_PER_MILLE: u64 = 100;

/// What became of an attempt to take the cluster lock (CTDB's cluster mutex helper answers
/// `0` held, `1` contention, `2` timeout, `3` error; a held lock can be lost later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LockOutcome {
    Held,
    /// Someone else holds the lock.
    Contention,
    /// The helper gave up waiting. Never taken for success: another node may hold the lock.
    Timeout,
    Error(String),
    /// The lock went away (the helper that held it ended).
    Lost,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Follower,
    /// Asked for votes in `term` at `since`.
    Candidate {
        term: u64,
        since: Millis,
    },
    /// Asked for the cluster lock at `since`.
    AwaitingLock {
        since: Millis,
    },
    Leader,
}

#[derive(Debug, Default, Clone)]
struct PeerView {
    last_heard: Option<Millis>,
    alive: bool,
    heartbeat: Option<Heartbeat>,
    heartbeat_at: Millis,
    left: bool,
    /// Our connection to it broke then: unless it is heard from again soon, it is dead.
    suspect_since: Option<Millis>,
    /// When it was last heard from, dead or alive since: its records are held for it
    /// until `give_up_ms` after.
    last_seen: Option<Millis>,
    /// Its reconnect was refused: its process is gone, nothing is held for it.
    refused: bool,
}

/// Whether a database is frozen for us, or on its way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Freeze {
    Waiting,
    Held,
}

pub(super) struct Membership {
    enabled: bool,
    active: bool,
    term: u64,
    /// The highest term seen anywhere: a new candidacy goes above it.
    max_term: u64,
    voted: Option<(u64, Pnn)>,
    votes: BTreeSet<Pnn>,
    leader: Option<Pnn>,
    role: Role,
    peers: Vec<PeerView>,
    /// The last history entry this node committed, the generation and members it named.
    epoch: Epoch,
    epoch_generation: Generation,
    epoch_members: Vec<Pnn>,
    /// This node asks its leader for a recovery (heartbeat flag).
    wants_recovery: bool,
    banned_until: Option<Millis>,
    quiet: bool,
    left: bool,
    leaderless_since: Option<Millis>,
    next_attempt: Millis,
    last_heartbeat: Option<Millis>,
    last_tick: Option<Millis>,
    frozen: BTreeMap<DbId, Freeze>,
    /// Client requests that arrived while this node did not serve, replayed at activation.
    deferred: VecDeque<ClientCall>,
    rng: u64,
    /// A node the leader left out of a recovery for failing it stays out until then.
    excluded_until: BTreeMap<Pnn, Millis>,
    /// When the last recovery this node led ended: older heartbeats say nothing about it.
    settled_at: Millis,
    last_check: Millis,
    /// This node may hold records (serve, or let its clients use what it holds) until
    /// then, on its own clock; 0 when it holds no lease.
    lease_until: Millis,
    /// When this node last granted each peer a lease: that peer may hold records until
    /// `lease_bound` after it, whatever this node learns meanwhile.
    granted: BTreeMap<Pnn, Millis>,
    /// Leading: the newest stamp of ours each peer granted, for our own lease.
    grants_to_me: BTreeMap<Pnn, u64>,
    /// Our last `LeaseAsk`'s stamp, and when this node committed its last recovery.
    asked_at: Millis,
    committed_at: Millis,
    /// When this node became leader: a lease granted by the previous one may run until
    /// `lease_bound` after it.
    leads_since: Millis,
    /// Leading: nodes that are no members whose records a recovery held for them, and when
    /// they are given up; nodes whose records a recovery took over (they are emptied if
    /// they come back).
    held_back: BTreeMap<Pnn, Millis>,
    given_up: BTreeSet<Pnn>,
    /// Maps that recoveries replaced by maps without some of their nodes: while such a
    /// node may come back, a key it was LMASTER of may be held there, known to nobody else.
    left_maps: Vec<Vec<Pnn>>,
    /// This node's first tick: a peer never heard from since may have been heard by others.
    started_at: Option<Millis>,
}

impl Membership {
    pub(super) fn new(config: &EngineConfig) -> Membership {
        Membership {
            enabled: config.membership,
            active: !config.membership,
            term: 0,
            max_term: 0,
            voted: None,
            votes: BTreeSet::new(),
            leader: None,
            role: Role::Follower,
            peers: vec![PeerView::default(); config.nodes],
            epoch: Epoch::default(),
            epoch_generation: config.generation,
            epoch_members: config.vnn_map.clone(),
            wants_recovery: false,
            banned_until: None,
            quiet: false,
            left: false,
            leaderless_since: None,
            next_attempt: 0,
            last_heartbeat: None,
            last_tick: None,
            frozen: BTreeMap::new(),
            deferred: VecDeque::new(),
            rng: config.seed ^ 0x5851_f42d_4c95_7f2d,
            excluded_until: BTreeMap::new(),
            settled_at: 0,
            last_check: 0,
            lease_until: 0,
            granted: BTreeMap::new(),
            grants_to_me: BTreeMap::new(),
            asked_at: 0,
            committed_at: 0,
            leads_since: 0,
            held_back: BTreeMap::new(),
            given_up: BTreeSet::new(),
            left_maps: vec![],
            started_at: None,
        }
    }

    /// Whether this node serves: only the serving rules below change it.
    pub(super) fn serves(&self) -> bool {
        self.active
    }

    pub(super) fn term(&self) -> u64 {
        self.term
    }

    pub(super) fn leads(&self) -> bool {
        self.role == Role::Leader
    }

    pub(super) fn banned(&self) -> bool {
        self.banned_until.is_some()
    }

    pub(super) fn quiet(&self) -> bool {
        self.quiet
    }

    /// The last history entry this node committed, with its generation and members.
    pub(super) fn epoch(&self) -> (Epoch, Generation, &[Pnn]) {
        (self.epoch, self.epoch_generation, &self.epoch_members)
    }

    /// A recovery's commit: this node took part in the history entry `epoch`, at `now`.
    pub(super) fn commit_epoch(
        &mut self,
        epoch: Epoch,
        generation: Generation,
        members: Vec<Pnn>,
        now: Millis,
    ) {
        self.committed_at = now;
        if let Some(leader) = self.leader.filter(|_| self.role != Role::Leader) {
            // Our `Committed` lets the leader serve: a lease we granted it.
            self.granted.insert(leader, now);
        }
        self.epoch = epoch;
        self.epoch_generation = generation;
        self.epoch_members = members;
    }

    /// The leader left `pnn` out of a recovery: it is not a member before `until`.
    pub(super) fn exclude(&mut self, pnn: Pnn, until: Millis) {
        self.excluded_until.insert(pnn, until);
    }

    /// A recovery this node led ended at `now`: the cluster is as its members reported.
    pub(super) fn settle(&mut self, now: Millis) {
        self.settled_at = now;
        self.wants_recovery = false;
    }

    /// A client request that must wait until this node serves again.
    pub(super) fn defer(&mut self, call: ClientCall) {
        self.deferred.push_back(call);
    }

    /// Asks for `db_id` to be frozen unless it is (or is being) already: true if asked now.
    fn freeze(&mut self, db_id: DbId) -> bool {
        match self.frozen.entry(db_id) {
            std::collections::btree_map::Entry::Vacant(entry) => {
                entry.insert(Freeze::Waiting);
                true
            }
            std::collections::btree_map::Entry::Occupied(_) => false,
        }
    }

    /// Every chain of `db_id` is held for us now; false if we no longer want it frozen.
    fn freeze_held(&mut self, db_id: DbId) -> bool {
        match self.frozen.get_mut(&db_id) {
            Some(state) => {
                *state = Freeze::Held;
                true
            }
            None => false,
        }
    }

    pub(super) fn is_frozen(&self, db_id: DbId) -> bool {
        self.frozen.get(&db_id) == Some(&Freeze::Held)
    }

    /// splitmix64: generations must differ between recoveries and nodes; deterministic
    /// from the seed so simulations replay.
    pub(super) fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// What `rctdb status` shows of membership.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// `active`, `recovering`, `inactive`, `banned` or `quiet`.
    pub state: &'static str,
    pub leader: Option<Pnn>,
    pub term: u64,
    /// Nodes this node believes alive, itself included.
    pub alive: Vec<Pnn>,
}

impl Engine {
    pub fn cluster_status(&self) -> ClusterStatus {
        let c = &self.cluster;
        let state = if c.quiet {
            "quiet"
        } else if c.banned_until.is_some() {
            "banned"
        } else if c.active {
            "active"
        } else if self.recoveries.member.is_some() {
            "recovering"
        } else {
            "inactive"
        };
        let alive = (0..self.config.nodes as Pnn).filter(|&p| self.is_alive(p)).collect();
        ClusterStatus { state, leader: c.leader, term: c.term, alive }
    }

    fn dead_after(&self) -> Millis {
        let t = &self.config.tunables;
        t.keepalive_interval_ms.saturating_mul(t.keepalive_limit)
    }

    pub fn is_alive(&self, pnn: Pnn) -> bool {
        pnn == self.config.pnn || self.cluster.peers.get(pnn as usize).is_some_and(|p| p.alive)
    }

    /// Alive nodes that may be members: not banned, not leaving, not excluded by us.
    pub(super) fn eligible_nodes(&self) -> BTreeSet<Pnn> {
        let now = self.now;
        let me = self.config.pnn;
        (0..self.config.nodes as Pnn)
            .filter(|&p| {
                if p == me {
                    return self.cluster.banned_until.is_none() && !self.cluster.left;
                }
                let peer = &self.cluster.peers[p as usize];
                peer.alive
                    && !peer.left
                    && !peer.heartbeat.as_ref().is_some_and(|h| h.flags & flags::BANNED != 0)
                    && !self.cluster.excluded_until.get(&p).is_some_and(|&until| until > now)
            })
            .collect()
    }

    fn has_live_leader(&self) -> bool {
        self.cluster.leader.is_some_and(|l| self.is_alive(l))
    }

    pub(super) fn send_cluster(&mut self, to: Pnn, msg: ClusterMsg, out: &mut Vec<Output>) {
        if to == self.config.pnn {
            self.inbox.push_back((to, msg));
        } else if !self.cluster.quiet {
            let generation = self.config.generation;
            let body = Body::Cluster(msg);
            out.push(Output::Send(Packet {
                generation,
                destnode: to,
                srcnode: self.config.pnn,
                reqid: 0,
                body,
            }));
        }
    }

    fn peers_except_me(&self) -> Vec<Pnn> {
        (0..self.config.nodes as Pnn).filter(|&p| p != self.config.pnn).collect()
    }

    pub(super) fn membership_tick(&mut self, out: &mut Vec<Output>) {
        self.cluster.started_at.get_or_insert(self.now);
        if !self.cluster.enabled || self.cluster.quiet {
            return;
        }
        let now = self.now;
        let interval = self.config.tunables.keepalive_interval_ms;
        let stall = self.cluster.last_tick.map_or(0, |at| now.saturating_sub(at));
        let stalled = stall > 2 * interval;
        self.cluster.last_tick = Some(now);
        if stall >= self.dead_after() && self.cluster.leads() && !self.config.cluster_lock {
            // The others took it for dead and may have a new leader by now. (A lock
            // holder keeps its lock, so nobody else can lead.)
            self.step_down("it stalled past the dead time", out);
        }
        if stalled {
            // This node was not running (stopped, or starved of CPU): the silence was its
            // own, not its peers'. They get a fresh dead time, counted from now.
            log::warn!(
                "node {}: no tick for a while; not counting that silence against peers",
                self.config.pnn
            );
            for peer in self.cluster.peers.iter_mut().filter(|p| p.alive) {
                peer.last_heard = Some(now);
                peer.suspect_since = None;
            }
            self.extend_recovery_deadline(now);
        }
        if self.cluster.last_heartbeat.map_or(true, |at| now.saturating_sub(at) >= interval) {
            self.send_heartbeats(out);
            self.ask_for_lease(out);
        }
        let dead_after = self.dead_after();
        for pnn in self.peers_except_me() {
            let peer = &self.cluster.peers[pnn as usize];
            let heard_recently = peer.last_heard.is_some_and(|at| now.saturating_sub(at) < dead_after);
            let cut_off = peer.suspect_since.is_some_and(|since| {
                peer.last_heard.map_or(true, |at| at <= since) && now.saturating_sub(since) >= 2 * interval
            });
            if peer.alive && (!heard_recently || cut_off) {
                self.peer_died(pnn, out);
            }
        }
        if self.cluster.banned_until.is_some_and(|until| until <= now) {
            log::warn!("node {}: ban over; asking to be admitted again", self.config.pnn);
            self.cluster.banned_until = None;
            self.cluster.wants_recovery = true;
        }
        match self.cluster.leader {
            Some(leader) if leader == self.config.pnn => self.lead_tick(out),
            Some(_) if self.has_live_leader() => {}
            _ => self.leaderless_tick(out),
        }
        self.recovery_tick(out);
    }

    fn send_heartbeats(&mut self, out: &mut Vec<Output>) {
        self.cluster.last_heartbeat = Some(self.now);
        let heartbeat = ClusterMsg::Heartbeat(self.heartbeat());
        for peer in self.peers_except_me() {
            self.send_cluster(peer, heartbeat.clone(), out);
        }
    }

    pub(super) fn heartbeat(&self) -> Heartbeat {
        let c = &self.cluster;
        let mut bits = 0;
        if c.leader == Some(self.config.pnn) {
            bits |= flags::LEADER;
        }
        if c.active {
            bits |= flags::ACTIVE;
        }
        if c.wants_recovery {
            bits |= flags::WANTS_RECOVERY;
        }
        if c.banned_until.is_some() {
            bits |= flags::BANNED;
        }
        Heartbeat {
            term: c.term,
            leader: c.leader.unwrap_or(NO_LEADER),
            flags: bits,
            epoch: c.epoch,
            generation: c.epoch_generation,
        }
    }

    fn peer_died(&mut self, pnn: Pnn, out: &mut Vec<Output>) {
        let peer = &mut self.cluster.peers[pnn as usize];
        if !peer.alive {
            return;
        }
        peer.alive = false;
        peer.last_heard = None;
        peer.suspect_since = None;
        self.stats.nodes_died += 1;
        out.push(Output::Event(ClusterEvent::NodeDead(pnn)));
        self.attach_answered(pnn, None, out);
        if self.cluster.leader == Some(pnn) {
            self.lose_leader(&format!("leader node {pnn} died"), out);
        }
    }

    /// Nothing listens where the peer should: its process is gone, and a daemon that starts
    /// again empties its databases, so nothing is held for it (once its lease is over).
    pub(super) fn refused(&mut self, pnn: Pnn, out: &mut Vec<Output>) {
        if self.cluster.enabled && (pnn as usize) < self.cluster.peers.len() && pnn != self.config.pnn {
            self.cluster.peers[pnn as usize].last_seen = None;
            self.cluster.peers[pnn as usize].refused = true;
            self.peer_died(pnn, out);
        }
    }

    pub(super) fn link_down(&mut self, pnn: Pnn) {
        let now = self.now;
        if let Some(peer) = self.cluster.peers.get_mut(pnn as usize) {
            peer.suspect_since.get_or_insert(now);
        }
    }

    /// What was sent on a broken link is lost: ask again now rather than after a backoff
    /// that grew while the link was down.
    pub(super) fn link_up(&mut self, pnn: Pnn, out: &mut Vec<Output>) {
        for state in self.keys.values_mut() {
            if let Some(migration) = state.migration.as_mut() {
                migration.resends = 0;
                migration.sent_at = 0;
            }
        }
        self.recovery_link_up(pnn, out);
    }

    fn lose_leader(&mut self, why: &str, out: &mut Vec<Output>) {
        self.cluster.leader = None;
        self.cluster.leaderless_since = Some(self.now);
        if self.cluster.role == Role::Leader {
            self.step_down(why, out);
        }
        self.deactivate(why, out);
    }

    // ---- Serving. The one place that says whether this node serves: it serves only after
    // its leader activated it in a generation (`start_serving`, at the end of a recovery),
    // and stops (`stop_serving`) the moment it loses its leader, goes quiet, is banned, sees
    // the cluster move on without it, or a new recovery begins. Client requests that come
    // while it does not serve wait here (`defer_call`) until it serves again.

    /// Whether this node serves: it may answer migrations and mint records.
    pub fn active(&self) -> bool {
        self.cluster.serves()
    }

    /// A client request that must wait until this node serves again.
    pub(super) fn defer_call(&mut self, call: ClientCall) {
        self.cluster.defer(call);
    }

    /// Stops serving: nothing migrates, nothing is minted, work of the old generation is
    /// void, and the databases freeze so clients stop using the records they hold.
    pub(super) fn deactivate(&mut self, why: &str, out: &mut Vec<Output>) {
        if !self.cluster.enabled {
            return;
        }
        self.stop_serving(why, out);
        self.freeze_databases(out);
    }

    /// A recovery begins: this node stops serving, but its clients keep using the records
    /// it holds (the recovery moves none of them).
    pub(super) fn pause_for_recovery(&mut self, leader: Pnn, out: &mut Vec<Output>) {
        self.stop_serving(&format!("recovery by node {leader}"), out);
    }

    fn stop_serving(&mut self, why: &str, out: &mut Vec<Output>) {
        if self.cluster.active {
            log::warn!("node {}: stops serving: {why}", self.config.pnn);
            out.push(Output::Event(ClusterEvent::Deactivated { why: why.to_owned() }));
        }
        self.cluster.active = false;
        self.cluster.lease_until = 0;
        self.config.generation = INVALID_GENERATION;
        self.drop_generation_work();
    }

    /// The leader activated this node in `generation` (its recovery committed here): serve,
    /// thaw, send the requests that waited and the migrations that were cut off.
    pub(super) fn start_serving(&mut self, generation: Generation, out: &mut Vec<Output>) {
        if self.cluster.banned() {
            return;
        }
        self.config.generation = generation;
        self.cluster.active = true;
        self.cluster.wants_recovery = false;
        if !self.cluster.leads() || self.config.vnn_map.len() * 2 > self.config.nodes {
            // Activation is the first grant (a majority committed, for a leader), counted from
            // our commit, which came before it.
            let until = self.cluster.committed_at + self.lease_ms();
            self.cluster.lease_until = self.cluster.lease_until.max(until);
        }
        for (db_id, _) in std::mem::take(&mut self.cluster.frozen) {
            out.push(Output::ThawDb { db_id });
        }
        log::info!(
            "node {}: serves generation {generation:#x}, map {:?}",
            self.config.pnn,
            self.config.vnn_map
        );
        out.push(Output::Event(ClusterEvent::Activated { generation }));
        let deferred: Vec<_> = self.cluster.deferred.drain(..).collect();
        self.ready.extend(deferred.into_iter().map(super::Work::ClientCall));
        self.resume_migrations();
    }

    /// Freezes every attached database not frozen (or freezing) yet.
    pub(super) fn freeze_databases(&mut self, out: &mut Vec<Output>) {
        let dbs: Vec<DbId> = self.dbs.keys().copied().collect();
        for db_id in dbs {
            if self.cluster.freeze(db_id) {
                out.push(Output::FreezeDb { db_id });
            }
        }
    }

    /// `Input::Frozen`: every chain of the database is held for us now.
    pub(super) fn frozen(&mut self, db_id: DbId, store: &mut dyn RecordStore, out: &mut Vec<Output>) {
        if !self.cluster.freeze_held(db_id) {
            // Thawed while the freeze was on its way: give it back.
            return out.push(Output::ThawDb { db_id });
        }
        self.finish_wipe_when_frozen(store, out);
    }

    /// Peers' requests and handovers of the old generation are void (their senders ask
    /// again under the new one); our own migrations keep their waiters and are sent again
    /// at activation; a recovery's fixes not applied yet are recomputed by the next one.
    fn drop_generation_work(&mut self) {
        self.vacuum_generation_ended();
        for state in self.keys.values_mut() {
            state.parked.clear();
            state.first_use = None;
            state.lock_wait.retain(|work| !work.is_remote() && !matches!(work, super::Work::Fix { .. }));
        }
        self.keys.retain(|_, state| !state.is_idle());
    }

    // ---- Leases (the rules are in the module's opening comment).

    /// How long a lease runs on its holder's clock: the dead time, renewed every interval.
    /// A node then loses its lease only when it would be declared dead anyway: a stall or
    /// a lost renewal shorter than that costs nothing (half the dead time made a loaded
    /// machine's scheduling hiccups cost recoveries). Takeovers wait for the hold time
    /// (`LeftOutHoldMs`), which is longer, so a longer lease delays none of them.
    pub(super) fn lease_ms(&self) -> Millis {
        self.dead_after()
    }

    /// How long after granting a lease its grantor counts it as running, on its own clock.
    pub(super) fn lease_bound(&self) -> Millis {
        let bound = CLOCK_RATE_BOUND_PER_MILLE;
        (self.lease_ms() * (1000 + bound)).div_ceil(1000 - bound)
    }

    /// Until when (on this node's clock) it may hold records: `None` without a lease, or
    /// when it needs none (membership off, or leading with the cluster lock). A watchdog
    /// that fences a stalled daemon freezes its databases at this time.
    pub fn lease_until(&self) -> Option<Millis> {
        let lease_free = !self.cluster.enabled || self.config.cluster_lock && self.cluster.leads();
        (!lease_free && self.cluster.lease_until > 0).then_some(self.cluster.lease_until)
    }

    fn holds_lease(&self) -> bool {
        !self.cluster.enabled
            || self.config.cluster_lock && self.cluster.leads()
            || self.now < self.cluster.lease_until
    }

    /// At every input: a node whose lease ran out lets go of its records before anything
    /// else, whatever woke it.
    pub(super) fn check_lease(&mut self, out: &mut Vec<Output>) {
        if self.holds_lease() || self.cluster.quiet {
            return;
        }
        if self.cluster.active {
            self.cluster.wants_recovery = true;
            self.deactivate("its lease ran out", out);
        } else if self.recoveries.member.is_some() {
            // Paused for a recovery: the recovery goes on, the clients stop.
            self.freeze_databases(out);
        }
    }

    /// Whether every lease this node granted has surely ended: until then it helps no other
    /// node lead.
    fn grants_over(&self) -> bool {
        let bound = self.lease_bound();
        self.cluster.granted.values().all(|&at| self.now >= at + bound)
    }

    /// When a recovery this node leads may take records over from nodes that are not
    /// among `members`: once the leases it granted them, and after an election the leases
    /// the previous leader granted, have surely ended.
    pub(super) fn takeover_safe_at(&self, members: &BTreeSet<Pnn>) -> Millis {
        let bound = self.lease_bound();
        let granted =
            self.cluster.granted.iter().filter(|(p, _)| !members.contains(p)).map(|(_, &at)| at + bound);
        granted.max().unwrap_or(0).max(self.cluster.leads_since + bound)
    }

    /// Each interval: a member asks its leader; a leader without a cluster lock asks
    /// everyone (its followers answer).
    fn ask_for_lease(&mut self, out: &mut Vec<Output>) {
        let now = self.now;
        let me = self.config.pnn;
        let Some(leader) = self.cluster.leader else { return };
        let ask = ClusterMsg::LeaseAsk { leader, stamp: now };
        if leader == me {
            if !self.config.cluster_lock {
                self.cluster.asked_at = now;
                for peer in self.peers_except_me() {
                    if self.is_alive(peer) {
                        self.send_cluster(peer, ask.clone(), out);
                    }
                }
                self.renew_own_lease(); // a node alone is its own majority
            }
        } else if self.cluster.active || self.recoveries.member.is_some() {
            self.cluster.asked_at = now;
            self.send_cluster(leader, ask, out);
        }
    }

    /// A leader grants the members of its recovery, or else of its generation, that follow
    /// it; a follower grants the leader it follows. Nothing else: a node a recovery leaves
    /// out gets no lease from it, so the recovery does not wait on leases it keeps renewing.
    fn lease_asked(&mut self, from: Pnn, leader: Pnn, stamp: u64, out: &mut Vec<Output>) {
        let me = self.config.pnn;
        let grant = if leader == me {
            self.cluster.leads()
                && if self.recovery_running() {
                    self.recovery_includes(from)
                } else {
                    self.cluster.epoch_members.contains(&from)
                }
        } else {
            leader == from && self.cluster.leader == Some(from) && !self.cluster.leads()
        };
        if grant {
            self.cluster.granted.insert(from, self.now);
            self.send_cluster(from, ClusterMsg::LeaseGrant { stamp }, out);
        }
    }

    /// Leading by majority: the lease runs from the newest stamp a majority of the nodes
    /// file granted, ours counted.
    fn renew_own_lease(&mut self) {
        let mut stamps: Vec<u64> = self.cluster.grants_to_me.values().copied().collect();
        stamps.push(self.cluster.asked_at);
        stamps.sort_unstable_by(|a, b| b.cmp(a));
        if let Some(&stamp) = stamps.get(self.config.nodes / 2) {
            self.cluster.lease_until = self.cluster.lease_until.max(stamp + self.lease_ms());
        }
    }

    fn lease_granted(&mut self, from: Pnn, stamp: u64) {
        let lease_ms = self.lease_ms();
        let stamp = stamp.min(self.now); // never from the future
        if self.cluster.leads() {
            if self.config.cluster_lock {
                return;
            }
            let newest = self.cluster.grants_to_me.entry(from).or_default();
            *newest = (*newest).max(stamp);
            self.renew_own_lease();
        } else if self.cluster.leader == Some(from) {
            self.cluster.lease_until = self.cluster.lease_until.max(stamp + lease_ms);
        }
    }

    // ---- False deaths. A node left out of a recovery may only be slow (stopped, starved,
    // cut off for a while): its records are held for it, unavailable, not taken over,
    // for `give_up_ms` after it was last heard from. Back in time, it keeps them.

    /// How long the records of a node that is no member wait for it (`LeftOutHoldMs`), and
    /// never less than a lease it may hold.
    pub(super) fn give_up_ms(&self) -> Millis {
        self.config.tunables.left_out_hold_ms.max(self.lease_bound())
    }

    /// Whether the records of `pnn`, no member now, may be taken over.
    pub(super) fn given_up(&self, pnn: Pnn) -> bool {
        let Some(peer) = self.cluster.peers.get(pnn as usize) else { return true };
        // Never heard from since this node started: others may have, until then.
        let last_seen = if peer.refused { None } else { peer.last_seen.or(self.cluster.started_at) };
        pnn != self.config.pnn && last_seen.map_or(true, |at| self.now >= at + self.give_up_ms())
    }

    /// A recovery held records for `pnn`: the next one after its time is up takes them over.
    pub(super) fn hold_back(&mut self, pnn: Pnn) {
        let last_seen = self.cluster.peers.get(pnn as usize).and_then(|p| p.last_seen);
        let last_seen = last_seen.or(self.cluster.started_at).unwrap_or(0);
        let at = last_seen + self.give_up_ms();
        self.cluster.held_back.insert(pnn, at);
    }

    /// A recovery took records of `pnn` over: what it still holds is superseded.
    pub(super) fn gave_up(&mut self, pnn: Pnn) {
        self.cluster.held_back.remove(&pnn);
        self.cluster.given_up.insert(pnn);
    }

    /// Whether `pnn`'s records were taken over while it was away: it must empty its copies.
    pub(super) fn was_given_up(&self, pnn: Pnn) -> bool {
        self.cluster.given_up.contains(&pnn)
    }

    /// A recovery replaces the map `old` by `new`: the nodes it leaves out may hold keys
    /// they were LMASTER of, which no member knows of.
    pub(super) fn map_replaced(&mut self, old: &[Pnn], new: &[Pnn]) {
        if old.iter().any(|p| !new.contains(p)) {
            self.cluster.left_maps.push(old.to_vec());
        }
        let maps = std::mem::take(&mut self.cluster.left_maps);
        self.cluster.left_maps =
            maps.into_iter().filter(|map| map.iter().any(|&p| self.may_come_back(p, new))).collect();
    }

    /// A node that is no member and may come back with records nobody else knows of.
    fn may_come_back(&self, pnn: Pnn, vnn_map: &[Pnn]) -> bool {
        !vnn_map.contains(&pnn) && !self.given_up(pnn)
    }

    /// The node that may hold `key` though no member knows it: its LMASTER under a map a
    /// recovery replaced, left out and not given up. The key's LMASTER must not make up a
    /// new record for it meanwhile (it waits, as for a record held for its holder).
    pub(super) fn held_unknown(&self, key: &[u8]) -> Option<Pnn> {
        let map = &self.config.vnn_map;
        self.cluster
            .left_maps
            .iter()
            .map(|old| super::lmaster_of(key, old))
            .find(|&p| self.may_come_back(p, map))
    }

    /// A recovery admitted `members`: nothing is held for them or given up any more.
    pub(super) fn readmitted(&mut self, members: &BTreeSet<Pnn>) {
        self.cluster.held_back.retain(|p, _| !members.contains(p));
        self.cluster.given_up.retain(|p| !members.contains(p));
    }

    pub(super) fn ban_self(&mut self, why: &str, out: &mut Vec<Output>) {
        if !self.cluster.enabled {
            return;
        }
        log::error!("node {}: leaving the cluster for {} ms: {why}", self.config.pnn, self.ban_period());
        self.cluster.banned_until = Some(self.now + self.ban_period());
        self.recoveries.member = None;
        if self.cluster.role == Role::Leader {
            self.step_down(why, out);
        }
        self.cluster.leader = None;
        self.deactivate(why, out);
    }

    pub(super) fn ban_period(&self) -> Millis {
        self.config.tunables.recovery_ban_period_ms
    }

    /// Something only a recovery can mend: tell the leader (or, leading, note it).
    pub(super) fn report_trouble(&mut self, reason: String, out: &mut Vec<Output>) {
        log::warn!("node {}: {reason}; asking for a recovery", self.config.pnn);
        self.cluster.wants_recovery = true;
        if let Some(leader) = self.cluster.leader {
            if leader != self.config.pnn {
                self.send_cluster(leader, ClusterMsg::Trouble { reason }, out);
            }
        }
    }

    pub(super) fn set_quiet(&mut self, quiet: bool, out: &mut Vec<Output>) {
        if quiet == self.cluster.quiet || !self.cluster.enabled {
            return;
        }
        if quiet {
            self.lose_leader("told to go quiet", out);
            self.cluster.quiet = true;
        } else {
            // Whatever happened meanwhile, this node serves again only once admitted.
            self.cluster.quiet = false;
            self.cluster.wants_recovery = true;
            for peer in &mut self.cluster.peers {
                *peer = PeerView::default();
            }
        }
    }

    pub(super) fn leave(&mut self, out: &mut Vec<Output>) {
        for peer in self.peers_except_me() {
            self.send_cluster(peer, ClusterMsg::Leaving, out);
        }
        self.cluster.left = true;
        self.lose_leader("leaving the cluster", out);
    }

    fn step_down(&mut self, why: &str, out: &mut Vec<Output>) {
        log::warn!("node {}: no longer leads: {why}", self.config.pnn);
        out.push(Output::Event(ClusterEvent::SteppedDown { why: why.to_owned() }));
        self.cluster.role = Role::Follower;
        if self.config.cluster_lock {
            out.push(Output::ReleaseClusterLock);
        }
        self.abandon_lead();
        if self.cluster.leader == Some(self.config.pnn) {
            self.cluster.leader = None;
            self.cluster.leaderless_since = Some(self.now);
        }
        self.cluster.next_attempt = self.now + self.config.tunables.election_timeout_ms;
        self.deactivate(why, out);
        // Followers must not wait a heartbeat interval to learn it: until they do, they go
        // on serving a generation nobody leads any more.
        self.send_heartbeats(out);
    }

    /// No live leader: the lowest eligible node stands first, the next after one
    /// `ElectionTimeout` more, and so on, so that a node that cannot win does not block.
    fn leaderless_tick(&mut self, out: &mut Vec<Output>) {
        let now = self.now;
        let since = *self.cluster.leaderless_since.get_or_insert(now);
        if self.cluster.active {
            self.deactivate("no leader", out);
        }
        let eligible = self.eligible_nodes();
        let Some(rank) = eligible.iter().position(|&p| p == self.config.pnn) else { return };
        if !self.config.cluster_lock && eligible.len() * 2 <= self.config.nodes {
            return; // no majority in sight: standing would only split the votes to come
        }
        let timeout = self.config.tunables.election_timeout_ms;
        if now < since + rank as Millis * timeout || now < self.cluster.next_attempt || !self.grants_over() {
            return;
        }
        match self.cluster.role {
            Role::AwaitingLock { .. } => {} // the lock helper answers, even if only "timeout"
            _ => self.stand(out),
        }
    }

    fn stand(&mut self, out: &mut Vec<Output>) {
        let now = self.now;
        // Should this attempt fail, the next waits a random part of a timeout more, so
        // that two candidates that collided do not collide again.
        let timeout = self.config.tunables.election_timeout_ms;
        self.cluster.next_attempt = now + timeout + self.cluster.random() % timeout.max(1);
        if self.config.cluster_lock {
            self.cluster.role = Role::AwaitingLock { since: now };
            out.push(Output::TakeClusterLock);
            return;
        }
        let term = self.cluster.max_term.max(self.cluster.term) + 1;
        self.cluster.term = term;
        self.cluster.max_term = term;
        self.cluster.voted = Some((term, self.config.pnn));
        self.cluster.votes = BTreeSet::from([self.config.pnn]);
        self.cluster.role = Role::Candidate { term, since: now };
        log::info!("node {}: stands for leader in term {term}", self.config.pnn);
        for peer in self.peers_except_me() {
            if self.is_alive(peer) {
                self.send_cluster(peer, ClusterMsg::VoteRequest { term }, out);
            }
        }
        self.count_votes(term, out);
    }

    fn count_votes(&mut self, term: u64, out: &mut Vec<Output>) {
        if self.cluster.role == (Role::Candidate { term, since: self.candidate_since() })
            && self.cluster.votes.len() * 2 > self.config.nodes
        {
            self.become_leader(term, out);
        }
    }

    fn candidate_since(&self) -> Millis {
        match self.cluster.role {
            Role::Candidate { since, .. } | Role::AwaitingLock { since } => since,
            _ => 0,
        }
    }

    fn become_leader(&mut self, term: u64, out: &mut Vec<Output>) {
        log::info!("node {}: leads the cluster in term {term}", self.config.pnn);
        self.cluster.term = term;
        self.cluster.max_term = self.cluster.max_term.max(term);
        self.cluster.role = Role::Leader;
        self.cluster.leader = Some(self.config.pnn);
        self.cluster.leaderless_since = None;
        self.cluster.leads_since = self.now;
        self.cluster.grants_to_me.clear();
        out.push(Output::Event(ClusterEvent::BecameLeader { term }));
        self.start_recovery(out);
    }

    pub(super) fn cluster_lock_outcome(&mut self, outcome: LockOutcome, out: &mut Vec<Output>) {
        let awaiting = matches!(self.cluster.role, Role::AwaitingLock { .. });
        match outcome {
            LockOutcome::Held if awaiting && !self.has_live_leader() => {
                let term = self.cluster.max_term.max(self.cluster.term) + 1;
                self.become_leader(term, out);
            }
            // Someone else leads by now, or we gave up: not ours to keep.
            LockOutcome::Held => out.push(Output::ReleaseClusterLock),
            LockOutcome::Lost if self.cluster.role == Role::Leader => {
                self.step_down("the cluster lock was lost", out)
            }
            LockOutcome::Lost => {}
            LockOutcome::Contention | LockOutcome::Timeout | LockOutcome::Error(_) => {
                if awaiting {
                    log::info!("node {}: cluster lock not taken: {outcome:?}", self.config.pnn);
                    self.cluster.role = Role::Follower;
                }
            }
        }
    }

    fn lead_tick(&mut self, out: &mut Vec<Output>) {
        if !self.config.cluster_lock && self.eligible_nodes().len() * 2 <= self.config.nodes {
            return self.step_down("lost the majority of the nodes file", out);
        }
        let now = self.now;
        if self.recovery_running() || now < self.cluster.last_check + self.config.tunables.recover_interval_ms
        {
            return;
        }
        self.cluster.last_check = now;
        if let Some(why) = self.why_recover() {
            log::info!("node {}: recovery needed: {why}", self.config.pnn);
            self.start_recovery(out);
        }
    }

    /// Why the cluster as this leader sees it needs a recovery, if it does.
    fn why_recover(&self) -> Option<String> {
        let c = &self.cluster;
        if !c.active {
            return Some("this node does not serve".into());
        }
        if c.wants_recovery {
            return Some("asked for".into());
        }
        if let Some((p, _)) = c.held_back.iter().find(|(_, &at)| at <= self.now) {
            return Some(format!("node {p} is given up: its records are taken over"));
        }
        let eligible: Vec<Pnn> = self.eligible_nodes().into_iter().collect();
        if eligible != c.epoch_members {
            return Some(format!("members {:?}, alive {eligible:?}", c.epoch_members));
        }
        for &p in &c.epoch_members {
            let peer = &c.peers[p as usize];
            let Some(h) = peer.heartbeat.as_ref().filter(|_| peer.heartbeat_at > c.settled_at) else {
                continue;
            };
            // A heartbeat sent just before the member got `Activate` still says inactive.
            let activating = h.generation == c.epoch_generation
                && peer.heartbeat_at < c.settled_at + 2 * self.config.tunables.keepalive_interval_ms;
            if p != self.config.pnn
                && (h.generation != c.epoch_generation
                    || h.flags & flags::ACTIVE == 0 && !activating
                    || h.flags & flags::WANTS_RECOVERY != 0 && !activating
                    || h.leader != self.config.pnn)
            {
                return Some(format!("node {p} reports {h:?}"));
            }
        }
        None
    }

    /// A cluster message from a peer or from this node itself (`send_cluster`): membership
    /// here, recovery steps in `recovery`.
    pub(super) fn cluster_message(
        &mut self,
        from: Pnn,
        msg: ClusterMsg,
        store: &mut dyn RecordStore,
        out: &mut Vec<Output>,
    ) {
        if from as usize >= self.cluster.peers.len() {
            return;
        }
        // Vacuuming's messages are work of the generation, membership or not.
        match msg {
            ClusterMsg::VacuumFetch { generation, db_id, keys } => {
                return self.vacuum_fetch_asked(generation, db_id, keys, store, out)
            }
            ClusterMsg::VacuumDrop { generation, round, db_id, entries } => {
                return self.vacuum_drop(from, generation, round, db_id, entries, store, out)
            }
            ClusterMsg::VacuumKept { generation, round, kept } => {
                return self.vacuum_kept(from, generation, round, kept, store)
            }
            _ if !self.cluster.enabled => return,
            _ => {}
        }
        if from != self.config.pnn {
            // Anything from a peer shows it is alive; heartbeats also carry its state.
            let now = self.now;
            let peer = &mut self.cluster.peers[from as usize];
            peer.last_heard = Some(now);
            peer.last_seen = Some(now);
            peer.refused = false;
            peer.suspect_since = None;
            peer.left = false;
            if !peer.alive {
                peer.alive = true;
                out.push(Output::Event(ClusterEvent::NodeAlive(from)));
            }
        }
        match msg {
            ClusterMsg::Heartbeat(h) => self.heartbeat_from(from, h, out),
            ClusterMsg::VoteRequest { term } => self.vote_request(from, term, out),
            ClusterMsg::Vote { term, granted } => {
                if granted && self.cluster.role == (Role::Candidate { term, since: self.candidate_since() }) {
                    self.cluster.votes.insert(from);
                    self.count_votes(term, out);
                }
            }
            ClusterMsg::Alive => {} // being heard is all it says
            ClusterMsg::LeaseAsk { leader, stamp } => self.lease_asked(from, leader, stamp, out),
            ClusterMsg::LeaseGrant { stamp } => self.lease_granted(from, stamp),
            ClusterMsg::Attach { id, db } => self.attach_asked(from, id, db, store, out),
            ClusterMsg::Attached { id, error } => self.attach_answered(from, Some((id, error)), out),
            ClusterMsg::Leaving => {
                self.cluster.peers[from as usize].left = true;
                self.peer_died(from, out);
            }
            ClusterMsg::Trouble { reason } => {
                if self.cluster.role == Role::Leader {
                    log::warn!("node {from} asks for a recovery: {reason}");
                    self.cluster.wants_recovery = true;
                }
            }
            other => self.recovery_message(from, other, store, out),
        }
    }

    fn heartbeat_from(&mut self, from: Pnn, h: Heartbeat, out: &mut Vec<Output>) {
        let now = self.now;
        self.cluster.max_term = self.cluster.max_term.max(h.term);
        let claims_lead = h.flags & flags::LEADER != 0;
        {
            let peer = &mut self.cluster.peers[from as usize];
            peer.heartbeat = Some(h.clone());
            peer.heartbeat_at = now;
        }
        if claims_lead {
            self.leader_claim(from, h.term, out);
        } else if self.cluster.leader == Some(from) {
            return self.lose_leader(&format!("leader node {from} stepped down"), out);
        }
        // Our leader serves a generation we are not in: we were left out.
        if self.cluster.leader == Some(from)
            && self.cluster.active
            && h.flags & flags::ACTIVE != 0
            && h.generation != self.cluster.epoch_generation
        {
            self.cluster.wants_recovery = true;
            self.deactivate("the leader serves a generation without this node", out);
        }
    }

    /// `from` says it leads in `term`: follow it if we have no live leader or it is newer.
    pub(super) fn leader_claim(&mut self, from: Pnn, term: u64, out: &mut Vec<Output>) -> bool {
        if self.cluster.leader == Some(from) {
            self.cluster.term = self.cluster.term.max(term);
            return true;
        }
        let newer = term > self.cluster.term;
        let i_lead = self.cluster.role == Role::Leader;
        if i_lead && !newer {
            return false; // it steps down when it hears our heartbeat with the higher term
        }
        if !newer && self.has_live_leader() {
            return false;
        }
        if i_lead {
            self.step_down(&format!("node {from} leads in a newer term {term}"), out);
        }
        self.cluster.term = self.cluster.term.max(term);
        self.cluster.max_term = self.cluster.max_term.max(term);
        self.cluster.role = Role::Follower;
        self.cluster.leader = Some(from);
        self.cluster.leaderless_since = None;
        log::info!("node {}: follows node {from} (term {term})", self.config.pnn);
        self.deactivate(&format!("new leader node {from}"), out);
        true
    }

    fn vote_request(&mut self, from: Pnn, term: u64, out: &mut Vec<Output>) {
        self.cluster.max_term = self.cluster.max_term.max(term);
        let granted = !self.has_live_leader()
            && self.grants_over()
            && self.cluster.banned_until.is_none()
            && term >= self.cluster.term
            && self.cluster.voted.map_or(true, |(t, p)| t < term || p == from);
        if granted {
            self.cluster.term = term;
            self.cluster.voted = Some((term, from));
            if matches!(self.cluster.role, Role::Candidate { .. }) {
                self.cluster.role = Role::Follower;
            }
        }
        self.send_cluster(from, ClusterMsg::Vote { term, granted }, out);
    }
}
