//! Cluster-wide traverses stream in chunks: a 3-node cluster holding
//! 250,000 records of 300 bytes (82 MB, more than a packet may carry) dumps whole through
//! `rctdb dump` and librctdb, three at once; one traverse past a node's bound is refused;
//! a node killed mid-traverse makes it fail, for `rctdb dump`, librctdb and a CTDB
//! client's TRAVERSE_START alike, never a shorter success. Every wait is bounded.
//!
//! Addresses: 127.0.100.x (the large cluster), 127.0.101.x (TRAVERSE_START) and 127.0.102.x
//! (a node lost mid-traverse).

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rctdb::client::ClusteredDb;
use rctdb::wire::codec::{read_packet, write_packet};
use rctdb::wire::control::{db_id_of, opcode};
use rctdb::wire::ctdb::opcode as ctdb_op;
use rctdb::wire::{Body, Packet, ReqControl, CURRENT_NODE, MAX_PACKET_LEN};
use rctdb_cli::tool::cluster::{self, ClusterSpec, RunningCluster};
use rctdb_cli::tool::traverse_bench::{load, traverse_contents, Contents};

const RECORDS: usize = 250_000;
const VALUE_SIZE: usize = 300;
const DB: &str = "traverse_stream.tdb";
const TIMEOUT: Duration = Duration::from_secs(20);
/// How long one whole traverse of the large database may take here (it takes seconds).
const DUMP_LIMIT: Duration = Duration::from_secs(120);
/// The daemon's MAX_TRAVERSES: traverses one node runs at once.
const BOUND: usize = 4;

fn scratch(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("rctdb-traverse-{name}-{}", std::process::id()))
}

fn start(name: &str, third_octet: u8) -> (RunningCluster, ClusterSpec) {
    let mut spec = ClusterSpec::new(3, &scratch(name));
    spec.first_address = Ipv4Addr::new(127, 0, third_octet, 11);
    let cluster = RunningCluster::start(spec.clone()).unwrap_or_else(|e| panic!("cluster up: {e}"));
    (cluster, spec)
}

/// `rctdb dump` of DB through `socket`, its output in a file; with `while_running`, called
/// once its first line is out.
fn rctdb_dump(socket: &Path, out: &Path, while_running: impl FnOnce()) -> (std::process::ExitStatus, String) {
    let file = std::fs::File::create(out).expect("dump output file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rctdb"))
        .args(["dump", DB])
        .env("RCTDB_SOCKET", socket)
        .stdout(file)
        .stderr(Stdio::piped())
        .spawn()
        .expect("rctdb dump");
    let deadline = Instant::now() + DUMP_LIMIT;
    while std::fs::metadata(out).map_or(0, |m| m.len()) == 0 && child.try_wait().expect("wait").is_none() {
        assert!(Instant::now() < deadline, "rctdb dump printed nothing within {DUMP_LIMIT:?}");
        std::thread::sleep(Duration::from_millis(5)); // polling a file for its first bytes
    }
    while_running();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("rctdb dump ran past {DUMP_LIMIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20)); // polling a child for its exit
    };
    let mut stderr = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut stderr).expect("stderr");
    (status, stderr)
}

/// The records `rctdb dump` printed (`key(N) = "..."`, `data(N) = "..."`) and its last line.
fn parse_dump(out: &Path) -> (Contents, String) {
    let text = std::fs::read_to_string(out).expect("dump output");
    let quoted = |line: &str, what: &str| -> String {
        let (head, value) = line.split_once(" = ").unwrap_or_else(|| panic!("not a {what} line: {line:?}"));
        assert!(head.starts_with(what), "expected {what}: {line:?}");
        value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).expect("a quoted value").to_string()
    };
    let mut lines = text.lines().peekable();
    let mut contents = Contents::default();
    while lines.peek().is_some_and(|l| l.starts_with("key(")) {
        let key = quoted(lines.next().expect("key"), "key(");
        let data = quoted(lines.next().expect("a data line after each key"), "data(");
        contents.add(key.as_bytes(), data.as_bytes());
    }
    (contents, lines.next().unwrap_or_default().to_string())
}

fn traverse_with_librctdb(socket: &Path, mut visit: impl FnMut(usize)) -> Result<Contents, String> {
    let mut db = ClusteredDb::open(socket, DB, TIMEOUT).map_err(|e| e.to_string())?;
    let mut contents = Contents::default();
    db.traverse(|key, value| {
        contents.add(key, value);
        visit(contents.count);
        true
    })
    .map_err(|e| e.to_string())?;
    Ok(contents)
}

/// A client that asks node `socket` for a traverse and then reads nothing: the daemon
/// keeps it running, held back, until the connection closes. Returns once its first chunk
/// came, so the traverse is known to run.
fn unread_traverse(socket: &Path) -> UnixStream {
    let mut stream = UnixStream::connect(socket).expect("connect");
    write_packet(&mut stream, &traverse_request(1)).expect("write");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    match read_packet(&mut stream, MAX_PACKET_LEN).expect("the traverse's first chunk").body {
        Body::ReplyControl(reply) => {
            assert_eq!(reply.status, 0, "{}", String::from_utf8_lossy(&reply.errmsg))
        }
        other => panic!("unexpected {}", other.operation()),
    }
    stream
}

