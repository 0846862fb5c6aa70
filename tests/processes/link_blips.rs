//! Link blips are invisible: a 3-node cluster on 127.0.81.11-13 while every TCP
//! connection to and from node 1's address is killed again and again with `ss -K`. Node 0
//! keeps asking, as smbd does before it trusts a share mode, whether a process on node 1
//! lives (CHECK_PID_SRVID, PROCESS_EXISTS); messages with sequence numbers flow both ways
//! between nodes 0 and 1. Not one answer may say "gone", no node may be declared dead, and
//! every message must arrive exactly once.
//!
//! Needs root and a kernel that lets `ss -K` destroy sockets (CONFIG_INET_DIAG_DESTROY):
//! without them the test says SKIPPED and does not count as passed.

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rctdb::wire::codec::{read_packet, write_packet};
use rctdb::wire::ctdb::opcode;
use rctdb::wire::{Body, Packet, ReqControl, ReqMessage, CURRENT_NODE, MAX_PACKET_LEN};
use rctdb_cli::tool::cluster::{ClusterSpec, RunningCluster};

const NODE1: Ipv4Addr = Ipv4Addr::new(127, 0, 81, 12);
/// The srvid the watched process holds on node 1.
const SRVID_WATCHED: u64 = 0x0000_0000_0081_0001;
/// Where the numbered messages go, on node 1 and on node 0.
const SRVID_TO_1: u64 = 0x0000_0000_0081_0002;
const SRVID_TO_0: u64 = 0x0000_0000_0081_0003;
const KILLS: usize = 25;
const KILL_EVERY: Duration = Duration::from_millis(300);
/// Messages per direction, spread over the kills.
const MESSAGES: u64 = 3_000;

/// A connection to a node's socket that speaks ctdbd's client protocol.
struct Client {
    stream: UnixStream,
    next_reqid: u32,
}

impl Client {
    fn connect(socket: &Path) -> Client {
        let stream = UnixStream::connect(socket).expect("connect to a node's socket");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
        Client { stream, next_reqid: 1 }
    }

    fn send(&mut self, destnode: u32, body: Body) -> u32 {
        let reqid = self.next_reqid;
        self.next_reqid += 1;
        let packet = Packet { generation: 0, destnode, srcnode: 0, reqid, body };
        write_packet(&mut self.stream, &packet).expect("write to the node");
        reqid
    }

    fn read(&mut self) -> Packet {
        read_packet(&mut self.stream, MAX_PACKET_LEN).expect("a packet from the node")
    }

    /// A control's status.
    fn control(&mut self, destnode: u32, opcode: u32, srvid: u64, data: Vec<u8>) -> i32 {
        let request = ReqControl { opcode, srvid, client_id: 0, flags: 0, data };
        let reqid = self.send(destnode, Body::ReqControl(request));
        let reply = self.read();
        assert_eq!(reply.reqid, reqid, "the reply carries the request's reqid");
        match reply.body {
            Body::ReplyControl(r) => r.status,
            other => panic!("expected REPLY_CONTROL, got {other:?}"),
        }
    }

