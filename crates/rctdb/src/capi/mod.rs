//! The C ABI: `include/rctdb.h` is generated from this file by cbindgen (`tests/header.rs`
//! checks that it is current). It mirrors tdb's API so that tdb code ports by renaming
//! `tdb_` to `rctdb_`: same `TDB_DATA`, same `TDB_REPLACE/INSERT/MODIFY`, same
//! `enum TDB_ERROR`, same return conventions (0 / -1, the error kept on the context).
//!
//! Each function checks its arguments here, once (`args`), and hands safe values to
//! `rctdb_context`, which routes the call to the database's backend. A NULL context gives
//! -1 / NULL and sets errno to EINVAL. A context is used by one thread at a time, as a tdb
//! context is.
//!
//! The first line of each function's doc comment is its comment in the header.

mod args;
mod clustered;
mod context;
mod open;

use std::{
    ffi::{c_char, c_int, c_void, CStr},
    ptr,
};

pub use clustered::{DEFAULT_MIGRATE_TIMEOUT_MS, MIGRATE_TIMEOUT_ENV};
pub use context::rctdb_context;
pub use open::SOCKET_ENV;

use crate::{
    error::ErrorCode,
    local::{TDB_DATA, TDB_ERROR},
};
use context::Failure;

const NULL_DATA: TDB_DATA = TDB_DATA { dptr: ptr::null_mut(), dsize: 0 };
const NULL_CONTEXT: &CStr = c"rctdb: the database handle (struct rctdb_context *) is NULL";

/// The context behind `db`, or `None` (and errno EINVAL) when the caller passed NULL.
///
/// # Safety
/// `db` must be NULL or a context from `rctdb_open` that is not closed.
#[inline]
unsafe fn context<'a>(db: *mut rctdb_context) -> Option<&'a rctdb_context> {
    // SAFETY: guaranteed by the caller; contexts are only ever shared, never `&mut`, so a
    // callback re-entering the API during a traverse or parse aliases nothing mutable.
    let ctx = unsafe { db.as_ref() };
    if ctx.is_none() {
        nix::errno::Errno::set_raw(libc::EINVAL);
    }
    ctx
}

/// Opens (with O_CREAT in open_flags: creates) a database; NULL on failure, see rctdb_open_error().
///
/// Unclustered (RCTDB_SOCKET unset) `name` is a path and the file a plain tdb. The
/// arguments are tdb_open's; unknown tdb_flags bits are refused with EINVAL. On failure errno
/// is set and `rctdb_open_error()` says why.
///
/// Clustered (RCTDB_SOCKET set to the socket of this node's rctdbd): the database is the
/// last component of `name` (EINVAL unless a plain file name), attached through the daemon,
/// and this node's file of it is opened. Only TDB_SEQNUM of `tdb_flags` and the access mode
/// of `open_flags` count (O_RDONLY refuses writes; O_WRONLY, O_TRUNC, O_EXCL: EINVAL);
/// the daemon owns the file and picks the rest. TDB_INTERNAL stays a private in-memory tdb.
/// A daemon that cannot be reached fails the open (ENOENT, ECONNREFUSED): never a local copy.
///
/// # Safety
/// `name` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rctdb_open(
    name: *const c_char,
    hash_size: c_int,
    tdb_flags: c_int,
    open_flags: c_int,
    mode: libc::mode_t,
) -> *mut rctdb_context {
    // SAFETY: the caller's guarantee on `name` is open()'s requirement.
    match unsafe { open::open(name, hash_size, tdb_flags, open_flags, mode) } {
        Ok(ctx) => {
            open::remember(None);
            Box::into_raw(Box::new(ctx))
        }
        Err(failure) => {
            open::remember(Some(&failure));
            nix::errno::Errno::set_raw(failure.errno);
            ptr::null_mut()
        }
    }
}

/// Why this thread's last rctdb_open() returned NULL ("" after a success); valid until its next rctdb_open().
#[no_mangle]
pub extern "C" fn rctdb_open_error() -> *const c_char {
    open::last_error()
}

