//! The cluster lock (CTDB's "recovery lock"): only the node that holds it may lead the
//! cluster. Either an fcntl lock on a file every node sees, taken in-process, or CTDB's
//! cluster mutex helper protocol: a command (given as `!COMMAND ARGS`) that prints one
//! character, `0` held, `1` contention, `2` timeout, `3` error, and after `0` keeps running
//! for as long as it holds the lock. Samba's `ctdb_mutex_fcntl_helper FILE` works unchanged.
//!
//! The daemon never holds the lock itself: a watchdog process (`rctdbd --lock-watchdog`,
//! `super::watchdog`) takes it and holds it for as long as the daemon's engine keeps
//! beating (`ClusterLock::beat`), and speaks the helper protocol back. So nothing slow (an
//! open or fcntl on a shared filesystem) runs in the daemon, and a daemon that stops or
//! wedges loses the lock within a bound. Nothing here blocks the caller (who holds the
//! node's mutex): the answer arrives on a channel, and each child is watched by a thread of
//! its own.

use std::ffi::OsString;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::Sender;
use nix::errno::Errno;
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use parking_lot::Mutex;

/// What `--cluster-lock` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterLockSpec {
    /// A file on storage every node sees, locked in-process.
    File(PathBuf),
    /// A cluster mutex helper and its arguments.
    Helper { program: PathBuf, args: Vec<String> },
}

impl ClusterLockSpec {
    /// `!COMMAND ARGS` (arguments split on whitespace, as CTDB does) names a helper;
    /// anything else, taken verbatim, names a file.
    pub fn parse(text: &str) -> Result<ClusterLockSpec, String> {
        if let Some(command) = text.strip_prefix('!') {
            let mut words = command.split_whitespace();
            let program =
                words.next().ok_or_else(|| format!("cluster lock {text:?}: no command after '!'"))?;
            let args = words.map(String::from).collect();
            return Ok(ClusterLockSpec::Helper { program: PathBuf::from(program), args });
        }
        if text.trim().is_empty() {
            return Err("cluster lock: empty file name".to_string());
        }
        Ok(ClusterLockSpec::File(PathBuf::from(text)))
    }

    /// The text `parse` reads back as this spec: how it is handed to the watchdog.
    pub fn to_arg(&self) -> OsString {
        match self {
            ClusterLockSpec::File(path) => path.as_os_str().to_owned(),
            ClusterLockSpec::Helper { program, args } => {
                let mut text = OsString::from("!");
                text.push(program.as_os_str());
                for arg in args {
                    text.push(" ");
                    text.push(arg);
                }
                text
            }
        }
    }
}

/// What the watchdog that holds the lock for the daemon needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogConfig {
    /// The rctdbd executable, run as `rctdbd --lock-watchdog`.
    pub program: PathBuf,
    /// The node's database directory, whose databases the watchdog freezes.
    pub dbdir: PathBuf,
    /// Beats missing for this long mean the daemon's engine is stuck.
    pub stall: Duration,
    /// How long the watchdog waits for the databases' freeze before it lets the lock go.
    pub freeze: Duration,
}

pub use crate::engine::LockOutcome;

/// One attempt at the cluster lock, and the lock itself while held. Dropping it releases.
pub struct ClusterLock {
    state: State,
}

enum State {
    /// The attempt failed, or the lock was released.
    Idle,
    /// Closing the file (a description of its own) drops its OFD lock.
    File {
        path: PathBuf,
        file: File,
    },
    Helper(HelperHandle),
}

/// The caller's side of a helper (or watchdog) watched by a thread.
struct HelperHandle {
    pid: u32,
    reporter: Reporter,
    /// The watchdog's input, where the engine beats; closing it makes the watchdog let go.
    beats: Option<ChildStdin>,
    /// Closing this write end wakes the watcher, which then terminates and reaps the helper.
    stop: OwnedFd,
    /// `None` once taken by a test that joins it.
    watcher: Option<JoinHandle<()>>,
}

