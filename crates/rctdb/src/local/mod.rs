//! The local store: the only code that calls libtdb (DESIGN §2). `Tdb` is the safe wrapper;
//! `ffi` is bindgen's output and stays private to this module.

mod ffi;
mod file_check;
mod malloc_buf;
mod tdb;

pub use file_check::chains_lock_range;
pub use malloc_buf::MallocBuf;
pub use tdb::{jenkins_hash, AllLock, ChainLock, OpenError, StoreFlag, Tdb, KNOWN_TDB_FLAGS};

/// tdb's own C types, for the C ABI, which reuses them so that tdb code ports by renaming.
pub use ffi::{TDB_DATA, TDB_ERROR};

/// tdb_open flags and tdb_store flags (`<tdb.h>`).
pub mod flags {
    use super::ffi;

    pub const TDB_REPLACE: i32 = ffi::TDB_REPLACE as i32;
    pub const TDB_INSERT: i32 = ffi::TDB_INSERT as i32;
    pub const TDB_MODIFY: i32 = ffi::TDB_MODIFY as i32;

    pub const TDB_DEFAULT: i32 = ffi::TDB_DEFAULT as i32;
    pub const TDB_CLEAR_IF_FIRST: i32 = ffi::TDB_CLEAR_IF_FIRST as i32;
    pub const TDB_INTERNAL: i32 = ffi::TDB_INTERNAL as i32;
    pub const TDB_NOLOCK: i32 = ffi::TDB_NOLOCK as i32;
    pub const TDB_NOMMAP: i32 = ffi::TDB_NOMMAP as i32;
    pub const TDB_NOSYNC: i32 = ffi::TDB_NOSYNC as i32;
    pub const TDB_SEQNUM: i32 = ffi::TDB_SEQNUM as i32;
    pub const TDB_VOLATILE: i32 = ffi::TDB_VOLATILE as i32;
    pub const TDB_INCOMPATIBLE_HASH: i32 = ffi::TDB_INCOMPATIBLE_HASH as i32;
    pub const TDB_MUTEX_LOCKING: i32 = ffi::TDB_MUTEX_LOCKING as i32;
}
