//! rctdbd, the per-node agent: the only place with sockets, threads, files and clocks. The
//! engine thread (`node::Node`) owns the protocol engine and the database files; transport
//! threads carry packets between nodes, client threads carry local requests.

mod clients;
mod lock_wait;
mod node;
pub mod nodes;
mod tdb_store;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

pub use tdb_store::CLUSTERED_TDB_FLAGS;

use crate::transport::{Transport, TransportConfig};
use crate::wire::Pnn;

pub const DEFAULT_PORT: u16 = 4379;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub nodes_file: PathBuf,
    pub address: IpAddr,
    pub port: u16,
    pub socket: PathBuf,
    pub dbdir: PathBuf,
}

/// Starts the daemon and serves until the process is killed.
pub fn run(config: &DaemonConfig) -> Result<(), String> {
    let text = std::fs::read_to_string(&config.nodes_file)
        .map_err(|e| format!("reading nodes file {}: {e}", config.nodes_file.display()))?;
    let nodes = nodes::parse_nodes(&text)?;
    let pnn =
        nodes.iter().position(|addr| *addr == config.address).ok_or_else(|| {
            format!("{} is not in nodes file {}", config.address, config.nodes_file.display())
        })? as Pnn;
    prepare_dbdir(&config.dbdir)?;

    let (transport_tx, transport_rx) = crossbeam_channel::unbounded();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|ip| SocketAddr::new(*ip, config.port)).collect();
    let transport = Transport::start(TransportConfig::new(pnn, addrs), transport_tx)
        .map_err(|e| format!("listening on {}:{}: {e}", config.address, config.port))?;
    let (client_tx, client_rx) = crossbeam_channel::unbounded();
    clients::listen(&config.socket, client_tx)
        .map_err(|e| format!("client socket {}: {e}", config.socket.display()))?;
    log::info!(
        "node {pnn} ({}) up: {} nodes, socket {}",
        config.address,
        nodes.len(),
        config.socket.display()
    );

    let mut node = node::Node::new(pnn, &nodes, &config.dbdir, transport);
    node.run(transport_rx, client_rx);
    Ok(())
}

/// Creates the database directory if needed.
fn prepare_dbdir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("database directory {}: {e}", dir.display()))
}
