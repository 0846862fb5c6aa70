//! Vacuuming keeps databases bounded under smbd's open/close churn (DESIGN §8.5):
//! a 3-node cluster of real rctdbd, two worker processes per node (`rctdb bench
//! churn-worker`, the bench's own workers), each opening (chainlock + store of a
//! share-mode-sized value + chainunlock) and closing (delete) keys no one used before.
//!
//! 100,008 keys in all, across the cluster, in two equal phases. After each phase drained,
//! every node's file must hold fewer than 1% of the phase's keys, and the file must not
//! have grown in phase 2: phase 2 reuses the space phase 1 freed. Then vacuuming is turned
//! off for a short phase, whose keys must stay behind as empty records (so it was vacuuming
//! that removed the others), and turned on again, which must remove them too.
//!
//! Address: 127.0.50.11-13.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rctdb_cli::tool::churn::{ChurnCluster, KeysInFile, Workload, KEY_PREFIX};

const NODES: usize = 3;
const WORKERS_PER_NODE: usize = 2;
/// Keys per phase, a whole number per worker: two phases make the 100,000 (100,008).
const PHASE_KEYS: usize = 8_334 * NODES * WORKERS_PER_NODE;
/// Keys of the phase without vacuuming.
const OFF_KEYS: usize = 500 * NODES * WORKERS_PER_NODE;
const VACUUM_INTERVAL_MS: u64 = 500;
/// How long a backlog may take to drain: two runs (the holder's, which hands a record to
/// its LMASTER, then the LMASTER's) plus the quiet time that says it is over, with room for
/// a loaded machine.
const DRAIN_BOUND: Duration = Duration::from_secs(30);
/// A file may grow by this much in phase 2 over its size after phase 1. Phase 2 should fit
/// in what phase 1 freed; tdb grows a file in steps of at least 10% of its size, so this
/// allows no growth step at all beyond one small one.
const GROWTH_LIMIT: f64 = 1.10;

fn workload(tag: &str, keys: usize) -> Workload {
    Workload {
        tag: tag.into(),
        workers: WORKERS_PER_NODE,
        keys,
        window: 4,
        value_size: 100,
        worker_exe: PathBuf::from(env!("CARGO_BIN_EXE_rctdb")),
    }
}

fn prefix(tag: &str) -> String {
    format!("{KEY_PREFIX}{tag}-")
}

/// Runs a phase, waits for its backlog, and returns what every node's file holds of its keys.
fn phase(cluster: &mut ChurnCluster, tag: &str, keys: usize) -> Vec<KeysInFile> {
    let t = Instant::now();
    let report = cluster.run(&workload(tag, keys)).unwrap_or_else(|e| panic!("phase {tag}: {e}"));
    let ran = t.elapsed();
    let (drain, left) =
        cluster.settle(&prefix(tag), DRAIN_BOUND).unwrap_or_else(|e| panic!("phase {tag}: drain: {e}"));
    println!(
        "phase {tag}: {} keys, {:.0} ops/s, p50 {:.0} us, p99 {:.0} us, ran {:.1} s; drained: {} after {:.1} s; \
         sizes {:?}; keys left per node {:?}",
        report.keys,
        report.ops_per_second(),
        report.all.p50_us,
        report.all.p99_us,
        ran.as_secs_f64(),
        drain.drained,
        drain.seconds,
        cluster.file_sizes(),
        left.iter().map(|k| k.records).collect::<Vec<_>>()
    );
    assert_eq!(report.keys, keys, "phase {tag}: every key opened and closed once");
    assert!(left.iter().all(|k| k.with_data == 0), "phase {tag}: a closed file still has data: {left:?}");
    left
}

fn assert_under_one_percent(tag: &str, keys: usize, left: &[KeysInFile]) {
    for (node, k) in left.iter().enumerate() {
        assert!(
            k.records * 100 < keys,
            "phase {tag}: node {node} still holds {} of {keys} deleted keys (1% allowed)",
            k.records
        );
    }
}

#[test]
fn vacuuming_keeps_files_bounded_under_churn() {
    let start = Instant::now();
    let dir = std::env::temp_dir().join(format!("rctdb-vacuum-churn-{}", std::process::id()));
    let mut cluster = ChurnCluster::start(NODES, &dir, Ipv4Addr::new(127, 0, 50, 11), VACUUM_INTERVAL_MS)
        .unwrap_or_else(|e| panic!("cluster up: {e}"));
    let marks = cluster.log_marks();

    let left = phase(&mut cluster, "p1", PHASE_KEYS);
    assert_under_one_percent("p1", PHASE_KEYS, &left);
    let after_phase1 = cluster.file_sizes();

    let left = phase(&mut cluster, "p2", PHASE_KEYS);
    assert_under_one_percent("p2", PHASE_KEYS, &left);
    let after_phase2 = cluster.file_sizes();
    for node in 0..NODES {
        assert!(
            after_phase2[node] as f64 <= after_phase1[node] as f64 * GROWTH_LIMIT,
            "node {node}: the file grew from {} to {} bytes in phase 2, though phase 1's space was freed",
            after_phase1[node],
            after_phase2[node]
        );
    }
    let all = cluster.keys_in_files(KEY_PREFIX).expect("reading the files");
    assert_under_one_percent("p1+p2", 2 * PHASE_KEYS, &all);
    let statuses = cluster.statuses().expect("status");
    for (node, status) in statuses.iter().enumerate() {
        assert!(status.stats.vacuum_deleted > 0, "node {node} deleted nothing as LMASTER: {status:?}");
        assert!(status.stats.vacuum_copies_dropped > 0, "node {node} dropped no copy: {status:?}");
    }

    // Without vacuuming, every closed file stays behind: at least one empty record per key
    // (on the node that deleted it).
    cluster.set_tunable("VacuumIntervalMs", 0).expect("vacuuming off");
    let left = phase(&mut cluster, "off", OFF_KEYS);
    let records: usize = left.iter().map(|k| k.records).sum();
    assert!(records >= OFF_KEYS, "vacuuming off, yet only {records} records left of {OFF_KEYS} deleted keys");
    // Turned on again, vacuuming removes them: the deletes were remembered meanwhile.
    cluster.set_tunable("VacuumIntervalMs", VACUUM_INTERVAL_MS).expect("vacuuming on");
    let (_, left) = cluster.settle(&prefix("off"), DRAIN_BOUND).expect("drain");
    assert_under_one_percent("off, then on", OFF_KEYS, &left);

    let problems = cluster.log_problems_since(&marks);
    assert!(problems.is_empty(), "the nodes logged warnings or errors: {problems:#?}");
    println!(
        "sizes after phase 1 {after_phase1:?}, after phase 2 {after_phase2:?}; {:.1} s in all",
        start.elapsed().as_secs_f64()
    );
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
