//! The rules of membership (`membership.rs`'s opening comment), one test each, in the
//! manner of raft-rs's `test_raft_paper.rs`: one to three engines driven directly with
//! `Input`s on a clock moved by hand, every packet routed in order unless a test cuts a
//! link, stops a node or drops a kind of message.

use std::collections::{BTreeSet, VecDeque};

use super::*;
use crate::wire::cluster::{flags, Heartbeat};
use crate::wire::Body;

const DB: DbId = 7;
/// The harness's tick: every running engine gets `Input::Tick` this often.
const TICK_MS: Millis = 10;

/// A holder of the cluster lock that is no node of the cluster.
const OUTSIDER: Pnn = 99;

/// What may happen to a packet between two nodes.
type PacketFilter = fn(&Packet) -> bool;

struct Rig {
    engines: Vec<Engine>,
    stores: Vec<MemStore>,
    now: Millis,
    network: VecDeque<Packet>,
    /// Inputs the harness answers with (`Frozen`, `ClusterLock`), in order.
    answers: VecDeque<(Pnn, Input)>,
    /// Directed links that lose everything sent on them.
    cut: BTreeSet<(Pnn, Pnn)>,
    /// Packets for which this is true are lost.
    drop_if: Option<PacketFilter>,
    /// Nodes that do not run (SIGSTOP): no ticks; what is sent to them waits.
    stopped: BTreeSet<Pnn>,
    backlog: Vec<Packet>,
    lock_holder: Option<Pnn>,
    events: Vec<(Millis, Pnn, ClusterEvent)>,
    replies: Vec<(Pnn, ClientId, i32)>,
    /// Every cluster message delivered: (from, to, message).
    delivered: Vec<(Pnn, Pnn, ClusterMsg)>,
}

impl Rig {
    fn new(nodes: usize, cluster_lock: bool) -> Rig {
        let engines = (0..nodes as Pnn)
            .map(|pnn| {
                let mut engine =
                    Engine::new(EngineConfig::clustered(pnn, nodes, cluster_lock, pnn as u64 + 1));
                engine.attach_db(DB, "rules.tdb");
                engine
            })
            .collect();
        Rig {
            engines,
            stores: (0..nodes).map(|_| MemStore::new()).collect(),
            now: 0,
            network: VecDeque::new(),
            answers: VecDeque::new(),
            cut: BTreeSet::new(),
            drop_if: None,
            stopped: BTreeSet::new(),
            backlog: vec![],
            lock_holder: None,
            events: vec![],
            replies: vec![],
            delivered: vec![],
        }
    }

    /// A cluster whose nodes all serve one generation, led by node 0.
    fn settled(nodes: usize, cluster_lock: bool) -> Rig {
        let mut rig = Rig::new(nodes, cluster_lock);
        rig.run_until(5_000, |rig| rig.all_serve_one_generation());
        assert_eq!(rig.engines[0].cluster_status().leader, Some(0), "the lowest node stands first");
        rig.events.clear();
        rig.delivered.clear();
        rig
    }

    fn all_serve_one_generation(&self) -> bool {
        let generation = self.engines[0].generation();
        self.engines.iter().all(|e| e.active() && e.generation() == generation)
    }

    fn dead_after(&self) -> Millis {
        let t = self.engines[0].tunables();
        t.keepalive_interval_ms * t.keepalive_limit
    }

    fn interval(&self) -> Millis {
        self.engines[0].tunables().keepalive_interval_ms
    }

    fn input(&mut self, pnn: Pnn, input: Input) {
        let mut out = vec![];
        self.engines[pnn as usize].handle(self.now, input, &mut self.stores[pnn as usize], &mut out);
        for output in out {
            self.route(pnn, output);
        }
    }

