//! Protocol scenarios as readable tables: who sends what to whom for the canonical flows of
//! DESIGN §8.2, on engines with in-memory stores and an in-order network.

use super::*;
use crate::record::FLAG_MIGRATED_WITH_DATA;
use crate::wire::{op, Body};

const DB: DbId = 1;
const GENERATION: Generation = 9;

/// The harness's fixed cluster, and what its clients were answered.
struct Cluster {
    sim: sim::Cluster,
    replies: Vec<(Pnn, ClientId, ReqId, i32)>,
    /// The data each reply carried, for calls that asked for it (CTDB's FETCH_FUNC).
    fetched: Vec<(ClientId, Vec<u8>)>,
}

impl Cluster {
    fn new(nodes: u32) -> Cluster {
        let vnn_map: Vec<Pnn> = (0..nodes).collect();
        let engines = (0..nodes)
            .map(|pnn| {
                let mut engine = Engine::new(EngineConfig::new(pnn, GENERATION, vnn_map.clone()));
                engine.attach_db(DB, "test.tdb");
                engine
            })
            .collect();
        Cluster { sim: sim::Cluster::fixed(engines), replies: vec![], fetched: vec![] }
    }

    fn engine(&mut self, pnn: Pnn) -> &mut Engine {
        &mut self.sim.nodes[pnn as usize].engine
    }

    fn store(&mut self, pnn: Pnn) -> &mut MemStore {
        &mut self.sim.nodes[pnn as usize].store
    }

    fn stored(&self, pnn: Pnn) -> &MemStore {
        &self.sim.nodes[pnn as usize].store
    }

    fn hear(&mut self, pnn: Pnn, outputs: Vec<Output>) {
        for output in outputs {
            let Output::ClientReply { client, reqid, status, data } = output else {
                panic!("a fixed cluster answers only clients: {output:?}")
            };
            self.replies.push((pnn, client, reqid, status));
            self.fetched.extend(data.map(|data| (client, data)));
        }
    }

    fn input(&mut self, pnn: Pnn, input: Input) {
        let outputs = self.sim.input(pnn, input);
        self.hear(pnn, outputs);
    }

    /// Runs `input` on `pnn` at time `now` (the clock stays there).
    fn input_at(&mut self, now: Millis, pnn: Pnn, input: Input) {
        self.sim.now = now;
        self.input(pnn, input);
    }

    fn deliver_all(&mut self) {
        for (pnn, output) in self.sim.deliver_all() {
            self.hear(pnn, vec![output]);
        }
    }

    fn ask(&mut self, pnn: Pnn, client: ClientId, key: &[u8]) {
        self.input(
            pnn,
            Input::ClientCall(ClientCall {
                client,
                reqid: client as ReqId,
                db_id: DB,
                key: key.to_vec(),
                first_use: true,
                kind: CallKind::Migrate,
            }),
        );
    }

    fn header(&self, pnn: Pnn, key: &[u8]) -> Option<RecordHeader> {
        self.stored(pnn).peek(DB, key).map(|r| r.header)
    }

    fn operations(&self) -> Vec<(u32, Pnn)> {
        self.sim.delivered_operations()
    }

    /// Keys whose clients wait for the record to reach the file (`Output::WaitForWrite`).
    fn write_waits(&self) -> Vec<(Pnn, Vec<u8>)> {
        let nodes = self.sim.nodes.iter().zip(self.sim.pnns());
        nodes
            .flat_map(|(node, pnn)| node.write_waits.iter().map(move |(_, key)| (pnn, key.clone())))
            .collect()
    }
}

use crate::record::RecordHeader;

/// Client `client`'s call for `key` (its reqid is its number).
fn call(client: ClientId, key: &[u8], first_use: bool, kind: CallKind) -> ClientCall {
    ClientCall { client, reqid: client as ReqId, db_id: DB, key: key.to_vec(), first_use, kind }
}

/// A key whose LMASTER on a `nodes`-node cluster is `lmaster`.
fn key_on(lmaster: Pnn, nodes: u32) -> Vec<u8> {
    let map: Vec<Pnn> = (0..nodes).collect();
    (0..).map(|i| format!("key{i}").into_bytes()).find(|k| lmaster_of(k, &map) == lmaster).unwrap()
}

