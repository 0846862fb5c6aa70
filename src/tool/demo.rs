//! `rctdb demo`: a 3-node cluster on loopback under a contended workload, one node killed
//! with SIGKILL and brought back, what the cluster did about it as it happened, a check
//! that no acknowledged update vanished, and a table of it all. Everything it starts is
//! stopped again, also on an error or Ctrl-C.
//!
//! The workload is worker processes (`rctdb demo-worker`), two per node, each incrementing
//! its own slot of random counters under the chain lock through `ClusteredDb`: every
//! counter is wanted on every node, so records keep migrating. A counter's value is
//! `worker=count` pairs, so the check can tell whose increments a counter holds.
//! Processes, not threads: tdb's fcntl chain locks do not exclude threads of one process.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::time::{clock_gettime, ClockId};

use super::cluster::{self, socket_path, ClusterSpec};
use crate::client::{ClusteredDb, DaemonConnection};
use crate::local::StoreFlag;
use crate::status::{NodeStatus, StatusControls};
use crate::wire::Pnn;

const NODES: usize = 3;
const VICTIM: usize = 2;
const WORKERS_PER_NODE: usize = 2;
const DB: &str = "demo.tdb";
/// Few counters for six workers on three nodes: most increments need a migration.
pub const DEFAULT_COUNTERS: usize = 32;
/// How long a worker's request may wait (a recovery freezes the databases meanwhile).
const WORKER_TIMEOUT: Duration = Duration::from_secs(15);
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a fault may take to be detected, recovered from and admitted again.
const FAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// How often the cluster is looked at while it handles a fault.
const FAULT_POLL: Duration = Duration::from_millis(2);
/// A worker reports its operations at least this often, and at once after a slow one.
const REPORT_EVERY_US: u64 = 20_000;

#[derive(Debug, Clone)]
pub struct Demo {
    pub seconds: f64,
    /// Where the cluster keeps its state; `None`: a fresh directory under $TMPDIR.
    pub dir: Option<PathBuf>,
    /// Leave the directory (logs, database files) in place at the end.
    pub keep: bool,
    pub first_address: Ipv4Addr,
    pub port: u16,
    pub counters: usize,
}

/// Microseconds on CLOCK_MONOTONIC: one clock for the demo and its worker processes.
fn now_us() -> u64 {
    clock_gettime(ClockId::CLOCK_MONOTONIC)
        .map_or(0, |t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn note_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C and SIGTERM end the demo through its normal clean-up instead of killing it.
fn catch_interrupts() -> Result<(), String> {
    let action = SigAction::new(SigHandler::Handler(note_interrupt), SaFlags::empty(), SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }.map_err(|e| format!("catching {signal}: {e}"))?;
    }
    Ok(())
}

fn check_interrupt() -> Result<(), String> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        true => Err("interrupted".into()),
        false => Ok(()),
    }
}

/// Sleeps `total`, in small steps so Ctrl-C is noticed at once.
fn pause(total: Duration) -> Result<(), String> {
    let end = now_us() + total.as_micros() as u64;
    while now_us() < end {
        check_interrupt()?;
        std::thread::sleep(Duration::from_micros((end - now_us()).min(50_000)));
        // a timed phase
    }
    check_interrupt()
}

// ---- the worker process

