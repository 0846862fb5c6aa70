//! The cluster lock's watchdog: a small process (`rctdbd --lock-watchdog STALL_MS FREEZE_MS
//! DBDIR LOCK`) that takes the cluster lock for its daemon and holds it only while the
//! daemon's engine keeps beating on its input (a byte per engine tick, `ClusterLock::beat`).
//! To the daemon it speaks CTDB's mutex helper protocol on its output (`0` held, `1`
//! contention, `2` timeout, `3` error; the output closing after `0` means the lock is lost).
//!
//! - The daemon's beats stop for `STALL_MS` (it is stopped, or its engine is wedged): the
//!   watchdog first freezes every database of the node (the all-record lock of each tdb
//!   file in DBDIR, as CTDB's freeze takes it, so local clients such as smbd, which use
//!   the files directly, block), then lets the lock go, so another node can lead, then
//!   closes its output (the daemon, once it runs again, reads that as `Lost`, steps down
//!   and freezes on its own). It keeps its freeze until the daemon closes its input.
//! - Its input closes before that (the daemon released the lock, or died): it lets the lock
//!   go at once and ends.
//!
//! It runs nothing of the daemon's, so it works whatever state the daemon is in.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crossbeam_channel::{select, Receiver};
use nix::fcntl::{fcntl, FcntlArg};

use super::cluster_lock::{ClusterLock, ClusterLockSpec, LockOutcome, WatchdogConfig};
use super::fencing::{monotonic_ns, FenceNote};
use super::lock_bound;
use crate::tunables::Tunables;

/// The hidden first argument of rctdbd that runs it as a watchdog.
pub const MODE_FLAG: &str = "--lock-watchdog";
/// The hidden first argument of rctdbd that runs it as the node's fencing watchdog
/// (`fence_main`).
pub const FENCE_MODE_FLAG: &str = "--fence-watchdog";

/// How deep under DBDIR database files are looked for (persistent ones live one down).
const SEARCH_DEPTH: usize = 2;
/// Descriptors per handover message (the kernel takes at most 253 in one).
const HANDOVER_BATCH: usize = 200;

/// The watchdog's bounds, from the dead time D = KeepaliveInterval x KeepaliveLimit (600 ms
/// by default). Stall: D/2, at least two keepalive intervals (300 ms by default), so that
/// the lock is free by the time the other nodes declare this one dead and try it; a daemon
/// that stalls for less keeps the lock. Freeze: at most D more, so that a client that holds a
/// chain lock for ever cannot keep the cluster from a leader.
pub fn config(program: PathBuf, dbdir: &Path, tunables: &Tunables) -> WatchdogConfig {
    let dead = tunables.keepalive_interval_ms.saturating_mul(tunables.keepalive_limit);
    WatchdogConfig {
        program,
        dbdir: dbdir.to_owned(),
        stall: stall_bound(tunables),
        freeze: Duration::from_millis(dead),
    }
}

/// How long the lock's watchdog waits for a beat before it fences (see `config`).
pub fn stall_bound(tunables: &Tunables) -> Duration {
    let interval = tunables.keepalive_interval_ms;
    let dead = interval.saturating_mul(tunables.keepalive_limit);
    Duration::from_millis((dead / 2).max(2 * interval).min(dead))
}

/// The watchdog's `main`; `args` are the ones after `MODE_FLAG`.
pub fn main(args: &[OsString]) -> ExitCode {
    // Whatever the daemon let us inherit (a descriptor opened without close-on-exec) must not
    // live on in us after the daemon is gone.
    // SAFETY: close_range on descriptors this process has not started to use.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } != 0 {
        log::debug!("close_range: {}", std::io::Error::last_os_error());
    }
    let parsed = parse(args);
    let (stall, freeze, dbdir, spec) = match parsed {
        Ok(parsed) => parsed,
        Err(err) => {
            eprintln!("rctdbd {MODE_FLAG}: {err}");
            return ExitCode::from(2);
        }
    };
    let watchdog = Watchdog { stall, freeze, dbdir, answer: Answer::default() };
    watchdog.run(&spec);
    ExitCode::SUCCESS
}