    fn register(&mut self, srvid: u64) {
        assert_eq!(self.control(CURRENT_NODE, opcode::REGISTER_SRVID, srvid, vec![]), 0);
    }
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Kills every TCP connection to or from `addr`; returns how many `ss` listed.
fn kill_connections(addr: Ipv4Addr) -> usize {
    ["dst", "src"]
        .iter()
        .map(|side| {
            let out = Command::new("ss").args(["-K", "-t", side, &addr.to_string()]).output();
            out.map(|o| String::from_utf8_lossy(&o.stdout).lines().filter(|l| l.contains("ESTAB")).count())
                .unwrap_or(0)
        })
        .sum()
}

/// Whether `ss -K` can destroy a socket here: a probe connection must die of it.
fn ss_kill_works() -> Result<(), String> {
    if !is_root() {
        return Err("not root".into());
    }
    let probe = Ipv4Addr::new(127, 0, 81, 99);
    let listener = TcpListener::bind((probe, 0)).map_err(|e| format!("probe listener: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let mut client = TcpStream::connect((probe, port)).map_err(|e| format!("probe connect: {e}"))?;
    let _server = listener.accept().map_err(|e| format!("probe accept: {e}"))?;
    kill_connections(probe);
    client.set_read_timeout(Some(Duration::from_secs(2))).map_err(|e| e.to_string())?;
    let mut byte = [0u8; 1];
    // Nobody writes on the probe: only a destroyed socket ends the read before its timeout.
    match std::io::Read::read(&mut client, &mut byte) {
        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
            Err("`ss -K` did not destroy a probe connection (kernel without CONFIG_INET_DIAG_DESTROY?)"
                .into())
        }
        _ => Ok(()),
    }
}

/// Records each sequence number a reader got, to tell lost from duplicated.
struct Arrivals {
    seen: Vec<AtomicU64>,
}

impl Arrivals {
    fn new() -> Arc<Arrivals> {
        Arc::new(Arrivals { seen: (0..MESSAGES).map(|_| AtomicU64::new(0)).collect() })
    }

    fn note(&self, data: &[u8]) {
        let seq = data.try_into().map(u64::from_le_bytes).expect("an 8-byte sequence number");
        self.seen[seq as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn lost(&self) -> usize {
        self.seen.iter().filter(|n| n.load(Ordering::Relaxed) == 0).count()
    }

    fn duplicated(&self) -> usize {
        self.seen.iter().filter(|n| n.load(Ordering::Relaxed) > 1).count()
    }

    fn complete(&self) -> bool {
        self.lost() == 0
    }
}

/// Reads numbered messages on `inbox` until all arrived or the deadline passes.
fn read_messages(mut inbox: Client, srvid: u64, arrivals: Arc<Arrivals>, deadline: Instant) {
    inbox.stream.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
    while !arrivals.complete() && Instant::now() < deadline {
        match read_packet(&mut inbox.stream, MAX_PACKET_LEN) {
            Ok(Packet { body: Body::Message(ReqMessage { srvid: s, data }), .. }) if s == srvid => {
                arrivals.note(&data)
            }
            Ok(other) => panic!("unexpected packet on the message inbox: {other:?}"),
            Err(_) => {} // a read timeout: look at the deadline again
        }
    }
}

/// Sends the numbered messages, spread over `spread`.
fn send_messages(mut sender: Client, destnode: u32, srvid: u64, spread: Duration) {
    let pause = spread / MESSAGES as u32;
    for seq in 0..MESSAGES {
        sender.send(destnode, Body::Message(ReqMessage { srvid, data: seq.to_le_bytes().to_vec() }));
        std::thread::sleep(pause); // pacing the load, not waiting for anything
    }
}

#[test]
fn killed_links_lose_no_answer_and_no_message() {
    if let Err(why) = ss_kill_works() {
        println!("SKIPPED: killed_links_lose_no_answer_and_no_message needs `ss -K` as root: {why}");
        return;
    }
    let dir = std::env::temp_dir().join(format!("rctdb-link-blips-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut spec = ClusterSpec::new(3, &dir);
    spec.first_address = Ipv4Addr::new(127, 0, 81, 11);
    assert_eq!(spec.address(1), NODE1);
    let running = RunningCluster::start(spec).unwrap_or_else(|e| panic!("cluster up: {e}"));

    let mut watched = Client::connect(&running.socket(1));
    watched.register(SRVID_WATCHED);
    let mut inbox1 = Client::connect(&running.socket(1));
    inbox1.register(SRVID_TO_1);
    let mut inbox0 = Client::connect(&running.socket(0));
    inbox0.register(SRVID_TO_0);
    let me = std::process::id();
    let mut pid_srvid = me.to_le_bytes().to_vec();
    pid_srvid.extend_from_slice(&SRVID_WATCHED.to_le_bytes());
    let mut asker = Client::connect(&running.socket(0));
    // The question is answered before the kills: node 0 has heard of the srvid.
    let until = Instant::now() + Duration::from_secs(10);
    while asker.control(1, opcode::CHECK_PID_SRVID, 0, pid_srvid.clone()) != 0 {
        assert!(Instant::now() < until, "node 0 never learnt of the srvid on node 1");
    }
    let deaths_before = rctdb_cli::tool::ring::deaths_declared(running.dir(), 3).expect("statuses");

    let kill_time = KILL_EVERY * KILLS as u32;
    let stop = Arc::new(AtomicBool::new(false));
    let (answers, gone) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let deliver_by = Instant::now() + kill_time + Duration::from_secs(20);
    let (to_1, to_0) = (Arrivals::new(), Arrivals::new());
    let mut threads = vec![];
    {
        let (stop, answers, gone) = (Arc::clone(&stop), Arc::clone(&answers), Arc::clone(&gone));
        threads.push(std::thread::spawn(move || {
            let exists = me.to_le_bytes().to_vec();
            while !stop.load(Ordering::Relaxed) {
                for (op, data) in [(opcode::CHECK_PID_SRVID, &pid_srvid), (opcode::PROCESS_EXISTS, &exists)] {
                    if asker.control(1, op, 0, data.clone()) != 0 {
                        gone.fetch_add(1, Ordering::Relaxed);
                    }
                    answers.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    let arrivals = Arc::clone(&to_1);
    threads.push(std::thread::spawn(move || read_messages(inbox1, SRVID_TO_1, arrivals, deliver_by)));
    let arrivals = Arc::clone(&to_0);
    threads.push(std::thread::spawn(move || read_messages(inbox0, SRVID_TO_0, arrivals, deliver_by)));
    let (sender0, sender1) = (Client::connect(&running.socket(0)), Client::connect(&running.socket(1)));
    threads.push(std::thread::spawn(move || send_messages(sender0, 1, SRVID_TO_1, kill_time)));
    threads.push(std::thread::spawn(move || send_messages(sender1, 0, SRVID_TO_0, kill_time)));

    let mut killed = 0;
    for _ in 0..KILLS {
        std::thread::sleep(KILL_EVERY); // the interval between kills is the test's input
        killed += kill_connections(NODE1);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("test thread");
    }
    let deaths = rctdb_cli::tool::ring::deaths_declared(running.dir(), 3).expect("statuses") - deaths_before;
    let (answers, gone) = (answers.load(Ordering::Relaxed), gone.load(Ordering::Relaxed));
    println!(
        "{KILLS} kills ({killed} connections): {gone} of {answers} answers said gone; messages \
         0->1 lost {} duplicated {}, 1->0 lost {} duplicated {}; {deaths} deaths declared",
        to_1.lost(),
        to_1.duplicated(),
        to_0.lost(),
        to_0.duplicated()
    );
    assert!(killed >= KILLS, "ss -K killed only {killed} connections: the links were not cut");
    assert_eq!(gone, 0, "{gone} of {answers} answers said a live process is gone");
    assert_eq!(deaths, 0, "a node was declared dead during the blips");
    assert_eq!((to_1.lost(), to_1.duplicated()), (0, 0), "messages from node 0 to node 1");
    assert_eq!((to_0.lost(), to_0.duplicated()), (0, 0), "messages from node 1 to node 0");
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}
