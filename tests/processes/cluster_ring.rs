//! The ring with real processes (DESIGN §7.3): a 3-node cluster of rctdbd on loopback,
//! 2 client processes per node, each doing 1000 increments of one counter under the chain
//! lock. Not one increment may be lost: the final value is exactly 6000.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rctdb::client::{ClusteredDb, DaemonConnection};
use rctdb::local::StoreFlag;
use rctdb_cli::tool::cluster::{socket_path, ClusterSpec, RunningCluster};
use rctdbd::status::StatusControls;

const NODES: usize = 3;
const PROCS_PER_NODE: usize = 2;
const INCREMENTS: u64 = 1000;
const DB: &str = "ring.tdb";
const KEY: &[u8] = b"counter";

fn start(name: &str, third_octet: u8) -> RunningCluster {
    let dir = std::env::temp_dir().join(format!("rctdb-{name}-{}", std::process::id()));
    let mut spec = ClusterSpec::new(NODES, &dir);
    spec.first_address = std::net::Ipv4Addr::new(127, 0, third_octet, 11);
    RunningCluster::start(spec).unwrap_or_else(|e| panic!("cluster up: {e}"))
}

fn increment(db: &mut ClusteredDb) {
    db.chainlock(KEY).expect("chainlock");
    let value =
        db.fetch(KEY).expect("fetch").map_or(0, |v| u64::from_le_bytes(v.try_into().expect("8 bytes")));
    db.store(KEY, &[&(value + 1).to_le_bytes()], StoreFlag::Replace).expect("store");
    db.chainunlock(KEY).expect("chainunlock");
}

/// The body of a worker process: `RCTDB_RING_SOCKET` names its node.
#[test]
fn ring_worker() {
    let Ok(socket) = std::env::var("RCTDB_RING_SOCKET") else { return };
    let mut db = ClusteredDb::open(Path::new(&socket), DB, Duration::from_secs(30)).expect("attach");
    for _ in 0..INCREMENTS {
        increment(&mut db);
    }
}

#[test]
fn ring_of_processes_loses_no_increment() {
    let cluster = start("ring", 1);
    let dir = cluster.dir();
    let mut workers = vec![];
    for node in 0..NODES {
        for _ in 0..PROCS_PER_NODE {
            let child = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "cluster_ring::ring_worker", "--nocapture", "--test-threads=1"])
                .env("RCTDB_RING_SOCKET", socket_path(dir, node))
                .spawn()
                .expect("spawn worker");
            workers.push(child);
        }
    }
    for mut worker in workers {
        let status = worker.wait().expect("wait worker");
        assert!(status.success(), "a worker failed: {status}");
    }
    let mut db = ClusteredDb::open(&socket_path(dir, 0), DB, Duration::from_secs(10)).expect("attach");
    let value = db.fetch(KEY).expect("fetch").expect("counter exists");
    let expected = NODES as u64 * PROCS_PER_NODE as u64 * INCREMENTS;
    assert_eq!(u64::from_le_bytes(value.try_into().unwrap()), expected);
    let mut seen = vec![];
    db.traverse(|key, data| {
        seen.push((key.to_vec(), data.to_vec()));
        true
    })
    .expect("traverse");
    assert_eq!(
        seen,
        vec![(KEY.to_vec(), expected.to_le_bytes().to_vec())],
        "traverse sees the newest copy once"
    );
}

/// The lock rule (DESIGN §2): while a client holds a record's chain lock, the daemon must not
/// hand the record over; once the client stores and unlocks, the handover carries what it
/// stored, never an older copy.
#[test]
fn handover_waits_for_the_client_holding_the_chain_lock() {
    let cluster = start("lockrule", 2);
    let dir = cluster.dir().to_path_buf();
    let mut holder = ClusteredDb::open(&socket_path(&dir, 0), DB, Duration::from_secs(10)).expect("attach");
    holder.store(b"k", &[b"before"], StoreFlag::Replace).expect("store");
    holder.chainlock(b"k").expect("chainlock");

    let requester_dir = dir.clone();
    let requester = std::thread::spawn(move || {
        let mut db =
            ClusteredDb::open(&socket_path(&requester_dir, 1), DB, Duration::from_secs(20)).expect("attach");
        db.fetch(b"k").expect("fetch").expect("record")
    });
    // Wait until node 0's engine has found the chain locked and a waiter is on it.
    let mut status = DaemonConnection::connect(&socket_path(&dir, 0)).expect("connect");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while status.status(Duration::from_secs(5)).expect("status").stats.lock_waits == 0 {
        assert!(std::time::Instant::now() < deadline, "node 0 never waited for the chain lock");
        std::thread::sleep(Duration::from_millis(5)); // polling the daemon's counters
    }
    holder.store(b"k", &[b"after"], StoreFlag::Replace).expect("store under the lock");
    holder.chainunlock(b"k").expect("chainunlock");
    assert_eq!(requester.join().expect("requester"), b"after");
}