    fn route(&mut self, pnn: Pnn, output: Output) {
        match output {
            Output::Send(packet) => self.network.push_back(packet),
            Output::FreezeDb { db_id } => {
                self.stores[pnn as usize].frozen = true;
                self.answers.push_back((pnn, Input::Frozen { db_id }));
            }
            Output::ThawDb { .. } => self.stores[pnn as usize].frozen = false,
            Output::TakeClusterLock => {
                let outcome = match self.lock_holder {
                    Some(holder) if holder != pnn => LockOutcome::Contention,
                    _ => {
                        self.lock_holder = Some(pnn);
                        LockOutcome::Held
                    }
                };
                self.answers.push_back((pnn, Input::ClusterLock(outcome)));
            }
            Output::ReleaseClusterLock => {
                if self.lock_holder == Some(pnn) {
                    self.lock_holder = None;
                }
            }
            Output::Event(event) => self.events.push((self.now, pnn, event)),
            Output::ClientReply { client, status, .. } => self.replies.push((pnn, client, status)),
            Output::WaitForChainLock { .. } | Output::WaitForWrite { .. } | Output::AttachDone { .. } => {}
        }
    }

    /// Delivers everything in flight, and everything that sends, until nothing is left.
    fn deliver_all(&mut self) {
        loop {
            if let Some((pnn, input)) = self.answers.pop_front() {
                self.input(pnn, input);
                continue;
            }
            let Some(packet) = self.network.pop_front() else { return };
            let (from, to) = (packet.srcnode, packet.destnode);
            if self.cut.contains(&(from, to)) || self.drop_if.is_some_and(|lost| lost(&packet)) {
                continue;
            }
            if self.stopped.contains(&to) {
                self.backlog.push(packet);
                continue;
            }
            if let Body::Cluster(msg) = &packet.body {
                self.delivered.push((from, to, msg.clone()));
            }
            self.input(to, Input::Packet(packet));
        }
    }

    /// One tick of every running node, and what follows from it.
    fn step(&mut self) {
        self.now += TICK_MS;
        for pnn in 0..self.engines.len() as Pnn {
            if !self.stopped.contains(&pnn) {
                self.input(pnn, Input::Tick);
            }
        }
        self.deliver_all();
    }

    fn run_for(&mut self, ms: Millis) {
        let end = self.now + ms;
        while self.now < end {
            self.step();
        }
    }

    /// Runs until `done`, at most `limit` ms; fails the test if it never is.
    fn run_until(&mut self, limit: Millis, done: impl Fn(&Rig) -> bool) -> Millis {
        let start = self.now;
        while !done(self) {
            assert!(self.now - start < limit, "not within {limit} ms");
            self.step();
        }
        self.now - start
    }

    fn stop(&mut self, pnn: Pnn) {
        self.stopped.insert(pnn);
    }

    /// A stopped node runs again: what was sent to it arrives, in order.
    fn resume(&mut self, pnn: Pnn) {
        self.stopped.remove(&pnn);
        let (for_it, others): (Vec<Packet>, Vec<Packet>) =
            std::mem::take(&mut self.backlog).into_iter().partition(|p| p.destnode == pnn);
        self.backlog = others;
        self.network.extend(for_it);
    }

    /// Cuts both directions between `a` and `b`.
    fn cut_between(&mut self, a: Pnn, b: Pnn) {
        self.cut.insert((a, b));
        self.cut.insert((b, a));
    }

    fn events_of(&self, pnn: Pnn) -> impl Iterator<Item = &ClusterEvent> {
        self.events.iter().filter(move |(_, p, _)| *p == pnn).map(|(_, _, e)| e)
    }

    fn when_dead(&self, observer: Pnn, dead: Pnn) -> Option<Millis> {
        self.events.iter().find(|(_, p, e)| *p == observer && *e == ClusterEvent::NodeDead(dead)).map(|e| e.0)
    }

    fn recoveries_started(&self) -> usize {
        self.events.iter().filter(|(_, _, e)| matches!(e, ClusterEvent::RecoveryStarted { .. })).count()
    }

    /// `from`'s cluster message, as if it came over the wire to `to`; `to`'s answers stay in
    /// the network for the test to read.
    fn hear(&mut self, to: Pnn, from: Pnn, msg: ClusterMsg) -> Vec<ClusterMsg> {
        let packet =
            Packet { generation: 0, destnode: to, srcnode: from, reqid: 0, body: Body::Cluster(msg) };
        let mut out = vec![];
        self.engines[to as usize].handle(
            self.now,
            Input::Packet(packet),
            &mut self.stores[to as usize],
            &mut out,
        );
        let mut answers = vec![];
        for output in out {
            match output {
                Output::Send(Packet { destnode, body: Body::Cluster(msg), .. }) if destnode == from => {
                    answers.push(msg)
                }
                other => self.route(to, other),
            }
        }
        answers
    }

