//! One peer's link: its counters, its session's outbox, and the writer thread that owns
//! the outgoing connection (connect with backoff, resume the session, write, notice
//! breakage, reconnect).
//!
//! Every frame goes into the peer's [`Outbox`] first (see [`super::session`]): it is kept
//! there, encoded, until the peer acknowledges it, so a connection that dies with frames
//! in its buffers loses none, and frames sent while the link is down wait there for the
//! reconnect. Writing has two paths, as in CTDB's `ctdb_queue_send`: the caller writes
//! what the connection has not taken yet itself, with a non-blocking `send` (one syscall,
//! no thread hand-off: that hand-off costs more than the write on a loaded 2-core machine),
//! when the writer thread is not writing; otherwise, or when the socket buffer is full, it
//! wakes the writer, which blocks for it. Both take bytes from the outbox's write cursor
//! under the connection's lock, so the byte stream keeps the frames' order.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use log::{debug, info, warn};
use nix::errno::Errno;
use nix::sys::socket::{send, MsgFlags};
use parking_lot::Mutex;

use super::auth::{self, HandshakeError};
use super::session::{self, Frame, Inbound, Kind, Outbox, PushError, Resumed};
use super::{connect, LinkState, Shared, TransportConfig, TransportEvent};
use crate::wire::{Packet, Pnn};

/// The most bytes the writer copies out of the outbox for one `write`.
const BATCH_BYTES: usize = 1 << 20;

/// Everything the writer thread is told, on one channel: waiting on one channel is much
/// cheaper than `select!` over two (measured: ~15 µs vs 20-50 µs per round trip).
pub(super) enum WriterMsg {
    /// The outbox holds bytes the connection has not taken: write them.
    Wake,
    /// The watcher saw the outgoing connection with this id close.
    ConnectionLost(u64),
    /// The peer just connected to us, so it is up: stop waiting out a reconnect backoff.
    PeerCalled,
    Shutdown,
    /// Tests: write these bytes as they are on the live connection (garbage, forgeries).
    #[cfg(test)]
    Raw(Vec<u8>),
}

/// The live outgoing connection, shared by the writer thread and direct senders; held
/// while writing to it.
#[derive(Default)]
struct Conn {
    stream: Option<TcpStream>,
}

pub(super) struct Peer {
    pub(super) pnn: Pnn,
    pub(super) addr: SocketAddr,
    direct_write: bool,
    up: AtomicBool,
    tx: Sender<WriterMsg>,
    /// A `Wake` is on its way to the writer: callers need not send another.
    wake_pending: AtomicBool,
    /// Lock order: `outbox`, then `conn` (direct senders only try the latter).
    outbox: Mutex<Outbox>,
    session: u64,
    conn: Mutex<Conn>,
    /// Another handle on the live connection, so shutdown can break a write that holds `conn`.
    kill: Mutex<Option<TcpStream>>,
    /// The id of the accepted connection this peer currently sends to us on.
    pub(super) incoming_conn: Mutex<Option<u64>>,
    /// The peer's session towards us: what we read of it, on which connection.
    pub(super) inbound: Mutex<Inbound>,
    sent: AtomicU64,
    pub(super) received: AtomicU64,
    dropped: AtomicU64,
    queue_full: AtomicU64,
    resent: AtomicU64,
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
        config: &TransportConfig,
    ) -> (Arc<Peer>, Receiver<WriterMsg>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let outbox = Outbox::new(config.send_queue_len, config.send_queue_bytes);
        let peer = Arc::new(Peer {
            pnn,
            addr,
            direct_write: config.direct_write,
            up: AtomicBool::new(false),
            tx,
            wake_pending: AtomicBool::new(false),
            session: outbox.session(),
            outbox: Mutex::new(outbox),
            conn: Mutex::new(Conn::default()),
            kill: Mutex::new(None),
            incoming_conn: Mutex::new(None),
            inbound: Mutex::new(Inbound::default()),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            queue_full: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            forged: AtomicU64::new(0),
            auth_error: Mutex::new(None),
        });
        (peer, rx)
    }

    /// The caller's side of `send`: never blocks. The packet is numbered in the session and
    /// kept until the peer has it, whether the link is up or down; only a full outbox (or a
    /// packet too large to encode) drops it.
    pub(super) fn queue(&self, packet: Packet) {
        let mut outbox = self.outbox.lock();
        match outbox.push(&packet) {
            Ok(()) => {}
            Err(PushError::Full) => {
                drop(outbox);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                let n = self.queue_full.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    warn!("send queue to node {} is full: dropped {} packets so far", self.pnn, n + 1);
                }
                return;
            }
            Err(PushError::Encode(e)) => {
                drop(outbox);
                self.dropped.fetch_add(1, Ordering::Relaxed);
                return warn!("dropping packet for node {}: {e}", self.pnn);
            }
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        if self.direct_write && self.try_write_direct(&mut outbox) {
            return;
        }
        drop(outbox);
        self.wake_writer();
    }

    /// Writes what the connection has not taken from the caller's thread, if the writer is
    /// not writing and the socket takes it without blocking. True when all of it went.
    fn try_write_direct(&self, outbox: &mut Outbox) -> bool {
        if !self.up.load(Ordering::Acquire) {
            return false;
        }
        // The writer holds `conn` while it writes: then leave it to the writer.
        let Some(conn) = self.conn.try_lock() else { return false };
        let Some(stream) = conn.stream.as_ref() else { return false };
        let bytes = outbox.unwritten();
        let len = bytes.len();
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        match send(stream.as_raw_fd(), bytes, flags) {
            Ok(n) => {
                outbox.wrote(n);
                n == len
            }
            Err(Errno::EAGAIN | Errno::EINTR) => false,
            Err(e) => {
                // The watcher sees the shutdown; the outbox keeps the frames for the reconnect.
                debug!("direct send to node {} failed: {e}", self.pnn);
                let _ = stream.shutdown(Shutdown::Both);
                false
            }
        }
    }

    fn wake_writer(&self) {
        if !self.wake_pending.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(WriterMsg::Wake);
        }
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
            packets_queued: self.outbox.lock().len() as u64,
            packets_resent: self.resent.load(Ordering::Relaxed),
            queue_full_drops: self.queue_full.load(Ordering::Relaxed),
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

    /// A new connection took the session over: the peer read `received` of its frames.
    fn resumed(&self, receiver: u64, received: u64) {
        match self.outbox.lock().resume(receiver, received) {
            Resumed::Continued { resent: 0 } => {}
            Resumed::Continued { resent } => {
                self.resent.fetch_add(resent, Ordering::Relaxed);
                info!("link to node {}: {resent} packets lost with the last connection go again", self.pnn);
            }
            Resumed::PeerRestarted { dropped } => {
                self.dropped.fetch_add(dropped, Ordering::Relaxed);
                info!("node {} restarted: {dropped} packets meant for its previous run dropped", self.pnn);
            }
        }
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
    /// The session handshake (RESUME / RESUMED) failed.
    Resume(std::io::Error),
}

