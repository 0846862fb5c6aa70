//! rctdbd: the per-node agent of an rctdb cluster (see the `rctdbd` crate).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rctdb::tunables::Tunables;
use rctdbd::daemon::cluster_lock::ClusterLockSpec;
use rctdbd::daemon::{self, DaemonConfig, DEFAULT_PORT};

const AFTER_HELP: &str = "\
CLIENTS:
  librctdb (RCTDB_SOCKET=PATH in a C program's environment), the `rctdb` tool, and ctdbd's
  clients: stock smbd with `clustering = yes` and `ctdbd socket = PATH`, Samba's `ctdb` tool
  with CTDB_SOCKET=PATH.

ENVIRONMENT:
  RUST_LOG   log level: error, warn, info (default), debug, trace; per module too, e.g.
             RUST_LOG=info,rctdb::engine=debug

SIGNALS:
  SIGTERM, SIGINT and SIGKILL end the daemon at once, as a crash would: the other nodes
  detect it and recover without it. `rctdb stop` makes it leave the cluster first.

EXIT STATUS:
  0  it left the cluster as told (`rctdb stop`)
  1  it could not start (bad option, address not in the nodes file, port or socket in use,
     DIRECTORY not writable) or failed later; the reason is in the log and on stderr
  2  the command line was wrong

EXAMPLE (a node of three; `rctdb cluster up` does this for a local test cluster):
  printf '10.0.0.1\\n10.0.0.2\\n10.0.0.3\\n' > /etc/rctdb/nodes
  rctdbd --nodes /etc/rctdb/nodes --address 10.0.0.2 --socket /run/rctdb/rctdbd.sock \\
         --dbdir /var/lib/rctdb --log /var/log/rctdb.log --cluster-lock /shared/rctdb.lock
  RCTDB_SOCKET=/run/rctdb/rctdbd.sock rctdb status";

#[derive(Parser)]
#[command(
    version,
    about = "rctdb node daemon: migrates records between nodes",
    long_about = "rctdbd: the daemon of one rctdb node. It keeps this node's copies of the \
        clustered databases in DIRECTORY (--dbdir), serves local clients on a unix socket, talks \
        to the other nodes of the nodes file over TCP, and migrates records to the node that \
        needs them (CTDB's design). The nodes watch each other with heartbeats; when one dies, \
        hangs or comes back, a leader runs a recovery into a new generation. It runs in the \
        foreground; logs go to stderr or --log.",
    after_long_help = AFTER_HELP
)]
struct Args {
    /// Nodes file: one address per line (line K = node K), `#` comments; the same on every
    /// node.
    #[arg(long, value_name = "FILE")]
    nodes: PathBuf,
    /// This node's address; must appear in the nodes file (it says which node this is).
    #[arg(long, value_name = "IP")]
    address: IpAddr,
    /// TCP port of every node (the port CTDB uses).
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Unix socket local clients connect to (their RCTDB_SOCKET, or smbd's `ctdbd socket`).
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Directory of this node's database files; volatile databases are emptied at start.
    #[arg(long, value_name = "DIRECTORY")]
    dbdir: PathBuf,
    /// Log file, appended to (default: stderr). Level from RUST_LOG, default info.
    #[arg(long, value_name = "FILE")]
    log: Option<PathBuf>,
    /// Who may lead the cluster: FILE (an fcntl lock on a file every node sees) or
    /// '!COMMAND ARGS' (CTDB's cluster mutex helper protocol, e.g.
    /// '!/usr/libexec/ctdb/ctdb_mutex_fcntl_helper /shared/lock'). Without it a leader needs
    /// a strict majority of the nodes file, so two-node clusters need the lock.
    #[arg(long, value_name = "FILE | '!COMMAND ARGS'")]
    cluster_lock: Option<String>,
    /// Group of the client socket (a name or a number), which is created mode 0660: its
    /// members and the daemon's user may connect. Default: the daemon's group.
    #[arg(long, value_name = "NAME|GID")]
    socket_group: Option<String>,
    /// Refuse client connections past this many (each costs a file descriptor; the open
    /// files limit, raised to its hard limit at start, may allow fewer).
    #[arg(long, default_value_t = daemon::DEFAULT_MAX_CLIENTS)]
    max_clients: usize,
    /// A database clients may attach: a file name, or a prefix followed by '*'; may be
    /// repeated. Without it clients may attach any database (a plain file name). Other
    /// attaches are refused with a message saying so, before any file is created.
    #[arg(long = "allow-db", value_name = "NAME|PREFIX*")]
    allow_dbs: Vec<String>,
    /// Refuse client attaches past this many databases.
    #[arg(long, default_value_t = daemon::attach_policy::DEFAULT_MAX_DATABASES)]
    max_databases: usize,
    /// Set a tunable at start, NAME=VALUE (see `rctdb listvars`): CTDB's names take CTDB's
    /// units (seconds for times), names ending in Ms take milliseconds, e.g.
    /// KeepaliveIntervalMs=100; may be repeated, the later of two names of one time wins.
    /// `rctdb setvar` changes them at run time.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    tunables: Vec<String>,
    /// Secret of the cluster (32+ random bytes, mode 0600; `rctdb keygen FILE` makes one).
    /// Every node link then starts with a mutual challenge-response on it, and peers
    /// without it are refused. Without it, links are not authenticated.
    #[arg(long, value_name = "FILE")]
    cluster_key: Option<PathBuf>,
}

fn main() -> ExitCode {
    let mut raw_args = std::env::args_os().skip(1);
    match raw_args.next() {
        // Run by the daemon itself to hold its cluster lock, or to fence its clients; logs
        // go to the daemon's stderr.
        Some(first) if first == daemon::watchdog::MODE_FLAG => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
            return daemon::watchdog::main(&raw_args.collect::<Vec<_>>());
        }
        Some(first) if first == daemon::watchdog::FENCE_MODE_FLAG => {
            env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
            return daemon::watchdog::fence_main(&raw_args.collect::<Vec<_>>());
        }
        _ => {}
    }
    let args = Args::parse();
    let mut logger = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if let Some(path) = &args.log {
        match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => {
                logger.target(env_logger::Target::Pipe(Box::new(file)));
            }
            Err(err) => {
                eprintln!("rctdbd: log file {}: {err}", path.display());
                return ExitCode::FAILURE;
            }
        }
    }
    logger.init();
    let mut tunables = Tunables::default();
    for setting in &args.tunables {
        let parsed = setting
            .split_once('=')
            .ok_or_else(|| format!("--set {setting}: expected NAME=VALUE"))
            .and_then(|(name, value)| {
                let value = value.parse::<u64>().map_err(|e| format!("--set {setting}: {e}"))?;
                tunables.set(name, value).map_err(|e| format!("--set {setting}: {e}"))
            });
        if let Err(err) = parsed {
            eprintln!("rctdbd: {err}");
            return ExitCode::FAILURE;
        }
    }
    let cluster_lock = match args.cluster_lock.as_deref().map(ClusterLockSpec::parse).transpose() {
        Ok(spec) => spec,
        Err(err) => {
            eprintln!("rctdbd: --cluster-lock: {err}");
            return ExitCode::FAILURE;
        }
    };
    let config = DaemonConfig {
        nodes_file: args.nodes,
        address: args.address,
        port: args.port,
        socket: args.socket,
        dbdir: args.dbdir,
        cluster_lock,
        tunables,
        cluster_key: args.cluster_key,
        socket_group: args.socket_group,
        max_clients: args.max_clients,
        attach_policy: match daemon::attach_policy::AttachPolicy::new(args.allow_dbs, args.max_databases) {
            Ok(policy) => policy,
            Err(err) => {
                eprintln!("rctdbd: {err}");
                return ExitCode::FAILURE;
            }
        },
    };
    match daemon::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("{err}");
            eprintln!("rctdbd: {err}");
            ExitCode::FAILURE
        }
    }
}
