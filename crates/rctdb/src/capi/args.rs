//! C arguments turned into safe values, once, at the boundary: NULL pointers, lengths and
//! flags are checked here and nowhere else.

use std::slice;

use super::context::{Failure, Outcome};
use crate::{
    error::{Error, ErrorCode},
    local::{StoreFlag, TDB_DATA},
};

/// The bytes of a key. A key needs a pointer even when it is empty.
///
/// # Safety
/// A non-NULL `key.dptr` must point to `key.dsize` readable bytes for the lifetime `'a`.
#[inline]
pub(crate) unsafe fn key<'a>(key: TDB_DATA) -> Outcome<&'a [u8]> {
    if key.dptr.is_null() {
        return Err(Failure::Fixed(ErrorCode::Einval, "key.dptr is NULL"));
    }
    // SAFETY: non-NULL, and the caller guarantees dsize readable bytes.
    unsafe { bytes(key, "key") }
}

/// The bytes of a value: `{NULL, 0}` is the empty value, `{NULL, n > 0}` is refused.
///
/// # Safety
/// A non-NULL `data.dptr` must point to `data.dsize` readable bytes for the lifetime `'a`.
#[inline]
pub(crate) unsafe fn data<'a>(data: TDB_DATA, name: &str) -> Outcome<&'a [u8]> {
    if data.dptr.is_null() {
        return match data.dsize {
            0 => Ok(&[]),
            n => Err(Error::einval(format!("{name}.dptr is NULL but {name}.dsize is {n}")).into()),
        };
    }
    // SAFETY: non-NULL, and the caller guarantees dsize readable bytes.
    unsafe { bytes(data, name) }
}

/// # Safety
/// `data.dptr` is non-NULL and points to `data.dsize` readable bytes for `'a`.
#[inline]
unsafe fn bytes<'a>(data: TDB_DATA, name: &str) -> Outcome<&'a [u8]> {
    if data.dsize > isize::MAX as usize {
        return Err(Error::einval(format!("{name}.dsize {} is larger than any object", data.dsize)).into());
    }
    // SAFETY: the caller guarantees a non-NULL pointer to dsize readable bytes, and dsize
    // fits a slice.
    Ok(unsafe { slice::from_raw_parts(data.dptr, data.dsize) })
}

#[inline]
pub(crate) fn store_flag(flag: i32) -> Outcome<StoreFlag> {
    StoreFlag::from_c(flag).ok_or_else(|| {
        Error::einval(format!("unknown store flag {flag} (expected TDB_REPLACE, TDB_INSERT or TDB_MODIFY)"))
            .into()
    })
}

/// A TDB_DATA describing `bytes`, for handing to a C callback (which must not write).
#[inline]
pub(crate) fn to_c(bytes: &[u8]) -> TDB_DATA {
    TDB_DATA { dptr: bytes.as_ptr() as *mut u8, dsize: bytes.len() }
}

/// The `num` TDB_DATA at `dbufs` (rctdb_storev's array).
///
/// # Safety
/// A non-NULL `dbufs` must point to `num` TDB_DATA for the lifetime `'a`.
#[inline]
pub(crate) unsafe fn data_array<'a>(dbufs: *const TDB_DATA, num: i32) -> Outcome<&'a [TDB_DATA]> {
    let Ok(len) = usize::try_from(num) else {
        return Err(Error::einval(format!("num_dbufs is {num}, negative")).into());
    };
    if dbufs.is_null() {
        return match len {
            0 => Ok(&[]),
            _ => Err(Error::einval(format!("dbufs is NULL but num_dbufs is {num}")).into()),
        };
    }
    // SAFETY: non-NULL, and the caller guarantees `num` elements.
    Ok(unsafe { slice::from_raw_parts(dbufs, len) })
}

/// The bytes of `dbufs[index]`, checked as `data` checks a single value.
///
/// # Safety
/// A non-NULL `dbuf.dptr` must point to `dbuf.dsize` readable bytes for the lifetime `'a`.
#[inline]
pub(crate) unsafe fn data_at<'a>(dbuf: TDB_DATA, index: usize) -> Outcome<&'a [u8]> {
    if dbuf.dptr.is_null() && dbuf.dsize > 0 {
        let n = dbuf.dsize;
        return Err(
            Error::einval(format!("dbufs[{index}].dptr is NULL but dbufs[{index}].dsize is {n}")).into()
        );
    }
    // SAFETY: the caller's guarantee, passed on.
    unsafe { data(dbuf, "dbufs[]") }
}

/// A list of byte slices kept on the stack while short, so that a storev of a few parts
/// allocates nothing.
#[derive(Default)]
pub(crate) struct Parts<'a> {
    stack: [&'a [u8]; 8],
    len: usize,
    heap: Vec<&'a [u8]>,
}

impl<'a> Parts<'a> {
    pub(crate) fn push(&mut self, part: &'a [u8]) {
        if self.heap.is_empty() && self.len < self.stack.len() {
            self.stack[self.len] = part;
            self.len += 1;
        } else {
            if self.heap.is_empty() {
                self.heap.extend_from_slice(&self.stack[..self.len]);
            }
            self.heap.push(part);
        }
    }

    pub(crate) fn as_slice(&self) -> &[&'a [u8]] {
        if self.heap.is_empty() {
            &self.stack[..self.len]
        } else {
            &self.heap
        }
    }
}