#[test]
fn lmaster_answers_a_new_key_itself_and_writes_the_header() {
    let mut cluster = Cluster::new(3);
    let key = key_on(1, 3);
    cluster.ask(1, 7, &key);
    assert_eq!(cluster.replies, vec![(1, 7, 7, CALL_OK)]);
    assert!(cluster.sim.packets_in_flight() == 0, "no network traffic for a local record");
    let header = cluster.header(1, &key).unwrap();
    assert_eq!((header.rsn, header.dmaster), (1, 1));
}

#[test]
fn two_hop_migration_when_the_lmaster_holds_the_record() {
    let mut cluster = Cluster::new(3);
    let key = key_on(0, 3);
    cluster.ask(2, 5, &key);
    cluster.deliver_all();
    assert_eq!(cluster.operations(), vec![(op::REQ_CALL, 0), (op::REPLY_DMASTER, 2)]);
    assert_eq!(cluster.replies, vec![(2, 5, 5, CALL_OK)]);
    assert_eq!(cluster.header(2, &key).map(|h| (h.rsn, h.dmaster)), Some((1, 2)));
    assert_eq!(cluster.header(0, &key).map(|h| h.dmaster), Some(2), "the LMASTER records the new DMASTER");
}

#[test]
fn three_hop_migration_through_a_third_lmaster() {
    let mut cluster = Cluster::new(3);
    let key = key_on(0, 3);
    cluster.ask(1, 1, &key);
    cluster.deliver_all();
    cluster.input(1, Input::ClientDone { client: 1, db_id: DB, key: key.clone() });
    cluster.sim.clear_deliveries();
    // The record, with data, now moves from node 1 to node 2; node 0 is LMASTER.
    let mut record = cluster.stored(1).peek(DB, &key).unwrap().clone();
    record.data = b"payload".to_vec();
    cluster.store(1).put(DB, &key, record);
    cluster.ask(2, 2, &key);
    cluster.deliver_all();
    assert_eq!(
        cluster.operations(),
        vec![(op::REQ_CALL, 0), (op::REQ_CALL, 1), (op::REQ_DMASTER, 0), (op::REPLY_DMASTER, 2)],
        "REQ_CALL to the LMASTER, forwarded to the DMASTER, handed over through the LMASTER"
    );
    let arrived = cluster.stored(2).peek(DB, &key).unwrap();
    assert_eq!(arrived.data, b"payload");
    assert_eq!((arrived.header.rsn, arrived.header.dmaster), (2, 2), "the RSN goes up on arrival");
    let left = cluster.stored(1).peek(DB, &key).unwrap();
    assert_eq!(left.header.dmaster, 2);
    assert_ne!(left.header.flags & FLAG_MIGRATED_WITH_DATA, 0, "a copy left with data is marked");
}

#[test]
fn a_fetch_call_answers_the_record_data_where_it_is_and_after_it_arrives() {
    let mut cluster = Cluster::new(2);
    let key = key_on(0, 2);
    cluster.ask(0, 1, &key);
    let mut record = cluster.stored(0).peek(DB, &key).unwrap().clone();
    record.data = b"share modes".to_vec();
    cluster.store(0).put(DB, &key, record);
    cluster.input(0, Input::ClientCall(call(2, &key, false, CallKind::Read)));
    cluster.input(1, Input::ClientCall(call(3, &key, false, CallKind::Read)));
    cluster.deliver_all();
    assert_eq!(cluster.fetched, vec![(2, b"share modes".to_vec()), (3, b"share modes".to_vec())]);
    assert_eq!(cluster.operations(), vec![(op::REQ_CALL, 0), (op::REPLY_CALL, 1)], "one round trip");
    assert_eq!(cluster.header(0, &key).unwrap().dmaster, 0, "a read leaves the record with its DMASTER");
    assert!(cluster.header(1, &key).is_none(), "and leaves no copy behind");
    // A read of a key nobody has stored answers no data and mints nothing at the LMASTER.
    let absent = key_on(0, 2).into_iter().chain(*b"-absent").collect::<Vec<u8>>();
    let lmaster = lmaster_of(&absent, &[0, 1]);
    let asker = 1 - lmaster;
    cluster.input(asker, Input::ClientCall(call(5, &absent, false, CallKind::Read)));
    cluster.deliver_all();
    assert_eq!(cluster.fetched.last(), Some(&(5, vec![])));
    assert!(cluster.header(lmaster, &absent).is_none(), "nothing minted");
    // Calls that did not ask for the data get none.
    cluster.ask(1, 4, &key);
    cluster.deliver_all();
    assert_eq!(cluster.fetched.len(), 3);
}

