//! The clustered backend of a context: a `ClusteredDb` (this node's file of the database,
//! read and written under the chain lock while this node is DMASTER, the rest through
//! rctdbd), as `rctdb_open` makes it when `RCTDB_SOCKET` is set.
//!
//! `ClusteredDb` needs `&mut` while a context is shared (`&`): it sits in a `RefCell`, and no
//! borrow is held while C code runs. A parser gets a copy of the record and a traverse
//! callback gets records from a finished cluster-wide traverse, so both may call anything
//! on the same context.

use std::{
    cell::RefCell,
    ffi::OsStr,
    os::unix::{ffi::OsStrExt, net::UnixStream},
    path::Path,
    time::Duration,
};

use super::context::{Failure, Outcome};
use crate::{
    client::ClusteredDb,
    error::{Error, ErrorCode},
    local::{flags, MallocBuf, StoreFlag, KNOWN_TDB_FLAGS},
    wire::control::valid_db_name,
};

/// The environment variable with the time a record may take to migrate here, in ms.
pub const MIGRATE_TIMEOUT_ENV: &str = "RCTDB_MIGRATE_TIMEOUT_MS";
/// Its default: 30 s.
pub const DEFAULT_MIGRATE_TIMEOUT_MS: u64 = 30_000;

const READ_ONLY: &str = "the database is open read-only (O_RDONLY): writes are refused";
const REENTERED: &str = "the context is busy: called from a place that must not call back (rctdb_close?)";

pub(crate) struct Clustered {
    db: RefCell<ClusteredDb>,
    read_only: bool,
    /// "NAME on node N", for error texts.
    label: String,
}

/// Why a clustered open failed: errno and text for rctdb_open_error.
pub(crate) struct Refused {
    pub errno: i32,
    pub text: String,
}

impl Refused {
    fn einval(text: String) -> Refused {
        Refused { errno: libc::EINVAL, text }
    }
}

/// Attaches the database named by the last path component of `name` to the rctdbd at
/// `socket` and opens this node's file of it. Of the tdb_open arguments only TDB_SEQNUM
/// and the access mode count: the daemon owns the file and decides its hash size, mode
/// and the rest of its tdb_flags.
pub(crate) fn open(
    socket: &OsStr,
    name: &[u8],
    hash_size: i32,
    tdb_flags: i32,
    open_flags: i32,
) -> Result<Clustered, Refused> {
    let shown = String::from_utf8_lossy(name).into_owned();
    let base = name.rsplit(|b| *b == b'/').next().unwrap_or_default();
    let base = match std::str::from_utf8(base) {
        Ok(base) if valid_db_name(base) => base,
        _ => {
            return Err(Refused::einval(format!(
                "{shown:?}: a clustered database is named by the last component of the name, and \
                 {:?} is not a plain file name",
                String::from_utf8_lossy(base)
            )))
        }
    };
    check_args(base, hash_size, tdb_flags, open_flags)?;
    if socket.is_empty() {
        return Err(Refused::einval(format!(
            "{base}: {} is set but empty (give the socket of this node's rctdbd, or unset it for a \
             plain local tdb)",
            super::open::SOCKET_ENV
        )));
    }
    let timeout = migrate_timeout()?;
    let socket = Path::new(socket);
    let db = ClusteredDb::open_with_flags(socket, base, timeout, tdb_flags & flags::TDB_SEQNUM).map_err(
        |error| Refused { errno: errno_of(socket, &error), text: format!("{base}: {}", error.detail) },
    )?;
    let label = format!("{base} on node {}", db.pnn());
    let read_only = open_flags & libc::O_ACCMODE == libc::O_RDONLY;
    Ok(Clustered { db: RefCell::new(db), read_only, label })
}

fn check_args(base: &str, hash_size: i32, tdb_flags: i32, open_flags: i32) -> Result<(), Refused> {
    let einval = |what: String| Refused::einval(format!("{base}: {what}"));
    let unknown = tdb_flags & !KNOWN_TDB_FLAGS;
    if unknown != 0 {
        return Err(einval(format!(
            "tdb_flags {tdb_flags:#x} has unknown bits {unknown:#x} (known: TDB_CLEAR_IF_FIRST .. \
             TDB_MUTEX_LOCKING, mask {KNOWN_TDB_FLAGS:#x})"
        )));
    }
    if hash_size < 0 {
        return Err(einval(format!("hash_size {hash_size} is negative (0 picks the default)")));
    }
    if open_flags & libc::O_ACCMODE == libc::O_WRONLY {
        return Err(einval("open_flags has O_WRONLY: tdb must read its file (use O_RDWR)".into()));
    }
    if open_flags & (libc::O_TRUNC | libc::O_EXCL) != 0 {
        return Err(einval(
            "open_flags has O_TRUNC or O_EXCL: a clustered database is shared by the cluster and \
             created by attaching it (rctdbd wipes a volatile database when it first attaches it)"
                .into(),
        ));
    }
    Ok(())
}

