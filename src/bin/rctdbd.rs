//! rctdbd: the per-node agent of an rctdb cluster (see `rctdb::daemon`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use rctdb::daemon::{self, DaemonConfig, DEFAULT_PORT};

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
    let config = DaemonConfig {
        nodes_file: args.nodes,
        address: args.address,
        port: args.port,
        socket: args.socket,
        dbdir: args.dbdir,
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
