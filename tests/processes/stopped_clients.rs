//! No client can stall a node. Client processes are stopped (SIGSTOP) at every
//! point that matters, under load: holding a chain lock, inside a store (holding tdb's
//! free-list lock, as libtdb does mid-store), with a request half sent,
//! with a traverse's answer unread, and at random points of their own work. While they are
//! stopped every other key, client and node must keep being served; once they are killed,
//! what they held is served again; and no increment anybody was told of is lost.
//!
//! Address: 127.0.55.11-13.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rctdb::client::{ClusteredDb, DaemonConnection};
use rctdb::local::StoreFlag;
use rctdb::wire::control::opcode;
use rctdb::wire::{codec, Body, Packet, ReqControl};
use rctdb_cli::tool::cluster::{ClusterSpec, RunningCluster};
use rctdbd::status::StatusControls;

const DB: &str = "stopped.tdb";
const OTHER_DB: &str = "other.tdb";
const TIMEOUT: Duration = Duration::from_secs(10);
/// Progress, detection and recovery on a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(30);
/// Increments every worker that is not stopped must make while the others are.
const PROGRESS: u64 = 40;

fn increment(db: &mut ClusteredDb, key: &[u8]) {
    db.chainlock(key).expect("chainlock");
    let value =
        db.fetch(key).expect("fetch").map_or(0, |v| u64::from_le_bytes(v.try_into().expect("8 bytes")));
    db.store(key, &[&(value + 1).to_le_bytes()], StoreFlag::Replace).expect("store");
    db.chainunlock(key).expect("chainunlock");
}

fn stop_myself() {
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGSTOP).expect("SIGSTOP");
}

/// The body of a client process; `RCTDB_STOP_MODE` says what it does.
#[test]
fn stopped_client_worker() {
    let Ok(mode) = std::env::var("RCTDB_STOP_MODE") else { return };
    let socket = PathBuf::from(std::env::var("RCTDB_STOP_SOCKET").expect("socket"));
    let mut db = ClusteredDb::open(&socket, DB, TIMEOUT).expect("attach");
    let mut out = std::io::stdout();
    match mode.as_str() {
        // Increments its keys in turn until the stop file exists; reports each one.
        "incr" => {
            let keys = std::env::var("RCTDB_STOP_KEYS").expect("keys");
            let stop_file = PathBuf::from(std::env::var("RCTDB_STOP_FILE").expect("stop file"));
            let mut counts: HashMap<&str, u64> = HashMap::new();
            for key in keys.split(',').cycle() {
                if stop_file.exists() {
                    break;
                }
                increment(&mut db, key.as_bytes());
                *counts.entry(key).or_default() += 1;
                writeln!(out, "did {key}").unwrap();
            }
            let done: Vec<String> = counts.iter().map(|(k, n)| format!("{k}={n}")).collect();
            writeln!(out, "final {}", done.join(",")).unwrap();
        }
        "hold-chain" => {
            db.chainlock(b"held-by-a-stopped-client").expect("chainlock");
            writeln!(out, "ready").unwrap();
            stop_myself();
        }
        // What a process stopped inside tdb_store's allocation holds: the free-list lock
        // (byte 164, just before the chains), a plain fcntl lock.
        "hold-freelist" => {
            let path = PathBuf::from(std::env::var("RCTDB_STOP_FILE_PATH").expect("file path"));
            let file = std::fs::File::options().read(true).write(true).open(&path).expect("db file");
            let lock = nix::libc::flock {
                l_type: libc::F_WRLCK as i16,
                l_whence: libc::SEEK_SET as i16,
                l_start: 164,
                l_len: 1,
                l_pid: 0,
            };
            nix::fcntl::fcntl(std::os::fd::AsRawFd::as_raw_fd(&file), nix::fcntl::FcntlArg::F_SETLK(&lock))
                .expect("taking the free-list lock");
            writeln!(out, "ready").unwrap();
            stop_myself();
        }
        "half-request" => {
            let mut raw = UnixStream::connect(&socket).expect("connect");
            let frame = status_request(1);
            raw.write_all(&frame[..frame.len() / 2]).expect("half a frame");
            writeln!(out, "ready").unwrap();
            stop_myself();
        }
        // Asks for every record again and again and reads none of the answers.
        "unread-traverse" => {
            let mut raw = UnixStream::connect(&socket).expect("connect");
            raw.set_nonblocking(true).unwrap();
            for reqid in 1..=200 {
                let body = Body::ReqControl(ReqControl {
                    opcode: opcode::TRAVERSE_ALL,
                    srvid: 0,
                    client_id: 0,
                    flags: 0,
                    data: db.db_id().to_le_bytes().to_vec(),
                });
                let frame = codec::encode(&Packet { generation: 0, destnode: 0, srcnode: 0, reqid, body });
                if raw.write_all(&frame).is_err() {
                    break; // the daemon stopped reading us: it holds enough of our answers
                }
            }
            writeln!(out, "ready").unwrap();
            stop_myself();
        }
        other => panic!("unknown mode {other}"),
    }
}