/// The body of `rctdb demo-worker`: attaches, prints `ready`, then increments random
/// counters until its stdin closes, printing `op DONE_US LATENCY_US` per increment, and
/// `done ACKED` at the end.
pub fn demo_worker(socket: &Path, name: &str, counters: usize) -> Result<(), String> {
    let mut db = ClusteredDb::open(socket, DB, WORKER_TIMEOUT).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop_on_eof = Arc::clone(&stop);
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
        stop_on_eof.store(true, Ordering::SeqCst);
    });
    let mut out = BufWriter::new(std::io::stdout().lock());
    let say = |out: &mut BufWriter<_>, line: String| writeln!(out, "{line}").map_err(|e| e.to_string());
    say(&mut out, "ready".into())?;
    out.flush().map_err(|e| e.to_string())?;
    let mut rng = now_us() ^ (u64::from(std::process::id()) << 32) | 1;
    let (mut acked, mut flushed_at) = (0u64, now_us());
    while !stop.load(Ordering::SeqCst) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let key = counter_key(rng as usize % counters.max(1));
        let started = now_us();
        match increment(&mut db, key.as_bytes(), name) {
            Ok(()) => {
                acked += 1;
                let done = now_us();
                say(&mut out, format!("op {done} {}", done - started))?;
                if done - flushed_at >= REPORT_EVERY_US || done - started >= REPORT_EVERY_US {
                    out.flush().map_err(|e| e.to_string())?;
                    flushed_at = done;
                }
            }
            Err(err) => {
                say(&mut out, format!("error {err}"))?;
                out.flush().map_err(|e| e.to_string())?;
                std::thread::sleep(Duration::from_millis(10)); // backing off a failing cluster
            }
        }
    }
    say(&mut out, format!("done {acked}"))?;
    out.flush().map_err(|e| e.to_string())
}

pub fn counter_key(index: usize) -> String {
    format!("counter-{index:02}")
}

/// Adds one to `worker`'s slot of the counter, under its chain lock. Acknowledged (`Ok`)
/// once the store returned: the increment is in the record then.
fn increment(db: &mut ClusteredDb, key: &[u8], worker: &str) -> Result<(), String> {
    db.chainlock(key).map_err(|e| e.to_string())?;
    let stored = db.fetch(key).map_err(|e| e.to_string()).and_then(|value| {
        let mut slots = parse_counter(&value.unwrap_or_default())?;
        *slots.entry(worker.to_owned()).or_default() += 1;
        db.store(key, &[format_counter(&slots).as_bytes()], StoreFlag::Replace).map_err(|e| e.to_string())
    });
    let unlocked = db.chainunlock(key).map_err(|e| e.to_string());
    stored.and(unlocked)
}

/// `worker=count` pairs separated by spaces.
pub fn parse_counter(value: &[u8]) -> Result<BTreeMap<String, u64>, String> {
    let text = std::str::from_utf8(value).map_err(|_| "a counter is not UTF-8".to_string())?;
    text.split_whitespace()
        .map(|pair| {
            let (worker, count) = pair.split_once('=').ok_or(format!("counter slot {pair:?}"))?;
            Ok((worker.to_owned(), count.parse().map_err(|_| format!("counter slot {pair:?}"))?))
        })
        .collect()
}

fn format_counter(slots: &BTreeMap<String, u64>) -> String {
    slots.iter().map(|(worker, count)| format!("{worker}={count}")).collect::<Vec<_>>().join(" ")
}

// ---- the workers, seen from the demo

/// What the workers reported: every operation's completion time and latency, in µs.
#[derive(Default)]
struct Ops {
    done: Vec<u64>,
    latency: Vec<u64>,
    errors: u64,
    last_error: Option<String>,
}

struct Worker {
    name: String,
    node: usize,
    child: Child,
    stdin: Option<ChildStdin>,
    /// Reads the worker's lines into `Ops`; ends with the count of its last line, `done N`.
    reader: Option<JoinHandle<Option<u64>>>,
}

impl Worker {
    fn start(
        exe: &Path,
        dir: &Path,
        node: usize,
        name: &str,
        counters: usize,
        ops: &Arc<Mutex<Ops>>,
    ) -> Result<Worker, String> {
        let mut child = Command::new(exe)
            .arg("--socket")
            .arg(socket_path(dir, node))
            .args(["demo-worker", "--name", name, "--counters", &counters.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting worker {name}: {e}"))?;
        let stdout = child.stdout.take().ok_or("worker without stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        match lines.next() {
            Some(Ok(line)) if line == "ready" => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("worker {name} on node {node} did not start: {other:?}"));
            }
        }
        let ops = Arc::clone(ops);
        let reader = std::thread::spawn(move || {
            let mut acked = None;
            for line in lines.map_while(Result::ok) {
                let mut words = line.splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("op"), Some(done), Some(latency)) => {
                        let mut ops = ops.lock().unwrap_or_else(|p| p.into_inner());
                        ops.done.push(done.parse().unwrap_or(0));
                        ops.latency.push(latency.parse().unwrap_or(0));
                    }
                    (Some("done"), Some(count), None) => acked = count.parse().ok(),
                    _ => {
                        let mut ops = ops.lock().unwrap_or_else(|p| p.into_inner());
                        ops.errors += 1;
                        ops.last_error = Some(line);
                    }
                }
            }
            acked
        });
        let stdin = child.stdin.take();
        Ok(Worker { name: name.to_owned(), node, child, stdin, reader: Some(reader) })
    }

    /// Closes its stdin; it finishes the increment it is in and says how many it did.
    fn stop(&mut self) -> Result<u64, String> {
        self.stdin = None;
        let status = self.child.wait().map_err(|e| e.to_string())?;
        // Its stdout is closed now, so the reader has read the last line.
        let acked = self.reader.take().and_then(|reader| reader.join().ok()).flatten();
        acked.ok_or(format!("worker {} on node {} ended ({status}) without a count", self.name, self.node))
    }
}

