//! Vacuuming (DESIGN §8.5) step by step on three engines with in-memory stores and an
//! in-order network, as CTDB's vacuuming tests (ctdb/tests/INTEGRATION/database/
//! vacuum.001–034) exercise it: fast and full runs, a record recreated mid-vacuum, a record
//! locked by a client at each phase on each node, and a member whose link breaks.
//!
//! One difference from CTDB is deliberate: a record found locked is looked at again in the
//! next run (CTDB drops it from its delete queue and leaves it to a full run), so every
//! "locked" scenario here ends with the record vacuumed once the lock is released.

use rctdb::engine::sim;
use rctdb::engine::{CallKind, ClientCall, Engine, EngineConfig, Input, Output, Record};
use rctdb::record::RecordHeader;
use rctdb::wire::{DbId, Generation, Pnn};

const DB: DbId = 0x7ac;
const GENERATION: Generation = 5;
const INTERVAL_MS: u64 = 1000;
/// The client that holds chain locks in these scenarios.
const CLIENT: u64 = 99;

struct Cluster {
    sim: sim::Cluster,
    next_reqid: u32,
}

impl Cluster {
    fn new(nodes: u32) -> Cluster {
        let map: Vec<Pnn> = (0..nodes).collect();
        let engines = (0..nodes)
            .map(|pnn| {
                let mut config = EngineConfig::new(pnn, GENERATION, map.clone());
                config.tunables.vacuum_interval_ms = INTERVAL_MS;
                // Fast runs only, unless a scenario asks for a full one.
                config.tunables.vacuum_fast_path_count = 1000;
                let mut engine = Engine::new(config);
                engine.attach_db(DB, "vacuum.tdb");
                engine
            })
            .collect();
        Cluster { sim: sim::Cluster::fixed(engines), next_reqid: 1 }
    }

    fn engine(&mut self, pnn: Pnn) -> &mut Engine {
        &mut self.sim.nodes[pnn as usize].engine
    }

    fn store(&mut self, pnn: Pnn) -> &mut rctdb::engine::MemStore {
        &mut self.sim.nodes[pnn as usize].store
    }

    fn input(&mut self, pnn: Pnn, input: Input) {
        let outputs = self.sim.input(pnn, input);
        assert!(outputs.iter().all(|o| matches!(o, Output::ClientReply { .. })), "unexpected {outputs:?}");
    }

    fn deliver_all(&mut self) {
        self.sim.deliver_all();
    }

    /// A client on `pnn` migrates `key` there and stores `data` under the header it has.
    fn write(&mut self, pnn: Pnn, key: &[u8], data: &[u8]) {
        let reqid = self.next_reqid;
        self.next_reqid += 1;
        let call = ClientCall {
            client: 1,
            reqid,
            db_id: DB,
            key: key.to_vec(),
            first_use: false,
            kind: CallKind::Migrate,
        };
        self.input(pnn, Input::ClientCall(call));
        self.deliver_all();
        let store = self.store(pnn);
        let mut record = store.peek(DB, key).cloned().expect("migrated here");
        assert_eq!(record.header.dmaster, pnn, "node {pnn} holds the record");
        record.data = data.to_vec();
        store.put(DB, key, record);
    }

    /// A client on the record's holder `pnn` deletes it: an empty record under its header,
    /// and (as smbd does) SCHEDULE_FOR_DELETION unless `quietly`.
    fn delete(&mut self, pnn: Pnn, key: &[u8], quietly: bool) {
        let store = self.store(pnn);
        let mut record = store.peek(DB, key).cloned().expect("a record to delete");
        assert_eq!(record.header.dmaster, pnn);
        record.data.clear();
        store.put(DB, key, record);
        if !quietly {
            self.input(pnn, Input::Deleted { db_id: DB, key: key.to_vec() });
        }
    }

    /// One vacuuming run on `pnn`, and everything it sends delivered.
    fn vacuum(&mut self, pnn: Pnn) {
        self.sim.now += INTERVAL_MS;
        self.input(pnn, Input::Tick);
        self.deliver_all();
    }

    fn lock(&mut self, pnn: Pnn, key: &[u8]) {
        assert!(self.sim.client_lock(pnn, DB, key, CLIENT));
    }

    fn unlock(&mut self, pnn: Pnn, key: &[u8]) {
        self.sim.client_unlock(pnn, DB, key);
        while !self.sim.lock_available.is_empty() {
            self.sim.deliver_lock_available();
        }
        self.deliver_all();
    }

