//! The `rctdb` command line: a local test cluster, status, records, benchmarks.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use nix::sys::signal::{signal, SigHandler, Signal};
use rctdb::client::{ClusteredDb, DaemonConnection};
use rctdb::local::{flags, StoreFlag};
use rctdb::tunables::opcode;
use rctdb_cli::tool::churn::{bench_churn, churn_worker, ChurnBench, WorkerSpec};
use rctdb_cli::tool::clients_bench::{bench_clients, ClientsBench};
use rctdb_cli::tool::cluster::{self, ClusterSpec, RunningCluster};
use rctdb_cli::tool::demo;
use rctdb_cli::tool::local_bench::{bench_hit, bench_local, HitBench, LocalBench};
use rctdb_cli::tool::recovery_bench::{bench_recovery, Fault, RecoveryBench};
use rctdb_cli::tool::ring;
use rctdb_cli::tool::statistics;
use rctdb_cli::tool::traverse_bench::{bench_traverse, TraverseBench};
use rctdbd::status::StatusControls;

const TIMEOUT: Duration = Duration::from_secs(30);

const TOP_HELP: &str = "\
ENVIRONMENT:
  RCTDB_SOCKET               The local rctdbd's socket, for every command that talks to a
                             node (--socket wins over it).
  RCTDB_MIGRATE_TIMEOUT_MS   (librctdb, not this tool) how long a C program waits for a
                             record to reach its node before TDB_ERR_LOCK_TIMEOUT; the
                             record commands here wait 30 s.
  RUST_LOG                   Log level of rctdb itself (error, warn, info, debug); default error.

EXIT STATUS:
  0  the command did what it says (for `demo`: the cluster recovered and no acknowledged
     update of a surviving worker was lost)
  1  it failed; the reason is on stderr (for `demo`: also a lost update, or Ctrl-C)
  2  the command line was wrong

EXAMPLES:
  rctdb demo                                  # a 3-node cluster, a crash, a recovery, ~30 s
  rctdb cluster up --nodes 3 --dir /tmp/c     # rctdbd on 127.0.0.11-13
  export RCTDB_SOCKET=/tmp/c/node0.sock
  rctdb writekey opens.tdb alice \"share mode\" # the record migrates to node 0
  rctdb --socket /tmp/c/node2.sock readkey opens.tdb alice
  rctdb status; rctdb statistics              # this node, its counters and hot keys
  rctdb cluster down --dir /tmp/c

Run `rctdb help COMMAND` for a command's options, defaults and examples.";

