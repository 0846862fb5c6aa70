//! The `rctdb` tool's work beyond parsing its command line (src/bin/rctdb.rs): local test
//! clusters, the demo and the benchmarks, as functions the binary and the tests share.
pub mod tool;

// The modules of librctdb and rctdbd, under the paths the tool's code names them by
// (`crate::client::...`).
use rctdb::{capi, client, engine, error, hash, local, record, wire};
use rctdbd::{daemon, status, transport};
