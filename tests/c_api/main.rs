//! librctdb's C API: the C programs of tests/c/ built with gcc against include/rctdb.h and
//! this run's librctdb.so, on plain tdb files and on a cluster. `cargo test --test c_api`.

#[path = "../c_support/mod.rs"]
mod c_support;

mod c_cluster;
mod c_programs;
