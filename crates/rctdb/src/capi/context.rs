//! `struct rctdb_context`: what a C caller holds. It routes each call to its backend and
//! keeps the last error, which `rctdb_error` and `rctdb_errorstr` report.

use std::{
    cell::{Cell, RefCell},
    ffi::{c_char, CString},
};

use super::clustered::Clustered;
use crate::{
    error::{Error, ErrorCode},
    local::{MallocBuf, StoreFlag, Tdb, TDB_ERROR},
};

/// Where a database lives: a plain local tdb, or (with RCTDB_SOCKET set) this node's file
/// of a clustered database. The clustered side lives in `clustered.rs`, out of line, so that
/// the local calls stay as small as they were.
pub(crate) enum Backend {
    Local(Tdb),
    Clustered(Box<Clustered>),
}

/// An open database (opaque to C).
#[allow(non_camel_case_types)]
pub struct rctdb_context {
    pub(crate) backend: Backend,
    last_error: RefCell<Option<LastError>>,
    /// The text `rctdb_errorstr` handed out; rebuilt only after a new error, so that two
    /// calls in a row return the same pointer.
    error_text: RefCell<CString>,
    error_text_stale: Cell<bool>,
}

/// Why a call failed. Failures with a fixed text (a missing record, a NULL argument) carry
/// a `&'static str`, so that the common "no such record" path allocates nothing; the text
/// is put together only if the caller asks for it.
pub(crate) enum Failure {
    /// The key has no record (tdb's TDB_ERR_NOEXIST from a fetch or parse).
    NoRecord,
    /// A fixed complaint about the arguments.
    Fixed(ErrorCode, &'static str),
    Full(Error),
}

impl From<Error> for Failure {
    #[cold]
    fn from(error: Error) -> Failure {
        Failure::Full(error)
    }
}

struct LastError {
    op: &'static str,
    failure: Failure,
}

pub(crate) type Outcome<T> = Result<T, Failure>;

impl rctdb_context {
    pub(crate) fn new(backend: Backend) -> rctdb_context {
        rctdb_context {
            backend,
            last_error: RefCell::new(None),
            error_text: RefCell::new(CString::default()),
            error_text_stale: Cell::new(false),
        }
    }

    /// Keeps `failure` as the context's last error.
    #[cold]
    pub(crate) fn fail(&self, op: &'static str, failure: Failure) {
        *self.last_error.borrow_mut() = Some(LastError { op, failure });
        self.error_text_stale.set(true);
    }

    /// 0 on success, else -1 with the error kept: tdb's return convention.
    #[inline]
    pub(crate) fn status(&self, op: &'static str, outcome: Outcome<()>) -> i32 {
        match outcome {
            Ok(()) => 0,
            Err(failure) => {
                self.fail(op, failure);
                -1
            }
        }
    }

    pub(crate) fn error_code(&self) -> TDB_ERROR {
        match &*self.last_error.borrow() {
            None => TDB_ERROR::TDB_SUCCESS,
            Some(LastError { failure: Failure::NoRecord, .. }) => TDB_ERROR::TDB_ERR_NOEXIST,
            Some(LastError { failure: Failure::Fixed(code, _), .. }) => tdb_error_of(*code),
            Some(LastError { failure: Failure::Full(error), .. }) => tdb_error_of(error.code),
        }
    }

    /// The last error as text: "<function>: <what went wrong>".
    pub(crate) fn error_text(&self) -> *const c_char {
        if self.error_text_stale.replace(false) {
            let text = match &*self.last_error.borrow() {
                None => "Success".to_string(),
                Some(LastError { op, failure: Failure::NoRecord }) => {
                    format!("{op}: {}: no record with this key", self.name())
                }
                Some(LastError { op, failure: Failure::Fixed(_, what) }) => format!("{op}: {what}"),
                Some(LastError { op, failure: Failure::Full(error) }) => format!("{op}: {}", error.detail),
            };
            // Details never contain NUL bytes, but a path could: cut there rather than fail.
            let text = text.split('\0').next().unwrap_or_default().to_string();
            *self.error_text.borrow_mut() = CString::new(text).unwrap_or_default();
        }
        self.error_text.borrow().as_ptr()
    }

    fn name(&self) -> String {
        match &self.backend {
            Backend::Local(tdb) => tdb.path().display().to_string(),
            Backend::Clustered(db) => db.label().to_string(),
        }
    }

    // One method per operation: the only place that knows which backend does what.