#[test]
fn reads_of_one_key_share_one_request() {
    let mut cluster = Cluster::new(2);
    let key = key_on(0, 2);
    cluster.ask(0, 1, &key);
    let mut record = cluster.stored(0).peek(DB, &key).unwrap().clone();
    record.data = b"hot".to_vec();
    cluster.store(0).put(DB, &key, record);
    // Three smbd on node 1 read the record before the first answer is back.
    for client in [2, 3, 4] {
        cluster.input(1, Input::ClientCall(call(client, &key, false, CallKind::Read)));
    }
    cluster.deliver_all();
    assert_eq!(cluster.operations(), vec![(op::REQ_CALL, 0), (op::REPLY_CALL, 1)], "one round trip for all");
    let mut fetched = cluster.fetched.clone();
    fetched.sort();
    assert_eq!(fetched, vec![(2, b"hot".to_vec()), (3, b"hot".to_vec()), (4, b"hot".to_vec())]);
}

#[test]
fn a_read_that_migrates_brings_the_record_and_answers_its_data() {
    let mut cluster = Cluster::new(2);
    let key = key_on(0, 2);
    cluster.ask(0, 1, &key);
    let mut record = cluster.stored(0).peek(DB, &key).unwrap().clone();
    record.data = b"byte-range locks".to_vec();
    cluster.store(0).put(DB, &key, record);
    cluster.input(1, Input::ClientCall(call(2, &key, false, CallKind::MigrateAndRead)));
    cluster.deliver_all();
    assert_eq!(cluster.fetched, vec![(2, b"byte-range locks".to_vec())]);
    assert_eq!(cluster.header(1, &key).unwrap().dmaster, 1, "the record came to the reader");
}

#[test]
fn a_lost_read_is_asked_again_and_a_late_answer_is_dropped() {
    let mut cluster = Cluster::new(2);
    let key = key_on(0, 2);
    cluster.ask(0, 1, &key);
    cluster.input(1, Input::ClientCall(call(2, &key, false, CallKind::Read)));
    let lost = cluster.sim.take_next_packet().expect("the read's REQ_CALL");
    assert!(cluster.fetched.is_empty());
    let later = cluster.engine(1).config.tunables.migration_resend_ms;
    cluster.input_at(later, 1, Input::Tick);
    cluster.deliver_all();
    assert_eq!(cluster.fetched, vec![(2, vec![])], "the second request was answered");
    // The first request turns up after all: its answer finds nobody waiting.
    cluster.input(0, Input::Packet(lost));
    cluster.deliver_all();
    assert_eq!(cluster.fetched.len(), 1, "one answer per read");
}

#[test]
fn requests_for_a_key_in_flight_collapse_into_one_migration() {
    let mut cluster = Cluster::new(2);
    let key = key_on(0, 2);
    for client in 1..=3 {
        cluster.ask(1, client, &key);
    }
    assert_eq!(cluster.sim.packets_in_flight(), 1, "one REQ_CALL for three askers");
    cluster.deliver_all();
    let answered: Vec<ClientId> = cluster.replies.iter().map(|r| r.1).collect();
    assert_eq!(answered, vec![1, 2, 3]);
}

#[test]
fn a_remote_request_waits_until_the_local_askers_had_the_record() {
    let mut cluster = Cluster::new(2);
    let key = key_on(0, 2);
    cluster.ask(1, 1, &key);
    cluster.deliver_all();
    cluster.ask(0, 2, &key); // node 0 wants it back at once
    cluster.deliver_all();
    assert_eq!(cluster.header(1, &key).unwrap().dmaster, 1, "node 1's client has not used it yet");
    assert!(cluster.engine(1).key_busy(DB, &key));
    cluster.input(1, Input::ClientDone { client: 1, db_id: DB, key: key.clone() });
    cluster.deliver_all();
    assert_eq!(cluster.header(0, &key).unwrap().dmaster, 0, "then it moves");
    assert!(cluster.replies.contains(&(0, 2, 2, CALL_OK)));
}

#[test]
fn clients_that_do_not_promise_done_get_no_first_use() {
    let mut cluster = Cluster::new(2);
    let key = key_on(0, 2);
    cluster.input(
        1,
        Input::ClientCall(ClientCall {
            client: 1,
            reqid: 1,
            db_id: DB,
            key: key.clone(),
            first_use: false,
            kind: CallKind::Migrate,
        }),
    );
    cluster.deliver_all();
    cluster.ask(0, 2, &key);
    cluster.deliver_all();
    assert_eq!(cluster.header(0, &key).unwrap().dmaster, 0, "a raw REQ_CALL client does not pin the record");
}

