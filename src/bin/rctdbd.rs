//! rctdbd: the per-node agent of an rctdb cluster (see `rctdb::daemon`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rctdb::daemon::cluster_lock::ClusterLockSpec;
use rctdb::daemon::{self, DaemonConfig, DEFAULT_PORT};
use rctdb::tunables::Tunables;

#[derive(Parser)]
#[command(version, about = "rctdb node daemon: migrates records between nodes")]
struct Args {
    /// Nodes file: one address per line (line = node number), `#` comments.
    #[arg(long)]
    nodes: PathBuf,
    /// This node's address; must appear in the nodes file.
    #[arg(long)]
    address: IpAddr,
    #[arg(long, default_value_t = DEFAULT_PORT)]
    port: u16,
    /// Unix socket local clients connect to (RCTDB_SOCKET).
    #[arg(long)]
    socket: PathBuf,
    /// Directory of this node's database files; volatile databases are emptied at start.
    #[arg(long)]
    dbdir: PathBuf,
    /// Log file (default: stderr). Level from RUST_LOG, default info.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Who may lead the cluster: FILE (an fcntl lock on a file every node sees) or
    /// '!COMMAND ARGS' (CTDB's cluster mutex helper protocol, e.g.
    /// '!/usr/libexec/ctdb/ctdb_mutex_fcntl_helper /shared/lock'). Without it a leader needs
    /// a strict majority of the nodes file, so two-node clusters need the lock.
    #[arg(long)]
    cluster_lock: Option<String>,
    /// Group of the client socket (a name or a number), which is created mode 0660: its
    /// members and the daemon's user may connect. Default: the daemon's group.
    #[arg(long, value_name = "NAME|GID")]
    socket_group: Option<String>,
    /// Refuse client connections past this many (each costs a file descriptor; the open
    /// files limit, raised to its hard limit at start, may allow fewer).
    #[arg(long, default_value_t = daemon::DEFAULT_MAX_CLIENTS)]
    max_clients: usize,
    /// Set a tunable at start, NAME=VALUE (see `rctdb listvars`); may be repeated.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    tunables: Vec<String>,
    /// Secret of the cluster (32+ random bytes, mode 0600; `rctdb keygen FILE` makes one).
    /// Every node link then starts with a mutual challenge-response on it, and peers
    /// without it are refused. Without it, links are not authenticated.
    #[arg(long, value_name = "FILE")]
    cluster_key: Option<PathBuf>,
}

fn main() -> ExitCode {
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
