//! rctdbd, the per-node agent: the only place with sockets, threads, files and clocks. The
//! node (`node::Node`, behind a mutex) owns the protocol engine and the database files;
//! transport reader threads and client threads handle the packets they read under that
//! mutex, the engine thread runs the timers, link events and lock waits.

mod clients;
pub mod cluster_lock;
mod lock_bound;
mod lock_wait;
mod node;
pub mod nodes;
mod tdb_store;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use once_cell::sync::OnceCell;
use parking_lot::Mutex;

pub use tdb_store::CLUSTERED_TDB_FLAGS;

use crate::transport::auth::ClusterKey;
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
    /// Who may lead: the holder of this lock. Without one, a strict majority of the nodes
    /// file (so a two-node cluster needs the lock).
    pub cluster_lock: Option<cluster_lock::ClusterLockSpec>,
    pub tunables: crate::tunables::Tunables,
    /// File of the secret every node link must prove it holds (`--cluster-key`). Without
    /// one, links are not authenticated.
    pub cluster_key: Option<PathBuf>,
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
    let cluster_key = config.cluster_key.as_deref().map(ClusterKey::load).transpose()?;
    if cluster_key.is_none() {
        log::warn!(
            "no --cluster-key: node links are NOT authenticated; any process that can use a node's address can speak for it (make a key with `rctdb keygen FILE`)"
        );
    }
    prepare_dbdir(&config.dbdir)?;

    // Packets are handled on the thread that read them, under the node's mutex: no hand-off
    // to another thread per packet. The engine thread keeps the timers, link events and
    // chain-lock waits.
    let cell: Arc<OnceCell<Arc<Mutex<node::Node>>>> = Arc::new(OnceCell::new());
    let peer_cell = Arc::clone(&cell);
    let peer_handler: crate::transport::PacketHandler =
        Arc::new(move |from, packet| peer_cell.wait().lock().on_peer_packet(from, packet));
    let (transport_tx, transport_rx) = crossbeam_channel::unbounded();
    let addrs: Vec<SocketAddr> = nodes.iter().map(|ip| SocketAddr::new(*ip, config.port)).collect();
    let transport_config = TransportConfig { cluster_key, ..TransportConfig::new(pnn, addrs) };
    let transport = Transport::start_with_handler(transport_config, transport_tx, Some(peer_handler))
        .map_err(|e| format!("listening on {}:{}: {e}", config.address, config.port))?;
    let client_cell = Arc::clone(&cell);
    let client_handler: clients::ClientHandler =
        Arc::new(move |event| client_cell.wait().lock().on_client(event));
    clients::listen(&config.socket, client_handler)
        .map_err(|e| format!("client socket {}: {e}", config.socket.display()))?;
    log::info!(
        "node {pnn} ({}) up: {} nodes, socket {}",
        config.address,
        nodes.len(),
        config.socket.display()
    );

    let node = node::Node::new(
        pnn,
        &nodes,
        config.port,
        &config.dbdir,
        transport,
        config.cluster_lock.clone(),
        config.tunables.clone(),
    )
    .map_err(|e| format!("starting the lock waiter threads: {e}"))?;
    let node = Arc::new(Mutex::new(node));
    let _ = cell.set(Arc::clone(&node));
    node::start_liveness_pump(&node);
    node::run(&node, transport_rx);
    Ok(())
}

/// Creates the database directory if needed and empties the volatile databases a previous
/// run left, as CTDB does: their records described processes of that run. Emptied in place,
/// not unlinked, so that a client of the previous run that still has a file open finds no
/// record it could take for its own and must ask this daemon (which it cannot reach).
fn prepare_dbdir(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("database directory {}: {e}", dir.display()))?;
    let entries = std::fs::read_dir(dir).map_err(|e| format!("database directory {}: {e}", dir.display()))?;
    for path in entries.flatten().map(|entry| entry.path()) {
        if !path.is_file() {
            continue;
        }
        let wiped = crate::local::Tdb::open(&path, 0, CLUSTERED_TDB_FLAGS, libc::O_RDWR, 0o600)
            .map_err(|e| e.to_string())
            .and_then(|tdb| {
                tdb_store::wipe_without_waiting(&tdb).and_then(|()| tdb.close()).map_err(|e| e.to_string())
            });
        if let Err(err) = wiped {
            return Err(format!("wiping the volatile database {}: {err}", path.display()));
        }
    }
    Ok(())
}