/// Connects to the peer from our own address, authenticates it (with a cluster key) and
/// resumes our session: returns the stream and the peer's RESUMED.
fn open_link(config: &TransportConfig, peer: &Peer) -> Result<(TcpStream, Frame), OpenError> {
    let my_ip = config.nodes[config.my_pnn as usize].ip();
    let stream = connect::connect_from(my_ip, peer.addr, config.connect_timeout)
        .and_then(|s| connect::configure(&s).map(|()| s))
        .map_err(OpenError::Connect)?;
    let deadline = Instant::now() + config.handshake_timeout;
    if let Some(key) = &config.cluster_key {
        auth::authenticate_outgoing(&stream, key, config.my_pnn, peer.pnn, deadline)
            .map_err(OpenError::Handshake)?;
    }
    let resume =
        Frame { kind: Kind::Resume, srcnode: config.my_pnn, destnode: peer.pnn, a: peer.session, b: 0 };
    resume.send(&stream, deadline).map_err(OpenError::Resume)?;
    let resumed = Frame::receive(&stream, Kind::Resumed, deadline).map_err(OpenError::Resume)?;
    stream.set_write_timeout(config.write_timeout).map_err(OpenError::Connect)?;
    Ok((stream, resumed))
}

/// The writer thread: connect, write until the connection breaks, repeat.
pub(super) fn writer_loop(shared: Arc<Shared>, peer: Arc<Peer>, rx: Receiver<WriterMsg>) {
    let config = &shared.config;
    let mut backoff = config.connect_backoff_min;
    let mut failures: u64 = 0;
    let mut conn_id: u64 = 0;
    while !shared.is_shutting_down() {
        let (stream, resumed) = match open_link(config, &peer) {
            Ok(opened) => opened,
            Err(e) => {
                failures += 1;
                note_open_error(&shared, &peer, &e, failures);
                if !wait_backoff(&rx, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(config.connect_backoff_max);
                continue;
            }
        };
        failures = 0;
        backoff = config.connect_backoff_min;
        *peer.auth_error.lock() = None;
        peer.resumed(resumed.a, resumed.b);
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
                // Nothing listens: the process we queued for is gone.
                let dropped = peer.outbox.lock().discard();
                if dropped > 0 {
                    peer.dropped.fetch_add(dropped, Ordering::Relaxed);
                    debug!("node {} refuses connections: dropped {dropped} packets queued for it", peer.pnn);
                }
                shared.deliver(TransportEvent::Refused(peer.pnn));
            }
            if failures == 1 {
                info!("cannot connect to node {} at {}: {e}; retrying", peer.pnn, peer.addr);
            } else {
                debug!("connect to node {} failed ({failures} times): {e}", peer.pnn);
            }
        }
        OpenError::Resume(e) => {
            if failures == 1 {
                info!("link to node {} ({}): session not resumed: {e}; retrying", peer.pnn, peer.addr);
            } else {
                debug!("resuming the session with node {} failed ({failures} times): {e}", peer.pnn);
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
    peer: &Arc<Peer>,
    rx: &Receiver<WriterMsg>,
    stream: TcpStream,
    conn_id: u64,
) -> LinkEnd {
    let (watch_stream, kill_handle) = match (stream.try_clone(), stream.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return LinkEnd::Broken(format!("cannot duplicate socket: {e}")),
    };
    let watched = Arc::clone(peer);
    let watcher = match std::thread::Builder::new()
        .name(format!("rctdb-watch-{}", peer.pnn))
        .spawn(move || watch(watch_stream, watched, conn_id))
    {
        Ok(t) => t,
        Err(e) => return LinkEnd::Broken(format!("cannot start watcher thread: {e}")),
    };
    *peer.kill.lock() = Some(kill_handle);
    // A stop() that ran before the kill handle was stored could not break this
    // connection; it left a Shutdown message that `pump` will see first.
    peer.conn.lock().stream = Some(stream);
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

/// Writes what the outbox holds for the connection (first what the last one lost), then
/// whatever callers leave to it, until the connection breaks or the transport stops.
fn pump(peer: &Peer, rx: &Receiver<WriterMsg>, conn_id: u64) -> LinkEnd {
    let mut batch = Vec::new();
    loop {
        if let Err(e) = write_unwritten(peer, &mut batch) {
            return LinkEnd::Broken(format!("write failed: {e}"));
        }
        let Ok(msg) = rx.recv() else { return LinkEnd::Shutdown };
        match msg {
            WriterMsg::Wake | WriterMsg::PeerCalled => {}
            WriterMsg::ConnectionLost(id) if id == conn_id => {
                return LinkEnd::Broken("the peer closed the connection".into());
            }
            WriterMsg::ConnectionLost(_) => {}
            WriterMsg::Shutdown => return LinkEnd::Shutdown,
            #[cfg(test)]
            WriterMsg::Raw(bytes) => {
                if let Some(mut stream) = peer.conn.lock().stream.as_ref() {
                    let _ = stream.write_all(&bytes);
                }
            }
        }
    }
}

/// Writes the outbox's unwritten bytes, holding `conn` so no direct send slips in between.
fn write_unwritten(peer: &Peer, batch: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        // Cleared before looking, so a frame pushed after the look wakes us again.
        peer.wake_pending.store(false, Ordering::Release);
        let conn = peer.conn.lock();
        let Some(mut stream) = conn.stream.as_ref() else {
            return Err(std::io::Error::new(std::io::ErrorKind::NotConnected, "no connection"));
        };
        batch.clear();
        {
            let mut outbox = peer.outbox.lock();
            let unwritten = outbox.unwritten();
            let n = unwritten.len().min(BATCH_BYTES);
            batch.extend_from_slice(&unwritten[..n]);
            // Taken now: should the write fail, the next connection's resume rewinds.
            outbox.wrote(n);
        }
        if batch.is_empty() {
            return Ok(());
        }
        stream.write_all(batch)?;
        drop(conn);
        if batch.capacity() > 4 * BATCH_BYTES {
            *batch = Vec::new();
        }
    }
}

/// Sleeps out a reconnect backoff; what is sent meanwhile waits in the outbox. False when
/// the transport is stopping.
fn wait_backoff(rx: &Receiver<WriterMsg>, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        match rx.recv_deadline(deadline) {
            Ok(WriterMsg::Shutdown) | Err(RecvTimeoutError::Disconnected) => return false,
            Ok(WriterMsg::PeerCalled) => return true,
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => return true,
        }
    }
}

/// Reads the outgoing connection, on which the peer sends only ACKs of our session: those
/// trim the outbox; EOF, an error or anything else means the connection is gone (CTDB
/// treats both the same way).
fn watch(mut stream: TcpStream, peer: Arc<Peer>, conn_id: u64) {
    let mut buf = [0u8; session::FRAME_LEN];
    loop {
        match stream.read_exact(&mut buf) {
            Err(_) => break,
            Ok(()) => match Frame::decode(&buf) {
                Ok(Frame { kind: Kind::Ack, a: session, b: received, .. }) => {
                    peer.outbox.lock().acknowledged(session, received)
                }
                Ok(frame) => {
                    warn!("node {} sent {:?} on our outgoing connection: closing it", peer.pnn, frame.kind);
                    break;
                }
                Err(e) => {
                    warn!("node {} sent bytes on our outgoing connection ({e}): closing it", peer.pnn);
                    break;
                }
            },
        }
    }
    let _ = stream.shutdown(Shutdown::Both);
    let _ = peer.tx.send(WriterMsg::ConnectionLost(conn_id));
}