/// librctdb's TRAVERSE_ALL of DB.
fn traverse_request(reqid: u32) -> Packet {
    let data = db_id_of(DB).to_le_bytes().to_vec();
    let body =
        Body::ReqControl(ReqControl { opcode: opcode::TRAVERSE_ALL, srvid: 0, client_id: 0, flags: 0, data });
    Packet { generation: 0, destnode: CURRENT_NODE, srcnode: 0, reqid, body }
}

/// Reads the stream's packets until one answers `reqid`.
fn read_until_reqid(stream: &mut UnixStream, reqid: u32) -> Body {
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let deadline = Instant::now() + TIMEOUT;
    loop {
        assert!(Instant::now() < deadline, "no answer to {reqid} within {TIMEOUT:?}");
        let packet = read_packet(stream, MAX_PACKET_LEN).expect("a packet");
        if packet.reqid == reqid {
            return packet.body;
        }
    }
}

#[test]
fn a_large_database_dumps_whole_within_bounds() {
    let (cluster, _spec) = start("large", 100);
    let dir = cluster.dir().to_path_buf();
    let seconds = load(&dir, DB, RECORDS, VALUE_SIZE).unwrap_or_else(|e| panic!("load: {e}"));
    eprintln!("loaded {RECORDS} records in {seconds:.1} s");
    let expected = Contents::expected(RECORDS, VALUE_SIZE);
    let out = dir.join("dump.out");

    // `rctdb dump`, through node 1: every record once, the right values, exit 0.
    let (status, stderr) = rctdb_dump(&cluster.socket(1), &out, || {});
    assert!(status.success(), "rctdb dump failed: {stderr}");
    let (dumped, last_line) = parse_dump(&out);
    assert_eq!(dumped, expected, "rctdb dump's records");
    assert_eq!(last_line, format!("{RECORDS} records"));

    // librctdb's traverse, through node 2.
    assert_eq!(traverse_with_librctdb(&cluster.socket(2), |_| {}), Ok(expected));

    // One traverse at a time per connection: a second one asked on it is refused at once.
    let mut twice = UnixStream::connect(cluster.socket(2)).expect("connect");
    for reqid in [1, 2] {
        write_packet(&mut twice, &traverse_request(reqid)).expect("write");
    }
    match read_until_reqid(&mut twice, 2) {
        Body::ReplyControl(reply) => {
            let why = String::from_utf8_lossy(&reply.errmsg);
            assert!(reply.status != 0 && why.contains("one at a time per connection"), "{why}");
        }
        other => panic!("unexpected {}", other.operation()),
    }
    drop(twice);

    // Three at once through node 0, within its bound: each finds everything.
    let socket0 = cluster.socket(0);
    let found: Vec<Result<Contents, String>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..3).map(|_| scope.spawn(|| traverse_contents(&socket0, DB))).collect();
        threads.into_iter().map(|t| t.join().expect("traverse thread")).collect()
    });
    assert_eq!(found, vec![Ok(expected); 3], "three concurrent traverses");

    // BOUND traverses that node 1 holds back for clients that do not read: one more is
    // refused at once with the reason; once one of the clients leaves, it runs.
    let mut unread: Vec<UnixStream> = (0..BOUND).map(|_| unread_traverse(&cluster.socket(1))).collect();
    let refused = traverse_contents(&cluster.socket(1), DB).expect_err("a traverse past the bound");
    assert!(refused.contains("the limit"), "{refused}");
    drop(unread.pop());
    let deadline = Instant::now() + TIMEOUT;
    let after = loop {
        match traverse_contents(&cluster.socket(1), DB) {
            Err(err) if err.contains("the limit") && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20)); // the daemon sees the client leave
            }
            other => break other,
        }
    };
    assert_eq!(after, Ok(expected), "a traverse once a slot is free");
    drop(unread);

    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A CTDB client's TRAVERSE_START: records as messages to its srvid, the end marker (no key,
