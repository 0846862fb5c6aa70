//! The daemon's side of its fencing watchdog (`rctdbd --fence-watchdog`, `super::watchdog`):
//! a process every node starts beside itself, that fences the node's local clients when the
//! daemon stalls past its lease. The daemon tells it, over a socket pair (the watchdog's
//! standard input), one line each:
//!
//! - `L NS`: the node may hold records until NS on CLOCK_MONOTONIC (its lease's end, moved
//!   from the engine's clock to the machine's; both are CLOCK_MONOTONIC); `L -`: it holds
//!   none. Sent at every engine tick, so a later line says the daemon ran.
//! - `+ PID`, `- PID`: a client connection of process PID attached a database, asked for a
//!   record or registered for messages (only such a client can use records: smbd and each
//!   of its children; status and tool connections are never fenced), or closed.
//!
//! When a lease it was told of ends and no line came since, the watchdog kills those
//! clients and freezes the databases, and hands the freeze back on the same socket
//! (SCM_RIGHTS, as the lock watchdog does): the daemon adopts it when it runs again.

use std::fs::File;
use std::io::{self, IoSliceMut};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cluster_lock::HandedFreeze;

/// What the daemon tells its fencing watchdog.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceNote {
    /// The lease's end on CLOCK_MONOTONIC, in nanoseconds; `None`: no lease held.
    Lease(Option<u64>),
    Attached(i32),
    Detached(i32),
}

impl FenceNote {
    pub fn encode(&self) -> String {
        match self {
            FenceNote::Lease(Some(end)) => format!("L {end}\n"),
            FenceNote::Lease(None) => "L -\n".to_string(),
            FenceNote::Attached(pid) => format!("+ {pid}\n"),
            FenceNote::Detached(pid) => format!("- {pid}\n"),
        }
    }

    /// One line, without its newline.
    pub fn parse(line: &str) -> Result<FenceNote, String> {
        let (kind, value) = line.split_once(' ').ok_or_else(|| format!("fence note {line:?}: no value"))?;
        let pid = || value.parse::<i32>().map_err(|_| format!("fence note {line:?}: not a pid"));
        match kind {
            "L" if value == "-" => Ok(FenceNote::Lease(None)),
            "L" => value
                .parse::<u64>()
                .map(|end| FenceNote::Lease(Some(end)))
                .map_err(|_| format!("fence note {line:?}: not a time")),
            "+" => Ok(FenceNote::Attached(pid()?)),
            "-" => Ok(FenceNote::Detached(pid()?)),
            _ => Err(format!("fence note {line:?}: unknown kind")),
        }
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds (what `Instant` reads on Linux).
pub fn monotonic_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(now) => now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64,
        // Never on Linux; 0 makes any lease look over, which fences rather than trusts.
        Err(_) => 0,
    }
}

/// `at` on CLOCK_MONOTONIC, in nanoseconds.
pub fn instant_ns(at: Instant) -> u64 {
    let (now, now_ns) = (Instant::now(), monotonic_ns());
    match at.checked_duration_since(now) {
        Some(ahead) => now_ns.saturating_add(ahead.as_nanos() as u64),
        None => now_ns.saturating_sub(now.duration_since(at).as_nanos() as u64),
    }
}

/// The running watchdog, from the daemon's side. Dropping it closes the socket: the
/// watchdog then ends (a daemon that is gone has nothing left to fence for).
pub struct FenceWatchdog {
    socket: UnixStream,
    /// What could not be written yet (the watchdog reads slowly, or not at all).
    unsent: Vec<u8>,
    pid: u32,
    /// The socket failed (the watchdog is gone): said once, then nothing more is sent.
    broken: bool,
}

/// Notes waiting past this many bytes mean the watchdog does not read: lease lines are
/// then left out (an older lease is the safer one), client lines never.
const UNSENT_LEASE_LIMIT: usize = 4096;