    fn client_call(&mut self, pnn: Pnn, client: ClientId, key: &[u8]) {
        let call = ClientCall {
            client,
            reqid: 1,
            db_id: DB,
            key: key.to_vec(),
            first_use: false,
            kind: CallKind::Migrate,
        };
        self.input(pnn, Input::ClientCall(call));
        self.deliver_all();
    }
}

fn vote_answer(answers: &[ClusterMsg]) -> Option<(u64, bool)> {
    answers.iter().find_map(|m| match m {
        ClusterMsg::Vote { term, granted } => Some((*term, *granted)),
        _ => None,
    })
}

#[test]
fn a_node_serves_only_after_its_leader_activated_it() {
    let mut rig = Rig::new(3, false);
    assert!(rig.engines.iter().all(|e| !e.active()), "nobody serves before a recovery");
    rig.client_call(1, 1, b"share modes");
    assert!(rig.replies.is_empty(), "a client of a node that does not serve waits");
    // Node 2 never hears `Activate`: everything else of the recovery reaches it.
    rig.drop_if = Some(|p| p.destnode == 2 && matches!(p.body, Body::Cluster(ClusterMsg::Activate { .. })));
    rig.run_until(5_000, |rig| rig.engines[0].active() && rig.engines[1].active());
    assert_eq!(rig.replies, vec![(1, 1, CALL_OK)], "the waiting request is answered at activation");
    rig.run_for(500);
    assert!(!rig.engines[2].active(), "committed but never activated: node 2 does not serve");
    assert_eq!(rig.engines[2].generation(), crate::wire::INVALID_GENERATION);
    rig.drop_if = None;
    rig.run_until(5_000, Rig::all_serve_one_generation);
}

#[test]
fn a_node_that_hears_a_live_leader_votes_for_nobody() {
    let mut rig = Rig::settled(3, false);
    let term = rig.engines[1].cluster_status().term;
    let answers = rig.hear(1, 2, ClusterMsg::VoteRequest { term: term + 5 });
    assert_eq!(vote_answer(&answers), Some((term + 5, false)));
    assert_eq!(rig.engines[1].cluster_status().leader, Some(0));
    assert!(rig.engines[1].active(), "a refused vote changes nothing");
}

#[test]
fn one_vote_per_term() {
    // (candidate, term, granted): node 0 has no leader and hears these in order.
    let table: &[(Pnn, u64, bool)] = &[
        (1, 5, true),  // the first candidate of a term gets the vote
        (2, 5, false), // another in the same term does not
        (1, 5, true),  // the same one asking again (a lost answer) gets it again
        (2, 4, false), // an older term never
        (2, 6, true),  // a newer term is a new vote
        (1, 6, false),
    ];
    let mut rig = Rig::new(3, false);
    for &(candidate, term, granted) in table {
        let answers = rig.hear(0, candidate, ClusterMsg::VoteRequest { term });
        assert_eq!(vote_answer(&answers), Some((term, granted)), "node {candidate} in term {term}");
    }
}

#[test]
fn a_majority_elects_and_the_leader_admits_everybody() {
    let mut rig = Rig::new(3, false);
    let took = rig.run_until(5_000, Rig::all_serve_one_generation);
    let leaders: Vec<Option<Pnn>> = rig.engines.iter().map(|e| e.cluster_status().leader).collect();
    assert_eq!(leaders, vec![Some(0); 3]);
    let elected: Vec<&ClusterEvent> = rig
        .events
        .iter()
        .map(|(_, _, e)| e)
        .filter(|e| matches!(e, ClusterEvent::BecameLeader { .. }))
        .collect();
    assert_eq!(elected.len(), 1, "one election: {elected:?}");
    assert!(took < 1_000, "a fresh cluster serves within a second (took {took} ms)");
}

#[test]
fn losing_the_lock_steps_down() {
    let mut rig = Rig::settled(2, true);
    assert_eq!(rig.lock_holder, Some(0));
    rig.input(0, Input::ClusterLock(LockOutcome::Lost));
    assert!(rig.events_of(0).any(|e| matches!(e, ClusterEvent::SteppedDown { .. })));
    assert!(!rig.engines[0].active(), "a leader without its lock does not serve");
    assert_eq!(rig.lock_holder, None, "it lets the lock go");
    assert_eq!(rig.engines[0].cluster_status().leader, None);
}