/// no data) when complete; when a node is lost mid-way, the end carries a status instead,
/// which smbd's `ctdbd_traverse` fails with EIO.
/// A node lost mid-traverse fails librctdb's traverse and `rctdb dump`. On a database of its
/// own, smaller: the recovery after the kill plans every record under the leader's mutex,
/// which at 250k records in a debug build outlasts the lock watchdog's stall bound (DESIGN
/// §12, "a long step under the node's mutex").
#[test]
fn a_lost_node_fails_librctdb_s_traverse_and_rctdb_dump() {
    const COUNT: usize = 30_000;
    let (cluster, spec) = start("lost", 102);
    let dir = cluster.dir().to_path_buf();
    load(&dir, DB, COUNT, VALUE_SIZE).unwrap_or_else(|e| panic!("load: {e}"));
    let out = dir.join("dump.out");

    // Node 2 killed after librctdb's traverse through node 0 saw its first record: an
    // error, not a shorter success.
    let mut killed = false;
    let lost = traverse_with_librctdb(&cluster.socket(0), |_| {
        if !killed {
            killed = true;
            cluster::kill_node(&dir, 2).expect("kill node 2");
        }
    });
    assert!(killed, "the traverse saw no record");
    let err = lost.expect_err("a traverse that lost a node mid-way");
    assert!(err.contains("traverse failed"), "{err}");

    // The same for `rctdb dump`, through node 0, with node 1 killed once it printed.
    cluster::wait_until_serving(&spec, &[0, 1]).expect("nodes 0 and 1 recover");
    let (status, stderr) = rctdb_dump(&cluster.socket(0), &out, || {
        cluster::kill_node(&dir, 1).expect("kill node 1");
    });
    assert!(!status.success(), "rctdb dump exited 0 after losing a node");
    assert!(stderr.contains("traverse failed"), "rctdb dump's error: {stderr}");
    let (dumped, last_line) = parse_dump(&out);
    assert!(dumped.count < COUNT, "the dump ended early ({} records)", dumped.count);
    assert!(!last_line.ends_with(" records"), "no total after a failure: {last_line:?}");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_ctdb_traverse_ends_with_an_error_status_when_a_node_is_lost() {
    const COUNT: usize = 30_000;
    let (cluster, _spec) = start("ctdb", 101);
    let dir = cluster.dir().to_path_buf();
    load(&dir, DB, COUNT, VALUE_SIZE).unwrap_or_else(|e| panic!("load: {e}"));

    let (found, end) = ctdb_traverse(&cluster.socket(0), || {});
    assert_eq!(found, Contents::expected(COUNT, VALUE_SIZE));
    assert!(end.is_empty(), "a complete traverse ends with the plain marker: {end:?}");

    let (found, end) =
        ctdb_traverse(&cluster.socket(0), || cluster::kill_node(&dir, 2).expect("kill node 2"));
    assert!(found.count < COUNT, "records after the loss: {}", found.count);
    assert_eq!(end, (-libc::EIO).to_le_bytes(), "the end marker carries the error");
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}

/// TRAVERSE_START through `socket`, as smbd sends it; `after_first` runs once the first
/// record arrived. What the records were, and the data of the end marker.
fn ctdb_traverse(socket: &Path, after_first: impl FnOnce()) -> (Contents, Vec<u8>) {
    const SRVID: u64 = 0xF500_0000_0000_0001;
    const TRAVERSE_REQID: u32 = 77;
    let mut stream = BufReader::new(UnixStream::connect(socket).expect("connect"));
    stream.get_ref().set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut data = db_id_of(DB).to_le_bytes().to_vec();
    data.extend_from_slice(&TRAVERSE_REQID.to_le_bytes());
    data.extend_from_slice(&SRVID.to_le_bytes());
    let body = Body::ReqControl(ReqControl {
        opcode: ctdb_op::TRAVERSE_START,
        srvid: 0,
        client_id: 0,
        flags: 0,
        data,
    });
    let packet = Packet { generation: 0, destnode: CURRENT_NODE, srcnode: 0, reqid: 5, body };
    write_packet(stream.get_mut(), &packet).expect("write");
    let mut after_first = Some(after_first);
    let mut contents = Contents::default();
    let deadline = Instant::now() + DUMP_LIMIT;
    loop {
        assert!(Instant::now() < deadline, "the traverse ran past {DUMP_LIMIT:?}");
        assert!(!stream.fill_buf().expect("read").is_empty(), "the daemon closed the connection");
        let packet = read_packet(&mut stream, MAX_PACKET_LEN).expect("a packet");
        let message = match packet.body {
            Body::ReplyControl(reply) => {
                assert_eq!((packet.reqid, reply.status), (5, 0), "TRAVERSE_START accepted");
                continue;
            }
            Body::Message(message) => message,
            other => panic!("unexpected {}", other.operation()),
        };
        assert_eq!(message.srvid, SRVID);
        let rec = message.data;
        let field = |at: usize| u32::from_le_bytes(rec[at..at + 4].try_into().expect("4 bytes")) as usize;
        assert_eq!((field(0), field(4)), (rec.len(), TRAVERSE_REQID as usize), "ctdb_rec_data length, reqid");
        let (keylen, datalen) = (field(8), field(12));
        let key = &rec[16..16 + keylen];
        let data = &rec[16 + keylen..16 + keylen + datalen];
        if key.is_empty() {
            return (contents, data.to_vec());
        }
        let value = &data[rctdb::record::HEADER_LEN..];
        contents.add(key, value);
        if let Some(run) = after_first.take() {
            run();
        }
    }
}