/// A traverse needs every chain of every node unlocked for a moment. While a client holds a
/// chain lock, the node's part of the traverse waits, and the node keeps migrating records.
#[test]
fn a_traverse_waits_for_chain_locks_without_stalling_the_node() {
    let cluster = start("traverse", 3);
    let dir = cluster.dir().to_path_buf();
    let mut holder = ClusteredDb::open(&socket_path(&dir, 0), DB, Duration::from_secs(10)).expect("attach");
    holder.store(b"locked", &[b"v1"], StoreFlag::Replace).expect("store");
    holder.chainlock(b"locked").expect("chainlock");

    let traverse_dir = dir.clone();
    let traverser = std::thread::spawn(move || {
        let mut db =
            ClusteredDb::open(&socket_path(&traverse_dir, 1), DB, Duration::from_secs(20)).expect("attach");
        let mut seen = vec![];
        db.traverse(|key, data| {
            seen.push((key.to_vec(), data.to_vec()));
            true
        })
        .expect("traverse");
        seen.sort();
        seen
    });
    // Node 0 still migrates other records to itself and away while the traverse waits.
    let mut other = ClusteredDb::open(&socket_path(&dir, 2), DB, Duration::from_secs(10)).expect("attach");
    for round in 0..20u8 {
        let node = if round % 2 == 0 { &mut holder } else { &mut other };
        node.store(b"moving", &[&[round]], StoreFlag::Replace).expect("store while a traverse waits");
    }
    holder.store(b"locked", &[b"v2"], StoreFlag::Replace).expect("store under the lock");
    holder.chainunlock(b"locked").expect("chainunlock");
    let seen = traverser.join().expect("traverser");
    // Node 0's part waited for the lock, so it has the value stored under it. The nodes'
    // parts are read at different moments (no cluster-wide snapshot, as in CTDB), so
    // "moving" is one of the values it had while the traverse ran.
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0], (b"locked".to_vec(), b"v2".to_vec()));
    assert_eq!(seen[1].0, b"moving");
    assert!(seen[1].1.len() == 1 && seen[1].1[0] < 20, "{seen:?}");
}

/// Holding one key's chain lock while asking for a remote key of the same hash chain would
/// deadlock against the daemon; the client says so at once instead of at its timeout.
#[test]
fn a_remote_key_in_a_chain_this_process_holds_is_refused_at_once() {
    let cluster = start("samechain", 12);
    let dir = cluster.dir().to_path_buf();
    // Clustered files have 100001 chains, picked by tdb's Jenkins hash.
    let bucket = |key: &[u8]| rctdb::hash::jenkins_hash(key) % 100_001;
    let first = b"held".to_vec();
    let second =
        (0u64..).map(|i| format!("other{i}").into_bytes()).find(|k| bucket(k) == bucket(&first)).unwrap();

    let mut remote = ClusteredDb::open(&socket_path(&dir, 1), DB, Duration::from_secs(10)).expect("attach");
    remote.store(&second, &[b"on node 1"], StoreFlag::Replace).expect("store");
    let mut local = ClusteredDb::open(&socket_path(&dir, 0), DB, Duration::from_secs(20)).expect("attach");
    local.chainlock(&first).expect("chainlock");
    let started = std::time::Instant::now();
    let err = local.fetch(&second).expect_err("cannot migrate into a chain we hold");
    assert_eq!(err.code, rctdb::error::ErrorCode::Lock, "{err}");
    assert!(started.elapsed() < Duration::from_secs(10), "refused at once, not at the timeout");
    local.chainunlock(&first).expect("chainunlock");
    assert_eq!(local.fetch(&second).expect("fetch"), Some(b"on node 1".to_vec()), "fine once unlocked");
}
