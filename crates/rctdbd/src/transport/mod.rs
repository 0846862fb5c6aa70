//! TCP links between rctdbd nodes, modelled on CTDB's TCP transport.
//!
//! Why it looks like this:
//! - Each node listens on its own address from the nodes file and opens one *outgoing*
//!   connection per peer, bound to its own IP so the peer knows who is calling. A node only
//!   ever sends on its outgoing connections and only ever reads from accepted ones, so each
//!   direction of a link is one ordered byte stream with one writer — no connection races,
//!   no tie-breaking. Accepted connections are identified by source IP against the nodes
//!   list; strangers are refused.
//! - The engine thread must never block on the network (DESIGN §2): `send` either writes
//!   with a non-blocking `send(2)` when nothing is queued for that peer (CTDB's immediate
//!   write; a thread hand-off costs more than the syscall), or queues to the peer's writer
//!   thread, which blocks on the socket for it and batches whatever piled up into one
//!   `write` (TCP_NODELAY is on, so batching is what saves syscalls). Decoding happens on
//!   reader threads, so the engine sees typed packets only. With a `PacketHandler`
//!   (`start_with_handler`), a reader thread also handles its packets itself instead of
//!   waking the engine thread: on a 2-core VM a thread wakeup costs more than the protocol
//!   step (measured: context switches are ~2/3 of the daemons' CPU in the ring).
//! - Nothing sent to a peer is lost to a broken connection or a link that is down for a
//!   moment: each direction of a link is a numbered session whose frames are kept until
//!   the peer acknowledges them and written again after a reconnect, once each and in
//!   order; a restarted peer starts afresh ([`session`] has the design). A stock smbd reads
//!   a control lost to a TCP reset as "that process is gone" and drops its share modes.
//! - `LinkUp(p)` / `LinkDown(p)` follow the outgoing connection to `p`, which is reconnected
//!   with exponential backoff (first after 10 ms: a reset link is back within milliseconds). The outgoing socket is watched for EOF so a dead peer is
//!   noticed without waiting for the next write.
//! - With a cluster key (see [`auth`]) every connection opens with a mutual challenge and
//!   response, then the session's resume; only then does it carry packets or count as a
//!   node's link. Without one, a
//!   peer is whoever uses a node's source address, as in CTDB.
//! - Threads, not an event loop: a handful of peers, blocking I/O, and a thread per
//!   direction is the least code that keeps a slow peer from delaying the others.

pub mod auth;
pub mod connect;
mod link;
mod listener;
mod session;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Sender, TrySendError};
use log::{debug, warn};
use parking_lot::Mutex;

use crate::wire::{Packet, Pnn, MAX_PACKET_LEN};

/// The frame that opens a link's session, after the key handshake if there is one: what a
/// node sends first on a connection without a key (`session` names the sender's run).
pub fn resume_frame(from: Pnn, to: Pnn, session: u64) -> Vec<u8> {
    let frame = session::Frame { kind: session::Kind::Resume, srcnode: from, destnode: to, a: session, b: 0 };
    frame.encode().to_vec()
}

/// What the transport tells the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportEvent {
    /// A packet from node `from` (identified by its connection's source address). Its
    /// `srcnode` has been checked to be `from`, except for REQ_CALL: a forwarded call keeps
    /// its requester as `srcnode` (as in CTDB), which only has to be a node of the cluster.
    Packet { from: Pnn, packet: Packet },
    /// The outgoing connection to this node is established: packets sent to it now travel.
    LinkUp(Pnn),
    /// The outgoing connection to this node broke: packets sent to it wait (bounded) for the
    /// next `LinkUp`, and those the broken connection lost go again after it.
    LinkDown(Pnn),
    /// Connecting to this node was refused: nothing listens at its address, so no rctdbd
    /// runs there. Said on every refused attempt.
    Refused(Pnn),
}