/// RCTDB_MIGRATE_TIMEOUT_MS, or its default.
fn migrate_timeout() -> Result<Duration, Refused> {
    let Some(value) = std::env::var_os(MIGRATE_TIMEOUT_ENV) else {
        return Ok(Duration::from_millis(DEFAULT_MIGRATE_TIMEOUT_MS));
    };
    match value.to_str().and_then(|v| v.trim().parse::<u64>().ok()) {
        Some(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
        _ => Err(Refused::einval(format!(
            "{MIGRATE_TIMEOUT_ENV}={:?} is not a positive whole number of milliseconds (default {})",
            String::from_utf8_lossy(value.as_bytes()),
            DEFAULT_MIGRATE_TIMEOUT_MS
        ))),
    }
}

/// The errno for a failed attach: the socket's own when the daemon cannot be reached
/// (ENOENT: no such socket, ECONNREFUSED: nobody listens), else from the error code.
#[cold]
fn errno_of(socket: &Path, error: &Error) -> i32 {
    // Asked again only on this failure path: `Error` keeps the text, not the errno.
    if let Err(e) = UnixStream::connect(socket) {
        return e.raw_os_error().unwrap_or(libc::EIO);
    }
    match error.code {
        ErrorCode::Einval => libc::EINVAL,
        ErrorCode::LockTimeout => libc::ETIMEDOUT,
        ErrorCode::Oom => libc::ENOMEM,
        _ => libc::EIO,
    }
}

/// A malloc'd copy of `data`, which a C caller frees.
fn malloc_copy(data: &[u8]) -> Outcome<MallocBuf> {
    // SAFETY: malloc of at least one byte (so that an empty value still has a pointer).
    let ptr = unsafe { libc::malloc(data.len().max(1)) }.cast::<u8>();
    if ptr.is_null() {
        return Err(Error::new(ErrorCode::Oom, format!("out of memory copying {} bytes", data.len())).into());
    }
    // SAFETY: `ptr` is a fresh allocation of at least data.len() bytes, disjoint from `data`.
    unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, data.len()) };
    // SAFETY: malloc'd, data.len() bytes initialised, owned by nobody else.
    unsafe { MallocBuf::from_raw(ptr, data.len()) }.ok_or(Failure::Fixed(ErrorCode::Oom, "out of memory"))
}

impl Clustered {
    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    fn with<R>(&self, op: impl FnOnce(&mut ClusteredDb) -> crate::error::Result<R>) -> Outcome<R> {
        let mut db = self.db.try_borrow_mut().map_err(|_| Failure::Fixed(ErrorCode::Einval, REENTERED))?;
        Ok(op(&mut db)?)
    }

    fn writable(&self) -> Outcome<()> {
        match self.read_only {
            true => Err(Failure::Fixed(ErrorCode::Rdonly, READ_ONLY)),
            false => Ok(()),
        }
    }

    #[inline(never)]
    pub(crate) fn fetch(&self, key: &[u8]) -> Outcome<MallocBuf> {
        self.with(|db| db.parse(key, malloc_copy))?.unwrap_or(Err(Failure::NoRecord))
    }

    #[inline(never)]
    pub(crate) fn parse_record<R>(&self, key: &[u8], parser: impl FnOnce(&[u8]) -> R) -> Outcome<R> {
        let copy = self.with(|db| db.fetch(key))?.ok_or(Failure::NoRecord)?;
        Ok(parser(&copy))
    }

    #[inline(never)]
    pub(crate) fn storev(&self, key: &[u8], parts: &[&[u8]], flag: StoreFlag) -> Outcome<()> {
        self.writable()?;
        self.with(|db| db.store(key, parts, flag))
    }

    #[inline(never)]
    pub(crate) fn delete(&self, key: &[u8]) -> Outcome<()> {
        self.writable()?;
        self.with(|db| db.delete(key))
    }

    #[inline(never)]
    pub(crate) fn exists(&self, key: &[u8]) -> Outcome<bool> {
        self.with(|db| db.exists(key))
    }

    #[inline(never)]
    pub(crate) fn chainlock(&self, key: &[u8], wait: bool) -> Outcome<()> {
        match wait {
            true => self.with(|db| db.chainlock(key)),
            false => self.with(|db| db.chainlock_nonblock(key)),
        }
    }

    #[inline(never)]
    pub(crate) fn chainunlock(&self, key: &[u8]) -> Outcome<()> {
        self.with(|db| db.chainunlock(key))
    }

    /// The cluster's records as one traverse through rctdbd found them, then `visit` on
    /// each, with the context free for `visit` to use.
    #[inline(never)]
    pub(crate) fn traverse(&self, mut visit: impl FnMut(&[u8], &[u8]) -> bool) -> Outcome<usize> {
        let mut records = vec![];
        self.with(|db| {
            db.traverse(|key, data| {
                records.push((key.to_vec(), data.to_vec()));
                true
            })
        })?;
        let mut count = 0;
        for (key, data) in &records {
            count += 1;
            if !visit(key, data) {
                break;
            }
        }
        Ok(count)
    }

    pub(crate) fn get_seqnum(&self) -> i32 {
        self.db.try_borrow().map_or(-1, |db| db.get_seqnum())
    }

    pub(crate) fn close(self) -> Outcome<()> {
        Ok(self.db.into_inner().close()?)
    }
}
