//! Limits (issue 8): which and how many databases clients may attach, key and record sizes,
//! and requests waiting for one key. Each offender gets an error that says what limit it
//! met; the node keeps serving everyone else. (Client and link limits: scale_clients.rs and
//! rogue_peer.rs; packet size: daemon_input.rs.)
//!
//! Address: 127.0.56.11.

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use rctdb::client::{ClusteredDb, DaemonConnection};
use rctdb::engine::MAX_WAITERS_PER_KEY;
use rctdb::local::StoreFlag;
use rctdb::tool::cluster::{ClusterSpec, RunningCluster};
use rctdb::wire::codec::{decode_unpadded, encode};
use rctdb::wire::{Body, Packet, ReqCall, CALL_NULL_FUNC, MAX_KEY_LEN, MAX_RECORD_LEN};

const TIMEOUT: Duration = Duration::from_secs(10);

fn start() -> RunningCluster {
    let dir = std::env::temp_dir().join(format!("rctdb-limits-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut spec = ClusterSpec::new(1, &dir);
    spec.first_address = Ipv4Addr::new(127, 0, 56, 11);
    spec.daemon_args = ["--allow-db", "allowed.tdb", "--allow-db", "smb_*", "--max-databases", "3"]
        .map(String::from)
        .to_vec();
    RunningCluster::start(spec).expect("cluster up")
}

fn still_serves(cluster: &RunningCluster, name: &str) {
    let mut db = ClusteredDb::open(&cluster.socket(0), name, TIMEOUT).expect("attach");
    db.store(b"alive", &[b"yes"], StoreFlag::Replace).expect("the node still serves");
}

#[test]
fn databases_keys_records_and_waiters_are_bounded_with_clear_errors() {
    let cluster = start();
    let socket = cluster.socket(0);
    let attach_error = |name: &str| match ClusteredDb::open(&socket, name, TIMEOUT) {
        Ok(_) => panic!("attaching {name:?} was allowed"),
        Err(err) => err.to_string(),
    };

    // Which databases: names are checked before any file is made.
    let not_allowed = attach_error("secrets.tdb");
    assert!(not_allowed.contains("not one this node lets clients attach"), "{not_allowed}");
    let bad_name = attach_error("../escape.tdb");
    assert!(bad_name.contains("not a database name"), "{bad_name}");
    assert!(!cluster.dir().join("escape.tdb").exists(), "a file was made outside the database directory");
    assert!(!cluster.dir().join("node0").join("secrets.tdb").exists(), "a refused database got a file");
    still_serves(&cluster, "allowed.tdb");

    // How many: allowed.tdb and two smb_ databases fill the limit of 3.
    for name in ["smb_a.tdb", "smb_b.tdb"] {
        ClusteredDb::open(&socket, name, TIMEOUT).unwrap_or_else(|e| panic!("attach {name}: {e}"));
    }
    let too_many = attach_error("smb_c.tdb");
    assert!(too_many.contains("--max-databases 3"), "{too_many}");
    ClusteredDb::open(&socket, "smb_a.tdb", TIMEOUT).expect("an attached database attaches again");

    // Keys and records.
    let mut db = ClusteredDb::open(&socket, "allowed.tdb", TIMEOUT).expect("attach");
    let long_key = vec![b'k'; MAX_KEY_LEN + 1];
    let err = db.store(&long_key, &[b"x"], StoreFlag::Replace).expect_err("an over-long key was stored");
    assert!(err.to_string().contains("keys hold at most"), "{err}");
    let huge = vec![0u8; MAX_RECORD_LEN];
    let err = db.store(b"huge", &[&huge], StoreFlag::Replace).expect_err("an over-large record was stored");
    assert!(err.to_string().contains("records hold at most"), "{err}");
    drop(huge);
    // A client that skips the library (smbd speaks the protocol itself) meets the daemon's
    // own key check.
    let mut raw = UnixStream::connect(&socket).expect("connect");
    let call = ReqCall {
        flags: 0,
        db_id: db.db_id(),
        callid: CALL_NULL_FUNC,
        hopcount: 0,
        key: long_key,
        calldata: vec![],
    };
    raw.write_all(&encode(&Packet {
        generation: 0,
        destnode: 0,
        srcnode: 0,
        reqid: 1,
        body: Body::ReqCall(call),
    }))
    .unwrap();
    match read_reply(&mut raw).body {
        Body::ReplyError(reply) => {
            let msg = String::from_utf8_lossy(&reply.msg);
            assert!(msg.contains("keys hold at most"), "{msg}");
        }
        other => panic!("an over-long key got {other:?}"),
    }

    // Requests waiting for one key: this process holds the chain, so requests queue.
    db.chainlock(b"hot").expect("chainlock");
    let mut flood = UnixStream::connect(&socket).expect("connect");
    let total = MAX_WAITERS_PER_KEY + 50;
    let mut frames = Vec::new();
    for reqid in 1..=total as u32 {
        let call = ReqCall {
            flags: 0,
            db_id: db.db_id(),
            callid: CALL_NULL_FUNC,
            hopcount: 0,
            key: b"hot".to_vec(),
            calldata: vec![],
        };
        frames.extend(encode(&Packet {
            generation: 0,
            destnode: 0,
            srcnode: 0,
            reqid,
            body: Body::ReqCall(call),
        }));
    }
    let writer = {
        let mut flood = flood.try_clone().unwrap();
        std::thread::spawn(move || flood.write_all(&frames))
    };
    let started = Instant::now();
    let mut refused = 0;
    while refused < total - MAX_WAITERS_PER_KEY {
        assert!(started.elapsed() < TIMEOUT, "only {refused} requests were refused");
        if let Body::ReplyError(reply) = read_reply(&mut flood).body {
            let msg = String::from_utf8_lossy(&reply.msg);
            assert!(msg.contains("requests wait for this key already"), "{msg}");
            refused += 1;
        }
    }
    writer.join().unwrap().expect("sending the flood");
    // Everyone else is served meanwhile, and the flooded key once its chain is free.
    let mut other = ClusteredDb::open(&socket, "smb_a.tdb", TIMEOUT).expect("attach");
    other.store(b"not-hot", &[b"served"], StoreFlag::Replace).expect("another key is served");
    db.chainunlock(b"hot").unwrap();
    drop(flood);
    db.store(b"hot", &[b"served"], StoreFlag::Replace).expect("the hot key once free");
    let status = DaemonConnection::connect(&socket).unwrap().status(TIMEOUT).unwrap();
    assert!(status.contains(&format!("calls_refused_busy={refused}")), "status:\n{status}");
    drop(db);
    still_serves(&cluster, "smb_b.tdb");
}

fn read_reply(stream: &mut UnixStream) -> Packet {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).expect("a reply");
    let mut frame = len.to_vec();
    frame.resize(u32::from_le_bytes(len) as usize, 0);
    stream.read_exact(&mut frame[4..]).expect("the rest of the reply");
    decode_unpadded(&frame).expect("a reply we can decode")
}
