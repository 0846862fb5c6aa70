//! Garbage at a live daemon: proptest-made bytes at node 0's client socket and at its TCP
//! port, in batches over many connections at once. After every batch both nodes still run,
//! a client writes a key on node 0 and reads it back on node 1 (so the link between them
//! still carries migrations), every garbage connection was closed by the daemon, and each
//! refused one left a log line.
//!
//! The TCP part sends only bytes whose first frame no node accepts: what a rogue process
//! sends before (or instead of) the cluster key handshake. It comes both from an address
//! the nodes file does not list and from node 1's own address, which a process on the same
//! host can bind. With a handshake in front of every link, the same bytes meet the
//! handshake first; `TCP_REFUSAL_LOG` is the only line that depends on which it is.

use std::io::{Cursor, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddrV4, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use rctdb::client::ClusteredDb;
use rctdb::local::StoreFlag;
use rctdb::wire::codec::{decode, decode_unpadded, read_frame, ReadError};
use rctdb::wire::fuzz::seeds::seeds;
use rctdb::wire::{Body, MAX_PACKET_LEN};
use rctdb_cli::tool::cluster::{ClusterSpec, RunningCluster};

const FIRST_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 63, 11);
/// Not in the nodes file.
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 63, 99);
const DB: &str = "garbage.tdb";
/// How long the daemon may take to close a garbage connection, or to serve a client after a
/// batch (a link reset by the garbage reconnects within this).
const DEADLINE: Duration = Duration::from_secs(10);
/// The whole test stops starting batches after this many seconds; `RCTDB_GARBAGE_SECONDS`
/// (with `RCTDB_GARBAGE_BATCHES`, default 32) runs it longer by hand.
const DEFAULT_BUDGET_SECONDS: u64 = 35;

fn from_env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What the client socket logs when it drops a connection over a bad frame.
const SOCKET_DROP_LOG: &str = "dropping the connection";
/// What the listener logs when it refuses or drops a connection: a corrupt first frame
/// today, a failed handshake with a cluster key.
const TCP_REFUSAL_LOG: &[&str] =
    &["closing connection from", "refused connection from", "dropping the link from"];

/// Controls a client may send that take its node out on purpose (a client on the socket is
/// trusted with them); garbage must not pick them by chance.
const ADMIN_CONTROLS: &[u32] = &[
    rctdb::tunables::opcode::STOP_NODE,
    rctdb::tunables::opcode::QUIET,
    rctdb::tunables::opcode::UNQUIET,
    rctdb::tunables::opcode::SET_TUNABLE,
];

/// One garbage connection's bytes.
#[derive(Debug, Clone)]
enum Garbage {
    Random(Vec<u8>),
    /// A valid header (length, magic, version) for `operation`, then random bytes.
    HeaderThenRandom {
        operation: u32,
        body: Vec<u8>,
    },
    /// A valid packet (`seed` picks it) with u32 fields overwritten: lengths, operations,
    /// opcodes, db ids, reqids, node numbers.
    Mutated {
        seed: usize,
        edits: Vec<(usize, u32)>,
    },
    /// A valid packet cut short.
    Truncated {
        seed: usize,
        keep: usize,
    },
    /// A length field announcing up to 4 GiB, then a few bytes of it.
    HugeLength {
        len: u32,
        then: Vec<u8>,
    },
}

impl Garbage {
    fn bytes(&self, valid: &[Vec<u8>]) -> Vec<u8> {
        match self {
            Garbage::Random(b) => b.clone(),
            Garbage::HeaderThenRandom { operation, body } => {
                let mut b = header(32 + body.len() as u32, *operation);
                b.extend_from_slice(body);
                b
            }
            Garbage::Mutated { seed, edits } => {
                let mut b = valid[seed % valid.len()].clone();
                for &(at, value) in edits {
                    if at + 4 <= b.len() {
                        b[at..at + 4].copy_from_slice(&value.to_le_bytes());
                    }
                }
                b
            }
            Garbage::Truncated { seed, keep } => {
                let b = &valid[seed % valid.len()];
                b[..keep % b.len()].to_vec()
            }
            Garbage::HugeLength { len, then } => [&len.to_le_bytes()[..], then].concat(),
        }
    }
}

fn header(len: u32, operation: u32) -> Vec<u8> {
    [len, rctdb::wire::CTDB_MAGIC, 1, 1, operation, 0, 1, 7].iter().flat_map(|v| v.to_le_bytes()).collect()
}

