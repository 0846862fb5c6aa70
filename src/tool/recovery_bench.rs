//! `rctdb bench recovery`: how long a 3-node cluster holding N records takes, after a fault,
//! to notice it, to recover, and to serve a client again (DESIGN §5, §8.4). Faults: a cold
//! start, kill -9 of a node that does not lead and of the leader, SIGSTOP of a node for a
//! fixed stall (then SIGCONT), and the victims coming back.
//!
//! Every time is taken by this process, in milliseconds from the fault: `detected` when a
//! node's status first shows the change (the victim dead; a joining node alive with its link
//! up), `recovered` when every serving node is active in one new generation with the
//! expected map, `served` when a client's request for a record the change concerns returns.
//! The client asks at the fault and waits, as smbd would: its answer comes when the cluster
//! can give it.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::client::{ClusteredDb, DaemonConnection};
use crate::engine::lmaster_of;
use crate::local::StoreFlag;
use crate::status::{NodeStatus, PeerStatus, StatusControls};
use crate::tool::cluster::{self, socket_path, ClusterSpec};
use crate::wire::Pnn;

pub struct RecoveryBench {
    pub records: usize,
    pub value_size: usize,
    /// Records the victim takes from the other nodes before each fault: their previous
    /// holders keep a copy, so the recovery gives them back (the victim's own records die
    /// with it: volatile databases, DESIGN §1).
    pub moved: usize,
    pub dir: PathBuf,
    pub first_address: Ipv4Addr,
    /// Tunables every node starts with, as `NAME=VALUE` (`rctdbd --set`).
    pub tunables: Vec<String>,
    /// The faults to run, in this order, each followed by its victim's return.
    pub faults: Vec<Fault>,
    /// How long a SIGSTOP fault keeps its victim stopped: past the dead time, so the others
    /// leave it out, and within the hold time, so it keeps its records (DESIGN §5).
    pub stall: Duration,
}

/// A fault of the bench; the victim comes back after each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// kill -9 of a node that does not lead, then a restart.
    Kill,
    /// SIGSTOP of a node that does not lead (hung) for the bench's stall, then SIGCONT.
    Stop,
    /// kill -9 of the leader, then a restart.
    Leader,
}

const NODES: usize = 3;
const DB: &str = "recovery_bench.tdb";
/// Between two rounds of status requests while a scenario runs.
const POLL: Duration = Duration::from_millis(2);
/// A scenario not done after this is reported as stuck.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(30);
/// A client waits this long for its record: far beyond any goal, so that slowness is
/// measured rather than cut off.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

pub fn bench_recovery(bench: &RecoveryBench) -> Result<(), String> {
    if bench.records < NODES * 2 || bench.value_size == 0 {
        return Err(format!(
            "--records {} --value-size {}: give at least 6 records of 1 byte",
            bench.records, bench.value_size
        ));
    }
    let records = Records::new(bench.records, bench.value_size);
    let cluster = Cluster::prepare(bench)?;
    let mut run = Run {
        cluster,
        records,
        moved: bench.moved,
        faults: bench.faults.clone(),
        stall: bench.stall,
        counters: [None; NODES],
        rows: vec![],
        travelled: BTreeSet::new(),
    };
    let result = run.scenarios();
    run.print_table();
    if let Err(err) = &result {
        println!("stopped: {err}");
        println!("node logs: {}/nodeK.log", run.cluster.spec.dir.display());
    }
    result?;
    let failed: Vec<String> =
        run.rows.iter().filter(|r| r.check.is_some_and(|c| !c.fine)).map(title).collect();
    match failed.is_empty() {
        true => Ok(()),
        false => {
            Err(format!("acknowledged records were lost or came back wrong after: {}", failed.join(", ")))
        }
    }
}

// ---- the records

/// The bench's records: key i lives on its LMASTER under the full map, where it was created.
struct Records {
    count: usize,
    value_size: usize,
    by_lmaster: [Vec<usize>; NODES],
}

impl Records {
    fn new(count: usize, value_size: usize) -> Records {
        let map: Vec<Pnn> = (0..NODES as Pnn).collect();
        let mut by_lmaster: [Vec<usize>; NODES] = Default::default();
        for i in 0..count {
            by_lmaster[lmaster_of(&key(i), &map) as usize].push(i);
        }
        Records { count, value_size, by_lmaster }
    }

