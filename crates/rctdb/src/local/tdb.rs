//! `Tdb`: one open libtdb database behind a safe interface. This file holds every call into
//! libtdb (besides the benchmark baseline); nothing above it sees a raw pointer.
//!
//! A `Tdb` may move between threads but is not shared between them (`Send`, not `Sync`), as
//! a tdb context is not thread-safe. fcntl locks belong to the process: two threads of one
//! process never exclude each other through chain locks, and tdb refuses to open one file
//! twice in a process.

use std::{
    any::Any,
    ffi::{c_int, c_void, CString},
    fs::File,
    io,
    mem::ManuallyDrop,
    os::unix::{ffi::OsStrExt, io::FromRawFd},
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
    ptr::NonNull,
};

use super::{ffi, file_check, malloc_buf::MallocBuf};
use crate::error::{Error, ErrorCode, Result};

/// Every tdb_open flag libtdb 1.4 knows (`TDB_CLEAR_IF_FIRST` .. `TDB_MUTEX_LOCKING`).
pub const KNOWN_TDB_FLAGS: i32 = (ffi::TDB_MUTEX_LOCKING << 1) as i32 - 1;

/// tdb_open and tdb_close walk and edit libtdb's process-wide list of open databases,
/// which has no lock of its own.
pub(super) static OPEN_LIST: parking_lot::Mutex<()> = parking_lot::const_mutex(());

/// What `store` does when the key exists or does not (tdb's TDB_REPLACE/INSERT/MODIFY).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFlag {
    /// Create or overwrite.
    Replace,
    /// Create only: fails with `ErrorCode::Exists` when the key exists.
    Insert,
    /// Overwrite only: fails with `ErrorCode::NoExist` when the key is absent.
    Modify,
}

impl StoreFlag {
    /// Reads a C caller's flag. 0 is taken as TDB_REPLACE, as libtdb does (Samba passes 0);
    /// any other value but the three flags is refused.
    #[inline]
    pub fn from_c(flag: c_int) -> Option<StoreFlag> {
        match flag as u32 {
            0 | ffi::TDB_REPLACE => Some(StoreFlag::Replace),
            ffi::TDB_INSERT => Some(StoreFlag::Insert),
            ffi::TDB_MODIFY => Some(StoreFlag::Modify),
            _ => None,
        }
    }

    #[inline]
    fn to_c(self) -> c_int {
        (match self {
            StoreFlag::Replace => ffi::TDB_REPLACE,
            StoreFlag::Insert => ffi::TDB_INSERT,
            StoreFlag::Modify => ffi::TDB_MODIFY,
        }) as c_int
    }
}

/// Size of tdb's file header; the chain locks start right after it.
const FREELIST_TOP: u64 = 168;

/// Why `Tdb::open` failed: the errno a C caller of tdb_open would see, and the full story.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenError {
    pub errno: i32,
    pub error: Error,
}

impl OpenError {
    fn new(errno: i32, code: ErrorCode, detail: String) -> OpenError {
        OpenError { errno, error: Error::new(code, detail) }
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl std::error::Error for OpenError {}

impl From<OpenError> for Error {
    fn from(e: OpenError) -> Error {
        e.error
    }
}

pub struct Tdb {
    ctx: NonNull<ffi::tdb_context>,
    path: PathBuf,
}

// SAFETY: a tdb context has no thread affinity (no thread-locals, locks are per process), so
// it may be used from another thread as long as one thread at a time does: `Tdb` is not
// `Sync` (NonNull is not), and opens/closes are serialised by OPEN_LIST.
unsafe impl Send for Tdb {}

#[inline]
fn datum(bytes: &[u8]) -> ffi::TDB_DATA {
    // tdb never writes through a key or data pointer it is given: the cast to *mut is only
    // what the C prototype asks for.
    ffi::TDB_DATA { dptr: bytes.as_ptr() as *mut u8, dsize: bytes.len() }
}

/// The bytes of a TDB_DATA that libtdb handed to a callback.
///
/// # Safety
/// `data` must describe `dsize` readable bytes (or have a NULL pointer) for the returned
/// lifetime, which the caller keeps within the callback.
#[inline]
unsafe fn bytes_of<'a>(data: &ffi::TDB_DATA) -> &'a [u8] {
    if data.dptr.is_null() {
        &[]
    } else {
        // SAFETY: guaranteed by this function's contract.
        unsafe { std::slice::from_raw_parts(data.dptr, data.dsize) }
    }
}

impl Tdb {
    /// Opens (or creates, with O_CREAT in `open_flags`) the tdb at `path`; the arguments are
    /// tdb_open's. Refuses unknown `tdb_flags` bits, and refuses to let O_CREAT reinitialise
    /// a file that is not a tdb, which libtdb would do silently.
    pub fn open(
        path: &Path,
        hash_size: i32,
        tdb_flags: i32,
        open_flags: i32,
        mode: u32,
    ) -> std::result::Result<Tdb, OpenError> {
        check_open_args(path, hash_size, tdb_flags, open_flags)?;
        let internal = tdb_flags & ffi::TDB_INTERNAL as i32 != 0;
        let creating = open_flags & libc::O_CREAT != 0 && open_flags & libc::O_TRUNC == 0;
        if !internal && creating {
            file_check::refuse_to_overwrite(path).map_err(|problem| {
                OpenError::new(libc::EIO, ErrorCode::Corrupt, format!("{}: {problem}", path.display()))
            })?;
        }
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            OpenError::new(
                libc::EINVAL,
                ErrorCode::Einval,
                format!("{}: path contains a NUL byte", path.display()),
            )
        })?;
        let (raw, errno) = {
            let _list = OPEN_LIST.lock();
            // SAFETY: c_path is a NUL-terminated string that outlives the call; the other
            // arguments are plain integers tdb validates itself.
            let raw = unsafe { ffi::tdb_open(c_path.as_ptr(), hash_size, tdb_flags, open_flags, mode) };
            (raw, io::Error::last_os_error().raw_os_error().unwrap_or(0))
        };
        let Some(ctx) = NonNull::new(raw) else {
            return Err(open_failure(path, open_flags, errno));
        };
        let tdb = Tdb { ctx, path: path.to_owned() };
        if !internal {
            // A failed check drops `tdb`, which closes it.
            tdb.check_layout()
                .map_err(|problem| OpenError::new(libc::EIO, ErrorCode::Corrupt, tdb.detail(&problem)))?;
        }
        Ok(tdb)
    }