fn garbage() -> impl Strategy<Value = Garbage> {
    // Header offsets: length 0, operation 16, destnode 20, srcnode 24, reqid 28; then the
    // body's flags/opcode 32, db_id 36, ...
    let field = prop::sample::select(vec![0usize, 4, 16, 20, 24, 28, 32, 36, 40, 44, 48, 52, 56, 60, 64]);
    let value = prop_oneof![
        any::<u32>(),
        prop::sample::select(vec![
            0u32,
            1,
            2,
            7,
            8,
            31,
            32,
            0x100,
            0x7fff_ffff,
            u32::MAX,
            MAX_PACKET_LEN as u32
        ]),
        (0u32..12),
        prop::sample::select(vec![
            0xF000_0001u32,
            0xF000_0002,
            0xF000_0005,
            0x7c00_0001,
            0x7c00_0004,
            18,
            20,
            128,
            151
        ]),
    ];
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Garbage::Random),
        (
            prop::sample::select(vec![0u32, 1, 2, 3, 4, 5, 7, 8, 9, 10, 0x100, 77]),
            prop::collection::vec(any::<u8>(), 0..120)
        )
            .prop_map(|(operation, body)| Garbage::HeaderThenRandom { operation, body }),
        (any::<usize>(), prop::collection::vec((field, value), 1..4))
            .prop_map(|(seed, edits)| Garbage::Mutated { seed, edits }),
        (any::<usize>(), any::<usize>()).prop_map(|(seed, keep)| Garbage::Truncated { seed, keep }),
        (
            prop_oneof![(32u32..=u32::MAX), Just(MAX_PACKET_LEN as u32), Just(MAX_PACKET_LEN as u32 + 1)],
            prop::collection::vec(any::<u8>(), 0..64)
        )
            .prop_map(|(len, then)| Garbage::HugeLength { len, then }),
    ]
}

/// Whether the daemon's client reader refuses these bytes (rather than reading valid frames
/// to the end of the stream): the same reader and decoder it runs.
fn refused_on_socket(bytes: &[u8]) -> bool {
    let mut stream = Cursor::new(bytes);
    let mut frame = Vec::new();
    loop {
        match read_frame(&mut stream, MAX_PACKET_LEN, &mut frame)
            .and_then(|()| decode_unpadded(&frame).map_err(ReadError::Wire))
        {
            Ok(_) => {}
            Err(ReadError::Eof) => return false,
            Err(_) => return true,
        }
    }
}

/// Bytes for the client socket, with any admin control a mutation made turned into an
/// unknown one.
fn for_socket(mut bytes: Vec<u8>) -> Vec<u8> {
    if let Ok(packet) = decode_unpadded(&bytes) {
        if let Body::ReqControl(control) = packet.body {
            if ADMIN_CONTROLS.contains(&control.opcode) {
                bytes[32..36].copy_from_slice(&0x1234u32.to_le_bytes());
            }
        }
    }
    bytes
}

/// Bytes for the TCP port: a first frame no node accepts (a bad magic if it was valid).
fn for_port(mut bytes: Vec<u8>) -> Vec<u8> {
    let mut frame = Vec::new();
    let first_is_valid =
        read_frame(&mut Cursor::new(&bytes), MAX_PACKET_LEN, &mut frame).is_ok() && decode(&frame).is_ok();
    if first_is_valid {
        bytes[4..8].copy_from_slice(b"JUNK");
    }
    bytes
}

struct Fixture {
    _cluster: RunningCluster,
    dir: PathBuf,
    port: u16,
    writes: u32,
}

impl Fixture {
    fn start() -> Fixture {
        let dir = std::env::temp_dir().join(format!("rctdb-garbage-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut spec = ClusterSpec::new(2, &dir);
        spec.first_address = FIRST_ADDRESS;
        let port = spec.port;
        let cluster = RunningCluster::start(spec).unwrap_or_else(|e| panic!("cluster up: {e}"));
        Fixture { _cluster: cluster, dir, port, writes: 0 }
    }

    fn socket(&self, node: usize) -> PathBuf {
        self.dir.join(format!("node{node}.sock"))
    }

    fn log(&self, node: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("node{node}.log"))).unwrap_or_default()
    }

    fn count_in_log(&self, patterns: &[&str]) -> usize {
        self.log(0).lines().filter(|l| patterns.iter().any(|p| l.contains(p))).count()
    }

