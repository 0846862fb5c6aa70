//! A buffer that libtdb allocated with malloc (what `tdb_fetch` returns), owned by Rust
//! until it is freed or handed on to a C caller, who frees it as tdb's callers always have.

use std::{fmt, ops::Deref, ptr::NonNull};

pub struct MallocBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain heap memory owned by this value alone; malloc'd memory may be
// freed from any thread.
unsafe impl Send for MallocBuf {}

impl MallocBuf {
    /// Takes ownership of `len` bytes at `ptr`; `None` when `ptr` is NULL.
    ///
    /// # Safety
    /// `ptr` must be NULL or come from `malloc` with at least `len` initialised bytes, and
    /// nothing else may use or free it afterwards.
    #[inline]
    pub(crate) unsafe fn from_raw(ptr: *mut u8, len: usize) -> Option<MallocBuf> {
        NonNull::new(ptr).map(|ptr| MallocBuf { ptr, len })
    }

    /// Gives the buffer up without freeing it: the receiver must `free()` the pointer.
    #[inline]
    pub fn into_raw(self) -> (*mut u8, usize) {
        let raw = (self.ptr.as_ptr(), self.len);
        std::mem::forget(self);
        raw
    }
}

impl Deref for MallocBuf {
    type Target = [u8];

    #[inline]
    fn deref(&self) -> &[u8] {
        // SAFETY: `from_raw` is only given malloc'd buffers of `len` initialised bytes that we
        // own exclusively; the pointer is non-NULL even for an empty record (tdb mallocs at
        // least one byte), so it is valid for a slice of `len` bytes while `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for MallocBuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: the pointer came from malloc (contract of `from_raw`) and is freed once:
        // `into_raw` forgets `self` instead of dropping it.
        unsafe { libc::free(self.ptr.as_ptr().cast()) }
    }
}

impl fmt::Debug for MallocBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MallocBuf").field("len", &self.len).finish()
    }
}

impl PartialEq<[u8]> for MallocBuf {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}