    fn value(&self, i: usize) -> Vec<u8> {
        format!("value-{i:08}-").bytes().cycle().take(self.value_size).collect()
    }
}

fn key(i: usize) -> Vec<u8> {
    format!("rec-{i:08}").into_bytes()
}

/// What a pass over every record found: created (first load) or given back after a fault.
#[derive(Debug, Default, Clone, Copy)]
struct FillReport {
    kept: usize,
    missing: usize,
    wrong: usize,
    seconds: f64,
}

/// Each node's client reads the records whose LMASTER that node is, and stores the ones
/// missing or wrong: on the first pass this creates them all without a network hop (an
/// LMASTER mints a new record itself); later it checks what a fault left and refills it.
fn fill(dir: &Path, records: &Records) -> Result<FillReport, String> {
    let start = Instant::now();
    let reports = std::thread::scope(|scope| {
        let threads: Vec<_> =
            (0..NODES).map(|node| scope.spawn(move || fill_node(dir, node, records))).collect();
        threads
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|_| Err("a loader panicked".into())))
            .collect::<Vec<_>>()
    });
    let mut total = FillReport { seconds: start.elapsed().as_secs_f64(), ..FillReport::default() };
    for report in reports {
        let report = report?;
        total.kept += report.kept;
        total.missing += report.missing;
        total.wrong += report.wrong;
    }
    Ok(total)
}

fn fill_node(dir: &Path, node: usize, records: &Records) -> Result<FillReport, String> {
    let mut db = ClusteredDb::open(&socket_path(dir, node), DB, CLIENT_TIMEOUT).map_err(|e| e.to_string())?;
    let mut report = FillReport::default();
    for &i in &records.by_lmaster[node] {
        let (key, value) = (key(i), records.value(i));
        match db.fetch(&key).map_err(|e| format!("node {node}: fetch: {e}"))? {
            Some(found) if found == value => {
                report.kept += 1;
                continue;
            }
            Some(_) => report.wrong += 1,
            None => report.missing += 1,
        }
        db.store(&key, &[&value], StoreFlag::Replace).map_err(|e| format!("node {node}: store: {e}"))?;
    }
    Ok(report)
}

// ---- the cluster

/// The bench's cluster; stopped (stopped nodes continued first) when dropped.
struct Cluster {
    spec: ClusterSpec,
}

impl Cluster {
    /// Stops whatever a previous run left in the directory and writes what `rctdb cluster
    /// up` gives its nodes (nodes file, cluster key); no node runs yet.
    fn prepare(bench: &RecoveryBench) -> Result<Cluster, String> {
        let mut spec = ClusterSpec::new(NODES, &bench.dir);
        spec.first_address = bench.first_address;
        for setting in &bench.tunables {
            spec.tunables.push(parse_tunable(setting)?);
        }
        let _ = cluster::down(&spec.dir);
        for node in 0..NODES {
            let _ = std::fs::remove_file(spec.dir.join(format!("node{node}.log")));
        }
        cluster::prepare(&spec)?;
        Ok(Cluster { spec })
    }

    fn pid(&self, node: usize) -> Result<Pid, String> {
        let path = self.spec.dir.join(format!("node{node}.pid"));
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        text.trim().parse().map(Pid::from_raw).map_err(|e| format!("{}: {e}", path.display()))
    }

    fn signal(&self, node: usize, signal: Signal) -> Result<(), String> {
        kill(self.pid(node)?, signal).map_err(|e| format!("{signal} to node {node}: {e}"))
    }

    fn socket(&self, node: usize) -> PathBuf {
        socket_path(&self.spec.dir, node)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in 0..NODES {
            let _ = self.signal(node, Signal::SIGCONT);
        }
        let _ = cluster::down(&self.spec.dir);
    }
}

/// `NAME=VALUE` of `--set`; the daemons check the name and the range.
fn parse_tunable(text: &str) -> Result<(String, u64), String> {
    let (name, value) = text.split_once('=').ok_or(format!("--set {text}: expected NAME=VALUE"))?;
    let value = value.parse().map_err(|e| format!("--set {text}: {e}"))?;
    Ok((name.to_owned(), value))
}

// ---- status

/// Status connections to the nodes, made again whenever one fails.
struct Watch {
    dir: PathBuf,
    connections: Vec<Option<DaemonConnection>>,
}

