//! Thousands of client processes on one node (smbd forks one per SMB client): the daemon's
//! threads, descriptors and memory stay bounded while they are connected and return to
//! where they were when they leave; a client that stops reading costs only itself; limits
//! refuse the one client over them with an error that says why.

use crate::socket_support;

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, ForkResult, Pid};
use rctdb::client::DaemonConnection;
use rctdb::wire::codec::write_packet;
use rctdb::wire::ctdb::opcode;
use rctdb::wire::{Body, Packet, ReqControl, ReqMessage, CURRENT_NODE};
use rctdb_cli::tool::clients_bench::ProcessFigures;
use rctdb_cli::tool::cluster::{self, ClusterSpec, RunningCluster};
use rctdb_cli::tool::idle_clients::IdleClients;
use socket_support::request;

const TIMEOUT: Duration = Duration::from_secs(10);
const IDLE_CLIENTS: usize = 2000;
/// Bounds while IDLE_CLIENTS are connected. Measured (one node, debug build, 2026-12-03):
/// 4 threads, baseline + 2000 descriptors, ~10 MiB resident; a thread per connection made
/// that (3 nodes, release) 4010 threads, 6023 descriptors and 63-82 MiB.
const MAX_THREADS: usize = 32;
const MAX_EXTRA_FDS: usize = 32;
const MAX_RSS_KIB: usize = 48 << 10;

fn control(opcode: u32, srvid: u64) -> Body {
    Body::ReqControl(ReqControl { opcode, srvid, client_id: 0, flags: 0, data: vec![] })
}

/// Clients the node serves, not counting the one that asks (CTDB's PING answers the count).
fn connected_clients(socket: &Path) -> usize {
    let mut stream = UnixStream::connect(socket).expect("connect");
    match request(&mut stream, 1, control(opcode::PING, 0)) {
        Body::ReplyControl(reply) => reply.status as usize - 1,
        other => panic!("PING: {other:?}"),
    }
}

fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < until, "not within {deadline:?}: {what}");
        std::thread::sleep(Duration::from_millis(20)); // polling the daemon's state
    }
}

fn daemon_pid(dir: &Path) -> i32 {
    std::fs::read_to_string(dir.join("node0.pid")).expect("pid file").trim().parse().expect("a pid")
}

/// A normal client attaches and migrates a record here, promptly.
fn assert_served(socket: &Path, key: &str) -> Duration {
    let start = Instant::now();
    let mut daemon = DaemonConnection::connect(socket).expect("connect");
    let db_id = daemon.attach("idle.tdb", TIMEOUT).expect("attach").db_id;
    daemon.migrate(db_id, key.as_bytes(), false, TIMEOUT).expect("migrate");
    let took = start.elapsed();
    assert!(took < Duration::from_secs(2), "a normal client waited {took:?}");
    took
}

/// A child process that registers `srvid`, says so on `ready`, and then never reads.
fn spawn_listener_that_stops_reading(socket: &Path, srvid: u64) -> Pid {
    let (ready_r, ready_w) = nix::unistd::pipe().expect("pipe");
    // SAFETY: the child makes system calls and allocates, then waits for its end.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let mut stream = UnixStream::connect(socket).expect("connect");
            request(&mut stream, 1, control(opcode::REGISTER_SRVID, srvid));
            let _ = nix::unistd::write(&ready_w, b"R");
            loop {
                nix::unistd::pause();
            }
        }
        ForkResult::Parent { child } => {
            drop(ready_w);
            let mut byte = [0u8; 1];
            let mut ready = std::fs::File::from(ready_r);
            ready.read_exact(&mut byte).expect("the listener registered");
            child
        }
    }
}

#[test]
fn two_thousand_client_processes_cost_bounded_resources() {
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).expect("limit");
    assert!(
        hard >= IDLE_CLIENTS as u64 + 512,
        "the hard open files limit ({hard}) leaves the daemon too few descriptors for {IDLE_CLIENTS} \
         clients: raise it (ulimit -Hn)"
    );
    let dir = std::env::temp_dir().join(format!("rctdb-scale-clients-{}", std::process::id()));
    let mut spec = ClusterSpec::new(1, &dir);
    spec.first_address = std::net::Ipv4Addr::new(127, 0, 10, 11);
    let cluster = RunningCluster::start(spec).unwrap_or_else(|e| panic!("cluster up: {e}"));
    let socket = cluster.socket(0);
    let pid = daemon_pid(&dir);

    assert_served(&socket, "warm-up");
    wait_for("the warm-up client gone", TIMEOUT, || connected_clients(&socket) == 0);
    let baseline = ProcessFigures::of(pid).expect("figures");

    let started = Instant::now();
    let idle = IdleClients::spawn(&socket, "idle.tdb", IDLE_CLIENTS, Duration::from_secs(60))
        .unwrap_or_else(|e| panic!("idle clients: {e}"));
    let attach_time = started.elapsed();
    assert_eq!(connected_clients(&socket), IDLE_CLIENTS);
    let loaded = ProcessFigures::of(pid).expect("figures");
    let served_in = assert_served(&socket, "while-loaded");
    eprintln!(
        "{IDLE_CLIENTS} clients attached in {attach_time:?}; daemon threads/fds/RSS KiB: \
         baseline {baseline:?}, with them {loaded:?}; a normal client served in {served_in:?}"
    );
    assert!(loaded.threads <= MAX_THREADS, "{} threads with {IDLE_CLIENTS} clients", loaded.threads);
    assert!(
        loaded.fds <= baseline.fds + IDLE_CLIENTS + MAX_EXTRA_FDS,
        "{} descriptors with {IDLE_CLIENTS} clients (baseline {})",
        loaded.fds,
        baseline.fds
    );
    assert!(loaded.rss_kib <= MAX_RSS_KIB, "{} KiB resident with {IDLE_CLIENTS} clients", loaded.rss_kib);

    // A client that stops reading while messages flood its srvid is disconnected, alone.
    let srvid = 0xfeed_0000_0000_0001;
    let stopped = spawn_listener_that_stops_reading(&socket, srvid);
    kill(stopped, Signal::SIGSTOP).expect("SIGSTOP");
    let mut flooder = UnixStream::connect(&socket).expect("connect");
    let message = Packet {
        generation: 0,
        destnode: CURRENT_NODE,
        srcnode: 0,
        reqid: 0,
        body: Body::Message(ReqMessage { srvid, data: vec![0x5a; 64 << 10] }),
    };
    // 32 MiB: past the 16 MiB a client may leave unread, plus the socket buffers.
    for _ in 0..512 {
        write_packet(&mut flooder, &message).expect("the flooder is served");
    }
    let log = dir.join("node0.log");
    let named = format!("(pid {stopped}): disconnected: it does not read its socket");
    wait_for("the stopped client disconnected, by pid, in the log", TIMEOUT, || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains(&named))
    });
    drop(flooder);
    wait_for("only the stopped client gone", TIMEOUT, || connected_clients(&socket) == IDLE_CLIENTS);
    assert_served(&socket, "after-the-flood");
    let _ = kill(stopped, Signal::SIGKILL);
    let _ = waitpid(stopped, None);

    drop(idle);
    wait_for("every idle client gone", Duration::from_secs(30), || connected_clients(&socket) == 0);
    wait_for("descriptors back to the baseline", TIMEOUT, || {
        ProcessFigures::of(pid).expect("figures").fds <= baseline.fds
    });
    let after = ProcessFigures::of(pid).expect("figures");
    eprintln!("after they left: {after:?}");
    assert!(after.threads <= baseline.threads, "threads {after:?} against {baseline:?}");
}

