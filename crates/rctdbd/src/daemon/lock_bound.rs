//! Bounded waits for the locks libtdb takes by itself. A store or delete takes the free-list
//! lock, and a traverse the transaction lock, with a waiting F_SETLKW; a client
//! stopped inside its own store holds them, and a daemon thread that waited for them would
//! stall the whole node. Every daemon tdb context is made interruptible
//! (`Tdb::fail_lock_waits_on_signal`), and `within` arms a timer that signals the calling
//! thread once the bound has passed: the waiting call then fails with a lock error, which
//! the caller handles like any failed write.

use std::cell::Cell;
use std::sync::Once;
use std::time::Duration;

/// The signal the timers send. An RT signal: glibc keeps the first few for itself, and no
/// other part of the daemon uses these.
fn bound_signal() -> libc::c_int {
    libc::SIGRTMIN() + 4
}

extern "C" fn interrupt_only(_: libc::c_int) {}

fn install_handler() -> Result<(), String> {
    static INSTALLED: Once = Once::new();
    let mut result = Ok(());
    INSTALLED.call_once(|| {
        // SAFETY: sigaction is a plain C struct; all-zero is a valid empty value. The handler
        // does nothing, so it is async-signal-safe. No SA_RESTART: the wait must return EINTR.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = interrupt_only as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(bound_signal(), &action, std::ptr::null_mut()) != 0 {
                result =
                    Err(format!("installing the lock-bound signal: {}", std::io::Error::last_os_error()));
            }
        }
    });
    result
}

/// A thread's timer, deleted when the thread ends (link reader threads come and go).
struct ThreadTimer(libc::timer_t);

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: the timer was created by this thread and is deleted once, here.
        unsafe { libc::timer_delete(self.0) };
    }
}

thread_local! {
    /// This thread's timer, made at its first bounded call.
    static TIMER: std::cell::RefCell<Option<ThreadTimer>> = const { std::cell::RefCell::new(None) };
}

fn thread_timer() -> Result<libc::timer_t, String> {
    if let Some(timer) = TIMER.with_borrow(|timer| timer.as_ref().map(|t| t.0)) {
        return Ok(timer);
    }
    install_handler()?;
    // SAFETY: sigevent is a plain C struct; all-zero is valid before the fields are set. The
    // timer signals this thread only (SIGEV_THREAD_ID with its kernel thread id).
    let timer = unsafe {
        let mut event: libc::sigevent = std::mem::zeroed();
        event.sigev_notify = libc::SIGEV_THREAD_ID;
        event.sigev_signo = bound_signal();
        event.sigev_notify_thread_id = libc::gettid();
        let mut timer: libc::timer_t = std::mem::zeroed();
        if libc::timer_create(libc::CLOCK_MONOTONIC, &mut event, &mut timer) != 0 {
            return Err(format!("creating a lock-bound timer: {}", std::io::Error::last_os_error()));
        }
        timer
    };
    TIMER.with_borrow_mut(|slot| *slot = Some(ThreadTimer(timer)));
    Ok(timer)
}

/// Signals after `every`, and again every `every` (one call may wait for several locks in
/// turn: a store that frees the old record and allocates the new one); zero disarms.
fn arm(timer: libc::timer_t, every: Duration) {
    let every =
        libc::timespec { tv_sec: every.as_secs() as libc::time_t, tv_nsec: every.subsec_nanos() as _ };
    let spec = libc::itimerspec { it_interval: every, it_value: every };
    // SAFETY: the timer was created by this thread, which deletes it only when it ends.
    unsafe { libc::timer_settime(timer, 0, &spec, std::ptr::null_mut()) };
}

/// Runs `call` (libtdb calls on interruptible contexts) with every lock wait inside it
/// bounded by `bound`. Without a timer (the machine refused one) the call runs unbounded,
/// and the refusal is logged once per thread.
pub fn within<T>(bound: Duration, call: impl FnOnce() -> T) -> T {
    let timer = match thread_timer() {
        Ok(timer) => timer,
        Err(err) => {
            thread_local!(static WARNED: Cell<bool> = const { Cell::new(false) });
            if !WARNED.replace(true) {
                log::error!("{err}: this thread's tdb lock waits are not bounded");
            }
            return call();
        }
    };
    /// Disarms the timer however `call` ends, a panic included: a timer left armed would
    /// interrupt every later blocking call of the thread.
    struct Disarm(libc::timer_t);
    impl Drop for Disarm {
        fn drop(&mut self) {
            arm(self.0, Duration::ZERO);
        }
    }
    arm(timer, bound.max(Duration::from_micros(1)));
    let _disarm = Disarm(timer);
    call()
}

/// What a context's `*sigptr` points at: always raised, so any signal that interrupts one
/// of its lock waits ends the wait.
pub static ALWAYS_INTERRUPT: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(1);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::local::{StoreFlag, Tdb};
    use std::time::Instant;

    /// A process that holds the free-list lock (as a client stopped inside a store does)
    /// makes a daemon store fail after the bound instead of waiting for it.
    #[test]
    fn a_store_waits_no_longer_than_the_bound_for_the_free_list() {
        let path = std::env::temp_dir().join(format!("rctdb-lockbound-{}.tdb", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let tdb = Tdb::open(&path, 7, 0, libc::O_RDWR | libc::O_CREAT, 0o600).unwrap();
        tdb.fail_lock_waits_on_signal(&ALWAYS_INTERRUPT);
        within(Duration::from_millis(50), || tdb.store(b"before", b"x", StoreFlag::Replace)).unwrap();
        // Another process holds the free-list lock (byte 164, just before the chains): a child
        // takes it with the plain fcntl lock tdb itself takes.
        let mut child = std::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import fcntl, os, sys, time\n\
                 f = open(sys.argv[1], 'r+b')\n\
                 fcntl.lockf(f, fcntl.LOCK_EX, 1, 164, os.SEEK_SET)\n\
                 print('held', flush=True)\n\
                 sys.stdin.read()",
            ])
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line)
            .unwrap();
        assert_eq!(line.trim(), "held");
        let started = Instant::now();
        let value = vec![7u8; 4000]; // does not fit the old record: allocates
        let stored = within(Duration::from_millis(50), || tdb.store(b"before", &value, StoreFlag::Replace));
        let waited = started.elapsed();
        assert!(stored.is_err(), "the store needed the held free-list lock, yet succeeded");
        assert!(waited < Duration::from_secs(2), "the store waited {waited:?}");
        drop(child.stdin.take());
        child.wait().unwrap();
        within(Duration::from_millis(500), || tdb.store(b"after", &value, StoreFlag::Replace)).unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