#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub my_pnn: Pnn,
    /// Every node's listening address; index = PNN. Peers are recognised by these IPs.
    pub nodes: Vec<SocketAddr>,
    /// First reconnect delay after a failed connect; doubles up to `connect_backoff_max`.
    pub connect_backoff_min: Duration,
    pub connect_backoff_max: Duration,
    /// A connect attempt that has not completed after this long counts as failed.
    pub connect_timeout: Duration,
    /// A write blocked this long (peer not reading) breaks the link. `None`: wait forever.
    pub write_timeout: Option<Duration>,
    /// Packets kept per peer until it acknowledges them (while its link is down, too);
    /// `send` drops and counts a packet beyond this or `send_queue_bytes`.
    pub send_queue_len: usize,
    /// Bytes kept per peer, as `send_queue_len`; at least one packet of the largest size.
    pub send_queue_bytes: usize,
    /// Larger frames from a peer close the connection; capped at [`MAX_PACKET_LEN`].
    pub max_packet_len: usize,
    /// When nothing is queued for a peer, `send` writes the packet itself with a
    /// non-blocking `send(2)` instead of waking the writer thread (CTDB does the same).
    /// It never blocks either way; this saves a thread hand-off per packet.
    pub direct_write: bool,
    /// Every link must prove it holds this key before it carries a packet. `None`: links
    /// are not authenticated (anyone who can use a node's address can speak for it).
    pub cluster_key: Option<auth::ClusterKey>,
    /// A handshake not done in this time closes its connection.
    pub handshake_timeout: Duration,
    /// Accepted connections still in their handshake; more are refused at once.
    pub max_pending_handshakes: usize,
}

impl TransportConfig {
    pub fn new(my_pnn: Pnn, nodes: Vec<SocketAddr>) -> TransportConfig {
        TransportConfig {
            my_pnn,
            nodes,
            connect_backoff_min: Duration::from_millis(10),
            connect_backoff_max: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            write_timeout: Some(Duration::from_secs(10)),
            // Unacknowledged frames include what sits in both socket buffers, several MB on
            // loopback: a burst of small frames must fit.
            send_queue_len: 256 * 1024,
            send_queue_bytes: 2 * MAX_PACKET_LEN,
            max_packet_len: MAX_PACKET_LEN,
            direct_write: true,
            cluster_key: None,
            handshake_timeout: Duration::from_secs(2),
            max_pending_handshakes: 16,
        }
    }
}

/// One peer's link, as `rctdb status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub pnn: Pnn,
    pub addr: SocketAddr,
    /// Our outgoing connection to it is established.
    pub up: bool,
    /// It has a connection to us.
    pub incoming: bool,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// Not sent: the queue was full, the packet too large to encode, or it was meant for a
    /// previous run of a peer that restarted.
    pub packets_dropped: u64,
    /// Kept until the peer acknowledges them (or the link is back up).
    pub packets_queued: u64,
    /// Written again after a reconnect: the broken connection lost them.
    pub packets_resent: u64,
    /// Dropped because the queue held `send_queue_len` packets or `send_queue_bytes`.
    pub queue_full_drops: u64,
    /// Times the outgoing connection was established.
    pub connects: u64,
    /// Connections from it closed because of a corrupt or oversized frame.
    pub bad_frames: u64,
    /// Packets on its connection whose `srcnode` named another node (dropped).
    pub forged_packets: u64,
    /// Why our last attempt to open the link failed its handshake (a different key, no
    /// key); cleared when the link comes up.
    pub auth_error: Option<String>,
}

/// Counters that belong to no single link.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Connections refused because their source address is not in the nodes list.
    pub refused_unknown_peer: u64,
    /// Connections from a node's address that failed the handshake (no key, another key,
    /// silence, garbage).
    pub refused_handshake: u64,
    /// Connections refused because `max_pending_handshakes` were in progress.
    pub refused_busy: u64,
    /// Packets sent to a PNN that is not in the nodes list.
    pub dropped_unknown_destination: u64,
    /// Packets sent to ourselves that did not fit the event channel.
    pub dropped_to_self: u64,
}

/// Handles a peer's packet on the reader thread that decoded it, instead of passing it to
/// the engine through the event channel: one thread hand-off (a wakeup, on a 2-core VM the
/// dearest part of a migration) less per packet. Packets of one connection are handled one
/// after the other, in order. The handler must not call back into the transport in a way
/// that waits for a reader; `Transport::send` never does.
pub type PacketHandler = Arc<dyn Fn(Pnn, Packet) + Send + Sync>;

/// The running transport. Dropping it shuts it down too.
pub struct Transport {
    shared: Arc<Shared>,
    listener_socket: TcpListener,
    listener_thread: Option<JoinHandle<()>>,
    writer_threads: Vec<JoinHandle<()>>,
}

