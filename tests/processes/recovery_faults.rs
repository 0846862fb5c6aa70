//! Process-level faults (DESIGN §5, §8.4): clusters of real rctdbd on loopback whose nodes
//! are killed (SIGKILL), stopped (SIGSTOP past the dead time), wedged (the threads that take
//! the node's mutex stopped with ptrace), or told to go quiet while clients use their
//! records. Every wait polls with a deadline; every scenario prints what it measured
//! (detection, recovery, admission times).
//!
//! What the checks expect of the data (volatile databases, as in CTDB):
//! - a record whose holder (DMASTER) survives a fault stays where it is and keeps every
//!   increment acknowledged on it;
//! - a record whose holder died comes back from the newest copy a survivor kept, which is
//!   the value the record had when it last passed through a survivor. It may lack
//!   increments the dead node acknowledged: its value is at most the acknowledged count,
//!   and at least the last value any survivor wrote (copies only ever grow newer);
//! - a node that comes back (restarted, continued, unquieted) is admitted by a recovery,
//!   and afterwards every record has exactly one holder.
//!
//! Three tests are ignored until the product bugs they describe are fixed; run them with
//! `cargo test --release --test processes recovery_faults:: -- --include-ignored`.
//!
//! Addresses: 127.0.20.x to 127.0.29.x and 127.0.90.x to 127.0.92.x, one third octet per
//! test, so that the tests run at once; each has its own directory under the temp dir with
//! the nodes' logs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use rctdb::client::{ClusteredDb, DaemonConnection};
use rctdb::local::{flags::TDB_INCOMPATIBLE_HASH, StoreFlag, Tdb};
use rctdb::record::RecordHeader;
use rctdb::tunables::opcode;
use rctdb::wire::Pnn;
use rctdb_cli::tool::cluster::{self, ClusterSpec, RunningCluster};
use rctdbd::status::{NodeStatus, PeerState, StatusControls};

const DB: &str = "faults.tdb";
/// How long a client waits for a record: far above detection plus recovery.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(10);
/// Detection (600 ms with the default tunables) plus recovery, with room for a loaded
/// 2-core machine running the other tests at the same time.
const RECOVERY_LIMIT: Duration = Duration::from_secs(10);
const STATUS_TIMEOUT: Duration = Duration::from_secs(1);
const POLL: Duration = Duration::from_millis(10);

// ---- the cluster under test

struct Fixture {
    spec: ClusterSpec,
    cluster: RunningCluster,
}

impl Fixture {
    fn start(name: &str, third_octet: u8, nodes: usize) -> Fixture {
        Fixture::start_with_lock(name, third_octet, nodes, None)
    }

