//! What the `rctdb` command line does, as library functions the binary and the tests share.

pub mod bench_baseline;
pub mod churn;
pub mod clients_bench;
pub mod cluster;
pub mod demo;
pub mod idle_clients;
pub mod local_bench;
pub mod recovery_bench;
pub mod ring;
pub mod statistics;
pub mod traverse_bench;
