//! One peer's link: its counters, its send queue, and the writer thread that owns the
//! outgoing connection (connect with backoff, batch and write, notice breakage, reconnect).
//!
//! Sending has two paths, as in CTDB's `ctdb_queue_send`: when nothing is queued for the
//! peer, the caller writes the packet itself with a non-blocking `send` (one syscall, no
//! thread hand-off: that hand-off costs more than the write on a loaded 2-core machine);
//! otherwise, or when the socket buffer is full, the packet goes to the writer thread,
//! which batches and blocks for it. A counter of packets queued but not yet written keeps
//! the two paths in order: the caller only writes directly when it is zero.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, info, warn};
use nix::errno::Errno;
use nix::sys::socket::{send, MsgFlags};
use parking_lot::Mutex;

use super::auth::{self, HandshakeError};
use super::{connect, LinkState, Shared, TransportConfig, TransportEvent};
use crate::wire::{codec, Packet, Pnn};

/// Stop adding queued packets to a batch once it is this large.
const BATCH_BYTES: usize = 64 * 1024;

/// Everything the writer thread is told, on one channel: waiting on one channel is much
/// cheaper than `select!` over two (measured: ~15 µs vs 20-50 µs per round trip).
pub(super) enum WriterMsg {
    Packet(Packet),
    /// A direct send left part of a packet in `Conn::pending`: write it.
    Flush,
    /// The watcher saw the outgoing connection with this id close.
    ConnectionLost(u64),
    /// The peer just connected to us, so it is up: stop waiting out a reconnect backoff.
    PeerCalled,
    Shutdown,
    /// Tests: write these bytes as they are on the live connection (garbage, forgeries).
    #[cfg(test)]
    Raw(Vec<u8>),
}

/// The live outgoing connection, shared by the writer thread and direct senders.
#[derive(Default)]
struct Conn {
    stream: Option<TcpStream>,
    /// Encoding buffer of the direct path.
    scratch: Vec<u8>,
    /// The unsent tail of a packet a direct send could only partly write; goes out first.
    pending: Vec<u8>,
}

pub(super) struct Peer {
    pub(super) pnn: Pnn,
    pub(super) addr: SocketAddr,
    direct_write: bool,
    queue_limit: usize,
    up: AtomicBool,
    tx: Sender<WriterMsg>,
    /// Packets handed to the writer and not yet written or dropped.
    queued: AtomicUsize,
    conn: Mutex<Conn>,
    /// Another handle on the live connection, so shutdown can break a write that holds `conn`.
    kill: Mutex<Option<TcpStream>>,
    /// The id of the accepted connection this peer currently sends to us on.
    pub(super) incoming_conn: Mutex<Option<u64>>,
    sent: AtomicU64,
    pub(super) received: AtomicU64,
    dropped: AtomicU64,
    connects: AtomicU64,
    pub(super) bad_frames: AtomicU64,
    pub(super) forged: AtomicU64,
    /// Why the last handshake on our connection to it failed, until one succeeds.
    auth_error: Mutex<Option<String>>,
}

impl Peer {
    pub(super) fn new(
        pnn: Pnn,
        addr: SocketAddr,
        queue_limit: usize,
        direct_write: bool,
    ) -> (Arc<Peer>, Receiver<WriterMsg>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let peer = Arc::new(Peer {
            pnn,
            addr,
            direct_write,
            queue_limit: queue_limit.max(1),
            up: AtomicBool::new(false),
            tx,
            queued: AtomicUsize::new(0),
            conn: Mutex::new(Conn::default()),
            kill: Mutex::new(None),
            incoming_conn: Mutex::new(None),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            forged: AtomicU64::new(0),
            auth_error: Mutex::new(None),
        });
        (peer, rx)
    }