#[test]
fn with_a_lock_only_its_holder_leads() {
    let mut rig = Rig::new(3, true);
    rig.lock_holder = Some(OUTSIDER); // a process of no node holds it
    rig.run_for(1_000);
    assert!(rig.engines.iter().all(|e| e.cluster_status().leader.is_none()), "contention elects nobody");
    assert!(rig.engines.iter().all(|e| !e.active()));
    rig.lock_holder = None;
    rig.run_until(5_000, Rig::all_serve_one_generation);
    assert_eq!(rig.lock_holder, rig.engines[1].cluster_status().leader);
}

#[test]
fn a_leader_without_a_majority_steps_down() {
    let mut rig = Rig::settled(3, false);
    rig.cut_between(0, 1);
    rig.cut_between(0, 2);
    let dead_after = rig.dead_after();
    rig.run_until(dead_after + 3 * rig.interval(), |rig| {
        rig.events_of(0).any(|e| matches!(e, ClusterEvent::SteppedDown { .. }))
    });
    assert!(!rig.engines[0].active());
    assert_eq!(rig.engines[0].cluster_status().leader, None);
    // The other two are a majority: one of them leads them.
    rig.run_until(5_000, |rig| rig.engines[1].active() && rig.engines[2].active());
    assert_eq!(rig.engines[1].cluster_status().leader, Some(1));
    assert!(!rig.engines[0].active(), "the minority never serves");
}

#[test]
fn a_newer_leader_replaces_the_old_one() {
    let mut rig = Rig::settled(3, false);
    let term = rig.engines[0].cluster_status().term;
    let newer = Heartbeat {
        term: term + 1,
        leader: 2,
        flags: flags::LEADER,
        epoch: Default::default(),
        generation: 0,
    };
    rig.hear(0, 2, ClusterMsg::Heartbeat(newer));
    assert!(rig.events_of(0).any(|e| matches!(e, ClusterEvent::SteppedDown { .. })));
    assert_eq!(rig.engines[0].cluster_status().leader, Some(2));
    assert!(!rig.engines[0].active(), "it waits for the new leader to admit it");
}

#[test]
fn a_peer_silent_for_the_dead_time_is_dead() {
    let mut rig = Rig::settled(3, false);
    let (interval, dead_after) = (rig.interval(), rig.dead_after());
    let stopped_at = rig.now;
    rig.stop(2);
    rig.run_for(dead_after - 2 * interval);
    assert_eq!(rig.when_dead(0, 2), None, "silent for less than the dead time: alive");
    rig.run_until(4 * interval, |rig| rig.when_dead(0, 2).is_some() && rig.when_dead(1, 2).is_some());
    let died = rig.when_dead(0, 2).unwrap_or_default() - stopped_at;
    assert!(died >= dead_after - interval && died <= dead_after + 2 * interval, "dead after {died} ms");
    // The survivors serve without it.
    rig.run_until(5_000, |rig| rig.engines[..2].iter().all(|e| e.active() && e.vnn_map() == [0, 1]));
}

#[test]
fn a_broken_link_to_a_live_peer_costs_nothing() {
    let mut rig = Rig::settled(3, false);
    let generation = rig.engines[0].generation();
    for _ in 0..5 {
        // The transport reconnects at once; the peer is heard again within an interval.
        rig.input(0, Input::LinkDown(2));
        rig.input(2, Input::LinkDown(0));
        rig.run_for(rig.interval());
        rig.input(0, Input::LinkUp(2));
        rig.input(2, Input::LinkUp(0));
        rig.run_for(rig.interval());
    }
    rig.run_for(rig.dead_after());
    assert!(!rig.events.iter().any(|(_, _, e)| matches!(e, ClusterEvent::NodeDead(_))), "{:?}", rig.events);
    assert_eq!(rig.recoveries_started(), 0);
    assert!(rig.all_serve_one_generation() && rig.engines[0].generation() == generation);
}

