//! `rctdb bench churn`: smbd's open/close churn on a cluster, and what vacuuming (DESIGN
//! §8.5) does with it. Worker processes (smbd is multi-process) on every node each "open"
//! files — chainlock, store a share-mode-sized value, chainunlock — and "close" them again a
//! few opens later (delete, which leaves an empty record and tells the daemon). Every key is
//! used once, so without vacuuming each one stays behind as an empty record.
//!
//! The parent samples every node's `status` and file size while the workers run, so that
//! each operation can be placed inside or outside the moments vacuuming did work; after the
//! workload it waits for the vacuum backlog to drain and reads the nodes' files (read-only,
//! once nothing writes them any more) for the keys left behind.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::client::{ClusteredDb, DaemonConnection};
use crate::local::{StoreFlag, Tdb};
use crate::record::HEADER_LEN;
use crate::status::{NodeStatus, StatusControls};
use crate::tool::cluster::{ClusterSpec, RunningCluster};

/// The database the workers churn, like smbd's locking.tdb.
pub const DB: &str = "churn.tdb";
/// Every key of the bench starts with this.
pub const KEY_PREFIX: &str = "churn-";
/// How long a worker waits for a record to migrate to its node.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(30);
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);
/// Between two status samples while the workers run: the resolution at which operations
/// are placed inside or outside vacuum work.
const SAMPLE_EVERY: Duration = Duration::from_millis(200);
/// Between two looks at the backlog while it drains.
const DRAIN_POLL: Duration = Duration::from_millis(100);
/// The vacuum counter that moves even when a run finds nothing to do; every other
/// `vacuum_*` counter moves only when vacuuming does work.
const VACUUM_RUNS: &str = "vacuum_runs";

fn unix_ns(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
}

/// A wall clock read through `Instant`: one `SystemTime` read at the start, monotonic
/// offsets after it. Parent and workers share the wall clock, so their times line up.
#[derive(Clone, Copy)]
struct Clock {
    base_ns: u64,
    base: Instant,
}

impl Clock {
    fn new() -> Clock {
        Clock { base_ns: unix_ns(SystemTime::now()), base: Instant::now() }
    }

    fn ns(&self, at: Instant) -> u64 {
        self.base_ns + at.duration_since(self.base).as_nanos() as u64
    }

    fn now_ns(&self) -> u64 {
        self.ns(Instant::now())
    }
}

// ---- the worker process

/// What one worker process does: `count` keys `{prefix}{i}`, each opened and closed once.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    pub socket: PathBuf,
    pub prefix: String,
    pub count: usize,
    /// Files a worker keeps open at once: key i is closed after key i + window is opened.
    pub window: usize,
    pub value_size: usize,
    /// Where the worker writes one line per operation: `o|c START_NS DURATION_NS`.
    pub out: PathBuf,
}

/// The body of `rctdb bench churn-worker`: attaches, prints `ready`, waits for a line on
/// stdin, churns, writes its latencies.
pub fn churn_worker(spec: &WorkerSpec) -> Result<(), String> {
    let mut db = ClusteredDb::open(&spec.socket, DB, MIGRATE_TIMEOUT).map_err(|e| e.to_string())?;
    println!("ready");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let mut go = String::new();
    std::io::stdin().read_line(&mut go).map_err(|e| format!("waiting for the start: {e}"))?;
    let clock = Clock::new();
    let mut ops = Vec::with_capacity(spec.count * 2);
    let mut open = VecDeque::with_capacity(spec.window + 1);
    for i in 0..spec.count {
        let key = format!("{}{i}", spec.prefix).into_bytes();
        let value = share_mode_entry(&key, spec.value_size);
        let t = Instant::now();
        open_file(&mut db, &key, &value)
            .map_err(|e| format!("open {}: {e}", String::from_utf8_lossy(&key)))?;
        ops.push(Op { close: false, start_ns: clock.ns(t), duration_ns: t.elapsed().as_nanos() as u64 });
        open.push_back(key);
        if open.len() > spec.window {
            close_oldest(&mut db, &mut open, &clock, &mut ops)?;
        }
    }
    while !open.is_empty() {
        close_oldest(&mut db, &mut open, &clock, &mut ops)?;
    }
    write_ops(&spec.out, &ops)
}

/// A value shaped like a share-mode entry: the key, then filler, `size` bytes in all.
fn share_mode_entry(key: &[u8], size: usize) -> Vec<u8> {
    key.iter().copied().chain(std::iter::repeat(b'.')).take(size.max(1)).collect()
}

fn open_file(db: &mut ClusteredDb, key: &[u8], value: &[u8]) -> crate::error::Result<()> {
    db.chainlock(key)?;
    let stored = db.store(key, &[value], StoreFlag::Replace);
    let unlocked = db.chainunlock(key);
    stored.and(unlocked)
}

fn close_oldest(
    db: &mut ClusteredDb,
    open: &mut VecDeque<Vec<u8>>,
    clock: &Clock,
    ops: &mut Vec<Op>,
) -> Result<(), String> {
    let Some(key) = open.pop_front() else { return Ok(()) };
    let t = Instant::now();
    db.delete(&key).map_err(|e| format!("close {}: {e}", String::from_utf8_lossy(&key)))?;
    ops.push(Op { close: true, start_ns: clock.ns(t), duration_ns: t.elapsed().as_nanos() as u64 });
    Ok(())
}

