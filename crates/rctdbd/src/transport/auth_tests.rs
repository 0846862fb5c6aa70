use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use super::*;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rctdb-auth-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn key(byte: u8) -> ClusterKey {
    ClusterKey::from_bytes(&[byte; MIN_KEY_LEN]).expect("key")
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(5)
}

/// A connected pair of sockets on loopback.
fn pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    (client, server)
}

/// Runs the acceptor's side on a thread; returns both outcomes.
fn handshake(
    connector_key: ClusterKey,
    acceptor_key: ClusterKey,
    claimed: Pnn,
    candidates: Vec<Pnn>,
) -> (Result<(), HandshakeError>, Result<Pnn, HandshakeError>) {
    let (client, server) = pair();
    let acceptor = thread::spawn(move || {
        let result = authenticate_incoming(&server, &acceptor_key, 0, &candidates, soon());
        drop(server); // a refused peer sees the connection close
        result
    });
    let outgoing = authenticate_outgoing(&client, &connector_key, claimed, 0, soon());
    drop(client);
    (outgoing, acceptor.join().expect("acceptor thread"))
}

#[test]
fn keygen_makes_a_private_key_that_loads_and_is_never_overwritten() {
    let dir = scratch("keygen");
    let path = dir.join("cluster.key");
    generate_key_file(&path).expect("keygen");
    let meta = std::fs::metadata(&path).expect("stat");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), MIN_KEY_LEN as u64);
    let first = std::fs::read(&path).expect("read");
    ClusterKey::load(&path).expect("a fresh key loads");
    let err = generate_key_file(&path).expect_err("overwrite");
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&path).expect("read"), first, "the key is unchanged");

    let other = dir.join("other.key");
    generate_key_file(&other).expect("keygen");
    assert_ne!(std::fs::read(&other).expect("read"), first, "keys are random");
}

#[test]
fn key_files_others_can_read_short_or_missing_are_refused() {
    let dir = scratch("load");
    let path = dir.join("cluster.key");
    std::fs::write(&path, [7u8; 40]).expect("write");
    for mode in [0o644, 0o640, 0o604, 0o620] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        let err = ClusterKey::load(&path).expect_err("a key others can reach");
        assert!(err.contains(&format!("mode {mode:04o}")) && err.contains("0600"), "{err}");
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).expect("chmod");
    ClusterKey::load(&path).expect("0400 is stricter than 0600");

    let short = dir.join("short.key");
    std::fs::write(&short, [7u8; 31]).expect("write");
    std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = ClusterKey::load(&short).expect_err("short key");
    assert!(err.contains("holds 31 bytes") && err.contains("at least 32"), "{err}");

    let err = ClusterKey::load(&dir.join("missing.key")).expect_err("missing key");
    assert!(err.contains("missing.key"), "{err}");
    let err = ClusterKey::load(&dir).expect_err("a directory");
    assert!(err.contains("not a regular file"), "{err}");
}

#[test]
fn nodes_with_the_same_key_authenticate_each_other() {
    let (outgoing, incoming) = handshake(key(1), key(1), 2, vec![2]);
    outgoing.expect("the connector accepts the acceptor");
    assert_eq!(incoming.expect("the acceptor accepts the connector"), 2);
}

#[test]
fn a_different_key_is_refused_by_both_sides() {
    let (outgoing, incoming) = handshake(key(1), key(2), 2, vec![2]);
    assert!(matches!(outgoing, Err(HandshakeError::WrongKey)), "{outgoing:?}");
    assert!(incoming.is_err(), "the acceptor must not take it: {incoming:?}");
}

#[test]
fn a_key_holder_cannot_claim_another_nodes_number() {
    let (_, incoming) = handshake(key(1), key(1), 3, vec![2]);
    assert!(matches!(incoming, Err(HandshakeError::WrongNode { claimed: 3 })), "{incoming:?}");
}

#[test]
fn a_silent_peer_times_out_at_the_deadline() {
    let (_client, server) = pair();
    let start = Instant::now();
    let result = authenticate_incoming(&server, &key(1), 0, &[1], start + Duration::from_millis(200));
    assert!(matches!(&result, Err(HandshakeError::Io(_))), "{result:?}");
    let took = start.elapsed();
    assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn a_packet_instead_of_a_handshake_is_refused_at_once() {
    let (mut client, server) = pair();
    let packet = crate::wire::Packet {
        generation: 1,
        destnode: 0,
        srcnode: 1,
        reqid: 1,
        body: crate::wire::Body::Keepalive(crate::wire::Keepalive { version: 1, uptime: 1 }),
    };
    client.write_all(&crate::wire::codec::encode(&packet)).expect("write");
    let result = authenticate_incoming(&server, &key(1), 0, &[1], soon());
    assert!(matches!(result, Err(HandshakeError::NotHandshake)), "{result:?}");
}

/// A proof recorded from an earlier handshake does not open a new one: the acceptor's
/// nonce is fresh. Nor does the acceptor's own MAC sent back (reflection): the role label
/// differs.
#[test]
fn replayed_or_reflected_proofs_are_refused() {
    let genuine = key(1);
    let old = Nonces { connector: [1; NONCE_LEN], acceptor: [2; NONCE_LEN] };
    let recorded_proof = genuine.tag(Role::Connector, 1, 0, &old);
    for reflect in [false, true] {
        let (client, server) = pair();
        let acceptor_key = genuine.clone();
        let acceptor = thread::spawn(move || authenticate_incoming(&server, &acceptor_key, 0, &[1], soon()));
        let exchange = Exchange { stream: &client, deadline: soon() };
        let mut hello = Message::new(Step::Hello, 1, 0);
        hello.nonce = old.connector;
        exchange.send(&hello).expect("hello");
        let challenge = exchange.receive(Step::Challenge).expect("challenge");
        assert_ne!(challenge.nonce, old.acceptor, "the acceptor's nonce is fresh");
        let mut proof = Message::new(Step::Proof, 1, 0);
        proof.mac = if reflect { challenge.mac } else { recorded_proof };
        exchange.send(&proof).expect("proof");
        let result = acceptor.join().expect("acceptor thread");
        assert!(matches!(result, Err(HandshakeError::WrongKey)), "reflect={reflect}: {result:?}");
    }
}