    /// Closes the database and reports whether closing its file succeeded.
    pub fn close(self) -> Result<()> {
        let mut this = ManuallyDrop::new(self);
        // SAFETY: `this` is never dropped, so the context is closed exactly once.
        let rc = unsafe { this.close_context() };
        let path = std::mem::take(&mut this.path);
        match rc {
            0 => Ok(()),
            _ => Err(Error::io(format!("{}: close: {}", path.display(), io::Error::last_os_error()))),
        }
    }

    /// # Safety
    /// Must be called exactly once, after which the context is dangling.
    unsafe fn close_context(&self) -> c_int {
        let _list = OPEN_LIST.lock();
        // SAFETY: the context is open (it was opened by `open`), and the caller guarantees
        // this is its only close.
        unsafe { ffi::tdb_close(self.ctx.as_ptr()) }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The record for `key`, in a buffer tdb malloc'd; `None` when there is none.
    #[inline]
    pub fn fetch(&self, key: &[u8]) -> Result<Option<MallocBuf>> {
        // SAFETY: the context is open while `self` lives and `key` outlives the call.
        let data = unsafe { ffi::tdb_fetch(self.ctx.as_ptr(), datum(key)) };
        // SAFETY: tdb_fetch returns NULL or a malloc'd buffer of dsize bytes the caller owns.
        match unsafe { MallocBuf::from_raw(data.dptr, data.dsize) } {
            Some(buf) => Ok(Some(buf)),
            None => self.absent_or_error("fetch"),
        }
    }

    /// Runs `parser` on the record for `key` in place (no copy, the chain is locked
    /// meanwhile); `None` when there is no record.
    #[inline]
    pub fn parse_record<F: FnOnce(&[u8]) -> R, R>(&self, key: &[u8], parser: F) -> Result<Option<R>> {
        let mut state = ParseState { parser: Some(parser), result: None, panic: None };
        // SAFETY: the trampoline is instantiated for exactly this state type, and `state`
        // outlives the call, which is the only time tdb uses the pointer.
        let rc = unsafe {
            ffi::tdb_parse_record(
                self.ctx.as_ptr(),
                datum(key),
                Some(parse_trampoline::<F, R>),
                (&mut state as *mut ParseState<F, R>).cast(),
            )
        };
        if let Some(payload) = state.panic {
            panic::resume_unwind(payload);
        }
        match state.result {
            Some(result) => Ok(Some(result)),
            None if rc == 0 => {
                Err(self.detail_error(ErrorCode::Io, "tdb_parse_record returned without a record"))
            }
            None => self.absent_or_error("parse_record"),
        }
    }

    #[inline]
    pub fn store(&self, key: &[u8], data: &[u8], flag: StoreFlag) -> Result<()> {
        // SAFETY: the context is open, key and data outlive the call, and tdb copies them.
        let rc = unsafe { ffi::tdb_store(self.ctx.as_ptr(), datum(key), datum(data), flag.to_c()) };
        self.store_result(rc, flag)
    }

    /// Stores the concatenation of `parts` as one record, without joining them first.
    pub fn storev(&self, key: &[u8], parts: &[&[u8]], flag: StoreFlag) -> Result<()> {
        const ON_STACK: usize = 8;
        let mut stack = [ffi::TDB_DATA::default(); ON_STACK];
        let heap: Vec<ffi::TDB_DATA>;
        let bufs: &[ffi::TDB_DATA] = if parts.len() <= ON_STACK {
            for (slot, part) in stack.iter_mut().zip(parts) {
                *slot = datum(part);
            }
            &stack[..parts.len()]
        } else {
            heap = parts.iter().map(|part| datum(part)).collect();
            &heap
        };
        let count = c_int::try_from(bufs.len()).map_err(|_| {
            self.detail_error(ErrorCode::Einval, &format!("storev: {} parts is too many", bufs.len()))
        })?;
        // SAFETY: `bufs` holds `count` TDB_DATA that point into `parts`, all of which outlive
        // the call; tdb copies the data.
        let rc = unsafe { ffi::tdb_storev(self.ctx.as_ptr(), datum(key), bufs.as_ptr(), count, flag.to_c()) };
        self.store_result(rc, flag)
    }

    #[inline]
    pub fn delete(&self, key: &[u8]) -> Result<()> {
        // SAFETY: the context is open and `key` outlives the call.
        let rc = unsafe { ffi::tdb_delete(self.ctx.as_ptr(), datum(key)) };
        self.check(rc, "delete")
    }

    #[inline]
    pub fn exists(&self, key: &[u8]) -> bool {
        // SAFETY: the context is open and `key` outlives the call.
        unsafe { ffi::tdb_exists(self.ctx.as_ptr(), datum(key)) == 1 }
    }

    /// Locks the hash chain of `key` (and so every key sharing it) until the guard drops.
    pub fn chainlock<'k>(&self, key: &'k [u8]) -> Result<ChainLock<'_, 'k>> {
        self.lock_chain(key)?;
        Ok(ChainLock { tdb: self, key })
    }

