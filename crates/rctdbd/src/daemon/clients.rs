//! The client socket: local processes (librctdb, the `rctdb` tool, smbd) talk to their
//! daemon over a unix stream socket with the same packet framing as the node links.
//!
//! One event-loop thread (epoll) serves every connection, since smbd keeps one per SMB
//! client and a thread or two per connection does not scale to thousands: it accepts, reads
//! whole frames without blocking and handles each request itself (under the node's mutex),
//! so a request costs one thread wakeup, as it did with a reader thread per connection.
//! Replies are written by whichever thread made them, straight into the socket when it has
//! room; the rest waits in the connection's queue, which the loop flushes when the socket
//! becomes writable. A client that does not read lets its queue grow only to a bound, and
//! is then disconnected: nothing ever blocks on a client.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::socket::{send, MsgFlags};
use nix::unistd::Gid;
use parking_lot::Mutex;

use crate::engine::ClientId;
use crate::wire::codec::{decode_unpadded, encode, ReadError};
use crate::wire::{Body, Packet, ReplyControl, ReplyError, MAX_PACKET_LEN, PACKET_HEADER_LEN};

/// Handles client events on the event-loop thread (under the node's mutex).
pub type ClientHandler = Arc<dyn Fn(ClientEvent) + Send + Sync>;

pub enum ClientEvent {
    /// `pid` is the peer's process (SO_PEERCRED): CTDB clients are known by it.
    Connected {
        client: ClientId,
        pid: Option<i32>,
        link: ClientLink,
    },
    Packet {
        client: ClientId,
        packet: Packet,
    },
    Gone(ClientId),
}

/// How the socket is made and what one client may cost.
#[derive(Debug, Clone)]
pub struct ClientSocketConfig {
    /// The socket file's group (mode 0660); `None` keeps the daemon's.
    pub group: Option<Gid>,
    /// Connections past this many are refused.
    pub max_clients: usize,
    /// Bytes of replies and messages a client may leave unread before it is disconnected.
    /// One packet is always taken into an empty queue, whatever its size.
    pub queue_limit: usize,
    /// Bytes of unfinished frames all clients together may have sent: past it, the client
    /// whose bytes went over is disconnected. Each may send a whole packet (64 MiB).
    pub partial_budget: usize,
}

/// Default of [`ClientSocketConfig::queue_limit`]: far more than any client reading its
/// socket leaves queued, little enough that a thousand stopped ones do not exhaust memory.
pub const DEFAULT_QUEUE_LIMIT: usize = 16 << 20;
/// Default of [`ClientSocketConfig::partial_budget`]: four packets of the largest size.
pub const DEFAULT_PARTIAL_BUDGET: usize = 4 * crate::wire::MAX_PACKET_LEN;

/// Bytes read from one connection before the loop serves the others.
const READ_BUDGET: usize = 256 << 10;
/// Connections over the limit kept open at once to answer their first request with the
/// reason; more are closed at once.
const MAX_REFUSING: usize = 64;
/// How long accepting pauses when the process is out of file descriptors.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
const LISTENER: u64 = 0;

/// Binds the socket, replacing a stale socket file a dead daemon left behind (but never a
/// live daemon's), and serves connections on the event-loop thread.
pub fn listen(path: &Path, config: ClientSocketConfig, events: ClientHandler) -> io::Result<()> {
    if UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("{}: another daemon is listening there", path.display()),
        ));
    }
    let listener = bind_private(path, config.group)?;
    listener.set_nonblocking(true)?;
    let epoll = Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(io::Error::from)?);
    epoll.add(&listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER)).map_err(io::Error::from)?;
    let mut event_loop = EventLoop {
        epoll,
        listener,
        events,
        config,
        connections: HashMap::new(),
        clients: 0,
        next_client: 1,
        accept_paused_until: None,
        refusals_logged_at: None,
        refusals_unlogged: 0,
        scratch: vec![0; READ_BUDGET],
        partial_bytes: 0,
    };
    thread::Builder::new().name("clients".into()).spawn(move || event_loop.run())?;
    Ok(())
}

/// Binds `path` with mode 0660 and `group`, so that no other user can connect in between:
/// the socket is made inside a fresh directory only we may enter, given its mode and group
/// there, and then renamed into place (which also replaces a stale file).
fn bind_private(path: &Path, group: Option<Gid>) -> io::Result<UnixListener> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let template = parent.join(".rctdbd-socket-XXXXXX");
    let private = nix::unistd::mkdtemp(&template).map_err(io::Error::from)?; // mode 0700
    let staged = private.join("socket");
    let bound = UnixListener::bind(&staged).and_then(|listener| {
        if let Some(gid) = group {
            nix::unistd::chown(&staged, None, Some(gid)).map_err(|e| {
                io::Error::new(io::ErrorKind::PermissionDenied, format!("giving the socket group {gid}: {e}"))
            })?;
        }
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o660))?;
        std::fs::rename(&staged, path)?;
        Ok(listener)
    });
    let _ = std::fs::remove_file(&staged);
    let _ = std::fs::remove_dir(&private);
    bound
}