/// State shared by the caller's handle and the transport's threads.
struct Shared {
    config: TransportConfig,
    events: Sender<TransportEvent>,
    /// When set, packets from peers go here on the reader thread; link events still go to
    /// `events`.
    packet_handler: Option<PacketHandler>,
    /// Index = PNN; `None` for ourselves.
    peers: Vec<Option<Arc<link::Peer>>>,
    shutting_down: AtomicBool,
    /// Every accepted connection still open, so shutdown can break their reads.
    incoming: Mutex<HashMap<u64, TcpStream>>,
    reader_threads: Mutex<Vec<JoinHandle<()>>>,
    next_conn_id: AtomicU64,
    refused_unknown_peer: AtomicU64,
    refused_handshake: AtomicU64,
    refused_busy: AtomicU64,
    pending_handshakes: AtomicUsize,
    /// Handshakes pending per source address: a process using one node's address can hold
    /// up only that node's reconnects.
    pending_by_address: parking_lot::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    refusals: listener::RefusalLog,
    dropped_unknown_destination: AtomicU64,
    dropped_to_self: AtomicU64,
    /// This run's id in session resumes: a peer that sees it change knows we restarted.
    instance: u64,
}

/// Sends on a running transport (see [`Transport::sender`]).
#[derive(Clone)]
pub struct TransportSender {
    shared: Arc<Shared>,
}

impl TransportSender {
    /// As [`Transport::send`].
    pub fn send(&self, to: Pnn, packet: Packet) {
        self.shared.send(to, packet)
    }
}

impl Shared {
    fn send(&self, to: Pnn, packet: Packet) {
        if to == self.config.my_pnn {
            let event = TransportEvent::Packet { from: to, packet };
            if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.events.try_send(event) {
                self.dropped_to_self.fetch_add(1, Ordering::Relaxed);
            }
            return;
        }
        let Some(peer) = self.peer(to) else {
            self.dropped_unknown_destination.fetch_add(1, Ordering::Relaxed);
            warn!("dropping packet for node {to}: not in the nodes list");
            return;
        };
        peer.queue(packet);
    }

    fn peer(&self, pnn: Pnn) -> Option<&Arc<link::Peer>> {
        self.peers.get(pnn as usize).and_then(Option::as_ref)
    }

    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Hands an event to the engine. Blocks while its channel is full (backpressure onto
    /// TCP), but gives up at shutdown so threads can be joined. False: stop, nobody listens.
    fn deliver(&self, mut event: TransportEvent) -> bool {
        if let (Some(handler), TransportEvent::Packet { .. }) = (&self.packet_handler, &event) {
            if self.is_shutting_down() {
                return false;
            }
            let TransportEvent::Packet { from, packet } = event else { unreachable!() };
            handler(from, packet);
            return true;
        }
        loop {
            match self.events.send_timeout(event, Duration::from_millis(100)) {
                Ok(()) => return true,
                Err(crossbeam_channel::SendTimeoutError::Timeout(e)) => {
                    if self.is_shutting_down() {
                        return false;
                    }
                    event = e;
                }
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return false,
            }
        }
    }
}

impl Transport {
    /// Binds `nodes[my_pnn]`, starts the listener and one writer per peer (each starts
    /// connecting at once). Events arrive on `events`.
    pub fn start(config: TransportConfig, events: Sender<TransportEvent>) -> io::Result<Transport> {
        Transport::start_with_handler(config, events, None)
    }