impl FenceWatchdog {
    /// Starts `program --fence-watchdog DBDIR FREEZE_MS GRACE_MS DAEMON_PID`; what it hands
    /// back goes into `handed`.
    pub fn start(
        program: &Path,
        dbdir: &Path,
        freeze: Duration,
        grace: Duration,
        handed: HandedFreeze,
    ) -> io::Result<FenceWatchdog> {
        let (ours, theirs) = UnixStream::pair()?;
        let child = Command::new(program)
            .arg(super::watchdog::FENCE_MODE_FLAG)
            .arg(dbdir)
            .arg(freeze.as_millis().to_string())
            .arg(grace.as_millis().to_string())
            .arg(std::process::id().to_string())
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .spawn()?;
        let pid = child.id();
        let reader = ours.try_clone()?;
        std::thread::Builder::new()
            .name("fence-watchdog".into())
            .spawn(move || receive_freezes(reader, child, handed))?;
        log::info!("fencing watchdog started (pid {pid}) for {}", dbdir.display());
        Ok(FenceWatchdog { socket: ours, unsent: vec![], pid, broken: false })
    }

    pub fn tell(&mut self, note: FenceNote) {
        if self.broken || matches!(note, FenceNote::Lease(_)) && self.unsent.len() > UNSENT_LEASE_LIMIT {
            return;
        }
        self.unsent.extend_from_slice(note.encode().as_bytes());
        self.flush();
    }

    /// Writes what the socket takes without blocking (per call: the reader thread shares the
    /// socket's description, and must block).
    fn flush(&mut self) {
        use nix::sys::socket::{send, MsgFlags};
        while !self.unsent.is_empty() {
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match send(self.socket.as_raw_fd(), &self.unsent, flags) {
                Ok(written) => {
                    self.unsent.drain(..written);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(err) => {
                    log::error!("fencing watchdog (pid {}): {err}; the node is not fenced", self.pid);
                    self.broken = true;
                    return self.unsent.clear();
                }
            }
        }
    }
}

/// Takes in the freezes the watchdog hands over, until it ends; then reaps it.
fn receive_freezes(socket: UnixStream, mut child: std::process::Child, handed: HandedFreeze) {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 64];
    loop {
        let mut rights = nix::cmsg_space!([std::os::fd::RawFd; 253]);
        let mut iov = [IoSliceMut::new(&mut byte)];
        let received =
            recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut rights), MsgFlags::MSG_CMSG_CLOEXEC);
        let message = match received {
            Ok(message) => message,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(err) => {
                log::error!("fencing watchdog: reading its socket: {err}");
                break;
            }
        };
        let mut handed = handed.lock();
        if let Ok(controls) = message.cmsgs() {
            for control in controls {
                if let ControlMessageOwned::ScmRights(fds) = control {
                    // SAFETY: SCM_RIGHTS made these descriptors for us alone.
                    handed.extend(fds.into_iter().map(|fd| unsafe { File::from_raw_fd(fd) }));
                }
            }
        }
        if message.bytes == 0 {
            break;
        }
    }
    let status = child.wait().map_or_else(|err| err.to_string(), |status| status.to_string());
    log::error!("fencing watchdog ended ({status}); this node's clients are not fenced any more");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_round_trip() {
        for note in [
            FenceNote::Lease(Some(123_456_789_012)),
            FenceNote::Lease(None),
            FenceNote::Attached(42),
            FenceNote::Detached(7),
        ] {
            let line = note.encode();
            assert_eq!(FenceNote::parse(line.trim_end()), Ok(note));
        }
        for bad in ["L", "L x", "+ -", "? 1", ""] {
            assert!(FenceNote::parse(bad).is_err(), "{bad:?} is refused");
        }
    }

    #[test]
    fn instants_map_onto_the_monotonic_clock() {
        let now = Instant::now();
        let (later, earlier) = (now + Duration::from_millis(300), now - Duration::from_millis(1));
        let (now_ns, later_ns, earlier_ns) = (instant_ns(now), instant_ns(later), instant_ns(earlier));
        let apart = later_ns - now_ns;
        assert!((299_000_000..=301_000_000).contains(&apart), "300 ms apart: {apart} ns");
        assert!(earlier_ns < now_ns && now_ns <= monotonic_ns());
    }
}
