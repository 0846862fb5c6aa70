//! The `rctdb` command line: a local test cluster, status, records, benchmarks.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::{signal, SigHandler, Signal};
use rctdb::client::{ClusteredDb, DaemonConnection};
use rctdb::local::{flags, StoreFlag};
use rctdb::tool::churn::{bench_churn, churn_worker, ChurnBench, WorkerSpec};
use rctdb::tool::cluster::{self, ClusterSpec, RunningCluster};
use rctdb::tool::demo;
use rctdb::tool::statistics;
use rctdb::tool::local_bench::{bench_hit, bench_local, HitBench, LocalBench};
use rctdb::tool::recovery_bench::{bench_recovery, RecoveryBench};
use rctdb::tool::ring;
use rctdb::tunables::opcode;

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
#[command(name = "rctdb", version, about = "rctdb: a clustered TDB (CTDB's record migration, in Rust)")]
struct Cli {
    /// The local rctdbd's socket.
    #[arg(long, env = "RCTDB_SOCKET", global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch a 3-node cluster survive a crash under load.
    Demo {
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
        #[arg(long)]
        dir: Option<PathBuf>,
        #[arg(long)]
        keep: bool,
        #[arg(long, default_value = "127.0.0.61")]
        first_address: Ipv4Addr,
        #[arg(long, default_value_t = rctdb::daemon::DEFAULT_PORT)]
        port: u16,
        #[arg(long, default_value_t = demo::DEFAULT_COUNTERS)]
        counters: usize,
    },
    /// One worker process of `rctdb demo` (the demo starts these itself).
    #[command(hide = true)]
    DemoWorker {
        #[arg(long)]
        name: String,
        #[arg(long)]
        counters: usize,
    },
    /// A local test cluster of rctdbd on 127.0.0.x.
    Cluster {
        #[command(subcommand)]
        action: ClusterCmd,
    },
    /// This node, the state of its links, the generation and the attached databases.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// This node's counters: client calls, migrations, hop counts, lock waits, recoveries,
    /// and each database's hot keys.
    Statistics {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        reset: bool,
    },
    /// Store VALUE under KEY in database DB (the record migrates to this node).
    Writekey { db: String, key: String, value: String },
    /// Print the value of KEY in database DB (the record migrates to this node).
    Readkey { db: String, key: String },
    /// Delete KEY from database DB (the record migrates to this node, is left empty, and
    /// vacuuming removes it from every node).
    Deletekey { db: String, key: String },
    /// Every record of database DB in the cluster, newest copy.
    Dump { db: String },
    /// Print the value of tunable NAME on this node (names match in any case).
    Getvar {
        /// A tunable's name, e.g. KeepaliveInterval; `rctdb listvars` lists them.
        name: String,
    },
    /// Set tunable NAME to VALUE on this node only (timers are in milliseconds).
    Setvar {
        /// A tunable's name, e.g. KeepaliveInterval; `rctdb listvars` lists them.
        name: String,
        /// The new value; the daemon refuses values out of the tunable's range.
        value: u64,
    },
    /// Print every tunable of this node and its value, as `Name = value` lines.
    Listvars,
    /// Make this node fall silent to its peers, a fault for tests.
    ///
    /// The node stops sending to and answering its peers but keeps running and serving its
    /// socket, so the others see it fail; `rctdb unquiet` ends it.
    Quiet,
    /// End `quiet`: this node talks to its peers again.
    Unquiet,
    /// Make this node leave the cluster and exit.
    ///
    /// This is what ctdb calls `shutdown`; ctdb's `stop` keeps the daemon running.
    Stop,
    /// Measure rctdb.
    Bench {
        #[command(subcommand)]
        bench: BenchCmd,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Start N rctdbd writing DIR/nodes, DIR/nodeK.{sock,pid,log} and DIR/nodeK/, with the
    /// cluster lock DIR/cluster.lock; returns once every node serves.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long)]
        dir: PathBuf,
        /// Address of node 0; node K gets this plus K.
        #[arg(long, default_value = "127.0.0.11")]
        first_address: Ipv4Addr,
        #[arg(long, default_value_t = rctdb::daemon::DEFAULT_PORT)]
        port: u16,
    },
    /// Stop the nodes of the cluster in DIR.
    Down {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Kill node K of the cluster in DIR at once (SIGKILL), as a crash would.
    Kill {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: usize,
    },
    /// Start node K of the cluster in DIR again (after `kill`); returns once the cluster
    /// has admitted it and every node serves.
    Start {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        node: usize,
        #[arg(long, default_value_t = rctdb::daemon::DEFAULT_PORT)]
        port: u16,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LmasterPlacement {
    /// The key's LMASTER is one of the ring nodes (2 network messages per migration).
    Ring,
    /// The key's LMASTER is a node outside the ring (3 messages per migration).
    Other,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// fetch+store of every key through the C ABI and through raw libtdb, in alternating
    /// rounds in one process, and their ratio (C ABI / raw; 1.0 means no overhead).
    Local {
        /// Number of records.
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// Bytes per value.
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Measured rounds per side (each a pass over all keys); the median counts.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Hash chains (CTDB sizes its databases with 100001).
        #[arg(long, default_value_t = 100_003)]
        hash_size: i32,
        /// Robust mutexes instead of fcntl locks (TDB_MUTEX_LOCKING, as CTDB's volatile dbs).
        #[arg(long)]
        mutex: bool,
        /// Directory for the two database files (default: a fresh one under $TMPDIR).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// chainlock+fetch+store+chainunlock of records this node already holds, through the C
    /// ABI on a clustered database, against raw libtdb: the cost of a local hit.
    Hit {
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Directory of the one-node cluster the bench starts (and stops).
        #[arg(long, default_value = "/tmp/rctdb-bench-hit")]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.41")]
        address: Ipv4Addr,
    },
    /// One record bouncing between nodes of a fresh 3-node cluster, every call a migration;
    /// the loopback TCP round trip is measured in the same run as the floor.
    Ring {
        /// Nodes in the ring (2 or 3).
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, value_enum, default_value = "ring")]
        lmaster: LmasterPlacement,
        /// Directory of the cluster the bench starts (and stops).
        #[arg(long, default_value = "/tmp/rctdb-bench-ring")]
        dir: PathBuf,
        /// Address of node 0 of the bench cluster.
        #[arg(long, default_value = "127.0.0.31")]
        first_address: Ipv4Addr,
        /// Keep every CPU busy with spinning threads meanwhile: the nodes must not take the
        /// delays for deaths (the run reports how many they declared).
        #[arg(long)]
        cpu_hog: bool,
    },
    /// Faults on a fresh 3-node cluster holding N records: cold start, kill -9 of a node and
    /// of the leader, SIGSTOP of a node, and each victim coming back; milliseconds from the
    /// fault until it is detected, the cluster recovered, and a client's request served.
    Recovery {
        /// Records in the cluster, each created on its LMASTER (a third on each node).
        #[arg(long, default_value_t = 100_000)]
        records: usize,
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Records the victim takes from the other nodes before each fault; their previous
        /// holders keep copies, so the recovery gives them back.
        #[arg(long, default_value_t = 1000)]
        moved: usize,
        /// Directory of the cluster the bench starts (and stops); DIR/nodeK.log are its logs.
        #[arg(long, default_value = "/tmp/rctdb-bench-recovery")]
        dir: PathBuf,
        /// Address of node 0 of the bench cluster.
        #[arg(long, default_value = "127.0.0.51")]
        first_address: Ipv4Addr,
        /// A tunable every node starts with, NAME=VALUE (see `rctdb listvars`); may be repeated.
        #[arg(long = "set", value_name = "NAME=VALUE")]
        tunables: Vec<String>,
    },
    /// smbd's open/close churn on a fresh cluster: worker processes on every node open
    /// (chainlock+store+chainunlock) and close (delete) distinct keys; ops/s, latencies inside
    /// and outside vacuum work, file sizes over time, and the keys left once vacuuming drained.
    Churn {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Worker processes per node.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Keys in all, each opened and closed once (split evenly over the workers).
        #[arg(long, default_value_t = 60_000)]
        keys: usize,
        /// VacuumInterval of every node in ms (0: vacuuming off).
        #[arg(long, default_value_t = 10_000)]
        vacuum_interval: u64,
        /// Also run with vacuuming off, on a fresh cluster, and print both side by side.
        #[arg(long)]
        compare: bool,
        /// Runs of each setting (with --compare they alternate; the summary takes medians).
        #[arg(long, default_value_t = 1)]
        rounds: usize,
        /// Files a worker keeps open: a key is closed this many opens after its own.
        #[arg(long, default_value_t = 4)]
        open_files: usize,
        /// Bytes per value (a share-mode entry is about 100).
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Print one JSON object instead of tables.
        #[arg(long)]
        json: bool,
        /// Directory of the clusters the bench starts (and stops); DIR/vacuum-*/nodeK.log
        /// are their logs.
        #[arg(long, default_value = "/tmp/rctdb-bench-churn")]
        dir: PathBuf,
        /// Address of node 0 of the bench cluster.
        #[arg(long, default_value = "127.0.0.71")]
        first_address: Ipv4Addr,
    },
    /// One worker process of `bench churn` (the bench starts these itself).
    #[command(hide = true)]
    ChurnWorker {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        window: usize,
        #[arg(long)]
        value_size: usize,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    // Output piped into `head` ends quietly, as other tools' does, not with a panic.
    // SAFETY: restoring the default disposition installs no handler.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    env_logger::init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("rctdb: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), String> {
    let socket =
        || cli.socket.clone().ok_or("no daemon socket: give --socket or set RCTDB_SOCKET".to_string());
    match cli.command {
        Command::Demo { seconds, dir, keep, first_address, port, counters } => {
            demo::run_demo(&demo::Demo { seconds, dir, keep, first_address, port, counters })
        }
        Command::DemoWorker { name, counters } => demo::demo_worker(&socket()?, &name, counters),
        Command::Cluster { action: ClusterCmd::Up { nodes, dir, first_address, port } } => {
            let mut spec = ClusterSpec::new(nodes, &dir);
            spec.first_address = first_address;
            spec.port = port;
            cluster::up(&spec)?;
            println!("{nodes} nodes up in {}; sockets {}/nodeK.sock", dir.display(), dir.display());
            Ok(())
        }
        Command::Cluster { action: ClusterCmd::Kill { dir, node } } => {
            cluster::kill_node(&dir, node)?;
            println!("node {node} killed");
            Ok(())
        }
        Command::Cluster { action: ClusterCmd::Start { dir, node, port } } => {
            let mut spec = ClusterSpec::from_dir(&dir)?;
            spec.port = port;
            cluster::start_node(&spec, node)?;
            cluster::wait_until_healthy(&spec)?;
            println!("node {node} started and admitted; every node serves");
            Ok(())
        }
        Command::Cluster { action: ClusterCmd::Down { dir } } => {
            let stopped = cluster::down(&dir)?;
            println!("stopped {stopped} nodes");
            Ok(())
        }
        Command::Status { json } => {
            let mut daemon = DaemonConnection::connect(&socket()?).map_err(|e| e.to_string())?;
            match json {
                true => println!("{}", statistics::checked_json(&daemon.status_json(TIMEOUT).map_err(|e| e.to_string())?)?),
                false => print!("{}", daemon.status(TIMEOUT).map_err(|e| e.to_string())?),
            }
            Ok(())
        }
        Command::Statistics { json, reset } => {
            let mut daemon = DaemonConnection::connect(&socket()?).map_err(|e| e.to_string())?;
            let stats = daemon.statistics(reset, TIMEOUT).map_err(|e| e.to_string())?;
            match json {
                true => println!("{}", statistics::to_json(&stats)?),
                false => print!("{}", statistics::render(&stats)),
            }
            Ok(())
        }
        Command::Writekey { db, key, value } => {
            let mut db = ClusteredDb::open(&socket()?, &db, TIMEOUT).map_err(|e| e.to_string())?;
            db.store(key.as_bytes(), &[value.as_bytes()], StoreFlag::Replace).map_err(|e| e.to_string())
        }
        Command::Readkey { db, key } => {
            let mut db = ClusteredDb::open(&socket()?, &db, TIMEOUT).map_err(|e| e.to_string())?;
            match db.fetch(key.as_bytes()).map_err(|e| e.to_string())? {
                Some(value) => {
                    println!("{}", String::from_utf8_lossy(&value));
                    Ok(())
                }
                None => Err(format!("{key}: no such record")),
            }
        }
        Command::Deletekey { db, key } => {
            let mut db = ClusteredDb::open(&socket()?, &db, TIMEOUT).map_err(|e| e.to_string())?;
            db.delete(key.as_bytes()).map_err(|e| e.to_string())
        }
        Command::Dump { db } => {
            let mut db = ClusteredDb::open(&socket()?, &db, TIMEOUT).map_err(|e| e.to_string())?;
            let count = db
                .traverse(|key, data| {
                    println!("key({}) = {:?}", key.len(), String::from_utf8_lossy(key));
                    println!("data({}) = {:?}", data.len(), String::from_utf8_lossy(data));
                    true
                })
                .map_err(|e| e.to_string())?;
            println!("{count} records");
            Ok(())
        }
        Command::Getvar { name } => {
            let mut daemon = DaemonConnection::connect(&socket()?).map_err(|e| e.to_string())?;
            let value = daemon.get_tunable(&name, TIMEOUT).map_err(|e| e.to_string())?;
            print_var(&name, value);
            Ok(())
        }
        Command::Setvar { name, value } => {
            let mut daemon = DaemonConnection::connect(&socket()?).map_err(|e| e.to_string())?;
            daemon.set_tunable(&name, value, TIMEOUT).map_err(|e| e.to_string())
        }
        Command::Listvars => {
            let mut daemon = DaemonConnection::connect(&socket()?).map_err(|e| e.to_string())?;
            for name in daemon.list_tunables(TIMEOUT).map_err(|e| e.to_string())? {
                let value = daemon.get_tunable(&name, TIMEOUT).map_err(|e| e.to_string())?;
                print_var(&name, value);
            }
            Ok(())
        }
        Command::Quiet => node_control(&socket()?, opcode::QUIET),
        Command::Unquiet => node_control(&socket()?, opcode::UNQUIET),
        Command::Stop => node_control(&socket()?, opcode::STOP_NODE),
        Command::Bench { bench: BenchCmd::Local { keys, value_size, rounds, hash_size, mutex, dir } } => {
            let tdb_flags = if mutex {
                flags::TDB_MUTEX_LOCKING | flags::TDB_INCOMPATIBLE_HASH | flags::TDB_CLEAR_IF_FIRST
            } else {
                flags::TDB_DEFAULT
            };
            bench_local(&LocalBench { keys, value_size, rounds: rounds.max(1), hash_size, tdb_flags }, dir)
        }
        Command::Bench { bench: BenchCmd::Hit { keys, value_size, rounds, dir, address } } => {
            bench_hit(&HitBench { keys, value_size, rounds: rounds.max(1), dir, address })
        }
        Command::Bench { bench: BenchCmd::Ring { nodes, seconds, lmaster, dir, first_address, cpu_hog } } => {
            bench_ring(nodes, seconds, lmaster, dir, first_address, cpu_hog)
        }
        Command::Bench {
            bench: BenchCmd::Recovery { records, value_size, moved, dir, first_address, tunables },
        } => bench_recovery(&RecoveryBench { records, value_size, moved, dir, first_address, tunables }),
        Command::Bench {
            bench:
                BenchCmd::Churn {
                    nodes,
                    workers,
                    keys,
                    vacuum_interval,
                    compare,
                    rounds,
                    open_files,
                    value_size,
                    json,
                    dir,
                    first_address,
                },
        } => bench_churn(&ChurnBench {
            nodes,
            workers,
            keys,
            window: open_files,
            value_size,
            vacuum_interval_ms: vacuum_interval,
            compare,
            rounds,
            json,
            dir,
            first_address,
        }),
        Command::Bench { bench: BenchCmd::ChurnWorker { prefix, count, window, value_size, out } } => {
            churn_worker(&WorkerSpec { socket: socket()?, prefix, count, window, value_size, out })
        }
    }
}

/// One tunable as `ctdb getvar` and `ctdb listvars` print it.
fn print_var(name: &str, value: u64) {
    println!("{name:<26} = {value}");
}

fn node_control(socket: &std::path::Path, opcode: u32) -> Result<(), String> {
    let mut daemon = DaemonConnection::connect(socket).map_err(|e| e.to_string())?;
    daemon.node_control(opcode, TIMEOUT).map_err(|e| e.to_string())
}

fn bench_ring(
    ring_nodes: usize,
    seconds: f64,
    lmaster: LmasterPlacement,
    dir: PathBuf,
    first_address: Ipv4Addr,
    cpu_hog: bool,
) -> Result<(), String> {
    const CLUSTER_NODES: usize = 3;
    if !(2..=CLUSTER_NODES).contains(&ring_nodes) {
        return Err(format!("--nodes {ring_nodes}: a ring has 2 or 3 nodes"));
    }
    if ring_nodes == CLUSTER_NODES && matches!(lmaster, LmasterPlacement::Other) {
        return Err("--lmaster other needs a node outside the ring: use --nodes 2".into());
    }
    let floor = ring::loopback_floor(seconds.min(2.0))?;
    let ring: Vec<usize> = (0..ring_nodes).collect();
    let pnns: Vec<u32> = ring.iter().map(|&n| n as u32).collect();
    let key = ring::ring_key(&pnns, CLUSTER_NODES, matches!(lmaster, LmasterPlacement::Ring));
    let mut spec = ClusterSpec::new(CLUSTER_NODES, &dir);
    spec.first_address = first_address;
    let cluster = RunningCluster::start(spec)?;
    let hog = cpu_hog.then(ring::CpuHog::start);
    let ours = ring::ring(cluster.dir(), "ring.tdb", &ring, &key, seconds)?;
    drop(hog);
    let deaths = ring::deaths_declared(cluster.dir(), CLUSTER_NODES)?;
    drop(cluster);
    println!(
        "bench ring: {ring_nodes} ring nodes of {CLUSTER_NODES}, key {:?} with its LMASTER {} the ring, {seconds} s",
        String::from_utf8_lossy(&key),
        if matches!(lmaster, LmasterPlacement::Ring) { "in" } else { "outside" }
    );
    println!("                       rate/s      p50 us   p99 us");
    println!("  rctdbd migrations  {:>9.0}   {:>8.1} {:>8.1}", ours.rate(), ours.p50_us, ours.p99_us);
    println!("  loopback TCP RTT   {:>9.0}   {:>8.1} {:>8.1}", floor.rate(), floor.p50_us, floor.p99_us);
    println!("  p99 / loopback p50 {:.2}", ours.p99_us / floor.p50_us);
    println!(
        "  nodes declared dead during the run: {deaths} (none failed{})",
        if cpu_hog { ", every CPU kept busy beside them" } else { "" }
    );
    Ok(())
}