    /// Like `chainlock`, but fails at once with `ErrorCode::Lock` if another holds the lock.
    pub fn chainlock_nonblock<'k>(&self, key: &'k [u8]) -> Result<ChainLock<'_, 'k>> {
        self.lock_chain_nonblock(key)?;
        Ok(ChainLock { tdb: self, key })
    }

    /// tdb_chainlock, for callers (the C ABI) with separate lock and unlock calls.
    #[inline]
    pub fn lock_chain(&self, key: &[u8]) -> Result<()> {
        // SAFETY: the context is open and `key` outlives the call.
        let rc = unsafe { ffi::tdb_chainlock(self.ctx.as_ptr(), datum(key)) };
        self.check(rc, "chainlock")
    }

    #[inline]
    pub fn lock_chain_nonblock(&self, key: &[u8]) -> Result<()> {
        // SAFETY: the context is open and `key` outlives the call.
        let rc = unsafe { ffi::tdb_chainlock_nonblock(self.ctx.as_ptr(), datum(key)) };
        self.check(rc, "chainlock_nonblock")
    }

    #[inline]
    pub fn unlock_chain(&self, key: &[u8]) -> Result<()> {
        // SAFETY: the context is open and `key` outlives the call. Unlocking a chain that
        // is not locked is an error tdb reports, not undefined behaviour.
        let rc = unsafe { ffi::tdb_chainunlock(self.ctx.as_ptr(), datum(key)) };
        self.check(rc, "chainunlock")
    }

    /// Marks the chain of `key` as locked without taking the lock: another process (a lock
    /// helper) holds it for us, and tdb must not try to take it again.
    pub fn chainlock_mark(&self, key: &[u8]) -> Result<()> {
        // SAFETY: the context is open and `key` outlives the call.
        let rc = unsafe { ffi::tdb_chainlock_mark(self.ctx.as_ptr(), datum(key)) };
        self.check(rc, "chainlock_mark")
    }

    /// Undoes `chainlock_mark` (the helper keeps or releases the real lock).
    pub fn chainlock_unmark(&self, key: &[u8]) -> Result<()> {
        // SAFETY: the context is open and `key` outlives the call.
        let rc = unsafe { ffi::tdb_chainlock_unmark(self.ctx.as_ptr(), datum(key)) };
        self.check(rc, "chainlock_unmark")
    }

    /// Deletes every record, leaving a valid file that other processes may keep open. Waits
    /// for the all-record lock unless the caller holds it (`lockall_nonblock`).
    pub fn wipe_all(&self) -> Result<()> {
        // SAFETY: the context is open; tdb_wipe_all takes the allrecord lock itself.
        let rc = unsafe { ffi::tdb_wipe_all(self.ctx.as_ptr()) };
        self.check(rc, "wipe_all")
    }

    /// Locks the whole database (every chain and the free list), as recovery's freeze does.
    pub fn lockall(&self) -> Result<()> {
        // SAFETY: the context is open.
        let rc = unsafe { ffi::tdb_lockall(self.ctx.as_ptr()) };
        self.check(rc, "lockall")
    }

    pub fn unlockall(&self) -> Result<()> {
        // SAFETY: the context is open; unlocking without the lock is a reported error.
        let rc = unsafe { ffi::tdb_unlockall(self.ctx.as_ptr()) };
        self.check(rc, "unlockall")
    }

    /// Locks every chain and the free list if no other process holds any of them; never waits.
    pub fn lockall_nonblock(&self) -> Result<()> {
        // SAFETY: the context is open.
        let rc = unsafe { ffi::tdb_lockall_nonblock(self.ctx.as_ptr()) };
        self.check(rc, "lockall_nonblock")
    }

    /// Read-locks every chain if no other process holds a chain's write lock; never waits.
    pub fn lockall_read_nonblock(&self) -> Result<()> {
        // SAFETY: the context is open.
        let rc = unsafe { ffi::tdb_lockall_read_nonblock(self.ctx.as_ptr()) };
        self.check(rc, "lockall_read_nonblock")
    }

    pub fn unlockall_read(&self) -> Result<()> {
        // SAFETY: the context is open; unlocking without the lock is a reported error.
        let rc = unsafe { ffi::tdb_unlockall_read(self.ctx.as_ptr()) };
        self.check(rc, "unlockall_read")
    }

    /// Tells this context it holds the all-record lock that another file description (a
    /// lock waiter) took for it: tdb then takes no chain lock of its own.
    pub fn lockall_mark(&self) -> Result<()> {
        // SAFETY: the context is open.
        let rc = unsafe { ffi::tdb_lockall_mark(self.ctx.as_ptr()) };
        self.check(rc, "lockall_mark")
    }

    pub fn lockall_unmark(&self) -> Result<()> {
        // SAFETY: the context is open; unmarking without the mark is a reported error.
        let rc = unsafe { ffi::tdb_lockall_unmark(self.ctx.as_ptr()) };
        self.check(rc, "lockall_unmark")
    }

    /// The bytes every chain lock lies in, `(start, len)`: what the all-record lock covers.
    pub fn chains_lock_range(&self) -> Option<(u64, u64)> {
        let hash_size = u64::try_from(self.hash_size()).ok()?;
        self.chain_lock_offset(b"").map(|_| (FREELIST_TOP, 4 * hash_size))
    }

    /// `lockall` as a guard that unlocks when dropped.
    pub fn lock_all(&self) -> Result<AllLock<'_>> {
        self.lockall()?;
        Ok(AllLock { tdb: self })
    }

    /// Calls `visit(key, data)` on every record, under a write lock on each record in turn
    /// (so `visit` may store or delete through this `Tdb`); stops when it returns `false`.
    /// Returns how many records were visited.
    pub fn traverse<F: FnMut(&[u8], &[u8]) -> bool>(&self, visit: F) -> Result<usize> {
        self.traverse_with(false, visit)
    }

    /// `traverse` with read locks only: other processes may read meanwhile, `visit` may not
    /// write.
    pub fn traverse_read<F: FnMut(&[u8], &[u8]) -> bool>(&self, visit: F) -> Result<usize> {
        self.traverse_with(true, visit)
    }

    fn traverse_with<F: FnMut(&[u8], &[u8]) -> bool>(&self, read_only: bool, visit: F) -> Result<usize> {
        let mut state = TraverseState { visit, panic: None };
        let private = (&mut state as *mut TraverseState<F>).cast();
        let trampoline = Some(traverse_trampoline::<F> as _);
        // SAFETY: the trampoline is instantiated for exactly this state type, and `state`
        // outlives the call, which is the only time tdb uses the pointer.
        let count = unsafe {
            if read_only {
                ffi::tdb_traverse_read(self.ctx.as_ptr(), trampoline, private)
            } else {
                ffi::tdb_traverse(self.ctx.as_ptr(), trampoline, private)
            }
        };
        if let Some(payload) = state.panic {
            panic::resume_unwind(payload);
        }
        usize::try_from(count).map_err(|_| self.error("traverse"))
    }

    /// From now on every change through this handle raises the database's change counter,
    /// as if it had been opened with TDB_SEQNUM.
    pub fn enable_seqnum(&self) {
        // SAFETY: the context is open.
        unsafe { ffi::tdb_enable_seqnum(self.ctx.as_ptr()) }
    }

    /// Lets up to `count` deleted records per hash chain stay there, dead, for stores to
    /// the same chain to reuse, before they go to the free list (CTDB's DatabaseMaxDead).
    /// Churn then stops filling the free list with small pieces every allocation walks.
    pub fn set_max_dead(&self, count: i32) {
        // SAFETY: the context is open.
        unsafe { ffi::tdb_set_max_dead(self.ctx.as_ptr(), count) }
    }

    /// How many free records the free list has, after merging neighbours among them (tdb
    /// merges as it counts). Takes the free-list lock, which a process holds only inside a
    /// store or delete.
    pub fn freelist_size(&self) -> Result<usize> {
        // SAFETY: the context is open.
        let count = unsafe { ffi::tdb_freelist_size(self.ctx.as_ptr()) };
        usize::try_from(count).map_err(|_| self.error("freelist_size"))
    }

    /// Makes every lock wait of this context end with a lock error when a signal interrupts
    /// it (`*flag` is read then, and must stay non-zero): the daemon bounds its waits for
    /// locks a client may hold this way (`daemon::lock_bound`).
    pub fn fail_lock_waits_on_signal(&self, flag: &'static std::sync::atomic::AtomicI32) {
        // SAFETY: the context is open; the flag lives for the program and tdb only reads it.
        unsafe { ffi::tdb_setalarm_sigptr(self.ctx.as_ptr(), flag.as_ptr()) }
    }

    /// The database's change counter (stays 0 unless opened with TDB_SEQNUM).
    pub fn get_seqnum(&self) -> i32 {
        // SAFETY: the context is open.
        unsafe { ffi::tdb_get_seqnum(self.ctx.as_ptr()) }
    }

    pub fn hash_size(&self) -> i32 {
        // SAFETY: the context is open.
        unsafe { ffi::tdb_hash_size(self.ctx.as_ptr()) }
    }

    /// The byte of the file that tdb's fcntl chain lock for `key` covers, so another file
    /// description can wait for that lock (an OFD lock on the same byte conflicts with it).
    /// Known only for files hashed with tdb's Jenkins hash (TDB_INCOMPATIBLE_HASH), whose
    /// bucket we can compute: `FREELIST_TOP + 4 * (hash % hash_size)`, FREELIST_TOP being the
    /// 168-byte tdb header. `tests::chain_lock_offset_is_the_byte_tdb_locks` holds us to it.
    pub fn chain_lock_offset(&self, key: &[u8]) -> Option<u64> {
        // SAFETY: the context is open.
        let tdb_flags = unsafe { ffi::tdb_get_flags(self.ctx.as_ptr()) };
        if tdb_flags & ffi::TDB_INCOMPATIBLE_HASH as c_int == 0
            || tdb_flags & ffi::TDB_MUTEX_LOCKING as c_int != 0
        {
            return None;
        }
        let bucket = crate::hash::jenkins_hash(key) as u64 % u64::try_from(self.hash_size()).ok()?;
        Some(FREELIST_TOP + 4 * bucket)
    }

    /// tdb's error code of the last failed call (sticky: a success does not clear it).
    pub fn error_code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u32(self.ecode() as u32)
    }

    #[inline]
    fn ecode(&self) -> ffi::TDB_ERROR {
        // SAFETY: the context is open.
        unsafe { ffi::tdb_error(self.ctx.as_ptr()) }
    }

    fn check_layout(&self) -> std::result::Result<(), String> {
        // SAFETY: the context is open.
        let fd = unsafe { ffi::tdb_fd(self.ctx.as_ptr()) };
        if fd < 0 {
            return Ok(());
        }
        // SAFETY: the fd is tdb's and stays open while we read; ManuallyDrop keeps the File
        // from closing it.
        let file = ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
        file_check::check_layout(&file)
    }

    #[inline]
    fn check(&self, rc: c_int, op: &'static str) -> Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(self.error(op))
        }
    }

    #[inline]
    fn store_result(&self, rc: c_int, flag: StoreFlag) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        match (flag, self.ecode()) {
            (StoreFlag::Insert, ffi::TDB_ERROR::TDB_ERR_EXISTS) => Err(self.detail_error(
                ErrorCode::Exists,
                "a record with this key exists (TDB_INSERT only creates records)",
            )),
            (StoreFlag::Modify, ffi::TDB_ERROR::TDB_ERR_NOEXIST) => Err(self.detail_error(
                ErrorCode::NoExist,
                "no record with this key (TDB_MODIFY only changes existing records)",
            )),
            _ => Err(self.error("store")),
        }
    }

    #[inline]
    fn absent_or_error<T>(&self, op: &'static str) -> Result<Option<T>> {
        match self.ecode() {
            ffi::TDB_ERROR::TDB_ERR_NOEXIST => Ok(None),
            _ => Err(self.error(op)),
        }
    }

    /// The precise error of a call that just failed, from tdb's code and errno.
    #[cold]
    fn error(&self, op: &'static str) -> Error {
        let os = io::Error::last_os_error();
        let unlocking = op.contains("unlock") || op.contains("unmark");
        // tdb fails an unlock of a lock it does not hold without setting its (sticky) code,
        // so the code could be any earlier call's: do not consult it.
        if unlocking {
            return self
                .detail_error(ErrorCode::Lock, &format!("{op}: this process does not hold that lock"));
        }
        let (code, what) = match self.error_code() {
            Some(ErrorCode::Rdonly) => {
                (ErrorCode::Rdonly, format!("{op} refused: the database is open read-only (O_RDONLY)"))
            }
            Some(ErrorCode::NoExist) => (ErrorCode::NoExist, "no record with this key".to_string()),
            Some(ErrorCode::Exists) => (ErrorCode::Exists, "a record with this key exists".to_string()),
            Some(ErrorCode::Lock) if op == "chainlock_nonblock" => {
                (ErrorCode::Lock, format!("{op}: the chain is locked by another process ({os})"))
            }
            Some(ErrorCode::Lock) => (ErrorCode::Lock, format!("{op}: locking failed: {os}")),
            Some(ErrorCode::LockTimeout) => (ErrorCode::LockTimeout, format!("{op}: lock timed out")),
            Some(ErrorCode::NoLock) => {
                (ErrorCode::NoLock, format!("{op}: a lock on other keys is held (tdb's lock order)"))
            }
            Some(ErrorCode::Io) => {
                (ErrorCode::Io, format!("{op}: I/O error ({os}); the file may be truncated"))
            }
            Some(ErrorCode::Corrupt) => (ErrorCode::Corrupt, format!("{op}: the database is corrupt")),
            Some(ErrorCode::Oom) => (ErrorCode::Oom, format!("{op}: out of memory")),
            Some(ErrorCode::Einval) => (ErrorCode::Einval, format!("{op}: invalid argument")),
            Some(ErrorCode::Nesting) => (ErrorCode::Nesting, format!("{op}: transaction nesting")),
            None => (ErrorCode::Io, format!("{op} failed without an error code from tdb ({os})")),
        };
        self.detail_error(code, &what)
    }

    fn detail_error(&self, code: ErrorCode, what: &str) -> Error {
        Error::new(code, self.detail(what))
    }

    fn detail(&self, what: &str) -> String {
        format!("{}: {what}", self.path.display())
    }
}