    /// `start`, with peers' packets handled on their reader threads by `packet_handler`
    /// (see [`PacketHandler`]); link events and packets to ourselves still come on `events`.
    pub fn start_with_handler(
        config: TransportConfig,
        events: Sender<TransportEvent>,
        packet_handler: Option<PacketHandler>,
    ) -> io::Result<Transport> {
        let me = config.my_pnn as usize;
        let Some(&my_addr) = config.nodes.get(me) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("my PNN {} is not in the nodes list ({} nodes)", config.my_pnn, config.nodes.len()),
            ));
        };
        let listener = TcpListener::bind(my_addr)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {my_addr}: {e}")))?;
        let listener_socket = listener.try_clone()?;

        let mut peers = Vec::with_capacity(config.nodes.len());
        let mut writer_inputs = Vec::new();
        for (pnn, &addr) in config.nodes.iter().enumerate() {
            if pnn == me {
                peers.push(None);
                continue;
            }
            let (peer, inputs) = link::Peer::new(pnn as Pnn, addr, &config);
            peers.push(Some(Arc::clone(&peer)));
            writer_inputs.push((peer, inputs));
        }
        let shared = Arc::new(Shared {
            config,
            events,
            packet_handler,
            peers,
            shutting_down: AtomicBool::new(false),
            incoming: Mutex::new(HashMap::new()),
            reader_threads: Mutex::new(Vec::new()),
            next_conn_id: AtomicU64::new(1),
            refused_unknown_peer: AtomicU64::new(0),
            refused_handshake: AtomicU64::new(0),
            refused_busy: AtomicU64::new(0),
            pending_handshakes: AtomicUsize::new(0),
            pending_by_address: Default::default(),
            refusals: listener::RefusalLog::default(),
            dropped_unknown_destination: AtomicU64::new(0),
            dropped_to_self: AtomicU64::new(0),
            instance: session::fresh_id(),
        });

        let mut transport =
            Transport { shared, listener_socket, listener_thread: None, writer_threads: Vec::new() };
        let shared = Arc::clone(&transport.shared);
        transport.listener_thread = Some(
            std::thread::Builder::new()
                .name(format!("rctdb-listen-{me}"))
                .spawn(move || listener::accept_loop(shared, listener))?,
        );
        for (peer, inputs) in writer_inputs {
            let shared = Arc::clone(&transport.shared);
            let name = format!("rctdb-tx-{}", peer.pnn);
            let handle = std::thread::Builder::new()
                .name(name)
                .spawn(move || link::writer_loop(shared, peer, inputs))?;
            transport.writer_threads.push(handle);
        }
        Ok(transport)
    }

    /// Queues `packet` for node `to`; never blocks. It reaches `to` once, in order, even
    /// across a broken connection; dropped (and counted) only when the queue is full, `to`
    /// is unknown, or `to` restarted before it could have it. A packet to ourselves comes straight
    /// back as an event.
    pub fn send(&self, to: Pnn, packet: Packet) {
        self.shared.send(to, packet)
    }

    /// A handle that sends like `send`, for a thread that must not wait for the owner of
    /// the `Transport`.
    pub fn sender(&self) -> TransportSender {
        TransportSender { shared: Arc::clone(&self.shared) }
    }

    /// Tests: the connection `from` sends to us on dies as in a reset: what our reader
    /// holds and the socket buffers hold of it is lost.
    #[cfg(test)]
    fn abandon_incoming(&self, from: Pnn) {
        let Some(peer) = self.shared.peer(from) else { return };
        let Some(conn) = *peer.incoming_conn.lock() else { return };
        peer.inbound.lock().closed(conn);
        if let Some(s) = self.shared.incoming.lock().get(&conn) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Tests: write `bytes` unframed on the live outgoing connection to `to`.
    #[cfg(test)]
    fn inject_raw(&self, to: Pnn, bytes: Vec<u8>) {
        if let Some(peer) = self.shared.peer(to) {
            peer.inject_raw(bytes);
        }
    }

    /// Every peer's link, in PNN order (ourselves excluded).
    pub fn link_states(&self) -> Vec<LinkState> {
        self.shared.peers.iter().flatten().map(|peer| peer.state()).collect()
    }

    pub fn stats(&self) -> TransportStats {
        let s = &self.shared;
        TransportStats {
            refused_unknown_peer: s.refused_unknown_peer.load(Ordering::Relaxed),
            refused_handshake: s.refused_handshake.load(Ordering::Relaxed),
            refused_busy: s.refused_busy.load(Ordering::Relaxed),
            dropped_unknown_destination: s.dropped_unknown_destination.load(Ordering::Relaxed),
            dropped_to_self: s.dropped_to_self.load(Ordering::Relaxed),
        }
    }

    /// Closes every connection and joins every thread. No events follow its return.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let shared = &self.shared;
        if shared.shutting_down.swap(true, Ordering::AcqRel) {
            return;
        }
        // Linux wakes a thread blocked in accept() when its listening socket is shut down.
        if let Err(e) = nix::sys::socket::shutdown(
            std::os::fd::AsRawFd::as_raw_fd(&self.listener_socket),
            nix::sys::socket::Shutdown::Both,
        ) {
            warn!("shutting down the listening socket: {e}");
        }
        if let Some(t) = self.listener_thread.take() {
            join_logged(t);
        }
        for peer in shared.peers.iter().flatten() {
            peer.stop();
        }
        for t in self.writer_threads.drain(..) {
            join_logged(t);
        }
        for stream in shared.incoming.lock().values() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        let readers = std::mem::take(&mut *shared.reader_threads.lock());
        for t in readers {
            join_logged(t);
        }
        debug!("transport of node {} stopped", shared.config.my_pnn);
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.stop();
    }
}

fn join_logged(t: JoinHandle<()>) {
    let name = t.thread().name().unwrap_or("transport thread").to_owned();
    if t.join().is_err() {
        warn!("{name} panicked");
    }
}
