//! `rctdb bench traverse`: what a cluster-wide traverse costs the migrations that run
//! meanwhile. A fresh 3-node cluster is loaded with N records (each created on its
//! LMASTER, so spread over the nodes); one record then bounces between nodes 0 and 1,
//! every store a migration, in rounds that alternate between no traverse and whole-database
//! traverses through node 0 (`rctdb dump`'s), back to back, for the same time, so that
//! both see the same machine. It prints the migrations' p50/p99/max both ways, the
//! traverses' time, and node 0's resident memory during them.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::client::{ClusteredDb, DaemonConnection};
use crate::engine::lmaster_of;
use crate::hash::jenkins_hash;
use crate::local::StoreFlag;
use crate::tool::cluster::{socket_path, ClusterSpec, RunningCluster};
use crate::wire::control::db_id_of;
use crate::wire::Pnn;

pub struct TraverseBench {
    pub records: usize,
    pub value_size: usize,
    /// Seconds of each phase of a round: without a traverse, then during traverses.
    pub seconds: f64,
    pub rounds: usize,
    pub dir: PathBuf,
    pub first_address: Ipv4Addr,
}

const NODES: usize = 3;
pub const DB: &str = "traverse_bench.tdb";
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// The probe's record lives in a database of its own, which the traverse does not read.
const PROBE_DB: &str = "traverse_bench_probe.tdb";
const PROBE_KEY: &[u8] = b"probe";

pub fn record_key(i: usize) -> Vec<u8> {
    format!("rec-{i:08}").into_bytes()
}

pub fn record_value(i: usize, value_size: usize) -> Vec<u8> {
    format!("value-{i:08}-").bytes().cycle().take(value_size).collect()
}

/// A count and an order-free checksum of records: what a traverse must find.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Contents {
    pub count: usize,
    pub checksum: u64,
}

impl Contents {
    pub fn add(&mut self, key: &[u8], value: &[u8]) {
        let mixed = (u64::from(jenkins_hash(key)) << 32 | u64::from(jenkins_hash(value)))
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ value.len() as u64;
        self.count += 1;
        self.checksum = self.checksum.wrapping_add(mixed);
    }

    /// What `load(count, value_size)` stores.
    pub fn expected(count: usize, value_size: usize) -> Contents {
        let mut contents = Contents::default();
        for i in 0..count {
            contents.add(&record_key(i), &record_value(i, value_size));
        }
        contents
    }
}

/// Stores records `0..count` of database `db` of the 3-node cluster in `dir`, each through
/// its LMASTER's node (no network hop: an LMASTER mints new records itself), a client
/// thread per node. Returns the seconds it took.
pub fn load(dir: &Path, db: &str, count: usize, value_size: usize) -> Result<f64, String> {
    let start = Instant::now();
    let map: Vec<Pnn> = (0..NODES as Pnn).collect();
    let mut by_lmaster: [Vec<usize>; NODES] = Default::default();
    for i in 0..count {
        by_lmaster[lmaster_of(&record_key(i), &map) as usize].push(i);
    }
    std::thread::scope(|scope| {
        let loaders: Vec<_> = by_lmaster
            .iter()
            .enumerate()
            .map(|(node, records)| {
                scope.spawn(move || -> Result<(), String> {
                    let mut db = ClusteredDb::open(&socket_path(dir, node), db, CLIENT_TIMEOUT)
                        .map_err(|e| format!("node {node}: {e}"))?;
                    for &i in records {
                        db.store(&record_key(i), &[&record_value(i, value_size)], StoreFlag::Replace)
                            .map_err(|e| format!("node {node}: store: {e}"))?;
                    }
                    Ok(())
                })
            })
            .collect();
        loaders.into_iter().try_for_each(|t| t.join().unwrap_or_else(|_| Err("a loader panicked".into())))
    })?;
    Ok(start.elapsed().as_secs_f64())
}

/// Traverses `db` (attached already) through the node whose socket is `socket`, on a
/// connection of its own (this process may have the database open already); what it found.
pub fn traverse_contents(socket: &Path, db: &str) -> Result<Contents, String> {
    let mut daemon = DaemonConnection::connect(socket).map_err(|e| e.to_string())?;
    let mut contents = Contents::default();
    daemon
        .traverse_all(db_id_of(db), CLIENT_TIMEOUT, |record| {
            contents.add(&record.key, &record.data);
            true
        })
        .map_err(|e| e.to_string())?;
    Ok(contents)
}