    /// With `--cluster-lock LOCK`, or `None` for the lock file in the cluster's directory.
    fn start_with_lock(name: &str, third_octet: u8, nodes: usize, lock: Option<String>) -> Fixture {
        let dir = std::env::temp_dir().join(format!("rctdb-faults-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spec = ClusterSpec::new(nodes, &dir);
        if lock.is_some() {
            spec.cluster_lock = lock;
        }
        spec.first_address = Ipv4Addr::new(127, 0, third_octet, 11);
        let cluster = RunningCluster::start(spec.clone()).unwrap_or_else(|e| panic!("cluster up: {e}"));
        Fixture { spec, cluster }
    }

    fn nodes(&self) -> usize {
        self.spec.nodes
    }

    fn dir(&self) -> &Path {
        self.cluster.dir()
    }

    fn socket(&self, node: usize) -> PathBuf {
        self.cluster.socket(node)
    }

    fn open(&self, node: usize, migrate_timeout: Duration) -> ClusteredDb {
        let db = ClusteredDb::open(&self.socket(node), DB, migrate_timeout);
        self.must(db, &format!("attaching {DB} on node {node}"))
    }

    fn status(&self, node: usize) -> Option<NodeStatus> {
        let mut daemon = DaemonConnection::connect(&self.socket(node)).ok()?;
        daemon.status(STATUS_TIMEOUT).ok()
    }

    fn node_control(&self, node: usize, control: u32) {
        let done = DaemonConnection::connect(&self.socket(node))
            .and_then(|mut daemon| daemon.node_control(control, Duration::from_secs(5)));
        self.must(done, &format!("control {control:#x} on node {node}"));
    }

    fn pid(&self, node: usize) -> Pid {
        let file = self.dir().join(format!("node{node}.pid"));
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        Pid::from_raw(text.trim().parse().unwrap_or_else(|e| panic!("{}: {e}", file.display())))
    }

    /// The leader every node in `nodes` names.
    fn leader(&self, nodes: &[usize]) -> usize {
        self.wait_for("the nodes to agree on a leader", RECOVERY_LIMIT, || {
            let leaders: Vec<Option<usize>> =
                nodes.iter().map(|&n| self.status(n).and_then(|s| s.leader).map(|l| l as usize)).collect();
            leaders[0].filter(|_| leaders.iter().all(|l| *l == leaders[0]))
        })
    }

    /// Polls `probe` until it gives an answer; fails the test after `limit`.
    fn wait_for<T>(&self, what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(answer) = probe() {
                return answer;
            }
            if Instant::now() > deadline {
                panic!("waited {limit:?} for {what}\n{}\n{}", self.statuses(), self.logs());
            }
            std::thread::sleep(POLL); // polling the daemons
        }
    }

    /// Waits until `up` serve together in a generation other than `old_generation`, each
    /// seeing `gone` dead. Returns (first seen dead, all serving) since `since`.
    fn wait_recovered(
        &self,
        up: &[usize],
        gone: usize,
        old_generation: u32,
        since: Instant,
    ) -> (Duration, Duration) {
        let mut detected = None;
        self.wait_for(&format!("nodes {up:?} to serve without node {gone}"), RECOVERY_LIMIT, || {
            let statuses: Option<Vec<NodeStatus>> = up.iter().map(|&n| self.status(n)).collect();
            let statuses = statuses?;
            if detected.is_none() && statuses.iter().any(|s| s.sees_dead(gone as Pnn)) {
                detected = Some(since.elapsed());
            }
            let generation = statuses[0].generation;
            let settled = statuses.iter().all(|s| {
                s.serves()
                    && s.sees_dead(gone as Pnn)
                    && s.generation == generation
                    && up
                        .iter()
                        .all(|&p| s.pnn as usize == p || s.peers_in(PeerState::Alive).contains(&(p as Pnn)))
            });
            (settled && generation != old_generation).then_some(())
        });
        let recovered = since.elapsed();
        (detected.unwrap_or(recovered), recovered)
    }

    fn wait_healthy(&self) -> Duration {
        let started = Instant::now();
        let healthy = cluster::wait_until_healthy(&self.spec);
        self.must(healthy, "waiting for every node to serve");
        started.elapsed()
    }

    fn must<T, E: std::fmt::Display>(&self, result: Result<T, E>, what: &str) -> T {
        result.unwrap_or_else(|e| panic!("{what}: {e}\n{}\n{}", self.statuses(), self.logs()))
    }

    fn statuses(&self) -> String {
        (0..self.nodes())
            .map(|n| match self.status(n) {
                Some(s) => format!("--- status of node {n}\n{s}"),
                None => format!("--- node {n}: no status\n"),
            })
            .collect()
    }

    /// The last lines of every node's log, for a failure message.
    fn logs(&self) -> String {
        (0..self.nodes())
            .map(|node| {
                let log = self.dir().join(format!("node{node}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                format!("--- {} (last lines)\n{}\n", log.display(), tail.join("\n"))
            })
            .collect()
    }

    /// Per key, the nodes of `nodes` whose own file says they hold the record (header names them as
    /// DMASTER). Read from the files directly: call it only with no ClusteredDb open in this
    /// process (tdb opens a file once per process) and while the nodes serve (a frozen
    /// database would block the read).
    fn holders_on_files(&self, nodes: &[usize], keys: &[Vec<u8>]) -> Vec<Vec<usize>> {
        let mut holders = vec![vec![]; keys.len()];
        for &node in nodes {
            let path = self.dir().join(format!("node{node}")).join(DB);
            if !path.exists() {
                continue;
            }
            let tdb = Tdb::open(&path, 0, TDB_INCOMPATIBLE_HASH, libc::O_RDONLY, 0);
            let tdb = self.must(tdb, &format!("opening {}", path.display()));
            for (i, key) in keys.iter().enumerate() {
                let header = tdb.parse_record(key, |value| RecordHeader::decode(value).map(|(h, _)| h));
                let header = self.must(header, &format!("reading {}", path.display()));
                if header.flatten().is_some_and(|h| h.dmaster == node as u32 && h.rsn > 0) {
                    holders[i].push(node);
                }
            }
            self.must(tdb.close(), "closing a node's file");
        }
        holders
    }

    /// Every key has exactly one holder.
    fn assert_one_holder_each(&self, keys: &[Vec<u8>]) -> Vec<usize> {
        let all: Vec<usize> = (0..self.nodes()).collect();
        let holders = self.holders_on_files(&all, keys);
        for (key, nodes) in keys.iter().zip(&holders) {
            assert_eq!(
                nodes.len(),
                1,
                "{}: held by nodes {nodes:?}, not by exactly one\n{}",
                String::from_utf8_lossy(key),
                self.logs()
            );
        }
        holders.into_iter().map(|nodes| nodes[0]).collect()
    }
}

/// Sets its flag when dropped, also when a check fails.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// A node stopped with SIGSTOP; continued when this is dropped, also when a check fails.
struct Stopped(Pid);

impl Stopped {
    /// Returns once every thread of the process is stopped: the signal is delivered
    /// asynchronously, and a thread still running could answer a request meanwhile.
    fn new(pid: Pid) -> Stopped {
        kill(pid, Signal::SIGSTOP).unwrap_or_else(|e| panic!("SIGSTOP {pid}: {e}"));
        let stopped = Stopped(pid);
        let deadline = Instant::now() + STATUS_TIMEOUT;
        while !all_threads_stopped(pid) {
            assert!(Instant::now() < deadline, "process {pid} did not stop within {STATUS_TIMEOUT:?}");
            std::thread::sleep(Duration::from_millis(1)); // polling the kernel's view of it
        }
        stopped
    }
}

/// Whether every thread of `pid` is in state T (stopped), as /proc says.
fn all_threads_stopped(pid: Pid) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return false };
    tasks.flatten().all(|task| {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // "tid (comm) S ...": the state follows the last ')'.
        stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T'))
    })
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

// ---- counters

fn keys(count: usize) -> Vec<Vec<u8>> {
    (0..count).map(|i| format!("counter-{i}").into_bytes()).collect()
}

fn counter_value(data: Option<Vec<u8>>) -> u64 {
    data.map_or(0, |v| u64::from_le_bytes(v.try_into().expect("an 8-byte counter")))
}

/// One increment under the chain lock; returns the value stored.
fn increment(db: &mut ClusteredDb, key: &[u8]) -> rctdb::error::Result<u64> {
    db.chainlock(key)?;
    let stored = db.fetch(key).map(counter_value).and_then(|value| {
        db.store(key, &[&(value + 1).to_le_bytes()], StoreFlag::Replace)?;
        Ok(value + 1)
    });
    let unlocked = db.chainunlock(key);
    let value = stored?;
    unlocked.map(|()| value)
}

/// What the increments returned: acknowledged increments per key, and per node and key the
/// last value that node stored.
struct Tally {
    acked: Vec<u64>,
    last_written: Vec<Vec<u64>>,
}

impl Tally {
    fn new(nodes: usize, keys: usize) -> Tally {
        Tally { acked: vec![0; keys], last_written: vec![vec![0; keys]; nodes] }
    }

    fn note(&mut self, node: usize, key: usize, value: u64) {
        self.acked[key] += 1;
        self.last_written[node][key] = self.last_written[node][key].max(value);
    }

    /// The least value a record may come back with when its holder died: the newest
    /// value any survivor stored.
    fn survivors_newest(&self, survivors: &[usize], key: usize) -> u64 {
        survivors.iter().map(|&n| self.last_written[n][key]).max().unwrap_or(0)
    }
}

/// A client on each node of `nodes`, opened ahead of a fault: attaching asks every peer
/// whose link is up, and waits for one that is stopped or quiet.
fn clients(fx: &Fixture, nodes: &[usize]) -> Vec<(usize, ClusteredDb)> {
    nodes.iter().map(|&node| (node, fx.open(node, MIGRATE_TIMEOUT))).collect()
}

/// One thread per client, each incrementing every key `rounds` times, the keys in turn, so
/// that records keep moving between nodes. Every increment must succeed.
fn increment_with(
    fx: &Fixture,
    clients: &mut [(usize, ClusteredDb)],
    keys: &[Vec<u8>],
    rounds: usize,
    tally: &mut Tally,
) {
    let results: Vec<(usize, Vec<(usize, u64)>)> = std::thread::scope(|scope| {
        let workers: Vec<_> = clients
            .iter_mut()
            .map(|(node, db)| {
                let node = *node;
                scope.spawn(move || {
                    let mut written = vec![];
                    for _ in 0..rounds {
                        for (i, key) in keys.iter().enumerate() {
                            let value = increment(db, key);
                            written.push((i, fx.must(value, &format!("an increment on node {node}"))));
                        }
                    }
                    (node, written)
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().expect("a client thread panicked")).collect()
    });
    for (node, written) in results {
        for (key, value) in written {
            tally.note(node, key, value);
        }
    }
}

fn increment_from(fx: &Fixture, nodes: &[usize], keys: &[Vec<u8>], rounds: usize, tally: &mut Tally) {
    increment_with(fx, &mut clients(fx, nodes), keys, rounds, tally);
}

/// Makes node `holders[i]` the holder of key i: it increments the key last.
fn settle_holders(fx: &Fixture, keys: &[Vec<u8>], holders: &[usize], tally: &mut Tally) {
    let mut dbs: Vec<ClusteredDb> = (0..fx.nodes()).map(|n| fx.open(n, MIGRATE_TIMEOUT)).collect();
    for (i, key) in keys.iter().enumerate() {
        let value = increment(&mut dbs[holders[i]], key);
        tally.note(holders[i], i, fx.must(value, "settling a holder"));
    }
    drop(dbs);
    assert_eq!(fx.assert_one_holder_each(keys), holders, "the last writer holds each key\n{}", fx.logs());
}

/// Every key's value, read through `node`.
fn read_all(fx: &Fixture, node: usize, keys: &[Vec<u8>]) -> Vec<u64> {
    let mut db = fx.open(node, MIGRATE_TIMEOUT);
    keys.iter()
        .map(|key| counter_value(fx.must(db.fetch(key), &format!("a fetch through node {node}"))))
        .collect()
}

// ---- scenarios 1 and 2: kill -9 a node, restart it

const RING_KEYS: usize = 6;
const RING_ROUNDS: usize = 25;

/// Clients on every node increment counters; each key then gets a known holder, one node
/// is killed, the survivors recover and serve, and the node restarts and is admitted.
fn kill_recover_restart(name: &str, third_octet: u8, kill_leader: bool) {
    let started = Instant::now();
    let fx = Fixture::start(name, third_octet, 3);
    let all: Vec<usize> = (0..fx.nodes()).collect();
    let keys = keys(RING_KEYS);
    let mut tally = Tally::new(fx.nodes(), keys.len());
    increment_from(&fx, &all, &keys, RING_ROUNDS, &mut tally);
    let holders: Vec<usize> = (0..keys.len()).map(|i| i % fx.nodes()).collect();
    settle_holders(&fx, &keys, &holders, &mut tally);

    let leader = fx.leader(&all);
    let victim = if kill_leader { leader } else { *all.iter().rev().find(|&&n| n != leader).unwrap() };
    let survivors: Vec<usize> = all.iter().copied().filter(|&n| n != victim).collect();
    let old_generation = fx.status(survivors[0]).expect("status").generation;
    let killed_at = Instant::now();
    fx.must(cluster::kill_node(fx.dir(), victim), "kill -9");
    let (detected, recovered) = fx.wait_recovered(&survivors, victim, old_generation, killed_at);
    let new_leader = fx.leader(&survivors);
    let leader_status = fx.status(new_leader).expect("status");
    println!(
        "{name}: killed node {victim} (leader was {leader}, now {new_leader}): seen dead after \
         {detected:?}, survivors serve after {recovered:?}; leader's last_recovery_ms={:?} \
         records_fixed={:?}",
        leader_status.stats.last_recovery_ms, leader_status.stats.records_fixed,
    );
    assert!(!kill_leader || new_leader != victim, "a dead node still leads");

    // Records stay where their holders survive; the dead node's go to one survivor each.
    // (The dead node's file still names it: read the survivors' files.)
    let after = fx.holders_on_files(&survivors, &keys);
    for (i, nodes) in after.iter().enumerate() {
        match holders[i] == victim {
            false => assert_eq!(nodes, &vec![holders[i]], "key {i} moved off a survivor\n{}", fx.logs()),
            true => assert!(
                nodes.len() == 1 && nodes[0] != victim,
                "key {i} of the dead node is held by {nodes:?}\n{}",
                fx.logs()
            ),
        }
    }
    let values = read_all(&fx, survivors[0], &keys);
    for (i, &value) in values.iter().enumerate() {
        if holders[i] == victim {
            let least = tally.survivors_newest(&survivors, i);
            assert!(
                least <= value && value <= tally.acked[i],
                "key {i} held by the dead node: {value}, expected the newest surviving copy, between \
                 {least} and the {} acknowledged\n{}",
                tally.acked[i],
                fx.logs()
            );
            // From here on the restored value is the count: lost increments are lost.
            tally.acked[i] = value;
        } else {
            assert_eq!(value, tally.acked[i], "key {i} held by survivor {}\n{}", holders[i], fx.logs());
        }
    }
    assert_eq!(read_all(&fx, survivors[1], &keys), values, "both survivors read the same values");

    // The survivors serve: increments from both.
    increment_from(&fx, &survivors, &keys, 2, &mut tally);

    let restarted_at = Instant::now();
    fx.must(cluster::start_node(&fx.spec, victim), "restarting the node");
    let admitted = fx.wait_healthy();
    println!(
        "{name}: node {victim} restarted and admitted after {admitted:?} (since start {:?})",
        restarted_at.elapsed()
    );

    // The restarted node serves: increments from every node, then every node reads alike.
    increment_from(&fx, &all, &keys, 2, &mut tally);
    for node in all.iter().copied() {
        assert_eq!(read_all(&fx, node, &keys), tally.acked, "values read through node {node}\n{}", fx.logs());
    }
    fx.assert_one_holder_each(&keys);
    println!("{name}: done in {:?}", started.elapsed());
}

#[test]
fn kill_a_non_leader_the_survivors_recover_and_it_is_admitted_again() {
    kill_recover_restart("kill-follower", 20, false);
}

#[test]
fn kill_the_leader_the_survivors_recover_and_it_is_admitted_again() {
    kill_recover_restart("kill-leader", 21, true);
}

/// Regression: a restarted node was admitted only after ~8 s. The leader hears the node on
/// the node's new connection and sends it RecoveryStart at once, on its own link to the
/// node, which is not up again yet: the packet was dropped, and the leader waited
/// RecoverTimeout and then left the node out for RecoveryBanPeriod. Now the recovery starts
/// again when that link comes up, and the node's call ends our reconnect backoff.
#[test]
fn a_restarted_node_is_admitted_promptly() {
    const ADMIT_LIMIT: Duration = Duration::from_millis(2500);
    let fx = Fixture::start("admit", 28, 3);
    let mut admissions = vec![];
    for _ in 0..3 {
        let old_generation = fx.status(0).expect("status").generation;
        let killed_at = Instant::now();
        fx.must(cluster::kill_node(fx.dir(), 2), "kill -9 node 2");
        fx.wait_recovered(&[0, 1], 2, old_generation, killed_at);
        let restarted_at = Instant::now();
        fx.must(cluster::start_node(&fx.spec, 2), "restarting node 2");
        fx.wait_healthy();
        admissions.push(restarted_at.elapsed());
    }
    println!("admit: node 2 restarted and admitted after {admissions:?}");
    assert!(
        admissions.iter().all(|&admitted| admitted < ADMIT_LIMIT),
        "admissions took {admissions:?}\n{}",
        fx.logs()
    );
}

// ---- scenario 3: SIGSTOP past the dead time, then SIGCONT

#[test]
fn a_stopped_node_is_excluded_then_admitted_again_with_one_holder_per_record() {
    const STOP_AT_LEAST: Duration = Duration::from_millis(1500);
    let started = Instant::now();
    let fx = Fixture::start("sigstop", 22, 3);
    let all: Vec<usize> = (0..fx.nodes()).collect();
    let keys = keys(RING_KEYS);
    let mut tally = Tally::new(fx.nodes(), keys.len());
    increment_from(&fx, &all, &keys, RING_ROUNDS, &mut tally);
    let holders: Vec<usize> = (0..keys.len()).map(|i| i % fx.nodes()).collect();
    settle_holders(&fx, &keys, &holders, &mut tally);

    let leader = fx.leader(&all);
    let stopped = *all.iter().rev().find(|&&n| n != leader).unwrap();
    let up: Vec<usize> = all.iter().copied().filter(|&n| n != stopped).collect();
    let least_restored: Vec<u64> = (0..keys.len()).map(|i| tally.survivors_newest(&up, i)).collect();
    let acked_before = tally.acked.clone();
    let old_generation = fx.status(up[0]).expect("status").generation;

    // Clients on the nodes that stay up keep incrementing every key while the others
    // exclude the stopped node (the stopped node's records wait for that recovery).
    let mut during = Tally::new(fx.nodes(), keys.len());
    let mut up_clients = clients(&fx, &up);
    let stopped_at = Instant::now();
    let guard = Stopped::new(fx.pid(stopped));
    let (detected, recovered) = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| fx.wait_recovered(&up, stopped, old_generation, stopped_at));
        increment_with(&fx, &mut up_clients, &keys, 10, &mut during);
        watcher.join().expect("watcher")
    });
    drop(up_clients);
    println!(
        "sigstop: stopped node {stopped} (leader {leader}): seen dead after {detected:?}, the others \
         serve after {recovered:?}; clients on them done after {:?}",
        stopped_at.elapsed()
    );
    // The node stays stopped past the dead time, however fast the others were.
    while stopped_at.elapsed() < STOP_AT_LEAST {
        std::thread::sleep(POLL); // the fault's duration, not a race
    }
    for &node in &up {
        let status = fx.status(node).expect("status");
        assert!(
            status.serves() && status.sees_dead(stopped as Pnn),
            "node {node} while {stopped} is stopped:\n{status}"
        );
    }
    let continued_at = Instant::now();
    drop(guard);
    let admitted = fx.wait_healthy();
    println!(
        "sigstop: node {stopped} continued after {:?}, admitted after {admitted:?}",
        continued_at - stopped_at
    );

    let after_stop = fx.assert_one_holder_each(&keys);
    // Increments from every node, the continued one included.
    let mut later = Tally::new(fx.nodes(), keys.len());
    increment_from(&fx, &all, &keys, 5, &mut later);
    let values = read_all(&fx, up[0], &keys);
    for (i, &value) in values.iter().enumerate() {
        let since_stop = during.acked[i] + later.acked[i];
        if holders[i] == stopped {
            let least = least_restored[i] + since_stop;
            let most = acked_before[i] + since_stop;
            assert!(
                least <= value && value <= most,
                "key {i} held by the stopped node: {value}, expected {least}..={most}\n{}",
                fx.logs()
            );
        } else {
            assert_eq!(
                value,
                acked_before[i] + since_stop,
                "key {i} (held by node {}, then {}) lost or doubled an increment\n{}",
                holders[i],
                after_stop[i],
                fx.logs()
            );
        }
    }
    for &node in &all {
        assert_eq!(read_all(&fx, node, &keys), values, "values read through node {node}\n{}", fx.logs());
    }
    fx.assert_one_holder_each(&keys);
    println!("sigstop: done in {:?}", started.elapsed());
}

// ---- scenario 4: the restarted LMASTER must not mint a second DMASTER

#[test]
fn a_restarted_node_writes_through_the_records_the_other_node_holds() {
    let started = Instant::now();
    let fx = Fixture::start("restart-lmaster", 23, 2);
    let keys = keys(20);
    let first = |i: usize| format!("first {i}").into_bytes();
    let second = |i: usize| format!("second {i}").into_bytes();
    let mut db1 = fx.open(1, MIGRATE_TIMEOUT);
    for (i, key) in keys.iter().enumerate() {
        fx.must(db1.store(key, &[&first(i)], StoreFlag::Replace), "a store through node 1");
    }
    drop(db1);
    assert_eq!(fx.assert_one_holder_each(&keys), vec![1; keys.len()], "node 1 holds what it wrote");

    let killed_at = Instant::now();
    fx.must(cluster::kill_node(fx.dir(), 0), "kill -9 node 0");
    fx.must(cluster::start_node(&fx.spec, 0), "restarting node 0");
    let admitted = fx.wait_healthy();
    println!(
        "restart-lmaster: node 0 killed, restarted and admitted after {admitted:?} ({:?} since the kill)",
        killed_at.elapsed()
    );

    let mut db0 = fx.open(0, MIGRATE_TIMEOUT);
    for (i, key) in keys.iter().enumerate() {
        fx.must(db0.store(key, &[&second(i)], StoreFlag::Replace), "a store through node 0");
    }
    let mut db1 = fx.open(1, MIGRATE_TIMEOUT);
    for (i, key) in keys.iter().enumerate() {
        let on0 = fx.must(db0.fetch(key), "a fetch through node 0");
        let on1 = fx.must(db1.fetch(key), "a fetch through node 1");
        let on0_again = fx.must(db0.fetch(key), "a fetch through node 0");
        assert_eq!(
            (on0.as_deref(), on1.as_deref(), on0_again.as_deref()),
            (Some(&second(i)[..]), Some(&second(i)[..]), Some(&second(i)[..])),
            "key {i}: node 0, node 1, node 0 again\n{}",
            fx.logs()
        );
    }
    drop((db0, db1));
    fx.assert_one_holder_each(&keys);
    println!("restart-lmaster: done in {:?}", started.elapsed());
}

// ---- scenario 5: a partition made with `quiet`

#[test]
fn a_quiet_node_stops_serving_and_the_lock_holder_serves_on() {
    let started = Instant::now();
    let fx = Fixture::start("quiet", 24, 2);
    let keys = keys(10);
    let before = |i: usize| format!("before {i}").into_bytes();
    let during = |i: usize| format!("during {i}").into_bytes();
    {
        let mut dbs = [fx.open(0, MIGRATE_TIMEOUT), fx.open(1, MIGRATE_TIMEOUT)];
        for (i, key) in keys.iter().enumerate() {
            fx.must(dbs[i % 2].store(key, &[&before(i)], StoreFlag::Replace), "a store");
        }
    }
    let holders: Vec<usize> = (0..keys.len()).map(|i| i % 2).collect();
    assert_eq!(fx.assert_one_holder_each(&keys), holders);
    // Node 1's client, opened while it serves, with a short migrate timeout.
    let probe_db = fx.open(1, Duration::from_secs(1));
    let db_id = probe_db.db_id();
    let old_generation = fx.status(0).expect("status").generation;
    // Opened ahead: attaching waits for every peer whose link is up, a quiet one too.
    let mut db0 = fx.open(0, MIGRATE_TIMEOUT);

    let quiet_at = Instant::now();
    fx.node_control(1, opcode::QUIET);
    let state = fx.status(1).expect("a quiet node answers its clients").state.clone();
    assert_ne!(state, "active", "a quiet node does not serve");

    // Node 0 (it holds, or takes, the cluster lock) serves: writes to every key, those node
    // 1 held included, succeed within a few seconds.
    for (i, key) in keys.iter().enumerate() {
        fx.must(db0.store(key, &[&during(i)], StoreFlag::Replace), "a store through node 0");
    }
    let written = quiet_at.elapsed();
    let (detected, recovered) = fx.wait_recovered(&[0], 1, old_generation, quiet_at);
    println!("quiet: node 0 sees node 1 dead after {detected:?}, serves alone after {recovered:?}, all writes done after {written:?}");
    assert!(written < RECOVERY_LIMIT, "node 0 took {written:?} to serve the writes");

    // Node 1 does not serve: a migrate through it fails at the client's timeout...
    let migrate_at = Instant::now();
    let migrated = DaemonConnection::connect(&fx.socket(1))
        .and_then(|mut daemon| daemon.migrate(db_id, &keys[0], false, Duration::from_secs(1)));
    assert!(migrated.is_err(), "node 1 migrated a record while quiet\n{}", fx.logs());
    println!(
        "quiet: a migrate through node 1 failed after {:?}: {}",
        migrate_at.elapsed(),
        migrated.unwrap_err()
    );
    // ...and so does a client of node 1: its chain lock (node 1 froze the database) or its
    // migrate times out. On a thread, so that a client that hangs fails the test.
    let (answer_tx, answer) = mpsc::channel();
    let probe_key = keys[0].clone(); // held by node 0
    let asked_at = Instant::now();
    let probe = std::thread::spawn(move || {
        let mut db = probe_db;
        let _ = answer_tx.send(db.fetch(&probe_key));
    });
    match answer.recv_timeout(Duration::from_secs(5)) {
        Ok(Err(err)) => println!("quiet: a client of node 1 failed after {:?}: {err}", asked_at.elapsed()),
        Ok(Ok(value)) => panic!("a client of quiet node 1 read {value:?}\n{}", fx.logs()),
        Err(_) => panic!("a client of quiet node 1 (timeout 1 s) got no answer in 5 s\n{}", fx.logs()),
    }
    probe.join().expect("probe thread");
    for _ in 0..10 {
        let state = fx.status(1).expect("status").state.clone();
        assert_ne!(state, "active", "quiet node 1 serves\n{}", fx.logs());
        std::thread::sleep(POLL); // sampling node 1's state for a while
    }

    let unquiet_at = Instant::now();
    fx.node_control(1, opcode::UNQUIET);
    let admitted = fx.wait_healthy();
    println!(
        "quiet: node 1 unquieted, admitted after {admitted:?} ({:?} since unquiet)",
        unquiet_at.elapsed()
    );

    let mut db1 = fx.open(1, MIGRATE_TIMEOUT);
    for (i, key) in keys.iter().enumerate() {
        let on1 = fx.must(db1.fetch(key), "a fetch through node 1");
        let on0 = fx.must(db0.fetch(key), "a fetch through node 0");
        assert_eq!((on1, on0), (Some(during(i)), Some(during(i))), "key {i}: node 1, node 0\n{}", fx.logs());
    }
    drop((db0, db1));
    fx.assert_one_holder_each(&keys);
    println!("quiet: done in {:?}", started.elapsed());
}

// ---- scenario 6: the lock holder stopped or wedged: its watchdog lets the lock go

/// How long a survivor may take to serve a key the stopped leader held. The goal is 1.5 s
/// (300 ms until the watchdog fences, 600 ms until the others declare the leader dead, then
/// an election and a recovery); the bound is generous for a loaded CI machine, and every
/// run prints the time it measured.
const TAKEOVER_LIMIT: Duration = Duration::from_secs(20);

/// How the leader is taken out of the cluster.
enum Hang {
    /// SIGSTOP of the whole daemon.
    Stop,
    /// Every thread that takes the node's mutex (the engine thread, which is the main
    /// thread, the peer readers and the client event loop) is stopped with ptrace, as when
    /// one of them is wedged on a file under that mutex. The daemon's other threads (link
    /// senders and watchers, lock waiters, the cluster lock's watcher) run on, and its TCP
    /// links stay up.
    WedgeEngine,
}

/// The leader's process, or its threads that need the node's mutex, stopped until dropped
/// (also when a check fails).
enum Hung {
    Stopped { _continued_when_dropped: Stopped },
    Traced(Vec<i32>),
}

impl Hung {
    fn new(how: &Hang, pid: Pid) -> Hung {
        match how {
            Hang::Stop => Hung::Stopped { _continued_when_dropped: Stopped::new(pid) },
            Hang::WedgeEngine => {
                let mut traced = Hung::Traced(vec![]);
                for tid in threads_needing_the_node(pid) {
                    // SAFETY: ptrace and waitpid with plain integer arguments on a thread of
                    // a daemon this test started.
                    unsafe {
                        assert_eq!(libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0), 0, "PTRACE_SEIZE {tid}");
                        if let Hung::Traced(tids) = &mut traced {
                            tids.push(tid);
                        }
                        assert_eq!(
                            libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0),
                            0,
                            "PTRACE_INTERRUPT {tid}"
                        );
                        let mut status = 0;
                        assert_eq!(libc::waitpid(tid, &mut status, libc::__WALL), tid, "thread {tid} stops");
                    }
                }
                traced
            }
        }
    }
}