// ---- watching the nodes

/// Status connections to the nodes, made again when one fails (a node died or restarted).
struct Watch {
    dir: PathBuf,
    connections: Vec<Option<DaemonConnection>>,
    /// Migrations each node has reported, and the cluster's sum over restarts.
    last_migrations: Vec<u64>,
    migrations: u64,
}

impl Watch {
    fn new(dir: &Path) -> Watch {
        Watch {
            dir: dir.to_owned(),
            connections: (0..NODES).map(|_| None).collect(),
            last_migrations: vec![0; NODES],
            migrations: 0,
        }
    }

    fn view(&mut self, node: usize) -> Option<NodeStatus> {
        if self.connections[node].is_none() {
            self.connections[node] = DaemonConnection::connect(&socket_path(&self.dir, node)).ok();
        }
        match self.connections[node].as_mut()?.status(STATUS_TIMEOUT) {
            Ok(status) => {
                // A restarted node counts from zero again.
                let (last, now) = (self.last_migrations[node], status.stats.migrations_completed);
                self.migrations += if now >= last { now - last } else { now };
                self.last_migrations[node] = now;
                Some(status)
            }
            Err(_) => {
                self.connections[node] = None;
                None
            }
        }
    }

    /// Migrations completed in the whole cluster so far.
    fn migrations(&mut self, nodes: &[usize]) -> u64 {
        for &node in nodes {
            self.view(node);
        }
        self.migrations
    }
}

/// Whether `views` (of `nodes`) all serve in one generation other than `old`, with
/// exactly `nodes` in the map.
fn settled(views: &[Option<NodeStatus>], nodes: &[usize], old: Option<u32>) -> Option<String> {
    let first = views.first()?.as_ref()?;
    let all = views.iter().all(|v| {
        v.as_ref().is_some_and(|v| {
            v.serves()
                && v.generation == first.generation
                && v.vnn_map.iter().map(|&p| p as usize).eq(nodes.iter().copied())
        })
    });
    (all && Some(first.generation) != old).then(|| format!("{:#010x}", first.generation))
}

// ---- the run

/// One phase of the workload, between two marks on the monotonic clock.
struct Phase {
    name: String,
    nodes: usize,
    start_us: u64,
    end_us: u64,
    migrations: u64,
}

/// What happened around the kill and the restart, in ms from each.
#[derive(Default)]
struct FaultMarks {
    detected: Vec<(usize, f64)>,
    recovered: Option<(f64, String)>,
    recovery_ms: Option<u64>,
    resumed: Option<f64>,
    longest_pause_ms: f64,
    admitted: Option<(f64, String)>,
}

/// Stops what the demo started, whichever way it ends.
struct Cleanup {
    dir: PathBuf,
    keep: bool,
    workers: Vec<Worker>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            let _ = worker.child.kill();
            let _ = worker.child.wait();
        }
        let _ = cluster::down(&self.dir);
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Marks a directory as the demo's: only such a directory is reused and removed.
const MARKER: &str = "rctdb-demo";

