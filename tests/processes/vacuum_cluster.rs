//! Vacuuming on real processes while a node is away (DESIGN §8.5). CTDB's users see
//! deleted records pile up while a node is disconnected; here a node the cluster left out
//! holds back nothing: the others vacuum without it, and the recovery that admits it again
//! empties its databases, so its stale copies never come back and leave no garbage.
//!
//! Address: 127.0.52.11-13.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use rctdb::client::{ClusteredDb, DaemonConnection};
use rctdb::local::flags::{TDB_INCOMPATIBLE_HASH, TDB_NOLOCK};
use rctdb::local::{StoreFlag, Tdb};
use rctdb::tunables::opcode;
use rctdb_cli::tool::cluster::{self, ClusterSpec, RunningCluster};
use rctdbd::status::StatusControls;

const DB: &str = "away.tdb";
const KEYS: usize = 200;
const TIMEOUT: Duration = Duration::from_secs(10);
/// Detection, recovery and a few vacuuming runs, with room for a loaded machine.
const LIMIT: Duration = Duration::from_secs(30);

fn key(i: usize) -> Vec<u8> {
    format!("away-{i}").into_bytes()
}

/// How many of the test's keys a node's file has a copy of. Read without locks: a node
/// that does not serve keeps its databases frozen, and the count is only compared once it
/// stops changing.
fn copies(dir: &Path, node: usize) -> usize {
    let path = dir.join(format!("node{node}")).join(DB);
    let tdb = Tdb::open(&path, 0, TDB_INCOMPATIBLE_HASH | TDB_NOLOCK, libc::O_RDONLY, 0)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut count = 0;
    tdb.traverse_read(|k, _| {
        count += usize::from(k.starts_with(b"away-"));
        true
    })
    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    tdb.close().expect("closing a node's file");
    count
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < LIMIT, "waited {LIMIT:?} for {what}");
        std::thread::sleep(Duration::from_millis(50)); // polling the daemons and their files
    }
    started.elapsed()
}

fn serving(cluster: &RunningCluster, node: usize) -> bool {
    DaemonConnection::connect(&cluster.socket(node))
        .and_then(|mut d| d.status(Duration::from_secs(1)))
        .is_ok_and(|status| status.serves())
}

#[test]
fn deletes_while_a_node_is_away_leave_nothing_behind_when_it_returns() {
    let dir = std::env::temp_dir().join(format!("rctdb-vacuum-away-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut spec = ClusterSpec::new(3, &dir);
    spec.first_address = Ipv4Addr::new(127, 0, 52, 11);
    let cluster = RunningCluster::start(spec.clone()).expect("cluster up");
    for node in 0..3 {
        let mut daemon = DaemonConnection::connect(&cluster.socket(node)).expect("connect");
        daemon.set_tunable("VacuumIntervalMs", 300, TIMEOUT).expect("setvar");
    }
    // The records pass through node 2 and end on node 0: node 2 keeps older copies with data.
    for node in [2, 0] {
        let mut db = ClusteredDb::open(&cluster.socket(node), DB, TIMEOUT).expect("attach");
        for i in 0..KEYS {
            db.store(&key(i), &[format!("open on {node}").as_bytes()], StoreFlag::Replace).expect("store");
        }
    }
    assert_eq!(copies(&dir, 2), KEYS, "node 2 keeps a copy of every record");

    DaemonConnection::connect(&cluster.socket(2))
        .and_then(|mut d| d.node_control(opcode::QUIET, TIMEOUT))
        .expect("node 2 goes quiet");
    wait_for("nodes 0 and 1 to serve without node 2", || {
        serving(&cluster, 0) && serving(&cluster, 1) && !serving(&cluster, 2)
    });
    let mut db = ClusteredDb::open(&cluster.socket(0), DB, TIMEOUT).expect("attach");
    for i in 0..KEYS {
        db.delete(&key(i)).expect("delete");
    }
    drop(db);
    let vacuumed = wait_for("nodes 0 and 1 to vacuum every deleted record without node 2", || {
        copies(&dir, 0) == 0 && copies(&dir, 1) == 0
    });
    assert_eq!(copies(&dir, 2), KEYS, "the node that was away still has its old copies");

    DaemonConnection::connect(&cluster.socket(2))
        .and_then(|mut d| d.node_control(opcode::UNQUIET, TIMEOUT))
        .expect("node 2 talks again");
    cluster::wait_until_healthy(&spec).expect("node 2 admitted again");
    let emptied = wait_for("node 2's old copies to be gone", || copies(&dir, 2) == 0);
    println!("vacuumed without node 2 in {vacuumed:?}; node 2 empty {emptied:?} after it was admitted");

    // Nothing stale stands in the way of the keys' new history.
    let mut db2 = ClusteredDb::open(&cluster.socket(2), DB, TIMEOUT).expect("attach");
    db2.store(&key(0), &[b"again"], StoreFlag::Replace).expect("store");
    drop(db2);
    let mut db1 = ClusteredDb::open(&cluster.socket(1), DB, TIMEOUT).expect("attach");
    assert_eq!(db1.fetch(&key(0)).expect("fetch").as_deref(), Some(&b"again"[..]));
    assert_eq!(db1.fetch(&key(1)).expect("fetch"), None, "a deleted record stays deleted");
    drop(db1);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