impl Drop for Tdb {
    fn drop(&mut self) {
        // SAFETY: drop runs once and `close` forgets `self` instead of dropping it.
        unsafe { self.close_context() };
    }
}

impl std::fmt::Debug for Tdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tdb").field("path", &self.path).finish()
    }
}

/// A held chain lock; dropping it unlocks.
#[must_use = "the chain is unlocked as soon as the guard is dropped"]
pub struct ChainLock<'t, 'k> {
    tdb: &'t Tdb,
    key: &'k [u8],
}

impl ChainLock<'_, '_> {
    /// Unlocks now and reports failure, which dropping can only log.
    pub fn unlock(self) -> Result<()> {
        let result = self.tdb.unlock_chain(self.key);
        std::mem::forget(self);
        result
    }
}

impl Drop for ChainLock<'_, '_> {
    fn drop(&mut self) {
        if let Err(e) = self.tdb.unlock_chain(self.key) {
            log::error!("dropping a chain lock: {e}");
        }
    }
}

/// A held lock on the whole database; dropping it unlocks.
#[must_use = "the database is unlocked as soon as the guard is dropped"]
pub struct AllLock<'t> {
    tdb: &'t Tdb,
}

impl Drop for AllLock<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.tdb.unlockall() {
            log::error!("dropping a whole-database lock: {e}");
        }
    }
}