impl Watch {
    fn new(cluster: &Cluster) -> Watch {
        Watch { dir: cluster.spec.dir.clone(), connections: (0..NODES).map(|_| None).collect() }
    }

    /// Never ask a stopped node: the request would wait for STATUS_TIMEOUT.
    fn status(&mut self, node: usize) -> Option<NodeStatus> {
        if self.connections[node].is_none() {
            self.connections[node] = DaemonConnection::connect(&socket_path(&self.dir, node)).ok();
        }
        match self.connections[node].as_mut()?.status(STATUS_TIMEOUT) {
            Ok(status) => Some(status),
            Err(_) => {
                self.connections[node] = None;
                None
            }
        }
    }

    /// The status of each node of `nodes`, indexed by node number (`None` for the others).
    fn statuses(&mut self, nodes: &[usize]) -> Vec<Option<NodeStatus>> {
        (0..NODES).map(|node| if nodes.contains(&node) { self.status(node) } else { None }).collect()
    }
}

/// Every node of `nodes` serves, in one generation other than `old`, with map `nodes`.
fn settled(statuses: &[Option<NodeStatus>], nodes: &[usize], old: Option<u32>) -> bool {
    let Some(Some(first)) = nodes.first().map(|&n| &statuses[n]) else { return false };
    nodes.iter().all(|&n| {
        statuses[n].as_ref().is_some_and(|s| {
            s.serves()
                && s.generation == first.generation
                && Some(s.generation) != old
                && s.vnn_map.iter().map(|&p| p as usize).eq(nodes.iter().copied())
        })
    })
}

// ---- one scenario

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ColdStart,
    Kill,
    Stop,
    Restart,
    Resume,
}

/// What happened to whom.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    kind: Kind,
    node: Option<usize>,
    was_leader: bool,
    records: usize,
}

/// The client that asks at the fault: on `node`, opened before it (`db`) or as soon as the
/// node answers.
struct Client {
    node: usize,
    db: Option<ClusteredDb>,
    probe: Probe,
}

/// One row of the table: times in ms from the fault.
struct Row {
    scenario: Scenario,
    detected: Option<f64>,
    recovered: Option<f64>,
    served: Option<f64>,
    /// How long, in all, a node that should have served throughout did not.
    gap: f64,
    half_open: Option<(f64, f64)>,
    /// What the client's request returned, against what it should.
    answer: String,
    recoveries: u64,
    last_recovery_ms: Option<u64>,
    fixes: u64,
    /// For the victim's return: what the pass over every record found afterwards.
    check: Option<Check>,
}

/// Records lost and wrong after a victim came back, and whether that is allowed.
#[derive(Debug, Clone, Copy)]
struct Check {
    lost: usize,
    wrong: usize,
    fine: bool,
}

/// What a client asks for at the fault.
enum Probe {
    /// Read a record; `expect` is its value.
    Fetch { key: Vec<u8>, expect: Vec<u8> },
    /// Create a record (a cold cluster has none).
    Store { key: Vec<u8>, value: Vec<u8> },
}

impl Probe {
    /// Runs on `db` (or on a client that connects to `socket` as soon as it can); returns
    /// when it was answered and how the answer compares. `give_up` ends the wait for a
    /// node that will not come.
    fn run(
        self,
        db: Option<ClusteredDb>,
        socket: &Path,
        t0: Instant,
        give_up: &AtomicBool,
    ) -> (Option<f64>, String) {
        let db = match db {
            Some(db) => Ok(db),
            None => connect_when_up(socket, t0, give_up),
        };
        let result = db.and_then(|mut db| match &self {
            Probe::Fetch { key, expect } => {
                db.fetch(key).map_err(|e| e.to_string()).map(|found| match found {
                    Some(found) if &found == expect => "its value".to_string(),
                    Some(_) => "A WRONG VALUE".to_string(),
                    None => "NO RECORD (lost)".to_string(),
                })
            }
            Probe::Store { key, value } => db
                .store(key, &[value], StoreFlag::Replace)
                .map_err(|e| e.to_string())
                .map(|()| "stored".into()),
        });
        match result {
            Ok(answer) => (Some(ms(t0.elapsed())), answer),
            Err(err) => (None, format!("failed after {:.0} ms: {err}", ms(t0.elapsed()))),
        }
    }
}