fn parse(args: &[OsString]) -> Result<(Duration, Duration, PathBuf, ClusterLockSpec), String> {
    let [stall, freeze, dbdir, spec] = args else {
        return Err("expected STALL_MS FREEZE_MS DBDIR LOCK".into());
    };
    let millis = |arg: &OsString, what: &str| {
        arg.to_str()
            .and_then(|text| text.parse::<u64>().ok())
            .map(Duration::from_millis)
            .ok_or_else(|| format!("{what} {arg:?} is not a number of milliseconds"))
    };
    let spec_text = spec.to_str().ok_or_else(|| format!("lock {spec:?} is not UTF-8"))?;
    Ok((
        millis(stall, "STALL_MS")?,
        millis(freeze, "FREEZE_MS")?,
        PathBuf::from(dbdir),
        ClusterLockSpec::parse(spec_text)?,
    ))
}

struct Watchdog {
    stall: Duration,
    freeze: Duration,
    dbdir: PathBuf,
    answer: Answer,
}

impl Watchdog {
    fn run(mut self, spec: &ClusterLockSpec) {
        let beats = read_beats();
        // `events` is kept here: a file lock's attempt drops its sender, and a disconnected
        // channel would look like news on every select.
        let (events, outcomes) = crossbeam_channel::unbounded();
        // The attempt runs on a thread of its own: an open() on a hung filesystem must not
        // keep the watchdog from answering.
        let (lock_sender, lock_arrives) = crossbeam_channel::bounded(1);
        let (spec, attempt_events) = (spec.clone(), events.clone());
        let attempt = move || {
            let _ = lock_sender.send(ClusterLock::attempt_here(&spec, attempt_events));
        };
        if let Err(err) = std::thread::Builder::new().name("attempt".into()).spawn(attempt) {
            log::error!("cluster lock watchdog: starting the attempt: {err}");
            return self.answer.send(b'3');
        }
        let Some(outcome) = self.wait_for_answer(&outcomes, &beats) else {
            // Released before the answer, or no answer in time: whatever was started ends.
            return release(lock_arrives.recv_timeout(self.freeze).ok());
        };
        let Ok(lock) = lock_arrives.recv_timeout(self.freeze) else {
            log::error!("cluster lock watchdog: the attempt answered but did not return");
            return self.answer.send(b'3');
        };
        self.answer.send(match &outcome {
            LockOutcome::Held => b'0',
            LockOutcome::Contention => b'1',
            LockOutcome::Timeout | LockOutcome::Lost => b'2',
            LockOutcome::Error(err) => {
                log::error!("cluster lock watchdog: {err}");
                b'3'
            }
        });
        if outcome != LockOutcome::Held {
            return lock.release_and_wait();
        }
        self.hold(lock, &outcomes, &beats);
        drop(events);
    }

    /// The attempt's outcome; `None` if the daemon let go first, or none came within the
    /// stall bound plus the freeze bound (then the daemon is told `2`, timeout).
    fn wait_for_answer(
        &mut self,
        outcomes: &Receiver<LockOutcome>,
        beats: &Receiver<()>,
    ) -> Option<LockOutcome> {
        let deadline = Instant::now() + self.stall + self.freeze;
        loop {
            select! {
                recv(outcomes) -> outcome => return outcome.ok(),
                recv(beats) -> beat => if beat.is_err() {
                    log::debug!("cluster lock watchdog: released before the answer");
                    return None;
                },
                default(deadline.saturating_duration_since(Instant::now())) => {
                    log::error!("cluster lock watchdog: no answer from the lock within {:?}", self.stall + self.freeze);
                    self.answer.send(b'2');
                    return None;
                }
            }
        }
    }

    /// Holds the lock while the engine beats.
    fn hold(&mut self, lock: ClusterLock, outcomes: &Receiver<LockOutcome>, beats: &Receiver<()>) {
        let mut last_beat = Instant::now();
        loop {
            let stalled_at = last_beat + self.stall;
            select! {
                recv(beats) -> beat => match beat {
                    Ok(()) => last_beat = Instant::now(),
                    Err(_) => {
                        log::debug!("cluster lock watchdog: the daemon let go (or ended); releasing");
                        return lock.release_and_wait();
                    }
                },
                recv(outcomes) -> outcome => {
                    log::warn!("cluster lock watchdog: {outcome:?} while holding the lock");
                    self.answer.close();
                    return lock.release_and_wait();
                }
                default(stalled_at.saturating_duration_since(Instant::now())) => {
                    if Instant::now() >= stalled_at {
                        return self.fence(lock, beats);
                    }
                }
            }
        }
    }