fn status_request(reqid: u32) -> Vec<u8> {
    let body = Body::ReqControl(ReqControl {
        opcode: opcode::STATUS,
        srvid: 0,
        client_id: 0,
        flags: 0,
        data: vec![],
    });
    codec::encode(&Packet { generation: 0, destnode: 0, srcnode: 0, reqid, body })
}

struct Worker {
    mode: String,
    child: Child,
    lines: mpsc::Receiver<String>,
}

fn spawn(mode: &str, socket: &Path, env: &[(&str, String)]) -> Worker {
    let mut command = Command::new(std::env::current_exe().unwrap());
    command
        .args(["--exact", "stopped_clients::stopped_client_worker", "--nocapture", "--test-threads=1"])
        .env("RCTDB_STOP_MODE", mode)
        .env("RCTDB_STOP_SOCKET", socket)
        .stdout(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().expect("spawn a client process");
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Worker { mode: mode.to_string(), child, lines }
}

impl Worker {
    fn wait_for_line(&self, prefix: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                // libtest's "test stopped_client_worker ... " may start the first line.
                Ok(line) if line.contains(prefix) => return line[line.find(prefix).unwrap()..].to_string(),
                Ok(_) => {}
                Err(_) => panic!("worker {} ({}) never said {prefix:?}", self.child.id(), self.mode),
            }
        }
    }

    /// Increments reported so far, per key.
    fn drain(&self, counts: &mut HashMap<String, u64>) {
        while let Ok(line) = self.lines.try_recv() {
            if let Some(at) = line.find("did ") {
                *counts.entry(line[at + 4..].to_string()).or_default() += 1;
            }
        }
    }

    fn is_stopped(&self) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // The state follows the command name in parentheses.
        stat.rsplit(')').next().is_some_and(|rest| rest.trim_start().starts_with('T'))
    }

    fn signal(&self, signal: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), signal);
    }
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < LIMIT, "waited {LIMIT:?} for {what}");
        std::thread::sleep(Duration::from_millis(20)); // polling other processes' progress
    }
}

/// The node answers a status request within a second.
fn answers(cluster: &RunningCluster, node: usize) -> bool {
    let started = Instant::now();
    let answered = DaemonConnection::connect(&cluster.socket(node))
        .and_then(|mut d| d.status(Duration::from_secs(1)))
        .is_ok_and(|s| s.serves());
    answered && started.elapsed() < Duration::from_secs(1)
}