/// A client of a node that is starting: it tries until the socket answers.
fn connect_when_up(socket: &Path, t0: Instant, give_up: &AtomicBool) -> Result<ClusteredDb, String> {
    loop {
        match ClusteredDb::open(socket, DB, CLIENT_TIMEOUT) {
            Ok(db) => return Ok(db),
            Err(err) if t0.elapsed() > CLIENT_TIMEOUT || give_up.load(Ordering::Relaxed) => {
                return Err(err.to_string())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)), // the daemon is starting
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// What to watch for after a fault.
struct Expect<'a> {
    /// Nodes that serve once it is over; the bench asks them (and only them) for status.
    serving: &'a [usize],
    /// Nodes that served before the fault and still should (not the victim): the time
    /// they do not serve is the cluster's outage.
    steady: &'a [usize],
    /// Whether their statuses (indexed by node) show that the change was noticed.
    noticed: &'a dyn Fn(&[Option<NodeStatus>]) -> bool,
    old_generation: Option<u32>,
}

/// When the change was noticed and when the cluster settled, from the fault.
#[derive(Debug, Default, Clone, Copy)]
struct Marks {
    detected: Option<f64>,
    recovered: Option<f64>,
    /// How long, in all, some node of `Expect::steady` did not serve.
    gap: f64,
    /// First and last time a node heard a peer whose link from it was down.
    half_open: Option<(f64, f64)>,
    /// A node that should serve whose process is gone: nothing more will happen.
    exited: Option<usize>,
}

/// Polls until the cluster settled and the client was answered (or SCENARIO_TIMEOUT).
fn follow(watch: &mut Watch, t0: Instant, expect: &Expect, probe_done: &dyn Fn() -> bool) -> Marks {
    let mut marks = Marks::default();
    let mut polled = 0.0;
    loop {
        let statuses = watch.statuses(expect.serving);
        let now = ms(t0.elapsed());
        if marks.detected.is_none() && (expect.noticed)(&statuses) {
            marks.detected = Some(now);
        }
        if marks.recovered.is_none() && settled(&statuses, expect.serving, expect.old_generation) {
            marks.recovered = Some(now);
        }
        if statuses.iter().flatten().any(|s| s.nodes.iter().any(PeerStatus::is_half_open)) {
            marks.half_open = Some((marks.half_open.map_or(now, |(first, _)| first), now));
        }
        if expect.steady.iter().any(|&n| !statuses[n].as_ref().is_some_and(NodeStatus::serves)) {
            marks.gap += now - polled;
        }
        polled = now;
        marks.exited =
            expect.serving.iter().copied().find(|&n| cluster::running_pid(&watch.dir, n).is_none());
        let over = marks.detected.is_some() && marks.recovered.is_some() && probe_done();
        if over || marks.exited.is_some() || t0.elapsed() > SCENARIO_TIMEOUT {
            return marks;
        }
        std::thread::sleep(POLL);
    }
}

/// Recoveries led, records fixed, per node, as last seen.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    recoveries: u64,
    fixes: u64,
}

struct Run {
    cluster: Cluster,
    records: Records,
    moved: usize,
    faults: Vec<Fault>,
    stall: Duration,
    counters: [Option<Counters>; NODES],
    rows: Vec<Row>,
    /// Records that were ever migrated off their LMASTER: a copy may be left elsewhere, so
    /// they can outlive the death of the node that holds them.
    travelled: BTreeSet<usize>,
}

impl Run {
    fn scenarios(&mut self) -> Result<(), String> {
        self.print_header();
        self.cold_start()?;
        let load = fill(&self.cluster.spec.dir, &self.records)?;
        let sizes: Vec<usize> = self.records.by_lmaster.iter().map(Vec::len).collect();
        println!(
            "load: {} records in {:.2} s ({:.0}/s), each created on its LMASTER (node 0/1/2: {sizes:?})",
            load.missing + load.wrong + load.kept,
            load.seconds,
            self.records.count as f64 / load.seconds
        );
        for fault in self.faults.clone() {
            let (kind, back, victim_leads) = match fault {
                Fault::Kill => (Kind::Kill, Kind::Restart, false),
                Fault::Stop => (Kind::Stop, Kind::Resume, false),
                Fault::Leader => (Kind::Kill, Kind::Restart, true),
            };
            let victim = self.pick_victim(victim_leads)?;
            self.failure(kind, victim)?;
            self.join(back, victim)?;
            let found = fill(&self.cluster.spec.dir, &self.records)?;
            let check = self.check(kind, victim, found);
            if let Some(row) = self.rows.last_mut() {
                row.check = Some(check);
            }
        }
        Ok(())
    }

