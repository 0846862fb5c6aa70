//! The client socket: local processes (librctdb, the `rctdb` tool) talk to their daemon over
//! a unix stream socket with the same packet framing as the node links. A reader thread per
//! connection handles its requests itself (under the node's mutex), and a writer thread
//! takes the replies a slow client cannot take at once, so nothing ever blocks on a client.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{Receiver, Sender};
use nix::errno::Errno;
use nix::sys::socket::{send, MsgFlags};

use crate::engine::ClientId;
use crate::wire::codec::{decode_unpadded, encode, read_frame, ReadError};
use crate::wire::{Packet, MAX_PACKET_LEN};

/// Handles client events on the thread that read them (under the node's mutex).
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

/// Binds the socket, replacing a stale socket file a dead daemon left behind (but never a
/// live daemon's), and serves connections on a background thread.
pub fn listen(path: &Path, events: ClientHandler) -> std::io::Result<()> {
    if UnixStream::connect(path).is_ok() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            format!("{}: another daemon is listening there", path.display()),
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    thread::Builder::new().name("clients".into()).spawn(move || accept_loop(listener, events))?;
    Ok(())
}

fn accept_loop(listener: UnixListener, events: ClientHandler) {
    static NEXT_CLIENT: AtomicU64 = AtomicU64::new(1);
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(stream) => stream,
            Err(err) => {
                log::warn!("client socket: accept: {err}");
                continue;
            }
        };
        let client = NEXT_CLIENT.fetch_add(1, Ordering::Relaxed);
        if let Err(err) = serve(client, stream, events.clone()) {
            log::warn!("client {client}: {err}");
        }
    }
}

/// The daemon's side of one client connection. Replies are written straight from the
/// thread that made them (under the node's mutex) when nothing is queued (one thread wakeup less per migration); a reply
/// that does not fit the socket buffer goes to the writer thread, in order.
pub struct ClientLink {
    stream: UnixStream,
    queue: Sender<Vec<u8>>,
    /// Frames handed to the writer thread and not yet written. Only code holding the node's
    /// mutex adds, so zero means the writer is idle and a direct write cannot overtake
    /// anything.
    queued: Arc<AtomicUsize>,
}

impl ClientLink {
    pub fn send(&self, packet: &Packet) {
        let frame = encode(packet);
        let written = if self.queued.load(Ordering::Acquire) == 0 {
            match send(self.stream.as_raw_fd(), &frame, MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => n,
                Err(Errno::EAGAIN) => 0,
                Err(_) => return, // the reader sees the broken connection and reports it
            }
        } else {
            0
        };
        if written < frame.len() {
            self.queued.fetch_add(1, Ordering::AcqRel);
            let _ = self.queue.send(frame[written..].to_vec());
        }
    }
}

fn serve(client: ClientId, stream: UnixStream, events: ClientHandler) -> std::io::Result<()> {
    let (queue, outgoing) = crossbeam_channel::unbounded();
    let queued = Arc::new(AtomicUsize::new(0));
    let writer = stream.try_clone()?;
    let writer_queued = queued.clone();
    thread::Builder::new()
        .name(format!("client{client}-w"))
        .spawn(move || write_loop(writer, outgoing, writer_queued))?;
    let pid = match nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(creds) => Some(creds.pid()),
        Err(err) => {
            log::warn!("client {client}: no peer credentials ({err}); it cannot be asked about by pid");
            None
        }
    };
    let link = ClientLink { stream: stream.try_clone()?, queue, queued };
    events(ClientEvent::Connected { client, pid, link });
    thread::Builder::new()
        .name(format!("client{client}-r"))
        .spawn(move || read_loop(client, stream, events))?;
    Ok(())
}

fn read_loop(client: ClientId, stream: UnixStream, events: ClientHandler) {
    // Buffered: a frame (and often the next) in one read instead of a read per field; one
    // frame buffer for the connection's life. Frames need not be padded (smbd's are not).
    let mut reader = std::io::BufReader::with_capacity(16 << 10, &stream);
    let mut frame = Vec::new();
    loop {
        let read = read_frame(&mut reader, MAX_PACKET_LEN, &mut frame)
            .and_then(|()| decode_unpadded(&frame).map_err(ReadError::Wire));
        match read {
            Ok(packet) => events(ClientEvent::Packet { client, packet }),
            Err(ReadError::Eof) => break,
            Err(err) => {
                log::warn!("client {client}: dropping the connection: {err}");
                break;
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    events(ClientEvent::Gone(client));
}

fn write_loop(mut stream: UnixStream, outgoing: Receiver<Vec<u8>>, queued: Arc<AtomicUsize>) {
    while let Ok(frame) = outgoing.recv() {
        let result = stream.write_all(&frame);
        queued.fetch_sub(1, Ordering::AcqRel);
        if result.is_err() {
            return; // the reader sees the broken connection and reports the client gone
        }
    }
}
