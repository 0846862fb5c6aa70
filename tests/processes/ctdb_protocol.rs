//! ctdbd's client protocol on rctdbd's socket, spoken byte by byte as smbd speaks it
//! (`source3/lib/ctdbd_conn.c`): unpadded frames, GET_PNN in the status, srvids registered
//! per connection, REQ_MESSAGE routed to another node and broadcast, the liveness of a
//! process asked of the node it is connected to, CTDB's DB_ATTACH/GETDBPATH/DB_OPEN_FLAGS,
//! REQ_CALL with NULL_FUNC and FETCH_FUNC, and an error for what is not served. Needs no
//! Samba: `tests/samba/samba_cluster.rs` runs stock smbd on top.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use rctdb::local::Tdb;
use rctdb::record::RecordHeader;
use rctdb::wire::ctdb::{opcode, BROADCAST_CONNECTED};
use rctdb::wire::{
    decode_unpadded, encode, Body, Packet, ReqCall, ReqControl, ReqMessage, CALL_FETCH_FUNC,
    CALL_FLAG_IMMEDIATE_MIGRATION, CALL_NULL_FUNC, CURRENT_NODE,
};
use rctdb_cli::tool::cluster::{ClusterSpec, RunningCluster};

const SRVID: u64 = 0x0000_0000_0042_0001;

/// One connection, as smbd makes it: frames written without tail padding.
struct CtdbClient {
    stream: UnixStream,
    next_reqid: u32,
}

impl CtdbClient {
    fn connect(socket: &Path) -> CtdbClient {
        let stream = UnixStream::connect(socket).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        CtdbClient { stream, next_reqid: 1 }
    }

    fn send(&mut self, destnode: u32, body: Body) -> u32 {
        let reqid = self.next_reqid;
        self.next_reqid += 1;
        let packet = Packet { generation: 1, destnode, srcnode: 0, reqid, body };
        let mut frame = encode(&packet);
        // smbd sends `offsetof(struct, data) + datalen` bytes: drop our zero tail padding.
        let unpadded = rctdb::wire::encoded_len(&packet) - padding_of(&packet);
        frame.truncate(unpadded);
        frame[0..4].copy_from_slice(&(unpadded as u32).to_le_bytes());
        self.stream.write_all(&frame).expect("write");
        reqid
    }

    fn read(&mut self) -> Packet {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).expect("a packet from rctdbd");
        let mut frame = len.to_vec();
        frame.resize(u32::from_le_bytes(len) as usize, 0);
        self.stream.read_exact(&mut frame[4..]).expect("the rest of the packet");
        decode_unpadded(&frame).expect("a valid packet")
    }

    /// A control and its reply: (status, data, error message).
    fn control(&mut self, destnode: u32, opcode: u32, srvid: u64, data: &[u8]) -> (i32, Vec<u8>, String) {
        let request = ReqControl { opcode, srvid, client_id: 0, flags: 0, data: data.to_vec() };
        let reqid = self.send(destnode, Body::ReqControl(request));
        let packet = self.read();
        assert_eq!(packet.reqid, reqid, "the reply carries the request's reqid");
        match packet.body {
            Body::ReplyControl(r) => (r.status, r.data, String::from_utf8_lossy(&r.errmsg).into_owned()),
            other => panic!("expected REPLY_CONTROL, got {other:?}"),
        }
    }

    fn call(&mut self, db_id: u32, callid: u32, key: &[u8]) -> Body {
        let flags = if callid == CALL_NULL_FUNC { CALL_FLAG_IMMEDIATE_MIGRATION } else { 0 };
        let call = ReqCall { flags, db_id, callid, hopcount: 0, key: key.to_vec(), calldata: vec![] };
        let reqid = self.send(CURRENT_NODE, Body::ReqCall(call));
        let packet = self.read();
        assert_eq!(packet.reqid, reqid);
        packet.body
    }
}

fn padding_of(packet: &Packet) -> usize {
    let body = match &packet.body {
        Body::ReqControl(c) => 28 + c.data.len(),
        Body::Message(m) => 12 + m.data.len(),
        Body::ReqCall(c) => 24 + c.key.len() + c.calldata.len(),
        other => panic!("not sent by this client: {other:?}"),
    };
    rctdb::wire::encoded_len(packet) - 32 - body
}

fn pid_srvid(pid: u32, srvid: u64) -> Vec<u8> {
    let mut data = pid.to_le_bytes().to_vec();
    data.extend_from_slice(&srvid.to_le_bytes());
    data
}