    fn print_header(&self) {
        let spec = &self.cluster.spec;
        println!(
            "bench recovery: {NODES} nodes on {}..{}, {} records of {} bytes, {} moved to each victim, dir {}",
            spec.address(0),
            spec.address(NODES - 1),
            self.records.count,
            self.records.value_size,
            self.moved,
            spec.dir.display()
        );
    }

    fn cold_start(&mut self) -> Result<(), String> {
        let all: Vec<usize> = (0..NODES).collect();
        let map: Vec<Pnn> = all.iter().map(|&n| n as Pnn).collect();
        let key = (0..)
            .map(|i| format!("cold-{i}").into_bytes())
            .find(|k| lmaster_of(k, &map) != 0)
            .unwrap_or_default();
        let probe = Probe::Store { key, value: b"cold".to_vec() };
        let noticed = |s: &[Option<NodeStatus>]| {
            s.iter().enumerate().all(|(n, s)| s.as_ref().is_some_and(|s| sees_up(s, &all, n)))
        };
        let expect = Expect { serving: &all, steady: &[], noticed: &noticed, old_generation: None };
        let t0 = Instant::now();
        for node in 0..NODES {
            cluster::start_node(&self.cluster.spec, node)?;
        }
        let scenario = Scenario { kind: Kind::ColdStart, node: None, was_leader: false, records: 0 };
        self.measure(scenario, t0, &expect, Client { node: 0, db: None, probe })?;
        self.print_tunables();
        Ok(())
    }

    fn print_tunables(&self) {
        let Ok(mut daemon) = DaemonConnection::connect(&self.cluster.socket(0)) else { return };
        let names = [
            "KeepaliveIntervalMs",
            "KeepaliveLimit",
            "ElectionTimeoutMs",
            "RecoverIntervalMs",
            "RecoverTimeoutMs",
        ];
        let values: Vec<String> = names
            .iter()
            .map(|name| match daemon.get_tunable(name, STATUS_TIMEOUT) {
                Ok(value) => format!("{name}={value}"),
                Err(_) => format!("{name}=?"),
            })
            .collect();
        println!("tunables: {}", values.join(" "));
    }

    /// The leader, or the highest-numbered node that does not lead.
    fn pick_victim(&mut self, leader: bool) -> Result<usize, String> {
        let mut watch = Watch::new(&self.cluster);
        let lead = watch.status(0).and_then(|s| s.leader).ok_or("node 0 names no leader")? as usize;
        Ok(if leader { lead } else { (0..NODES).rev().find(|&n| n != lead).unwrap_or(0) })
    }

    /// The victim takes `moved` records from the other two, half each; returns the first
    /// record taken from `from` (its copy stays there).
    fn move_to(&mut self, victim: usize, from: usize, other: usize) -> Result<(usize, f64), String> {
        let start = Instant::now();
        let mut db =
            ClusteredDb::open(&self.cluster.socket(victim), DB, CLIENT_TIMEOUT).map_err(|e| e.to_string())?;
        let half = self.moved.div_ceil(2).max(1);
        let keys = self.records.by_lmaster[from]
            .iter()
            .take(half)
            .chain(self.records.by_lmaster[other].iter().take(half));
        for &i in keys.take(self.moved.max(1)) {
            db.fetch(&key(i)).map_err(|e| format!("moving a record to node {victim}: {e}"))?;
            self.travelled.insert(i);
        }
        Ok((self.records.by_lmaster[from][0], ms(start.elapsed())))
    }

