//! The cluster key and the handshake that opens every node link.
//!
//! CTDB trusts its private network; rctdb does not. Every node of a cluster holds the same
//! secret key, and a connection carries packets only after both ends proved they hold it:
//!
//! ```text
//!   connector (A)                                  acceptor (B)
//!   HELLO     nonce_a                      ->
//!                                          <-      CHALLENGE nonce_b, mac(acceptor)
//!   PROOF     mac(connector)               ->
//!                                          <-      WELCOME
//!   mac(role) = HMAC-SHA256(key, label(role) | pnn A | pnn B | nonce_a | nonce_b)
//! ```
//!
//! Both nonces make every MAC fresh (no replay); the role label keeps one side's MAC from
//! being reflected as the other's; both node numbers keep a key holder's answer for one
//! link from serving another. The acceptor also checks that the claimed node uses the
//! connection's source address. Each message is framed like a CTDB packet with an operation
//! of its own, so a capture tool stays in step and a node without a key refuses it with a
//! clear reason.
//!
//! Packets after the handshake are not MACed: the threat is a process that can open
//! connections on the cluster network, and it cannot inject into an established TCP stream
//! without being on its path (which would let it read every record anyway; confidentiality
//! and on-path attackers need TLS or IPsec on the link, as for CTDB). A MAC per packet
//! would cost 0.2-0.5 µs for a typical packet (`transport::tests::handshake_cost`), but
//! without a per-direction sequence number it would not stop replays either.

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::Instant;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::wire::{Pnn, CTDB_MAGIC, PACKET_HEADER_LEN, PROTOCOL_VERSION};

/// The fewest bytes a key file may hold (256 bits).
pub const MIN_KEY_LEN: usize = 32;
/// A key file larger than this is surely the wrong file.
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;
/// Operation number of handshake frames; no CTDB operation uses it.
pub(super) const HANDSHAKE_OPERATION: u32 = 0x0000_0200;
const NONCE_LEN: usize = 32;
const MAC_LEN: usize = 32;
const MESSAGE_LEN: usize = PACKET_HEADER_LEN + NONCE_LEN + MAC_LEN;

type HmacSha256 = Hmac<Sha256>;

/// The secret every node of a cluster holds, ready to key HMACs.
#[derive(Clone)]
pub struct ClusterKey {
    mac: HmacSha256,
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<ClusterKey, String> {
        if bytes.len() < MIN_KEY_LEN {
            return Err(format!(
                "holds {} bytes; a cluster key needs at least {MIN_KEY_LEN} random bytes (make one with `rctdb keygen FILE`)",
                bytes.len()
            ));
        }
        let mac = HmacSha256::new_from_slice(bytes).map_err(|e| format!("unusable key: {e}"))?;
        Ok(ClusterKey { mac })
    }

    /// Reads a key file, refusing one that group or others may read or write: a key others
    /// can read lets them in.
    pub fn load(path: &Path) -> Result<ClusterKey, String> {
        let fail = |why: String| format!("cluster key {}: {why}", path.display());
        let mut file = std::fs::File::open(path).map_err(|e| fail(e.to_string()))?;
        let meta = file.metadata().map_err(|e| fail(e.to_string()))?;
        if !meta.is_file() {
            return Err(fail("not a regular file".into()));
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(fail(format!(
                "mode {mode:04o} lets group or others at it; it must be 0600 or stricter (chmod 600 {})",
                path.display()
            )));
        }
        if meta.len() > MAX_KEY_FILE_LEN {
            return Err(fail(format!("{} bytes is far too large for a key file", meta.len())));
        }
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(|e| fail(e.to_string()))?;
        ClusterKey::from_bytes(&bytes).map_err(fail)
    }

    fn proof(&self, role: Role, connector: Pnn, acceptor: Pnn, nonces: &Nonces) -> HmacSha256 {
        let mut mac = self.mac.clone();
        mac.update(role.label());
        mac.update(&connector.to_le_bytes());
        mac.update(&acceptor.to_le_bytes());
        mac.update(&nonces.connector);
        mac.update(&nonces.acceptor);
        mac
    }

    fn tag(&self, role: Role, connector: Pnn, acceptor: Pnn, nonces: &Nonces) -> [u8; MAC_LEN] {
        self.proof(role, connector, acceptor, nonces).finalize().into_bytes().into()
    }

    /// Constant-time comparison (hmac's `verify_slice`).
    fn verify(&self, role: Role, connector: Pnn, acceptor: Pnn, nonces: &Nonces, tag: &[u8]) -> bool {
        self.proof(role, connector, acceptor, nonces).verify_slice(tag).is_ok()
    }
}

