//! rctdb: a clustered TDB. See DESIGN.md for the architecture; each module is one concern.
pub mod capi;
pub mod client;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod hash;
pub mod local;
pub mod record;
pub mod status;
pub mod tool;
pub mod transport;
pub mod tunables;
pub mod wire;