#[test]
fn a_broken_link_to_a_silent_peer_is_death_long_before_the_dead_time() {
    let mut rig = Rig::settled(3, false);
    let (interval, dead_after) = (rig.interval(), rig.dead_after());
    let broke_at = rig.now;
    rig.stop(2);
    rig.input(0, Input::LinkDown(2));
    rig.run_until(dead_after, |rig| rig.when_dead(0, 2).is_some());
    let died = rig.when_dead(0, 2).unwrap_or_default() - broke_at;
    assert!(died <= 3 * interval && died < dead_after, "dead {died} ms after the link broke");
}

#[test]
fn a_refused_reconnect_is_death_at_once() {
    let mut rig = Rig::settled(3, false);
    rig.stop(2);
    rig.input(0, Input::Refused(2));
    assert_eq!(rig.when_dead(0, 2), Some(rig.now));
    assert!(!rig.engines[0].cluster_status().alive.contains(&2));
}

#[test]
fn a_node_that_stalled_does_not_count_its_own_silence_against_peers() {
    let mut rig = Rig::settled(3, false);
    let dead_after = rig.dead_after();
    // Node 0 gets no tick and no packet for twice the dead time; its first tick comes
    // before anything its peers sent meanwhile.
    rig.stop(0);
    rig.run_for(2 * dead_after);
    rig.stopped.remove(&0);
    rig.step();
    assert_eq!(rig.when_dead(0, 1), None, "node 0 was the silent one");
    assert_eq!(rig.when_dead(0, 2), None);
    assert!(rig.when_dead(1, 0).is_some(), "its peers, which ran, gave up on it");
}

#[test]
fn a_node_left_out_of_its_leaders_generation_stops_serving() {
    let mut rig = Rig::settled(3, false);
    let moved_on = Heartbeat {
        term: rig.engines[1].cluster_status().term,
        leader: 0,
        flags: flags::LEADER | flags::ACTIVE,
        epoch: Default::default(),
        generation: rig.engines[1].generation().wrapping_add(1),
    };
    rig.hear(1, 0, ClusterMsg::Heartbeat(moved_on));
    assert!(!rig.engines[1].active());
    assert!(rig.stores[1].frozen, "its clients stop using the records it holds");
    assert_eq!(rig.engines[1].cluster_status().leader, Some(0), "it asks its leader to be admitted again");
}

#[test]
fn a_node_that_loses_its_leader_stops_serving_and_freezes() {
    let mut rig = Rig::settled(3, false);
    rig.stop(0);
    rig.input(1, Input::Refused(0));
    assert!(!rig.engines[1].active());
    assert!(rig.stores[1].frozen, "its clients block until it serves again");
    assert_eq!(rig.engines[1].cluster_status().leader, None);
}

#[test]
fn a_node_that_went_quiet_serves_again_only_through_a_recovery() {
    let mut rig = Rig::settled(3, false);
    rig.input(2, Input::Quiet(true));
    assert!(!rig.engines[2].active());
    rig.run_until(5_000, |rig| rig.engines[0].active() && rig.engines[0].vnn_map() == [0, 1]);
    assert_eq!(rig.engines[2].cluster_status().state, "quiet");
    rig.input(2, Input::Quiet(false));
    assert!(!rig.engines[2].active(), "back, but not admitted yet");
    rig.run_until(5_000, |rig| rig.all_serve_one_generation() && rig.engines[0].vnn_map() == [0, 1, 2]);
}

#[test]
fn a_node_the_cluster_gave_up_on_stops_serving_when_it_wakes_and_is_admitted_again() {
    let mut rig = Rig::settled(3, false);
    rig.stop(2);
    rig.run_until(5_000, |rig| rig.engines[..2].iter().all(|e| e.active() && e.vnn_map() == [0, 1]));
    assert!(rig.engines[2].active(), "a stopped node cannot notice anything");
    rig.events.clear();
    rig.resume(2);
    rig.run_until(rig.interval() + TICK_MS, |rig| {
        rig.events_of(2).any(|e| matches!(e, ClusterEvent::Deactivated { .. }))
    });
    rig.run_until(5_000, |rig| rig.all_serve_one_generation() && rig.engines[2].vnn_map() == [0, 1, 2]);
}

#[test]
fn a_leader_that_steps_down_tells_its_followers_at_once() {
    let mut rig = Rig::settled(3, true);
    rig.input(0, Input::ClusterLock(LockOutcome::Lost));
    rig.deliver_all(); // no clock moves: no heartbeat interval passes
    for follower in [1, 2] {
        assert!(!rig.engines[follower].active(), "node {follower} still serves a generation nobody leads");
        assert_eq!(rig.engines[follower].cluster_status().leader, None);
    }
}

