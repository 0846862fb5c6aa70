//! The accepting side: refuse strangers, authenticate peers (with a cluster key) or identify
//! them by source IP (without), and run one reader thread per accepted connection that
//! decodes frames into events for the engine.
//!
//! The accept loop itself never waits on a peer: each handshake runs on the connection's own
//! thread with a deadline, and at most `max_pending_handshakes` run at once, so neither a
//! silent peer nor a flood of connections can hold up accepts, other handshakes, or use up
//! threads and descriptors. Only connections from a node's address get that far, so only
//! someone on such an address can keep the slots busy, and then only new links wait (a node
//! restarting during such a flood retries until it gets a slot). A connection becomes a
//! node's link only once authenticated, so a stranger on a node's address cannot displace
//! that node's live link.

use std::collections::HashMap;
use std::io::BufReader;
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use parking_lot::Mutex;

use nix::sys::socket::{send, MsgFlags};
use std::os::fd::AsRawFd;

use super::auth::{self, HANDSHAKE_OPERATION};
use super::session::{Frame, Kind};
use super::{connect, Shared, TransportEvent};
use crate::wire::codec::{self, ReadError, WireError};
use crate::wire::{Body, Pnn};

/// At most this many refusal lines per [`REFUSAL_LOG_INTERVAL`]; the next line logged
/// counts those left out.
const REFUSAL_LOG_BURST: u32 = 20;
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);
/// A node's address refused again for the same reason within this time is logged at debug
/// level only: a misconfigured node retries every second.
const REPEATED_REFUSAL_QUIET: Duration = Duration::from_secs(60);

/// Warnings about refused connections, a burst at most per interval: a flood must not
/// flood the log too.
#[derive(Default)]
pub(super) struct RefusalLog {
    window: Mutex<RefusalWindow>,
    /// The last refusal warned about per node address (so at most one entry per node).
    last_by_peer: Mutex<HashMap<IpAddr, (String, Instant)>>,
}

#[derive(Default)]
struct RefusalWindow {
    started: Option<Instant>,
    logged: u32,
    left_out: u64,
}

impl RefusalLog {
    /// As `warn`, for a connection from a node's address: the same `reason` from the same
    /// address is a warning once per [`REPEATED_REFUSAL_QUIET`].
    pub(super) fn warn_peer(&self, ip: IpAddr, reason: String, message: impl FnOnce() -> String) {
        let now = Instant::now();
        let repeated = {
            let mut last = self.last_by_peer.lock();
            let repeated = last.get(&ip).is_some_and(|(said, at)| {
                *said == reason && now.duration_since(*at) < REPEATED_REFUSAL_QUIET
            });
            if !repeated {
                last.insert(ip, (reason, now));
            }
            repeated
        };
        if repeated {
            debug!("{}", message());
        } else {
            self.warn(message);
        }
    }

    pub(super) fn warn(&self, message: impl FnOnce() -> String) {
        let now = Instant::now();
        let mut window = self.window.lock();
        if !window.started.is_some_and(|at| now.duration_since(at) < REFUSAL_LOG_INTERVAL) {
            window.started = Some(now);
            window.logged = 0;
        }
        if window.logged >= REFUSAL_LOG_BURST {
            window.left_out += 1;
            return;
        }
        window.logged += 1;
        let left_out = std::mem::take(&mut window.left_out);
        drop(window);
        if left_out == 0 {
            warn!("{}", message());
        } else {
            warn!("{} ({left_out} more refused since the last such message)", message());
        }
    }
}

/// Handshakes one source address may have pending: a node reconnects with one at a time.
const PENDING_PER_ADDRESS: usize = 2;

/// A handshake slot, given back when dropped.
struct PendingHandshake(Arc<Shared>, IpAddr);

impl PendingHandshake {
    fn enter(shared: &Arc<Shared>, source: IpAddr) -> Option<PendingHandshake> {
        let mut by_address = shared.pending_by_address.lock();
        let of_source = by_address.entry(source).or_default();
        let limit = shared.config.max_pending_handshakes.max(1);
        if *of_source >= PENDING_PER_ADDRESS || shared.pending_handshakes.load(Ordering::Acquire) >= limit {
            return None;
        }
        *of_source += 1;
        shared.pending_handshakes.fetch_add(1, Ordering::AcqRel);
        Some(PendingHandshake(Arc::clone(shared), source))
    }
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        let mut by_address = self.0.pending_by_address.lock();
        if let Some(count) = by_address.get_mut(&self.1) {
            *count -= 1;
            if *count == 0 {
                by_address.remove(&self.1);
            }
        }
        self.0.pending_handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}

