//! The local store: the only code that calls libtdb.
pub mod ffi;
