//! The packet format shared by node-to-node links and the client socket. Laid out like CTDB
//! protocol version 1 (DESIGN §3) so tshark's CTDB dissector decodes our traffic.
//!
//! Packets are typed values here; `codec` turns them into bytes and back, checking every
//! length against the buffer. Numbers and layouts were checked against Samba's
//! `ctdb/protocol/protocol.h`, `ctdb/include/ctdb_protocol.h` (the `_old` wire structs) and
//! Wireshark's `epan/dissectors/packet-ctdb.c`; see `codec` for the byte offsets.

pub mod cluster;
pub mod codec;
pub mod control;
pub mod ctdb;
#[cfg(test)]
mod dissector_tests;
/// For fuzz/ and tests/fuzz_regressions.rs (feature `fuzz`) and unit tests; no part of the API.
#[cfg(any(test, feature = "fuzz"))]
#[doc(hidden)]
pub mod fuzz;
mod payload;

pub use codec::{
    decode, decode_unpadded, encode, encode_into, encoded_len, read_frame, read_packet, write_packet,
    ReadError, WireError,
};

pub use crate::record::Pnn;

pub type DbId = u32;
pub type Generation = u32;
pub type ReqId = u32;

pub const CTDB_MAGIC: u32 = 0x4354_4442;
pub const PROTOCOL_VERSION: u32 = 1;
/// `length, magic, version, generation, operation, destnode, srcnode, reqid`, all u32 LE.
pub const PACKET_HEADER_LEN: usize = 32;
/// Larger packets are refused before their body is read: no peer gets to make us allocate
/// without bound.
pub const MAX_PACKET_LEN: usize = 64 << 20;
/// The longest key a client may use: far beyond smbd's (a file id, a few dozen bytes).
pub const MAX_KEY_LEN: usize = 64 << 10;
/// The most a record (key, header and data) may hold: a migration carries it in one packet.
pub const MAX_RECORD_LEN: usize = MAX_PACKET_LEN - (1 << 20);

/// The generation every node has while a recovery runs: nothing migrates under it.
pub const INVALID_GENERATION: Generation = 1;

/// Special destination: the daemon the client is connected to (CTDB's CTDB_CURRENT_NODE).
pub const CURRENT_NODE: Pnn = 0xF000_0001;

/// REQ_CALL `callid` values (CTDB's reserved call ids).
pub const CALL_NULL_FUNC: u32 = 0xFF00_0001;
pub const CALL_FETCH_FUNC: u32 = 0xFF00_0002;
pub const CALL_FETCH_WITH_HEADER_FUNC: u32 = 0xFF00_0003;

/// REQ_CALL flags (CTDB's `struct ctdb_call` flags; the dissector shows bit 0 as "Immediate").
pub const CALL_FLAG_IMMEDIATE_MIGRATION: u32 = 0x0000_0001;
pub const CALL_FLAG_VACUUM_MIGRATION: u32 = 0x0000_0002;
pub const CALL_FLAG_WANT_READONLY: u32 = 0x0000_0004;
/// Ours, client to its daemon only: the client will say when it has used the record
/// (MIGRATION_DONE), so the daemon keeps it here for the client's first use.
pub const CALL_FLAG_FIRST_USE: u32 = 0x0001_0000;

/// Operation numbers: CTDB's where CTDB has the operation.
pub mod op {
    pub const REQ_CALL: u32 = 0;
    pub const REPLY_CALL: u32 = 1;
    pub const REQ_DMASTER: u32 = 2;
    pub const REPLY_DMASTER: u32 = 3;
    pub const REPLY_ERROR: u32 = 4;
    /// A message to a client's registered srvid, on this node or routed to another.
    pub const REQ_MESSAGE: u32 = 5;
    // 6 was removed from CTDB: never reuse it.
    pub const REQ_CONTROL: u32 = 7;
    pub const REPLY_CONTROL: u32 = 8;
    pub const REQ_KEEPALIVE: u32 = 9;
    /// CTDB's; refused by the codec. Operations of our own start above it.
    pub const REQ_TUNNEL: u32 = 10;
    /// Ours: membership and recovery between daemons (`cluster::ClusterMsg`).
    pub const CLUSTER: u32 = 0x100;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    pub generation: Generation,
    pub destnode: Pnn,
    pub srcnode: Pnn,
    pub reqid: ReqId,
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    ReqCall(ReqCall),
    ReplyCall(ReplyCall),
    ReqDmaster(ReqDmaster),
    ReplyDmaster(ReplyDmaster),
    ReplyError(ReplyError),
    ReqControl(ReqControl),
    ReplyControl(ReplyControl),
    Message(ReqMessage),
    Keepalive(Keepalive),
    Cluster(cluster::ClusterMsg),
}

/// "Run call `callid` on record `key`": with IMMEDIATE_MIGRATION, "migrate it to `srcnode`".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReqCall {
    pub flags: u32,
    pub db_id: DbId,
    pub callid: u32,
    pub hopcount: u32,
    pub key: Vec<u8>,
    pub calldata: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyCall {
    pub status: i32,
    pub data: Vec<u8>,
}

/// DMASTER -> LMASTER: "record `key` now belongs to `dmaster`; here it is".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReqDmaster {
    pub db_id: DbId,
    pub rsn: u64,
    pub dmaster: Pnn,
    pub key: Vec<u8>,
    pub data: Vec<u8>,
    pub record_flags: u32,
}

/// LMASTER (or a DMASTER that is also LMASTER) -> new DMASTER: "the record is yours".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyDmaster {
    pub db_id: DbId,
    pub rsn: u64,
    pub key: Vec<u8>,
    pub data: Vec<u8>,
    pub record_flags: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError {
    pub status: i32,
    pub msg: Vec<u8>,
}

/// Everything that is not a migration step: attach, status, traverse, recovery steps.
/// The payload of each opcode is encoded by the module that owns that control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReqControl {
    pub opcode: u32,
    pub srvid: u64,
    pub client_id: u32,
    pub flags: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyControl {
    pub status: i32,
    pub data: Vec<u8>,
    pub errmsg: Vec<u8>,
}

/// A message for whoever registered `srvid` (CTDB's REQ_MESSAGE): smbd's messaging between
/// processes on different nodes, and the records of a traverse streamed to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReqMessage {
    pub srvid: u64,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keepalive {
    pub version: u32,
    pub uptime: u32,
}

impl Body {
    pub fn operation(&self) -> u32 {
        match self {
            Body::ReqCall(_) => op::REQ_CALL,
            Body::ReplyCall(_) => op::REPLY_CALL,
            Body::ReqDmaster(_) => op::REQ_DMASTER,
            Body::ReplyDmaster(_) => op::REPLY_DMASTER,
            Body::ReplyError(_) => op::REPLY_ERROR,
            Body::ReqControl(_) => op::REQ_CONTROL,
            Body::ReplyControl(_) => op::REPLY_CONTROL,
            Body::Message(_) => op::REQ_MESSAGE,
            Body::Keepalive(_) => op::REQ_KEEPALIVE,
            Body::Cluster(_) => op::CLUSTER,
        }
    }
}