/// Closes the database and frees the context, even when closing fails (-1).
///
/// # Safety
/// `db` must be NULL or an open context, which must not be used afterwards (nor closed from
/// inside a traverse or parse callback).
#[no_mangle]
pub unsafe extern "C" fn rctdb_close(db: *mut rctdb_context) -> c_int {
    if db.is_null() {
        nix::errno::Errno::set_raw(libc::EINVAL);
        return -1;
    }
    // SAFETY: `db` came from Box::into_raw in rctdb_open and the caller gives it up here.
    let ctx = unsafe { Box::from_raw(db) };
    match ctx.close() {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

/// The record for key in a malloc'd buffer the caller frees; dptr NULL if absent (TDB_ERR_NOEXIST) or on error.
///
/// # Safety
/// `db` must be NULL or an open context; `key.dptr` must point to `key.dsize` bytes.
#[no_mangle]
pub unsafe extern "C" fn rctdb_fetch(db: *mut rctdb_context, key: TDB_DATA) -> TDB_DATA {
    // SAFETY: the caller's guarantee on `db`.
    let Some(ctx) = (unsafe { context(db) }) else { return NULL_DATA };
    // SAFETY: the caller's guarantee on `key`.
    match unsafe { args::key(key) }.and_then(|key| ctx.fetch(key)) {
        Ok(buf) => {
            let (dptr, dsize) = buf.into_raw();
            TDB_DATA { dptr, dsize }
        }
        Err(failure) => {
            ctx.fail("rctdb_fetch", failure);
            NULL_DATA
        }
    }
}

/// Calls parser on the record in place (no copy) and returns its result; -1 if absent or on error.
///
/// The record's chain is locked while `parser` runs: it may read the database but must not
/// write to it. On a clustered database `parser` gets a copy taken under the chain lock
/// (data only, without the record header) and may call anything on `db`.
///
/// # Safety
/// `db` must be NULL or an open context; `key.dptr` must point to `key.dsize` bytes; `parser`
/// must be safe to call with `private_data`.
#[no_mangle]
pub unsafe extern "C" fn rctdb_parse_record(
    db: *mut rctdb_context,
    key: TDB_DATA,
    parser: Option<unsafe extern "C" fn(key: TDB_DATA, data: TDB_DATA, private_data: *mut c_void) -> c_int>,
    private_data: *mut c_void,
) -> c_int {
    // SAFETY: the caller's guarantee on `db`.
    let Some(ctx) = (unsafe { context(db) }) else { return -1 };
    let Some(parser) = parser else {
        ctx.fail("rctdb_parse_record", Failure::Fixed(ErrorCode::Einval, "parser is NULL"));
        return -1;
    };
    // SAFETY: the caller's guarantee on `key`.
    let outcome = unsafe { args::key(key) }.and_then(|bytes| {
        // SAFETY: the caller vouches for `parser` with `private_data`; `data` is valid
        // while the parser runs, which is all tdb promises too.
        ctx.parse_record(bytes, |data| unsafe { parser(key, args::to_c(data), private_data) })
    });
    outcome.unwrap_or_else(|failure| {
        ctx.fail("rctdb_parse_record", failure);
        -1
    })
}

/// Stores dbuf under key; flag is TDB_REPLACE, TDB_INSERT (fails if present) or TDB_MODIFY (fails if absent).
///
/// # Safety
/// `db` must be NULL or an open context; non-NULL `dptr`s must point to `dsize` bytes.
#[no_mangle]
pub unsafe extern "C" fn rctdb_store(
    db: *mut rctdb_context,
    key: TDB_DATA,
    dbuf: TDB_DATA,
    flag: c_int,
) -> c_int {
    // SAFETY: the caller's guarantee on `db`.
    let Some(ctx) = (unsafe { context(db) }) else { return -1 };
    // SAFETY: the caller's guarantee on `key`.
    let outcome = unsafe { args::key(key) }.and_then(|key| {
        // SAFETY: the caller's guarantee on `dbuf`.
        let data = unsafe { args::data(dbuf, "dbuf") }?;
        ctx.store(key, data, args::store_flag(flag)?)
    });
    ctx.status("rctdb_store", outcome)
}

/// Stores the concatenation of num_dbufs buffers under key, as one record.
///
/// # Safety
/// `db` must be NULL or an open context; `dbufs` must point to `num_dbufs` TDB_DATA whose
/// non-NULL `dptr`s point to `dsize` bytes.
#[no_mangle]
pub unsafe extern "C" fn rctdb_storev(
    db: *mut rctdb_context,
    key: TDB_DATA,
    dbufs: *const TDB_DATA,
    num_dbufs: c_int,
    flag: c_int,
) -> c_int {
    // SAFETY: the caller's guarantee on `db`.
    let Some(ctx) = (unsafe { context(db) }) else { return -1 };
    // SAFETY: the caller's guarantee on `key`.
    let outcome = unsafe { args::key(key) }.and_then(|key| {
        let flag = args::store_flag(flag)?;
        // SAFETY: the caller's guarantee on `dbufs` and `num_dbufs`.
        let dbufs = unsafe { args::data_array(dbufs, num_dbufs) }?;
        let mut parts = args::Parts::default();
        for (i, dbuf) in dbufs.iter().enumerate() {
            // SAFETY: the caller's guarantee on each element of `dbufs`.
            parts.push(unsafe { args::data_at(*dbuf, i) }?);
        }
        ctx.storev(key, parts.as_slice(), flag)
    });
    ctx.status("rctdb_storev", outcome)
}

/// Deletes the record for key; -1 with TDB_ERR_NOEXIST if there is none.
///
/// # Safety
/// `db` must be NULL or an open context; `key.dptr` must point to `key.dsize` bytes.
#[no_mangle]
pub unsafe extern "C" fn rctdb_delete(db: *mut rctdb_context, key: TDB_DATA) -> c_int {
    // SAFETY: the caller's guarantee on `db`.
    let Some(ctx) = (unsafe { context(db) }) else { return -1 };
    // SAFETY: the caller's guarantee on `key`.
    let outcome = unsafe { args::key(key) }.and_then(|key| ctx.delete(key));
    ctx.status("rctdb_delete", outcome)
}

/// 1 if a record for key exists, 0 if not; -1 on bad arguments or (clustered) an unreachable record.
///
/// # Safety
/// `db` must be NULL or an open context; `key.dptr` must point to `key.dsize` bytes.
#[no_mangle]
pub unsafe extern "C" fn rctdb_exists(db: *mut rctdb_context, key: TDB_DATA) -> c_int {
    // SAFETY: the caller's guarantee on `db`.
    let Some(ctx) = (unsafe { context(db) }) else { return -1 };
    // SAFETY: the caller's guarantee on `key`.
    match unsafe { args::key(key) }.and_then(|key| ctx.exists(key)) {
        Ok(exists) => c_int::from(exists),
        Err(failure) => {
            ctx.fail("rctdb_exists", failure);
            -1
        }
    }
}

/// Locks the hash chain of key (waiting for it) until rctdb_chainunlock(); fetch/store of key stay allowed.
///
/// # Safety
/// `db` must be NULL or an open context; `key.dptr` must point to `key.dsize` bytes.
#[no_mangle]
pub unsafe extern "C" fn rctdb_chainlock(db: *mut rctdb_context, key: TDB_DATA) -> c_int {
    // SAFETY: the caller's guarantee on `db` and `key`.
    unsafe { chainlock("rctdb_chainlock", db, key, true) }
}

/// Like rctdb_chainlock() but fails at once (-1, TDB_ERR_LOCK) if another holds it or (clustered) the record is elsewhere.
///
/// On a clustered database it never migrates the record: it succeeds only when the record
/// is on this node (this node is its DMASTER) and no other process holds the chain.
///
/// # Safety
/// `db` must be NULL or an open context; `key.dptr` must point to `key.dsize` bytes.
#[no_mangle]
pub unsafe extern "C" fn rctdb_chainlock_nonblock(db: *mut rctdb_context, key: TDB_DATA) -> c_int {
    // SAFETY: the caller's guarantee on `db` and `key`.
    unsafe { chainlock("rctdb_chainlock_nonblock", db, key, false) }
}

/// # Safety
/// As for rctdb_chainlock.
#[inline]
unsafe fn chainlock(op: &'static str, db: *mut rctdb_context, key: TDB_DATA, wait: bool) -> c_int {
    // SAFETY: the caller's guarantee on `db`.
    let Some(ctx) = (unsafe { context(db) }) else { return -1 };
    // SAFETY: the caller's guarantee on `key`.
    let outcome = unsafe { args::key(key) }.and_then(|key| ctx.chainlock(key, wait));
    ctx.status(op, outcome)
}

/// Releases the chain lock taken by rctdb_chainlock() on key.
///
/// # Safety
/// `db` must be NULL or an open context; `key.dptr` must point to `key.dsize` bytes.
#[no_mangle]
pub unsafe extern "C" fn rctdb_chainunlock(db: *mut rctdb_context, key: TDB_DATA) -> c_int {
    // SAFETY: the caller's guarantee on `db`.
    let Some(ctx) = (unsafe { context(db) }) else { return -1 };
    // SAFETY: the caller's guarantee on `key`.
    let outcome = unsafe { args::key(key) }.and_then(|key| ctx.chainunlock(key));
    ctx.status("rctdb_chainunlock", outcome)
}

/// Calls traverse_fn on every record (it may store or delete); a non-zero return stops. Returns the count, -1 on error.
///
/// With `traverse_fn` NULL it only counts the records. On a clustered database it visits
/// every record of the cluster once, the newest copy (data without the record header), as
/// rctdbd collected them from every node when the traverse began; deleted (empty) records
/// are not visited. It fails (TDB_ERR_LOCK) while `db` holds a chain lock.
///
/// # Safety
/// `db` must be NULL or an open context; `traverse_fn` must be safe to call with
/// `private_data`, and must not close `db`.
#[no_mangle]
pub unsafe extern "C" fn rctdb_traverse(
    db: *mut rctdb_context,
    traverse_fn: Option<
        unsafe extern "C" fn(
            db: *mut rctdb_context,
            key: TDB_DATA,
            data: TDB_DATA,
            private_data: *mut c_void,
        ) -> c_int,
    >,
    private_data: *mut c_void,
) -> c_int {
    // SAFETY: the caller's guarantee on `db`.
    let Some(ctx) = (unsafe { context(db) }) else { return -1 };
    let outcome = match traverse_fn {
        // SAFETY: the caller vouches for `visit` with `private_data`; key and data are
        // valid while it runs, which is all tdb promises too.
        Some(visit) => ctx
            .traverse(|key, data| unsafe { visit(db, args::to_c(key), args::to_c(data), private_data) } == 0),
        None => ctx.traverse(|_, _| true),
    };
    match outcome {
        Ok(count) => c_int::try_from(count).unwrap_or(c_int::MAX),
        Err(failure) => {
            ctx.fail("rctdb_traverse", failure);
            -1
        }
    }
}

/// The database's change counter: 0 unless opened with TDB_SEQNUM; -1 for a NULL db.
///
/// # Safety
/// `db` must be NULL or an open context.
#[no_mangle]
pub unsafe extern "C" fn rctdb_get_seqnum(db: *mut rctdb_context) -> c_int {
    // SAFETY: the caller's guarantee on `db`.
    match unsafe { context(db) } {
        Some(ctx) => ctx.get_seqnum(),
        None => -1,
    }
}

/// The error of the last failed call on db (TDB_SUCCESS if none); TDB_ERR_EINVAL for a NULL db.
///
/// # Safety
/// `db` must be NULL or an open context.
#[no_mangle]
pub unsafe extern "C" fn rctdb_error(db: *mut rctdb_context) -> TDB_ERROR {
    // SAFETY: the caller's guarantee on `db`.
    match unsafe { context(db) } {
        Some(ctx) => ctx.error_code(),
        None => TDB_ERROR::TDB_ERR_EINVAL,
    }
}

/// What exactly went wrong in the last failed call on db; valid until the next call on db.
///
/// # Safety
/// `db` must be NULL or an open context.
#[no_mangle]
pub unsafe extern "C" fn rctdb_errorstr(db: *mut rctdb_context) -> *const c_char {
    // SAFETY: the caller's guarantee on `db`.
    match unsafe { context(db) } {
        Some(ctx) => ctx.error_text(),
        None => NULL_CONTEXT.as_ptr(),
    }
}