    /// The daemon stopped beating: freeze its databases, hand the freeze to it, let the lock
    /// go, tell it, and keep the freeze until it has taken over its own (it closes our
    /// input).
    fn fence(&mut self, lock: ClusterLock, beats: &Receiver<()>) {
        eprintln!(
            "rctdbd {MODE_FLAG} (pid {}): no beat from the daemon's engine for {:?}: freezing {} and \
             releasing the cluster lock",
            std::process::id(),
            self.stall,
            self.dbdir.display()
        );
        let freeze = freeze_databases(&self.dbdir, self.freeze);
        hand_over(1, &freeze);
        lock.release_and_wait();
        self.answer.close();
        eprintln!(
            "rctdbd {MODE_FLAG} (pid {}): froze {} database(s); released the cluster lock",
            std::process::id(),
            freeze.len()
        );
        while beats.recv().is_ok() {}
        drop(freeze);
    }
}

/// The fencing watchdog's `main` (`super::fencing` is the daemon's side); `args` are
/// `DBDIR FREEZE_MS GRACE_MS DAEMON_PID`. Its standard input is a socket to the daemon.
///
/// A lease the daemon told of ends, `GRACE_MS` pass, and nothing came from the daemon since
/// the lease's end (it is stopped, or its engine is wedged: a running engine says `L -` at
/// its next tick): the watchdog kills every client process attached to the daemon (SIGKILL;
/// their SMB clients reconnect elsewhere, and lose what the node's records granted them),
/// then freezes the node's databases, hands the freeze to the daemon, and keeps its own
/// copy until the daemon speaks again. It cannot know whether the others left the node
/// out, so it always fences at the lease's end: a stall that long costs the node's clients
/// their connections, never their data. Its input closing (the daemon ended) ends it.
pub fn fence_main(args: &[OsString]) -> ExitCode {
    // SAFETY: close_range on descriptors this process has not started to use.
    if unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } != 0 {
        log::debug!("close_range: {}", std::io::Error::last_os_error());
    }
    match parse_fence(args) {
        Ok(fence) => {
            fence.run();
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("rctdbd {FENCE_MODE_FLAG}: {err}");
            ExitCode::from(2)
        }
    }
}

fn parse_fence(args: &[OsString]) -> Result<Fence, String> {
    let [dbdir, freeze, grace, daemon] = args else {
        return Err("expected DBDIR FREEZE_MS GRACE_MS DAEMON_PID".into());
    };
    let number = |arg: &OsString, what: &str| {
        arg.to_str()
            .and_then(|text| text.parse::<u64>().ok())
            .ok_or_else(|| format!("{what} {arg:?} is not a number"))
    };
    let daemon =
        i32::try_from(number(daemon, "DAEMON_PID")?).map_err(|_| "DAEMON_PID too large".to_string())?;
    Ok(Fence {
        dbdir: PathBuf::from(dbdir),
        freeze: Duration::from_millis(number(freeze, "FREEZE_MS")?),
        grace_ns: number(grace, "GRACE_MS")?.saturating_mul(1_000_000),
        daemon,
        lease_end: None,
        last_note: 0,
        clients: HashMap::new(),
        frozen: vec![],
    })
}

struct Fence {
    dbdir: PathBuf,
    freeze: Duration,
    grace_ns: u64,
    daemon: i32,
    /// The lease the daemon told of last (CLOCK_MONOTONIC nanoseconds).
    lease_end: Option<u64>,
    /// When the daemon's last note came.
    last_note: u64,
    /// Attached client processes, with their count of connections.
    clients: HashMap<i32, usize>,
    /// Our copy of a freeze handed over, kept until the daemon runs again.
    frozen: Vec<File>,
}

impl Fence {
    fn run(mut self) {
        let notes = read_notes();
        loop {
            // Armed only while the daemon has said nothing since the lease's end.
            let wait = match self.lease_end.filter(|&end| self.last_note < end) {
                Some(end) => {
                    Duration::from_nanos(end.saturating_add(self.grace_ns).saturating_sub(monotonic_ns()))
                }
                None => Duration::from_secs(3600),
            };
            select! {
                recv(notes) -> note => match note {
                    Ok(note) => self.on_note(note),
                    Err(_) => return log::debug!("fencing watchdog: the daemon ended"),
                },
                default(wait) => {}
            }
            let now = monotonic_ns();
            if self
                .lease_end
                .is_some_and(|end| now >= end.saturating_add(self.grace_ns) && self.last_note < end)
            {
                self.fence();
            }
        }
    }