    fn record(&self, pnn: Pnn, key: &[u8]) -> Option<&Record> {
        self.sim.nodes[pnn as usize].store.peek(DB, key)
    }

    /// The nodes that have any copy of `key`.
    fn copies(&self, key: &[u8]) -> Vec<Pnn> {
        self.sim.pnns().filter(|&p| self.record(p, key).is_some()).collect()
    }

    fn header(&self, pnn: Pnn, key: &[u8]) -> RecordHeader {
        self.record(pnn, key).expect("a copy").header
    }
}

/// Keys whose LMASTER on three nodes is `lmaster`.
fn keys_on(lmaster: Pnn, count: usize) -> Vec<Vec<u8>> {
    let map: Vec<Pnn> = vec![0, 1, 2];
    (0..)
        .map(|i| format!("file-{i}").into_bytes())
        .filter(|k| rctdb::engine::lmaster_of(k, &map) == lmaster)
        .take(count)
        .collect()
}

/// Copies on every node: the record was held by 1, then by 2, with data each time.
fn spread(cluster: &mut Cluster, key: &[u8]) {
    cluster.write(1, key, b"open on 1");
    cluster.write(2, key, b"open on 2");
    assert_eq!(cluster.copies(key), vec![0, 1, 2]);
}

/// A record with copies on every node, deleted on node 2 and taken by its LMASTER, node 0,
/// in node 2's vacuuming run.
fn deleted_on_2_and_taken_by_the_lmaster() -> (Cluster, Vec<u8>) {
    let mut cluster = Cluster::new(3);
    let key = keys_on(0, 1).remove(0);
    spread(&mut cluster, &key);
    cluster.delete(2, &key, false);
    cluster.vacuum(2);
    (cluster, key)
}

#[test]
fn vacuum_001_fast_run_deletes_records_deleted_on_a_non_lmaster_from_every_node() {
    for count in [1, 10] {
        let mut cluster = Cluster::new(3);
        let keys = keys_on(0, count);
        for key in &keys {
            spread(&mut cluster, key);
            cluster.delete(2, key, false);
        }
        cluster.vacuum(2);
        for key in &keys {
            let header = cluster.header(0, key);
            assert_eq!(header.dmaster, 0, "the deleting node handed the empty record to its LMASTER");
            assert!(cluster.record(0, key).unwrap().data.is_empty());
        }
        cluster.vacuum(0);
        for key in &keys {
            assert_eq!(cluster.copies(key), Vec::<Pnn>::new(), "no copy is left on any node");
        }
        let stats = cluster.engine(0).stats();
        assert_eq!((stats.vacuum_deleted, cluster.engine(0).vacuum_backlog()), (count as u64, 0));
    }
}

#[test]
fn vacuum_001_fast_run_deletes_records_deleted_on_their_lmaster_from_every_node() {
    for count in [1, 10] {
        let mut cluster = Cluster::new(3);
        let keys = keys_on(0, count);
        for key in &keys {
            spread(&mut cluster, key);
            cluster.write(0, key, b"open on 0");
            cluster.delete(0, key, false);
        }
        cluster.vacuum(0);
        for key in &keys {
            assert_eq!(cluster.copies(key), Vec::<Pnn>::new());
        }
    }
}

#[test]
fn vacuum_001_a_key_vacuumed_everywhere_starts_again_and_migrates() {
    let (mut cluster, key) = deleted_on_2_and_taken_by_the_lmaster();
    let key = &key;
    cluster.vacuum(0);
    assert!(cluster.copies(key).is_empty());
    // Nothing contradicts a new history: it starts at the LMASTER and moves as any record.
    cluster.write(1, key, b"new");
    cluster.write(2, key, b"newer");
    assert_eq!(cluster.record(2, key).unwrap().data, b"newer");
    assert_eq!(cluster.header(0, key).dmaster, 2);
}

#[test]
fn vacuum_002_only_a_full_run_finds_records_deleted_without_scheduling() {
    let mut cluster = Cluster::new(3);
    let keys = keys_on(0, 6);
    for key in &keys {
        spread(&mut cluster, key);
        cluster.write(0, key, b"kept");
    }
    for key in &keys[..3] {
        cluster.delete(0, key, true);
    }
    cluster.vacuum(0);
    cluster.vacuum(0);
    for key in &keys[..3] {
        assert_eq!(cluster.copies(key), vec![0, 1, 2], "a fast run only looks at scheduled deletes");
    }
    cluster.engine(0).tunables_mut().vacuum_fast_path_count = 1;
    cluster.vacuum(0);
    for key in &keys[..3] {
        assert_eq!(cluster.copies(key), Vec::<Pnn>::new(), "the full run found it");
    }
    for key in &keys[3..] {
        assert_eq!(cluster.record(0, key).unwrap().data, b"kept", "records with data stay");
    }
    assert!(cluster.engine(0).stats().vacuum_full_runs > 0);
}

