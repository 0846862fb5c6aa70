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