    /// The caller's side of `send`: never blocks.
    pub(super) fn queue(&self, packet: Packet) {
        if !self.up.load(Ordering::Acquire) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let packet = if self.direct_write {
            match self.try_send_direct(packet) {
                Some(p) => p,
                None => return,
            }
        } else {
            packet
        };
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.queue_limit {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            let n = self.dropped.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                warn!("send queue to node {} is full: dropped {} packets so far", self.pnn, n + 1);
            }
            return;
        }
        if self.tx.send(WriterMsg::Packet(packet)).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Writes `packet` from the caller's thread if that keeps the order and cannot block.
    /// Gives the packet back when it must be queued instead.
    fn try_send_direct(&self, packet: Packet) -> Option<Packet> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return Some(packet);
        }
        // The writer holds `conn` while it writes: then queue rather than wait.
        let Some(mut guard) = self.conn.try_lock() else { return Some(packet) };
        let conn = &mut *guard;
        // Checked again under the lock: the writer decrements only after writing.
        if self.queued.load(Ordering::Acquire) != 0 || !conn.pending.is_empty() {
            return Some(packet);
        }
        let Some(stream) = conn.stream.as_ref() else { return Some(packet) };
        conn.scratch.clear();
        if let Err(e) = codec::encode_into(&packet, &mut conn.scratch) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            warn!("dropping packet for node {}: {e}", self.pnn);
            return None;
        }
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        match send(stream.as_raw_fd(), &conn.scratch, flags) {
            Ok(n) if n == conn.scratch.len() => {}
            Ok(n) => {
                conn.pending.extend_from_slice(&conn.scratch[n..]);
                let _ = self.tx.send(WriterMsg::Flush);
            }
            Err(Errno::EAGAIN | Errno::EINTR) => return Some(packet),
            Err(e) => {
                // The watcher sees the shutdown and the writer reports the link down.
                debug!("direct send to node {} failed: {e}", self.pnn);
                let _ = stream.shutdown(Shutdown::Both);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        if conn.scratch.capacity() > 4 * BATCH_BYTES {
            conn.scratch = Vec::new();
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        None
    }

    pub(super) fn state(&self) -> LinkState {
        LinkState {
            pnn: self.pnn,
            addr: self.addr,
            up: self.up.load(Ordering::Acquire),
            incoming: self.incoming_conn.lock().is_some(),
            packets_sent: self.sent.load(Ordering::Relaxed),
            packets_received: self.received.load(Ordering::Relaxed),
            packets_dropped: self.dropped.load(Ordering::Relaxed),
            connects: self.connects.load(Ordering::Relaxed),
            bad_frames: self.bad_frames.load(Ordering::Relaxed),
            forged_packets: self.forged.load(Ordering::Relaxed),
            auth_error: self.auth_error.lock().clone(),
        }
    }

    #[cfg(test)]
    pub(super) fn inject_raw(&self, bytes: Vec<u8>) {
        let _ = self.tx.send(WriterMsg::Raw(bytes));
    }

    /// Tells the writer to stop and breaks a write it may be blocked in.
    pub(super) fn stop(&self) {
        let _ = self.tx.send(WriterMsg::Shutdown);
        if let Some(s) = self.kill.lock().as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    /// The peer connected to us: if our connection to it waits out a backoff, try now
    /// (a restarted node is heard before we could reach it otherwise).
    pub(super) fn peer_called(&self) {
        let _ = self.tx.send(WriterMsg::PeerCalled);
    }

    /// A packet the writer took off the channel will not be written.
    fn drop_queued(&self, count: u64) {
        self.queued.fetch_sub(count as usize, Ordering::AcqRel);
        self.dropped.fetch_add(count, Ordering::Relaxed);
    }
}

enum LinkEnd {
    Shutdown,
    Broken(String),
}

/// Why an outgoing connection did not become a link.
enum OpenError {
    Connect(std::io::Error),
    Handshake(HandshakeError),
}

/// Connects to the peer from our own address and, with a cluster key, authenticates it.
fn open_link(config: &TransportConfig, peer: &Peer) -> Result<TcpStream, OpenError> {
    let my_ip = config.nodes[config.my_pnn as usize].ip();
    let stream = connect::connect_from(my_ip, peer.addr, config.connect_timeout)
        .and_then(|s| connect::configure(&s).map(|()| s))
        .map_err(OpenError::Connect)?;
    if let Some(key) = &config.cluster_key {
        let deadline = Instant::now() + config.handshake_timeout;
        auth::authenticate_outgoing(&stream, key, config.my_pnn, peer.pnn, deadline)
            .map_err(OpenError::Handshake)?;
    }
    stream.set_write_timeout(config.write_timeout).map_err(OpenError::Connect)?;
    Ok(stream)
}

/// The writer thread: connect, pump packets until the connection breaks, repeat.
pub(super) fn writer_loop(shared: Arc<Shared>, peer: Arc<Peer>, rx: Receiver<WriterMsg>) {
    let config = &shared.config;
    let mut backoff = config.connect_backoff_min;
    let mut failures: u64 = 0;
    let mut conn_id: u64 = 0;
    while !shared.is_shutting_down() {
        let stream = match open_link(config, &peer) {
            Ok(stream) => stream,
            Err(e) => {
                failures += 1;
                note_open_error(&shared, &peer, &e, failures);
                if !wait_dropping(&peer, &rx, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(config.connect_backoff_max);
                continue;
            }
        };
        failures = 0;
        backoff = config.connect_backoff_min;
        *peer.auth_error.lock() = None;
        conn_id += 1;
        let end = run_connection(&shared, &peer, &rx, stream, conn_id);
        if let LinkEnd::Broken(reason) = end {
            warn!("link to node {} ({}) down: {reason}", peer.pnn, peer.addr);
            shared.deliver(TransportEvent::LinkDown(peer.pnn));
        }
    }
}

/// Logs a failed attempt once per change of reason (the writer retries every second or so)
/// and keeps a handshake refusal for `rctdb status`.
fn note_open_error(shared: &Shared, peer: &Peer, e: &OpenError, failures: u64) {
    match e {
        OpenError::Connect(e) => {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                shared.deliver(TransportEvent::Refused(peer.pnn));
            }
            if failures == 1 {
                info!("cannot connect to node {} at {}: {e}; retrying", peer.pnn, peer.addr);
            } else {
                debug!("connect to node {} failed ({failures} times): {e}", peer.pnn);
            }
        }
        OpenError::Handshake(e) => {
            let reason = e.to_string();
            let mut last = peer.auth_error.lock();
            if last.as_deref() != Some(reason.as_str()) {
                warn!("link to node {} ({}) refused: it {reason}; retrying", peer.pnn, peer.addr);
            } else {
                debug!("handshake with node {} failed ({failures} times): {reason}", peer.pnn);
            }
            *last = Some(reason);
        }
    }
}

/// One established outgoing connection, from LinkUp to its end.
fn run_connection(
    shared: &Shared,
    peer: &Peer,
    rx: &Receiver<WriterMsg>,
    stream: TcpStream,
    conn_id: u64,
) -> LinkEnd {
    let (watch_stream, kill_handle) = match (stream.try_clone(), stream.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return LinkEnd::Broken(format!("cannot duplicate socket: {e}")),
    };
    let tx = peer.tx.clone();
    let watcher = match std::thread::Builder::new()
        .name(format!("rctdb-watch-{}", peer.pnn))
        .spawn(move || watch(watch_stream, tx, conn_id))
    {
        Ok(t) => t,
        Err(e) => return LinkEnd::Broken(format!("cannot start watcher thread: {e}")),
    };
    *peer.kill.lock() = Some(kill_handle);
    // A stop() that ran before the kill handle was stored could not break this
    // connection; it left a Shutdown message that `pump` will see first.
    {
        let mut conn = peer.conn.lock();
        conn.stream = Some(stream);
        conn.pending.clear();
    }
    peer.connects.fetch_add(1, Ordering::Relaxed);
    peer.up.store(true, Ordering::Release);
    info!("link to node {} ({}) up", peer.pnn, peer.addr);
    let end = if shared.deliver(TransportEvent::LinkUp(peer.pnn)) {
        pump(peer, rx, conn_id)
    } else {
        LinkEnd::Shutdown
    };
    peer.up.store(false, Ordering::Release);
    peer.conn.lock().stream = None;
    if let Some(s) = peer.kill.lock().take() {
        // Wakes the watcher; the peer's reader sees EOF.
        let _ = s.shutdown(Shutdown::Both);
    }
    if watcher.join().is_err() {
        warn!("watcher thread for node {} panicked", peer.pnn);
    }
    end
}

/// Writes queued packets, batching whatever has piled up, until the connection breaks or
/// the transport stops.
fn pump(peer: &Peer, rx: &Receiver<WriterMsg>, conn_id: u64) -> LinkEnd {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    loop {
        let Ok(first) = rx.recv() else { return LinkEnd::Shutdown };
        batch.clear();
        let mut count: u64 = 0;
        let mut end = None;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            match msg {
                WriterMsg::Packet(p) => match codec::encode_into(&p, &mut batch) {
                    Ok(()) => count += 1,
                    Err(e) => {
                        peer.drop_queued(1);
                        warn!("dropping packet for node {}: {e}", peer.pnn);
                    }
                },
                WriterMsg::Flush | WriterMsg::PeerCalled => {}
                WriterMsg::ConnectionLost(id) if id == conn_id => {
                    end = Some(LinkEnd::Broken("the peer closed the connection".into()));
                }
                WriterMsg::ConnectionLost(_) => {}
                WriterMsg::Shutdown => end = Some(LinkEnd::Shutdown),
                #[cfg(test)]
                WriterMsg::Raw(bytes) => batch.extend_from_slice(&bytes),
            }
            if end.is_none() && batch.len() < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if let Some(end) = end {
            peer.drop_queued(count);
            return end;
        }
        if let Err(e) = write_batch(peer, &batch) {
            peer.drop_queued(count);
            return LinkEnd::Broken(format!("write failed: {e}"));
        }
        peer.queued.fetch_sub(count as usize, Ordering::AcqRel);
        peer.sent.fetch_add(count, Ordering::Relaxed);
        if batch.capacity() > 16 * BATCH_BYTES {
            batch = Vec::with_capacity(BATCH_BYTES); // one huge packet: give the memory back
        }
    }
}

/// Writes a direct send's leftover, then the batch, holding `conn` so no direct send can
/// slip in between. The queued counter is still non-zero here, so none will try.
fn write_batch(peer: &Peer, batch: &[u8]) -> std::io::Result<()> {
    let mut guard = peer.conn.lock();
    let conn = &mut *guard;
    let Some(mut stream) = conn.stream.as_ref() else {
        return Err(std::io::Error::new(std::io::ErrorKind::NotConnected, "no connection"));
    };
    if !conn.pending.is_empty() {
        stream.write_all(&conn.pending)?;
        conn.pending.clear();
    }
    stream.write_all(batch)
}

/// Sleeps out a reconnect backoff, dropping whatever is sent meanwhile (the link is down).
/// False when the transport is stopping.
fn wait_dropping(peer: &Peer, rx: &Receiver<WriterMsg>, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(WriterMsg::Packet(_)) => peer.drop_queued(1),
            Ok(WriterMsg::Shutdown) | Err(RecvTimeoutError::Disconnected) => return false,
            Ok(WriterMsg::PeerCalled) => return true,
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => return true,
        }
    }
}

/// Reads the outgoing connection, on which the peer never sends: EOF or error means the
/// connection is gone, and so does any data (CTDB treats both the same way).
fn watch(mut stream: TcpStream, tx: Sender<WriterMsg>, conn_id: u64) {
    let mut buf = [0u8; 64];
    loop {
        match stream.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => break,
            Ok(n) => {
                warn!("peer sent {n} bytes on our outgoing connection: closing it");
                break;
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    let _ = tx.send(WriterMsg::ConnectionLost(conn_id));
}
