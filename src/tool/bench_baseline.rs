//! The benchmark's baseline: fetch + store straight through libtdb, with no wrapper at all.
//! `rctdb bench local` runs this loop and the same loop through the C ABI in one process,
//! so their ratio is the cost of everything rctdb puts between a caller and libtdb.

use std::{
    ffi::{c_int, CString},
    io,
    os::unix::ffi::OsStrExt,
    path::Path,
    ptr::NonNull,
};

use super::{ffi, tdb::OPEN_LIST};

/// Whether a benchmark pass takes the chain lock around each read-modify-write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Locking {
    Unlocked,
    ChainLocked,
}

pub struct RawTdb {
    ctx: NonNull<ffi::tdb_context>,
}

impl RawTdb {
    /// Creates a fresh tdb at `path` (truncating any old one) with tdb_open itself.
    pub fn create(path: &Path, hash_size: i32, tdb_flags: i32) -> io::Result<RawTdb> {
        let c_path = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
        let _list = OPEN_LIST.lock();
        // SAFETY: c_path is NUL-terminated and outlives the call.
        let raw = unsafe {
            ffi::tdb_open(
                c_path.as_ptr(),
                hash_size,
                tdb_flags,
                libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC,
                0o600,
            )
        };
        NonNull::new(raw).map(|ctx| RawTdb { ctx }).ok_or_else(io::Error::last_os_error)
    }

    /// For each key: tdb_fetch, free the copy, tdb_store(TDB_REPLACE) `value`; with
    /// `Locking::ChainLocked` inside tdb_chainlock / tdb_chainunlock, Samba's read-modify-write.
    /// Returns how many fetches found a record; panics if a call fails, as a benchmark cannot
    /// go on.
    pub fn pass(&self, keys: &[Vec<u8>], value: &[u8], locking: Locking) -> usize {
        let mut found = 0;
        let data = ffi::TDB_DATA { dptr: value.as_ptr() as *mut u8, dsize: value.len() };
        let locked = locking == Locking::ChainLocked;
        for key in keys {
            let key = ffi::TDB_DATA { dptr: key.as_ptr() as *mut u8, dsize: key.len() };
            // SAFETY: the context is open; key and value outlive the calls; tdb_fetch's
            // result is malloc'd and ours to free; tdb never writes through key or data.
            unsafe {
                if locked {
                    assert_eq!(ffi::tdb_chainlock(self.ctx.as_ptr(), key), 0, "tdb_chainlock failed");
                }
                let old = ffi::tdb_fetch(self.ctx.as_ptr(), key);
                if !old.dptr.is_null() {
                    found += 1;
                    libc::free(old.dptr.cast());
                }
                let rc: c_int = ffi::tdb_store(self.ctx.as_ptr(), key, data, ffi::TDB_REPLACE as c_int);
                assert_eq!(rc, 0, "tdb_store failed in the baseline loop");
                if locked {
                    assert_eq!(ffi::tdb_chainunlock(self.ctx.as_ptr(), key), 0, "tdb_chainunlock failed");
                }
            }
        }
        found
    }
}

impl Drop for RawTdb {
    fn drop(&mut self) {
        let _list = OPEN_LIST.lock();
        // SAFETY: the context is open and closed only here.
        unsafe { ffi::tdb_close(self.ctx.as_ptr()) };
    }
}
