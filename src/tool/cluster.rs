//! `rctdb cluster up|down`: a local test cluster of rctdbd processes on 127.0.0.x, all
//! state in one directory (DESIGN §7.3).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::client::DaemonConnection;
use crate::status::StatusControls;
use crate::wire::Pnn;

#[derive(Debug, Clone)]
pub struct ClusterSpec {
    pub nodes: usize,
    pub dir: PathBuf,
    /// Node k listens on `first_address + k`.
    pub first_address: Ipv4Addr,
    pub port: u16,
    /// How long to wait for every link to come up.
    pub timeout: Duration,
    /// `--cluster-lock` of every node; `up` defaults it to a lock file in `dir`.
    pub cluster_lock: Option<String>,
    /// Tunables every node starts with (`--set NAME=VALUE`).
    pub tunables: Vec<(String, u64)>,
    /// `--cluster-key` of every node; `up` makes the key in `dir` unless it exists.
    /// `None`: links are not authenticated.
    pub cluster_key: Option<PathBuf>,
    /// More rctdbd arguments for every node (e.g. `--allow-db NAME`).
    pub daemon_args: Vec<String>,
}

impl ClusterSpec {
    pub fn new(nodes: usize, dir: &Path) -> ClusterSpec {
        ClusterSpec {
            nodes,
            dir: dir.to_owned(),
            first_address: Ipv4Addr::new(127, 0, 0, 11),
            port: crate::daemon::DEFAULT_PORT,
            timeout: Duration::from_secs(20),
            cluster_lock: Some(dir.join("cluster.lock").display().to_string()),
            tunables: vec![],
            cluster_key: Some(dir.join("cluster.key")),
            daemon_args: vec![],
        }
    }

    /// The cluster `up` started in `dir`, from its nodes file (node 0's address and the
    /// count; the default port, and the lock file and key in `dir`).
    pub fn from_dir(dir: &Path) -> Result<ClusterSpec, String> {
        let path = dir.join("nodes");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let nodes = crate::daemon::nodes::parse_nodes(&text)?;
        let first = match nodes.first() {
            Some(std::net::IpAddr::V4(first)) => *first,
            _ => return Err(format!("{}: node 0 is not an IPv4 address", path.display())),
        };
        Ok(ClusterSpec { first_address: first, ..ClusterSpec::new(nodes.len(), dir) })
    }

    /// The same cluster without a cluster lock: leadership by majority.
    pub fn without_lock(mut self) -> ClusterSpec {
        self.cluster_lock = None;
        self
    }

    pub fn with_tunable(mut self, name: &str, value: u64) -> ClusterSpec {
        self.tunables.push((name.to_owned(), value));
        self
    }

    pub fn address(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.first_address) + node as u32)
    }
}

pub fn socket_path(dir: &Path, node: usize) -> PathBuf {
    dir.join(format!("node{node}.sock"))
}

fn pid_path(dir: &Path, node: usize) -> PathBuf {
    dir.join(format!("node{node}.pid"))
}

/// The rctdbd next to the running executable (target/<profile>/), else the one on PATH.
pub fn rctdbd_binary() -> PathBuf {
    let exe = std::env::current_exe().ok();
    let candidates = exe.iter().flat_map(|exe| {
        let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        [dir.join("rctdbd"), dir.join("../rctdbd")]
    });
    candidates.into_iter().find(|p| p.is_file()).unwrap_or_else(|| PathBuf::from("rctdbd"))
}

/// A cluster that is stopped when this value is dropped: for tests and benchmarks.
pub struct RunningCluster {
    spec: ClusterSpec,
}

impl RunningCluster {
    /// Stops whatever a previous run left in `spec.dir`, then starts the nodes. Nodes that
    /// started are stopped again if a later one fails.
    pub fn start(spec: ClusterSpec) -> Result<RunningCluster, String> {
        let _ = down(&spec.dir);
        let cluster = RunningCluster { spec };
        up(&cluster.spec)?;
        Ok(cluster)
    }

    pub fn dir(&self) -> &Path {
        &self.spec.dir
    }

    pub fn socket(&self, node: usize) -> PathBuf {
        socket_path(&self.spec.dir, node)
    }
}

impl Drop for RunningCluster {
    fn drop(&mut self) {
        let _ = down(&self.spec.dir);
    }
}

/// Starts the nodes and returns once every node serves with every link up.
pub fn up(spec: &ClusterSpec) -> Result<(), String> {
    prepare(spec)?;
    for node in 0..spec.nodes {
        start_node(spec, node)?;
    }
    wait_until_healthy(spec)
}

/// Writes what every node of `spec` is started with (the directory, the nodes file, the
/// cluster key unless it exists) without starting any: `up`, and benches that time the
/// start themselves, begin here so that every node gets the same files.
pub fn prepare(spec: &ClusterSpec) -> Result<(), String> {
    if spec.nodes == 0 || spec.nodes > 200 {
        return Err(format!("--nodes {}: give 1 to 200 nodes", spec.nodes));
    }
    std::fs::create_dir_all(&spec.dir).map_err(|e| format!("{}: {e}", spec.dir.display()))?;
    let nodes_file = spec.dir.join("nodes");
    let list: String = (0..spec.nodes).map(|k| format!("{}\n", spec.address(k))).collect();
    std::fs::write(&nodes_file, list).map_err(|e| format!("{}: {e}", nodes_file.display()))?;
    if let Some(key) = &spec.cluster_key {
        if !key.exists() {
            crate::transport::auth::generate_key_file(key)?;
        }
    }
    Ok(())
}

