//! rctdbd, the per-node agent: the only place with sockets, threads, files and clocks. The
//! node (`node::Node`, behind a mutex) owns the protocol engine and the database files;
//! transport reader threads and the client event loop handle the packets they read under that
//! mutex, the engine thread runs the timers, link events and lock waits.

pub mod attach_policy;
mod clients;
pub mod cluster_lock;
mod fencing;
mod lock_bound;
mod lock_wait;
mod node;
pub mod nodes;
mod tdb_store;
pub mod watchdog;

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
    /// The client socket's group (`--socket-group`, a name or a number); default the
    /// daemon's. The socket is mode 0660.
    pub socket_group: Option<String>,
    /// Client connections past this many are refused (`--max-clients`); fewer if the open
    /// files limit allows fewer.
    pub max_clients: usize,
    /// Which databases clients may attach, and how many.
    pub attach_policy: attach_policy::AttachPolicy,
}

/// Default of `--max-clients`: smbd keeps a connection per SMB client.
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;

/// File descriptors kept for what is not a client: database files, lock waiters, node
/// links, the log.
const FDS_NOT_FOR_CLIENTS: u64 = 256;

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
    let group = config.socket_group.as_deref().map(parse_group).transpose()?;
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
    let open_files = raise_open_files_limit();
    let max_clients = config.max_clients.min(open_files.saturating_sub(FDS_NOT_FOR_CLIENTS) as usize);
    log::info!("open files limit {open_files}: at most {max_clients} clients");
    let socket_config = clients::ClientSocketConfig {
        group,
        max_clients,
        queue_limit: clients::DEFAULT_QUEUE_LIMIT,
        partial_budget: clients::DEFAULT_PARTIAL_BUDGET,
    };
    clients::listen(&config.socket, socket_config, client_handler)
        .map_err(|e| format!("client socket {}: {e}", config.socket.display()))?;
    log::info!(
        "node {pnn} ({}) up: {} nodes, socket {}",
        config.address,
        nodes.len(),
        config.socket.display()
    );

    let node = node::Node::new(pnn, &nodes, config, transport)
        .map_err(|e| format!("starting the lock waiter threads and the fencing watchdog: {e}"))?;
    let node = Arc::new(Mutex::new(node));
    let _ = cell.set(Arc::clone(&node));
    node::run(&node, transport_rx);
    Ok(())
}

/// Raises the soft limit on open files to the hard limit (each client is one); returns the
/// limit in force.
fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => hard,
            Err(err) => {
                log::warn!("raising the open files limit from {soft} to {hard}: {err}");
                soft
            }
        },
        Ok((soft, _)) => soft,
        Err(err) => {
            log::warn!("reading the open files limit: {err}; assuming 1024");
            1024
        }
    }
}

/// A group given by name or number.
fn parse_group(group: &str) -> Result<nix::unistd::Gid, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(nix::unistd::Gid::from_raw(gid));
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(found)) => Ok(found.gid),
        Ok(None) => Err(format!("--socket-group {group}: no such group")),
        Err(err) => Err(format!("--socket-group {group}: {err}")),
    }
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