fn write_ops(path: &Path, ops: &[Op]) -> Result<(), String> {
    let file = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = BufWriter::new(file);
    for op in ops {
        let kind = if op.close { 'c' } else { 'o' };
        writeln!(out, "{kind} {} {}", op.start_ns, op.duration_ns)
            .map_err(|e| format!("{}: {e}", path.display()))?;
    }
    out.flush().map_err(|e| format!("{}: {e}", path.display()))
}

/// One operation a worker timed.
#[derive(Debug, Clone, Copy)]
struct Op {
    close: bool,
    start_ns: u64,
    duration_ns: u64,
}

fn read_ops(path: &Path) -> Result<Vec<Op>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .map(|line| {
            let mut words = line.split(' ');
            let kind = words.next();
            let start = words.next().and_then(|w| w.parse().ok());
            let duration = words.next().and_then(|w| w.parse().ok());
            match (kind, start, duration) {
                (Some(kind @ ("o" | "c")), Some(start_ns), Some(duration_ns)) => {
                    Ok(Op { close: kind == "c", start_ns, duration_ns })
                }
                _ => Err(format!("{}: malformed line {line:?}", path.display())),
            }
        })
        .collect()
}

// ---- the cluster

/// The sum of the counters that move when vacuuming does work.
fn vacuum_work(status: &NodeStatus) -> u64 {
    let counters = status.counters();
    let work = counters.iter().filter(|(name, _)| name.starts_with("vacuum_") && *name != VACUUM_RUNS);
    work.map(|(_, n)| n).sum()
}

/// A churn workload: `workers` processes on every node, `keys` keys in all (split evenly
/// over the workers; a remainder is left out).
#[derive(Debug, Clone)]
pub struct Workload {
    /// Keys are `churn-{tag}-{node}-{worker}-{i}`: a new tag gives keys no earlier run used.
    pub tag: String,
    pub workers: usize,
    pub keys: usize,
    pub window: usize,
    pub value_size: usize,
    /// The `rctdb` binary the workers run (`rctdb bench churn-worker`).
    pub worker_exe: PathBuf,
}

/// One status sample of every node while the workload runs.
#[derive(Debug, Clone)]
struct Sample {
    at_ns: u64,
    nodes: Vec<Option<NodeStatus>>,
    file_sizes: Vec<u64>,
}

/// Latency percentiles of a set of operations, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Percentiles {
    pub ops: usize,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Percentiles {
    fn of(mut durations: Vec<u64>) -> Percentiles {
        durations.sort_unstable();
        let at = |q: f64| {
            let i = ((durations.len() as f64 * q) as usize).min(durations.len().saturating_sub(1));
            durations.get(i).map_or(0.0, |&ns| ns as f64 / 1000.0)
        };
        Percentiles {
            ops: durations.len(),
            p50_us: at(0.50),
            p99_us: at(0.99),
            p999_us: at(0.999),
            max_us: at(1.0),
        }
    }
}

/// What a workload measured.
#[derive(Debug, Clone)]
pub struct WorkloadReport {
    /// Keys opened and closed.
    pub keys: usize,
    pub seconds: f64,
    pub ops: usize,
    pub all: Percentiles,
    pub opens: Percentiles,
    pub closes: Percentiles,
    /// Operations that overlapped a sampling window in which some node's vacuum counters
    /// moved, and those that did not.
    pub during_vacuum: Percentiles,
    pub outside_vacuum: Percentiles,
    pub windows_with_vacuum: usize,
    pub windows: usize,
    /// Every node's file size, about once a second: (seconds from the start, sizes).
    pub sizes: Vec<(f64, Vec<u64>)>,
}

impl WorkloadReport {
    pub fn ops_per_second(&self) -> f64 {
        self.ops as f64 / self.seconds.max(1e-9)
    }
}

/// How the backlog drained after a workload.
#[derive(Debug, Clone)]
pub struct DrainReport {
    pub drained: bool,
    /// From the end of the workload until the backlog was empty for good (or the bound).
    pub seconds: f64,
    /// Every node's status once drained (or at the bound).
    pub nodes: Vec<NodeStatus>,
}

/// What a node's file holds of the keys with a prefix, read after the workload.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeysInFile {
    /// Records of those keys: empty ones (deleted, not vacuumed) and ones with data.
    pub records: usize,
    pub with_data: usize,
    /// All records of the file, the bench's or not.
    pub all_records: usize,
}

/// tdb's free list of a node's file, as `tdbtool FILE info` and `freelist` report it.
#[derive(Debug, Clone, Copy, Default)]
pub struct FreeList {
    pub entries: u64,
    pub bytes: u64,
    pub largest: u64,
    pub dead_records: u64,
    /// Free records right after another free record: space tdb has not merged yet.
    pub uncoalesced: u64,
}