#[test]
fn a_minority_stops_serving_before_the_majority_serves_again() {
    // Seed 1015 of the fault simulation: five nodes split {0, 1} | {2, 3, 4}, leader 0.
    let mut rig = Rig::settled(5, false);
    let cut_at = rig.now;
    for minority in [0, 1] {
        for majority in [2, 3, 4] {
            rig.cut_between(minority, majority);
        }
    }
    rig.run_until(5_000, |rig| rig.engines[2..].iter().all(|e| e.active() && e.vnn_map() == [2, 3, 4]));
    let stopped = |pnn: Pnn| {
        rig.events
            .iter()
            .find(|(_, p, e)| *p == pnn && matches!(e, ClusterEvent::Deactivated { .. }))
            .map(|e| e.0)
    };
    let majority_leads = rig
        .events
        .iter()
        .find(|(_, p, e)| *p >= 2 && matches!(e, ClusterEvent::BecameLeader { .. }))
        .map(|e| e.0)
        .expect("the majority elected a leader");
    for pnn in [0, 1] {
        let at = stopped(pnn).expect("the minority stopped serving");
        assert!(
            at < majority_leads,
            "node {pnn} served until {at}, the majority elected at {majority_leads}"
        );
        let lease_ms = rig.engines[pnn as usize].lease_ms();
        assert!(at <= cut_at + lease_ms + rig.interval(), "node {pnn} held its lease until {at}");
    }
}

#[test]
fn a_handover_from_a_node_the_lmaster_does_not_know_as_dmaster_starts_a_recovery() {
    let mut rig = Rig::settled(3, false);
    let key = (0u32..)
        .map(|i| format!("key-{i}").into_bytes())
        .find(|k| rig.engines[0].lmaster(k) == 1)
        .expect("a key node 1 is LMASTER of");
    // Node 1 knows node 0 as the record's DMASTER; node 2 hands it over all the same.
    let header = crate::record::RecordHeader { rsn: 3, dmaster: 0, flags: 0 };
    rig.stores[1].put(DB, &key, Record { header, data: b"v3".to_vec() });
    let req =
        crate::wire::ReqDmaster { db_id: DB, rsn: 5, dmaster: 2, key, data: b"v5".to_vec(), record_flags: 0 };
    let generation = rig.engines[1].generation();
    let packet = Packet { generation, destnode: 1, srcnode: 2, reqid: 1, body: Body::ReqDmaster(req) };
    rig.input(1, Input::Packet(packet));
    assert_eq!(rig.engines[1].stats().protocol_violations, 1);
    let recover_interval = rig.engines[0].tunables().recover_interval_ms;
    rig.run_until(recover_interval + 2 * TICK_MS, |rig| rig.recoveries_started() > 0);
}

#[test]
fn a_follower_whose_lease_runs_out_stops_serving_and_freezes() {
    let mut rig = Rig::settled(3, false);
    // Node 2 hears every heartbeat, but no grant of its lease reaches it.
    rig.drop_if = Some(|p| p.destnode == 2 && matches!(p.body, Body::Cluster(ClusterMsg::LeaseGrant { .. })));
    let lease_ms = rig.engines[2].lease_ms();
    let limit = lease_ms + rig.interval() + TICK_MS;
    let took = rig.run_until(limit, |rig| {
        rig.events_of(2).any(|e| matches!(e, ClusterEvent::Deactivated { why } if why.contains("lease")))
    });
    assert!(took + rig.interval() >= lease_ms, "stopped after {took} ms, its lease runs {lease_ms}");
    assert!(rig.stores[2].frozen, "its clients stop using the records it holds");
    assert!(rig.engines[0].active() && rig.engines[1].active(), "the others keep serving");
}

#[test]
fn a_stopped_node_fences_itself_at_its_first_input_after_its_lease() {
    let mut rig = Rig::settled(3, false);
    let lease_ms = rig.engines[2].lease_ms();
    assert!(lease_ms >= rig.dead_after(), "a stall the others do not notice costs no lease");
    rig.stop(2);
    rig.run_for(lease_ms + 2 * rig.interval());
    rig.resume(2);
    // A client's request is the first thing it sees: it must not be served from its records.
    rig.client_call(2, 9, b"share modes");
    assert!(!rig.engines[2].active() && rig.stores[2].frozen);
    assert!(rig.replies.is_empty(), "no answer without a lease");
    // It asks to be admitted again, and is, and the request is answered then.
    rig.run_until(5_000, Rig::all_serve_one_generation);
    assert_eq!(rig.replies, vec![(2, 9, CALL_OK)]);
}