impl ClusterLock {
    /// Starts one attempt through a watchdog process that takes the lock and holds it while
    /// `beat` is called; its outcome (and later, for a held lock, `Lost`) arrives on `events`
    /// exactly once each, unless the attempt is released first. `events` should be
    /// unbounded: a watcher sends while holding a lock that `release` takes. A watchdog that
    /// fences the node puts its freeze in `handed` before the loss is reported.
    pub fn attempt(
        spec: &ClusterLockSpec,
        watchdog: &WatchdogConfig,
        events: Sender<LockOutcome>,
        handed: HandedFreeze,
    ) -> ClusterLock {
        let mut command = Command::new(&watchdog.program);
        command
            .arg(super::watchdog::MODE_FLAG)
            .arg(watchdog.stall.as_millis().to_string())
            .arg(watchdog.freeze.as_millis().to_string())
            .arg(&watchdog.dbdir)
            .arg(spec.to_arg());
        start_child(command, ChildKind::Watchdog, events, handed)
    }

    /// Takes the lock in this process (the watchdog's side): an OFD lock on the file, or a
    /// helper that is this process's child. Same outcomes as `attempt`.
    pub fn attempt_here(spec: &ClusterLockSpec, events: Sender<LockOutcome>) -> ClusterLock {
        match spec {
            ClusterLockSpec::File(path) => lock_file(path, &events),
            ClusterLockSpec::Helper { program, args } => {
                let mut command = Command::new(program);
                command.args(args);
                start_child(command, ChildKind::Helper, events, HandedFreeze::default())
            }
        }
    }

    /// An attempt that failed before it began (its error was sent already).
    pub fn idle() -> ClusterLock {
        ClusterLock { state: State::Idle }
    }

    /// Tells the watchdog that the engine made progress. Never blocks: a full pipe means the
    /// watchdog has beats enough to read.
    pub fn beat(&mut self) {
        let State::Helper(HelperHandle { beats: Some(beats), .. }) = &mut self.state else { return };
        match beats.write(b".") {
            Ok(_) => {}
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            // Gone: its watcher reports the loss.
            Err(err) => log::debug!("beating the cluster lock watchdog: {err}"),
        }
    }

    /// Gives the lock up and waits until its holder ended (bounded: a helper that ignores
    /// SIGTERM is killed). For the watchdog, which must not outlive the helper it runs.
    pub fn release_and_wait(mut self) {
        let watcher = match &mut self.state {
            State::Helper(handle) => handle.watcher.take(),
            _ => None,
        };
        self.release();
        if let Some(watcher) = watcher {
            if watcher.join().is_err() {
                log::error!("the cluster lock watcher thread panicked");
            }
        }
    }

    /// Gives the lock up, or abandons an attempt still in progress: closes the file, or has
    /// the watcher SIGTERM and reap the helper. Returns at once; no outcome is sent after it.
    pub fn release(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => {}
            State::File { path, file } => {
                drop(file);
                log::info!("released the cluster lock on {}", path.display());
            }
            State::Helper(handle) => {
                handle.reporter.silence();
                log::debug!("releasing the cluster lock attempt of pid {}", handle.pid);
                drop(handle.beats);
                drop(handle.stop);
                // A running watcher is detached: it reaps the helper in its own time. One that
                // has already ended is joined, so that a panic in it does not go unseen.
                if let Some(watcher) = handle.watcher.filter(|watcher| watcher.is_finished()) {
                    if watcher.join().is_err() {
                        log::error!("the cluster lock watcher thread panicked");
                    }
                }
            }
        }
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Takes a non-blocking write lock on the whole file. An OFD lock belongs to this open
/// description, not to the process, so it is independent of the daemon's other fcntl locks
/// (which a close of any descriptor of the file would otherwise drop). It still conflicts
/// with the process-owned lock `ctdb_mutex_fcntl_helper` takes on byte 0.
fn lock_file(path: &Path, events: &Sender<LockOutcome>) -> ClusterLock {
    let (state, outcome) = match try_lock_file(path) {
        Ok(Some(file)) => {
            log::info!("took the cluster lock on {}", path.display());
            (State::File { path: path.to_path_buf(), file }, LockOutcome::Held)
        }
        Ok(None) => {
            log::debug!("cluster lock on {} is held by someone else", path.display());
            (State::Idle, LockOutcome::Contention)
        }
        Err(err) => {
            log::error!("{err}");
            (State::Idle, LockOutcome::Error(err))
        }
    };
    send(events, outcome);
    ClusterLock { state }
}

/// The locked file, `None` on contention.
fn try_lock_file(path: &Path) -> Result<Option<File>, String> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        // Other nodes' locks live on this file: never truncate it.
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("opening cluster lock file {}: {e}", path.display()))?;
    // SAFETY: flock is a plain C struct for which all-zero bytes are a valid value.
    let mut whole_file: libc::flock = unsafe { std::mem::zeroed() };
    whole_file.l_type = libc::F_WRLCK as libc::c_short;
    whole_file.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start 0 and l_len 0: from the start to whatever the end becomes; l_pid must be 0.
    loop {
        match fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLK(&whole_file)) {
            Ok(_) => return Ok(Some(file)),
            Err(Errno::EINTR) => continue,
            Err(Errno::EAGAIN | Errno::EACCES) => return Ok(None),
            Err(err) => return Err(format!("locking cluster lock file {}: {err}", path.display())),
        }
    }
}

