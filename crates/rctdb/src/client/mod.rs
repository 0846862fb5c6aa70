//! The client side of the daemon's unix socket, shared by librctdb's clustered databases and
//! the `rctdb` tool.

mod clustered;
mod connection;

pub use clustered::ClusteredDb;
pub use connection::DaemonConnection;