#[test]
fn a_node_votes_for_nobody_while_a_lease_it_granted_may_run() {
    let mut rig = Rig::settled(3, false);
    rig.stop(0);
    let stopped_at = rig.now;
    rig.input(1, Input::Refused(0)); // death at once, not after the dead time
    let term = rig.engines[1].cluster_status().term + 1;
    let answers = rig.hear(1, 2, ClusterMsg::VoteRequest { term });
    assert_eq!(vote_answer(&answers), Some((term, false)), "node 0's lease from node 1 may still run");
    let bound = rig.engines[1].lease_bound();
    rig.now = stopped_at + bound + TICK_MS;
    let answers = rig.hear(1, 2, ClusterMsg::VoteRequest { term });
    assert_eq!(vote_answer(&answers), Some((term, true)), "once it is surely over");
}

/// Node 2 holds a record (v2, RSN 4); node 0 keeps the copy it handed over (v1, RSN 3).
fn rig_with_a_record_on_node_2() -> (Rig, Vec<u8>) {
    let mut rig = Rig::settled(3, false);
    let key = b"byte-range locks".to_vec();
    let held = crate::record::RecordHeader { rsn: 4, dmaster: 2, flags: 0 };
    rig.stores[2].put(DB, &key, Record { header: held, data: b"v2".to_vec() });
    let left = crate::record::RecordHeader { rsn: 3, dmaster: 2, flags: 0 };
    rig.stores[0].put(DB, &key, Record { header: left, data: b"v1".to_vec() });
    (rig, key)
}

#[test]
fn a_recovery_takes_no_record_over_from_a_node_that_may_come_back() {
    let (mut rig, key) = rig_with_a_record_on_node_2();
    let stopped_at = rig.now;
    rig.stop(2); // silent: dead after the dead time, but perhaps only stopped
    rig.run_until(5_000, |rig| rig.engines[0].active() && rig.engines[0].vnn_map() == [0, 1]);
    assert_eq!(rig.stores[0].peek(DB, &key).map(|r| r.header.dmaster), Some(2), "held for node 2");
    let give_up_ms = rig.engines[0].give_up_ms();
    assert!(give_up_ms >= rig.engines[0].lease_bound(), "no lease outlives the wait");
    let promoted = |rig: &Rig| rig.stores[0].peek(DB, &key).is_some_and(|r| r.header.dmaster == 0);
    rig.run_until(2 * give_up_ms, promoted);
    let took = rig.now - stopped_at;
    assert!(took + rig.interval() >= give_up_ms, "taken over {took} ms after the stop, before {give_up_ms}");
    assert_eq!(rig.stores[0].peek(DB, &key).map(|r| r.data.clone()), Some(b"v1".to_vec()));
    // Node 2 comes back after all: its copy is superseded, it empties its databases.
    rig.resume(2);
    rig.run_until(5_000, |rig| rig.all_serve_one_generation() && rig.engines[0].vnn_map() == [0, 1, 2]);
    assert!(rig.events_of(2).any(|e| *e == ClusterEvent::Emptied));
    assert_eq!(rig.stores[2].peek(DB, &key), None);
}

#[test]
fn a_false_death_costs_a_pause_not_data() {
    let (mut rig, key) = rig_with_a_record_on_node_2();
    // Stopped for 1.5 s: dead after 0.6 s, the others serve without it meanwhile.
    let stopped_at = rig.now;
    rig.stop(2);
    rig.run_until(1_500, |rig| rig.engines[..2].iter().all(|e| e.active() && e.vnn_map() == [0, 1]));
    rig.run_for(stopped_at + 1_500 - rig.now);
    rig.resume(2);
    rig.run_until(5_000, |rig| rig.all_serve_one_generation() && rig.engines[0].vnn_map() == [0, 1, 2]);
    assert!(!rig.events_of(2).any(|e| *e == ClusterEvent::Emptied), "nothing of node 2 is emptied");
    let on_2 = rig.stores[2].peek(DB, &key).expect("node 2 keeps its record");
    assert_eq!((on_2.header.dmaster, on_2.data.as_slice()), (2, &b"v2"[..]), "the last write survives");
    // Everybody finds it there: a client of node 0 gets v2.
    rig.client_call(0, 5, &key);
    rig.run_for(rig.interval());
    assert_eq!(rig.replies, vec![(0, 5, CALL_OK)]);
    assert_eq!(rig.stores[0].peek(DB, &key).map(|r| r.data.clone()), Some(b"v2".to_vec()));
}

