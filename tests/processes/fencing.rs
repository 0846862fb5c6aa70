//! Fencing a stalled daemon (DESIGN §5.2, fencing). Its rctdbd is stopped (SIGSTOP)
//! while its local clients run on, as a VM's CPU steal or a swap storm stops it:
//!
//! - a stall shorter than the hold time costs the node nothing: every node reads what was
//!   acknowledged on it last, and it logs no emptying;
//! - a client process attached to it that holds a record and keeps writing it is killed by
//!   the node's fencing watchdog (and the databases frozen) before any other node's client
//!   gets that record: no write of it lands after.
//!
//! Each in majority mode (no cluster lock) and with the cluster lock. Client work on the
//! stalled node is done by client processes (this binary, `fencing_client_worker`), as smbd
//! does it: the watchdog kills processes, and must not kill the test.
//!
//! Addresses: 127.0.110.11-13 to 127.0.114.11-13.

use std::io::{BufRead, BufReader, Write};
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use rctdb::client::{ClusteredDb, DaemonConnection};
use rctdb::local::StoreFlag;
use rctdb_cli::tool::cluster::{ClusterSpec, RunningCluster};
use rctdbd::status::StatusControls;

const DB: &str = "fencing.tdb";
const KEY: &[u8] = b"fenced-key";
/// A client waits this long for a record: far beyond detection, hold and recovery.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Anything the cluster must do, on a loaded 2-core machine.
const LIMIT: Duration = Duration::from_secs(30);
/// The stalled node: not node 0, whose client writes first; with the lock, node 0 leads
/// (it starts first), so node 2 is a follower.
const STALLED: usize = 2;

fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// The body of a client process; `RCTDB_FENCE_MODE` says what it does.
#[test]
fn fencing_client_worker() {
    let Ok(mode) = std::env::var("RCTDB_FENCE_MODE") else { return };
    let socket = PathBuf::from(std::env::var("RCTDB_FENCE_SOCKET").expect("socket"));
    let mut db = ClusteredDb::open(&socket, DB, MIGRATE_TIMEOUT).expect("attach");
    let mut out = std::io::stdout();
    match mode.as_str() {
        // Stores each value given, in turn, and says so.
        "write" => {
            for value in std::env::var("RCTDB_FENCE_VALUES").expect("values").split(',') {
                write_value(&mut db, value.as_bytes());
                writeln!(out, "wrote {value}").unwrap();
            }
        }
        // Writes "w:N" for N = 1, 2, ... for ever, and says when each store was done (on
        // CLOCK_MONOTONIC): killed, it writes no more.
        "keep-writing" => {
            for seq in 1u64.. {
                write_value(&mut db, format!("w:{seq}").as_bytes());
                writeln!(out, "stored {seq} {}", monotonic_ns()).unwrap();
            }
        }
        other => panic!("unknown mode {other}"),
    }
}

fn write_value(db: &mut ClusteredDb, value: &[u8]) {
    db.chainlock(KEY).expect("chainlock");
    db.store(KEY, &[value], StoreFlag::Replace).expect("store");
    db.chainunlock(KEY).expect("chainunlock");
}

struct Worker {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Worker {
    fn start(socket: &Path, mode: &str, values: &str) -> Worker {
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args(["--exact", "fencing::fencing_client_worker", "--nocapture", "--test-threads=1"])
            .env("RCTDB_FENCE_MODE", mode)
            .env("RCTDB_FENCE_SOCKET", socket)
            .env("RCTDB_FENCE_VALUES", values)
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a client process");
        let stdout = child.stdout.take().expect("its output");
        let (line, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for text in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.send(text).is_err() {
                    return;
                }
            }
        });
        Worker { child, lines }
    }

    /// The next line that contains `word`, from `word` on (libtest may print before it).
    fn next_with(&self, word: &str) -> String {
        let deadline = Instant::now() + LIMIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(at) = line.find(word) {
                        return line[at..].to_string();
                    }
                }
                Err(err) => panic!("client process {} never said {word:?}: {err}", self.child.id()),
            }
        }
    }

    /// Waits (boundedly) for it to end; its exit status.
    fn ended(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + LIMIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the client") {
                return status;
            }
            assert!(Instant::now() < deadline, "client process {} did not end", self.child.id());
            std::thread::sleep(Duration::from_millis(5)); // polling a child's exit
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Fixture {
    cluster: RunningCluster,
}