    fn failure(&mut self, kind: Kind, victim: usize) -> Result<(), String> {
        let survivors: Vec<usize> = (0..NODES).filter(|&n| n != victim).collect();
        let (holder, client) = (survivors[0], survivors[1]);
        let (probe_record, move_ms) = self.move_to(victim, holder, client)?;
        println!(
            "node {victim} took {} records from nodes {holder} and {client} in {move_ms:.0} ms",
            self.moved.max(1)
        );
        let mut watch = Watch::new(&self.cluster);
        let before = watch.status(client).ok_or(format!("node {client} does not answer"))?;
        let was_leader = before.leader == Some(victim as Pnn);
        let db =
            ClusteredDb::open(&self.cluster.socket(client), DB, CLIENT_TIMEOUT).map_err(|e| e.to_string())?;
        // A stalled victim keeps its records until it is back: the client measures the
        // others serving a record of their own meanwhile. A killed one's are given back.
        let probe_record = match kind {
            Kind::Stop => *self.records.by_lmaster[client].last().unwrap_or(&probe_record),
            _ => probe_record,
        };
        let probe = Probe::Fetch { key: key(probe_record), expect: self.records.value(probe_record) };
        self.travelled.insert(probe_record);
        let noticed = |s: &[Option<NodeStatus>]| s.iter().flatten().any(|s| s.sees_dead(victim as Pnn));
        let expect = Expect {
            serving: &survivors,
            steady: &survivors,
            noticed: &noticed,
            old_generation: Some(before.generation),
        };
        self.snapshot_counters();
        if kind == Kind::Stop {
            self.closed_seen(&mut watch, victim)?;
        }
        let t0 = Instant::now();
        match kind {
            Kind::Stop => self.cluster.signal(victim, Signal::SIGSTOP)?,
            _ => cluster::kill_node(&self.cluster.spec.dir, victim)?,
        }
        let scenario = Scenario { kind, node: Some(victim), was_leader, records: self.records.count };
        self.measure(scenario, t0, &expect, Client { node: client, db: Some(db), probe })?;
        if kind == Kind::Stop {
            // The stall's length, whatever the others did meanwhile.
            std::thread::sleep(self.stall.saturating_sub(t0.elapsed()));
            println!("node {victim} stayed stopped for {:.0} ms", ms(t0.elapsed()));
        }
        Ok(())
    }

    /// Waits until the victim has seen this bench's database connection to it closed
    /// (`move_to`): its fencing watchdog kills the processes whose attached clients a
    /// stalled daemon has, and this bench is no client of a node it stops. The client
    /// socket's event loop takes a closed connection no later than the batch that answers
    /// the next request, so two status answers after the close mean it was taken.
    fn closed_seen(&self, watch: &mut Watch, victim: usize) -> Result<(), String> {
        for _ in 0..2 {
            watch.status(victim).ok_or(format!("node {victim} does not answer"))?;
        }
        Ok(())
    }

    fn join(&mut self, kind: Kind, node: usize) -> Result<(), String> {
        let all: Vec<usize> = (0..NODES).collect();
        let mut watch = Watch::new(&self.cluster);
        let old = watch.status((node + 1) % NODES).map(|s| s.generation);
        // A record another node holds: it must move to the node that came back.
        let record = *self.records.by_lmaster[(node + 1) % NODES].last().unwrap_or(&0);
        let probe = Probe::Fetch { key: key(record), expect: self.records.value(record) };
        self.travelled.insert(record);
        let noticed = |s: &[Option<NodeStatus>]| {
            let others = s.iter().enumerate().filter(|&(n, _)| n != node);
            others.into_iter().all(|(_, s)| s.as_ref().is_some_and(|s| s.sees_up(node as Pnn)))
        };
        let others: Vec<usize> = all.iter().copied().filter(|&n| n != node).collect();
        let expect = Expect { serving: &all, steady: &others, noticed: &noticed, old_generation: old };
        let t0 = Instant::now();
        match kind {
            Kind::Resume => self.cluster.signal(node, Signal::SIGCONT)?,
            _ => {
                self.counters[node] = Some(Counters::default());
                cluster::start_node(&self.cluster.spec, node)?
            }
        }
        let scenario = Scenario { kind, node: Some(node), was_leader: false, records: self.records.count };
        self.measure(scenario, t0, &expect, Client { node, db: None, probe })
    }

    /// Follows the cluster from the fault at `t0` while the client asks, and adds the row.
    fn measure(
        &mut self,
        scenario: Scenario,
        t0: Instant,
        expect: &Expect,
        client: Client,
    ) -> Result<(), String> {
        let socket = self.cluster.socket(client.node);
        let mut watch = Watch::new(&self.cluster);
        let give_up = AtomicBool::new(false);
        let (marks, (served, answer)) = std::thread::scope(|scope| {
            let asked = scope.spawn(|| client.probe.run(client.db, &socket, t0, &give_up));
            let marks = follow(&mut watch, t0, expect, &|| asked.is_finished());
            give_up.store(true, Ordering::Relaxed);
            let answer = asked.join().unwrap_or((None, "the client panicked".into()));
            (marks, answer)
        });
        let (recoveries, last_recovery_ms, fixes) = self.count_recoveries(&mut watch, expect.serving);
        let row = Row {
            scenario,
            detected: marks.detected,
            recovered: marks.recovered,
            served,
            gap: marks.gap,
            half_open: marks.half_open,
            answer,
            recoveries,
            last_recovery_ms,
            fixes,
            check: None,
        };
        println!("{}", summary(&row));
        let settled = row.recovered.is_some();
        self.rows.push(row);
        match (marks.exited, settled) {
            (Some(node), _) => Err(format!(
                "node {node} exited; see {}",
                self.cluster.spec.dir.join(format!("node{node}.log")).display()
            )),
            (None, true) => Ok(()),
            (None, false) => Err(format!("the cluster did not settle within {SCENARIO_TIMEOUT:?}")),
        }
    }