/// A cluster for churn workloads; stopped when dropped.
pub struct ChurnCluster {
    cluster: RunningCluster,
    nodes: usize,
    vacuum_interval_ms: u64,
    statuses: Vec<Option<DaemonConnection>>,
}

impl ChurnCluster {
    /// Starts `nodes` nodes in `dir` (node k on `first_address + k`) with VacuumInterval
    /// `vacuum_interval_ms` (0: off), and attaches the bench's database.
    pub fn start(
        nodes: usize,
        dir: &Path,
        first_address: Ipv4Addr,
        vacuum_interval_ms: u64,
    ) -> Result<ChurnCluster, String> {
        // Nodes a previous run left behind first, while their pid files still say who they are.
        let _ = crate::tool::cluster::down(dir);
        let _ = std::fs::remove_dir_all(dir);
        let mut spec = ClusterSpec::new(nodes, dir).with_tunable("VacuumIntervalMs", vacuum_interval_ms);
        spec.first_address = first_address;
        let cluster = RunningCluster::start(spec)?;
        let mut churn =
            ChurnCluster { cluster, nodes, vacuum_interval_ms, statuses: (0..nodes).map(|_| None).collect() };
        for node in 0..nodes {
            DaemonConnection::connect(&churn.cluster.socket(node))
                .and_then(|mut daemon| daemon.attach(DB, STATUS_TIMEOUT))
                .map_err(|e| format!("node {node}: attaching {DB}: {e}"))?;
        }
        churn.status(0)?;
        Ok(churn)
    }

    pub fn dir(&self) -> &Path {
        self.cluster.dir()
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    pub fn vacuum_interval_ms(&self) -> u64 {
        self.vacuum_interval_ms
    }

    /// Node `node`'s file of the bench's database.
    pub fn file(&self, node: usize) -> PathBuf {
        self.dir().join(format!("node{node}")).join(DB)
    }

    pub fn file_sizes(&self) -> Vec<u64> {
        (0..self.nodes).map(|node| std::fs::metadata(self.file(node)).map_or(0, |m| m.len())).collect()
    }

    /// Sets tunable `name` on every node.
    pub fn set_tunable(&mut self, name: &str, value: u64) -> Result<(), String> {
        for node in 0..self.nodes {
            DaemonConnection::connect(&self.cluster.socket(node))
                .and_then(|mut daemon| daemon.set_tunable(name, value, STATUS_TIMEOUT))
                .map_err(|e| format!("node {node}: setvar {name} {value}: {e}"))?;
        }
        if name.eq_ignore_ascii_case("VacuumIntervalMs") {
            self.vacuum_interval_ms = value;
        }
        Ok(())
    }

    pub fn status(&mut self, node: usize) -> Result<NodeStatus, String> {
        if self.statuses[node].is_none() {
            let daemon = DaemonConnection::connect(&self.cluster.socket(node)).map_err(|e| e.to_string())?;
            self.statuses[node] = Some(daemon);
        }
        match self.statuses[node].as_mut().map(|daemon| daemon.status(STATUS_TIMEOUT)) {
            Some(Ok(status)) => Ok(status),
            Some(Err(err)) => {
                self.statuses[node] = None;
                Err(format!("node {node}: status: {err}"))
            }
            None => Err(format!("node {node}: no status connection")),
        }
    }

    pub fn statuses(&mut self) -> Result<Vec<NodeStatus>, String> {
        (0..self.nodes).map(|node| self.status(node)).collect()
    }

    /// Runs the workload: starts the workers, lets them go at once, samples the nodes until
    /// every worker is done.
    pub fn run(&mut self, workload: &Workload) -> Result<WorkloadReport, String> {
        let workers = self.spawn_workers(workload)?;
        let clock = Clock::new();
        let done = AtomicBool::new(false);
        let (samples, ended, outcome) = std::thread::scope(|scope| {
            let sampler = scope.spawn(|| self.sample_until(&done, &clock));
            let t0 = clock.now_ns();
            let outcome = workers.go_and_wait();
            let ended = clock.now_ns();
            done.store(true, Ordering::Relaxed);
            let samples = sampler.join().unwrap_or_default();
            (samples, (t0, ended), outcome)
        });
        let outputs = outcome?;
        let mut ops = vec![];
        for out in &outputs {
            ops.extend(read_ops(out)?);
            let _ = std::fs::remove_file(out);
        }
        Ok(report(ops, &samples, ended))
    }

    fn spawn_workers(&self, workload: &Workload) -> Result<Workers, String> {
        let per_worker = workload.keys / (self.nodes * workload.workers).max(1);
        if per_worker == 0 {
            return Err(format!(
                "--keys {}: fewer keys than worker processes ({} nodes x {})",
                workload.keys, self.nodes, workload.workers
            ));
        }
        let scratch = self.dir().join("workers");
        std::fs::create_dir_all(&scratch).map_err(|e| format!("{}: {e}", scratch.display()))?;
        let mut workers = Workers { children: vec![], outputs: vec![] };
        for node in 0..self.nodes {
            for worker in 0..workload.workers {
                let out = scratch.join(format!("{}-{node}-{worker}.ops", workload.tag));
                let child = Command::new(&workload.worker_exe)
                    .arg("--socket")
                    .arg(self.cluster.socket(node))
                    .args(["bench", "churn-worker", "--prefix"])
                    .arg(format!("{KEY_PREFIX}{}-{node}-{worker}-", workload.tag))
                    .arg("--count")
                    .arg(per_worker.to_string())
                    .arg("--window")
                    .arg(workload.window.to_string())
                    .arg("--value-size")
                    .arg(workload.value_size.to_string())
                    .arg("--out")
                    .arg(&out)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::inherit())
                    .spawn()
                    .map_err(|e| format!("starting {}: {e}", workload.worker_exe.display()))?;
                workers.children.push(child);
                workers.outputs.push(out);
            }
        }
        workers.wait_ready()?;
        Ok(workers)
    }