impl Fixture {
    fn start(name: &str, third_octet: u8, with_lock: bool) -> Fixture {
        let dir = std::env::temp_dir().join(format!("rctdb-fencing-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spec = ClusterSpec::new(3, &dir);
        if !with_lock {
            spec = spec.without_lock();
        }
        spec.first_address = Ipv4Addr::new(127, 0, third_octet, 11);
        let cluster = RunningCluster::start(spec).unwrap_or_else(|e| panic!("cluster up: {e}"));
        Fixture { cluster }
    }

    fn open(&self, node: usize) -> ClusteredDb {
        ClusteredDb::open(&self.cluster.socket(node), DB, MIGRATE_TIMEOUT)
            .unwrap_or_else(|e| panic!("attaching {DB} on node {node}: {e}"))
    }

    fn read(&self, node: usize) -> Option<Vec<u8>> {
        let mut db = self.open(node);
        db.chainlock(KEY).unwrap_or_else(|e| panic!("chainlock on node {node}: {e}"));
        let value = db.fetch(KEY).unwrap_or_else(|e| panic!("fetch on node {node}: {e}"));
        db.chainunlock(KEY).unwrap_or_else(|e| panic!("chainunlock on node {node}: {e}"));
        value
    }

    fn pid(&self, node: usize) -> Pid {
        let file = self.cluster.dir().join(format!("node{node}.pid"));
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        Pid::from_raw(text.trim().parse().unwrap_or_else(|e| panic!("{}: {e}", file.display())))
    }

    fn log(&self, node: usize) -> String {
        std::fs::read_to_string(self.cluster.dir().join(format!("node{node}.log"))).unwrap_or_default()
    }

    /// Waits until every node serves again, with node `node` among them.
    fn wait_all_serving(&self) {
        let deadline = Instant::now() + LIMIT;
        let serves = |node: usize| {
            DaemonConnection::connect(&self.cluster.socket(node))
                .and_then(|mut daemon| daemon.status(Duration::from_secs(1)))
                .is_ok_and(|status| status.serves())
        };
        while !(0..3).all(serves) {
            assert!(Instant::now() < deadline, "the nodes did not all serve again within {LIMIT:?}");
            std::thread::sleep(Duration::from_millis(20)); // polling the cluster's state
        }
    }
}

/// The daemon of a node stopped with SIGSTOP; continued when dropped, also when a check fails.
struct Stopped(Pid);

impl Stopped {
    fn new(pid: Pid) -> Stopped {
        kill(pid, Signal::SIGSTOP).unwrap_or_else(|e| panic!("SIGSTOP {pid}: {e}"));
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

// ---- (a) a stall shorter than the hold time keeps the node's records

fn a_short_stall_keeps_what_was_acknowledged(name: &str, third_octet: u8, with_lock: bool) {
    const STALL: Duration = Duration::from_millis(1500);
    let fx = Fixture::start(name, third_octet, with_lock);
    write_on(&fx, 0, "v1");
    write_on(&fx, STALLED, "v2,v3");

    // Only what it logs from the stall on counts: a node that joined before its peers
    // listened may be emptied at its first admission (its files are empty then anyway).
    let logged_before_stall = fx.log(STALLED).len();
    let stopped = Stopped::new(fx.pid(STALLED));
    std::thread::sleep(STALL); // the fault's length, not a wait for anything
    drop(stopped);
    fx.wait_all_serving();
    for node in 0..3 {
        assert_eq!(
            fx.read(node).as_deref(),
            Some(&b"v3"[..]),
            "{name}: node {node} reads the last value acknowledged"
        );
    }
    let log = fx.log(STALLED);
    let since_stall = log.get(logged_before_stall..).unwrap_or(&log);
    assert!(
        !since_stall.contains("Emptied"),
        "{name}: node {STALLED} was emptied after a {STALL:?} stall:\n{since_stall}"
    );
}

/// Stores `values` in turn on `node`, from a client process that then ends.
fn write_on(fx: &Fixture, node: usize, values: &str) {
    let mut worker = Worker::start(&fx.cluster.socket(node), "write", values);
    let last = values.rsplit(',').next().expect("a value");
    worker.next_with(&format!("wrote {last}"));
    assert!(worker.ended().success(), "the writer on node {node} ended well");
}

#[test]
fn a_short_stall_keeps_what_was_acknowledged_by_majority() {
    a_short_stall_keeps_what_was_acknowledged("short-majority", 110, false);
}

#[test]
fn a_short_stall_keeps_what_was_acknowledged_with_the_lock() {
    a_short_stall_keeps_what_was_acknowledged("short-lock", 111, true);
}

// ---- (b) a stalled daemon's writing client is killed before anyone else gets its record

/// The others take a left-out node's records over only after the hold time: ten dead times
/// (6 s) today. Stalls shorter and longer than that.
const SHORTER_THAN_HOLD: Duration = Duration::from_secs(3);
const LONGER_THAN_HOLD: Duration = Duration::from_millis(7500);

fn a_stalled_daemon_s_client_is_fenced(name: &str, third_octet: u8, with_lock: bool, stall: Duration) {
    let fx = Fixture::start(name, third_octet, with_lock);
    write_on(&fx, 0, "w:0");
    let mut writer = Worker::start(&fx.cluster.socket(STALLED), "keep-writing", "");
    // It holds the record now, and writes it through its own file handle.
    writer.next_with("stored 20 ");

    let stop_ns = monotonic_ns();
    let stopped = Stopped::new(fx.pid(STALLED));
    // Node 0's client asks for the record at once, as a client of another node would.
    let (got, got_rx) = mpsc::channel();
    let reader_socket = fx.cluster.socket(0);
    let reader = std::thread::spawn(move || {
        let mut db = ClusteredDb::open(&reader_socket, DB, MIGRATE_TIMEOUT).expect("attach on node 0");
        db.chainlock(KEY).expect("node 0's client gets the record");
        let got_ns = monotonic_ns();
        let value = db.fetch(KEY).expect("fetch");
        db.chainunlock(KEY).expect("chainunlock");
        let _ = got.send((got_ns, value));
    });
    // The writer's end, seen from here while the daemon is stopped.
    let status = writer.ended();
    let dead_seen_ns = monotonic_ns();
    let stopped_for = Duration::from_nanos(monotonic_ns() - stop_ns);
    std::thread::sleep(stall.saturating_sub(stopped_for)); // the fault's length
    drop(stopped);
    let (got_ns, value) = got_rx.recv_timeout(LIMIT).expect("node 0's client was served");
    reader.join().expect("the reader");

    assert_eq!(status.signal(), Some(libc::SIGKILL), "{name}: the writer was killed (SIGKILL): {status}");
    let fenced_after = Duration::from_nanos(dead_seen_ns - stop_ns);
    println!("{name}: the writer was killed {fenced_after:?} after its daemon stopped");
    assert!(dead_seen_ns < got_ns, "{name}: the writer died before node 0's client got the record");
    assert!(
        fenced_after < stall,
        "{name}: fenced while its daemon was stopped, not after ({fenced_after:?})"
    );
    let stores: Vec<(u64, u64)> = writer
        .lines
        .try_iter()
        .filter_map(|line| {
            let rest = &line[line.find("stored ")? + 7..];
            let (seq, at) = rest.split_once(' ')?;
            Some((seq.parse().ok()?, at.parse().ok()?))
        })
        .collect();
    let (last_seq, last_at) = stores.last().copied().unwrap_or((20, stop_ns));
    assert!(last_at < got_ns, "{name}: a write landed after node 0's client got the record");
    let text = String::from_utf8(value.expect("the record has a value")).expect("text");
    println!(
        "{name}: node 0's client got {text} {:?} after the stop; the writer's last report: w:{last_seq}",
        Duration::from_nanos(got_ns - stop_ns)
    );
    let seq: u64 = text.strip_prefix("w:").and_then(|n| n.parse().ok()).expect("a value the writer wrote");
    // Its last store may have landed without its report (killed in between).
    assert!(seq <= last_seq + 1, "{name}: node 0 read w:{seq}, the writer wrote up to w:{}", last_seq + 1);
    fx.wait_all_serving();
    assert_eq!(fx.read(1), Some(text.clone().into_bytes()), "{name}: no later write surfaced");
    assert!(
        fx.log(STALLED).contains("ran past its lease"),
        "{name}: node {STALLED}'s fencing watchdog says it fenced"
    );
}

#[test]
fn a_stalled_daemon_s_client_is_fenced_by_majority() {
    a_stalled_daemon_s_client_is_fenced("client-majority", 112, false, SHORTER_THAN_HOLD);
}

#[test]
fn a_stalled_daemon_s_client_is_fenced_with_the_lock() {
    a_stalled_daemon_s_client_is_fenced("client-lock", 113, true, SHORTER_THAN_HOLD);
}

/// Node 0's client gets the record while node 2 is still stopped: a copy promoted after the
/// hold time, when the writer has long been killed.
#[test]
fn a_client_is_fenced_before_its_records_are_taken_over() {
    a_stalled_daemon_s_client_is_fenced("takeover-majority", 114, false, LONGER_THAN_HOLD);
}
