//! `rctdb bench ring`: one record bouncing between nodes, every call a migration, the way
//! `anchors/ctdbd/ctdb_ring.c` drives Samba's ctdbd (raw REQ_CALL with immediate
//! migration, alternating node sockets), and the loopback TCP round trip as the floor.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::client::DaemonConnection;
use crate::engine::lmaster_of;
use crate::status::StatusControls;
use crate::tool::cluster::socket_path;
use crate::wire::Pnn;

#[derive(Debug, Clone)]
pub struct Latencies {
    pub ops: usize,
    pub seconds: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

impl Latencies {
    fn from_samples(mut samples: Vec<Duration>, elapsed: Duration) -> Latencies {
        samples.sort();
        let at =
            |q: f64| samples.get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)));
        let us = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e6);
        Latencies {
            ops: samples.len(),
            seconds: elapsed.as_secs_f64(),
            p50_us: us(at(0.50)),
            p99_us: us(at(0.99)),
        }
    }

    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.seconds
    }
}

/// A key whose LMASTER (over `cluster_nodes` nodes) is, or is not, one of `ring`.
pub fn ring_key(ring: &[Pnn], cluster_nodes: usize, lmaster_in_ring: bool) -> Vec<u8> {
    let vnn_map: Vec<Pnn> = (0..cluster_nodes as Pnn).collect();
    (0u32..)
        .map(|i| format!("ringkey-{i}").into_bytes())
        .find(|key| ring.contains(&lmaster_of(key, &vnn_map)) == lmaster_in_ring)
        .expect("some key hashes anywhere")
}

/// Bounces `key` of database `db` across the ring's node sockets for `seconds`.
pub fn ring(dir: &Path, db: &str, ring: &[usize], key: &[u8], seconds: f64) -> Result<Latencies, String> {
    let timeout = Duration::from_secs(10);
    let mut daemons = ring
        .iter()
        .map(|&node| DaemonConnection::connect(&socket_path(dir, node)).map_err(|e| e.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut db_id = 0;
    for daemon in &mut daemons {
        db_id = daemon.attach(db, timeout).map_err(|e| e.to_string())?.db_id;
    }
    let mut samples = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let mut turn = 0;
    while Instant::now() < end {
        let t = Instant::now();
        let count = daemons.len();
        daemons[turn % count].migrate(db_id, key, false, timeout).map_err(|e| e.to_string())?;
        samples.push(t.elapsed());
        turn += 1;
    }
    Ok(Latencies::from_samples(samples, start.elapsed()))
}

/// 64-byte ping-pong over loopback TCP with TCP_NODELAY: what one network round trip costs
/// on this machine, measured in the same run as the ring.
pub fn loopback_floor(seconds: f64) -> Result<Latencies, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut stream, _) = listener.accept()?;
        stream.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        while stream.read_exact(&mut buf).is_ok() {
            stream.write_all(&buf)?;
        }
        Ok(())
    });
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut buf = [7u8; 64];
    let mut samples = Vec::with_capacity(1 << 20);
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    while Instant::now() < end {
        let t = Instant::now();
        stream.write_all(&buf).and_then(|()| stream.read_exact(&mut buf)).map_err(|e| e.to_string())?;
        samples.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    drop(stream);
    let _ = echo.join();
    Ok(Latencies::from_samples(samples, elapsed))
}

/// How many times the nodes of the cluster in `dir` declared a peer dead (their
/// `nodes_died` counters): during a run without faults, every one is a false death.
pub fn deaths_declared(dir: &Path, nodes: usize) -> Result<u64, String> {
    let mut total = 0;
    for node in 0..nodes {
        let mut daemon = DaemonConnection::connect(&socket_path(dir, node)).map_err(|e| e.to_string())?;
        let status = daemon.status(Duration::from_secs(10)).map_err(|e| e.to_string())?;
        total += status.stats.nodes_died;
    }
    Ok(total)
}

/// Threads that keep every CPU busy until dropped: a benchmark's noisy neighbour.
pub struct CpuHog {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl CpuHog {
    pub fn start() -> CpuHog {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let threads = (0..cpus)
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x: u64 = 1;
                    while !stop.load(Ordering::Relaxed) {
                        x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    }
                    std::hint::black_box(x);
                })
            })
            .collect();
        CpuHog { stop, threads }
    }
}

impl Drop for CpuHog {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}
