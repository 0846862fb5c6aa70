//! One peer's link: its counters, its send queue, and the writer thread that owns the
//! outgoing connection (connect with backoff, batch and write, notice breakage, reconnect).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver, Sender, TrySendError};
use log::{debug, info, warn};
use parking_lot::Mutex;

use super::{connect, LinkState, Shared, TransportEvent};
use crate::wire::{codec, Packet, Pnn};

/// Stop adding queued packets to a batch once it is this large.
const BATCH_BYTES: usize = 64 * 1024;

pub(super) enum WriterControl {
    /// The watcher saw the outgoing connection with this id close.
    ConnectionLost(u64),
    Shutdown,
    /// Tests: write these bytes as they are on the live connection (garbage, forgeries).
    #[cfg(test)]
    Raw(Vec<u8>),
}

/// The writer thread's ends of the peer's channels.
pub(super) struct WriterInputs {
    packets: Receiver<Packet>,
    control: Receiver<WriterControl>,
    /// For the watcher threads the writer spawns.
    control_tx: Sender<WriterControl>,
}

pub(super) struct Peer {
    pub(super) pnn: Pnn,
    pub(super) addr: SocketAddr,
    up: AtomicBool,
    packets: Sender<Packet>,
    control: Sender<WriterControl>,
    /// A handle on the live outgoing connection, so shutdown can break a blocked write.
    outgoing: Mutex<Option<TcpStream>>,
    /// The id of the accepted connection this peer currently sends to us on.
    pub(super) incoming_conn: Mutex<Option<u64>>,
    sent: AtomicU64,
    pub(super) received: AtomicU64,
    dropped: AtomicU64,
    connects: AtomicU64,
    pub(super) bad_frames: AtomicU64,
    pub(super) forged: AtomicU64,
}

impl Peer {
    pub(super) fn new(pnn: Pnn, addr: SocketAddr, queue_len: usize) -> (Arc<Peer>, WriterInputs) {
        let (packets_tx, packets) = crossbeam_channel::bounded(queue_len.max(1));
        let (control_tx, control) = crossbeam_channel::unbounded();
        let peer = Arc::new(Peer {
            pnn,
            addr,
            up: AtomicBool::new(false),
            packets: packets_tx,
            control: control_tx.clone(),
            outgoing: Mutex::new(None),
            incoming_conn: Mutex::new(None),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            bad_frames: AtomicU64::new(0),
            forged: AtomicU64::new(0),
        });
        (peer, WriterInputs { packets, control, control_tx })
    }

    /// The caller's side of `send`: never blocks.
    pub(super) fn queue(&self, packet: Packet) {
        if !self.up.load(Ordering::Acquire) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match self.packets.try_send(packet) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    warn!("send queue to node {} is full: dropped {} packets so far", self.pnn, n + 1);
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
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
            connects: self.connects.load(Ordering::Relaxed),
            bad_frames: self.bad_frames.load(Ordering::Relaxed),
            forged_packets: self.forged.load(Ordering::Relaxed),
        }
    }

    #[cfg(test)]
    pub(super) fn inject_raw(&self, bytes: Vec<u8>) {
        let _ = self.control.send(WriterControl::Raw(bytes));
    }

    /// Tells the writer to stop and breaks a write it may be blocked in.
    pub(super) fn stop(&self) {
        let _ = self.control.send(WriterControl::Shutdown);
        if let Some(s) = self.outgoing.lock().as_ref() {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

enum LinkEnd {
    Shutdown,
    Broken(String),
}

/// The writer thread: connect, pump packets until the connection breaks, repeat.
pub(super) fn writer_loop(shared: Arc<Shared>, peer: Arc<Peer>, inputs: WriterInputs) {
    let config = &shared.config;
    let my_ip = config.nodes[config.my_pnn as usize].ip();
    let mut backoff = config.connect_backoff_min;
    let mut failures: u64 = 0;
    let mut conn_id: u64 = 0;
    while !shared.is_shutting_down() {
        let stream = match connect::connect_from(my_ip, peer.addr, config.connect_timeout)
            .and_then(|s| connect::configure(&s).map(|()| s))
            .and_then(|s| s.set_write_timeout(config.write_timeout).map(|()| s))
        {
            Ok(stream) => stream,
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    info!("cannot connect to node {} at {}: {e}; retrying", peer.pnn, peer.addr);
                } else {
                    debug!("connect to node {} failed ({failures} times): {e}", peer.pnn);
                }
                if !wait_dropping(&peer, &inputs, backoff) {
                    return;
                }
                backoff = (backoff * 2).min(config.connect_backoff_max);
                continue;
            }
        };
        failures = 0;
        backoff = config.connect_backoff_min;
        conn_id += 1;
        let end = run_connection(&shared, &peer, &inputs, stream, conn_id);
        if let LinkEnd::Broken(reason) = end {
            warn!("link to node {} ({}) down: {reason}", peer.pnn, peer.addr);
            shared.deliver(TransportEvent::LinkDown(peer.pnn));
        }
    }
}