#[derive(Parser)]
#[command(
    name = "rctdb",
    version,
    about = "rctdb: a clustered TDB (CTDB's record migration, in Rust)",
    long_about = "rctdb: the command-line tool of rctdb, a clustered TDB (CTDB's record \
        migration, in Rust).\n\n\
        It starts local test clusters of rctdbd on 127.0.0.x, shows a node's status and \
        statistics, reads and writes records of clustered databases, changes a node's \
        tunables at run time, injects faults, and measures rctdb. Commands that talk to a \
        node use its unix socket (--socket or RCTDB_SOCKET).",
    after_long_help = TOP_HELP
)]
struct Cli {
    /// The local rctdbd's unix socket (a node's `--socket`; `cluster up` makes DIR/nodeK.sock).
    #[arg(long, env = "RCTDB_SOCKET", global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

const DEMO_HELP: &str = "\
WHAT IT SHOWS:
  1. 3 nodes serve; 6 workers (2 per node) increment random counters of demo.tdb under
     the chain lock, each in its own slot of the counter, so records migrate all the time.
     A progress line about once a second: operations/s, migrations/s, p99 latency.
  2. Node 2's workers stop, then node 2 is killed with SIGKILL. Printed as they are seen,
     in ms from the kill: each survivor declaring it dead, the recovery into a new
     generation done, the first increment completed after it.
  3. Node 2 starts again; printed when a recovery has admitted it; its workers start again.
  4. Every counter is read (newest copy, cluster-wide) and compared with what the workers
     acknowledged: the surviving workers' increments must all be there (no lost update).
     Node 2's workers' increments in records node 2 held when it died are lost with it, as
     in CTDB's volatile databases; that count is shown.
  5. A table per phase (operations, ops/s, p99, migrations) and of the fault's timings.
The cluster is stopped at the end, also on an error or Ctrl-C, and DIR is removed unless\n--keep is given or the demo failed (then DIR/nodeK.log tell why).

EXAMPLES:
  rctdb demo                       # about 30 s, in a fresh directory under $TMPDIR
  rctdb demo --seconds 60 --keep --dir /tmp/d   # then look at /tmp/d/node*.log

EXIT STATUS:
  0 recovered and no update lost; 1 an error, a lost update, or Ctrl-C.";

const CLUSTER_HELP: &str = "\
FILES (in DIR):
  nodes                 the nodes file, one address per line (line K = node K)
  nodeK.sock            node K's client socket (RCTDB_SOCKET)
  nodeK.pid, nodeK.log  its process id and log
  nodeK/                its database files
  cluster.lock          the cluster lock every node is given (only its holder leads)

EXAMPLES:
  rctdb cluster up --nodes 3 --dir /tmp/c
  rctdb cluster kill --dir /tmp/c --node 1     # a crash: the others recover in ~0.1 s
  rctdb cluster start --dir /tmp/c --node 1    # back, once a recovery admitted it
  rctdb cluster down --dir /tmp/c";

const STATUS_HELP: &str = "\
OUTPUT (one `key value` line each; --json: one object with the same fields):
  pnn N                this node's number
  state S              active (serves), recovering, inactive, banned or quiet
  leader N | none      the node that runs recoveries
  term N, generation G the leader's term and the generation this node serves in
  vnn_map [..]         the active nodes, in LMASTER order
  node N ADDR STATE    each node as this one sees it: self, alive or dead, link-up or
                       link-down, packets sent and received on the link
  db NAME ID           each attached database
  vacuum_backlog N, repacks N, stats k=v ...   counters (see `rctdb statistics`)

EXAMPLES:
  rctdb --socket /tmp/c/node1.sock status
  rctdb status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"state\"])'";

const STATISTICS_HELP: &str = "\
WHAT IS COUNTED (on this node, since it started or the last --reset):
  client calls          requests of local clients for records not here (a client's
                        reads and writes of records this node holds never reach the daemon)
  migrations in / out   records that came here / that this node handed over
  hop counts            per record handed over: how often its request was forwarded before
                        it reached this node, the DMASTER (buckets 0, 1, 2-3, 4-7, ...)
  lock waits            work on a record that waited for a chain lock a client held:
                        count, total and longest wait in ms
  recoveries            led (last, longest, mean duration in ms) and joined
  hot keys              per database, the 10 keys that migrated to and from this node most,
                        with the most forwards a request for them took (CTDB's dbstatistics)

EXAMPLES:
  rctdb statistics
  rctdb --socket /tmp/c/node2.sock statistics --json > node2.json
  rctdb statistics --reset         # print, then start from zero";

#[derive(Subcommand)]
enum Command {
    /// Watch a 3-node cluster keep every update through a crash, under load (~30 s).
    #[command(
        long_about = "Starts a 3-node cluster on loopback, runs a contended workload with a live \
            progress line, kills a node with SIGKILL and shows its detection and the recovery as \
            they happen, brings the node back, checks that no acknowledged update was lost, prints \
            a table, and cleans up.",
        after_long_help = DEMO_HELP
    )]
    Demo {
        /// How long the workload runs in all: 40% before the kill, 30% with a node down, 30%
        /// after it is back (3 to 3600).
        #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
        seconds: f64,
        /// Where the cluster keeps its state; it must be new, empty or an earlier demo's.
        /// Default: a fresh directory under $TMPDIR.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep DIR (logs, database files) at the end instead of removing it.
        #[arg(long)]
        keep: bool,
        /// Address of node 0; node K gets this plus K (127.0.0.0/8 works without setup).
        #[arg(long, default_value = "127.0.0.61", value_name = "IP")]
        first_address: Ipv4Addr,
        /// TCP port of every node.
        #[arg(long, default_value_t = rctdbd::daemon::DEFAULT_PORT)]
        port: u16,
        /// Counters the workers increment: fewer means more contention, more migrations.
        #[arg(long, default_value_t = demo::DEFAULT_COUNTERS, value_name = "N")]
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
    /// A local test cluster of rctdbd on 127.0.0.x: up, down, kill a node, start it again.
    #[command(after_long_help = CLUSTER_HELP)]
    Cluster {
        #[command(subcommand)]
        action: ClusterCmd,
    },
    /// Write a new cluster key (32 random bytes, mode 0600) to FILE, which must not exist;
    /// give it to every node with `rctdbd --cluster-key FILE`.
    Keygen { file: PathBuf },
    /// This node, the state of its links, the generation and the attached databases.
    #[command(after_long_help = STATUS_HELP)]
    Status {
        /// Print one JSON object instead of `key value` lines.
        #[arg(long)]
        json: bool,
    },
    /// This node's counters: client calls, migrations, hop counts, lock waits, recoveries,
    /// and each database's hot keys (CTDB's `statistics` and `dbstatistics`).
    #[command(after_long_help = STATISTICS_HELP)]
    Statistics {
        /// Print one JSON object instead of a table: {pnn, counters: {client_calls, ...},
        /// dbs: [{name, db_id, migrations_in, migrations_out, hot_keys: [{key, migrations,
        /// max_hops}]}]}.
        #[arg(long)]
        json: bool,
        /// Start the counters and hot keys from zero after printing them.
        #[arg(long)]
        reset: bool,
    },
    /// Store VALUE under KEY in database DB (the record migrates to this node).
    #[command(after_long_help = "EXAMPLE:\n  rctdb writekey opens.tdb alice \"share mode\"")]
    Writekey {
        /// Database name, a file name under the nodes' --dbdir (attached on first use).
        db: String,
        key: String,
        value: String,
    },
    /// Print the value of KEY in database DB (the record migrates to this node).
    ///
    /// Fails, with exit status 1, when there is no such record.
    Readkey {
        /// Database name, a file name under the nodes' --dbdir (attached on first use).
        db: String,
        key: String,
    },
    /// Delete KEY from database DB (the record migrates to this node, is left empty, and
    /// vacuuming removes it from every node).
    Deletekey {
        /// Database name, a file name under the nodes' --dbdir (attached on first use).
        db: String,
        key: String,
    },
    /// Every record of database DB in the cluster, newest copy, as tdbdump-like lines.
    Dump {
        /// Database name, a file name under the nodes' --dbdir (attached on first use).
        db: String,
    },
    /// Print the value of tunable NAME on this node (names match in any case).
    Getvar {
        /// A tunable's name, e.g. KeepaliveInterval; `rctdb listvars` lists them.
        name: String,
    },
    /// Set tunable NAME to VALUE on this node only, at run time (times are in seconds under
    /// CTDB's names, in milliseconds under names ending in Ms).
    #[command(
        after_long_help = "EXAMPLE:\n  rctdb setvar KeepaliveLimit 10   # a peer is dead after 10 silent intervals"
    )]
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
    /// Measure rctdb: the C ABI against raw libtdb, migrations, recoveries, churn.
    #[command(
        after_long_help = "Benches that need a cluster start (and stop) their own in their --dir, on \
        their own 127.0.0.x addresses: they do not disturb a cluster of `rctdb cluster up`.\n\n\
        EXAMPLES:\n  rctdb bench local --keys 100000\n  rctdb bench ring --nodes 2 --seconds 5\n  \
        rctdb bench recovery --records 100000\n  rctdb bench churn --compare"
    )]
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
        /// How many nodes (1 to 200).
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// The cluster's directory (made if missing).
        #[arg(long)]
        dir: PathBuf,
        /// Address of node 0; node K gets this plus K.
        #[arg(long, default_value = "127.0.0.11", value_name = "IP")]
        first_address: Ipv4Addr,
        /// TCP port of every node.
        #[arg(long, default_value_t = rctdbd::daemon::DEFAULT_PORT)]
        port: u16,
    },
    /// Stop the nodes of the cluster in DIR (SIGTERM, then SIGKILL after 5 s).
    Down {
        /// The cluster's directory, as given to `up`.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Kill node K of the cluster in DIR at once (SIGKILL), as a crash would.
    Kill {
        /// The cluster's directory, as given to `up`.
        #[arg(long)]
        dir: PathBuf,
        /// The node's number (line of the nodes file, from 0).
        #[arg(long, value_name = "K")]
        node: usize,
    },
    /// Start node K of the cluster in DIR again (after `kill`); returns once the cluster
    /// has admitted it and every node serves.
    Start {
        /// The cluster's directory, as given to `up`.
        #[arg(long)]
        dir: PathBuf,
        /// The node's number (line of the nodes file, from 0).
        #[arg(long, value_name = "K")]
        node: usize,
        /// TCP port of every node, as given to `up`.
        #[arg(long, default_value_t = rctdbd::daemon::DEFAULT_PORT)]
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

/// A fault of `bench recovery`.
#[derive(Clone, Copy, ValueEnum)]
enum FaultArg {
    /// kill -9 of a node that does not lead; it restarts (its own records are lost with it).
    Kill,
    /// SIGSTOP of a node that does not lead for --stall-ms, then SIGCONT (it must lose
    /// nothing).
    Stop,
    /// kill -9 of the leader; it restarts.
    Leader,
}

impl FaultArg {
    const ALL: [FaultArg; 3] = [FaultArg::Kill, FaultArg::Stop, FaultArg::Leader];
}

impl std::fmt::Display for FaultArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default();
        f.write_str(&name)
    }
}

