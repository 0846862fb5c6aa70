//! rctdbd: the daemon of one rctdb node (`daemon`), its links to the other nodes
//! (`transport`) and the status it answers (`status`). The `rctdbd` program is the
//! workspace's src/bin/rctdbd.rs: its command line, then `daemon::run`.
pub mod daemon;
pub mod status;
pub mod transport;

// librctdb's modules, under the paths the daemon's code names them by (`crate::wire::...`).
use rctdb::{engine, error, local, record, tunables, wire};