/// tdb's Jenkins hash of `key` (`tdb_jenkins_hash`), the hash of TDB_INCOMPATIBLE_HASH
/// databases and of CTDB's LMASTER choice.
pub fn jenkins_hash(key: &[u8]) -> u32 {
    let mut data = datum(key);
    // SAFETY: tdb_jenkins_hash only reads `dsize` bytes at `dptr` (the pointer parameter is
    // not const in the prototype, but the function does not write).
    unsafe { ffi::tdb_jenkins_hash(&mut data) }
}

struct ParseState<F, R> {
    parser: Option<F>,
    result: Option<R>,
    panic: Option<Box<dyn Any + Send>>,
}

/// # Safety
/// `private` must point to a live `ParseState<F, R>`; `data` must be readable for the call.
unsafe extern "C" fn parse_trampoline<F: FnOnce(&[u8]) -> R, R>(
    _key: ffi::TDB_DATA,
    data: ffi::TDB_DATA,
    private: *mut c_void,
) -> c_int {
    // SAFETY: `parse_record` passes a pointer to its own ParseState<F, R>, unaliased while
    // tdb runs this callback.
    let state = unsafe { &mut *private.cast::<ParseState<F, R>>() };
    // SAFETY: tdb's data is valid for the duration of the callback.
    let data = unsafe { bytes_of(&data) };
    if let Some(parser) = state.parser.take() {
        // A panic must not unwind through libtdb: catch it here and rethrow after tdb returns.
        match panic::catch_unwind(AssertUnwindSafe(|| parser(data))) {
            Ok(result) => state.result = Some(result),
            Err(payload) => state.panic = Some(payload),
        }
    }
    0
}

