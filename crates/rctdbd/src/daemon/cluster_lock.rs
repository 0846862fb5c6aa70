//! The cluster lock (CTDB's "recovery lock"): only the node that holds it may lead the
//! cluster. Either an fcntl lock on a file every node sees, taken in-process, or CTDB's
//! cluster mutex helper protocol: a command (given as `!COMMAND ARGS`) that prints one
//! character, `0` held, `1` contention, `2` timeout, `3` error, and after `0` keeps running
//! for as long as it holds the lock. Samba's `ctdb_mutex_fcntl_helper FILE` works unchanged.
//!
//! Nothing here blocks the caller (who holds the node's mutex): the answer arrives on a
//! channel, and a helper is watched by a thread of its own.

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;

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

/// The caller's side of a helper watched by a thread.
struct HelperHandle {
    pid: u32,
    reporter: Reporter,
    /// Closing this write end wakes the watcher, which then terminates and reaps the helper.
    stop: OwnedFd,
    /// `None` once taken by a test that joins it.
    watcher: Option<JoinHandle<()>>,
}

impl ClusterLock {
    /// Starts one attempt; its outcome (and later, for a held helper lock, `Lost`) arrives on
    /// `events` exactly once each, unless the attempt is released first. `events` should be
    /// unbounded: a helper's watcher sends while holding a lock that `release` takes.
    pub fn attempt(spec: &ClusterLockSpec, events: Sender<LockOutcome>) -> ClusterLock {
        match spec {
            ClusterLockSpec::File(path) => lock_file(path, &events),
            ClusterLockSpec::Helper { program, args } => start_helper(program, args, events),
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
                log::debug!("releasing the cluster lock attempt of helper pid {}", handle.pid);
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

fn start_helper(program: &Path, args: &[String], events: Sender<LockOutcome>) -> ClusterLock {
    let name = program.display().to_string();
    let failed = |err: String| {
        log::error!("{err}");
        send(&events, LockOutcome::Error(err));
        ClusterLock { state: State::Idle }
    };
    // Close-on-exec: were the helper to inherit the write end, closing ours would not wake
    // the watcher.
    let (stop_read, stop_write) = match nix::unistd::pipe2(OFlag::O_CLOEXEC) {
        Ok(ends) => ends,
        Err(err) => return failed(format!("cluster lock helper {name}: creating a pipe: {err}")),
    };
    // The helper stays our child: ctdb_mutex_fcntl_helper drops the lock when its parent
    // (getppid) goes away, so the lock dies with this daemon.
    let spawned = Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(err) => return failed(format!("starting cluster lock helper {name}: {err}")),
    };
    let pid = child.id();
    let Some(stdout) = child.stdout.take() else {
        terminate(&mut child, &name);
        return failed(format!("cluster lock helper {name}: no pipe to its output"));
    };
    log::debug!("started cluster lock helper {name} {args:?}, pid {pid}");
    let reporter = Reporter { events: events.clone(), released: Arc::new(Mutex::new(false)) };
    let watcher =
        HelperWatcher { name: name.clone(), child, stdout, stop: stop_read, reporter: reporter.clone() };
    match std::thread::Builder::new().name("cluster-lock".to_string()).spawn(move || watcher.run()) {
        Ok(watcher) => ClusterLock {
            state: State::Helper(HelperHandle { pid, reporter, stop: stop_write, watcher: Some(watcher) }),
        },
        Err(err) => {
            // The Child went with the closure, unreaped, so its pid is still the helper's.
            if let Ok(raw) = i32::try_from(pid) {
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(Pid::from_raw(raw), None);
            }
            failed(format!("cluster lock helper {name}: starting its watcher thread: {err}"))
        }
    }
}

/// Sends SIGTERM, as CTDB does, and reaps. The child is not reaped before this, so its pid
/// cannot have been reused.
fn terminate(child: &mut Child, name: &str) {
    if let Ok(raw) = i32::try_from(child.id()) {
        if let Err(err) = kill(Pid::from_raw(raw), Signal::SIGTERM) {
            log::debug!("cluster lock helper {name}: SIGTERM: {err}");
        }
    }
    match child.wait() {
        Ok(status) => log::debug!("cluster lock helper {name} ended: {status}"),
        Err(err) => log::warn!("cluster lock helper {name}: waiting for it: {err}"),
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
    child: Child,
    stdout: ChildStdout,
    stop: OwnedFd,
    reporter: Reporter,
}

impl HelperWatcher {
    fn run(mut self) {
        let Some(outcome) = self.read_answer() else {
            log::debug!("cluster lock helper {}: attempt abandoned", self.name);
            return terminate(&mut self.child, &self.name);
        };
        match &outcome {
            LockOutcome::Held => log::info!("took the cluster lock through helper {}", self.name),
            LockOutcome::Error(err) => log::error!("{err}"),
            other => log::debug!("cluster lock helper {}: {other:?}", self.name),
        }
        let held = outcome == LockOutcome::Held;
        self.reporter.send(outcome);
        if held {
            if let Some(why) = self.wait_for_loss() {
                log::warn!("lost the cluster lock held by helper {}: {why}", self.name);
                self.reporter.send(LockOutcome::Lost);
            }
        }
        // Reaped for every outcome; a helper that answered anything but `0` holds nothing.
        terminate(&mut self.child, &self.name);
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
            match self.stdout.read(&mut byte) {
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
        LockOutcome::Error(format!("cluster lock helper {}: {what}", self.name))
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
                Ok(Wake::Stopped) => return None,
                Ok(Wake::Output) => {}
                // Unwatched, the lock is as good as lost: say so, and let it go.
                Err(err) => return Some(format!("cannot watch its output any more: {err}")),
            }
            match self.stdout.read(&mut chatter) {
                Ok(0) => return Some(format!("its output closed{}", self.exit_note())),
                Ok(n) => log::debug!(
                    "cluster lock helper {} wrote {:?} while holding the lock; ignored",
                    self.name,
                    String::from_utf8_lossy(&chatter[..n])
                ),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Some(format!("reading its output: {err}")),
            }
        }
    }

    /// Blocks until the helper writes or closes its output, or the lock is released; the
    /// release wins when both have happened.
    fn wait(&self) -> nix::Result<Wake> {
        loop {
            let mut fds = [
                PollFd::new(self.stop.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.stdout.as_fd(), PollFlags::POLLIN),
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

    /// Releases, then waits (boundedly) until the watcher has reaped the helper.
    fn release_and_wait(mut self) {
        let watcher = match &mut self.state {
            State::Helper(handle) => handle.watcher.take(),
            _ => None,
        };
        self.release();
        if let Some(watcher) = watcher {
            tests::joined_in_time(watcher);
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
        (ClusterLock::attempt(spec, events), outcomes)
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