fn prepare_dir(dir: &Path) -> Result<(), String> {
    let reused = dir.join(MARKER).is_file();
    let empty = std::fs::read_dir(dir).map_or(true, |mut entries| entries.next().is_none());
    if !reused && !empty {
        return Err(format!(
            "{}: exists and is not a directory of an earlier demo; give a new directory (the demo removes it at the end)",
            dir.display()
        ));
    }
    if reused {
        cluster::down(dir)?;
        std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(dir.join(MARKER), "a directory of `rctdb demo`, removed when it ends\n")
        .map_err(|e| format!("{}: {e}", dir.display()))
}

pub fn run_demo(demo: &Demo) -> Result<(), String> {
    if !(3.0..=3600.0).contains(&demo.seconds) {
        return Err(format!("--seconds {}: give 3 to 3600", demo.seconds));
    }
    if demo.counters == 0 || demo.counters > 10_000 {
        return Err(format!("--counters {}: give 1 to 10000", demo.counters));
    }
    let dir = demo
        .dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("rctdb-demo-{}", std::process::id())));
    prepare_dir(&dir)?;
    catch_interrupts()?;
    let mut run = Run::new(demo, &dir)?;
    let result = run.all();
    run.finish_progress();
    if result.is_err() && !INTERRUPTED.load(Ordering::SeqCst) && !demo.keep {
        // What went wrong is in the nodes' logs: keep them.
        run.cleanup.keep = true;
        eprintln!("rctdb demo: the cluster is stopped; its logs are kept in {}", dir.display());
    }
    result
}

struct Run {
    demo: Demo,
    spec: ClusterSpec,
    exe: PathBuf,
    ops: Arc<Mutex<Ops>>,
    watch: Watch,
    phases: Vec<Phase>,
    marks: FaultMarks,
    kill_us: u64,
    /// When the workload started, for the progress line.
    started_us: u64,
    /// Increments acknowledged by the workers of node VICTIM that ran before the kill, and
    /// by everyone else.
    acked_victim: BTreeMap<String, u64>,
    acked_others: BTreeMap<String, u64>,
    tty: bool,
    progress_shown: bool,
    cleanup: Cleanup,
}

impl Run {
    fn new(demo: &Demo, dir: &Path) -> Result<Run, String> {
        let mut spec = ClusterSpec::new(NODES, dir);
        spec.first_address = demo.first_address;
        spec.port = demo.port;
        Ok(Run {
            demo: demo.clone(),
            spec,
            exe: std::env::current_exe().map_err(|e| format!("finding the rctdb binary: {e}"))?,
            ops: Arc::default(),
            watch: Watch::new(dir),
            phases: vec![],
            marks: FaultMarks::default(),
            kill_us: 0,
            started_us: 0,
            acked_victim: BTreeMap::new(),
            acked_others: BTreeMap::new(),
            tty: std::io::stdout().is_terminal(),
            progress_shown: false,
            cleanup: Cleanup { dir: dir.to_owned(), keep: demo.keep, workers: vec![] },
        })
    }

    fn all(&mut self) -> Result<(), String> {
        let (steady, down, back) =
            (self.demo.seconds * 0.4, self.demo.seconds * 0.3, self.demo.seconds * 0.3);
        println!(
            "rctdb demo: {NODES} rctdbd on {}-{} (state in {}), {} workers incrementing {} counters under chain locks",
            self.spec.address(0),
            self.spec.address(NODES - 1),
            self.spec.dir.display(),
            NODES * WORKERS_PER_NODE,
            self.demo.counters
        );
        cluster::up(&self.spec)?;
        println!("  {NODES} nodes serve");
        for node in 0..NODES {
            self.start_workers(node, 0)?;
        }
        let all: Vec<usize> = (0..NODES).collect();
        self.started_us = now_us();
        self.phase("3 nodes", &all, steady)?;
        self.kill()?;
        let survivors: Vec<usize> = (0..NODES).filter(|&n| n != VICTIM).collect();
        self.phase(&format!("node {VICTIM} down"), &survivors, down)?;
        self.readmit()?;
        self.start_workers(VICTIM, WORKERS_PER_NODE)?;
        self.phase(&format!("node {VICTIM} back"), &all, back)?;
        for mut worker in std::mem::take(&mut self.cleanup.workers) {
            let acked = worker.stop()?;
            self.acked_others.insert(worker.name.clone(), acked);
        }
        let verdict = self.check()?;
        self.print_table(&verdict);
        self.print_statistics()?;
        match verdict.lost_updates() {
            0 => Ok(()),
            lost => Err(format!("{lost} acknowledged increments of surviving workers were lost")),
        }
    }

