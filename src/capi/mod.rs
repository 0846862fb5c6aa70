//! The C ABI (include/rctdb.h).
