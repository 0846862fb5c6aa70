//! The cluster lock's watchdog on its own (`rctdbd --lock-watchdog STALL_MS FREEZE_MS DBDIR
//! LOCK`), driven as its daemon drives it: beats on its input, CTDB's helper protocol on its
//! output. No network. DESIGN §5 (the cluster lock).
//!
//! - While beats come, it holds the lock and freezes nothing.
//! - Beats stop: after the stall bound it freezes every database in DBDIR (a local client
//!   cannot take a chain lock), then lets the lock go, then closes its output ("lost"); the
//!   freeze lasts until its input closes.
//! - Its input closes while it holds the lock (the daemon died or released): it lets go at
//!   once, without waiting for the stall bound.
//!
//! And the fencing watchdog every node has (`rctdbd --fence-watchdog`), driven over its
//! socket as its daemon drives it: a lease it was told of ends with no word since, and it
//! kills the attached client processes (never its daemon), freezes the databases and hands
//! the freeze back; a daemon that keeps talking, or a client that detached, is left alone.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use rctdb::local::Tdb;

const STALL: Duration = Duration::from_millis(300);
const FREEZE: Duration = Duration::from_millis(600);
/// Far above every bound the watchdog keeps, for a loaded machine.
const GENEROUS: Duration = Duration::from_secs(10);
/// How often this test beats while it plays a healthy daemon (the daemon beats per tick).
const BEAT_EVERY: Duration = Duration::from_millis(20);
const KEY: &[u8] = b"a key";

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rctdb-lock-watchdog-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("db")).expect("scratch dir");
    dir
}

/// A database in `dbdir`, as the daemon keeps them.
fn make_database(dbdir: &Path) -> PathBuf {
    let path = dbdir.join("test.tdb.0");
    let tdb = Tdb::open(&path, 0, 0, libc::O_RDWR | libc::O_CREAT, 0o600).expect("a tdb");
    tdb.close().expect("closed");
    path
}

/// A local client's view: can it take the chain lock of `KEY` right now?
fn client_can_lock_a_chain(path: &Path) -> bool {
    let tdb = Tdb::open(path, 0, 0, libc::O_RDWR, 0).expect("opening the tdb as a client");
    let free = tdb.chainlock_nonblock(KEY).is_ok();
    tdb.close().expect("closed");
    free
}

/// Whether the lock file is free: this test could take the watchdog's kind of lock on it.
fn lock_file_is_free(path: &Path) -> bool {
    let file = File::options().read(true).write(true).open(path).expect("the lock file");
    // SAFETY: flock is a plain C struct for which all-zero bytes are a valid value.
    let mut whole: libc::flock = unsafe { std::mem::zeroed() };
    whole.l_type = libc::F_WRLCK as libc::c_short;
    whole.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: fcntl on a descriptor we own with a valid flock.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &whole) };
    rc == 0
}

struct Watchdog {
    child: Child,
    beats: Option<ChildStdin>,
    /// Each byte of its output; disconnected at end of file.
    output: Receiver<u8>,
}

