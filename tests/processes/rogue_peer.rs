//! A rogue process on the cluster network (the cluster key): a 3-node cluster with a
//! key on 127.0.87.11-13, and this test as the rogue, without the key or with a wrong one,
//! from an unknown address and from a real node's address. It tries to inject a record
//! (REPLY_DMASTER / REQ_DMASTER with a higher RSN), to steal one (REQ_CALL, PULL_DB), to
//! wipe, attach or recover (cluster messages), floods the nodes with connections, holds
//! connections open saying nothing, and sends garbage. The record stays where it was with
//! its value, the rogue receives nothing but a handshake challenge, clients are served
//! throughout, no node restarts or recovers, and every refusal is logged.
//!
//! A second cluster shows the other side: nodes with the same key form a cluster, a node
//! with another key is refused, and both logs and `rctdb status` say why.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rctdb::client::{ClusteredDb, DaemonConnection};
use rctdb::local::StoreFlag;
use rctdb::wire::cluster::{ClusterMsg, DbName};
use rctdb::wire::control::opcode;
use rctdb::wire::{
    codec, Body, DbId, Packet, Pnn, ReplyDmaster, ReqCall, ReqControl, ReqDmaster,
    CALL_FLAG_IMMEDIATE_MIGRATION, CALL_NULL_FUNC,
};
use rctdb_cli::tool::cluster::{self, socket_path, ClusterSpec, RunningCluster};
use rctdbd::status::{NodeStatus, StatusControls};
use rctdbd::transport::auth::{self, ClusterKey, HandshakeError};
use rctdbd::transport::connect::connect_from;

const NODES: usize = 3;
const FIRST: Ipv4Addr = Ipv4Addr::new(127, 0, 87, 11);
/// An address in no nodes file.
const STRANGER: Ipv4Addr = Ipv4Addr::new(127, 0, 87, 50);
const PORT: u16 = rctdbd::daemon::DEFAULT_PORT;
const DB: &str = "rogue.tdb";
const SECRET: &[u8] = b"secret";
const TIMEOUT: Duration = Duration::from_secs(10);
/// rctdbd's handshake deadline is 2 s; a silent connection must be gone well within this.
const SILENT_CLOSED_WITHIN: Duration = Duration::from_secs(5);
const FLOOD: usize = 100;

fn address(node: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(FIRST) + node as u32)
}

fn node_addr(node: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(address(node)), PORT)
}

fn scratch(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("rctdb-rogue-{name}-{}", std::process::id()))
}

fn status(socket: &Path) -> NodeStatus {
    DaemonConnection::connect(socket).and_then(|mut d| d.status(TIMEOUT)).expect("status")
}

fn pid(dir: &Path, node: usize) -> i32 {
    let path = dir.join(format!("node{node}.pid"));
    std::fs::read_to_string(&path).expect("pid file").trim().parse().expect("a pid")
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Everything a keyless cluster would act on, as if from node `pretend` to node `target`:
/// take the record over, steal it, wipe the database, attach a file, start a recovery.
fn attack_packets(target: usize, pretend: Pnn, db_id: DbId, generation: u32, rsn: u64) -> Vec<u8> {
    let packet = |body| Packet { generation, destnode: target as Pnn, srcnode: pretend, reqid: 77, body };
    let forged = b"forged by the rogue".to_vec();
    let db = DbName { db_id, name: DB.to_owned() };
    let bodies = vec![
        Body::ReplyDmaster(ReplyDmaster {
            db_id,
            rsn: rsn + 1000,
            key: SECRET.to_vec(),
            data: forged.clone(),
            record_flags: 0,
        }),
        Body::ReqDmaster(ReqDmaster {
            db_id,
            rsn: rsn + 1000,
            dmaster: pretend,
            key: SECRET.to_vec(),
            data: forged,
            record_flags: 0,
        }),
        Body::ReqCall(ReqCall {
            flags: CALL_FLAG_IMMEDIATE_MIGRATION,
            db_id,
            callid: CALL_NULL_FUNC,
            hopcount: 0,
            key: SECRET.to_vec(),
            calldata: vec![],
        }),
        Body::ReqControl(ReqControl {
            opcode: opcode::PULL_DB,
            srvid: 0,
            client_id: 0,
            flags: 0,
            data: db_id.to_le_bytes().to_vec(),
        }),
        Body::Cluster(ClusterMsg::Attach { id: 1, db: DbName { db_id: 9, name: "../../rogue.tdb".into() } }),
        Body::Cluster(ClusterMsg::Wipe { generation, dbs: vec![db] }),
        Body::Cluster(ClusterMsg::RecoveryStart {
            term: u64::MAX / 2,
            generation: generation.wrapping_add(1),
        }),
    ];
    bodies.into_iter().flat_map(|body| codec::encode(&packet(body))).collect()
}

/// Reads until the node closes the connection; returns what it sent. Fails if it stays
/// open past `within`.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Vec<u8> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "the node kept a rogue connection open for {within:?}");
        stream.set_read_timeout(Some(left)).expect("timeout");
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("reading a rogue connection: {e}"),
        }
    }
}