/// The daemon's side of one client connection, which the node keeps to send to it.
pub struct ClientLink(Arc<LinkShared>);

struct LinkShared {
    client: ClientId,
    pid: Option<i32>,
    stream: UnixStream,
    epoll: Arc<Epoll>,
    queue_limit: usize,
    out: Mutex<Outgoing>,
}

#[derive(Default)]
struct Outgoing {
    queue: VecDeque<Pending>,
    /// Bytes of frames in `queue` not yet written.
    queued_bytes: usize,
    /// The loop is asked to report when the socket takes more.
    watching_writable: bool,
    /// Disconnected: nothing more is queued or written.
    closed: bool,
}

/// A frame queued for the client, and how much of it the socket took.
struct Pending {
    bytes: Vec<u8>,
    written: usize,
}

impl ClientLink {
    /// Sends a packet without blocking, or queues it while the socket is full.
    pub fn send(&self, packet: &Packet) {
        let mut out = self.0.out.lock();
        if out.closed {
            return;
        }
        let frame = encode(packet);
        if out.queued_bytes > 0 && out.queued_bytes + frame.len() > self.0.queue_limit {
            return self.0.disconnect_slow(&mut out, frame.len());
        }
        out.queued_bytes += frame.len();
        out.queue.push_back(Pending { bytes: frame, written: 0 });
        self.0.flush(&mut out);
    }

    /// Bytes queued for the client and not written yet: a traverse sends more only while
    /// this stays small.
    pub fn queued_bytes(&self) -> usize {
        self.0.out.lock().queued_bytes
    }
}