    fn assert_alive(&self) {
        for node in 0..2 {
            let pid: i32 = std::fs::read_to_string(self.dir.join(format!("node{node}.pid")))
                .expect("pid file")
                .trim()
                .parse()
                .expect("a pid");
            // The daemons are our children: one that died is a zombie until reaped here.
            let status = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
            assert!(
                matches!(status, Ok(WaitStatus::StillAlive)),
                "node {node} died ({status:?}); its log:\n{}",
                self.log(node)
            );
        }
    }

    /// A new key written through node 0 and read back through node 1 (it migrates).
    fn assert_serving(&mut self) {
        self.writes += 1;
        let key = format!("key{}", self.writes);
        let value = format!("value{}", self.writes);
        let mut db0 =
            ClusteredDb::open(&self.socket(0), DB, DEADLINE).expect("attach on node 0 after garbage");
        db0.chainlock(key.as_bytes()).expect("chainlock on node 0");
        db0.store(key.as_bytes(), &[value.as_bytes()], StoreFlag::Replace).expect("store on node 0");
        db0.chainunlock(key.as_bytes()).expect("chainunlock on node 0");
        let mut db1 =
            ClusteredDb::open(&self.socket(1), DB, DEADLINE).expect("attach on node 1 after garbage");
        let read = db1.fetch(key.as_bytes()).expect("fetch on node 1");
        assert_eq!(read.as_deref(), Some(value.as_bytes()), "{key} read back through node 1");
    }

    /// Waits until node 0's log has `at_least` lines matching `patterns`.
    fn wait_for_log(&self, patterns: &[&str], at_least: usize) -> Result<(), TestCaseError> {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let count = self.count_in_log(patterns);
            if count >= at_least {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestCaseError::fail(format!(
                    "{count} log lines {patterns:?}, expected {at_least}"
                )));
            }
            std::thread::sleep(Duration::from_millis(10)); // polling a log file
        }
    }
}

/// Writes `bytes`, says it is done, and waits for the daemon to close the connection,
/// reading (and ignoring) whatever it answers on the way.
fn send_and_expect_close<S: Read + Write>(
    mut stream: S,
    bytes: &[u8],
    shutdown: impl FnOnce(&S),
) -> Result<(), TestCaseError> {
    // The daemon may hang up before reading it all: a failed write is fine.
    let _ = stream.write_all(bytes);
    shutdown(&stream);
    let deadline = Instant::now() + DEADLINE;
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset || e.kind() == ErrorKind::BrokenPipe => {
                return Ok(())
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::TimedOut => {}
            Err(e) => return Err(TestCaseError::fail(format!("reading: {e}"))),
        }
        if Instant::now() > deadline {
            return Err(TestCaseError::fail(format!(
                "the daemon kept a garbage connection open: {bytes:02x?}"
            )));
        }
    }
}

fn unix_connection(socket: &Path) -> UnixStream {
    let stream = UnixStream::connect(socket).expect("connect to the client socket");
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    stream.set_write_timeout(Some(DEADLINE)).unwrap();
    stream
}

/// A TCP connection to node 0 from `source` (any 127.0.0.0/8 address can be bound).
fn tcp_connection(source: Ipv4Addr, to: SocketAddrV4) -> std::io::Result<TcpStream> {
    let fd: OwnedFd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(SocketAddrV4::new(source, 0)))?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&fd), &SockaddrIn::from(to))?;
    let stream = TcpStream::from(fd);
    stream.set_read_timeout(Some(Duration::from_millis(200)))?;
    stream.set_write_timeout(Some(DEADLINE))?;
    Ok(stream)
}

fn runner(cases: u32) -> TestRunner {
    // No regression files (a failure prints its input), few shrink steps: each one costs a
    // round trip to a live daemon.
    TestRunner::new(Config { cases, failure_persistence: None, max_shrink_iters: 32, ..Config::default() })
}