/// One established outgoing connection, from LinkUp to its end.
fn run_connection(
    shared: &Shared,
    peer: &Peer,
    inputs: &WriterInputs,
    stream: TcpStream,
    conn_id: u64,
) -> LinkEnd {
    let (watch_stream, kill_handle) = match (stream.try_clone(), stream.try_clone()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => return LinkEnd::Broken(format!("cannot duplicate socket: {e}")),
    };
    let control = inputs.control_tx.clone();
    let watcher = match std::thread::Builder::new()
        .name(format!("rctdb-watch-{}", peer.pnn))
        .spawn(move || watch(watch_stream, control, conn_id))
    {
        Ok(t) => t,
        Err(e) => return LinkEnd::Broken(format!("cannot start watcher thread: {e}")),
    };
    *peer.outgoing.lock() = Some(kill_handle);
    // A stop() that ran before the handle was stored could not break this connection; it
    // left a Shutdown message that `pump` will see first.
    peer.connects.fetch_add(1, Ordering::Relaxed);
    peer.up.store(true, Ordering::Release);
    info!("link to node {} ({}) up", peer.pnn, peer.addr);
    let end = if shared.deliver(TransportEvent::LinkUp(peer.pnn)) {
        pump(peer, inputs, stream, conn_id)
    } else {
        LinkEnd::Shutdown
    };
    peer.up.store(false, Ordering::Release);
    if let Some(s) = peer.outgoing.lock().take() {
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
fn pump(peer: &Peer, inputs: &WriterInputs, mut stream: TcpStream, conn_id: u64) -> LinkEnd {
    let mut batch = Vec::with_capacity(BATCH_BYTES);
    loop {
        select! {
            recv(inputs.control) -> msg => match msg {
                Ok(WriterControl::ConnectionLost(id)) if id == conn_id => {
                    return LinkEnd::Broken("the peer closed the connection".into());
                }
                Ok(WriterControl::ConnectionLost(_)) => {}
                Ok(WriterControl::Shutdown) | Err(_) => return LinkEnd::Shutdown,
                #[cfg(test)]
                Ok(WriterControl::Raw(bytes)) => {
                    if let Err(e) = stream.write_all(&bytes) {
                        return LinkEnd::Broken(format!("write failed: {e}"));
                    }
                }
            },
            recv(inputs.packets) -> packet => {
                let Ok(packet) = packet else { return LinkEnd::Shutdown };
                batch.clear();
                let mut count = append(peer, &packet, &mut batch);
                while batch.len() < BATCH_BYTES {
                    match inputs.packets.try_recv() {
                        Ok(p) => count += append(peer, &p, &mut batch),
                        Err(_) => break,
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                if let Err(e) = stream.write_all(&batch) {
                    peer.dropped.fetch_add(count, Ordering::Relaxed);
                    return LinkEnd::Broken(format!("write failed: {e}"));
                }
                peer.sent.fetch_add(count, Ordering::Relaxed);
                if batch.capacity() > 16 * BATCH_BYTES {
                    batch = Vec::with_capacity(BATCH_BYTES); // one huge packet: give it back
                }
            },
        }
    }
}

/// Encodes `packet` onto the batch; 1 if it went in, 0 if it was dropped.
fn append(peer: &Peer, packet: &Packet, batch: &mut Vec<u8>) -> u64 {
    match codec::encode_into(packet, batch) {
        Ok(()) => 1,
        Err(e) => {
            peer.dropped.fetch_add(1, Ordering::Relaxed);
            warn!("dropping packet for node {}: {e}", peer.pnn);
            0
        }
    }
}

/// Sleeps out a reconnect backoff, dropping whatever is sent meanwhile (the link is down).
/// False when the transport is stopping.
fn wait_dropping(peer: &Peer, inputs: &WriterInputs, delay: Duration) -> bool {
    let deadline = crossbeam_channel::at(Instant::now() + delay);
    loop {
        select! {
            recv(inputs.control) -> msg => match msg {
                Ok(WriterControl::Shutdown) | Err(_) => return false,
                Ok(_) => {}
            },
            recv(inputs.packets) -> packet => match packet {
                Ok(_) => { peer.dropped.fetch_add(1, Ordering::Relaxed); }
                Err(_) => return false,
            },
            recv(deadline) -> _ => return true,
        }
    }
}

/// Reads the outgoing connection, on which the peer never sends: EOF or error means the
/// connection is gone, and so does any data (CTDB treats both the same way).
fn watch(mut stream: TcpStream, control: Sender<WriterControl>, conn_id: u64) {
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
    let _ = control.send(WriterControl::ConnectionLost(conn_id));
}