/// The daemon's main thread (its engine), its peer reader threads and its client loop.
fn threads_needing_the_node(pid: Pid) -> Vec<i32> {
    let tasks = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&tasks).unwrap_or_else(|e| panic!("{tasks}: {e}"));
    let mut tids = vec![];
    for entry in entries.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|t| t.parse::<i32>().ok()) else { continue };
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        let name = name.trim();
        if tid == pid.as_raw() || name.starts_with("rctdb-rx") || name == "clients" {
            tids.push(tid);
        }
    }
    assert!(tids.len() > 2, "found the engine, peer reader and client threads: {tids:?}");
    tids
}

impl Drop for Hung {
    fn drop(&mut self) {
        if let Hung::Traced(tids) = self {
            for &tid in tids.iter() {
                // SAFETY: as above; detaching lets the thread run on.
                unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
            }
        }
    }
}

/// Takes the leader of a cluster out (`how`) while it holds the cluster lock (`lock`, as
/// for `--cluster-lock`; `None`, the fixture's lock file). Within `TAKEOVER_LIMIT` a
/// survivor serves a key the leader held: the leader's watchdog froze the leader's
/// databases and let the lock go. While the leader is out, a local client of it cannot take
/// the chain lock of that key. Once the leader runs again it is fenced, admitted by a
/// recovery, and every key reads the same on every node; every key a survivor held keeps
/// its value.
fn hang_the_leader(name: &str, third_octet: u8, nodes: usize, lock: Option<String>, how: Hang) {
    let started = Instant::now();
    let fx = Fixture::start_with_lock(name, third_octet, nodes, lock);
    let keys = keys(2 * nodes);
    let value = |i: usize| format!("value {i}").into_bytes();
    let db_id = {
        let mut dbs: Vec<ClusteredDb> = (0..nodes).map(|n| fx.open(n, MIGRATE_TIMEOUT)).collect();
        for (i, key) in keys.iter().enumerate() {
            fx.must(dbs[i % nodes].store(key, &[&value(i)], StoreFlag::Replace), "a store");
        }
        dbs[0].db_id()
    };
    let all: Vec<usize> = (0..nodes).collect();
    let leader = fx.leader(&all);
    let survivor = (leader + 1) % nodes;
    let holders = fx.assert_one_holder_each(&keys);
    println!("{name}: leader {leader}; holders {holders:?}");
    let held = fx.must(holders.iter().position(|&h| h == leader).ok_or("none"), "a key the leader holds");

    let stopped_at = Instant::now();
    let hung = Hung::new(&how, fx.pid(leader));
    let served = DaemonConnection::connect(&fx.socket(survivor))
        .and_then(|mut daemon| daemon.migrate(db_id, &keys[held], false, TAKEOVER_LIMIT));
    let took_over = stopped_at.elapsed();
    fx.must(served, &format!("node {survivor} serving key {held}, held by the hung leader {leader}"));
    println!(
        "{name}: node {survivor} served a key hung leader {leader} held after {took_over:?} (goal 1.5 s)"
    );
    assert!(took_over < TAKEOVER_LIMIT, "takeover took {took_over:?}");

    // The hung node's local clients (smbd, librctdb use the file directly) must not use
    // the records it held: its watchdog holds every chain.
    let path = fx.dir().join(format!("node{leader}")).join(DB);
    let tdb =
        fx.must(Tdb::open(&path, 0, TDB_INCOMPATIBLE_HASH, libc::O_RDWR, 0), "opening the hung node's file");
    assert!(
        tdb.chainlock_nonblock(&keys[held]).is_err(),
        "a local client of hung node {leader} took the chain of a key it held\n{}",
        fx.logs()
    );
    fx.must(tdb.close(), "closing the hung node's file");

    let hung_for = stopped_at.elapsed();
    drop(hung);
    let admitted = fx.wait_healthy();
    println!("{name}: node {leader} ran again after {hung_for:?}; every node serves after {admitted:?}");
    let log = std::fs::read_to_string(fx.dir().join(format!("node{leader}.log"))).unwrap_or_default();
    assert!(
        log.contains("handed over"),
        "fenced node {leader} took its watchdog's freeze over, never unfrozen between\n{}",
        fx.logs()
    );
    let mut dbs: Vec<ClusteredDb> = (0..nodes).map(|n| fx.open(n, MIGRATE_TIMEOUT)).collect();
    for (i, key) in keys.iter().enumerate() {
        let reads: Vec<Option<Vec<u8>>> =
            dbs.iter_mut().map(|db| fx.must(db.fetch(key), "a fetch")).collect();
        assert!(
            reads.iter().all(|r| *r == reads[0]),
            "key {i} reads {reads:?} on nodes 0..{nodes}\n{}",
            fx.logs()
        );
        if holders[i] != leader {
            assert_eq!(
                reads[0],
                Some(value(i)),
                "key {i}, held by survivor {}, lost its value\n{}",
                holders[i],
                fx.logs()
            );
        }
    }
    drop(dbs);
    fx.assert_one_holder_each(&keys);
    println!("{name}: done in {:?}", started.elapsed());
}