/// Writes a new key of [`MIN_KEY_LEN`] bytes from the OS's random source into a file that
/// must not exist yet, created with mode 0600 in the same step (O_CREAT|O_EXCL), so it is
/// never readable by others, not even for a moment.
pub fn generate_key_file(path: &Path) -> Result<(), String> {
    let fail = |why: String| format!("cluster key {}: {why}", path.display());
    let mut key = [0u8; MIN_KEY_LEN];
    getrandom::fill(&mut key).map_err(|e| fail(format!("no random bytes from the OS: {e}")))?;
    let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            fail("already exists; refusing to overwrite a key (remove it first to replace it)".into())
        } else {
            fail(e.to_string())
        }
    })?;
    if let Err(e) = file.write_all(&key).and_then(|()| file.sync_all()) {
        let _ = std::fs::remove_file(path);
        return Err(fail(e.to_string()));
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Role {
    Connector,
    Acceptor,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Connector => b"rctdb link v1: connector proves",
            Role::Acceptor => b"rctdb link v1: acceptor proves",
        }
    }
}

struct Nonces {
    connector: [u8; NONCE_LEN],
    acceptor: [u8; NONCE_LEN],
}

fn fresh_nonce() -> Result<[u8; NONCE_LEN], HandshakeError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| HandshakeError::Io(io::Error::other(e.to_string())))?;
    Ok(nonce)
}

/// The handshake's steps, carried in the header's reqid field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Step {
    Hello = 1,
    Challenge = 2,
    Proof = 3,
    Welcome = 4,
}

/// One handshake frame: a CTDB header (operation [`HANDSHAKE_OPERATION`]) and a fixed body.
struct Message {
    step: Step,
    srcnode: Pnn,
    destnode: Pnn,
    nonce: [u8; NONCE_LEN],
    mac: [u8; MAC_LEN],
}

impl Message {
    fn new(step: Step, srcnode: Pnn, destnode: Pnn) -> Message {
        Message { step, srcnode, destnode, nonce: [0; NONCE_LEN], mac: [0; MAC_LEN] }
    }

    fn encode(&self) -> [u8; MESSAGE_LEN] {
        let mut out = [0u8; MESSAGE_LEN];
        let header = [
            MESSAGE_LEN as u32,
            CTDB_MAGIC,
            PROTOCOL_VERSION,
            0,
            HANDSHAKE_OPERATION,
            self.destnode,
            self.srcnode,
        ];
        for (i, word) in header.iter().chain([self.step as u32].iter()).enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
        }
        out[PACKET_HEADER_LEN..PACKET_HEADER_LEN + NONCE_LEN].copy_from_slice(&self.nonce);
        out[PACKET_HEADER_LEN + NONCE_LEN..].copy_from_slice(&self.mac);
        out
    }

    /// Anything but the expected step of a well-formed handshake frame is `NotHandshake`:
    /// most likely a node without a key that sent a packet, or a stranger's bytes.
    fn decode(buf: &[u8; MESSAGE_LEN], expected: Step) -> Result<Message, HandshakeError> {
        let word =
            |i: usize| u32::from_le_bytes([buf[i * 4], buf[i * 4 + 1], buf[i * 4 + 2], buf[i * 4 + 3]]);
        let framed = word(0) as usize == MESSAGE_LEN
            && word(1) == CTDB_MAGIC
            && word(2) == PROTOCOL_VERSION
            && word(4) == HANDSHAKE_OPERATION;
        if !framed {
            return Err(HandshakeError::NotHandshake);
        }
        if word(7) != expected as u32 {
            return Err(HandshakeError::Protocol(format!(
                "step {} where step {} belongs",
                word(7),
                expected as u32
            )));
        }
        let mut message = Message::new(expected, word(6), word(5));
        message.nonce.copy_from_slice(&buf[PACKET_HEADER_LEN..PACKET_HEADER_LEN + NONCE_LEN]);
        message.mac.copy_from_slice(&buf[PACKET_HEADER_LEN + NONCE_LEN..]);
        Ok(message)
    }
}

/// Why a handshake failed.
#[derive(Debug)]
pub enum HandshakeError {
    /// Timed out, closed or broke: a silent peer, or one that refused us.
    Io(io::Error),
    /// The peer's first bytes are no handshake frame.
    NotHandshake,
    /// Out of step or naming the wrong nodes.
    Protocol(String),
    /// Its MAC does not verify: it holds another key (or none).
    WrongKey,
    /// It claims a node number that is not the one on its address.
    WrongNode { claimed: Pnn },
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeError::Io(e)
                if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) =>
            {
                write!(f, "no handshake in time")
            }
            HandshakeError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                write!(f, "closed during the handshake (it refused us, or has no --cluster-key)")
            }
            HandshakeError::Io(e) => write!(f, "handshake failed: {e}"),
            HandshakeError::NotHandshake => {
                write!(f, "sent no authentication handshake (a node without --cluster-key, or not rctdbd)")
            }
            HandshakeError::Protocol(why) => write!(f, "broke the handshake: {why}"),
            HandshakeError::WrongKey => write!(f, "failed authentication: it holds a different cluster key"),
            HandshakeError::WrongNode { claimed } => {
                write!(f, "claims to be node {claimed}, which does not use its address")
            }
        }
    }
}