    #[inline]
    pub(crate) fn fetch(&self, key: &[u8]) -> Outcome<MallocBuf> {
        match &self.backend {
            Backend::Local(tdb) => tdb.fetch(key)?.ok_or(Failure::NoRecord),
            Backend::Clustered(db) => db.fetch(key),
        }
    }

    #[inline]
    pub(crate) fn parse_record<R>(&self, key: &[u8], parser: impl FnOnce(&[u8]) -> R) -> Outcome<R> {
        match &self.backend {
            Backend::Local(tdb) => tdb.parse_record(key, parser)?.ok_or(Failure::NoRecord),
            Backend::Clustered(db) => db.parse_record(key, parser),
        }
    }

    #[inline]
    pub(crate) fn store(&self, key: &[u8], data: &[u8], flag: StoreFlag) -> Outcome<()> {
        match &self.backend {
            Backend::Local(tdb) => Ok(tdb.store(key, data, flag)?),
            Backend::Clustered(db) => db.storev(key, &[data], flag),
        }
    }

    pub(crate) fn storev(&self, key: &[u8], parts: &[&[u8]], flag: StoreFlag) -> Outcome<()> {
        match &self.backend {
            Backend::Local(tdb) => Ok(tdb.storev(key, parts, flag)?),
            Backend::Clustered(db) => db.storev(key, parts, flag),
        }
    }

    #[inline]
    pub(crate) fn delete(&self, key: &[u8]) -> Outcome<()> {
        match &self.backend {
            Backend::Local(tdb) => Ok(tdb.delete(key)?),
            Backend::Clustered(db) => db.delete(key),
        }
    }

    #[inline]
    pub(crate) fn exists(&self, key: &[u8]) -> Outcome<bool> {
        match &self.backend {
            Backend::Local(tdb) => Ok(tdb.exists(key)),
            Backend::Clustered(db) => db.exists(key),
        }
    }

    #[inline]
    pub(crate) fn chainlock(&self, key: &[u8], wait: bool) -> Outcome<()> {
        match &self.backend {
            Backend::Local(tdb) if wait => Ok(tdb.lock_chain(key)?),
            Backend::Local(tdb) => Ok(tdb.lock_chain_nonblock(key)?),
            Backend::Clustered(db) => db.chainlock(key, wait),
        }
    }

    #[inline]
    pub(crate) fn chainunlock(&self, key: &[u8]) -> Outcome<()> {
        match &self.backend {
            Backend::Local(tdb) => Ok(tdb.unlock_chain(key)?),
            Backend::Clustered(db) => db.chainunlock(key),
        }
    }

    pub(crate) fn traverse(&self, visit: impl FnMut(&[u8], &[u8]) -> bool) -> Outcome<usize> {
        match &self.backend {
            Backend::Local(tdb) => Ok(tdb.traverse(visit)?),
            Backend::Clustered(db) => db.traverse(visit),
        }
    }

    pub(crate) fn get_seqnum(&self) -> i32 {
        match &self.backend {
            Backend::Local(tdb) => tdb.get_seqnum(),
            Backend::Clustered(db) => db.get_seqnum(),
        }
    }

    pub(crate) fn close(self) -> Outcome<()> {
        match self.backend {
            Backend::Local(tdb) => Ok(tdb.close()?),
            Backend::Clustered(db) => db.close(),
        }
    }
}

fn tdb_error_of(code: ErrorCode) -> TDB_ERROR {
    match code {
        ErrorCode::Corrupt => TDB_ERROR::TDB_ERR_CORRUPT,
        ErrorCode::Io => TDB_ERROR::TDB_ERR_IO,
        ErrorCode::Lock => TDB_ERROR::TDB_ERR_LOCK,
        ErrorCode::Oom => TDB_ERROR::TDB_ERR_OOM,
        ErrorCode::Exists => TDB_ERROR::TDB_ERR_EXISTS,
        ErrorCode::NoLock => TDB_ERROR::TDB_ERR_NOLOCK,
        ErrorCode::LockTimeout => TDB_ERROR::TDB_ERR_LOCK_TIMEOUT,
        ErrorCode::NoExist => TDB_ERROR::TDB_ERR_NOEXIST,
        ErrorCode::Einval => TDB_ERROR::TDB_ERR_EINVAL,
        ErrorCode::Rdonly => TDB_ERROR::TDB_ERR_RDONLY,
        ErrorCode::Nesting => TDB_ERROR::TDB_ERR_NESTING,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_code_keeps_its_number() {
        for n in 1..=11 {
            let code = ErrorCode::from_u32(n).expect("tdb code");
            assert_eq!(tdb_error_of(code) as u32, n);
        }
    }
}