impl LinkShared {
    /// Writes what the socket takes now; asks the loop to report writability while
    /// anything is left.
    fn flush(&self, out: &mut Outgoing) {
        while let Some(front) = out.queue.front_mut() {
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match send(self.stream.as_raw_fd(), &front.bytes[front.written..], flags) {
                Ok(n) => {
                    front.written += n;
                    let done = front.written == front.bytes.len();
                    out.queued_bytes -= n;
                    if done {
                        out.queue.pop_front();
                    }
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => break,
                // The loop sees the broken connection and reports the client gone.
                Err(_) => return,
            }
        }
        let want = !out.queue.is_empty();
        if want != out.watching_writable {
            let mut flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
            if want {
                flags |= EpollFlags::EPOLLOUT;
            }
            if self.epoll.modify(&self.stream, &mut EpollEvent::new(flags, self.client)).is_ok() {
                out.watching_writable = want;
            }
        }
    }

    /// The client left `queued_bytes` unread and more is coming: it costs only itself.
    fn disconnect_slow(&self, out: &mut Outgoing, more: usize) {
        log::warn!(
            "client {} (pid {}): disconnected: it does not read its socket ({} bytes queued, {more} \
             more to send, limit {})",
            self.client,
            self.pid.map_or("unknown".to_string(), |p| p.to_string()),
            out.queued_bytes,
            self.queue_limit
        );
        self.close(out);
        // The loop sees the connection end and reports the client gone.
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    fn close(&self, out: &mut Outgoing) {
        out.closed = true;
        out.queue.clear();
        out.queued_bytes = 0;
    }
}

struct Connection {
    link: Arc<LinkShared>,
    /// Bytes of a frame not complete yet.
    partial: Vec<u8>,
    /// Over the client limit: its first request is answered with the reason, then it is
    /// closed. The node never hears of it.
    refused: bool,
}

struct EventLoop {
    epoll: Arc<Epoll>,
    listener: UnixListener,
    events: ClientHandler,
    config: ClientSocketConfig,
    connections: HashMap<ClientId, Connection>,
    /// Connections the node serves (not refused ones).
    clients: usize,
    next_client: ClientId,
    /// Out of file descriptors: accept again from then.
    accept_paused_until: Option<Instant>,
    refusals_logged_at: Option<Instant>,
    refusals_unlogged: u64,
    scratch: Vec<u8>,
    /// Bytes of unfinished frames over all connections.
    partial_bytes: usize,
}

impl EventLoop {
    fn run(&mut self) {
        let mut ready = vec![EpollEvent::empty(); 256];
        loop {
            let timeout = match self.accept_paused_until {
                Some(until) => EpollTimeout::try_from(until.saturating_duration_since(Instant::now()))
                    .unwrap_or(EpollTimeout::ZERO),
                None => EpollTimeout::NONE,
            };
            let count = match self.epoll.wait(&mut ready, timeout) {
                Ok(count) => count,
                Err(Errno::EINTR) => continue,
                Err(err) => {
                    log::error!("client socket: epoll_wait: {err}; no more clients are served");
                    return;
                }
            };
            if self.accept_paused_until.is_some_and(|until| Instant::now() >= until) {
                self.accept_paused_until = None;
                let _ = self.epoll.add(&self.listener, EpollEvent::new(EpollFlags::EPOLLIN, LISTENER));
            }
            for event in &ready[..count] {
                match event.data() {
                    LISTENER => self.accept_all(),
                    client => self.on_ready(client, event.events()),
                }
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // Out of descriptors (EMFILE, ENFILE): pause rather than spin on a
                    // listener that stays readable.
                    log::warn!("client socket: accept: {err}; not accepting for {ACCEPT_PAUSE:?}");
                    let _ = self.epoll.delete(&self.listener);
                    self.accept_paused_until = Some(Instant::now() + ACCEPT_PAUSE);
                    return;
                }
            };
            if let Err(err) = self.add(stream) {
                log::warn!("client socket: {err}");
            }
        }
    }

    fn add(&mut self, stream: UnixStream) -> io::Result<()> {
        let client = self.next_client;
        self.next_client += 1;
        let pid = match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
            Ok(creds) => Some(creds.pid()),
            Err(err) => {
                log::warn!("client {client}: no peer credentials ({err}); it cannot be asked about by pid");
                None
            }
        };
        let refused = self.clients >= self.config.max_clients;
        if refused {
            let refusing = self.connections.len() - self.clients;
            self.log_refusal(pid);
            if refusing >= MAX_REFUSING {
                return Ok(()); // closed at once: too many waiting for their answer already
            }
        }
        stream.set_nonblocking(true)?;
        self.epoll
            .add(&stream, EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, client))
            .map_err(io::Error::from)?;
        let link = Arc::new(LinkShared {
            client,
            pid,
            stream,
            epoll: Arc::clone(&self.epoll),
            queue_limit: self.config.queue_limit,
            out: Mutex::new(Outgoing::default()),
        });
        if !refused {
            self.clients += 1;
            (self.events)(ClientEvent::Connected { client, pid, link: ClientLink(Arc::clone(&link)) });
        }
        self.connections.insert(client, Connection { link, partial: Vec::new(), refused });
        Ok(())
    }

    /// One line per second at most, however fast refused clients come back.
    fn log_refusal(&mut self, pid: Option<i32>) {
        let now = Instant::now();
        if self.refusals_logged_at.is_some_and(|at| now < at + Duration::from_secs(1)) {
            self.refusals_unlogged += 1;
            return;
        }
        let more = match std::mem::take(&mut self.refusals_unlogged) {
            0 => String::new(),
            n => format!(" ({n} more refused since the last line)"),
        };
        log::warn!(
            "client socket: refusing a connection from pid {}: {} clients connected, the limit \
             (--max-clients or open files) is {}{more}",
            pid.map_or("unknown".to_string(), |p| p.to_string()),
            self.clients,
            self.config.max_clients
        );
        self.refusals_logged_at = Some(now);
    }

    fn on_ready(&mut self, client: ClientId, flags: EpollFlags) {
        let Some(connection) = self.connections.get(&client) else { return };
        if flags.contains(EpollFlags::EPOLLOUT) {
            let link = &connection.link;
            link.flush(&mut link.out.lock());
        }
        if flags.intersects(
            EpollFlags::EPOLLIN | EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR | EpollFlags::EPOLLRDHUP,
        ) {
            if let Err(why) = self.read_frames(client) {
                self.remove(client, why);
            }
        }
    }

    /// Reads what the connection has (up to the budget) and handles every whole frame.
    /// `Err` ends the connection: `None` when the client closed it.
    fn read_frames(&mut self, client: ClientId) -> Result<(), Option<String>> {
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let connection = self.connections.get_mut(&client).ok_or(None)?;
            let before = connection.partial.len();
            let n = match nix::unistd::read(connection.link.stream.as_raw_fd(), &mut self.scratch[..budget]) {
                Ok(0) if connection.partial.is_empty() => return Err(None),
                Ok(0) => {
                    let held = connection.partial.len();
                    return Err(Some(format!("the connection ended {held} bytes into a frame")));
                }
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Ok(()),
                Err(err) => return Err(Some(format!("reading: {err}"))),
            };
            budget -= n;
            connection.partial.extend_from_slice(&self.scratch[..n]);
            let mut partial = std::mem::take(&mut connection.partial);
            let consumed = match self.handle_frames(client, &partial) {
                Ok(consumed) => consumed,
                Err(why) => {
                    self.partial_bytes = self.partial_bytes.saturating_sub(before);
                    return Err(why);
                }
            };
            partial.drain(..consumed);
            if partial.is_empty() && partial.capacity() > READ_BUDGET {
                partial = Vec::new(); // a large frame's buffer is not kept for an idle client
            }
            self.partial_bytes = self.partial_bytes.saturating_sub(before);
            let Some(connection) = self.connections.get_mut(&client) else { return Ok(()) };
            let held = partial.len();
            connection.partial = partial;
            self.partial_bytes += held;
            if self.partial_bytes > self.config.partial_budget {
                return Err(Some(format!(
                    "unfinished frames of all clients passed {} bytes, {held} of them this one's",
                    self.config.partial_budget
                )));
            }
        }
        Ok(())
    }

    /// Handles the whole frames at the start of `bytes`; returns how many bytes they took.
    fn handle_frames(&mut self, client: ClientId, bytes: &[u8]) -> Result<usize, Option<String>> {
        let mut at = 0;
        while let Some(len_bytes) = bytes.get(at..at + 4) {
            let len = u32::from_le_bytes(len_bytes.try_into().expect("4 bytes"));
            if (len as usize) < PACKET_HEADER_LEN {
                return Err(Some(ReadError::FrameTooShort { len }.to_string()));
            }
            if len as usize > MAX_PACKET_LEN {
                return Err(Some(ReadError::FrameTooLong { len, max: MAX_PACKET_LEN }.to_string()));
            }
            let Some(frame) = bytes.get(at..at + len as usize) else { break };
            at += frame.len();
            // Frames need not be padded (smbd's are not).
            let packet = decode_unpadded(frame).map_err(|e| Some(ReadError::Wire(e).to_string()))?;
            let connection = self.connections.get(&client).ok_or(None)?;
            if connection.refused {
                refuse(&connection.link, &packet, self.clients, self.config.max_clients);
                return Err(Some("refused: too many clients".into()));
            }
            (self.events)(ClientEvent::Packet { client, packet });
        }
        Ok(at)
    }

    /// Ends a connection; `why` is logged unless the client simply closed it.
    fn remove(&mut self, client: ClientId, why: Option<String>) {
        let Some(connection) = self.connections.remove(&client) else { return };
        self.partial_bytes = self.partial_bytes.saturating_sub(connection.partial.len());
        let link = &connection.link;
        if let Some(why) = why.filter(|_| !connection.refused) {
            let pid = link.pid.map_or("unknown".to_string(), |p| p.to_string());
            log::warn!("client {client} (pid {pid}): dropping the connection: {why}");
        }
        link.close(&mut link.out.lock());
        let _ = self.epoll.delete(&link.stream);
        if !connection.refused {
            self.clients -= 1;
            (self.events)(ClientEvent::Gone(client));
        }
    }
}

