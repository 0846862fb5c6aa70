//! Many idle client processes on one node, as smbd forks one per SMB client: each connects,
//! attaches a database, migrates one record of its own here, and then waits, connected,
//! until released. For the scale test and `rctdb bench clients`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};

use crate::client::DaemonConnection;

/// The processes; dropping this releases them and reaps them.
pub struct IdleClients {
    pids: Vec<Pid>,
    /// Every child blocks reading the other end of this pipe: closing it releases them all.
    release: Option<OwnedFd>,
}

impl IdleClients {
    /// Forks `count` clients of the node at `socket` and returns once each has attached `db`
    /// and holds its record, or fails after `timeout`. The children only make system calls
    /// and allocate (glibc's malloc is usable after fork), so the caller may have threads.
    pub fn spawn(socket: &Path, db: &str, count: usize, timeout: Duration) -> Result<IdleClients, String> {
        let (ready_r, ready_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
        let (release_r, release_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
        let mut clients = IdleClients { pids: Vec::with_capacity(count), release: Some(release_w) };
        for index in 0..count {
            // SAFETY: the child runs `idle_client`, which makes system calls, allocates and
            // leaves with _exit: nothing that needs another thread of the parent.
            match unsafe { fork() } {
                Ok(ForkResult::Child) => {
                    drop(clients.release.take());
                    let status = idle_client(socket, db, index, &ready_w, &release_r);
                    // SAFETY: _exit skips the parent's atexit handlers and buffered output.
                    unsafe { libc::_exit(status) }
                }
                Ok(ForkResult::Parent { child }) => clients.pids.push(child),
                Err(err) => return Err(format!("fork of idle client {index}: {err}")),
            }
        }
        drop(ready_w);
        drop(release_r);
        clients.wait_ready(&ready_r, count, timeout)?;
        Ok(clients)
    }

    pub fn pids(&self) -> &[Pid] {
        &self.pids
    }

    fn wait_ready(&self, ready: &OwnedFd, count: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut ready_count = 0;
        let mut buf = [0u8; 256];
        while ready_count < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{ready_count} of {count} idle clients attached within {timeout:?}"));
            }
            let mut fds = libc::pollfd { fd: ready.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd that lives across the call.
            if unsafe { libc::poll(&mut fds, 1, left.as_millis().clamp(1, 1000) as i32) } <= 0 {
                continue;
            }
            let n = nix::unistd::read(ready.as_raw_fd(), &mut buf).map_err(|e| format!("read: {e}"))?;
            if n == 0 {
                return Err(format!("idle clients exited: {ready_count} of {count} attached"));
            }
            if let Some(pos) = buf[..n].iter().position(|&b| b != b'R') {
                return Err(format!(
                    "an idle client failed (after {} attached); see its message above",
                    ready_count + pos
                ));
            }
            ready_count += n;
        }
        Ok(())
    }
}

/// The child: returns its exit status.
fn idle_client(socket: &Path, db: &str, index: usize, ready: &OwnedFd, release: &OwnedFd) -> i32 {
    let timeout = Duration::from_secs(30);
    let attached = DaemonConnection::connect(socket).and_then(|mut daemon| {
        let db_id = daemon.attach(db, timeout)?.db_id;
        daemon.migrate(db_id, format!("idle-{index}").as_bytes(), false, timeout)?;
        Ok(daemon)
    });
    let daemon = match attached {
        Ok(daemon) => daemon,
        Err(err) => {
            eprintln!("idle client {index}: {err}");
            let _ = nix::unistd::write(ready, b"E");
            return 1;
        }
    };
    let _ = nix::unistd::write(ready, b"R");
    let mut byte = [0u8; 1];
    // Returns at EOF, when the parent closes its end (or dies).
    while matches!(nix::unistd::read(release.as_raw_fd(), &mut byte), Err(nix::errno::Errno::EINTR)) {}
    drop(daemon);
    0
}

impl Drop for IdleClients {
    fn drop(&mut self) {
        drop(self.release.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        for &pid in &self.pids {
            loop {
                match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(2)); // polling for exits
                    }
                    Ok(WaitStatus::StillAlive) => {
                        let _ = kill(pid, Signal::SIGKILL);
                        let _ = waitpid(pid, None);
                        break;
                    }
                    _ => break,
                }
            }
        }
    }
}