#[test]
fn vacuum_003_a_record_recreated_before_the_lmaster_runs_is_not_deleted() {
    let (mut cluster, key) = deleted_on_2_and_taken_by_the_lmaster();
    let key = &key;
    // Node 1 creates it again: the record moves from the LMASTER to node 1.
    cluster.write(1, key, b"recreated");
    cluster.vacuum(0);
    cluster.vacuum(0);
    assert_eq!(cluster.record(1, key).unwrap().data, b"recreated");
    assert_eq!(cluster.header(0, key).dmaster, 1, "the LMASTER still knows where it is");
}

#[test]
fn vacuum_003_a_record_recreated_while_the_lmaster_asks_for_copies_is_not_deleted() {
    let (mut cluster, key) = deleted_on_2_and_taken_by_the_lmaster();
    let key = &key;
    // The LMASTER's run sends its drop requests; before they arrive, node 1 asks for the
    // record to create it again.
    cluster.sim.now += INTERVAL_MS;
    cluster.input(0, Input::Tick);
    let call = ClientCall {
        client: 1,
        reqid: 77,
        db_id: DB,
        key: key.clone(),
        first_use: false,
        kind: CallKind::Migrate,
    };
    cluster.input(1, Input::ClientCall(call));
    cluster.deliver_all();
    let mut record = cluster.record(1, key).cloned().expect("migrated to node 1");
    assert_eq!(record.header.dmaster, 1);
    record.data = b"recreated".to_vec();
    cluster.store(1).put(DB, key, record);
    cluster.vacuum(0);
    cluster.vacuum(1);
    assert_eq!(cluster.record(1, key).unwrap().data, b"recreated");
    assert_eq!(cluster.header(0, key).dmaster, 1);
}

#[test]
fn vacuum_030_031_locked_on_the_deleting_node_it_waits_for_a_later_run() {
    let mut cluster = Cluster::new(3);
    let key = &keys_on(0, 1)[0];
    spread(&mut cluster, key);
    cluster.delete(2, key, false);
    cluster.lock(2, key);
    cluster.vacuum(2);
    assert_eq!(cluster.header(2, key).dmaster, 2, "a locked record is not handed over");
    assert_eq!(cluster.engine(2).vacuum_backlog(), 1, "it stays queued");
    cluster.vacuum(2);
    assert_eq!(cluster.header(2, key).dmaster, 2);
    cluster.unlock(2, key);
    cluster.vacuum(2);
    cluster.vacuum(0);
    assert!(cluster.copies(key).is_empty());
}

#[test]
fn vacuum_032_locked_on_the_lmaster_it_is_deleted_once_unlocked() {
    let (mut cluster, key) = deleted_on_2_and_taken_by_the_lmaster();
    let key = &key;
    cluster.lock(0, key);
    cluster.vacuum(0);
    assert_eq!(cluster.copies(key), vec![0, 1, 2], "no drop requests for a record locked on the LMASTER");
    // Locked between the drop requests and the answers: the others drop theirs, the LMASTER
    // keeps its own for the next run.
    cluster.unlock(0, key);
    cluster.sim.now += INTERVAL_MS;
    cluster.input(0, Input::Tick);
    cluster.lock(0, key);
    cluster.deliver_all();
    assert_eq!(cluster.copies(key), vec![0]);
    cluster.unlock(0, key);
    cluster.vacuum(0);
    assert!(cluster.copies(key).is_empty());
}

#[test]
fn vacuum_033_locked_on_the_deleting_node_during_the_lmasters_round_it_is_kept_then_deleted() {
    let (mut cluster, key) = deleted_on_2_and_taken_by_the_lmaster();
    let key = &key;
    let rsn = cluster.header(0, key).rsn;
    cluster.lock(2, key);
    cluster.vacuum(0);
    assert_eq!(cluster.copies(key), vec![0, 2], "node 2 kept its copy, so the LMASTER keeps its own");
    assert_eq!(cluster.engine(2).stats().vacuum_copies_kept, 1);
    // The LMASTER's record goes on at its RSN: no history restarts while a copy remains.
    cluster.write(1, key, b"back");
    assert!(cluster.header(1, key).rsn > rsn);
    cluster.delete(1, key, false);
    cluster.unlock(2, key);
    cluster.vacuum(1);
    cluster.vacuum(0);
    assert!(cluster.copies(key).is_empty());
}