    fn start_workers(&mut self, node: usize, first: usize) -> Result<(), String> {
        for index in first..first + WORKERS_PER_NODE {
            let name = format!("{node}{}", (b'a' + index as u8) as char);
            let worker =
                Worker::start(&self.exe, &self.spec.dir, node, &name, self.demo.counters, &self.ops)?;
            self.cleanup.workers.push(worker);
        }
        Ok(())
    }

    fn clock_ms(&self, at_us: u64) -> f64 {
        (at_us.saturating_sub(self.kill_us)) as f64 / 1e3
    }

    /// Runs the workload for `seconds` with a progress line about once a second.
    fn phase(&mut self, name: &str, nodes: &[usize], seconds: f64) -> Result<(), String> {
        let start_us = now_us();
        let migrations_before = self.watch.migrations(nodes);
        let (mut seen, mut tick_us, mut tick_migrations) = (self.ops_len(), start_us, migrations_before);
        let end_us = start_us + (seconds * 1e6) as u64;
        while now_us() < end_us {
            pause(Duration::from_micros((end_us - now_us()).min(1_000_000)))?;
            let now = now_us();
            let migrations = self.watch.migrations(nodes);
            let (count, p99, errors) = {
                let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
                let mut latencies = ops.latency[seen..].to_vec();
                seen = ops.latency.len();
                (latencies.len(), p99_ms(&mut latencies), ops.errors)
            };
            let dt = (now - tick_us) as f64 / 1e6;
            let line = format!(
                "  {:>5.1} s  {name:<12} ops/s {:>7.0}   migrations/s {:>7.0}   p99 {:>6.2} ms{}",
                (now - self.started_us) as f64 / 1e6,
                count as f64 / dt,
                (migrations - tick_migrations) as f64 / dt,
                p99,
                if errors > 0 { format!("   worker errors {errors}") } else { String::new() }
            );
            self.progress(&line);
            (tick_us, tick_migrations) = (now, migrations);
        }
        self.finish_progress();
        let migrations = self.watch.migrations(nodes) - migrations_before;
        let phase =
            Phase { name: name.to_owned(), nodes: nodes.len(), start_us, end_us: now_us(), migrations };
        self.phases.push(phase);
        Ok(())
    }