    fn sample_until(&mut self, done: &AtomicBool, clock: &Clock) -> Vec<Sample> {
        let mut samples = vec![];
        let mut next = Instant::now();
        loop {
            let nodes = (0..self.nodes).map(|node| self.status(node).ok()).collect();
            samples.push(Sample { at_ns: clock.now_ns(), nodes, file_sizes: self.file_sizes() });
            if done.load(Ordering::Relaxed) {
                return samples;
            }
            next += SAMPLE_EVERY;
            // Sampling at a fixed rate, not waiting for an event.
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }

    /// Waits until no node has keys left to vacuum and no vacuum counter moves, for at
    /// most `bound`. With vacuuming off there is nothing to wait for.
    pub fn drain(&mut self, bound: Duration) -> Result<DrainReport, String> {
        let start = Instant::now();
        if self.vacuum_interval_ms == 0 {
            return Ok(DrainReport { drained: false, seconds: 0.0, nodes: self.statuses()? });
        }
        // Quiet for this long: a key handed to its LMASTER waits for that node's next run.
        let quiet_for = Duration::from_millis(self.vacuum_interval_ms.max(200) * 2);
        let mut quiet_since: Option<(Instant, Vec<u64>)> = None;
        loop {
            let nodes = self.statuses()?;
            let work: Vec<u64> = nodes.iter().map(vacuum_work).collect();
            let empty = nodes.iter().all(|n| n.vacuum_backlog == 0);
            quiet_since = match quiet_since {
                Some((since, before)) if empty && before == work => Some((since, before)),
                _ if empty => Some((Instant::now(), work)),
                _ => None,
            };
            let drained = quiet_since.as_ref().is_some_and(|(since, _)| since.elapsed() >= quiet_for);
            if drained || start.elapsed() >= bound {
                let seconds = quiet_since.map_or(start.elapsed(), |(since, _)| since - start).as_secs_f64();
                return Ok(DrainReport { drained, seconds, nodes });
            }
            std::thread::sleep(DRAIN_POLL); // polling the daemons' counters
        }
    }

    /// `drain`, then counts the keys with `prefix` left in every node's file, again after
    /// each further VacuumInterval until the counts stop changing (within `bound` in all).
    pub fn settle(
        &mut self,
        prefix: &str,
        bound: Duration,
    ) -> Result<(DrainReport, Vec<KeysInFile>), String> {
        let start = Instant::now();
        let mut drain = self.drain(bound)?;
        let mut left = self.keys_in_files(prefix)?;
        while self.vacuum_interval_ms > 0 && start.elapsed() < bound {
            std::thread::sleep(Duration::from_millis(self.vacuum_interval_ms.max(200)));
            let again = self.keys_in_files(prefix)?;
            if again == left {
                break;
            }
            left = again;
            drain = self.drain(bound.saturating_sub(start.elapsed()))?;
        }
        Ok((drain, left))
    }

    /// Counts, in every node's file, the records whose key starts with `prefix`. Reads the
    /// files directly (a read-only traverse), so call it only once the workload is over.
    pub fn keys_in_files(&self, prefix: &str) -> Result<Vec<KeysInFile>, String> {
        (0..self.nodes).map(|node| keys_in_file(&self.file(node), prefix.as_bytes())).collect()
    }

    /// How long every node's log is now, for `log_problems_since`.
    pub fn log_marks(&self) -> Vec<u64> {
        (0..self.nodes)
            .map(|node| std::fs::metadata(log_path(self.dir(), node)).map_or(0, |m| m.len()))
            .collect()
    }

    /// For every node that logged warnings or errors since `marks`: how many, and the first.
    pub fn log_problems_since(&self, marks: &[u64]) -> Vec<String> {
        let mut problems = vec![];
        for (node, &mark) in marks.iter().enumerate() {
            let path = log_path(self.dir(), node);
            let Ok(text) = std::fs::read(&path) else { continue };
            let text = String::from_utf8_lossy(text.get(mark as usize..).unwrap_or_default());
            let bad: Vec<&str> =
                text.lines().filter(|l| l.contains(" WARN ") || l.contains(" ERROR ")).collect();
            if let Some(first) = bad.first() {
                problems.push(format!(
                    "{}: {} warnings/errors, the first: {first}",
                    path.display(),
                    bad.len()
                ));
            }
        }
        problems
    }

    /// CPU time (user and system) every node's rctdbd has used so far, in seconds; NaN for
    /// a node whose process cannot be read.
    pub fn daemon_cpu_seconds(&self) -> Vec<f64> {
        (0..self.nodes).map(|node| cpu_seconds(&self.dir().join(format!("node{node}.pid")))).collect()
    }

    /// Every node's free list (`tdbtool`), or `None` where tdbtool is missing or failed.
    pub fn free_lists(&self) -> Vec<Option<FreeList>> {
        (0..self.nodes).map(|node| free_list(&self.file(node))).collect()
    }
}

/// Worker processes that have attached and wait for the start.
struct Workers {
    children: Vec<Child>,
    outputs: Vec<PathBuf>,
}

impl Workers {
    fn wait_ready(&mut self) -> Result<(), String> {
        for (i, child) in self.children.iter_mut().enumerate() {
            let Some(stdout) = child.stdout.take() else { return Err("worker without stdout".into()) };
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line).map_err(|e| format!("worker {i}: {e}"))?;
            if line.trim() != "ready" {
                return Err(format!("worker {i} did not start (it said {line:?}); see its message above"));
            }
        }
        Ok(())
    }