impl Watchdog {
    fn start(stall: Duration, dbdir: &Path, lock: &Path) -> Watchdog {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rctdbd"))
            .arg("--lock-watchdog")
            .arg(stall.as_millis().to_string())
            .arg(FREEZE.as_millis().to_string())
            .arg(dbdir)
            .arg(lock)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting rctdbd --lock-watchdog");
        let beats = child.stdin.take();
        let mut stdout = child.stdout.take().expect("its output");
        let (byte, output) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            let mut one = [0u8; 1];
            while let Ok(1) = stdout.read(&mut one) {
                if byte.send(one[0]).is_err() {
                    return;
                }
            }
        });
        Watchdog { child, beats, output }
    }

    fn answer(&self) -> u8 {
        self.output.recv_timeout(GENEROUS).expect("an answer in time")
    }

    /// Beats for `how_long`, as a healthy daemon's engine does; panics if the watchdog
    /// says anything meanwhile. Returns when it beat last.
    fn beat_for(&mut self, how_long: Duration) -> Instant {
        let until = Instant::now() + how_long;
        let mut last = Instant::now();
        while Instant::now() < until {
            self.beats.as_mut().expect("beating").write_all(b".").expect("a beat");
            last = Instant::now();
            // The pace of a daemon's ticks, not a wait for anything.
            assert!(self.output.recv_timeout(BEAT_EVERY).is_err(), "the watchdog spoke while beaten");
        }
        last
    }

    /// Waits for the output to close: the watchdog says the lock is lost.
    fn wait_for_lost(&self) {
        match self.output.recv_timeout(GENEROUS) {
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {}
            other => panic!("expected the output to close, got {other:?}"),
        }
    }

    fn close_input(&mut self) {
        self.beats = None;
    }

    /// Waits (boundedly) for it to end by itself.
    fn ends(&mut self) {
        let deadline = Instant::now() + GENEROUS;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "the watchdog ended with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(10)); // polling a child's exit
        }
        panic!("the watchdog did not end within {GENEROUS:?} of its input closing");
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_stalled_daemon_s_databases_are_frozen_before_its_lock_is_released() {
    let dir = scratch("stall");
    let (dbdir, lock) = (dir.join("db"), dir.join("reclock"));
    let database = make_database(&dbdir);
    let mut watchdog = Watchdog::start(STALL, &dbdir, &lock);
    assert_eq!(watchdog.answer(), b'0', "it took the lock");

    watchdog.beat_for(3 * STALL);
    assert!(!lock_file_is_free(&lock), "held while the daemon beats");
    assert!(client_can_lock_a_chain(&database), "nothing frozen while the daemon beats");

    let last_beat = watchdog.beat_for(BEAT_EVERY);
    watchdog.wait_for_lost();
    let fenced_after = last_beat.elapsed();
    println!("fenced {fenced_after:?} after the last beat (stall bound {STALL:?})");
    assert!(fenced_after >= STALL, "not before the stall bound: {fenced_after:?}");
    assert!(lock_file_is_free(&lock), "the lock is released once the output closed");
    assert!(!client_can_lock_a_chain(&database), "a local client blocks: the databases are frozen");

    watchdog.close_input();
    watchdog.ends();
    assert!(client_can_lock_a_chain(&database), "the freeze ends with the watchdog");
}

#[test]
fn a_dead_daemon_s_lock_is_released_at_once() {
    let dir = scratch("dead");
    let (dbdir, lock) = (dir.join("db"), dir.join("reclock"));
    let database = make_database(&dbdir);
    // A stall bound far above the test's: only the closed input can end it in time.
    let mut watchdog = Watchdog::start(Duration::from_secs(60), &dbdir, &lock);
    assert_eq!(watchdog.answer(), b'0', "it took the lock");
    watchdog.beat_for(Duration::from_millis(100));
    let closed = Instant::now();
    watchdog.close_input();
    watchdog.ends();
    println!("released {:?} after its input closed", closed.elapsed());
    assert!(lock_file_is_free(&lock), "released");
    assert!(client_can_lock_a_chain(&database), "nothing left frozen");
}

#[test]
fn a_second_watchdog_meets_contention_and_ends() {
    let dir = scratch("contention");
    let (dbdir, lock) = (dir.join("db"), dir.join("reclock"));
    let first = Watchdog::start(GENEROUS, &dbdir, &lock);
    assert_eq!(first.answer(), b'0');
    let mut second = Watchdog::start(GENEROUS, &dbdir, &lock);
    assert_eq!(second.answer(), b'1', "contention");
    second.ends();
}

// ---- the fencing watchdog (`rctdbd --fence-watchdog DBDIR FREEZE_MS GRACE_MS DAEMON_PID`)

const GRACE: Duration = Duration::from_millis(100);
const LEASE: Duration = Duration::from_millis(300);

fn monotonic_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

/// This test plays the daemon: it writes the notes, and receives the freeze handed back.
struct FenceWatchdog {
    child: Child,
    socket: std::os::unix::net::UnixStream,
}