/// `--max-clients` refuses the one connection over it with an error reply and a log line,
/// and `--socket-group` gives the 0660 socket its group.
#[test]
fn client_limit_and_socket_group() {
    let dir = std::env::temp_dir().join(format!("rctdb-client-limit-{}", std::process::id()));
    let _ = cluster::down(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let spec = ClusterSpec::new(1, &dir).without_lock();
    let address = "127.0.10.21";
    std::fs::write(dir.join("nodes"), format!("{address}\n")).expect("nodes file");
    // A group the daemon is not in unless it runs as root, which may give it any group.
    let group = if nix::unistd::geteuid().is_root() { 1 } else { nix::unistd::getegid().as_raw() };
    let log = dir.join("node0.log");
    let child = Command::new(env!("CARGO_BIN_EXE_rctdbd"))
        .args(["--nodes", dir.join("nodes").to_str().expect("utf-8")])
        .args(["--address", address, "--port", "4379", "--max-clients", "3"])
        .args(["--socket-group", &group.to_string()])
        .arg("--socket")
        .arg(cluster::socket_path(&dir, 0))
        .arg("--dbdir")
        .arg(dir.join("node0"))
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("rctdbd");
    std::fs::write(dir.join("node0.pid"), child.id().to_string()).expect("pid file");
    let _daemon = StoppedOnDrop { child, dir: dir.clone() };
    cluster::wait_until_healthy(&spec).unwrap_or_else(|e| panic!("daemon up: {e}"));

    let socket = cluster::socket_path(&dir, 0);
    wait_for("the start-up check's connection gone", TIMEOUT, || connected_clients(&socket) == 0);
    let meta = std::fs::metadata(&socket).expect("socket");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660, "socket mode");
    assert_eq!(meta.gid(), group, "socket group");

    let mut served: Vec<UnixStream> =
        (0..3).map(|_| UnixStream::connect(&socket).expect("connect")).collect();
    for (reqid, stream) in served.iter_mut().enumerate() {
        assert!(matches!(
            request(stream, reqid as u32 + 1, control(opcode::GET_PNN, 0)),
            Body::ReplyControl(_)
        ));
    }
    let mut extra = UnixStream::connect(&socket).expect("the connection is accepted, then refused");
    match request(&mut extra, 9, control(opcode::GET_PNN, 0)) {
        Body::ReplyControl(reply) => {
            assert_ne!(reply.status, 0);
            let text = String::from_utf8_lossy(&reply.errmsg);
            assert!(text.contains("too many clients") && text.contains("limit is 3"), "{text}");
        }
        other => panic!("expected an error reply, got {other:?}"),
    }
    let mut rest = Vec::new();
    extra.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    assert_eq!(extra.read_to_end(&mut rest).expect("closed"), 0, "closed after the error");
    let logged = std::fs::read_to_string(&log).expect("log");
    assert!(logged.contains("refusing a connection from pid"), "{logged}");
    // The others are still served, and a place freed is taken again.
    assert!(
        matches!(request(&mut served[0], 20, control(opcode::GET_PNN, 0)), Body::ReplyControl(r) if r.status == 0)
    );
    drop(served.pop());
    wait_for("a place free", TIMEOUT, || {
        let mut stream = UnixStream::connect(&socket).expect("connect");
        matches!(request(&mut stream, 1, control(opcode::GET_PNN, 0)), Body::ReplyControl(r) if r.status == 0)
    });
    let _ =
        writeln!(std::io::stderr(), "client limit: refused with a clear error, socket 0660 group {group}");
}

/// A daemon this test started itself, stopped however the test ends.
struct StoppedOnDrop {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl Drop for StoppedOnDrop {
    fn drop(&mut self) {
        let _ = cluster::down(&self.dir);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