    fn ops_len(&self) -> usize {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).latency.len()
    }

    fn progress(&mut self, line: &str) {
        if self.tty {
            print!("\r{line:<100}");
            let _ = std::io::stdout().flush();
            self.progress_shown = true;
        } else {
            println!("{line}");
        }
    }

    fn finish_progress(&mut self) {
        if self.progress_shown {
            println!();
            self.progress_shown = false;
        }
    }

    /// Kills node VICTIM and follows the survivors until they serve without it and the
    /// workload goes on; prints each step as it is seen.
    fn kill(&mut self) -> Result<(), String> {
        let survivors: Vec<usize> = (0..NODES).filter(|&n| n != VICTIM).collect();
        let old_generation = self.watch.view(survivors[0]).map(|v| v.generation);
        // Its workers stop first, so their counts are exact; what they did to records the
        // node still holds dies with it, as a volatile database's records do.
        let mut victims: Vec<Worker> = vec![];
        let workers = std::mem::take(&mut self.cleanup.workers);
        for worker in workers {
            match worker.node == VICTIM {
                true => victims.push(worker),
                false => self.cleanup.workers.push(worker),
            }
        }
        for mut worker in victims {
            let acked = worker.stop()?;
            self.acked_victim.insert(worker.name.clone(), acked);
        }
        // Killed from another thread: `kill_node` waits for the exit, and the survivors may
        // notice before it returns.
        let dir = self.spec.dir.clone();
        self.kill_us = now_us();
        let killer = std::thread::spawn(move || cluster::kill_node(&dir, VICTIM));
        println!("  +{:>7.1} ms  node {VICTIM} killed with SIGKILL (its workers stopped just before)", 0.0);
        let deadline = self.kill_us + FAULT_TIMEOUT.as_micros() as u64;
        loop {
            check_interrupt()?;
            let mut views = vec![];
            for &node in &survivors {
                let view = self.watch.view(node);
                let at = self.clock_ms(now_us());
                let sees_dead = view.as_ref().is_some_and(|v| v.sees_dead(VICTIM as Pnn));
                views.push(view);
                if sees_dead && !self.marks.detected.iter().any(|(n, _)| *n == node) {
                    println!("  +{at:>7.1} ms  node {node} sees node {VICTIM} dead");
                    self.marks.detected.push((node, at));
                }
            }
            let at = self.clock_ms(now_us());
            if self.marks.recovered.is_none() {
                if let Some(generation) = settled(&views, &survivors, old_generation) {
                    let leader = views.iter().flatten().find_map(|v| v.leader);
                    let recovery_ms = leader
                        .and_then(|l| survivors.iter().position(|&n| n as Pnn == l))
                        .and_then(|i| views[i].as_ref().map(|v| v.stats.last_recovery_ms));
                    println!(
                        "  +{at:>7.1} ms  recovery done: nodes {survivors:?} serve in generation {generation}{}",
                        recovery_ms.map_or(String::new(), |ms| format!(" (the leader's recovery took {})", whole_ms(ms)))
                    );
                    self.marks.recovered = Some((at, generation));
                    self.marks.recovery_ms = recovery_ms;
                }
            }
            if let Some((recovered_at, _)) = &self.marks.recovered {
                let recovered_us = self.kill_us + (recovered_at * 1e3) as u64;
                let first_after = self.first_op_after(recovered_us);
                if let Some(done) = first_after {
                    let at = self.clock_ms(done);
                    println!("  +{at:>7.1} ms  workload resumed: an increment completed after the recovery");
                    self.marks.resumed = Some(at);
                }
            }
            let all_detected = self.marks.detected.len() == survivors.len();
            if all_detected && self.marks.recovered.is_some() && self.marks.resumed.is_some() {
                break;
            }
            if now_us() > deadline {
                return Err(format!("node {VICTIM}'s death was not handled within {FAULT_TIMEOUT:?}"));
            }
            std::thread::sleep(FAULT_POLL);
        }
        killer.join().map_err(|_| format!("killing node {VICTIM} panicked"))??;
        self.marks.longest_pause_ms = self.longest_pause_ms(self.kill_us, now_us());
        println!(
            "             the longest time no increment completed: {:.1} ms",
            self.marks.longest_pause_ms
        );
        Ok(())
    }

    /// The earliest completion at or after `after_us` among the operations reported so far.
    /// Called every few ms: the newest reports are looked at first, all only once one is late
    /// enough.
    fn first_op_after(&self, after_us: u64) -> Option<u64> {
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        let latest = ops.done.iter().rev().take(10_000).copied().max()?;
        if latest < after_us {
            return None;
        }
        ops.done.iter().copied().filter(|&d| d >= after_us).min()
    }

    /// The longest stretch between `from_us` and `to_us` in which no operation completed.
    fn longest_pause_ms(&self, from_us: u64, to_us: u64) -> f64 {
        let mut done: Vec<u64> = {
            let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
            ops.done.iter().copied().filter(|&d| d >= from_us && d <= to_us).collect()
        };
        done.sort_unstable();
        let mut previous = from_us;
        let mut longest = 0;
        for d in done {
            longest = longest.max(d - previous);
            previous = d;
        }
        longest as f64 / 1e3
    }

    /// Starts node VICTIM again and waits until a recovery admitted it.
    fn readmit(&mut self) -> Result<(), String> {
        let all: Vec<usize> = (0..NODES).collect();
        let old_generation = self.watch.view(0).map(|v| v.generation);
        let start_us = now_us();
        cluster::start_node(&self.spec, VICTIM)?;
        println!("  +{:>7.1} ms  node {VICTIM} started again", 0.0);
        let deadline = start_us + FAULT_TIMEOUT.as_micros() as u64;
        loop {
            check_interrupt()?;
            let views: Vec<Option<NodeStatus>> = all.iter().map(|&n| self.watch.view(n)).collect();
            if let Some(generation) = settled(&views, &all, old_generation) {
                let at = (now_us() - start_us) as f64 / 1e3;
                println!(
                    "  +{at:>7.1} ms  node {VICTIM} admitted: nodes {all:?} serve in generation {generation}"
                );
                self.marks.admitted = Some((at, generation));
                return Ok(());
            }
            if now_us() > deadline {
                return Err(format!("node {VICTIM} was not admitted within {FAULT_TIMEOUT:?}"));
            }
            std::thread::sleep(FAULT_POLL);
        }
    }

    /// Reads every counter (the newest copy, cluster-wide) and compares each worker's slots
    /// with what it acknowledged.
    fn check(&mut self) -> Result<Verdict, String> {
        let mut db = ClusteredDb::open(&socket_path(&self.spec.dir, 0), DB, WORKER_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let mut counted: BTreeMap<String, u64> = BTreeMap::new();
        let mut bad = None;
        db.traverse(|_, value| {
            match parse_counter(value) {
                Ok(slots) => {
                    slots.into_iter().for_each(|(worker, count)| *counted.entry(worker).or_default() += count)
                }
                Err(err) => bad = Some(err),
            }
            true
        })
        .map_err(|e| e.to_string())?;
        if let Some(err) = bad {
            return Err(err);
        }
        let sum = |acked: &BTreeMap<String, u64>| -> (u64, u64) {
            let acked_sum = acked.values().sum();
            let counted_sum = acked.keys().map(|w| counted.get(w).copied().unwrap_or(0)).sum();
            (acked_sum, counted_sum)
        };
        let (others_acked, others_counted) = sum(&self.acked_others);
        let (victim_acked, victim_counted) = sum(&self.acked_victim);
        let invented = counted
            .keys()
            .filter(|w| !self.acked_others.contains_key(*w) && !self.acked_victim.contains_key(*w))
            .count();
        Ok(Verdict { others_acked, others_counted, victim_acked, victim_counted, invented })
    }

    fn print_table(&self, verdict: &Verdict) {
        println!();
        println!("  phase          nodes  seconds        ops    ops/s   p99 ms  migrations  migrations/s");
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        for phase in &self.phases {
            let mut latencies: Vec<u64> = ops
                .done
                .iter()
                .zip(&ops.latency)
                .filter(|(&d, _)| d >= phase.start_us && d < phase.end_us)
                .map(|(_, &l)| l)
                .collect();
            let seconds = (phase.end_us - phase.start_us) as f64 / 1e6;
            println!(
                "  {:<14} {:>5}  {seconds:>7.1}  {:>9}  {:>7.0}  {:>7.2}  {:>10}  {:>12.0}",
                phase.name,
                phase.nodes,
                latencies.len(),
                latencies.len() as f64 / seconds,
                p99_ms(&mut latencies),
                phase.migrations,
                phase.migrations as f64 / seconds
            );
        }
        drop(ops);
        let ms = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{v:.1} ms"));
        println!();
        println!("  node {VICTIM} killed (SIGKILL), times from the kill:");
        for (node, at) in &self.marks.detected {
            println!("    detected by node {node:<13} {:>10}", ms(Some(*at)));
        }
        let recovered = self.marks.recovered.as_ref().map(|(at, _)| *at);
        println!(
            "    recovery done                {:>10}{}",
            ms(recovered),
            self.marks
                .recovery_ms
                .map_or(String::new(), |ms| format!("   (the recovery itself: {})", whole_ms(ms)))
        );
        println!(
            "    workload resumed             {:>10}   (longest time with no increment done: {:.1} ms)",
            ms(self.marks.resumed),
            self.marks.longest_pause_ms
        );
        println!("  node {VICTIM} started again, times from the start:");
        println!(
            "    readmitted                   {:>10}",
            ms(self.marks.admitted.as_ref().map(|(at, _)| *at))
        );
        println!();
        println!("  check: each counter holds every worker's increments in its own slot");
        println!(
            "    surviving workers acknowledged {} increments; the counters hold {}: {}",
            verdict.others_acked,
            verdict.others_counted,
            match verdict.lost_updates() {
                0 if verdict.invented == 0 && verdict.others_counted == verdict.others_acked =>
                    "no lost update".to_string(),
                0 => "MORE THAN ACKNOWLEDGED".to_string(),
                lost => format!("{lost} LOST UPDATES"),
            }
        );
        println!(
            "    node {VICTIM}'s workers acknowledged {} before it died; {} of them survived, and the other {}\n    \
             were in records node {VICTIM} held when it died (a volatile database loses those with its node, as CTDB's do)",
            verdict.victim_acked,
            verdict.victim_counted,
            verdict.victim_acked.saturating_sub(verdict.victim_counted)
        );
    }
}