struct TraverseState<F> {
    visit: F,
    panic: Option<Box<dyn Any + Send>>,
}

/// # Safety
/// `private` must point to a live `TraverseState<F>`; key and data must be readable for the
/// call.
unsafe extern "C" fn traverse_trampoline<F: FnMut(&[u8], &[u8]) -> bool>(
    _tdb: *mut ffi::tdb_context,
    key: ffi::TDB_DATA,
    data: ffi::TDB_DATA,
    private: *mut c_void,
) -> c_int {
    // SAFETY: `traverse_with` passes a pointer to its own TraverseState<F>, unaliased while
    // tdb runs this callback.
    let state = unsafe { &mut *private.cast::<TraverseState<F>>() };
    // SAFETY: tdb's key and data are valid for the duration of the callback.
    let (key, data) = unsafe { (bytes_of(&key), bytes_of(&data)) };
    match panic::catch_unwind(AssertUnwindSafe(|| (state.visit)(key, data))) {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(payload) => {
            state.panic = Some(payload);
            1
        }
    }
}

fn check_open_args(
    path: &Path,
    hash_size: i32,
    tdb_flags: i32,
    open_flags: i32,
) -> std::result::Result<(), OpenError> {
    let einval =
        |what: String| OpenError::new(libc::EINVAL, ErrorCode::Einval, format!("{}: {what}", path.display()));
    let unknown = tdb_flags & !KNOWN_TDB_FLAGS;
    if unknown != 0 {
        return Err(einval(format!(
            "tdb_flags {tdb_flags:#x} has unknown bits {unknown:#x} (known: TDB_CLEAR_IF_FIRST .. \
             TDB_MUTEX_LOCKING, mask {KNOWN_TDB_FLAGS:#x})"
        )));
    }
    let nesting = (ffi::TDB_ALLOW_NESTING | ffi::TDB_DISALLOW_NESTING) as i32;
    if tdb_flags & nesting == nesting {
        return Err(einval("TDB_ALLOW_NESTING and TDB_DISALLOW_NESTING exclude each other".into()));
    }
    if hash_size < 0 {
        return Err(einval(format!("hash_size {hash_size} is negative (0 picks tdb's default)")));
    }
    if open_flags & libc::O_ACCMODE == libc::O_WRONLY {
        return Err(einval("open_flags has O_WRONLY: tdb must read its file (use O_RDWR)".into()));
    }
    Ok(())
}