    fn snapshot_counters(&mut self) {
        let mut watch = Watch::new(&self.cluster);
        for node in 0..NODES {
            if let Some(status) = watch.status(node) {
                self.counters[node] = Some(counters(&status));
            }
        }
    }

    /// Recoveries led and records fixed since the last snapshot, and the leader's last
    /// recovery time.
    fn count_recoveries(&mut self, watch: &mut Watch, nodes: &[usize]) -> (u64, Option<u64>, u64) {
        let (mut recoveries, mut fixes, mut last) = (0, 0, None);
        for &node in nodes {
            let Some(status) = watch.status(node) else { continue };
            let now = counters(&status);
            let before = self.counters[node].unwrap_or_default();
            recoveries += now.recoveries.saturating_sub(before.recoveries);
            fixes += now.fixes.saturating_sub(before.fixes);
            if status.leader == Some(node as Pnn) {
                last = Some(status.stats.last_recovery_ms);
            }
            self.counters[node] = Some(now);
        }
        (recoveries, last.filter(|_| recoveries > 0), fixes)
    }

    /// A killed victim's own records die with it (volatile databases), but those that once
    /// travelled may have left a copy behind. A stopped victim is alive: it must keep every
    /// record (a stall is no crash). No other record may be lost, and none may come back
    /// wrong.
    fn check(&self, fault: Kind, victim: usize, found: FillReport) -> Check {
        let own = &self.records.by_lmaster[victim];
        let travelled = own.iter().filter(|i| self.travelled.contains(i)).count();
        let may_lose = match fault {
            Kind::Stop => 0..=0,
            _ => own.len() - travelled..=own.len(),
        };
        let fine = found.wrong == 0 && may_lose.contains(&found.missing);
        let verdict = match (fine, fault) {
            (true, _) => "as expected",
            (false, Kind::Stop) => "FAILED: a stalled node's acknowledged records must all be kept",
            (false, _) => "FAILED: only the killed node's own records may be lost",
        };
        println!(
            "check after node {victim} came back: {} records kept, {} lost (node {victim} held {} of its own, \
             {travelled} of them with copies elsewhere), {} wrong: {verdict}; refilled in {:.2} s",
            found.kept,
            found.missing,
            own.len(),
            found.wrong,
            found.seconds
        );
        Check { lost: found.missing, wrong: found.wrong, fine }
    }

    fn print_table(&self) {
        println!();
        println!(
            "{:<30} {:>8} {:>9} {:>9} {:>9} {:>7} {:>5} {:>8} {:>8} {:>14}  goal",
            "scenario (ms from the fault)",
            "records",
            "detected",
            "recovered",
            "served",
            "outage",
            "recov",
            "last ms",
            "fixes",
            "records lost"
        );
        let cell = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
        for row in &self.rows {
            println!(
                "{:<30} {:>8} {:>9} {:>9} {:>9} {:>7} {:>5} {:>8} {:>8} {:>14}  {}",
                title(row),
                row.scenario.records,
                cell(row.detected),
                cell(row.recovered),
                cell(row.served),
                cell(Some(row.gap)),
                row.recoveries,
                row.last_recovery_ms.map_or("-".to_string(), |v| v.to_string()),
                row.fixes,
                row.check.map_or("-".to_string(), |c| lost_cell(&c)),
                goals(row).iter().map(|g| g.to_string()).collect::<Vec<_>>().join("; ")
            );
        }
    }
}

