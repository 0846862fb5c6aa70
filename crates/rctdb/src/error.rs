//! One error type for the whole crate. Its code maps 1:1 onto tdb's `enum TDB_ERROR`, so the
//! C ABI can hand callers the number they already know, plus a precise message.

use std::fmt;

/// tdb's error numbers (`enum TDB_ERROR` in `<tdb.h>`), same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum ErrorCode {
    Corrupt = 1,
    Io = 2,
    Lock = 3,
    Oom = 4,
    Exists = 5,
    NoLock = 6,
    LockTimeout = 7,
    NoExist = 8,
    Einval = 9,
    Rdonly = 10,
    Nesting = 11,
}

impl ErrorCode {
    /// The short text tdb itself uses for this code (`tdb_errorstr`).
    pub fn tdb_text(self) -> &'static str {
        match self {
            ErrorCode::Corrupt => "Corrupt database",
            ErrorCode::Io => "IO Error",
            ErrorCode::Lock => "Locking error",
            ErrorCode::Oom => "Out of memory",
            ErrorCode::Exists => "Record exists",
            ErrorCode::NoLock => "Lock exists on other keys",
            ErrorCode::LockTimeout => "Lock timeout",
            ErrorCode::NoExist => "Record does not exist",
            ErrorCode::Einval => "Invalid parameter",
            ErrorCode::Rdonly => "write not permitted",
            ErrorCode::Nesting => "Transaction already started",
        }
    }

    pub fn from_u32(code: u32) -> Option<ErrorCode> {
        use ErrorCode::*;
        [Corrupt, Io, Lock, Oom, Exists, NoLock, LockTimeout, NoExist, Einval, Rdonly, Nesting]
            .into_iter()
            .find(|c| *c as u32 == code)
    }
}

/// An error code plus a message that says what exactly went wrong and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub code: ErrorCode,
    pub detail: String,
}

impl Error {
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Error {
        Error { code, detail: detail.into() }
    }

    pub fn einval(detail: impl Into<String>) -> Error {
        Error::new(ErrorCode::Einval, detail)
    }

    pub fn io(detail: impl Into<String>) -> Error {
        Error::new(ErrorCode::Io, detail)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.tdb_text(), self.detail)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