impl Run {
    /// A line per node from its `rctdb statistics` (node VICTIM's count from its restart).
    fn print_statistics(&self) -> Result<(), String> {
        println!();
        println!("  rctdb statistics per node:");
        println!("    node  client calls  migrations in/out  lock waits (max ms)  busiest counter here");
        for node in 0..NODES {
            let mut daemon =
                DaemonConnection::connect(&socket_path(&self.spec.dir, node)).map_err(|e| e.to_string())?;
            let stats = daemon.statistics(false, STATUS_TIMEOUT).map_err(|e| e.to_string())?;
            let c = &stats.counters;
            let hottest = stats
                .dbs
                .iter()
                .find(|db| db.name == DB)
                .and_then(|db| db.hot_keys.first())
                .map_or("-".to_string(), |hot| format!("{} ({} migrations)", hot.key, hot.migrations));
            println!(
                "    {node:>4}  {:>12}  {:>17}  {:>19}  {hottest}",
                c.client_calls,
                format!("{}/{}", c.migrations_completed, c.handovers),
                format!("{} ({})", c.lock_waits, c.lock_wait_ms_max)
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Verdict {
    others_acked: u64,
    others_counted: u64,
    victim_acked: u64,
    victim_counted: u64,
    /// Slots of workers that never ran: counters made up.
    invented: usize,
}

impl Verdict {
    /// Increments acknowledged by workers whose node lived, missing from the counters, plus
    /// anything that cannot be (more than acknowledged, or slots nobody wrote).
    fn lost_updates(&self) -> u64 {
        let impossible = self.others_counted > self.others_acked
            || self.victim_counted > self.victim_acked
            || self.invented > 0;
        self.others_acked.saturating_sub(self.others_counted) + u64::from(impossible)
    }
}

/// Milliseconds the daemons counted, which round down.
fn whole_ms(ms: u64) -> String {
    match ms {
        0 => "under 1 ms".into(),
        ms => format!("{ms} ms"),
    }
}

/// The 99th percentile of `latencies` (µs), in ms.
fn p99_ms(latencies: &mut [u64]) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    latencies.sort_unstable();
    latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)] as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_round_trip_and_refuse_garbage() {
        let slots = parse_counter(b"0a=3 1b=40").unwrap();
        assert_eq!(slots.get("1b"), Some(&40));
        assert_eq!(format_counter(&slots), "0a=3 1b=40");
        assert!(parse_counter(b"").unwrap().is_empty());
        assert!(parse_counter(b"0a=x").is_err());
        assert!(parse_counter(b"nopair").is_err());
    }

    #[test]
    fn the_99th_percentile_is_near_the_top() {
        let mut latencies: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        assert_eq!(p99_ms(&mut latencies), 991.0);
        assert_eq!(p99_ms(&mut []), 0.0);
    }

    #[test]
    fn a_surviving_workers_missing_increment_is_a_lost_update() {
        let fine =
            Verdict { others_acked: 10, others_counted: 10, victim_acked: 5, victim_counted: 3, invented: 0 };
        assert_eq!(fine.lost_updates(), 0);
        let lost = Verdict { others_counted: 8, ..fine };
        assert_eq!(lost.lost_updates(), 2);
        let made_up = Verdict { victim_counted: 6, ..fine };
        assert_eq!(made_up.lost_updates(), 1);
    }
}