/// The victim's records lost (and wrong) in a check, with a word for whether that is allowed.
fn lost_cell(check: &Check) -> String {
    let wrong = if check.wrong > 0 { format!("+{} wrong ", check.wrong) } else { String::new() };
    format!("{} {wrong}{}", check.lost, if check.fine { "ok" } else { "FAILED" })
}

fn counters(status: &NodeStatus) -> Counters {
    Counters { recoveries: status.stats.recoveries_led, fixes: status.stats.records_fixed }
}

/// `status` of node `me` shows every other node of `nodes` alive with its link up.
fn sees_up(status: &NodeStatus, nodes: &[usize], me: usize) -> bool {
    nodes.iter().filter(|&&n| n != me).all(|&n| status.sees_up(n as Pnn))
}

fn title(row: &Row) -> String {
    let node = row.scenario.node.map_or(String::new(), |n| format!("node {n}"));
    let role = if row.scenario.was_leader { " (leader)" } else { "" };
    match row.scenario.kind {
        Kind::ColdStart => "cold start".into(),
        Kind::Kill => format!("kill -9 {node}{role}"),
        Kind::Stop => format!("SIGSTOP {node}{role}"),
        Kind::Restart => format!("rejoin {node} (restart)"),
        Kind::Resume => format!("rejoin {node} (SIGCONT)"),
    }
}

/// One goal of the issue, met or not.
struct Goal {
    what: &'static str,
    value: Option<f64>,
    limit: f64,
}

impl std::fmt::Display for Goal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.value {
            Some(v) if v <= self.limit => write!(f, "{} {v:.0}<={} ok", self.what, self.limit),
            Some(v) => write!(f, "{} {v:.0}>{} MISSED", self.what, self.limit),
            None => write!(f, "{} never (<={}) MISSED", self.what, self.limit),
        }
    }
}

/// The goals: hung node noticed <= 1 s; killed node served again <= 0.3 s (leader
/// <= 0.5 s); cold start and rejoin <= 1 s; the recovery itself <= 1 s up to 100k records,
/// <= 5 s up to 1M.
fn goals(row: &Row) -> Vec<Goal> {
    let recovery = row.recovered.zip(row.detected).map(|(r, d)| r - d);
    let recovery_limit = if row.scenario.records <= 100_000 { 1000.0 } else { 5000.0 };
    match row.scenario.kind {
        Kind::ColdStart | Kind::Restart | Kind::Resume => {
            vec![Goal { what: "served", value: row.served, limit: 1000.0 }]
        }
        Kind::Stop => vec![
            Goal { what: "detected", value: row.detected, limit: 1000.0 },
            Goal { what: "served", value: row.served, limit: 1000.0 },
            Goal { what: "recovery", value: recovery, limit: recovery_limit },
        ],
        Kind::Kill => vec![
            Goal {
                what: "served",
                value: row.served,
                limit: if row.scenario.was_leader { 500.0 } else { 300.0 },
            },
            Goal { what: "recovery", value: recovery, limit: recovery_limit },
        ],
    }
}

fn summary(row: &Row) -> String {
    let at = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{v:.0} ms"));
    let node = row.scenario.node.map_or("the nodes".to_string(), |n| format!("node {n}"));
    let change = match row.scenario.kind {
        Kind::ColdStart => "all nodes saw each other".to_string(),
        Kind::Kill | Kind::Stop => format!("{node} declared dead"),
        Kind::Restart | Kind::Resume => format!("{node} seen alive"),
    };
    let recovery = match row.last_recovery_ms {
        Some(ms) => format!("{} recoveries, the last {ms} ms, {} records fixed", row.recoveries, row.fixes),
        None => format!("{} recoveries led", row.recoveries),
    };
    let outage = match row.scenario.kind {
        Kind::ColdStart => String::new(),
        _ => format!(", the others not serving for {:.0} ms", row.gap),
    };
    // A dead peer is heard of until it is declared dead: only a joining one tells something.
    let joins = matches!(row.scenario.kind, Kind::Restart | Kind::Resume);
    let half_open = match row.half_open.filter(|_| joins) {
        Some((first, last)) => format!(
            "; a node heard a peer while its own link to it was down (what it sent there was lost) \
             from {first:.0} to {last:.0} ms"
        ),
        None => String::new(),
    };
    format!(
        "{}: {change} after {}, all serving after {} ({recovery}{outage}), client answered after {} with {}{half_open}",
        title(row),
        at(row.detected),
        at(row.recovered),
        at(row.served),
        row.answer
    )
}