#[test]
fn stopped_clients_cost_only_what_they_hold() {
    let dir = std::env::temp_dir().join(format!("rctdb-stopped-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut spec = ClusterSpec::new(3, &dir);
    spec.first_address = Ipv4Addr::new(127, 0, 55, 11);
    let cluster = RunningCluster::start(spec).expect("cluster up");
    let stop_file = dir.join("stop");
    let socket = |node: usize| cluster.socket(node);
    let mut setup = ClusteredDb::open(&socket(0), DB, TIMEOUT).expect("attach");
    for i in 0..300 {
        // Records for the traverse to carry, and a file with some content.
        setup.store(format!("filler-{i}").as_bytes(), &[&[7u8; 512]], StoreFlag::Replace).expect("store");
    }
    drop(setup);

    // Workers that are never stopped: an own key each, and keys shared with a worker on
    // another node, so records keep migrating (into node 0 too).
    let plan: Vec<(usize, &str)> = vec![
        (0, "own-0a,shared-01"),
        (0, "own-0b,shared-02"),
        (1, "own-1a,shared-01"),
        (1, "own-1b,shared-12"),
        (2, "own-2a,shared-02"),
        (2, "own-2b,shared-12"),
    ];
    let incr_env = |keys: &str| {
        vec![("RCTDB_STOP_KEYS", keys.to_string()), ("RCTDB_STOP_FILE", stop_file.display().to_string())]
    };
    let workers: Vec<Worker> =
        plan.iter().map(|(node, keys)| spawn("incr", &socket(*node), &incr_env(keys))).collect();
    // Workers stopped at random points of their own work: two on node 0, one elsewhere.
    let mut random: Vec<Worker> = [(0, "victim-0a"), (0, "victim-0b"), (1, "victim-1"), (2, "victim-2")]
        .iter()
        .map(|(node, key)| spawn("incr", &socket(*node), &incr_env(key)))
        .collect();
    let mut counts: HashMap<String, u64> = HashMap::new();
    for worker in workers.iter().chain(&random) {
        worker.wait_for_line("did ");
    }

    // Clients stopped at chosen points, all on node 0.
    // The chain holder first: its record is new, and a new record needs the free list.
    let file = dir.join("node0").join(DB).display().to_string();
    let mut chosen = vec![spawn("hold-chain", &socket(0), &[])];
    chosen[0].wait_for_line("ready");
    chosen.push(spawn("hold-freelist", &socket(0), &[("RCTDB_STOP_FILE_PATH", file)]));
    chosen.push(spawn("half-request", &socket(0), &[]));
    chosen.push(spawn("unread-traverse", &socket(0), &[]));
    for worker in &chosen[1..] {
        worker.wait_for_line("ready");
    }
    // Random points: a pseudo-random pause (seeded by the pid, printed) before each stop.
    let mut seed = u64::from(std::process::id()) | 1;
    eprintln!("random stop points from seed {seed}");
    for worker in &random {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_micros(seed % 30_000)); // where it stops is the point
        worker.signal(nix::sys::signal::Signal::SIGSTOP);
    }
    wait_until("every victim to be stopped", || chosen.iter().chain(&random).all(Worker::is_stopped));

    // Everyone else keeps being served: every worker makes progress, every node answers.
    for worker in &workers {
        worker.drain(&mut counts);
    }
    let before: Vec<u64> = plan
        .iter()
        .map(|(_, keys)| keys.split(',').map(|k| counts.get(k).copied().unwrap_or(0)).sum())
        .collect();
    let mut progress = vec![0u64; workers.len()];
    wait_until("every worker that is not stopped to make progress", || {
        for (i, worker) in workers.iter().enumerate() {
            let mut mine = HashMap::new();
            worker.drain(&mut mine);
            progress[i] += mine.values().sum::<u64>();
            for (key, n) in mine {
                *counts.entry(key).or_default() += n;
            }
        }
        progress.iter().all(|&p| p >= PROGRESS)
    });
    for node in 0..3 {
        assert!(answers(&cluster, node), "node {node} does not answer while clients are stopped");
    }
    // A new record in another database of node 0 is created as usual. One in the database
    // whose free list a stopped client holds waits for it, as every libtdb writer of that
    // file does, and its client gets a timeout error, not a hang.
    let mut other = ClusteredDb::open(&socket(0), OTHER_DB, TIMEOUT).expect("attach another db");
    other.store(b"fresh", &[b"made while clients are stopped"], StoreFlag::Replace).expect("store");
    let short = Duration::from_secs(1);
    let mut same = ClusteredDb::open(&socket(0), DB, short).expect("attach");
    let started = Instant::now();
    let refused = same.store(b"fresh-in-the-held-db", &[b"x"], StoreFlag::Replace);
    assert!(refused.is_err(), "a new record was made although a stopped client holds the free list");
    assert!(started.elapsed() < 3 * short, "the refusal took {:?}", started.elapsed());
    drop(same);
    let status = DaemonConnection::connect(&socket(0)).and_then(|mut d| d.status(TIMEOUT)).expect("status");
    assert!(
        status.records_unwritten > 0,
        "node 0 keeps no record in memory, so the held free list was never met:\n{status}"
    );
    eprintln!("progress while clients were stopped: {progress:?} (counted from {before:?})");

    // Killed, the stopped clients give back what they held.
    for worker in chosen.iter().chain(&random) {
        worker.signal(nix::sys::signal::Signal::SIGKILL);
    }
    let mut on1 = ClusteredDb::open(&socket(1), DB, TIMEOUT).expect("attach on node 1");
    on1.chainlock(b"held-by-a-stopped-client").expect("the record a stopped client held, once it is gone");
    on1.chainunlock(b"held-by-a-stopped-client").unwrap();
    on1.store(b"fresh-in-the-held-db", &[b"after"], StoreFlag::Replace).expect("the free list is free again");

    // Not one acknowledged increment is lost.
    std::fs::write(&stop_file, b"").unwrap();
    let mut acknowledged: HashMap<String, u64> = HashMap::new();
    for mut worker in workers {
        let line = worker.wait_for_line("final ");
        for pair in line["final ".len()..].split(',').filter(|p| !p.is_empty()) {
            let (key, n) = pair.split_once('=').unwrap();
            *acknowledged.entry(key.to_string()).or_default() += n.parse::<u64>().unwrap();
        }
        assert!(worker.child.wait().unwrap().success(), "a worker failed");
    }
    for (key, expected) in &acknowledged {
        let value = on1.fetch(key.as_bytes()).unwrap().map(|v| u64::from_le_bytes(v.try_into().unwrap()));
        assert_eq!(value, Some(*expected), "key {key}: increments lost or invented");
    }
    for worker in chosen.iter_mut().chain(random.iter_mut()) {
        let _ = worker.child.wait();
    }
    // A victim killed mid-increment may have stored one it never reported, never fewer:
    // what it was told of survived its stop and its death.
    for worker in &random {
        // Its first increment was read when the test waited for it to start.
        let mut reported = HashMap::new();
        while let Ok(line) = worker.lines.recv_timeout(TIMEOUT) {
            if let Some(at) = line.find("did ") {
                *reported.entry(line[at + 4..].to_string()).or_insert(0u64) += 1;
            }
        }
        for (key, reported) in reported {
            let count = reported + 1;
            let value =
                on1.fetch(key.as_bytes()).unwrap().map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap()));
            assert!(value == count || value == count + 1, "victim key {key}: {value} after {count} reported");
        }
    }
    drop(on1);
    drop(other);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