/// Starts (or, after it died, restarts) node `node` of the cluster `up` wrote into
/// `spec.dir`, without waiting for its links; its log is appended to.
pub fn start_node(spec: &ClusterSpec, node: usize) -> Result<(), String> {
    if let Some(pid) = running_pid(&spec.dir, node) {
        return Err(format!("node {node} is already running (pid {pid}); run `rctdb cluster down` first"));
    }
    let log = spec.dir.join(format!("node{node}.log"));
    let log_file = std::fs::File::options()
        .create(true)
        .append(true)
        .open(&log)
        .map_err(|e| format!("{}: {e}", log.display()))?;
    let rctdbd = rctdbd_binary();
    let mut command = Command::new(&rctdbd);
    if let Some(lock) = &spec.cluster_lock {
        command.arg("--cluster-lock").arg(lock);
    }
    if let Some(key) = &spec.cluster_key {
        command.arg("--cluster-key").arg(key);
    }
    for (name, value) in &spec.tunables {
        command.arg("--set").arg(format!("{name}={value}"));
    }
    command.args(&spec.daemon_args);
    let child = command
        .arg("--nodes")
        .arg(spec.dir.join("nodes"))
        .arg("--address")
        .arg(spec.address(node).to_string())
        .arg("--port")
        .arg(spec.port.to_string())
        .arg("--socket")
        .arg(socket_path(&spec.dir, node))
        .arg("--dbdir")
        .arg(spec.dir.join(format!("node{node}")))
        .stdin(Stdio::null())
        .stdout(log_file.try_clone().map_err(|e| e.to_string())?)
        .stderr(log_file)
        .spawn()
        .map_err(|e| format!("starting {}: {e}", rctdbd.display()))?;
    std::fs::write(pid_path(&spec.dir, node), format!("{}\n", child.id())).map_err(|e| e.to_string())
}

/// Kills node `node` at once (SIGKILL), as a crash would.
pub fn kill_node(dir: &Path, node: usize) -> Result<(), String> {
    match stop_node(dir, node, Signal::SIGKILL)? {
        true => Ok(()),
        false => Err(format!("node {node} is not running")),
    }
}

/// Sends `signal` to the node and waits for it to exit, killing it if it has not after a
/// grace period. Returns whether it was running.
fn stop_node(dir: &Path, node: usize, signal: Signal) -> Result<bool, String> {
    let Some(pid) = running_pid(dir, node) else { return Ok(false) };
    let pid = Pid::from_raw(pid);
    for signal in [signal, Signal::SIGKILL] {
        let _ = kill(pid, signal);
        if exits_within(dir, node, Duration::from_secs(5)) {
            return Ok(true);
        }
    }
    Err(format!("node {node} (pid {pid}) survived SIGKILL"))
}

fn exits_within(dir: &Path, node: usize, grace: Duration) -> bool {
    let deadline = Instant::now() + grace;
    while running_pid(dir, node).is_some() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5)); // polling for a process to exit
    }
    true
}

/// Waits until every node serves, in one generation, with every link up and every peer
/// alive.
pub fn wait_until_healthy(spec: &ClusterSpec) -> Result<(), String> {
    let nodes: Vec<usize> = (0..spec.nodes).collect();
    wait_until_serving(spec, &nodes)
}

/// Waits until the nodes `serving` are active in one generation and see each other alive
/// with links up (other nodes may be down).
pub fn wait_until_serving(spec: &ClusterSpec, serving: &[usize]) -> Result<(), String> {
    let deadline = Instant::now() + spec.timeout;
    let mut generations = std::collections::BTreeSet::new();
    for &node in serving {
        loop {
            let status = DaemonConnection::connect(&socket_path(&spec.dir, node))
                .and_then(|mut daemon| daemon.status(Duration::from_secs(2)));
            if let Ok(status) = &status {
                let peers_ok = serving.iter().filter(|&&p| p != node).all(|&p| status.sees_up(p as Pnn));
                if status.serves() && peers_ok {
                    generations.insert(status.generation);
                    break;
                }
            }
            if running_pid(&spec.dir, node).is_none() {
                return Err(format!(
                    "node {node} exited; see {}",
                    spec.dir.join(format!("node{node}.log")).display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "node {node}: not serving with all links up after {:?}: {status:?}",
                    spec.timeout
                ));
            }
            std::thread::sleep(Duration::from_millis(20)); // polling a starting daemon, not a race
        }
    }
    if generations.len() > 1 {
        // A recovery ran between our status reads: look again.
        return wait_until_serving(spec, serving);
    }
    Ok(())
}

/// The pid of node `node` if it runs (a zombie child of ours does not).
pub fn running_pid(dir: &Path, node: usize) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_path(dir, node)).ok()?.trim().parse().ok()?;
    let alive = kill(Pid::from_raw(pid), None).is_ok();
    // A zombie child of ours still "exists": reap it so it does not count as running.
    let exited = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG))
        .is_ok_and(|status| status != WaitStatus::StillAlive);
    (alive && !exited).then_some(pid)
}

/// Stops every node of the cluster in `dir` (SIGTERM, then SIGKILL after a grace period).
pub fn down(dir: &Path) -> Result<usize, String> {
    let mut stopped = 0;
    for node in nodes_with_pid_files(dir) {
        if stop_node(dir, node, Signal::SIGTERM)? {
            stopped += 1;
        }
        let _ = std::fs::remove_file(pid_path(dir, node));
    }
    Ok(stopped)
}

/// The nodes that have a `nodeK.pid` file in `dir`.
fn nodes_with_pid_files(dir: &Path) -> Vec<usize> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    entries
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            name.strip_prefix("node")?.strip_suffix(".pid")?.parse().ok()
        })
        .collect()
}
