//! The client socket: local processes (librctdb, the `rctdb` tool) talk to their daemon over
//! a unix stream socket with the same packet framing as the node links. A reader and a
//! writer thread per connection keep the engine thread away from slow clients.

use std::io::{BufWriter, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use crossbeam_channel::{Receiver, Sender};

use crate::engine::ClientId;
use crate::wire::codec::{read_packet, write_packet, ReadError};
use crate::wire::{Packet, MAX_PACKET_LEN};

pub enum ClientEvent {
    Connected { client: ClientId, replies: Sender<Packet> },
    Packet { client: ClientId, packet: Packet },
    Gone(ClientId),
}

/// Binds the socket, replacing a stale socket file a dead daemon left behind (but never a
/// live daemon's), and serves connections on a background thread.
pub fn listen(path: &Path, events: Sender<ClientEvent>) -> std::io::Result<()> {
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

fn accept_loop(listener: UnixListener, events: Sender<ClientEvent>) {
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

fn serve(client: ClientId, stream: UnixStream, events: Sender<ClientEvent>) -> std::io::Result<()> {
    let (replies, outgoing) = crossbeam_channel::unbounded();
    let writer = stream.try_clone()?;
    thread::Builder::new().name(format!("client{client}-w")).spawn(move || write_loop(writer, outgoing))?;
    if events.send(ClientEvent::Connected { client, replies }).is_err() {
        return Ok(()); // the daemon is shutting down
    }
    thread::Builder::new()
        .name(format!("client{client}-r"))
        .spawn(move || read_loop(client, stream, events))?;
    Ok(())
}

fn read_loop(client: ClientId, mut stream: UnixStream, events: Sender<ClientEvent>) {
    loop {
        match read_packet(&mut stream, MAX_PACKET_LEN) {
            Ok(packet) => {
                if events.send(ClientEvent::Packet { client, packet }).is_err() {
                    return;
                }
            }
            Err(ReadError::Eof) => break,
            Err(err) => {
                log::warn!("client {client}: dropping the connection: {err}");
                break;
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
    let _ = events.send(ClientEvent::Gone(client));
}

fn write_loop(stream: UnixStream, outgoing: Receiver<Packet>) {
    let mut out = BufWriter::new(stream);
    while let Ok(packet) = outgoing.recv() {
        let mut result = write_packet(&mut out, &packet);
        // Batch what is queued already, then flush once.
        while let (Ok(()), Ok(next)) = (&result, outgoing.try_recv()) {
            result = write_packet(&mut out, &next);
        }
        if result.and_then(|()| out.flush()).is_err() {
            return; // the reader sees the broken connection and reports the client gone
        }
    }
}