/// Reads and writes with one deadline for the whole handshake, so a peer that trickles
/// bytes cannot stretch it.
struct Exchange<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Exchange<'_> {
    fn remaining(&self) -> io::Result<std::time::Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "handshake deadline passed"));
        }
        Ok(left)
    }

    fn send(&self, message: &Message) -> Result<(), HandshakeError> {
        let io = || -> io::Result<()> {
            self.stream.set_write_timeout(Some(self.remaining()?))?;
            let mut stream = self.stream;
            stream.write_all(&message.encode())
        };
        io().map_err(HandshakeError::Io)
    }

    fn receive(&self, expected: Step) -> Result<Message, HandshakeError> {
        let mut buf = [0u8; MESSAGE_LEN];
        let mut got = 0;
        while got < MESSAGE_LEN {
            let left = self.remaining().map_err(HandshakeError::Io)?;
            self.stream.set_read_timeout(Some(left)).map_err(HandshakeError::Io)?;
            let mut stream = self.stream;
            match stream.read(&mut buf[got..]) {
                Ok(0) => return Err(HandshakeError::Io(io::ErrorKind::UnexpectedEof.into())),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(HandshakeError::Io(e)),
            }
            // A length word that is not ours already tells: no need to wait for the rest.
            if got >= 4 && buf[..4] != (MESSAGE_LEN as u32).to_le_bytes() {
                return Err(HandshakeError::NotHandshake);
            }
        }
        Message::decode(&buf, expected)
    }

    /// Leaves the socket as the link wants it: blocking reads without a timeout (the
    /// engine's keepalives judge liveness), writes as the caller sets them.
    fn finish(self) -> Result<(), HandshakeError> {
        self.stream.set_read_timeout(None).map_err(HandshakeError::Io)?;
        self.stream.set_write_timeout(None).map_err(HandshakeError::Io)
    }
}

/// Our side of a connection we opened to node `peer`: proves we hold `key` and checks that
/// `peer` does, before `deadline`.
pub fn authenticate_outgoing(
    stream: &TcpStream,
    key: &ClusterKey,
    me: Pnn,
    peer: Pnn,
    deadline: Instant,
) -> Result<(), HandshakeError> {
    let exchange = Exchange { stream, deadline };
    let mut hello = Message::new(Step::Hello, me, peer);
    hello.nonce = fresh_nonce()?;
    exchange.send(&hello)?;
    let challenge = exchange.receive(Step::Challenge)?;
    if challenge.srcnode != peer || challenge.destnode != me {
        return Err(HandshakeError::Protocol(format!(
            "answered as node {} to node {}, expected node {peer} to node {me}",
            challenge.srcnode, challenge.destnode
        )));
    }
    let nonces = Nonces { connector: hello.nonce, acceptor: challenge.nonce };
    if !key.verify(Role::Acceptor, me, peer, &nonces, &challenge.mac) {
        return Err(HandshakeError::WrongKey);
    }
    let mut proof = Message::new(Step::Proof, me, peer);
    proof.mac = key.tag(Role::Connector, me, peer, &nonces);
    exchange.send(&proof)?;
    exchange.receive(Step::Welcome)?;
    exchange.finish()
}

/// Our side of a connection a peer opened to us: the peer must prove it holds `key` and be
/// one of `candidates` (the nodes on its source address). Returns its node number.
pub fn authenticate_incoming(
    stream: &TcpStream,
    key: &ClusterKey,
    me: Pnn,
    candidates: &[Pnn],
    deadline: Instant,
) -> Result<Pnn, HandshakeError> {
    let exchange = Exchange { stream, deadline };
    let hello = exchange.receive(Step::Hello)?;
    let peer = hello.srcnode;
    if !candidates.contains(&peer) {
        return Err(HandshakeError::WrongNode { claimed: peer });
    }
    if hello.destnode != me {
        return Err(HandshakeError::Protocol(format!(
            "addressed to node {}, this is node {me}",
            hello.destnode
        )));
    }
    let nonces = Nonces { connector: hello.nonce, acceptor: fresh_nonce()? };
    let mut challenge = Message::new(Step::Challenge, me, peer);
    challenge.nonce = nonces.acceptor;
    challenge.mac = key.tag(Role::Acceptor, peer, me, &nonces);
    exchange.send(&challenge)?;
    let proof = exchange.receive(Step::Proof)?;
    if !key.verify(Role::Connector, peer, me, &nonces, &proof.mac) {
        return Err(HandshakeError::WrongKey);
    }
    exchange.send(&Message::new(Step::Welcome, me, peer))?;
    exchange.finish()?;
    Ok(peer)
}

#[cfg(test)]
#[path = "auth_tests.rs"]
mod tests;
