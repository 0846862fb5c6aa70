//! Bad input on rctdbd's client socket gets a clear error or a closed connection, never a
//! crash: the daemon keeps serving everyone else.

use crate::socket_support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use rctdb::client::DaemonConnection;
use rctdb::wire::control::opcode;
use rctdb::wire::{Body, ReqCall, ReqControl};
use rctdb_cli::tool::cluster::{ClusterSpec, RunningCluster};
use rctdbd::status::StatusControls;
use socket_support::request;

const TIMEOUT: Duration = Duration::from_secs(10);

/// The daemon closed the connection: end of stream, or a reset when it closed with our
/// unread bytes still in its buffer.
fn assert_hung_up(mut stream: UnixStream, after: &str) {
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut buf = [0u8; 16];
    match stream.read(&mut buf) {
        Ok(0) => {}
        Err(err) if err.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the daemon should hang up after {after}, got {other:?}"),
    }
}

fn control(opcode: u32, data: &[u8]) -> Body {
    Body::ReqControl(ReqControl { opcode, srvid: 0, client_id: 0, flags: 0, data: data.to_vec() })
}

fn error_text(body: Body) -> String {
    match body {
        Body::ReplyControl(reply) if reply.status != 0 => String::from_utf8_lossy(&reply.errmsg).into_owned(),
        other => panic!("expected an error reply, got {other:?}"),
    }
}

#[test]
fn bad_client_input_is_refused_and_the_daemon_carries_on() {
    let dir = std::env::temp_dir().join(format!("rctdb-daemon-input-{}", std::process::id()));
    let mut spec = ClusterSpec::new(2, &dir);
    spec.first_address = std::net::Ipv4Addr::new(127, 0, 8, 11);
    let cluster = RunningCluster::start(spec).unwrap_or_else(|e| panic!("cluster up: {e}"));
    let socket = cluster.socket(0);

    // Garbage instead of a packet: the daemon closes that connection.
    let mut garbage = UnixStream::connect(&socket).expect("connect");
    garbage.write_all(b"GET / HTTP/1.0\r\n\r\n plus some more bytes to fill a header").expect("write");
    assert_hung_up(garbage, "garbage");

    // A length field far beyond the limit: refused before anything is allocated.
    let mut huge = UnixStream::connect(&socket).expect("connect");
    huge.write_all(&u32::MAX.to_le_bytes()).expect("write");
    assert_hung_up(huge, "an oversized frame");

    // Well-formed requests that make no sense get an error that says why.
    let mut stream = UnixStream::connect(&socket).expect("connect");
    assert!(error_text(request(&mut stream, 1, control(opcode::DB_ATTACH, b"../etc/passwd")))
        .contains("not a database name"));
    assert!(error_text(request(&mut stream, 2, control(0x1234, b""))).contains("not served by rctdbd"));
    assert!(error_text(request(&mut stream, 3, control(opcode::TRAVERSE_ALL, &7u32.to_le_bytes())))
        .contains("not attached"));
    assert!(error_text(request(&mut stream, 4, control(opcode::TRAVERSE_ALL, b"x"))).contains("malformed"));
    let call = ReqCall {
        flags: 1,
        db_id: 7,
        callid: rctdb::wire::CALL_NULL_FUNC,
        hopcount: 0,
        key: b"k".to_vec(),
        calldata: vec![],
    };
    match request(&mut stream, 5, Body::ReqCall(call)) {
        Body::ReplyError(reply) => assert_eq!(reply.status, -libc::ENOENT, "migration in an unattached db"),
        other => panic!("expected REPLY_ERROR, got {other:?}"),
    }
    // Call functions other than CTDB's NULL_FUNC and FETCH_FUNC are refused, not run.
    let call =
        ReqCall { flags: 0, db_id: 7, callid: 0x77, hopcount: 0, key: b"k".to_vec(), calldata: vec![] };
    match request(&mut stream, 6, Body::ReqCall(call)) {
        Body::ReplyError(reply) => assert_eq!(reply.status, -libc::ENOSYS, "an unknown call function"),
        other => panic!("expected REPLY_ERROR, got {other:?}"),
    }

    // And the daemon still serves a well-behaved client.
    let mut daemon = DaemonConnection::connect(&socket).expect("connect");
    assert!(daemon.status(TIMEOUT).expect("status").sees_up(1), "node 0 sees node 1 alive, link up");
    daemon.attach("fine.tdb", TIMEOUT).expect("attach");
}
