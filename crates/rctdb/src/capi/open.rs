//! rctdb_open: picks the backend for a database name, and remembers per thread why the last
//! open failed (there is no context yet to keep the error on).

use std::{
    cell::RefCell,
    ffi::{c_char, CStr, CString, OsStr},
    os::unix::ffi::OsStrExt,
    path::Path,
};

use super::{
    clustered,
    context::{rctdb_context, Backend},
};
use crate::local::{flags, Tdb};

/// The environment variable naming the local rctdbd's socket: set, databases are clustered
/// (and a daemon that cannot be reached fails the open: never a private local copy, which
/// would be split brain).
pub const SOCKET_ENV: &str = "RCTDB_SOCKET";

thread_local! {
    static OPEN_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Why an open failed: the errno to set and the text for rctdb_open_error.
pub(crate) struct OpenFailure {
    pub errno: i32,
    pub text: String,
}

/// Opens `name` as rctdb_open's caller asked.
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string.
pub(crate) unsafe fn open(
    name: *const c_char,
    hash_size: i32,
    tdb_flags: i32,
    open_flags: i32,
    mode: u32,
) -> Result<rctdb_context, OpenFailure> {
    let internal = tdb_flags & flags::TDB_INTERNAL != 0;
    // A TDB_INTERNAL database is private memory of this process: local even in a cluster.
    if let Some(socket) = std::env::var_os(SOCKET_ENV).filter(|_| !internal) {
        if name.is_null() {
            return Err(OpenFailure {
                errno: libc::EINVAL,
                text: "name is NULL (a clustered database needs a name)".into(),
            });
        }
        // SAFETY: non-NULL, and the caller guarantees a NUL-terminated string.
        let name = unsafe { CStr::from_ptr(name) }.to_bytes();
        return match clustered::open(&socket, name, hash_size, tdb_flags, open_flags) {
            Ok(db) => Ok(rctdb_context::new(Backend::Clustered(Box::new(db)))),
            Err(refused) => Err(OpenFailure { errno: refused.errno, text: refused.text }),
        };
    }
    let path = if !name.is_null() {
        // SAFETY: non-NULL, and the caller guarantees a NUL-terminated string.
        Path::new(OsStr::from_bytes(unsafe { CStr::from_ptr(name) }.to_bytes()))
    } else if internal {
        // As tdb_open: an in-memory database needs no name.
        Path::new("__TDB_INTERNAL__")
    } else {
        return Err(OpenFailure {
            errno: libc::EINVAL,
            text: "name is NULL (only TDB_INTERNAL needs no name)".into(),
        });
    };
    match Tdb::open(path, hash_size, tdb_flags, open_flags, mode) {
        Ok(tdb) => Ok(rctdb_context::new(Backend::Local(tdb))),
        Err(e) => Err(OpenFailure { errno: e.errno, text: e.error.detail }),
    }
}

/// Records the outcome of this thread's latest rctdb_open: the text of a failure, or an
/// empty string after a success.
pub(crate) fn remember(failure: Option<&OpenFailure>) {
    let text = match failure {
        Some(failure) => format!("rctdb_open: {}", failure.text).replace('\0', " "),
        None => String::new(),
    };
    OPEN_ERROR.with(|slot| *slot.borrow_mut() = CString::new(text).unwrap_or_default());
}

/// The text `remember` stored; valid until this thread's next rctdb_open.
pub(crate) fn last_error() -> *const c_char {
    OPEN_ERROR.with(|slot| slot.borrow().as_ptr())
}