/// Turns tdb_open's errno into a sentence, looking at the file and its directory.
#[cold]
fn open_failure(path: &Path, open_flags: i32, errno: i32) -> OpenError {
    let shown = path.display();
    let os = io::Error::from_raw_os_error(errno);
    let (code, what) = match errno {
        libc::ENOENT => {
            let dir = match path.parent() {
                Some(dir) if !dir.as_os_str().is_empty() => dir,
                _ => Path::new("."),
            };
            if !dir.is_dir() {
                (ErrorCode::Io, format!("directory {} does not exist", dir.display()))
            } else if open_flags & libc::O_CREAT == 0 {
                (ErrorCode::Io, "no such file (open_flags has no O_CREAT to create it)".to_string())
            } else {
                (ErrorCode::Io, format!("cannot create the file: {os}"))
            }
        }
        libc::EBUSY => (
            ErrorCode::Io,
            "already open in this process: tdb allows one open per file per process (fcntl locks do not nest)"
                .to_string(),
        ),
        libc::EIO | libc::EINVAL => match file_check::diagnose(path) {
            Some(problem) => (ErrorCode::Corrupt, problem),
            None => (ErrorCode::Einval, format!("tdb_open refused it: {os}")),
        },
        libc::ENOMEM => (ErrorCode::Oom, "out of memory".to_string()),
        _ => (ErrorCode::Io, format!("cannot open: {os}")),
    };
    let errno = if code == ErrorCode::Corrupt { libc::EIO } else { errno };
    OpenError::new(errno, code, format!("{shown}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn scratch(name: &str) -> PathBuf {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rctdb-local-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir.join(name)
    }

    fn create(path: &Path) -> Tdb {
        Tdb::open(path, 0, 0, libc::O_RDWR | libc::O_CREAT, 0o600).expect("open")
    }

    /// Whether another open file description could take a write lock on `offset` now.
    fn byte_is_locked(path: &Path, offset: u64) -> bool {
        use nix::fcntl::{fcntl, FcntlArg};
        let file = std::fs::OpenOptions::new().read(true).write(true).open(path).expect("open");
        // SAFETY: flock is a plain C struct for which all-zero bytes are a valid value.
        let mut probe: libc::flock = unsafe { std::mem::zeroed() };
        probe.l_type = libc::F_WRLCK as libc::c_short;
        probe.l_whence = libc::SEEK_SET as libc::c_short;
        probe.l_start = offset as libc::off_t;
        probe.l_len = 1;
        fcntl(file.as_raw_fd(), FcntlArg::F_OFD_GETLK(&mut probe)).expect("F_OFD_GETLK");
        // Kept open: closing a descriptor would drop this process's fcntl locks on the file.
        std::mem::forget(file);
        probe.l_type != libc::F_UNLCK as libc::c_short
    }

    #[test]
    fn chain_lock_offset_is_the_byte_tdb_locks() {
        let path = scratch("offset.tdb");
        let tdb =
            Tdb::open(&path, 101, ffi::TDB_INCOMPATIBLE_HASH as i32, libc::O_RDWR | libc::O_CREAT, 0o600)
                .expect("open");
        for key in [&b"a"[..], b"opendb key", b"another key", b""] {
            let offset = tdb.chain_lock_offset(key).expect("jenkins-hashed file");
            assert!(!byte_is_locked(&path, offset));
            tdb.lock_chain(key).expect("lock");
            assert!(byte_is_locked(&path, offset), "tdb's chain lock covers byte {offset}");
            let neighbour = if offset >= 172 { offset - 4 } else { offset + 4 };
            assert!(!byte_is_locked(&path, neighbour), "and not the next chain's");
            tdb.unlock_chain(key).expect("unlock");
        }
        let plain = create(&scratch("plain.tdb"));
        assert_eq!(plain.chain_lock_offset(b"a"), None, "the default hash is not ours to compute");
    }

    #[test]
    fn store_fetch_delete_round_trip() {
        let tdb = create(&scratch("crud.tdb"));
        assert!(tdb.fetch(b"k").expect("fetch").is_none());
        tdb.store(b"k", b"value", StoreFlag::Insert).expect("insert");
        assert_eq!(&*tdb.fetch(b"k").expect("fetch").expect("present"), b"value");
        let err = tdb.store(b"k", b"x", StoreFlag::Insert).expect_err("insert twice");
        assert_eq!(err.code, ErrorCode::Exists);
        tdb.store(b"k", b"new", StoreFlag::Modify).expect("modify");
        assert_eq!(tdb.parse_record(b"k", |d| d.to_vec()).expect("parse"), Some(b"new".to_vec()));
        tdb.delete(b"k").expect("delete");
        assert!(!tdb.exists(b"k"));
        assert_eq!(tdb.delete(b"k").expect_err("delete twice").code, ErrorCode::NoExist);
        assert_eq!(
            tdb.store(b"k", b"x", StoreFlag::Modify).expect_err("modify absent").code,
            ErrorCode::NoExist
        );
        assert_eq!(tdb.parse_record(b"k", |d| d.len()).expect("parse"), None);
    }

    #[test]
    fn storev_joins_parts_and_empty_values_exist() {
        let tdb = create(&scratch("storev.tdb"));
        let many: Vec<&[u8]> = vec![b"ab"; 20];
        tdb.storev(b"few", &[b"a", b"", b"bc"], StoreFlag::Replace).expect("storev");
        tdb.storev(b"many", &many, StoreFlag::Replace).expect("storev");
        assert_eq!(&*tdb.fetch(b"few").expect("fetch").expect("present"), b"abc");
        assert_eq!(tdb.fetch(b"many").expect("fetch").expect("present").len(), 40);
        tdb.store(b"empty", b"", StoreFlag::Replace).expect("store");
        assert_eq!(tdb.fetch(b"empty").expect("fetch").expect("present").len(), 0);
    }

    #[test]
    fn traverse_counts_and_stops() {
        let tdb = create(&scratch("traverse.tdb"));
        for i in 0..50u32 {
            tdb.store(&i.to_le_bytes(), b"v", StoreFlag::Insert).expect("store");
        }
        assert_eq!(tdb.traverse(|_, _| true).expect("traverse"), 50);
        let mut seen = 0;
        let visited = tdb.traverse_read(|_, _| {
            seen += 1;
            seen < 10
        });
        assert_eq!(visited.expect("traverse"), 10);
        // Deleting from inside a traverse is allowed.
        assert_eq!(tdb.traverse(|k, _| tdb.delete(k).is_ok()).expect("traverse"), 50);
        assert_eq!(tdb.traverse(|_, _| true).expect("traverse"), 0);
    }

    #[test]
    fn chain_lock_guard_unlocks() {
        let tdb = create(&scratch("lock.tdb"));
        {
            let _held = tdb.chainlock(b"k").expect("lock");
            tdb.store(b"k", b"1", StoreFlag::Replace).expect("store under lock");
        }
        assert_eq!(tdb.unlock_chain(b"k").expect_err("not held").code, ErrorCode::Lock);
        tdb.chainlock_nonblock(b"k").expect("lock").unlock().expect("unlock");
        let _all = tdb.lock_all().expect("lockall");
    }

    #[test]
    fn bad_open_arguments_are_refused() {
        let path = scratch("flags.tdb");
        let err = Tdb::open(&path, 0, 1 << 20, libc::O_RDWR | libc::O_CREAT, 0o600).expect_err("bad flag");
        assert_eq!(err.errno, libc::EINVAL);
        assert!(err.error.detail.contains("unknown bits 0x100000"), "{}", err.error.detail);
        let missing = Path::new("/nonexistent-rctdb-dir/x.tdb");
        let err = Tdb::open(missing, 0, 0, libc::O_RDWR | libc::O_CREAT, 0o600).expect_err("no dir");
        assert_eq!(err.errno, libc::ENOENT);
        assert!(err.error.detail.contains("directory /nonexistent-rctdb-dir does not exist"));
    }

    #[test]
    fn not_a_tdb_is_refused_and_kept() {
        let path = scratch("text.tdb");
        std::fs::write(&path, "just some text, long enough to be a file\n").expect("write");
        for flags in [libc::O_RDWR, libc::O_RDWR | libc::O_CREAT] {
            let err = Tdb::open(&path, 0, 0, flags, 0o600).expect_err("not a tdb");
            assert_eq!(err.errno, libc::EIO);
            assert!(err.error.detail.contains("not a tdb file"), "{}", err.error.detail);
        }
        assert!(std::fs::read_to_string(&path).expect("read").starts_with("just some text"));
    }

    #[test]
    fn truncated_file_is_refused() {
        let path = scratch("cut.tdb");
        {
            let tdb = Tdb::open(&path, 7, 0, libc::O_RDWR | libc::O_CREAT, 0o600).expect("open");
            for i in 0..200u32 {
                tdb.store(&i.to_le_bytes(), &[7u8; 100], StoreFlag::Insert).expect("store");
            }
        }
        let len = std::fs::metadata(&path).expect("stat").len();
        let file = std::fs::OpenOptions::new().write(true).open(&path).expect("open file");
        file.set_len(len / 2).expect("truncate");
        let err = Tdb::open(&path, 0, 0, libc::O_RDWR, 0).expect_err("truncated");
        assert!(err.error.detail.contains("truncated"), "{}", err.error.detail);
        file.set_len(100).expect("truncate");
        let err = Tdb::open(&path, 0, 0, libc::O_RDWR, 0).expect_err("truncated header");
        assert!(err.error.detail.contains("shorter than the 168-byte tdb header"), "{}", err.error.detail);
    }

    #[test]
    fn read_only_open_refuses_writes() {
        let path = scratch("ro.tdb");
        create(&path).store(b"k", b"v", StoreFlag::Replace).expect("store");
        let tdb = Tdb::open(&path, 0, 0, libc::O_RDONLY, 0).expect("open read-only");
        let err = tdb.store(b"k", b"w", StoreFlag::Replace).expect_err("read-only");
        assert_eq!(err.code, ErrorCode::Rdonly);
        assert_eq!(&*tdb.fetch(b"k").expect("fetch").expect("present"), b"v");
    }

    #[test]
    fn a_panic_in_a_callback_reaches_the_caller() {
        let tdb = create(&scratch("panic.tdb"));
        tdb.store(b"k", b"v", StoreFlag::Replace).expect("store");
        let caught = panic::catch_unwind(AssertUnwindSafe(|| tdb.traverse(|_, _| panic!("boom"))));
        assert!(caught.is_err());
        // The traverse lock was released: writing still works.
        tdb.store(b"k", b"w", StoreFlag::Replace).expect("store after panic");
    }

    #[test]
    fn jenkins_hash_is_lookup3_hashlittle() {
        // Bob Jenkins' published values for hashlittle(key, len, 0).
        assert_eq!(jenkins_hash(b""), 0xdead_beef);
        assert_eq!(jenkins_hash(b"Four score and seven years ago"), 0x1777_0551);
    }
}
