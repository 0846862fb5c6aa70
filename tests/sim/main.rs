//! The fast layer: the protocol engine in simulation, with no processes, sockets or files.
//! `cargo test --test sim` runs it alone.

mod simulation;
mod simulation_faults;
mod vacuum_scenarios;