fn send(events: &Sender<LockOutcome>, outcome: LockOutcome) {
    if events.send(outcome).is_err() {
        log::debug!("nobody listens for cluster lock outcomes any more");
    }
}

/// Sends a helper's outcomes until the attempt is released. The check and the send happen
/// under one lock, so that nothing is sent once `release` has returned.
#[derive(Clone)]
struct Reporter {
    events: Sender<LockOutcome>,
    released: Arc<Mutex<bool>>,
}

impl Reporter {
    fn send(&self, outcome: LockOutcome) {
        let released = self.released.lock();
        if *released {
            log::debug!("cluster lock released; not reporting {outcome:?}");
            return;
        }
        send(&self.events, outcome);
    }

    fn silence(&self) {
        *self.released.lock() = true;
    }
}

/// Where a fencing watchdog's freeze is put for the node: database files it froze, handed
/// over before it reported the loss, each an open file description holding an OFD write
/// lock over every chain of one database. The node adopts them as its own freeze.
pub type HandedFreeze = Arc<Mutex<Vec<File>>>;

/// What a watched child is: a helper speaking CTDB's protocol, or our watchdog, which
/// speaks the same protocol and also reads the engine's beats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChildKind {
    Helper,
    Watchdog,
}

/// How long a helper has to end after SIGTERM before it is killed: one that ignores it
/// would hold the lock for ever.
const TERM_GRACE: Duration = Duration::from_millis(500);
/// How long the watchdog has to let go after its input closed: its helper's grace, and
/// some. It is not signalled first: killed, it would leave its helper behind.
const WATCHDOG_GRACE: Duration = Duration::from_millis(2000);

