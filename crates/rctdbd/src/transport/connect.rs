//! Opening sockets the way the transport needs them. std cannot bind the local side of a
//! connecting socket, and peers identify us by our source address (CTDB's rule), so the
//! outgoing connection is built from a raw socket: bind to our own IP, non-blocking
//! connect, wait with a deadline.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::socket::{
    bind, connect, getsockopt, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType,
    SockaddrStorage,
};

/// Connects to `remote` from `local_ip` (any local port), giving up after `timeout`.
pub fn connect_from(local_ip: IpAddr, remote: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let family = match remote {
        SocketAddr::V4(_) => AddressFamily::Inet,
        SocketAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd =
        socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK, None)?;
    bind(fd.as_raw_fd(), &SockaddrStorage::from(SocketAddr::new(local_ip, 0)))
        .map_err(|e| io::Error::other(format!("binding to {local_ip}: {e}")))?;
    match connect(fd.as_raw_fd(), &SockaddrStorage::from(remote)) {
        Ok(()) => {}
        Err(Errno::EINPROGRESS) => wait_connected(&fd, timeout)?,
        Err(e) => return Err(e.into()),
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// Waits until a non-blocking connect finishes, then reports its outcome.
fn wait_connected(fd: &OwnedFd, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        // Round up so a sub-millisecond remainder still waits rather than spins.
        let ms = u16::try_from(remaining.as_millis() + 1).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLOUT)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    match getsockopt(fd, sockopt::SocketError)? {
        0 => Ok(()),
        err => Err(io::Error::from_raw_os_error(err)),
    }
}

/// Every transport socket: no Nagle delay (a migration is a chain of small packets, each
/// waiting for the previous), and TCP keepalive so a vanished host is noticed eventually
/// even when we have nothing to send (CTDB sets both).
pub(crate) fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    setsockopt(stream, sockopt::KeepAlive, &true)?;
    Ok(())
}