#[test]
fn a_stopped_lock_holder_is_replaced_and_rejoins() {
    hang_the_leader("stop-leader", 25, 3, None, Hang::Stop);
}

/// Regression: the continued leader judged its peer dead on its first tick, before it read
/// the heartbeats waiting in its socket, recovered alone, then admitted the peer as "behind
/// the cluster's history" and emptied it. Now the other node leads while the leader is
/// stopped, and keeps its records when the old leader comes back.
#[test]
fn a_stopped_and_continued_leader_loses_no_record_of_the_other_node() {
    hang_the_leader("stop-leader-records", 27, 2, None, Hang::Stop);
}

/// Samba's helper watches only its own parent (our watchdog, which runs on): the watchdog
/// ends it when the daemon stops.
#[test]
fn a_stopped_leader_holding_samba_s_fcntl_helper_lock_is_replaced() {
    const FCNTL_HELPER: &str = "/usr/libexec/ctdb/ctdb_mutex_fcntl_helper";
    if !Path::new(FCNTL_HELPER).exists() {
        println!("SKIPPED: {FCNTL_HELPER} is not installed (package ctdb); this test did not run");
        return;
    }
    let dir = std::env::temp_dir().join(format!("rctdb-faults-fcntl-lock-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("lock dir");
    let lock = format!("!{FCNTL_HELPER} {}", dir.join("reclock").display());
    hang_the_leader("stop-leader-fcntl-helper", 90, 3, Some(lock), Hang::Stop);
}

/// A helper that takes the lock and then ignores SIGTERM (and says nothing more) is killed
/// after its grace: it does not keep the cluster from a leader.
#[test]
fn a_lock_helper_that_ignores_sigterm_does_not_stop_the_cluster() {
    let dir = std::env::temp_dir().join(format!("rctdb-faults-helper-script-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("helper dir");
    let script = dir.join("hung-helper.sh");
    // flock(1) on descriptor 9, which `sleep` does not inherit: the lock ends with the shell.
    let body = "exec 9>>\"$1\"\nflock -n 9 || { printf 1; exit 0; }\ntrap '' TERM\nprintf 0\n\
                while :; do sleep 1 9>&-; done\n";
    std::fs::write(&script, format!("#!/bin/sh\n{body}")).expect("helper script");
    let lock = format!("!/bin/sh {} {}", script.display(), dir.join("reclock").display());
    hang_the_leader("hung-helper", 91, 3, Some(lock), Hang::Stop);
}

/// Only the leader's engine thread stops (a daemon wedged on a file): its other threads run
/// on, but peers hear a node only from its engine, and its watchdog only from its ticks.
#[test]
fn a_leader_whose_engine_is_wedged_is_evicted_and_replaced() {
    hang_the_leader("wedged-engine", 92, 3, None, Hang::WedgeEngine);
}

/// Regression: attaching a database asked every peer whose TCP link was up and waited for
/// all of them, up to the daemon's control timeout (5 s), even for a peer membership knew
/// to be dead (stopped, quiet). Now only live peers are asked.
#[test]
fn attaching_does_not_wait_for_a_stopped_peer() {
    const ATTACH_LIMIT: Duration = Duration::from_secs(2);
    let fx = Fixture::start("attach", 29, 2);
    // The lock holder goes on serving without the stopped node (the other way round, its
    // watchdog would fence it: see the tests above).
    let leader = fx.leader(&[0, 1]);
    let stopped = 1 - leader;
    let old_generation = fx.status(leader).expect("status").generation;
    let stopped_at = Instant::now();
    let _guard = Stopped::new(fx.pid(stopped));
    fx.wait_recovered(&[leader], stopped, old_generation, stopped_at);
    let asked_at = Instant::now();
    drop(fx.open(leader, MIGRATE_TIMEOUT));
    let attached = asked_at.elapsed();
    println!(
        "attach: with node {stopped} stopped and seen dead, attaching on node {leader} took {attached:?}"
    );
    assert!(attached < ATTACH_LIMIT, "attaching on node {leader} took {attached:?}\n{}", fx.logs());
}

// ---- scenario 7: a requester on a third node does not starve

#[test]
fn a_third_node_gets_a_hammered_record_within_a_bound() {
    const REQUESTS: usize = 20;
    const BOUND: Duration = Duration::from_secs(2);
    const HAMMER_LIMIT: Duration = Duration::from_secs(30);
    let started = Instant::now();
    let fx = Fixture::start("fairness", 26, 3);
    let key: &[u8] = b"hot";
    let stop = AtomicBool::new(false);
    let hammered = [AtomicU64::new(0), AtomicU64::new(0)];
    let (waits, total) = std::thread::scope(|scope| {
        // Should a check fail, the hammers stop too (the scope waits for them).
        let _stop_hammers = StopOnDrop(&stop);
        let hammers: Vec<_> = (0..2)
            .map(|node| {
                let (stop, count) = (&stop, &hammered[node]);
                let fx = &fx;
                scope.spawn(move || {
                    let mut db = fx.open(node, MIGRATE_TIMEOUT);
                    let until = Instant::now() + HAMMER_LIMIT;
                    while !stop.load(Ordering::Relaxed) && Instant::now() < until {
                        fx.must(increment(&mut db, key), &format!("a hammer on node {node}"));
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        fx.wait_for("both hammers to run", RECOVERY_LIMIT, || {
            hammered.iter().all(|c| c.load(Ordering::Relaxed) >= 20).then_some(())
        });
        let mut db = fx.open(2, MIGRATE_TIMEOUT);
        let mut waits = vec![];
        for _ in 0..REQUESTS {
            let asked = Instant::now();
            fx.must(increment(&mut db, key), "the requester's increment");
            waits.push(asked.elapsed());
            // Let the hammers take the record back before asking again.
            let seen = hammered.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>();
            fx.wait_for("the hammers to go on", BOUND, || {
                (hammered.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>() > seen + 5).then_some(())
            });
        }
        stop.store(true, Ordering::Relaxed);
        for hammer in hammers {
            hammer.join().expect("a hammer thread panicked");
        }
        let total = counter_value(fx.must(db.fetch(key), "the final fetch"));
        (waits, total)
    });
    let hammers: Vec<u64> = hammered.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let max = waits.iter().max().copied().unwrap_or_default();
    let mut sorted = waits.clone();
    sorted.sort();
    println!(
        "fairness: hammers did {hammers:?} increments; the requester's {REQUESTS} waits: median {:?}, max {max:?}",
        sorted[REQUESTS / 2]
    );
    assert!(max <= BOUND, "the requester on node 2 waited {max:?} (waits {waits:?})\n{}", fx.logs());
    assert_eq!(total, hammers.iter().sum::<u64>() + REQUESTS as u64, "no increment lost\n{}", fx.logs());
    println!("fairness: done in {:?}", started.elapsed());
}