    fn on_note(&mut self, note: FenceNote) {
        self.last_note = monotonic_ns();
        if !self.frozen.is_empty() {
            // The daemon runs again: it holds the freeze through what we handed it.
            self.frozen.clear();
        }
        match note {
            FenceNote::Lease(end) => self.lease_end = end,
            FenceNote::Attached(pid) => *self.clients.entry(pid).or_default() += 1,
            FenceNote::Detached(pid) => {
                if let Some(count) = self.clients.get_mut(&pid) {
                    *count -= 1;
                    if *count == 0 {
                        self.clients.remove(&pid);
                    }
                }
            }
        }
    }

    /// Kills the attached clients, then freezes (their chain locks died with them).
    fn fence(&mut self) {
        let me = std::process::id() as i32;
        let victims: Vec<i32> =
            self.clients.keys().copied().filter(|&pid| pid > 1 && pid != self.daemon && pid != me).collect();
        eprintln!(
            "rctdbd {FENCE_MODE_FLAG} (pid {me}): the daemon (pid {}) ran past its lease: killing its \
             {} client process(es) {victims:?} and freezing {}",
            self.daemon,
            victims.len(),
            self.dbdir.display()
        );
        for &pid in &victims {
            if let Err(err) =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)
            {
                log::debug!("fencing watchdog: killing client {pid}: {err}");
            }
        }
        self.clients.clear();
        self.frozen = freeze_databases(&self.dbdir, self.freeze);
        hand_over(0, &self.frozen);
        eprintln!("rctdbd {FENCE_MODE_FLAG} (pid {me}): froze {} database(s)", self.frozen.len());
        self.lease_end = None;
    }
}

/// The daemon's notes, read from our input; disconnected when it closes.
fn read_notes() -> Receiver<FenceNote> {
    let (note, notes) = crossbeam_channel::unbounded();
    let reader = move || {
        use std::io::BufRead;
        for line in std::io::stdin().lock().lines() {
            let parsed = match line {
                Ok(line) => FenceNote::parse(&line),
                Err(err) => return log::error!("fencing watchdog: reading the daemon's notes: {err}"),
            };
            match parsed {
                Ok(parsed) => {
                    if note.send(parsed).is_err() {
                        return;
                    }
                }
                Err(err) => log::error!("fencing watchdog: {err}"),
            }
        }
    };
    if let Err(err) = std::thread::Builder::new().name("notes".into()).spawn(reader) {
        log::error!("fencing watchdog: starting the note reader: {err}");
    }
    notes
}

fn release(lock: Option<ClusterLock>) {
    if let Some(lock) = lock {
        lock.release_and_wait();
    }
}

/// The watchdog's output to the daemon: one answer, then closed to say "lost".
#[derive(Default)]
struct Answer {
    closed: bool,
}

impl Answer {
    fn send(&mut self, answer: u8) {
        // SAFETY: write(2) of one byte from a live buffer to our standard output.
        let written = unsafe { libc::write(1, [answer].as_ptr().cast(), 1) };
        if written != 1 {
            log::debug!("cluster lock watchdog: answering: {}", std::io::Error::last_os_error());
        }
    }

    /// Closes the output (the daemon's watcher reads end of file: lost). /dev/null takes
    /// its place, so that a file opened later cannot become descriptor 1.
    fn close(&mut self) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let replaced = File::options()
            .write(true)
            .open("/dev/null")
            .map_err(|err| err.to_string())
            .and_then(|null| nix::unistd::dup2(null.as_raw_fd(), 1).map_err(|err| err.to_string()));
        if let Err(err) = replaced {
            log::error!("cluster lock watchdog: closing its output: {err}");
        }
    }
}

/// Sends the frozen descriptions to the daemon (SCM_RIGHTS, a byte `F` per batch): an OFD
/// lock belongs to its open file description, so the daemon, once it runs, holds the freeze
/// through them without a moment unfrozen, and adopts them as its own (`Node::freeze`).
/// Our output is a socket when the daemon started us; anything else keeps the freeze here
/// alone, until our input closes.
fn hand_over(socket: std::os::fd::RawFd, frozen: &[File]) {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    for batch in frozen.chunks(HANDOVER_BATCH) {
        let fds: Vec<std::os::fd::RawFd> = batch.iter().map(|file| file.as_raw_fd()).collect();
        let rights = [ControlMessage::ScmRights(&fds)];
        let byte = [std::io::IoSlice::new(b"F")];
        if let Err(err) = sendmsg::<()>(socket, &byte, &rights, MsgFlags::empty(), None) {
            return log::debug!("cluster lock watchdog: not handing the freeze over: {err}");
        }
    }
}