#[test]
fn a_leader_stalled_past_the_dead_time_steps_down_at_its_first_tick() {
    let mut rig = Rig::settled(3, false);
    let leader = (0..3).find(|&p| rig.engines[p as usize].cluster.leads()).expect("a leader");
    rig.stop(leader);
    rig.run_for(rig.dead_after() + 2 * rig.interval());
    rig.resume(leader);
    rig.input(leader, Input::Tick);
    assert!(!rig.engines[leader as usize].cluster.leads(), "it leads no more");
    let stepped_down =
        |e: &ClusterEvent| matches!(e, ClusterEvent::SteppedDown { why } if why.contains("stalled"));
    assert!(rig.events_of(leader).any(stepped_down), "at once, not a tick later");
}

#[test]
fn a_key_only_a_node_left_out_knows_is_not_made_up_anew_while_it_may_come_back() {
    let mut rig = Rig::settled(3, false);
    // Node 2 is the key's LMASTER and holds it: no other node has a copy.
    let key = (0u32..)
        .map(|i| format!("share mode {i}").into_bytes())
        .find(|k| lmaster_of(k, &[0, 1, 2]) == 2)
        .expect("some key");
    let header = crate::record::RecordHeader { rsn: 4, dmaster: 2, flags: 0 };
    rig.stores[2].put(DB, &key, Record { header, data: b"v2".to_vec() });
    let stopped_at = rig.now;
    rig.stop(2);
    rig.run_until(1_500, |rig| rig.engines[..2].iter().all(|e| e.active() && e.vnn_map() == [0, 1]));
    rig.client_call(0, 5, &key);
    rig.run_for(stopped_at + 1_500 - rig.now);
    assert_eq!(rig.replies, vec![], "the new LMASTER must not make up an empty record");
    assert!(rig.stores[..2].iter().all(|store| store.peek(DB, &key).is_none()));
    rig.resume(2);
    rig.run_until(5_000, |rig| !rig.replies.is_empty());
    assert_eq!(rig.replies, vec![(0, 5, CALL_OK)]);
    assert_eq!(rig.stores[0].peek(DB, &key).map(|r| r.data.clone()), Some(b"v2".to_vec()), "the last write");
}

#[test]
fn the_records_of_a_node_whose_daemon_is_gone_are_taken_over_once_its_lease_is_over() {
    let (mut rig, key) = rig_with_a_record_on_node_2();
    rig.stop(2);
    // Nothing listens at node 2's address: a daemon that starts again starts empty.
    rig.input(0, Input::Refused(2));
    rig.input(1, Input::Refused(2));
    let bound = rig.engines[0].lease_bound();
    let promoted = |rig: &Rig| rig.stores[0].peek(DB, &key).is_some_and(|r| r.header.dmaster == 0);
    let took = rig.run_until(5_000, promoted);
    // Node 2 was granted a lease at most an interval before it stopped.
    assert!(took + rig.interval() >= bound, "taken over {took} ms after the cut; a lease runs {bound} ms");
    assert!(took < rig.engines[0].give_up_ms(), "not held for it");
    assert!(rig.engines[0].active() && rig.engines[0].vnn_map() == [0, 1]);
}

#[test]
fn a_node_alone_is_its_own_majority_and_keeps_its_lease() {
    let mut rig = Rig::new(1, false);
    rig.run_until(2_000, Rig::all_serve_one_generation);
    let generation = rig.engines[0].generation();
    rig.run_for(10 * rig.dead_after());
    assert!(rig.engines[0].active() && rig.engines[0].generation() == generation, "{:?}", rig.events);
    assert_eq!(rig.recoveries_started(), 1);
}