/// The node sent the rogue nothing but, at most, one handshake challenge: no record, no
/// reply, no packet.
fn assert_nothing_leaked(got: &[u8], what: &str) {
    const HANDSHAKE_FRAME: usize = 96;
    let challenge_only = got.len() == HANDSHAKE_FRAME && got[16..20] == 0x200u32.to_le_bytes();
    assert!(got.is_empty() || challenge_only, "{what}: the node sent the rogue {} bytes: {got:?}", got.len());
}

/// Clients on nodes 1 and 2 write and read one key in turn (a migration each time) until
/// told to stop; returns how many rounds completed and the slowest.
fn serve_clients_meanwhile(
    dir: &Path,
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
) -> std::thread::JoinHandle<Duration> {
    let sockets = [socket_path(dir, 1), socket_path(dir, 2)];
    std::thread::spawn(move || {
        let mut dbs: Vec<ClusteredDb> =
            sockets.iter().map(|s| ClusteredDb::open(s, DB, TIMEOUT).expect("attach")).collect();
        let mut slowest = Duration::ZERO;
        let mut i: u64 = 0;
        while !stop.load(Ordering::Acquire) || i < 4 {
            let started = Instant::now();
            let db = &mut dbs[(i % 2) as usize];
            let value = i.to_le_bytes();
            db.store(b"busy", &[&value], StoreFlag::Replace).expect("writekey during the attack");
            assert_eq!(db.fetch(b"busy").expect("readkey during the attack"), Some(value.to_vec()));
            slowest = slowest.max(started.elapsed());
            i += 1;
            rounds.store(i, Ordering::Release);
        }
        slowest
    })
}

