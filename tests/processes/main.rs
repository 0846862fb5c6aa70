//! Real processes: clusters of rctdbd on loopback (each file its own 127.0.x.y addresses),
//! the `rctdb` tool, client processes, and the README's commands. Samba's `ctdb` and
//! `ltdbtool` are used where installed. `cargo test --test processes`.

#[path = "../c_support/mod.rs"]
mod c_support;
mod socket_support;

mod bench_cli;
mod cluster_ring;
mod ctdb_protocol;
mod ctdb_tool;
mod daemon_input;
mod daemon_restart;
mod demo_cli;
mod disk_full;
mod fencing;
mod garbage_daemon;
mod limits;
mod link_blips;
mod lock_watchdog;
mod ltdbtool;
mod readme_commands;
mod recovery_faults;
mod rogue_peer;
mod scale_clients;
mod stopped_clients;
mod traverse_stream;
mod vacuum_churn;
mod vacuum_cluster;
mod wire_capture;