impl From<FaultArg> for Fault {
    fn from(fault: FaultArg) -> Fault {
        match fault {
            FaultArg::Kill => Fault::Kill,
            FaultArg::Stop => Fault::Stop,
            FaultArg::Leader => Fault::Leader,
        }
    }
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
    ///
    /// After each victim's return every record is read: exit status 1 when an acknowledged
    /// record was lost that the fault may not lose (any of a stopped node's; a killed node's
    /// own records die with it) or came back wrong.
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
        /// The faults to run, in this order (comma-separated), each followed by its victim's
        /// return and a check of every record.
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = FaultArg::ALL)]
        faults: Vec<FaultArg>,
        /// How long the stop fault keeps its victim stopped, in milliseconds: past the dead
        /// time (the others leave it out), within the hold time (it keeps its records).
        #[arg(long, default_value_t = 1500)]
        stall_ms: u64,
    },
    /// Migrations on a fresh 3-node cluster holding N records, without and during a
    /// whole-database traverse: their p50/p99/max both ways, the traverse's time, memory.
    Traverse {
        #[arg(long, default_value_t = 250_000)]
        records: usize,
        #[arg(long, default_value_t = 300)]
        value_size: usize,
        /// Seconds of each phase of a round: without a traverse, then during traverses.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Directory of the cluster the bench starts (and stops).
        #[arg(long, default_value = "/tmp/rctdb-bench-traverse")]
        dir: PathBuf,
        /// Address of node 0 of the bench cluster.
        #[arg(long, default_value = "127.0.0.91")]
        first_address: Ipv4Addr,
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
    /// Migrations between two nodes while one has FEW, then MANY, idle client processes
    /// attached (smbd forks one per SMB client); alternating rounds, ratio of the medians.
    Clients {
        #[arg(long, default_value_t = 2)]
        few: usize,
        #[arg(long, default_value_t = 2000)]
        many: usize,
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Directory of the cluster the bench starts (and stops).
        #[arg(long, default_value = "/tmp/rctdb-bench-clients")]
        dir: PathBuf,
        /// Address of node 0 of the bench cluster.
        #[arg(long, default_value = "127.0.0.81")]
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
        Command::Keygen { file } => {
            rctdbd::transport::auth::generate_key_file(&file)?;
            println!("cluster key written to {} (mode 0600)", file.display());
            Ok(())
        }
        Command::Status { json } => {
            let mut daemon = DaemonConnection::connect(&socket()?).map_err(|e| e.to_string())?;
            let status = daemon.status(TIMEOUT).map_err(|e| e.to_string())?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&status).map_err(|e| e.to_string())?),
                false => print!("{status}"),
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
            bench:
                BenchCmd::Recovery { records, value_size, moved, dir, first_address, tunables, faults, stall_ms },
        } => bench_recovery(&RecoveryBench {
            records,
            value_size,
            moved,
            dir,
            first_address,
            tunables,
            faults: faults.into_iter().map(Fault::from).collect(),
            stall: std::time::Duration::from_millis(stall_ms),
        }),
        Command::Bench {
            bench: BenchCmd::Traverse { records, value_size, seconds, rounds, dir, first_address },
        } => bench_traverse(&TraverseBench { records, value_size, seconds, rounds, dir, first_address }),
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
        Command::Bench { bench: BenchCmd::Clients { few, many, seconds, rounds, dir, first_address } } => {
            bench_clients(&ClientsBench { few, many, seconds, rounds, dir, first_address })
        }
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