#[test]
fn garbage_at_socket_and_port_leaves_the_cluster_serving() {
    let started = Instant::now();
    let budget = Duration::from_secs(from_env("RCTDB_GARBAGE_SECONDS", DEFAULT_BUDGET_SECONDS));
    let socket_batches = from_env("RCTDB_GARBAGE_BATCHES", 32) as u32;
    let fx = std::cell::RefCell::new(Fixture::start());
    fx.borrow_mut().assert_serving();
    let client_packets: Vec<Vec<u8>> = seeds("client_request");
    let link_packets: Vec<Vec<u8>> = seeds("wire_packet");

    // The client socket: batches of garbage connections open at once.
    let batch = prop::collection::vec(garbage(), 1..12);
    let batches = std::cell::Cell::new(0);
    runner(socket_batches)
        .run(&batch, |batch| {
            if started.elapsed() > budget / 2 {
                return Ok(()); // bounded in time whatever the machine's speed
            }
            batches.set(batches.get() + 1);
            let fx = &mut *fx.borrow_mut();
            let drops_before = fx.count_in_log(&[SOCKET_DROP_LOG]);
            let inputs: Vec<Vec<u8>> = batch.iter().map(|g| for_socket(g.bytes(&client_packets))).collect();
            let refused = inputs.iter().filter(|b| refused_on_socket(b)).count();
            let streams: Vec<UnixStream> = inputs.iter().map(|_| unix_connection(&fx.socket(0))).collect();
            for (stream, bytes) in streams.into_iter().zip(&inputs) {
                send_and_expect_close(stream, bytes, |s| {
                    let _ = s.shutdown(Shutdown::Write);
                })?;
            }
            fx.wait_for_log(&[SOCKET_DROP_LOG], drops_before + refused)?;
            fx.assert_alive();
            fx.assert_serving();
            Ok(())
        })
        .unwrap_or_else(|e| panic!("client socket: {e}"));

    // Many connections at once that each send half a header and wait: the daemon keeps
    // serving others meanwhile, and closes each when it ends mid-frame.
    {
        let fx = &mut *fx.borrow_mut();
        let drops_before = fx.count_in_log(&[SOCKET_DROP_LOG]);
        let idle: Vec<UnixStream> = (0..64)
            .map(|_| {
                let mut s = unix_connection(&fx.socket(0));
                s.write_all(&header(64, 7)[..10]).expect("half a header");
                s
            })
            .collect();
        fx.assert_serving();
        for stream in idle {
            send_and_expect_close(stream, &[], |s| {
                let _ = s.shutdown(Shutdown::Write);
            })
            .unwrap_or_else(|e| panic!("idle connection: {e}"));
        }
        fx.wait_for_log(&[SOCKET_DROP_LOG], drops_before + 64).unwrap_or_else(|e| panic!("{e}"));
        fx.assert_alive();
    }

    // The TCP port, from a stranger's address and from node 1's.
    let port = SocketAddrV4::new(FIRST_ADDRESS, fx.borrow().port);
    let node1 = Ipv4Addr::from(u32::from(FIRST_ADDRESS) + 1);
    let refusals_before = fx.borrow().count_in_log(TCP_REFUSAL_LOG);
    let batch = (prop::collection::vec(garbage(), 1..8), any::<bool>());
    runner(socket_batches / 2)
        .run(&batch, |(batch, as_node1)| {
            if started.elapsed() > budget {
                return Ok(());
            }
            batches.set(batches.get() + 1);
            let fx = &mut *fx.borrow_mut();
            let source = if as_node1 { node1 } else { STRANGER };
            for garbage in &batch {
                let bytes = for_port(garbage.bytes(&link_packets));
                match tcp_connection(source, port) {
                    Ok(stream) => send_and_expect_close(stream, &bytes, |s| {
                        let _ = s.shutdown(Shutdown::Write);
                    })?,
                    // Refused at once (a full handshake backlog): refused all the same.
                    Err(e)
                        if e.kind() == ErrorKind::ConnectionRefused
                            || e.kind() == ErrorKind::ConnectionReset => {}
                    Err(e) => return Err(TestCaseError::fail(format!("connect from {source}: {e}"))),
                }
            }
            fx.assert_alive();
            fx.assert_serving();
            Ok(())
        })
        .unwrap_or_else(|e| panic!("TCP port: {e}"));
    let fx = fx.borrow();
    // Refusals may be rate-limited to a line per interval: at least one must be there.
    fx.wait_for_log(TCP_REFUSAL_LOG, refusals_before + 1).unwrap_or_else(|e| panic!("TCP port: {e}"));
    assert!(batches.get() >= 4, "only {} batches ran in {budget:?}", batches.get());
    assert!(!fx.log(0).contains("panicked"), "node 0 logged a panic:\n{}", fx.log(0));
}
