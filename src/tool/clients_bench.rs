//! `rctdb bench clients`: does a node with thousands of idle clients attached (smbd forks
//! one per SMB client) migrate records as fast as with a few? One record bounces between
//! nodes 0 and 1 of a fresh 3-node cluster (as `bench ring`) while node 0 has `few`, then
//! `many`, idle client processes attached, alternating for `rounds` rounds in one run.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use crate::tool::cluster::{socket_path, ClusterSpec, RunningCluster};
use crate::tool::idle_clients::IdleClients;
use crate::tool::ring::{ring, ring_key};

pub struct ClientsBench {
    pub few: usize,
    pub many: usize,
    pub seconds: f64,
    pub rounds: usize,
    pub dir: PathBuf,
    pub first_address: Ipv4Addr,
}

pub fn bench_clients(bench: &ClientsBench) -> Result<(), String> {
    const CLUSTER_NODES: usize = 3;
    if bench.many <= bench.few {
        return Err(format!("--many {} must exceed --few {}", bench.many, bench.few));
    }
    let key = ring_key(&[0, 1], CLUSTER_NODES, true);
    let mut spec = ClusterSpec::new(CLUSTER_NODES, &bench.dir);
    spec.first_address = bench.first_address;
    let cluster = RunningCluster::start(spec)?;
    let socket = socket_path(cluster.dir(), 0);
    let attach_timeout = Duration::from_secs(60);
    let _few = IdleClients::spawn(&socket, "idle.tdb", bench.few, attach_timeout)?;
    let (mut with_few, mut with_many) = (vec![], vec![]);
    let pids = [node_pid(&cluster, 0)?, node_pid(&cluster, 1)?];
    println!("bench clients: record bouncing between nodes 0 and 1, idle clients on node 0");
    println!(
        "  round  idle clients  migrations/s    p50 us    p99 us  switches/migr | node 0: threads   fds  RSS MiB"
    );
    let measure = |round: usize, idle: usize| -> Result<f64, String> {
        let switches_before = voluntary_switches(&pids)?;
        let run = ring(cluster.dir(), "ring.tdb", &[0, 1], &key, bench.seconds)?;
        let switches = (voluntary_switches(&pids)? - switches_before) as f64 / run.ops.max(1) as f64;
        println!(
            "  {round:>5}  {idle:>12}  {:>12.0}  {:>8.1}  {:>8.1}  {switches:>13.2} | {}",
            run.rate(),
            run.p50_us,
            run.p99_us,
            ProcessFigures::of(pids[0])?
        );
        Ok(run.rate())
    };
    for round in 1..=bench.rounds.max(1) {
        with_few.push(measure(round, bench.few)?);
        let extra = IdleClients::spawn(&socket, "idle.tdb", bench.many - bench.few, attach_timeout)?;
        with_many.push(measure(round, bench.many)?);
        drop(extra);
    }
    let (few, many) = (median(&mut with_few), median(&mut with_many));
    println!(
        "  median migrations/s: {few:.0} with {} idle clients, {many:.0} with {}: ratio {:.3}",
        bench.few,
        bench.many,
        many / few
    );
    println!("  (switches/migr: voluntary context switches of nodes 0 and 1 per migration, every thread)");
    Ok(())
}

/// Voluntary context switches of every thread of these processes: a thread wakeup each.
fn voluntary_switches(pids: &[i32]) -> Result<u64, String> {
    let mut total = 0;
    for pid in pids {
        let tasks = format!("/proc/{pid}/task");
        for task in std::fs::read_dir(&tasks).map_err(|e| format!("{tasks}: {e}"))?.flatten() {
            let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
            total += status
                .lines()
                .find_map(|line| line.strip_prefix("voluntary_ctxt_switches:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    Ok(total)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn node_pid(cluster: &RunningCluster, node: usize) -> Result<i32, String> {
    let path = cluster.dir().join(format!("node{node}.pid"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.trim().parse().map_err(|e| format!("{}: {e}", path.display()))
}

/// What a process costs: its threads, open files and resident memory (from /proc).
#[derive(Debug, Clone, Copy)]
pub struct ProcessFigures {
    pub threads: usize,
    pub fds: usize,
    pub rss_kib: usize,
}

impl ProcessFigures {
    pub fn of(pid: i32) -> Result<ProcessFigures, String> {
        let status_path = format!("/proc/{pid}/status");
        let status = std::fs::read_to_string(&status_path).map_err(|e| format!("{status_path}: {e}"))?;
        let field = |name: &str| -> Result<usize, String> {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
                .ok_or_else(|| format!("{status_path}: no {name}"))
        };
        let fd_dir = format!("/proc/{pid}/fd");
        let fds = std::fs::read_dir(&fd_dir).map_err(|e| format!("{fd_dir}: {e}"))?.count();
        Ok(ProcessFigures { threads: field("Threads:")?, fds, rss_kib: field("VmRSS:")? })
    }
}

impl std::fmt::Display for ProcessFigures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:>15}  {:>5}  {:>7.1}", self.threads, self.fds, self.rss_kib as f64 / 1024.0)
    }
}