pub fn bench_traverse(bench: &TraverseBench) -> Result<(), String> {
    if bench.records == 0 || bench.value_size == 0 || bench.seconds <= 0.0 || bench.rounds == 0 {
        return Err("--records, --value-size, --seconds and --rounds must be above 0".into());
    }
    let mut spec = ClusterSpec::new(NODES, &bench.dir);
    spec.first_address = bench.first_address;
    let cluster = RunningCluster::start(spec)?;
    let dir = cluster.dir();
    println!(
        "bench traverse: {NODES} nodes on {}.., {} records of {} bytes, dir {}",
        bench.first_address,
        bench.records,
        bench.value_size,
        dir.display()
    );
    let loaded = load(dir, DB, bench.records, bench.value_size)?;
    println!("load: {:.1} s ({:.0} records/s)", loaded, bench.records as f64 / loaded);
    let expected = Contents::expected(bench.records, bench.value_size);

    let rss_before = resident_kib(dir, 0)?;
    let phase = Duration::from_secs_f64(bench.seconds);
    let (mut quiet, mut busy, mut dumps) = (vec![], vec![], vec![]);
    let mut peak_rss = rss_before;
    for _ in 0..bench.rounds {
        quiet.extend(probe_migrations(dir, || std::thread::sleep(phase))?);
        let mut found = Ok(());
        busy.extend(probe_migrations(dir, || {
            let started = Instant::now();
            while found.is_ok() && started.elapsed() < phase {
                let dump_started = Instant::now();
                found = match dump_and_watch(dir, &mut peak_rss) {
                    Ok(contents) if contents == expected => {
                        dumps.push(dump_started.elapsed().as_secs_f64());
                        Ok(())
                    }
                    Ok(contents) => {
                        Err(format!("the traverse found {contents:?}, the cluster holds {expected:?}"))
                    }
                    Err(err) => Err(err),
                };
            }
        })?);
        found?;
    }
    let (quiet, busy) = (Latencies::of(quiet), Latencies::of(busy));
    println!(
        "{:<28} {:>8} {:>9} {:>9} {:>9}",
        "migrations (node 0 <-> 1)", "count", "p50 ms", "p99 ms", "max ms"
    );
    quiet.print("without a traverse");
    busy.print("during traverses");
    dumps.sort_by(f64::total_cmp);
    let median = dumps[dumps.len() / 2];
    println!(
        "traverses: {} of {} records each, median {median:.2} s ({:.0} records/s); node 0 resident \
         {} MiB before, {} MiB at most during them",
        dumps.len(),
        expected.count,
        expected.count as f64 / median,
        rss_before / 1024,
        peak_rss / 1024
    );
    if let Some(line) = last_log_line(&dir.join("node0.log"), "longest hold for a chunk") {
        println!("node 0's log: {line}");
    }
    println!("p99 during / without: {:.2}x (goal: at most 2x)", busy.p99 / quiet.p99.max(1e-9));
    Ok(())
}

/// The last line of a log that contains `what`, without its timestamp.
fn last_log_line(log: &Path, what: &str) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|line| line.contains(what))?;
    Some(line.split_once("] ").map_or(line, |(_, rest)| rest).to_string())
}

/// One whole traverse through node 0, sampling node 0's resident memory meanwhile.
fn dump_and_watch(dir: &Path, peak_rss: &mut u64) -> Result<Contents, String> {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let traverse = scope.spawn(|| {
            let found = traverse_contents(&socket_path(dir, 0), DB);
            done.store(true, Ordering::Release);
            found
        });
        while !done.load(Ordering::Acquire) {
            *peak_rss = (*peak_rss).max(resident_kib(dir, 0).unwrap_or(0));
            std::thread::sleep(Duration::from_millis(20)); // sampling /proc, not waiting for a state
        }
        traverse.join().unwrap_or_else(|_| Err("the traverse panicked".into()))
    })
}

/// Migration latencies, in milliseconds.
struct Latencies {
    count: usize,
    p50: f64,
    p99: f64,
    max: f64,
}

impl Latencies {
    fn of(mut samples: Vec<f64>) -> Latencies {
        samples.sort_by(f64::total_cmp);
        let at =
            |q: f64| samples.get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)));
        Latencies {
            count: samples.len(),
            p50: at(0.5).copied().unwrap_or(0.0),
            p99: at(0.99).copied().unwrap_or(0.0),
            max: samples.last().copied().unwrap_or(0.0),
        }
    }

    fn print(&self, what: &str) {
        println!("{what:<28} {:>8} {:>9.2} {:>9.2} {:>9.2}", self.count, self.p50, self.p99, self.max);
    }
}

/// Bounces the probe record between nodes 0 and 1 (each store a migration) while `during`
/// runs; the latencies of those migrations, in milliseconds.
fn probe_migrations(dir: &Path, during: impl FnOnce()) -> Result<Vec<f64>, String> {
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let probe = scope.spawn(|| -> Result<Vec<f64>, String> {
            let mut dbs = [0, 1].map(|node| {
                ClusteredDb::open(&socket_path(dir, node), PROBE_DB, CLIENT_TIMEOUT)
                    .map_err(|e| e.to_string())
            });
            let mut samples = vec![];
            let mut i = 0u64;
            while !stop.load(Ordering::Acquire) {
                let db = dbs[(i % 2) as usize].as_mut().map_err(|e| e.clone())?;
                let started = Instant::now();
                db.store(PROBE_KEY, &[&i.to_le_bytes()], StoreFlag::Replace)
                    .map_err(|e| format!("probe: {e}"))?;
                samples.push(started.elapsed().as_secs_f64() * 1000.0);
                i += 1;
            }
            Ok(samples)
        });
        during();
        stop.store(true, Ordering::Release);
        probe.join().unwrap_or_else(|_| Err("the probe panicked".into()))
    })
}

/// A node's resident memory (VmRSS), in KiB.
fn resident_kib(dir: &Path, node: usize) -> Result<u64, String> {
    let pid_file = dir.join(format!("node{node}.pid"));
    let pid = std::fs::read_to_string(&pid_file).map_err(|e| format!("{}: {e}", pid_file.display()))?;
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).map_err(|e| e.to_string())?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or("no VmRSS in /proc/PID/status")?;
    line.split_whitespace()
        .nth(1)
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| format!("bad line {line:?}"))
}
