//! Bytes <-> Packet.