#[test]
fn first_use_ends_at_its_deadline_if_the_client_never_says_done() {
    let mut cluster = Cluster::new(2);
    let key = key_on(0, 2);
    cluster.ask(1, 1, &key);
    cluster.deliver_all();
    cluster.ask(0, 2, &key);
    cluster.deliver_all();
    let later = cluster.engine(1).config.tunables.first_use_timeout_ms + 1;
    cluster.input_at(later, 1, Input::Tick);
    cluster.deliver_all();
    assert_eq!(cluster.header(0, &key).unwrap().dmaster, 0);
}

#[test]
fn packets_of_another_generation_are_dropped() {
    let mut cluster = Cluster::new(2);
    let key = key_on(0, 2);
    cluster.ask(1, 1, &key);
    let mut stale = cluster.sim.take_next_packet().unwrap();
    stale.generation = GENERATION + 1;
    cluster.input(0, Input::Packet(stale));
    assert!(cluster.sim.packets_in_flight() == 0);
    assert_eq!(cluster.engine(0).stats().stale_generation_dropped, 1);
}

#[test]
fn a_client_holding_the_chain_lock_defers_the_handover() {
    let mut cluster = Cluster::new(2);
    let key = key_on(0, 2);
    cluster.ask(0, 1, &key); // node 0 writes the record
    assert!(cluster.store(0).lock_as(DB, &key, store::LockOwner::Client(1)));
    cluster.ask(1, 2, &key);
    let call = cluster.sim.take_next_packet().expect("a REQ_CALL");
    assert_eq!(call.body.operation(), op::REQ_CALL);
    let heard = cluster.sim.deliver(call);
    assert!(heard.is_empty() && cluster.sim.packets_in_flight() == 0, "{heard:?}");
    assert_eq!(cluster.sim.nodes[0].lock_waits, vec![(DB, key.clone())], "node 0 only waits for the lock");
    assert_eq!(cluster.header(0, &key).unwrap().dmaster, 0, "nothing moves under a client's lock");
    cluster.store(0).unlock_any(DB, &key);
    cluster.input(0, Input::ChainLockAvailable { db_id: DB, key: key.clone() });
    cluster.deliver_all();
    assert_eq!(cluster.header(1, &key).unwrap().dmaster, 1);
}

/// A record the file refused for a while (a lock a stopped client holds) is not answered as
/// here, or clients would read an older copy from the file: they wait until it is written.
/// One a full disk refused is answered with that error at once.
#[test]
fn clients_wait_for_a_record_the_file_took_late_and_hear_of_a_full_disk() {
    let mut cluster = Cluster::new(2);
    let key = key_on(1, 2);
    cluster.ask(1, 1, &key);
    cluster.store(0).refusing = Some(libc::EAGAIN);
    cluster.ask(0, 2, &key);
    cluster.deliver_all();
    assert_eq!(cluster.header(0, &key).unwrap().dmaster, 0, "the record arrived, in memory");
    assert_eq!(cluster.write_waits(), vec![(0, key.clone())]);
    assert!(!cluster.replies.iter().any(|r| r.1 == 2), "answered before the file had it");
    cluster.store(0).write_refused();
    cluster.input(0, Input::ChainLockAvailable { db_id: DB, key: key.clone() });
    assert!(cluster.replies.contains(&(0, 2, 2, CALL_OK)), "{:?}", cluster.replies);

    // Its first use is kept: node 1's request waits until client 2 is done with it.
    cluster.store(1).refusing = Some(libc::ENOSPC);
    cluster.ask(1, 3, &key);
    cluster.deliver_all();
    assert!(!cluster.replies.iter().any(|r| r.1 == 3), "the record left before its first use");
    cluster.input(0, Input::ClientDone { client: 2, db_id: DB, key: key.clone() });
    cluster.deliver_all();
    assert!(cluster.replies.contains(&(1, 3, 3, -libc::ENOSPC)), "{:?}", cluster.replies);
    assert_eq!(cluster.header(1, &key).unwrap().dmaster, 1, "the record is here all the same");
}

#[test]
fn requests_for_unattached_databases_are_refused() {
    let mut cluster = Cluster::new(2);
    cluster.input(
        1,
        Input::ClientCall(ClientCall {
            client: 1,
            reqid: 3,
            db_id: DB + 1,
            key: b"k".to_vec(),
            first_use: true,
            kind: CallKind::Migrate,
        }),
    );
    assert_eq!(cluster.replies, vec![(1, 1, 3, CALL_UNKNOWN_DB)]);
}