pub(super) fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = listener.accept();
        if shared.is_shutting_down() {
            break;
        }
        match accepted {
            Ok((stream, addr)) => admit(&shared, stream, addr),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // EMFILE and friends: do not spin on them.
                warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn admit(shared: &Arc<Shared>, stream: TcpStream, addr: SocketAddr) {
    let candidates: Vec<Pnn> =
        shared.peers.iter().flatten().filter(|p| p.addr.ip() == addr.ip()).map(|p| p.pnn).collect();
    if candidates.is_empty() {
        shared.refused_unknown_peer.fetch_add(1, Ordering::Relaxed);
        shared.refusals.warn(|| {
            format!("refused connection from unknown peer {addr}: its address is not in the nodes list")
        });
        return; // dropping the stream closes it
    }
    let slot = match shared.config.cluster_key {
        Some(_) => match PendingHandshake::enter(shared, addr.ip()) {
            Some(slot) => Some(slot),
            None => {
                shared.refused_busy.fetch_add(1, Ordering::Relaxed);
                shared.refusals.warn(|| {
                    format!(
                        "refused connection from {addr}: {} handshakes are already pending ({} \
                         from one address at most)",
                        shared.config.max_pending_handshakes, PENDING_PER_ADDRESS
                    )
                });
                return;
            }
        },
        None => None,
    };
    if let Err(e) = connect::configure(&stream) {
        warn!("connection from {addr}: cannot set socket options: {e}");
        return;
    }
    let registry_handle = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            warn!("connection from {addr}: cannot duplicate socket: {e}");
            return;
        }
    };
    let conn_id = shared.next_conn_id.fetch_add(1, Ordering::Relaxed);
    shared.incoming.lock().insert(conn_id, registry_handle);
    let reader_shared = Arc::clone(shared);
    let spawned = std::thread::Builder::new()
        .name(format!("rctdb-rx-{addr}"))
        .spawn(move || serve(reader_shared, stream, addr, conn_id, candidates, slot));
    match spawned {
        Ok(handle) => {
            let mut threads = shared.reader_threads.lock();
            threads.retain(|t| !t.is_finished());
            threads.push(handle);
        }
        Err(e) => {
            warn!("connection from {addr}: cannot start reader thread: {e}");
            if let Some(s) = shared.incoming.lock().remove(&conn_id) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
    }
}

/// An accepted connection's thread: authenticate (with a key), resume the peer's session,
/// then read its packets.
fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    conn_id: u64,
    candidates: Vec<Pnn>,
    slot: Option<PendingHandshake>,
) {
    let deadline = Instant::now() + shared.config.handshake_timeout;
    let authenticated = match &shared.config.cluster_key {
        Some(key) => {
            let result =
                auth::authenticate_incoming(&stream, key, shared.config.my_pnn, &candidates, deadline);
            drop(slot);
            match result {
                Ok(pnn) => Some(vec![pnn]),
                Err(e) => {
                    if !shared.is_shutting_down() {
                        shared.refused_handshake.fetch_add(1, Ordering::Relaxed);
                        let who = match candidates.as_slice() {
                            [pnn] => format!("node {pnn}'s address {addr}"),
                            _ => addr.to_string(),
                        };
                        let reason = e.to_string();
                        shared.refusals.warn_peer(addr.ip(), e.to_string(), || {
                            format!("refused connection from {who}: it {reason}")
                        });
                    }
                    None
                }
            }
        }
        None => Some(candidates),
    };
    if let Some(pnn) = authenticated.and_then(|c| resume(&shared, &stream, addr, conn_id, &c, deadline)) {
        read_loop(&shared, &stream, addr, conn_id, pnn);
    }
    let _ = stream.shutdown(Shutdown::Both);
    shared.incoming.lock().remove(&conn_id);
}

/// The session handshake of an accepted connection: the peer names itself (one of
/// `candidates`, the nodes on its address) and its session; it learns how much of that
/// session we read. From here on this connection alone hands on the peer's frames.
fn resume(
    shared: &Shared,
    stream: &TcpStream,
    addr: SocketAddr,
    conn_id: u64,
    candidates: &[Pnn],
    deadline: Instant,
) -> Option<Pnn> {
    let me = shared.config.my_pnn;
    let request = match Frame::receive(stream, Kind::Resume, deadline) {
        Ok(frame) => frame,
        Err(e) => {
            if !shared.is_shutting_down() {
                shared.refused_handshake.fetch_add(1, Ordering::Relaxed);
                shared.refusals.warn_peer(addr.ip(), "no session resume".into(), || {
                    format!("refused connection from {addr}: no session resume ({e})")
                });
            }
            return None;
        }
    };
    let pnn = request.srcnode;
    if !candidates.contains(&pnn) || request.destnode != me {
        shared.refused_handshake.fetch_add(1, Ordering::Relaxed);
        warn!("refused connection from {addr}: it resumes as node {pnn} to node {}", request.destnode);
        return None;
    }
    let peer = shared.peer(pnn)?;
    claim(shared, pnn, conn_id, addr);
    // Waits for an older connection's reader to finish handing on its current frame.
    let received = peer.inbound.lock().resume(conn_id, request.a);
    let answer = Frame { kind: Kind::Resumed, srcnode: me, destnode: pnn, a: shared.instance, b: received };
    if let Err(e) = answer.send(stream, deadline).and_then(|()| stream.set_write_timeout(None)) {
        info!("connection from node {pnn} ({addr}) lost in its session resume: {e}");
        return None;
    }
    Some(pnn)
}