#[test]
fn vacuum_034_locked_on_another_node_during_the_round_it_is_kept_then_deleted() {
    let (mut cluster, key) = deleted_on_2_and_taken_by_the_lmaster();
    let key = &key;
    cluster.lock(1, key);
    cluster.vacuum(0);
    assert_eq!(cluster.copies(key), vec![0, 1]);
    cluster.unlock(1, key);
    cluster.vacuum(0);
    assert!(cluster.copies(key).is_empty());
}

#[test]
fn a_member_whose_link_breaks_mid_round_delays_the_delete_until_it_is_back() {
    let (mut cluster, key) = deleted_on_2_and_taken_by_the_lmaster();
    let key = &key;
    cluster.sim.now += INTERVAL_MS;
    cluster.input(0, Input::Tick);
    // The drop request to node 1 is lost with its connection.
    cluster.sim.lose_packets(|p| p.destnode == 1);
    cluster.input(0, Input::LinkDown(1));
    cluster.deliver_all();
    assert!(cluster.record(0, key).is_some(), "without node 1's answer the LMASTER keeps its copy");
    assert!(cluster.record(1, key).is_some());
    assert_eq!(cluster.engine(0).vacuum_backlog(), 1, "the key waits for the next run");
    cluster.input(0, Input::LinkUp(1));
    cluster.vacuum(0);
    assert!(cluster.copies(key).is_empty());
}

#[test]
fn a_copy_newer_than_the_lmasters_or_held_by_its_node_is_never_dropped() {
    let mut cluster = Cluster::new(3);
    let key = &keys_on(0, 1)[0];
    cluster.write(0, key, b"x");
    cluster.delete(0, key, false);
    // Node 1 has a newer copy (the history went on somewhere the LMASTER does not know);
    // node 2 claims the record. Neither is dropped, and the LMASTER keeps its own.
    let header = cluster.header(0, key);
    let newer = RecordHeader { rsn: header.rsn + 5, dmaster: 0, flags: 0 };
    cluster.store(1).put(DB, key, Record { header: newer, data: b"newer".to_vec() });
    let claim = RecordHeader { rsn: header.rsn, dmaster: 2, flags: 0 };
    cluster.store(2).put(DB, key, Record { header: claim, data: vec![] });
    cluster.vacuum(0);
    assert_eq!(cluster.copies(key), vec![0, 1, 2]);
    assert_eq!(
        cluster.engine(1).stats().vacuum_copies_kept + cluster.engine(2).stats().vacuum_copies_kept,
        2
    );
}

#[test]
fn vacuuming_off_keeps_every_record() {
    let mut cluster = Cluster::new(3);
    let key = &keys_on(0, 1)[0];
    spread(&mut cluster, key);
    cluster.delete(2, key, false);
    for node in &mut cluster.sim.nodes {
        node.engine.tunables_mut().vacuum_interval_ms = 0;
    }
    cluster.vacuum(2);
    cluster.vacuum(0);
    assert_eq!(cluster.copies(key), vec![0, 1, 2]);
}

#[test]
fn the_delete_queue_is_bounded_and_an_overflow_makes_the_next_run_a_full_one() {
    let mut cluster = Cluster::new(3);
    let keys = keys_on(0, 3);
    for key in &keys {
        cluster.write(0, key, b"x");
        cluster.delete(0, key, true);
    }
    // A flood of deletes, more than the queue remembers (a node whose LMASTER peers are
    // unreachable for long could build such a backlog).
    for i in 0..100_100u32 {
        cluster.input(0, Input::Deleted { db_id: DB, key: format!("gone-{i}").into_bytes() });
    }
    assert!(cluster.engine(0).vacuum_backlog() <= 100_000, "the queue stays bounded");
    let full_runs = cluster.engine(0).stats().vacuum_full_runs;
    cluster.vacuum(0);
    assert_eq!(cluster.engine(0).stats().vacuum_full_runs, full_runs + 1, "the overflow made it a full run");
    for key in &keys {
        assert!(cluster.copies(key).is_empty(), "the full run found the deletes the queue forgot");
    }
}