#[test]
fn lmaster_is_the_jenkins_hash_over_the_vnn_map() {
    let map = [4, 7, 9];
    for key in [&b"a"[..], b"locking key", b""] {
        assert_eq!(lmaster_of(key, &map), map[crate::hash::jenkins_hash(key) as usize % 3]);
    }
}

#[test]
fn an_rsn_that_cannot_go_up_is_refused_not_wrapped() {
    let mut cluster = Cluster::new(2);
    let key = key_on(0, 2);
    let reply = crate::wire::ReplyDmaster {
        db_id: DB,
        rsn: u64::MAX,
        key: key.clone(),
        data: vec![],
        record_flags: 0,
    };
    let packet =
        Packet { generation: GENERATION, destnode: 1, srcnode: 0, reqid: 1, body: Body::ReplyDmaster(reply) };
    cluster.input(1, Input::Packet(packet));
    assert_eq!(cluster.header(1, &key), None, "nothing stored");
    assert_eq!(cluster.engine(1).stats().protocol_violations, 1);
}

#[test]
fn a_lost_request_is_sent_again_later_with_a_new_reqid() {
    let mut cluster = Cluster::new(2);
    let key = key_on(0, 2);
    cluster.ask(1, 1, &key);
    let lost = cluster.sim.take_next_packet().expect("a REQ_CALL");
    let resend_ms = cluster.engine(1).config.tunables.migration_resend_ms;
    // What a tick at `now` sends.
    let tick = |cluster: &mut Cluster, now: Millis| {
        cluster.input_at(now, 1, Input::Tick);
        std::iter::from_fn(|| cluster.sim.take_next_packet()).collect::<Vec<Packet>>()
    };
    assert!(tick(&mut cluster, resend_ms - 1).is_empty(), "not before its time");
    let again = tick(&mut cluster, resend_ms);
    let [resent] = again.as_slice() else { panic!("one REQ_CALL again, got {again:?}") };
    assert_eq!(resent.body.operation(), op::REQ_CALL);
    assert_ne!(resent.reqid, lost.reqid);
    assert!(tick(&mut cluster, 2 * resend_ms).is_empty(), "the next try waits twice as long");
    cluster.sim.send(1, resent.clone());
    cluster.deliver_all();
    assert_eq!(cluster.replies, vec![(1, 1, 1, CALL_OK)]);
    assert_eq!(cluster.engine(1).stats().calls_resent, 1);
}

#[test]
fn statistics_count_lock_waits_hops_and_hot_keys() {
    let mut cluster = Cluster::new(3);
    let key = key_on(0, 3);
    cluster.ask(1, 1, &key);
    cluster.deliver_all();
    cluster.input(1, Input::ClientDone { client: 1, db_id: DB, key: key.clone() });
    assert!(cluster.store(1).lock_as(DB, &key, store::LockOwner::Client(1)));
    cluster.ask(2, 2, &key);
    cluster.deliver_all();
    assert_eq!(cluster.engine(1).stats().lock_waits, 1, "the handover waits for the client's lock");
    cluster.store(1).unlock_any(DB, &key);
    cluster.input_at(40, 1, Input::ChainLockAvailable { db_id: DB, key: key.clone() });
    cluster.deliver_all();
    assert_eq!(cluster.header(2, &key).unwrap().dmaster, 2);

    let node1 = cluster.engine(1).statistics();
    assert_eq!((node1.counters.lock_wait_ms_total, node1.counters.lock_wait_ms_max), (40, 40));
    assert_eq!(node1.counters.hop_buckets.iter().sum::<u64>(), node1.counters.handovers);
    assert_eq!(node1.counters.hop_buckets[1], 1, "node 2's request went through the LMASTER");
    let db = node1.dbs.iter().find(|db| db.db_id == DB).unwrap();
    assert_eq!((db.migrations_in, db.migrations_out), (1, 1));
    assert_eq!(db.hot_keys[0].key, key.escape_ascii().to_string());
    assert_eq!(db.hot_keys[0].migrations, 2);
    assert_eq!(cluster.engine(2).statistics().counters.client_calls, 1);

    cluster.engine(1).reset_statistics();
    let node1 = cluster.engine(1).statistics();
    assert_eq!(node1.counters, EngineStats::default());
    assert!(node1.dbs.iter().all(|db| db.hot_keys.is_empty()));
}
