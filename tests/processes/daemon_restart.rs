//! A restarted rctdbd starts its volatile databases empty, as CTDB does, and a client of the
//! previous run that still has the old file open cannot keep using a record from it: there
//! is none left to find, and the daemon it would ask is gone.

use std::time::Duration;

use rctdb::client::ClusteredDb;
use rctdb::engine::lmaster_of;
use rctdb::local::StoreFlag;
use rctdb_cli::tool::cluster::{self, ClusterSpec, RunningCluster};

const DB: &str = "restart.tdb";
const TIMEOUT: Duration = Duration::from_secs(10);

#[test]
fn a_restarted_node_starts_empty_and_stale_clients_get_errors() {
    let dir = std::env::temp_dir().join(format!("rctdb-restart-{}", std::process::id()));
    let mut spec = ClusterSpec::new(2, &dir);
    spec.first_address = std::net::Ipv4Addr::new(127, 0, 10, 11);
    let cluster = RunningCluster::start(spec.clone()).unwrap_or_else(|e| panic!("cluster up: {e}"));
    // A key node 0 is LMASTER of: after node 0 restarts, it is its DMASTER again by default
    // (moving records off a dead node is recovery's job, a later issue).
    let key = (0..).map(|i| format!("key{i}").into_bytes()).find(|k| lmaster_of(k, &[0, 1]) == 0).unwrap();

    let mut stale = ClusteredDb::open(&cluster.socket(0), DB, TIMEOUT).expect("attach");
    stale.store(&key, &[b"from the first run"], StoreFlag::Replace).expect("store");
    assert_eq!(stale.fetch(&key).expect("fetch"), Some(b"from the first run".to_vec()), "a local hit");

    cluster::kill_node(cluster.dir(), 0).expect("kill node 0");
    cluster::start_node(&spec, 0).expect("restart node 0");
    cluster::wait_until_healthy(&spec).expect("serving again");

    let err =
        stale.fetch(&key).expect_err("the old file holds no record any more, and the old daemon is gone");
    assert!(err.detail.contains("rctdbd"), "{err}");
    drop(stale); // one open of a file per process, as tdb has it

    let mut fresh = ClusteredDb::open(&cluster.socket(0), DB, TIMEOUT).expect("attach");
    assert_eq!(fresh.fetch(&key).expect("fetch"), None, "volatile: the restarted node starts empty");
    fresh.store(&key, &[b"second run"], StoreFlag::Replace).expect("store");
    let mut other = ClusteredDb::open(&cluster.socket(1), DB, TIMEOUT).expect("attach");
    assert_eq!(other.fetch(&key).expect("fetch"), Some(b"second run".to_vec()));
}
