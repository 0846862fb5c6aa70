//! The fast layer: the protocol engine in simulation, no processes, sockets or files.
//! `cargo test --test sim` runs it in seconds.

mod sim_support;

mod simulation;
mod simulation_faults;
mod vacuum_scenarios;