#[test]
fn smbd_speaks_to_rctdbd_as_to_ctdbd() {
    let dir = std::env::temp_dir().join(format!("rctdb-ctdb-protocol-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut spec = ClusterSpec::new(2, &dir);
    spec.first_address = Ipv4Addr::new(127, 0, 41, 11);
    let running = RunningCluster::start(spec).unwrap_or_else(|e| panic!("cluster up: {e}"));
    let mut node0 = CtdbClient::connect(&running.socket(0));
    let mut node1 = CtdbClient::connect(&running.socket(1));

    // GET_PNN answers in the status, as smbd's get_cluster_vnn reads it.
    assert_eq!(node0.control(CURRENT_NODE, opcode::GET_PNN, 0, &[]).0, 0);
    assert_eq!(node1.control(CURRENT_NODE, opcode::GET_PNN, 0, &[]).0, 1);

    // A srvid registered on node 1 gets a message sent from node 0, with the sender's node.
    assert_eq!(node1.control(CURRENT_NODE, opcode::REGISTER_SRVID, SRVID, &[]).0, 0);
    node0.send(1, Body::Message(ReqMessage { srvid: SRVID, data: b"break".to_vec() }));
    let message = node1.read();
    assert_eq!((message.srcnode, message.destnode), (0, 1));
    assert_eq!(message.body, Body::Message(ReqMessage { srvid: SRVID, data: b"break".to_vec() }));
    // ... and a broadcast to every connected node, the sender's own node included.
    assert_eq!(node0.control(CURRENT_NODE, opcode::REGISTER_SRVID, SRVID, &[]).0, 0);
    node1.send(BROADCAST_CONNECTED, Body::Message(ReqMessage { srvid: SRVID, data: b"all".to_vec() }));
    for client in [&mut node0, &mut node1] {
        assert_eq!(client.read().body, Body::Message(ReqMessage { srvid: SRVID, data: b"all".to_vec() }));
    }

    // Liveness asked of the node the process is connected to (this test process is a
    // client of node 1, known there by SO_PEERCRED).
    let me = std::process::id();
    assert_eq!(node0.control(1, opcode::CHECK_PID_SRVID, 0, &pid_srvid(me, SRVID)).0, 0);
    assert_eq!(
        node0.control(1, opcode::CHECK_PID_SRVID, 0, &pid_srvid(me, SRVID + 1)).0,
        -1,
        "srvid not registered"
    );
    assert_eq!(node0.control(1, opcode::PROCESS_EXISTS, 0, &me.to_le_bytes()).0, 0);
    assert_eq!(node0.control(1, opcode::PROCESS_EXISTS, 0, &1u32.to_le_bytes()).0, -1, "pid 1 is no client");
    assert_eq!(node0.control(7, opcode::PROCESS_EXISTS, 0, &me.to_le_bytes()).0, -1, "no node 7");

    // CTDB's attach: the db id alone; then the path and the flags smbd opens it with.
    let (status, data, _) = node1.control(CURRENT_NODE, opcode::DB_ATTACH, 0, b"locking.tdb\0");
    assert_eq!((status, data.len()), (0, 4));
    let db_id = u32::from_le_bytes(data.try_into().unwrap());
    let (status, path, _) = node1.control(CURRENT_NODE, opcode::GETDBPATH, 0, &db_id.to_le_bytes());
    assert_eq!((status, path.last()), (0, Some(&0)), "a C string");
    let path = String::from_utf8(path[..path.len() - 1].to_vec()).unwrap();
    let (status, flags, _) = node1.control(CURRENT_NODE, opcode::DB_OPEN_FLAGS, 0, &db_id.to_le_bytes());
    assert_eq!((status, flags.len()), (0, 4));
    let flags = i32::from_le_bytes(flags.try_into().unwrap());
    assert_ne!(flags & rctdb::local::flags::TDB_INCOMPATIBLE_HASH, 0);

    // NULL_FUNC makes node 1 the record's DMASTER, in the file smbd reads.
    assert!(matches!(node1.call(db_id, CALL_NULL_FUNC, b"file-id"), Body::ReplyCall(r) if r.status == 0));
    let tdb =
        Tdb::open(Path::new(&path), 0, flags, libc::O_RDWR, 0).expect("open the node's file as smbd does");
    let value = tdb.fetch(b"file-id").unwrap().expect("the record is in node 1's file");
    let (header, data) = RecordHeader::decode(&value).unwrap();
    assert_eq!((header.dmaster, data.len()), (1, 0));
    // smbd stores under the header it read; FETCH_FUNC on node 0 answers that data, read
    // where the record is.
    let mut stored = header.encode().to_vec();
    stored.extend_from_slice(b"share mode entry");
    tdb.store(b"file-id", &stored, rctdb::local::StoreFlag::Replace).unwrap();
    assert_eq!(node0.control(CURRENT_NODE, opcode::DB_ATTACH, 0, b"locking.tdb\0").1, db_id.to_le_bytes());
    match node0.call(db_id, CALL_FETCH_FUNC, b"file-id") {
        Body::ReplyCall(r) => assert_eq!((r.status, r.data.as_slice()), (0, &b"share mode entry"[..])),
        other => panic!("expected REPLY_CALL, got {other:?}"),
    }
    let value = tdb.fetch(b"file-id").unwrap().expect("still in node 1's file");
    assert_eq!(RecordHeader::decode(&value).unwrap().0.dmaster, 1, "a read leaves the record where it is");
    drop(tdb);

    // What rctdbd does not serve is refused with a reason, never left unanswered.
    let (status, _, why) = node0.control(CURRENT_NODE, opcode::DB_ATTACH_PERSISTENT, 0, b"secrets.tdb\0");
    assert_eq!(status, -1);
    assert!(why.contains("ctdb:secrets.tdb = no"), "{why}");
    let (status, _, why) = node0.control(CURRENT_NODE, 999, 0, &[]);
    assert!(status != 0 && why.contains("not served"), "{why}");

    // A process gone is gone for its peers, and only then: while another connection of
    // the process holds the srvid, it is alive; once none does, node 0 answers "gone".
    let mut second = CtdbClient::connect(&running.socket(1));
    assert_eq!(second.control(CURRENT_NODE, opcode::REGISTER_SRVID, SRVID, &[]).0, 0);
    // A srvid only the first connection holds shows when node 1 has seen it close: without
    // that, "still held" would prove nothing.
    assert_eq!(node1.control(CURRENT_NODE, opcode::REGISTER_SRVID, SRVID + 2, &[]).0, 0);
    drop(node1);
    let gone_from_node1 = |node0: &mut CtdbClient, srvid: u64| {
        (0..250).any(|_| {
            std::thread::sleep(Duration::from_millis(20)); // polling node 1's view
            node0.control(1, opcode::CHECK_PID_SRVID, 0, &pid_srvid(me, srvid)).0 == -1
        })
    };
    assert!(gone_from_node1(&mut node0, SRVID + 2), "node 1 never saw the first connection close");
    assert_eq!(node0.control(1, opcode::CHECK_PID_SRVID, 0, &pid_srvid(me, SRVID)).0, 0, "still held");
    drop(second);
    assert!(gone_from_node1(&mut node0, SRVID), "node 1 still lists the srvid of a closed connection");
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}

/// CTDB's srvid for "the cluster was reconfigured", which smbd registers to revalidate its
/// byte-range locks (`ctdb/include/ctdb_protocol.h`).
const SRVID_RECONFIGURE: u64 = 0xF200_0000_0000_0000;

/// The next message on `client`'s connection; panics after its read timeout.
fn next_message(client: &mut CtdbClient) -> ReqMessage {
    match client.read().body {
        Body::Message(message) => message,
        other => panic!("expected REQ_MESSAGE, got {other:?}"),
    }
}

#[test]
fn every_recovery_tells_reconfigure_listeners() {
    let dir = std::env::temp_dir().join(format!("rctdb-ctdb-reconfigure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut spec = ClusterSpec::new(3, &dir);
    spec.first_address = Ipv4Addr::new(127, 0, 41, 21);
    let running = RunningCluster::start(spec.clone()).unwrap_or_else(|e| panic!("cluster up: {e}"));
    let mut listener = CtdbClient::connect(&running.socket(0));
    assert_eq!(listener.control(CURRENT_NODE, opcode::REGISTER_SRVID, SRVID_RECONFIGURE, &[]).0, 0);
    let reconfigured = ReqMessage { srvid: SRVID_RECONFIGURE, data: vec![] };

    // A node dies: the survivors recover without it, and node 0's listener hears of it.
    rctdb_cli::tool::cluster::kill_node(&dir, 2).unwrap_or_else(|e| panic!("kill node 2: {e}"));
    assert_eq!(next_message(&mut listener), reconfigured);
    rctdb_cli::tool::cluster::wait_until_serving(&spec, &[0, 1]).unwrap_or_else(|e| panic!("{e}"));
    // It comes back: the recovery that admits it is announced too, on node 1 as well (a
    // listener registered after the first recovery settled).
    let mut late_listener = CtdbClient::connect(&running.socket(1));
    assert_eq!(late_listener.control(CURRENT_NODE, opcode::REGISTER_SRVID, SRVID_RECONFIGURE, &[]).0, 0);
    rctdb_cli::tool::cluster::start_node(&spec, 2).unwrap_or_else(|e| panic!("start node 2: {e}"));
    rctdb_cli::tool::cluster::wait_until_serving(&spec, &[0, 1, 2]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(next_message(&mut late_listener), reconfigured);
    // Only registered connections hear it: this one asks a control and gets just its reply.
    let mut other = CtdbClient::connect(&running.socket(0));
    assert_eq!(other.control(CURRENT_NODE, opcode::GET_PNN, 0, &[]).0, 0);
    drop(running);
    let _ = std::fs::remove_dir_all(&dir);
}
