//! The I/O-free protocol engine (DESIGN §2).
