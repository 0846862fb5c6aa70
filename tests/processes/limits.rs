//! Limits: which and how many databases clients may attach, key and record sizes,
//! and requests waiting for one key. Each offender gets an error that says what limit it
//! met; the node keeps serving everyone else. (Client and link limits: scale_clients.rs and
//! rogue_peer.rs; packet size: daemon_input.rs.)
//!
//! Address: 127.0.56.11.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rctdb::client::{ClusteredDb, DaemonConnection};
use rctdb::engine::MAX_WAITERS_PER_KEY;
use rctdb::local::StoreFlag;
use rctdb::wire::codec::{encode, read_packet};
use rctdb::wire::{Body, Packet, ReqCall, CALL_NULL_FUNC, MAX_KEY_LEN, MAX_PACKET_LEN, MAX_RECORD_LEN};
use rctdb_cli::tool::cluster::{ClusterSpec, RunningCluster};
use rctdbd::status::StatusControls;

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
    match read_packet(&mut raw, MAX_PACKET_LEN).expect("a reply").body {
        Body::ReplyError(reply) => {
            let msg = String::from_utf8_lossy(&reply.msg);
            assert!(msg.contains("keys hold at most"), "{msg}");
        }
        other => panic!("an over-long key got {other:?}"),
    }

    // Requests waiting: this process holds the chain of "hot", so calls for it queue. One
    // client may have MAX_CALLS_PER_CLIENT waiting, one key MAX_WAITERS_PER_KEY: a client
    // sends 50 more than its own limit, and ten more fill the key's and go 1000 past it.
    db.chainlock(b"hot").expect("chainlock");
    let per_client = MAX_WAITERS_PER_KEY / 10;
    let floods: Vec<_> = std::iter::once(per_client + 50)
        .chain(std::iter::repeat(per_client).take(10))
        .map(|calls| flood(&socket, db.db_id(), calls))
        .collect();
    let refused_of = |what: &str| floods.iter().map(|f| f.refused(what)).sum::<usize>();
    let started = Instant::now();
    while refused_of("calls of this client wait already") < 50
        || refused_of("requests wait for this key already") < 1000
    {
        assert!(
            started.elapsed() < TIMEOUT,
            "refusals: {} per client, {} per key",
            refused_of("calls of this client wait already"),
            refused_of("requests wait for this key already")
        );
        std::thread::sleep(Duration::from_millis(20)); // polling the reader threads' counts
    }
    // Everyone else is served meanwhile, and the flooded key once its chain is free.
    let mut other = ClusteredDb::open(&socket, "smb_a.tdb", TIMEOUT).expect("attach");
    other.store(b"not-hot", &[b"served"], StoreFlag::Replace).expect("another key is served");
    db.chainunlock(b"hot").unwrap();
    drop(floods);
    db.store(b"hot", &[b"served"], StoreFlag::Replace).expect("the hot key once free");
    let status = DaemonConnection::connect(&socket).unwrap().status(TIMEOUT).unwrap();
    assert_eq!(status.stats.calls_refused_busy, 1000, "status:\n{status}");
    drop(db);
    still_serves(&cluster, "smb_b.tdb");
}

/// A connection that sent `calls` calls for "hot", and counts the refusals it got by reason.
struct Flood {
    stream: UnixStream,
    refusals: Arc<Mutex<Vec<String>>>,
}

impl Flood {
    fn refused(&self, what: &str) -> usize {
        self.refusals.lock().unwrap().iter().filter(|m| m.contains(what)).count()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }
}

fn flood(socket: &Path, db_id: u32, calls: usize) -> Flood {
    let stream = UnixStream::connect(socket).expect("connect");
    let mut frames = Vec::new();
    for reqid in 1..=calls as u32 {
        let call = ReqCall {
            flags: 0,
            db_id,
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
    stream.try_clone().unwrap().write_all(&frames).expect("sending the calls");
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let (mut reader, seen) = (stream.try_clone().unwrap(), Arc::clone(&refusals));
    std::thread::spawn(move || {
        while let Ok(packet) = read_packet(&mut reader, MAX_PACKET_LEN) {
            if let Body::ReplyError(reply) = packet.body {
                seen.lock().unwrap().push(String::from_utf8_lossy(&reply.msg).into_owned());
            }
        }
    });
    Flood { stream, refusals }
}