    /// Starts every worker at once, waits for all, returns their output files.
    fn go_and_wait(mut self) -> Result<Vec<PathBuf>, String> {
        let stdins: Vec<Option<ChildStdin>> = self.children.iter_mut().map(|c| c.stdin.take()).collect();
        for mut stdin in stdins.into_iter().flatten() {
            let _ = stdin.write_all(b"go\n");
        }
        let mut failed = vec![];
        for (i, child) in self.children.iter_mut().enumerate() {
            match child.wait() {
                Ok(status) if status.success() => {}
                Ok(status) => failed.push(format!("worker {i}: {status}")),
                Err(err) => failed.push(format!("worker {i}: {err}")),
            }
        }
        match failed.is_empty() {
            true => Ok(std::mem::take(&mut self.outputs)),
            false => Err(format!("workers failed ({}); their messages are above", failed.join(", "))),
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// Places every operation inside or outside the sampling windows in which vacuuming did
/// work, and gathers the percentiles and the file sizes.
fn report(mut ops: Vec<Op>, samples: &[Sample], (t0, ended): (u64, u64)) -> WorkloadReport {
    ops.sort_by_key(|op| op.start_ns);
    let last_end = ops.iter().map(|op| op.start_ns + op.duration_ns).max().unwrap_or(ended);
    let seconds = (last_end.saturating_sub(t0)) as f64 / 1e9;
    let windows = vacuum_windows(samples);
    // prefix[i]: windows with vacuum work among the first i.
    let prefix: Vec<usize> = std::iter::once(0)
        .chain(windows.iter().scan(0, |n, w| {
            *n += usize::from(w.2);
            Some(*n)
        }))
        .collect();
    let mut during = vec![];
    let mut outside = vec![];
    for op in &ops {
        let end = op.start_ns + op.duration_ns;
        let first = windows.partition_point(|w| w.1 <= op.start_ns);
        let past = windows.partition_point(|w| w.0 < end);
        let busy = past > first && prefix[past] > prefix[first];
        if busy { &mut during } else { &mut outside }.push(op.duration_ns);
    }
    let durations =
        |close: bool| ops.iter().filter(|op| op.close == close).map(|op| op.duration_ns).collect();
    WorkloadReport {
        // Every key is opened and closed once.
        keys: ops.len() / 2,
        seconds,
        ops: ops.len(),
        all: Percentiles::of(ops.iter().map(|op| op.duration_ns).collect()),
        opens: Percentiles::of(durations(false)),
        closes: Percentiles::of(durations(true)),
        during_vacuum: Percentiles::of(during),
        outside_vacuum: Percentiles::of(outside),
        windows_with_vacuum: windows.iter().filter(|w| w.2).count(),
        windows: windows.len(),
        sizes: sizes_each_second(samples, t0),
    }
}

/// (start, end, vacuum did work) of the stretch between each two samples.
fn vacuum_windows(samples: &[Sample]) -> Vec<(u64, u64, bool)> {
    samples
        .windows(2)
        .map(|pair| {
            let moved = pair[0].nodes.iter().zip(&pair[1].nodes).any(|(a, b)| match (a, b) {
                (Some(a), Some(b)) => vacuum_work(a) != vacuum_work(b),
                _ => false,
            });
            (pair[0].at_ns, pair[1].at_ns, moved)
        })
        .collect()
}

/// The first sample of every second from the start, and the last one.
fn sizes_each_second(samples: &[Sample], t0: u64) -> Vec<(f64, Vec<u64>)> {
    let mut sizes: Vec<(f64, Vec<u64>)> = vec![];
    let mut next_second = 0.0;
    for (i, sample) in samples.iter().enumerate() {
        let at = sample.at_ns.saturating_sub(t0) as f64 / 1e9;
        if at >= next_second || i + 1 == samples.len() {
            sizes.push((at, sample.file_sizes.clone()));
            next_second = at.floor() + 1.0;
        }
    }
    sizes
}

/// The CPU time of the process named by a pid file, from /proc/PID/stat.
fn cpu_seconds(pid_file: &Path) -> f64 {
    let read = || -> Option<f64> {
        let pid: u32 = std::fs::read_to_string(pid_file).ok()?.trim().parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name is in parentheses and may hold spaces: count fields after it.
        // utime and stime are fields 14 and 15, in USER_HZ, which Linux fixes at 100 a second.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(ticks as f64 / 100.0)
    };
    read().unwrap_or(f64::NAN)
}

fn keys_in_file(path: &Path, prefix: &[u8]) -> Result<KeysInFile, String> {
    let tdb = Tdb::open(path, 0, 0, libc::O_RDONLY, 0).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut found = KeysInFile::default();
    tdb.traverse_read(|key, value| {
        found.all_records += 1;
        if key.starts_with(prefix) {
            found.records += 1;
            found.with_data += usize::from(value.len() > HEADER_LEN);
        }
        true
    })
    .map_err(|e| format!("{}: traverse: {e}", path.display()))?;
    Ok(found)
}

/// The free list as tdbtool reports it: libtdb's `tdb_freelist_size` and `tdb_summary` are
/// not wrapped by `local::Tdb`, and a file's layout is tdb's business, not ours.
fn free_list(path: &Path) -> Option<FreeList> {
    let run = |command: &str| {
        let out = Command::new("tdbtool").arg(path).arg(command).stderr(Stdio::null()).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let info = run("info")?;
    let listing = run("freelist")?;
    let field = |name: &str| info.lines().find_map(|l| l.strip_prefix(name)).map(str::trim);
    let largest = field("Smallest/average/largest free records:")?.rsplit('/').next()?.parse().ok()?;
    // `total rec_len = [0x0001938c (103308)]`
    let bytes = listing
        .lines()
        .find_map(|l| l.strip_prefix("total rec_len = "))
        .and_then(|rest| rest.split('(').nth(1)?.split(')').next()?.parse().ok())
        .unwrap_or(0);
    Some(FreeList {
        entries: field("Number of free records:")?.parse().ok()?,
        bytes,
        largest,
        dead_records: field("Number of dead records:")?.parse().ok()?,
        uncoalesced: field("Number of uncoalesced records:")?.parse().ok()?,
    })
}

// ---- the bench

#[derive(Debug, Clone)]
pub struct ChurnBench {
    pub nodes: usize,
    /// Worker processes per node.
    pub workers: usize,
    /// Keys in all, each opened and closed once.
    pub keys: usize,
    pub window: usize,
    pub value_size: usize,
    /// VacuumInterval of every node; 0 turns vacuuming off.
    pub vacuum_interval_ms: u64,
    /// Also run with vacuuming off, on a fresh cluster, and print both side by side.
    pub compare: bool,
    /// Runs of each setting; with `compare` they alternate (on, off, off, on, ...), and the
    /// summary compares medians.
    pub rounds: usize,
    pub json: bool,
    pub dir: PathBuf,
    pub first_address: Ipv4Addr,
}

/// One run of the bench, with one VacuumInterval.
#[derive(Debug, Clone)]
pub struct ChurnRun {
    pub vacuum_interval_ms: u64,
    /// The machine's 1-minute load average when the run started.
    pub load: f64,
    pub workload: WorkloadReport,
    /// CPU time all daemons used from the start of the workload until drained, per key.
    pub daemon_cpu_us_per_key: f64,
    pub drain: DrainReport,
    pub sizes_after_drain: Vec<u64>,
    pub keys_left: Vec<KeysInFile>,
    pub free_lists: Vec<Option<FreeList>>,
}

impl ChurnRun {
    /// The share of the keys node `node`'s file still holds, in percent.
    pub fn garbage_percent(&self, node: usize) -> f64 {
        100.0 * self.keys_left[node].records as f64 / self.workload.keys.max(1) as f64
    }
}

pub fn bench_churn(bench: &ChurnBench) -> Result<(), String> {
    if bench.nodes == 0 || bench.workers == 0 || bench.window == 0 {
        return Err("--nodes, --workers and --open-files must be at least 1".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("finding the rctdb binary: {e}"))?;
    let mut runs = vec![];
    for round in 0..bench.rounds.max(1) {
        let mut intervals = vec![bench.vacuum_interval_ms];
        if bench.compare {
            // Alternate the order, so that neither setting always runs first.
            intervals = vec![bench.vacuum_interval_ms.max(1), 0];
            if round % 2 == 1 {
                intervals.reverse();
            }
        }
        for interval in intervals {
            let label = mode_label(interval);
            if !bench.json {
                eprintln!(
                    "bench churn: round {}, {label}: {} keys on {} nodes ...",
                    round + 1,
                    bench.keys,
                    bench.nodes
                );
            }
            let dir = bench.dir.join(format!("vacuum-{interval}"));
            runs.push(churn_run(bench, &exe, interval, &dir)?);
        }
    }
    if bench.json {
        println!("{}", json(bench, &runs));
    } else {
        print_report(bench, &runs);
    }
    Ok(())
}

fn mode_label(interval: u64) -> String {
    match interval {
        0 => "vacuum off".to_string(),
        ms => format!("vacuum {ms} ms"),
    }
}

/// The 1-minute load average: a benchmark on a shared machine says how busy it was.
fn load_average() -> f64 {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().and_then(|w| w.parse().ok()).unwrap_or(f64::NAN)
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn churn_run(bench: &ChurnBench, exe: &Path, interval: u64, dir: &Path) -> Result<ChurnRun, String> {
    let mut cluster = ChurnCluster::start(bench.nodes, dir, bench.first_address, interval)?;
    let load = load_average();
    let workload = Workload {
        tag: "bench".into(),
        workers: bench.workers,
        keys: bench.keys,
        window: bench.window,
        value_size: bench.value_size,
        worker_exe: exe.to_owned(),
    };
    let log_marks = cluster.log_marks();
    let cpu_before: f64 = cluster.daemon_cpu_seconds().iter().sum();
    let report = cluster.run(&workload)?;
    let bound = Duration::from_millis(interval * 4) + Duration::from_secs(30);
    let (drain, keys_left) = cluster.settle(KEY_PREFIX, bound)?;
    let cpu: f64 = cluster.daemon_cpu_seconds().iter().sum::<f64>() - cpu_before;
    let run = ChurnRun {
        vacuum_interval_ms: interval,
        load,
        daemon_cpu_us_per_key: cpu * 1e6 / report.keys.max(1) as f64,
        workload: report,
        drain,
        sizes_after_drain: cluster.file_sizes(),
        keys_left,
        free_lists: cluster.free_lists(),
    };
    for problem in cluster.log_problems_since(&log_marks) {
        eprintln!("{problem}");
    }
    Ok(run)
}

fn log_path(dir: &Path, node: usize) -> PathBuf {
    dir.join(format!("node{node}.log"))
}

fn kib(bytes: u64) -> String {
    format!("{}", bytes.div_ceil(1024))
}

fn print_report(bench: &ChurnBench, runs: &[ChurnRun]) {
    println!(
        "bench churn: {} nodes x {} worker processes, {} keys, {} open files per worker, {}-byte values",
        bench.nodes, bench.workers, bench.keys, bench.window, bench.value_size
    );
    println!("(op = open: chainlock+store+chainunlock, or close: delete; latencies in us; 'vac' = during");
    println!(
        " sampling windows of {} ms in which some node's vacuum counters moved)",
        SAMPLE_EVERY.as_millis()
    );
    println!();
    println!(
        "{:<16} {:>5} {:>9} {:>7} {:>7} {:>8} {:>8} {:>9} {:>9} {:>9}  {:>11} {:>9} {:>10}",
        "",
        "load",
        "ops/s",
        "seconds",
        "p50",
        "p99",
        "p99.9",
        "max",
        "p99 vac",
        "p99 other",
        "vac windows",
        "ops vac",
        "cpu us/key"
    );
    for run in runs {
        let w = &run.workload;
        println!(
            "{:<16} {:>5.1} {:>9.0} {:>7.1} {:>7.1} {:>8.1} {:>8.1} {:>9.0} {:>9.1} {:>9.1}  {:>5}/{:<5} {:>8.0}% {:>10.1}",
            mode_label(run.vacuum_interval_ms),
            run.load,
            w.ops_per_second(),
            w.seconds,
            w.all.p50_us,
            w.all.p99_us,
            w.all.p999_us,
            w.all.max_us,
            w.during_vacuum.p99_us,
            w.outside_vacuum.p99_us,
            w.windows_with_vacuum,
            w.windows,
            100.0 * w.during_vacuum.ops as f64 / w.ops.max(1) as f64,
            run.daemon_cpu_us_per_key
        );
    }
    println!("(cpu us/key: CPU time of all rctdbd from the start until drained, per key opened and closed)");
    println!();
    for run in runs {
        let w = &run.workload;
        println!(
            "  {:<14} opens p50/p99 {:.1}/{:.1}, closes p50/p99 {:.1}/{:.1}",
            mode_label(run.vacuum_interval_ms),
            w.opens.p50_us,
            w.opens.p99_us,
            w.closes.p50_us,
            w.closes.p99_us,
        );
    }
    print_ratio(runs);
    for run in runs {
        print_sizes(bench, run, &mode_label(run.vacuum_interval_ms));
    }
}

/// Vacuuming on against off: the medians of their runs.
fn print_ratio(runs: &[ChurnRun]) {
    let (on, off): (Vec<&ChurnRun>, Vec<&ChurnRun>) = runs.iter().partition(|run| run.vacuum_interval_ms > 0);
    if on.is_empty() || off.is_empty() {
        return;
    }
    let rate = |runs: &[&ChurnRun]| median(runs.iter().map(|r| r.workload.ops_per_second()).collect());
    let p99 = |runs: &[&ChurnRun]| median(runs.iter().map(|r| r.workload.all.p99_us).collect());
    println!(
        "  medians of {} runs each: ops/s on {:.0}, off {:.0}, on/off {:.2}; p99 on {:.0} us, off {:.0} us, on/off {:.2}",
        on.len().min(off.len()),
        rate(&on),
        rate(&off),
        rate(&on) / rate(&off),
        p99(&on),
        p99(&off),
        p99(&on) / p99(&off)
    );
}

fn print_sizes(bench: &ChurnBench, run: &ChurnRun, label: &str) {
    println!();
    let drain = match (run.vacuum_interval_ms, run.drain.drained) {
        (0, _) => "no vacuuming".to_string(),
        (_, true) => format!("backlog drained {:.1} s after the workload", run.drain.seconds),
        (_, false) => format!("backlog NOT drained after {:.1} s", run.drain.seconds),
    };
    println!("{label}: file sizes in KiB, seconds from the start ({drain}); then, once drained, the");
    println!("  bench's keys left in each file, as % of all keys, and tdb's free list (tdbtool info)");
    let sizes = &run.workload.sizes;
    let step = sizes.len().div_ceil(12).max(1);
    let shown: Vec<&(f64, Vec<u64>)> = sizes
        .iter()
        .enumerate()
        .filter(|(i, _)| i % step == 0 || i + 1 == sizes.len())
        .map(|(_, s)| s)
        .collect();
    let mut header = format!("  {:<6}", "node");
    for (at, _) in &shown {
        header.push_str(&format!(" {:>7}", format!("{at:.0}s")));
    }
    header.push_str(&format!(
        " {:>8}  {:>8} {:>7} {:>9} {:>8} {:>8}",
        "drained", "churn", "garb%", "free KiB", "free ent", "uncoal"
    ));
    println!("{header}");
    for node in 0..bench.nodes {
        let mut line = format!("  {node:<6}");
        for (_, at) in &shown {
            line.push_str(&format!(" {:>7}", kib(at[node])));
        }
        let free = run.free_lists[node];
        line.push_str(&format!(
            " {:>8}  {:>8} {:>7.2} {:>9} {:>8} {:>8}",
            kib(run.sizes_after_drain[node]),
            run.keys_left[node].records,
            run.garbage_percent(node),
            free.map_or("-".into(), |f| kib(f.bytes)),
            free.map_or("-".into(), |f| f.entries.to_string()),
            free.map_or("-".into(), |f| f.uncoalesced.to_string())
        ));
        println!("{line}");
    }
    for (node, status) in run.drain.nodes.iter().enumerate() {
        let counters = status.counters();
        let counters = counters.iter().filter(|(name, _)| name.starts_with("vacuum_"));
        let list: Vec<String> = counters.map(|(name, n)| format!("{name}={n}")).collect();
        println!("  node {node}: {} vacuum_backlog={}", list.join(" "), status.vacuum_backlog);
    }
}

fn json_percentiles(p: &Percentiles) -> serde_json::Value {
    serde_json::json!({
        "ops": p.ops, "p50_us": p.p50_us, "p99_us": p.p99_us, "p999_us": p.p999_us, "max_us": p.max_us,
    })
}

fn json(bench: &ChurnBench, runs: &[ChurnRun]) -> serde_json::Value {
    let run_json = |run: &ChurnRun| {
        let w = &run.workload;
        let left: Vec<_> = run
            .keys_left
            .iter()
            .map(|k| serde_json::json!({"records": k.records, "with_data": k.with_data, "all_records": k.all_records}))
            .collect();
        let free: Vec<_> = run
            .free_lists
            .iter()
            .map(|f| {
                f.map(|f| {
                    serde_json::json!({
                        "entries": f.entries, "bytes": f.bytes, "largest": f.largest,
                        "dead_records": f.dead_records, "uncoalesced": f.uncoalesced,
                    })
                })
            })
            .collect();
        let stats: Vec<_> = run
            .drain
            .nodes
            .iter()
            .map(|n| {
                let mut counters = serde_json::Map::new();
                counters.insert("vacuum_backlog".into(), n.vacuum_backlog.into());
                counters.extend(n.counters().into_iter().map(|(name, value)| (name, value.into())));
                counters
            })
            .collect();
        serde_json::json!({
            "vacuum_interval_ms": run.vacuum_interval_ms,
            "load": run.load,
            "daemon_cpu_us_per_key": run.daemon_cpu_us_per_key,
            "seconds": w.seconds,
            "ops": w.ops,
            "ops_per_s": w.ops_per_second().round(),
            "all": json_percentiles(&w.all),
            "opens": json_percentiles(&w.opens),
            "closes": json_percentiles(&w.closes),
            "during_vacuum": json_percentiles(&w.during_vacuum),
            "outside_vacuum": json_percentiles(&w.outside_vacuum),
            "windows_with_vacuum": w.windows_with_vacuum,
            "windows": w.windows,
            "sizes": w.sizes,
            "drained": run.drain.drained,
            "drain_seconds": run.drain.seconds,
            "sizes_after_drain": run.sizes_after_drain,
            "keys_left": left,
            "free_lists": free,
            "stats": stats,
        })
    };
    serde_json::json!({
        "nodes": bench.nodes,
        "workers": bench.workers,
        "keys": bench.keys,
        "open_files": bench.window,
        "value_size": bench.value_size,
        "runs": runs.iter().map(run_json).collect::<Vec<_>>(),
    })
}