fn start_child(
    mut command: Command,
    kind: ChildKind,
    events: Sender<LockOutcome>,
    handed: HandedFreeze,
) -> ClusterLock {
    let name = match kind {
        ChildKind::Helper => format!("helper {}", command.get_program().to_string_lossy()),
        ChildKind::Watchdog => {
            format!("watchdog {} {}", command.get_program().to_string_lossy(), super::watchdog::MODE_FLAG)
        }
    };
    let failed = |err: String| {
        log::error!("{err}");
        send(&events, LockOutcome::Error(err));
        ClusterLock { state: State::Idle }
    };
    // Close-on-exec: were the child to inherit the write end, closing ours would not wake
    // the watcher.
    let (stop_read, stop_write) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(ends) => ends,
        Err(err) => return failed(format!("cluster lock {name}: creating a pipe: {err}")),
    };
    // The watchdog's output is a socket: it hands its freeze over through it (SCM_RIGHTS).
    let (stdin, stdout, socket) = match kind {
        ChildKind::Helper => (Stdio::null(), Stdio::piped(), None),
        ChildKind::Watchdog => match UnixStream::pair() {
            Ok((ours, theirs)) => (Stdio::piped(), Stdio::from(OwnedFd::from(theirs)), Some(ours)),
            Err(err) => return failed(format!("cluster lock {name}: creating a socket pair: {err}")),
        },
    };
    // A helper stays its parent's child: ctdb_mutex_fcntl_helper drops the lock when its
    // parent (getppid) goes away, so the lock dies with the watchdog.
    let spawned = command.stdin(stdin).stdout(stdout).spawn();
    // Our copy of the child's end is gone with `command`: only the child has it now.
    drop(command);
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => return failed(format!("starting cluster lock {name}: {err}")),
    };
    let pid = child.id();
    let beats = child.stdin.take();
    if let Some(beats) = &beats {
        if let Err(err) = nix::fcntl::fcntl(beats.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)) {
            log::warn!("cluster lock watchdog: its input stays blocking: {err}");
        }
    }
    let output = match socket {
        Some(socket) => Some(File::from(OwnedFd::from(socket))),
        None => child.stdout.take().map(|stdout| File::from(OwnedFd::from(stdout))),
    };
    let Some(output) = output else {
        drop(beats);
        terminate(&mut child, kind, &name);
        return failed(format!("cluster lock {name}: no pipe to its output"));
    };
    log::debug!("started cluster lock {name}, pid {pid}");
    let reporter = Reporter { events: events.clone(), released: Arc::new(Mutex::new(false)) };
    let watcher = HelperWatcher {
        name: name.clone(),
        kind,
        child,
        output,
        stop: stop_read,
        reporter: reporter.clone(),
        handed,
    };
    match std::thread::Builder::new().name("cluster-lock".to_string()).spawn(move || watcher.run()) {
        Ok(watcher) => ClusterLock {
            state: State::Helper(HelperHandle {
                pid,
                reporter,
                beats,
                stop: stop_write,
                watcher: Some(watcher),
            }),
        },
        Err(err) => {
            // The Child went with the closure, unreaped, so its pid is still the helper's.
            if let Ok(raw) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(Pid::from_raw(raw), None);
            }
            failed(format!("cluster lock {name}: starting its watcher thread: {err}"))
        }
    }
}

/// Ends a child and reaps it, in bounded time: a helper gets SIGTERM, as from CTDB, the
/// watchdog the end of its input (closed by the caller), and either is killed if still
/// there after its grace. The child is not reaped before this, so its pid cannot have been
/// reused.
fn terminate(child: &mut Child, kind: ChildKind, name: &str) {
    if let Ok(Some(status)) = child.try_wait() {
        return log::debug!("cluster lock {name} ended: {status}");
    }
    let pid = i32::try_from(child.id()).ok().map(Pid::from_raw);
    let grace = match kind {
        ChildKind::Helper => {
            if let Some(Err(err)) = pid.map(|pid| kill(pid, Signal::SIGTERM)) {
                log::debug!("cluster lock {name}: SIGTERM: {err}");
            }
            TERM_GRACE
        }
        ChildKind::Watchdog => WATCHDOG_GRACE,
    };
    if !ends_within(child, grace) {
        log::warn!("cluster lock {name} still runs {grace:?} after being told to end; killing it");
        if let Some(Err(err)) = pid.map(|pid| kill(pid, Signal::SIGKILL)) {
            log::warn!("cluster lock {name}: SIGKILL: {err}");
        }
    }
    match child.wait() {
        Ok(status) => log::debug!("cluster lock {name} ended: {status}"),
        Err(err) => log::warn!("cluster lock {name}: waiting for it: {err}"),
    }
}