#[test]
fn a_rogue_without_the_key_can_neither_inject_steal_nor_stall() {
    let dir = scratch("attack");
    let mut spec = ClusterSpec::new(NODES, &dir);
    spec.first_address = FIRST;
    let cluster = RunningCluster::start(spec).unwrap_or_else(|e| panic!("cluster up: {e}"));
    let test_started = Instant::now();

    let mut owner = ClusteredDb::open(&cluster.socket(0), DB, TIMEOUT).expect("attach");
    owner.store(SECRET, &[b"v1"], StoreFlag::Replace).expect("store");
    let db_id = owner.db_id();
    let find = |records: Vec<rctdb::wire::control::RecordCopy>| {
        records.into_iter().find(|r| r.key == SECRET).expect("the record is in the cluster")
    };
    let traverse = || {
        let mut d = DaemonConnection::connect(&cluster.socket(1)).expect("connect");
        let mut records = vec![];
        d.traverse_all(db_id, TIMEOUT, |record| {
            records.push(record);
            true
        })
        .expect("traverse");
        find(records)
    };
    let before = traverse();
    assert_eq!((before.header.dmaster, before.data.as_slice()), (0, &b"v1"[..]));
    let generation = status(&cluster.socket(0)).generation;
    let pids: Vec<i32> = (0..NODES).map(|k| pid(cluster.dir(), k)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let clients = serve_clients_meanwhile(cluster.dir(), Arc::clone(&stop), Arc::clone(&rounds));

    // Silent connections first: they must be closed at the handshake deadline while the
    // rest of the attack goes on.
    let silent: Vec<(usize, TcpStream, Instant)> = (0..NODES)
        .map(|t| {
            let stream =
                connect_from(IpAddr::V4(address((t + 1) % NODES)), node_addr(t), TIMEOUT).expect("connect");
            (t, stream, Instant::now())
        })
        .collect();

    let wrong_key = ClusterKey::from_bytes(&[0x5a; auth::MIN_KEY_LEN]).expect("key");
    for target in 0..NODES {
        let pretend = (target + 1) % NODES;
        let attack = attack_packets(target, pretend as Pnn, db_id, generation, before.header.rsn);
        // No key at all, from a real node's address and from a stranger's.
        for from in [address(pretend), STRANGER] {
            let mut rogue = connect_from(IpAddr::V4(from), node_addr(target), TIMEOUT).expect("connect");
            let _ = rogue.write_all(&attack); // the node may close before all of it is written
            let got = read_until_closed(&mut rogue, TIMEOUT);
            assert_nothing_leaked(&got, &format!("keyless rogue from {from} to node {target}"));
        }
        // A wrong key: the node's challenge does not verify, and whatever follows is refused.
        let mut rogue =
            connect_from(IpAddr::V4(address(pretend)), node_addr(target), TIMEOUT).expect("connect");
        let result = auth::authenticate_outgoing(
            &rogue,
            &wrong_key,
            pretend as Pnn,
            target as Pnn,
            Instant::now() + TIMEOUT,
        );
        assert!(matches!(result, Err(HandshakeError::WrongKey)), "{result:?}");
        let _ = rogue.write_all(&attack);
        let got = read_until_closed(&mut rogue, TIMEOUT);
        assert!(got.is_empty(), "after a failed handshake the node sent {got:?}");
        // Garbage, and a frame length far beyond any limit.
        for junk in [
            (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect::<Vec<u8>>(),
            u32::MAX.to_le_bytes().to_vec(),
        ] {
            let mut rogue =
                connect_from(IpAddr::V4(address(pretend)), node_addr(target), TIMEOUT).expect("connect");
            let _ = rogue.write_all(&junk);
            let got = read_until_closed(&mut rogue, TIMEOUT);
            assert_nothing_leaked(&got, "garbage");
        }
    }

    // A flood of silent connections from node 1's address: refused once the handshake
    // slots are full, the rest closed at their deadline.
    let mut flood: Vec<TcpStream> =
        (0..FLOOD).filter_map(|_| connect_from(IpAddr::V4(address(1)), node_addr(0), TIMEOUT).ok()).collect();
    assert!(flood.len() >= FLOOD / 2, "the kernel accepted only {} connections", flood.len());
    for (target, mut stream, opened) in silent {
        let got = read_until_closed(&mut stream, SILENT_CLOSED_WITHIN);
        assert_nothing_leaked(&got, "a silent connection");
        println!("node {target} closed a silent connection after {:?}", opened.elapsed());
    }
    for stream in &mut flood {
        assert_nothing_leaked(&read_until_closed(stream, SILENT_CLOSED_WITHIN), "a flood connection");
    }

    stop.store(true, Ordering::Release);
    let slowest = clients.join().expect("clients were served throughout the attack");
    let served = rounds.load(Ordering::Acquire);
    println!("during the attack: {served} client rounds (write + read, migrating), slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(2), "a client waited {slowest:?} during the attack");

    // The record is where it was, with its value and RSN; nothing moved or was wiped.
    let after = traverse();
    assert_eq!(
        (after.header.dmaster, after.header.rsn, after.data.as_slice()),
        (0, before.header.rsn, &b"v1"[..]),
        "the rogue moved or changed the record"
    );
    assert_eq!(owner.fetch(SECRET).expect("fetch"), Some(b"v1".to_vec()));

    // No node restarted, no recovery ran, every link is up.
    for (k, &started_as) in pids.iter().enumerate() {
        assert_eq!(pid(cluster.dir(), k), started_as, "node {k} restarted");
        assert!(alive(started_as), "node {k} died");
        let now = status(&cluster.socket(k));
        assert_eq!(now.generation, generation, "node {k} went through a recovery");
        assert_eq!((0..NODES).filter(|&p| now.sees_up(p as Pnn)).count(), NODES - 1, "node {k}: {now}");
    }

    // Every node logged the refusals, naming the addresses.
    for k in 0..NODES {
        let log = std::fs::read_to_string(cluster.dir().join(format!("node{k}.log"))).expect("log");
        let pretend = address((k + 1) % NODES);
        for expected in [
            format!("refused connection from unknown peer {STRANGER}"),
            format!("refused connection from node {}'s address {pretend}", (k + 1) % NODES),
            "sent no authentication handshake".to_string(),
            "no handshake in time".to_string(),
        ] {
            assert!(log.contains(&expected), "node {k}'s log lacks {expected:?}");
        }
    }
    let log0 = std::fs::read_to_string(cluster.dir().join("node0.log")).expect("log");
    assert!(log0.contains("handshakes are already pending"), "node 0 did not log the flood");
    println!("attack phase took {:?}", test_started.elapsed());
}

/// The control experiment: the same packets, sent to a cluster without a key from node 1's
/// address, do take effect (a forged record, or a recovery). Without it the test above could
/// pass because its attack had gone stale.
#[test]
fn without_a_key_the_same_attack_takes_effect() {
    let dir = scratch("keyless");
    let mut spec = ClusterSpec::new(NODES, &dir);
    spec.first_address = Ipv4Addr::new(127, 0, 89, 11);
    spec.cluster_key = None;
    let cluster = RunningCluster::start(spec.clone()).unwrap_or_else(|e| panic!("cluster up: {e}"));
    let mut owner = ClusteredDb::open(&cluster.socket(0), DB, TIMEOUT).expect("attach");
    owner.store(SECRET, &[b"v1"], StoreFlag::Replace).expect("store");
    let generation = status(&cluster.socket(1)).generation;

    let attack = attack_packets(0, 1, owner.db_id(), generation, 1);
    let mut rogue = connect_from(
        IpAddr::V4(spec.address(1)),
        SocketAddr::new(IpAddr::V4(spec.address(0)), PORT),
        TIMEOUT,
    )
    .expect("connect");
    // Without a key, a link opens with its session's resume alone, then carries packets.
    let _ = rogue.write_all(&[rctdbd::transport::resume_frame(1, 0, 1), attack].concat());

    let deadline = Instant::now() + TIMEOUT;
    let took_effect = || {
        let mut forged = false;
        let _ = DaemonConnection::connect(&cluster.socket(1)).and_then(|mut d| {
            d.traverse_all(owner.db_id(), TIMEOUT, |r| {
                forged |= r.key == SECRET && r.data != b"v1";
                true
            })
        });
        let recovered = DaemonConnection::connect(&cluster.socket(1))
            .and_then(|mut d| d.status(TIMEOUT))
            .is_ok_and(|now| now.generation != generation);
        forged || recovered
    };
    while !took_effect() {
        assert!(
            Instant::now() < deadline,
            "the attack did nothing to a cluster without a key: it has gone stale"
        );
        std::thread::sleep(Duration::from_millis(20)); // polling the daemons
    }
}

#[test]
fn only_nodes_with_the_same_key_form_a_cluster() {
    let dir = scratch("keys");
    let _ = cluster::down(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let first = Ipv4Addr::new(127, 0, 88, 11);
    let mut spec = ClusterSpec::new(NODES, &dir);
    spec.first_address = first;
    let nodes: String = (0..NODES).map(|k| format!("{}\n", spec.address(k))).collect();
    std::fs::write(dir.join("nodes"), nodes).expect("nodes file");
    let other = dir.join("other.key");
    auth::generate_key_file(&spec.cluster_key.clone().expect("a key by default")).expect("keygen");
    auth::generate_key_file(&other).expect("keygen");
    let _stop_nodes_at_the_end = ClusterDown(&dir);

    let started = Instant::now();
    for node in [0, 1] {
        cluster::start_node(&spec, node).expect("start node");
    }
    cluster::wait_until_serving(&spec, &[0, 1]).expect("nodes 0 and 1 form a cluster");
    println!("two nodes with the same key serving after {:?}", started.elapsed());
    // Started once the others lead, so that it cannot take the cluster lock first.
    cluster::start_node(&ClusterSpec { cluster_key: Some(other), ..spec.clone() }, 2).expect("start node 2");

    let deadline = Instant::now() + TIMEOUT;
    let refused = |node: usize, peer: usize| {
        let status = status(&socket_path(&dir, node));
        let why = status.peer(peer as Pnn).and_then(|p| p.refused.clone()).unwrap_or_default();
        why.contains("different cluster key")
    };
    while !(refused(0, 2) && refused(1, 2) && refused(2, 0) && refused(2, 1)) {
        assert!(
            Instant::now() < deadline,
            "status does not show node 2 refused:\n{}",
            status(&socket_path(&dir, 0))
        );
        std::thread::sleep(Duration::from_millis(20)); // polling the daemons' status
    }
    let status0 = status(&socket_path(&dir, 0));
    assert!(status0.sees_up(1), "{status0}");
    for node in 0..NODES {
        let log = std::fs::read_to_string(dir.join(format!("node{node}.log"))).expect("log");
        assert!(log.contains("holds a different cluster key"), "node {node}'s log does not say why");
    }
}

/// Stops the cluster in its directory when dropped, however the test ends.
struct ClusterDown<'a>(&'a Path);

impl Drop for ClusterDown<'_> {
    fn drop(&mut self) {
        let _ = cluster::down(self.0);
    }
}

/// `rctdb keygen` makes a private key and never overwrites one; rctdbd refuses to start on
/// a key others can read, a short key or a missing one, and says why.
#[test]
fn keys_are_made_private_and_checked_before_the_daemon_starts() {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    let dir = scratch("keyfiles");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let key = dir.join("cluster.key");
    let keygen =
        || Command::new(env!("CARGO_BIN_EXE_rctdb")).arg("keygen").arg(&key).output().expect("rctdb keygen");
    let made = keygen();
    assert!(made.status.success(), "{made:?}");
    let meta = std::fs::metadata(&key).expect("key file");
    assert_eq!((meta.permissions().mode() & 0o777, meta.len()), (0o600, auth::MIN_KEY_LEN as u64));
    let again = keygen();
    assert!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );

    std::fs::write(dir.join("nodes"), "127.0.88.40\n").expect("nodes file");
    let short = dir.join("short.key");
    std::fs::write(&short, [1u8; 16]).expect("short key");
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    for (file, why) in [(&key, "mode 0640"), (&short, "holds 16 bytes"), (&dir.join("none.key"), "none.key")]
    {
        let out = Command::new(env!("CARGO_BIN_EXE_rctdbd"))
            .args(["--address", "127.0.88.40", "--port", "4379"])
            .arg("--nodes")
            .arg(dir.join("nodes"))
            .arg("--socket")
            .arg(dir.join("node.sock"))
            .arg("--dbdir")
            .arg(dir.join("db"))
            .arg("--cluster-key")
            .arg(file)
            .output()
            .expect("rctdbd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(why), "{why}: {out:?}");
    }
}
