//! rctdb: a clustered TDB, and librctdb, its C ABI (`capi`). See docs/DESIGN.md for the
//! architecture; each module is one concern. The daemon is the `rctdbd` crate, the
//! command-line tools the `rctdb-cli` crate (the workspace's top).
pub mod capi;
pub mod client;
pub mod engine;
pub mod error;
pub mod hash;
pub mod local;
pub mod record;
pub mod tunables;
pub mod wire;