/// A channel that gets `()` per chunk of beats read and disconnects when the input ends.
fn read_beats() -> Receiver<()> {
    let (beat, beats) = crossbeam_channel::unbounded();
    let reader = move || {
        let mut stdin = std::io::stdin().lock();
        let mut chunk = [0u8; 256];
        loop {
            match stdin.read(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {
                    if beat.send(()).is_err() {
                        return;
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    log::error!("cluster lock watchdog: reading beats: {err}");
                    return;
                }
            }
        }
    };
    if let Err(err) = std::thread::Builder::new().name("beats".into()).spawn(reader) {
        // No reader: the channel is closed at once, which lets the lock go.
        log::error!("cluster lock watchdog: starting the beat reader: {err}");
    }
    beats
}

/// Takes the all-record lock of every tdb file under `dir` (OFD write locks, which conflict
/// with the chain locks local clients take), waiting at most `bound` in all. Returns the
/// files that hold the locks; a database not frozen in time is named on stderr.
fn freeze_databases(dir: &Path, bound: Duration) -> Vec<File> {
    let deadline = Instant::now() + bound;
    let mut frozen = vec![];
    for path in database_files(dir, SEARCH_DEPTH) {
        match freeze_one(&path, deadline) {
            Ok(Some(file)) => frozen.push(file),
            Ok(None) => {}
            Err(err) => eprintln!("rctdbd {MODE_FLAG}: not frozen: {}: {err}", path.display()),
        }
    }
    frozen
}

/// `None` for a file that is not a tdb.
fn freeze_one(path: &Path, deadline: Instant) -> Result<Option<File>, String> {
    let file = File::options().read(true).write(true).open(path).map_err(|e| e.to_string())?;
    let Ok((start, len)) = crate::local::chains_lock_range(&file) else { return Ok(None) };
    let mut lock = whole_range(start, len);
    lock.l_type = libc::F_WRLCK as libc::c_short;
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    match lock_bound::within(left, || fcntl(file.as_raw_fd(), FcntlArg::F_OFD_SETLKW(&lock))) {
        Ok(_) => Ok(Some(file)),
        Err(nix::errno::Errno::EINTR) => {
            Err(format!("a chain stayed locked past the freeze bound ({left:?} left)"))
        }
        Err(err) => Err(err.to_string()),
    }
}

fn whole_range(start: u64, len: u64) -> libc::flock {
    // SAFETY: flock is a plain C struct for which all-zero bytes are a valid value.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = start as libc::off_t;
    lock.l_len = len as libc::off_t;
    lock
}

/// Regular files under `dir`, `depth` levels down at most.
fn database_files(dir: &Path, depth: usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut files = vec![];
    for entry in entries.flatten() {
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_file() {
            files.push(entry.path());
        } else if kind.is_dir() && depth > 1 {
            files.extend(database_files(&entry.path(), depth - 1));
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_follow_the_dead_time() {
        let program = PathBuf::from("rctdbd");
        let config = config(program.clone(), Path::new("/db"), &Tunables::default());
        // 100 ms x 6: stall at half the dead time, freeze within one dead time.
        assert_eq!((config.stall, config.freeze), (Duration::from_millis(300), Duration::from_millis(600)));
        let tight = Tunables { keepalive_limit: 2, ..Tunables::default() };
        let config = super::config(program, Path::new("/db"), &tight);
        assert_eq!(config.stall, Duration::from_millis(200), "never less than two intervals, never past D");
    }

    #[test]
    fn arguments_round_trip_the_lock_spec() {
        for text in ["/shared/lock", "!/usr/libexec/ctdb/ctdb_mutex_fcntl_helper /shared/lock 1"] {
            let spec = ClusterLockSpec::parse(text).expect("spec");
            let args: Vec<OsString> = vec!["300".into(), "600".into(), "/db".into(), spec.to_arg()];
            let (stall, freeze, dbdir, parsed) = parse(&args).expect("parsed");
            assert_eq!(
                (stall, freeze, dbdir, parsed),
                (Duration::from_millis(300), Duration::from_millis(600), PathBuf::from("/db"), spec)
            );
        }
        assert!(parse(&["x".into(), "600".into(), "/db".into(), "/l".into()]).is_err());
        assert!(parse(&["300".into()]).is_err());
    }
}