impl FenceWatchdog {
    fn start(dbdir: &Path) -> FenceWatchdog {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("a socket pair");
        let child = Command::new(env!("CARGO_BIN_EXE_rctdbd"))
            .arg("--fence-watchdog")
            .arg(dbdir)
            .arg(FREEZE.as_millis().to_string())
            .arg(GRACE.as_millis().to_string())
            .arg(std::process::id().to_string())
            .stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs)))
            .spawn()
            .expect("starting rctdbd --fence-watchdog");
        FenceWatchdog { child, socket: ours }
    }

    fn tell(&mut self, line: &str) {
        self.socket.write_all(format!("{line}\n").as_bytes()).expect("a note");
    }

    /// Tells a lease of `LEASE` from now, as a running daemon does at every tick, for
    /// `how_long`; returns the last lease's end.
    fn renew_for(&mut self, how_long: Duration) -> u64 {
        let until = Instant::now() + how_long;
        loop {
            let end = monotonic_ns() + LEASE.as_nanos() as u64;
            self.tell(&format!("L {end}"));
            if Instant::now() >= until {
                return end;
            }
            std::thread::sleep(BEAT_EVERY); // the pace of a daemon's ticks
        }
    }

    /// The descriptions handed back (SCM_RIGHTS), waiting at most `GENEROUS` for the first.
    fn handed_back(&self) -> Vec<File> {
        use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
        use std::os::fd::FromRawFd;
        self.socket.set_read_timeout(Some(GENEROUS)).expect("a timeout");
        let mut byte = [0u8; 16];
        let mut rights = nix::cmsg_space!([std::os::fd::RawFd; 16]);
        let mut iov = [std::io::IoSliceMut::new(&mut byte)];
        let message = recvmsg::<()>(self.socket.as_raw_fd(), &mut iov, Some(&mut rights), MsgFlags::empty())
            .expect("the freeze handed back");
        let mut files = vec![];
        for control in message.cmsgs().expect("controls") {
            if let ControlMessageOwned::ScmRights(fds) = control {
                // SAFETY: SCM_RIGHTS made these descriptors for this process alone.
                files.extend(fds.into_iter().map(|fd| unsafe { File::from_raw_fd(fd) }));
            }
        }
        files
    }
}

impl Drop for FenceWatchdog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A stand-in for smbd: a process that runs until killed.
fn client_process() -> Child {
    Command::new("sleep").arg("60").spawn().expect("a client process")
}

fn ended_within(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(5)); // polling a child's exit
    }
    None
}

#[test]
fn a_daemon_silent_past_its_lease_gets_its_clients_killed_and_its_databases_frozen() {
    use std::os::unix::process::ExitStatusExt;
    let dir = scratch("fence");
    let dbdir = dir.join("db");
    let database = make_database(&dbdir);
    let mut watchdog = FenceWatchdog::start(&dbdir);
    let mut client = client_process();
    watchdog.tell(&format!("+ {}", client.id()));
    // This process is the "daemon": listed as a client too, it must never be killed.
    watchdog.tell(&format!("+ {}", std::process::id()));

    let last_end = watchdog.renew_for(5 * LEASE);
    assert!(client.try_wait().expect("try_wait").is_none(), "no client is killed while the lease is renewed");
    assert!(client_can_lock_a_chain(&database), "nothing frozen while the lease is renewed");

    let status = ended_within(&mut client, GENEROUS).expect("the client was killed");
    let killed_at = monotonic_ns();
    assert_eq!(status.signal(), Some(libc::SIGKILL), "killed with SIGKILL: {status}");
    assert!(killed_at >= last_end + GRACE.as_nanos() as u64, "not before the lease's end and the grace");
    println!("killed {:?} after the lease's end", Duration::from_nanos(killed_at - last_end));
    let handed = watchdog.handed_back();
    assert_eq!(handed.len(), 1, "the one database's freeze is handed back");
    assert!(!client_can_lock_a_chain(&database), "a local client blocks: the database is frozen");

    // The daemon runs again: the watchdog lets its own copy go; the freeze is ours now.
    watchdog.tell("L -");
    watchdog.renew_for(BEAT_EVERY);
    assert!(!client_can_lock_a_chain(&database), "still frozen while the handed freeze is held");
    drop(handed);
    let deadline = Instant::now() + GENEROUS;
    while !client_can_lock_a_chain(&database) {
        assert!(Instant::now() < deadline, "the freeze ends with the daemon's copy");
        std::thread::sleep(BEAT_EVERY); // the watchdog reads the note in its own time
    }
}

#[test]
fn a_running_daemon_without_a_lease_keeps_its_clients() {
    let dir = scratch("fence-no-lease");
    let dbdir = dir.join("db");
    let database = make_database(&dbdir);
    let mut watchdog = FenceWatchdog::start(&dbdir);
    let mut client = client_process();
    watchdog.tell(&format!("+ {}", client.id()));
    watchdog.renew_for(2 * LEASE);
    // Its lease ran out, and it says so (its engine froze the databases itself).
    watchdog.tell("L -");
    assert!(ended_within(&mut client, 2 * (LEASE + GRACE)).is_none(), "a daemon that runs is not fenced");
    assert!(client_can_lock_a_chain(&database), "nothing frozen by the watchdog");
    // A client that detached is not killed when the lease later runs out.
    watchdog.tell(&format!("- {}", client.id()));
    watchdog.renew_for(BEAT_EVERY);
    assert!(ended_within(&mut client, 2 * (LEASE + GRACE)).is_none(), "a detached client is left alone");
    let _ = client.kill();
    let _ = client.wait();
}