/// Whether the child exits within `limit`, watched through a pidfd (not reaped here).
fn ends_within(child: &Child, limit: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, child.id() as libc::pid_t, 0) };
    let Ok(raw) = i32::try_from(raw) else { return false };
    if raw < 0 {
        log::debug!("pidfd_open: {}", io::Error::last_os_error());
        return false;
    }
    // SAFETY: `raw` is a descriptor pidfd_open just made for us alone.
    let pidfd = unsafe { OwnedFd::from_raw_fd(raw) };
    let timeout = PollTimeout::try_from(limit).unwrap_or(PollTimeout::MAX);
    loop {
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(ready) => return ready > 0,
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

enum Wake {
    Output,
    Stopped,
}

/// The thread's side of a helper: reads its answer, then watches for its death (the lock is
/// lost) or the release (the helper is terminated).
struct HelperWatcher {
    name: String,
    kind: ChildKind,
    child: Child,
    /// Its output: a pipe from a helper, a socket from the watchdog.
    output: File,
    handed: HandedFreeze,
    stop: OwnedFd,
    reporter: Reporter,
}

impl HelperWatcher {
    fn run(mut self) {
        let Some(outcome) = self.read_answer() else {
            log::debug!("cluster lock {}: attempt abandoned", self.name);
            return terminate(&mut self.child, self.kind, &self.name);
        };
        match &outcome {
            LockOutcome::Held => log::info!("took the cluster lock through {}", self.name),
            LockOutcome::Error(err) => log::error!("{err}"),
            other => log::debug!("cluster lock {}: {other:?}", self.name),
        }
        let held = outcome == LockOutcome::Held;
        self.reporter.send(outcome);
        if held {
            if let Some(why) = self.wait_for_loss() {
                log::warn!("lost the cluster lock held by {}: {why}", self.name);
                self.reporter.send(LockOutcome::Lost);
                if self.kind == ChildKind::Watchdog {
                    // It holds the node's databases frozen until the engine, which may be the
                    // very thing that is stuck, has taken the loss in and released it.
                    self.wait_for_release();
                }
            }
        }
        // Reaped for every outcome; a helper that answered anything but `0` holds nothing.
        terminate(&mut self.child, self.kind, &self.name);
    }

    /// The helper's one-character answer, or `None` if released before it came.
    fn read_answer(&mut self) -> Option<LockOutcome> {
        let mut byte = [0u8; 1];
        loop {
            match self.wait() {
                Ok(Wake::Stopped) => return None,
                Ok(Wake::Output) => {}
                Err(err) => return Some(self.error(format!("watching its output: {err}"))),
            }
            match self.output.read(&mut byte) {
                Ok(0) => {
                    let note = self.exit_note();
                    return Some(self.error(format!("ended without answering{note}")));
                }
                Ok(_) => return Some(self.outcome_of(byte[0])),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Some(self.error(format!("reading its answer: {err}"))),
            }
        }
    }

    fn outcome_of(&self, answer: u8) -> LockOutcome {
        match answer {
            b'0' => LockOutcome::Held,
            b'1' => LockOutcome::Contention,
            b'2' => LockOutcome::Timeout,
            b'3' => self.error("reported an error (3)".to_string()),
            other => self.error(format!("answered {:?}, not one of 0-3", char::from(other))),
        }
    }

    fn error(&self, what: String) -> LockOutcome {
        LockOutcome::Error(format!("cluster lock {}: {what}", self.name))
    }

    fn exit_note(&mut self) -> String {
        match self.child.try_wait() {
            Ok(Some(status)) => format!(" ({status})"),
            _ => String::new(),
        }
    }

    /// Waits while the helper holds the lock: `None` once released, else why it was lost.
    fn wait_for_loss(&mut self) -> Option<String> {
        let mut chatter = [0u8; 64];
        loop {
            match self.wait() {
                Ok(Wake::Stopped) => {
                    self.drain_handed_freeze();
                    return None;
                }
                Ok(Wake::Output) => {}
                // Unwatched, the lock is as good as lost: say so, and let it go.
                Err(err) => return Some(format!("cannot watch its output any more: {err}")),
            }
            match self.receive(&mut chatter) {
                Ok(0) => return Some(format!("its output closed{}", self.exit_note())),
                Ok(n) => log::debug!(
                    "cluster lock {} wrote {:?} while holding the lock; ignored",
                    self.name,
                    String::from_utf8_lossy(&chatter[..n])
                ),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Some(format!("reading its output: {err}")),
            }
        }
    }

    /// Released while a fencing watchdog's freeze may wait in the socket (the node stepped
    /// down for another reason first): take it in, so the node can still adopt it. Unread,
    /// in-flight descriptions keep their locks, so none is lost meanwhile.
    fn drain_handed_freeze(&mut self) {
        if self.kind != ChildKind::Watchdog {
            return;
        }
        let mut chatter = [0u8; 64];
        while let Ok(1..) = self.receive_with(&mut chatter, nix::sys::socket::MsgFlags::MSG_DONTWAIT) {}
    }

    fn receive(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.receive_with(buf, nix::sys::socket::MsgFlags::empty())
    }

    /// Reads what it says; from the watchdog, also the descriptions it hands over, which go
    /// where the node looks for them.
    fn receive_with(&mut self, buf: &mut [u8], flags: nix::sys::socket::MsgFlags) -> io::Result<usize> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        if self.kind == ChildKind::Helper {
            return self.output.read(buf);
        }
        let mut rights = nix::cmsg_space!([std::os::fd::RawFd; 253]);
        let mut iov = [io::IoSliceMut::new(buf)];
        let flags = flags | MsgFlags::MSG_CMSG_CLOEXEC;
        let message = recvmsg::<()>(self.output.as_raw_fd(), &mut iov, Some(&mut rights), flags)?;
        let mut handed = self.handed.lock();
        for control in message.cmsgs()? {
            if let ControlMessageOwned::ScmRights(fds) = control {
                // SAFETY: SCM_RIGHTS made these descriptors for us alone.
                handed.extend(fds.into_iter().map(|fd| unsafe { File::from_raw_fd(fd) }));
            }
        }
        Ok(message.bytes)
    }

    /// Blocks until the lock is released (`release`, or the handle dropped).
    fn wait_for_release(&self) {
        loop {
            let mut fds = [PollFd::new(self.stop.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Err(Errno::EINTR) => continue,
                Err(err) => return log::error!("cluster lock {}: waiting for the release: {err}", self.name),
                Ok(_) => return,
            }
        }
    }

    /// Blocks until the helper writes or closes its output, or the lock is released; the
    /// release wins when both have happened.
    fn wait(&self) -> nix::Result<Wake> {
        loop {
            let mut fds = [
                PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.output.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(err) => return Err(err),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|events| !events.is_empty());
            if ready(&fds[0]) {
                return Ok(Wake::Stopped);
            }
            if ready(&fds[1]) {
                return Ok(Wake::Output);
            }
        }
    }
}

#[cfg(test)]
impl ClusterLock {
    fn helper_pid(&self) -> Option<u32> {
        match &self.state {
            State::Helper(handle) => Some(handle.pid),
            _ => None,
        }
    }

    /// Waits (boundedly) for the watcher thread to end on its own: after an answer other
    /// than `0`, or after the helper that held the lock died.
    fn watcher_ends(&mut self) {
        if let State::Helper(HelperHandle { watcher, .. }) = &mut self.state {
            if let Some(watcher) = watcher.take() {
                tests::joined_in_time(watcher);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crossbeam_channel::{Receiver, TryRecvError};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    const GENEROUS: Duration = Duration::from_secs(10);
    const FCNTL_HELPER: &str = "/usr/libexec/ctdb/ctdb_mutex_fcntl_helper";

    fn scratch_dir() -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rctdb-cluster-lock-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    /// A helper script, run through /bin/sh rather than executed: executing a file just
    /// written can fail with ETXTBSY while another test thread forks.
    fn script(body: &str) -> ClusterLockSpec {
        let path = scratch_dir().join("helper.sh");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("script");
        ClusterLockSpec::Helper { program: PathBuf::from("/bin/sh"), args: vec![path.display().to_string()] }
    }

    fn attempt(spec: &ClusterLockSpec) -> (ClusterLock, Receiver<LockOutcome>) {
        let (events, outcomes) = crossbeam_channel::unbounded();
        (ClusterLock::attempt_here(spec, events), outcomes)
    }

    fn next(outcomes: &Receiver<LockOutcome>) -> LockOutcome {
        outcomes.recv_timeout(GENEROUS).expect("an outcome in time")
    }

    pub(super) fn joined_in_time(watcher: JoinHandle<()>) {
        let (done, joined) = crossbeam_channel::bounded(1);
        std::thread::spawn(move || {
            let _ = done.send(watcher.join().is_ok());
        });
        assert_eq!(joined.recv_timeout(GENEROUS), Ok(true), "the watcher thread ends without panicking");
    }

    fn is_gone(pid: u32) -> bool {
        let pid = Pid::from_raw(i32::try_from(pid).expect("pid"));
        kill(pid, None) == Err(Errno::ESRCH)
    }

    fn assert_error_mentions(outcome: LockOutcome, what: &str) {
        match outcome {
            LockOutcome::Error(message) => assert!(message.contains(what), "{message:?} names {what:?}"),
            other => panic!("expected an error naming {what:?}, got {other:?}"),
        }
    }

    #[test]
    fn parse_tells_helpers_from_files() {
        assert_eq!(
            ClusterLockSpec::parse("!/usr/bin/helper  a\tb "),
            Ok(ClusterLockSpec::Helper {
                program: PathBuf::from("/usr/bin/helper"),
                args: vec!["a".to_string(), "b".to_string()]
            })
        );
        assert_eq!(
            ClusterLockSpec::parse("/shared/reclock"),
            Ok(ClusterLockSpec::File(PathBuf::from("/shared/reclock")))
        );
        assert!(ClusterLockSpec::parse("").is_err());
        assert!(ClusterLockSpec::parse("  ").is_err());
        assert!(ClusterLockSpec::parse("! ").is_err());
    }

    #[test]
    fn file_lock_excludes_a_second_attempt_until_released() {
        let file = ClusterLockSpec::File(scratch_dir().join("reclock"));
        let (first, first_outcomes) = attempt(&file);
        assert_eq!(next(&first_outcomes), LockOutcome::Held);
        // Same process, other description: an OFD lock still conflicts.
        let (_second, second_outcomes) = attempt(&file);
        assert_eq!(next(&second_outcomes), LockOutcome::Contention);
        first.release();
        let (_third, third_outcomes) = attempt(&file);
        assert_eq!(next(&third_outcomes), LockOutcome::Held);
    }

    #[test]
    fn file_lock_in_a_missing_directory_is_an_error_naming_the_path() {
        let path = scratch_dir().join("missing").join("reclock");
        let (_lock, outcomes) = attempt(&ClusterLockSpec::File(path.clone()));
        assert_error_mentions(next(&outcomes), &path.display().to_string());
    }

    #[test]
    fn helper_timeout_is_never_held_and_the_helper_is_reaped() {
        let (mut lock, outcomes) = attempt(&script("printf 2; sleep 30"));
        let pid = lock.helper_pid().expect("a helper");
        assert_eq!(next(&outcomes), LockOutcome::Timeout);
        lock.watcher_ends();
        assert!(is_gone(pid), "the helper was terminated and reaped");
        assert_eq!(outcomes.try_recv(), Err(TryRecvError::Empty), "nothing follows a timeout");
    }

    #[test]
    fn helper_answers_contention_and_error() {
        let (_lock, outcomes) = attempt(&script("printf 1"));
        assert_eq!(next(&outcomes), LockOutcome::Contention);
        let (_lock, outcomes) = attempt(&script("printf 3"));
        assert_error_mentions(next(&outcomes), "reported an error");
        let (_lock, outcomes) = attempt(&script("printf x; sleep 30"));
        assert_error_mentions(next(&outcomes), "'x'");
    }

    #[test]
    fn helper_that_ends_without_answering_is_an_error() {
        let (_lock, outcomes) = attempt(&script("exit 0"));
        assert_error_mentions(next(&outcomes), "without answering");
    }

    #[test]
    fn helper_that_cannot_start_is_an_error_naming_it() {
        let (lock, outcomes) = attempt(&ClusterLockSpec::parse("!/nonexistent/helper x").expect("spec"));
        assert_error_mentions(next(&outcomes), "/nonexistent/helper");
        assert_eq!(lock.helper_pid(), None);
    }

    #[test]
    fn helper_death_loses_the_lock() {
        let (mut lock, outcomes) = attempt(&script("printf 0; sleep 0.2"));
        let pid = lock.helper_pid().expect("a helper");
        assert_eq!(next(&outcomes), LockOutcome::Held);
        assert_eq!(next(&outcomes), LockOutcome::Lost);
        lock.watcher_ends();
        assert!(is_gone(pid), "the helper was reaped");
        assert_eq!(outcomes.try_recv(), Err(TryRecvError::Empty), "Lost comes once");
    }

    #[test]
    fn a_helper_that_ignores_sigterm_is_killed_after_its_grace() {
        // An ignored signal stays ignored across exec.
        let (lock, outcomes) = attempt(&script("trap '' TERM; printf 0; exec sleep 30"));
        let pid = lock.helper_pid().expect("a helper");
        assert_eq!(next(&outcomes), LockOutcome::Held);
        let released = std::time::Instant::now();
        lock.release_and_wait();
        assert!(is_gone(pid), "the helper was killed and reaped");
        assert!(released.elapsed() < GENEROUS, "within its grace, not for ever");
    }

    #[test]
    fn release_terminates_the_helper_without_reporting_lost() {
        let (lock, outcomes) = attempt(&script("printf 0; exec sleep 30"));
        let pid = lock.helper_pid().expect("a helper");
        assert_eq!(next(&outcomes), LockOutcome::Held);
        assert!(!is_gone(pid), "the helper holds the lock");
        lock.release_and_wait();
        assert!(is_gone(pid), "release terminated and reaped the helper");
        // Every sender is gone now: nothing was queued, nothing can come.
        assert_eq!(outcomes.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn an_attempt_abandoned_before_the_answer_reports_nothing() {
        let (lock, outcomes) = attempt(&script("exec sleep 30"));
        let pid = lock.helper_pid().expect("a helper");
        lock.release_and_wait();
        assert!(is_gone(pid), "release terminated and reaped the helper");
        assert_eq!(outcomes.try_recv(), Err(TryRecvError::Disconnected));
    }

    #[test]
    fn ctdb_fcntl_helper_works_unchanged() {
        if !Path::new(FCNTL_HELPER).exists() {
            println!("skipped: {FCNTL_HELPER} is not installed (package ctdb)");
            return;
        }
        let file = scratch_dir().join("reclock");
        let helper = ClusterLockSpec::parse(&format!("!{FCNTL_HELPER} {}", file.display())).expect("spec");
        let (first, first_outcomes) = attempt(&helper);
        assert_eq!(next(&first_outcomes), LockOutcome::Held);
        let (_second, second_outcomes) = attempt(&helper);
        assert_eq!(next(&second_outcomes), LockOutcome::Contention);
        // The helper's process-owned lock on byte 0 and our OFD lock exclude each other.
        let (_in_process, in_process_outcomes) = attempt(&ClusterLockSpec::File(file));
        assert_eq!(next(&in_process_outcomes), LockOutcome::Contention);
        first.release_and_wait();
        assert_eq!(first_outcomes.try_recv(), Err(TryRecvError::Disconnected), "no Lost after release");
        let (_third, third_outcomes) = attempt(&helper);
        assert_eq!(next(&third_outcomes), LockOutcome::Held);
    }

    #[test]
    fn ctdb_fcntl_helper_gives_up_the_lock_when_its_file_is_removed() {
        if !Path::new(FCNTL_HELPER).exists() {
            println!("skipped: {FCNTL_HELPER} is not installed (package ctdb)");
            return;
        }
        let file = scratch_dir().join("reclock");
        // The second argument is its recheck interval in seconds (default 5).
        let helper = ClusterLockSpec::parse(&format!("!{FCNTL_HELPER} {} 1", file.display())).expect("spec");
        let (_lock, outcomes) = attempt(&helper);
        assert_eq!(next(&outcomes), LockOutcome::Held);
        std::fs::remove_file(&file).expect("remove the lock file");
        assert_eq!(next(&outcomes), LockOutcome::Lost);
    }

    #[test]
    fn ctdb_fcntl_helper_meets_contention_from_an_in_process_lock() {
        if !Path::new(FCNTL_HELPER).exists() {
            println!("skipped: {FCNTL_HELPER} is not installed (package ctdb)");
            return;
        }
        let file = scratch_dir().join("reclock");
        let (_in_process, in_process_outcomes) = attempt(&ClusterLockSpec::File(file.clone()));
        assert_eq!(next(&in_process_outcomes), LockOutcome::Held);
        let helper = ClusterLockSpec::parse(&format!("!{FCNTL_HELPER} {}", file.display())).expect("spec");
        let (_helper, helper_outcomes) = attempt(&helper);
        assert_eq!(next(&helper_outcomes), LockOutcome::Contention);
    }
}