/// Makes `conn_id` the connection node `pnn` sends to us on. A peer has one outgoing
/// connection at a time, so an older one is stale (the peer restarted or reconnected
/// before we saw the old one die): close it.
fn claim(shared: &Shared, pnn: Pnn, conn_id: u64, addr: SocketAddr) {
    let Some(peer) = shared.peer(pnn) else { return };
    peer.peer_called();
    let mut current = peer.incoming_conn.lock();
    match current.replace(conn_id) {
        Some(old) => {
            info!("node {pnn} connected again from {addr}: closing its previous connection");
            if let Some(s) = shared.incoming.lock().get(&old) {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        None => info!("node {pnn} connected from {addr}"),
    }
}

/// Reads node `pnn`'s frames while this connection carries its session: each is counted,
/// checked and handed on under the session's lock, so a newer connection's resume sees a
/// final count.
fn read_loop(shared: &Shared, stream: &TcpStream, addr: SocketAddr, conn_id: u64, pnn: Pnn) {
    let Some(peer) = shared.peer(pnn) else { return };
    let max_len = shared.config.max_packet_len;
    let mut reader = BufReader::with_capacity(64 * 1024, stream);
    let mut frame = Vec::new();
    loop {
        match codec::read_frame(&mut reader, max_len, &mut frame) {
            Ok(()) => {}
            Err(ReadError::Eof) => {
                debug!("connection from {addr} closed");
                break;
            }
            Err(e) => {
                if !shared.is_shutting_down() {
                    note_read_error(shared, pnn, addr, &e);
                }
                break;
            }
        }
        let mut inbound = peer.inbound.lock();
        if !inbound.is_current(conn_id) {
            break; // a newer connection resumed the session: it gets this frame again
        }
        // Counted even if it does not decode: sent again, it would break every connection.
        if let Some(received) = inbound.count_frame() {
            acknowledge(stream, shared.config.my_pnn, pnn, inbound.session(), received);
        }
        let packet = match codec::decode(&frame) {
            Ok(packet) => packet,
            Err(e) => {
                note_read_error(shared, pnn, addr, &ReadError::Wire(e));
                break;
            }
        };
        // A forwarded REQ_CALL keeps its requester as srcnode (CTDB's redirect): that is the
        // node the record must go to, so it only has to name a node we know. Every other
        // packet speaks for its sender.
        let genuine = if matches!(packet.body, Body::ReqCall(_)) {
            (packet.srcnode as usize) < shared.config.nodes.len()
        } else {
            packet.srcnode == pnn
        };
        if !genuine {
            peer.forged.fetch_add(1, Ordering::Relaxed);
            warn!(
                "dropping {} from {addr} that claims to come from node {}",
                operation_name(&packet),
                packet.srcnode
            );
            continue;
        }
        peer.received.fetch_add(1, Ordering::Relaxed);
        if !shared.deliver(TransportEvent::Packet { from: pnn, packet }) {
            break;
        }
        drop(inbound);
    }
    peer.inbound.lock().closed(conn_id);
    let mut current = peer.incoming_conn.lock();
    if *current == Some(conn_id) {
        *current = None;
    }
}

/// Tells the sender how many frames of its session we read, so it can forget them. Never
/// blocks: the next acknowledgement says the same and more.
fn acknowledge(stream: &TcpStream, me: Pnn, peer: Pnn, session: u64, received: u64) {
    let ack = Frame { kind: Kind::Ack, srcnode: me, destnode: peer, a: session, b: received };
    let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
    if let Err(e) = send(stream.as_raw_fd(), &ack.encode(), flags) {
        debug!("acknowledging node {peer}'s frames: {e}");
    }
}

fn operation_name(packet: &crate::wire::Packet) -> &'static str {
    codec::operation_name(packet.body.operation())
}

/// A corrupt or oversized frame is the peer's fault and worth a warning and a count; it
/// costs that peer its link, never the node. A connection that just ends mid-frame or fails
/// is a peer going away.
fn note_read_error(shared: &Shared, pnn: Pnn, addr: SocketAddr, e: &ReadError) {
    let who = format!("node {pnn} ({addr})");
    match e {
        ReadError::Wire(WireError::UnknownOperation(HANDSHAKE_OPERATION)) => shared.refusals.warn_peer(addr.ip(), "handshake without a key".into(), || {
            format!("refused connection from {who}: it authenticates with a cluster key and this node has none (--cluster-key)")
        }),
        ReadError::Wire(_) | ReadError::FrameTooShort { .. } | ReadError::FrameTooLong { .. } => {
            if let Some(peer) = shared.peer(pnn) {
                peer.bad_frames.fetch_add(1, Ordering::Relaxed);
            }
            warn!("dropping the link from {who}: {e}");
        }
        _ => info!("connection from {who} lost: {e}"),
    }
}