/// The answer to a refused client's first request: an error that says why.
fn refuse(link: &LinkShared, request: &Packet, clients: usize, max: usize) {
    let message =
        format!("rctdbd: too many clients ({clients} connected, the limit is {max}); try again later");
    let body = match request.body {
        Body::ReqControl(_) => {
            Body::ReplyControl(ReplyControl { status: -1, data: vec![], errmsg: message.into_bytes() })
        }
        _ => Body::ReplyError(ReplyError { status: -libc::EAGAIN, msg: message.into_bytes() }),
    };
    let reply = Packet { body, ..request.clone() };
    // Best effort: the socket of a new connection has room for one small packet.
    let _ = send(
        link.stream.as_fd().as_raw_fd(),
        &encode(&reply),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::read_packet;
    use crate::wire::ReqMessage;

    fn message(seq: u32, len: usize) -> Packet {
        let body = Body::Message(ReqMessage { srvid: 7, data: vec![seq as u8; len] });
        Packet { generation: 1, destnode: 0, srcnode: 0, reqid: seq, body }
    }

    /// A link over a socket pair, registered with an epoll as the loop would; the other end
    /// is the client.
    fn link(queue_limit: usize) -> (ClientLink, UnixStream) {
        let (ours, client) = UnixStream::pair().expect("socket pair");
        let epoll = Arc::new(Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC).expect("epoll"));
        epoll.add(&ours, EpollEvent::new(EpollFlags::EPOLLIN, 1)).expect("register");
        let shared = LinkShared {
            client: 1,
            pid: Some(4242),
            stream: ours,
            epoll,
            queue_limit,
            out: Mutex::new(Outgoing::default()),
        };
        (ClientLink(Arc::new(shared)), client)
    }

    #[test]
    fn a_client_that_does_not_read_is_cut_off_at_the_bound_without_blocking() {
        let (link, client) = link(1 << 20);
        for seq in 0..64 {
            link.send(&message(seq, 64 << 10)); // 4 MiB in all: never blocks
        }
        assert!(link.0.out.lock().closed, "disconnected past the bound");
        assert_eq!(link.0.out.lock().queued_bytes, 0, "its queue is freed");
        // What the socket took arrives whole and in order, then the end of the stream.
        let mut client = std::io::BufReader::new(client);
        let mut seq = 0;
        while let Ok(packet) = read_packet(&mut client, MAX_PACKET_LEN) {
            assert_eq!(packet.reqid, seq);
            seq += 1;
        }
        assert!(seq > 0 && seq < 64, "{seq} packets before the end");
    }

    #[test]
    fn one_packet_larger_than_the_bound_still_goes_to_a_reading_client() {
        let (link, client) = link(1 << 10);
        let reader = std::thread::spawn(move || read_packet(&mut &client, MAX_PACKET_LEN).map(|p| p.reqid));
        link.send(&message(9, 1 << 20));
        let out = &link.0;
        // The loop would flush on writability; here the test does, until the reader has it.
        while !out.out.lock().queue.is_empty() {
            out.flush(&mut out.out.lock());
            std::thread::yield_now();
        }
        assert!(!out.out.lock().closed);
        assert_eq!(reader.join().expect("reader").expect("the packet"), 9);
    }

    /// Unfinished frames are bounded over all clients: the client whose bytes pass the
    /// budget is dropped, the others keep their connections and are served.
    #[test]
    fn unfinished_frames_of_all_clients_are_bounded() {
        use std::io::{Read, Write};
        let dir = std::env::temp_dir().join(format!("rctdb-partial-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("sock");
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = Arc::clone(&served);
        let handler: ClientHandler = Arc::new(move |event| {
            if let ClientEvent::Packet { .. } = event {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        });
        let budget = 1 << 20;
        let config =
            ClientSocketConfig { group: None, max_clients: 16, queue_limit: 1 << 20, partial_budget: budget };
        listen(&path, config, handler).expect("listen");
        // Each declares a 1 MiB frame and sends 400 KiB of it: three pass the budget, two not.
        let header = |len: u32| {
            let mut frame = encode(&message(1, 0));
            frame[..4].copy_from_slice(&len.to_le_bytes());
            frame
        };
        let mut senders: Vec<UnixStream> =
            (0..3).map(|_| UnixStream::connect(&path).expect("connect")).collect();
        for sender in &mut senders {
            sender.write_all(&header(1 << 20)).expect("header");
            sender.write_all(&vec![0u8; 400 << 10]).expect("part of the body");
        }
        // Two fit the budget: whichever read passes it, only that client goes. Closed with
        // its bytes unread, its socket ends with a reset rather than an EOF.
        let dropped = senders
            .iter_mut()
            .filter(|sender| {
                sender.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
                match (&**sender).read(&mut [0u8; 16]) {
                    Ok(0) => true,
                    Err(err) => err.kind() == std::io::ErrorKind::ConnectionReset,
                    Ok(_) => panic!("a reply to an unfinished frame"),
                }
            })
            .count();
        assert_eq!(dropped, 1, "one client past the budget is dropped, no other");
        let mut other = UnixStream::connect(&path).expect("connect");
        other.write_all(&encode(&message(2, 10))).expect("a whole frame");
        let started = Instant::now();
        while served.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(started.elapsed() < Duration::from_secs(10), "a whole frame was not served");
            std::thread::yield_now();
        }
        drop(senders);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_socket_is_made_0660_with_its_group() {
        let dir = std::env::temp_dir().join(format!("rctdb-bind-private-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("sock");
        std::fs::write(&path, b"stale").expect("a stale file");
        let gid = if nix::unistd::geteuid().is_root() { Gid::from_raw(1) } else { nix::unistd::getegid() };
        let _listener = bind_private(&path, Some(gid)).expect("bind");
        let meta = std::fs::metadata(&path).expect("socket");
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), gid.as_raw());
        let left: Vec<_> = std::fs::read_dir(&dir).expect("dir").flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, vec![std::ffi::OsString::from("sock")], "no staging directory left");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
