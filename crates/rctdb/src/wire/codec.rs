//! Bytes <-> [`Packet`], in CTDB protocol version 1 layout.
//!
//! Why this layout: tshark's built-in CTDB dissector (and anyone who knows CTDB) can read
//! our traffic, and the field order is the one Samba's ctdbd has used since 2007 (the
//! `struct ctdb_*_old` wire structs). Everything is little endian, as CTDB on x86/ARM.
//!
//! Offsets, from the start of the packet (header is 32 bytes):
//!
//! | operation       | body                                                                  |
//! |-----------------|-----------------------------------------------------------------------|
//! | REQ_CALL 0      | 32 flags, 36 db_id, 40 callid, 44 hopcount, 48 keylen, 52 calldatalen, 56 key ++ calldata |
//! | REPLY_CALL 1    | 32 status, 36 datalen, 40 data                                        |
//! | REQ_DMASTER 2   | 32 db_id, 36 pad, 40 rsn (u64), 48 dmaster, 52 keylen, 56 datalen, 60 key ++ data ++ record flags (u32) |
//! | REPLY_DMASTER 3 | 32 db_id, 36 pad, 40 rsn (u64), 48 keylen, 52 datalen, 56 key ++ data ++ record flags (u32) |
//! | REPLY_ERROR 4   | 32 status, 36 msglen, 40 msg                                          |
//! | REQ_CONTROL 7   | 32 opcode, 36 pad, 40 srvid (u64), 48 client_id, 52 flags, 56 datalen, 60 data |
//! | REPLY_CONTROL 8 | 32 status, 36 datalen, 40 errorlen, 44 data ++ errmsg                 |
//! | REQ_KEEPALIVE 9 | 32 version, 36 uptime                                                 |
//! | CLUSTER 0x100   | 32 bodylen, 36 body (ours: `cluster::ClusterMsg`)                     |
//!
//! The u64 fields sit at offset 40 because the C structs align them to 8 bytes; the
//! dissector does the same (`offset = (offset + 7) & ~7`). CTDB appends the record flags
//! after the data of both DMASTER packets (ctdbd's `ctdb_call_send_dmaster`) without a
//! length field; we always send them and require them.
//!
//! Padding: CTDB's TCP queue rounds every packet up to a multiple of 8 bytes, zero-fills the
//! tail, and writes the *padded* size into `length`; its reader refuses a length that is not
//! a multiple of 8 or that differs from the frame. We do the same. Because every body field
//! is counted and padding must be zero and shorter than 8 bytes, decoding is canonical:
//! `decode(b) == Ok(p)` implies `encode(&p) == b`.
//!
//! Decoding trusts nothing: every length is checked against the buffer with checked
//! arithmetic, the decoder never allocates more than the buffer it was given, and a bad
//! packet is an `Err` with a message that names the field, never a panic.

use std::fmt;
use std::io::{self, Read, Write};

use super::{
    op, Body, Keepalive, Packet, ReplyCall, ReplyControl, ReplyDmaster, ReplyError, ReqCall, ReqControl,
    ReqDmaster, ReqMessage, CTDB_MAGIC, MAX_PACKET_LEN, PACKET_HEADER_LEN, PROTOCOL_VERSION,
};

/// Every packet's length is a multiple of this (CTDB's `CTDB_TCP_ALIGNMENT`).
pub const PACKET_ALIGNMENT: usize = 8;

/// Why a buffer is not a valid packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// Fewer bytes than a packet header.
    ShortPacket {
        len: usize,
    },
    /// The header's `length` field is not the size of the buffer it came in.
    LengthMismatch {
        header: u32,
        buffer: usize,
    },
    /// The packet length is not a multiple of [`PACKET_ALIGNMENT`].
    Unaligned {
        len: usize,
    },
    BadMagic(u32),
    BadVersion(u32),
    UnknownOperation(u32),
    /// A field, or the bytes a length field counts, run past the end of the packet.
    Truncated {
        operation: u32,
        field: &'static str,
        needed: usize,
        available: usize,
    },
    /// More bytes after the body than padding can explain.
    TrailingBytes {
        operation: u32,
        extra: usize,
    },
    /// A pad field or the tail padding holds a non-zero byte at this offset.
    NonZeroPadding {
        operation: u32,
        offset: usize,
    },
    /// A membership or recovery message whose named field does not fit.
    BadClusterMessage(&'static str),
    /// The encoded packet would exceed [`MAX_PACKET_LEN`]: peers refuse such frames.
    TooLarge {
        len: usize,
        max: usize,
    },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WireError::ShortPacket { len } => {
                write!(f, "packet of {len} bytes is shorter than the {PACKET_HEADER_LEN}-byte header")
            }
            WireError::LengthMismatch { header, buffer } => {
                write!(f, "header length field says {header} bytes but the packet has {buffer}")
            }
            WireError::Unaligned { len } => {
                write!(f, "packet length {len} is not a multiple of {PACKET_ALIGNMENT}")
            }
            WireError::BadMagic(magic) => {
                write!(f, "bad magic 0x{magic:08x}, expected 0x{CTDB_MAGIC:08x} (CTDB)")
            }
            WireError::BadVersion(v) => write!(f, "protocol version {v}, expected {PROTOCOL_VERSION}"),
            WireError::UnknownOperation(o) => write!(f, "unknown operation {o}"),
            WireError::Truncated { operation, field, needed, available } => write!(
                f,
                "{}: field {field} needs {needed} bytes but only {available} remain",
                operation_name(operation)
            ),
            WireError::TrailingBytes { operation, extra } => {
                write!(f, "{}: {extra} bytes after the body, more than padding", operation_name(operation))
            }
            WireError::NonZeroPadding { operation, offset } => {
                write!(f, "{}: non-zero padding byte at offset {offset}", operation_name(operation))
            }
            WireError::BadClusterMessage(field) => write!(f, "CLUSTER: malformed field {field}"),
            WireError::TooLarge { len, max } => write!(f, "packet of {len} bytes exceeds the limit of {max}"),
        }
    }
}

impl std::error::Error for WireError {}

/// CTDB's name for an operation number, for logs and error messages.
pub fn operation_name(operation: u32) -> &'static str {
    match operation {
        op::REQ_CALL => "REQ_CALL",
        op::REPLY_CALL => "REPLY_CALL",
        op::REQ_DMASTER => "REQ_DMASTER",
        op::REPLY_DMASTER => "REPLY_DMASTER",
        op::REPLY_ERROR => "REPLY_ERROR",
        op::REQ_MESSAGE => "REQ_MESSAGE",
        op::REQ_CONTROL => "REQ_CONTROL",
        op::REPLY_CONTROL => "REPLY_CONTROL",
        op::REQ_KEEPALIVE => "REQ_KEEPALIVE",
        op::REQ_TUNNEL => "REQ_TUNNEL",
        op::CLUSTER => "CLUSTER",
        _ => "unknown operation",
    }
}

// ---------------------------------------------------------------------------------------
// Encoding

/// Body size before padding, header excluded. Saturating: an absurd packet yields a huge
/// length that the size checks refuse, never an overflow.
fn body_len(body: &Body) -> usize {
    let sum = |fixed: usize, parts: &[&[u8]]| parts.iter().fold(fixed, |acc, p| acc.saturating_add(p.len()));
    match body {
        Body::ReqCall(c) => sum(24, &[&c.key, &c.calldata]),
        Body::ReplyCall(c) => sum(8, &[&c.data]),
        // db_id, pad, rsn, dmaster, keylen, datalen ... record flags
        Body::ReqDmaster(c) => sum(32, &[&c.key, &c.data]),
        // db_id, pad, rsn, keylen, datalen ... record flags
        Body::ReplyDmaster(c) => sum(28, &[&c.key, &c.data]),
        Body::ReplyError(c) => sum(8, &[&c.msg]),
        Body::ReqControl(c) => sum(28, &[&c.data]),
        Body::ReplyControl(c) => sum(12, &[&c.data, &c.errmsg]),
        // srvid, datalen
        Body::Message(m) => sum(12, &[&m.data]),
        Body::Keepalive(_) => 8,
        Body::Cluster(m) => 4usize.saturating_add(m.encoded_len()),
    }
}

fn round_up_to_alignment(len: usize) -> usize {
    len.saturating_add(PACKET_ALIGNMENT - 1) & !(PACKET_ALIGNMENT - 1)
}

/// The number of bytes `packet` takes on the wire, padding included.
pub fn encoded_len(packet: &Packet) -> usize {
    round_up_to_alignment(PACKET_HEADER_LEN.saturating_add(body_len(&packet.body)))
}

/// Appends `packet` to `out`. Refuses (and appends nothing) when the packet would exceed
/// [`MAX_PACKET_LEN`], since the receiving side would drop the link over it.
pub fn encode_into(packet: &Packet, out: &mut Vec<u8>) -> Result<(), WireError> {
    let len = encoded_len(packet);
    if len > MAX_PACKET_LEN {
        return Err(WireError::TooLarge { len, max: MAX_PACKET_LEN });
    }
    write_encoded(packet, len, out);
    Ok(())
}

/// `packet` as bytes. For packets that may be larger than [`MAX_PACKET_LEN`] use
/// [`encode_into`], which refuses them.
///
/// # Panics
/// If the packet is larger than 4 GiB, which the u32 length field cannot express.
pub fn encode(packet: &Packet) -> Vec<u8> {
    let len = encoded_len(packet);
    let mut out = Vec::with_capacity(len);
    write_encoded(packet, len, &mut out);
    out
}

/// Writes one framed packet.
pub fn write_packet(w: &mut impl Write, packet: &Packet) -> io::Result<()> {
    let mut buf = Vec::with_capacity(encoded_len(packet));
    encode_into(packet, &mut buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    w.write_all(&buf)
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A length field: the callers bounded the total size, so each part fits in u32.
fn put_len(out: &mut Vec<u8>, bytes: &[u8]) {
    put_u32(out, u32::try_from(bytes.len()).expect("packet part larger than 4 GiB"));
}

fn write_encoded(packet: &Packet, len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    out.reserve(len);
    put_u32(out, u32::try_from(len).expect("packet larger than 4 GiB"));
    put_u32(out, CTDB_MAGIC);
    put_u32(out, PROTOCOL_VERSION);
    put_u32(out, packet.generation);
    put_u32(out, packet.body.operation());
    put_u32(out, packet.destnode);
    put_u32(out, packet.srcnode);
    put_u32(out, packet.reqid);
    match &packet.body {
        Body::ReqCall(c) => {
            put_u32(out, c.flags);
            put_u32(out, c.db_id);
            put_u32(out, c.callid);
            put_u32(out, c.hopcount);
            put_len(out, &c.key);
            put_len(out, &c.calldata);
            out.extend_from_slice(&c.key);
            out.extend_from_slice(&c.calldata);
        }
        Body::ReplyCall(c) => {
            put_u32(out, c.status as u32);
            put_len(out, &c.data);
            out.extend_from_slice(&c.data);
        }
        Body::ReqDmaster(c) => {
            put_u32(out, c.db_id);
            put_u32(out, 0); // the C struct's alignment hole before the u64 rsn
            put_u64(out, c.rsn);
            put_u32(out, c.dmaster);
            put_len(out, &c.key);
            put_len(out, &c.data);
            out.extend_from_slice(&c.key);
            out.extend_from_slice(&c.data);
            put_u32(out, c.record_flags);
        }
        Body::ReplyDmaster(c) => {
            put_u32(out, c.db_id);
            put_u32(out, 0); // alignment hole before rsn
            put_u64(out, c.rsn);
            put_len(out, &c.key);
            put_len(out, &c.data);
            out.extend_from_slice(&c.key);
            out.extend_from_slice(&c.data);
            put_u32(out, c.record_flags);
        }
        Body::ReplyError(c) => {
            put_u32(out, c.status as u32);
            put_len(out, &c.msg);
            out.extend_from_slice(&c.msg);
        }
        Body::ReqControl(c) => {
            put_u32(out, c.opcode);
            put_u32(out, 0); // `pad` in the C struct, aligns srvid
            put_u64(out, c.srvid);
            put_u32(out, c.client_id);
            put_u32(out, c.flags);
            put_len(out, &c.data);
            out.extend_from_slice(&c.data);
        }
        Body::ReplyControl(c) => {
            put_u32(out, c.status as u32);
            put_len(out, &c.data);
            put_len(out, &c.errmsg);
            out.extend_from_slice(&c.data);
            out.extend_from_slice(&c.errmsg);
        }
        Body::Message(m) => {
            put_u64(out, m.srvid);
            put_len(out, &m.data);
            out.extend_from_slice(&m.data);
        }
        Body::Keepalive(k) => {
            put_u32(out, k.version);
            put_u32(out, k.uptime);
        }
        Body::Cluster(m) => {
            let at = out.len();
            put_u32(out, 0);
            m.encode_into(out);
            let len = u32::try_from(out.len() - at - 4).expect("packet larger than 4 GiB");
            out[at..at + 4].copy_from_slice(&len.to_le_bytes());
        }
    }
    // Tail padding to the 8-byte multiple that `length` already announced.
    out.resize(start + len, 0);
}

// ---------------------------------------------------------------------------------------
// Decoding

/// A cursor over one packet. Every read checks the remaining length first.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
    operation: u32,
}

impl<'a> Fields<'a> {
    fn take(&mut self, field: &'static str, n: usize) -> Result<&'a [u8], WireError> {
        let available = self.buf.len() - self.pos;
        if n > available {
            return Err(WireError::Truncated { operation: self.operation, field, needed: n, available });
        }
        let bytes = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(bytes)
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, WireError> {
        let b = self.take(field, 4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, WireError> {
        Ok(self.u32(field)? as i32)
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, WireError> {
        let b = self.take(field, 8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A pad field: must be zero, so that decoding stays canonical.
    fn pad(&mut self, field: &'static str, n: usize) -> Result<(), WireError> {
        let at = self.pos;
        let b = self.take(field, n)?;
        match b.iter().position(|&x| x != 0) {
            Some(i) => Err(WireError::NonZeroPadding { operation: self.operation, offset: at + i }),
            None => Ok(()),
        }
    }

    /// `len` bytes announced by a length field. Copies out of the buffer, so the
    /// allocation is bounded by what the peer actually sent.
    fn counted(&mut self, field: &'static str, len: u32) -> Result<Vec<u8>, WireError> {
        let n = usize::try_from(len).map_err(|_| WireError::Truncated {
            operation: self.operation,
            field,
            needed: usize::MAX,
            available: self.buf.len() - self.pos,
        })?;
        Ok(self.take(field, n)?.to_vec())
    }

    /// After the body only zero padding, less than one alignment unit, may remain.
    fn finish(self) -> Result<(), WireError> {
        let extra = self.buf.len() - self.pos;
        if extra >= PACKET_ALIGNMENT {
            return Err(WireError::TrailingBytes { operation: self.operation, extra });
        }
        match self.buf[self.pos..].iter().position(|&x| x != 0) {
            Some(i) => Err(WireError::NonZeroPadding { operation: self.operation, offset: self.pos + i }),
            None => Ok(()),
        }
    }
}

/// Parses exactly one packet from a node link; `buf` must be the whole frame (its length
/// equal to the header's `length` field), padded to [`PACKET_ALIGNMENT`] as CTDB's TCP reader
/// requires.
pub fn decode(buf: &[u8]) -> Result<Packet, WireError> {
    decode_frame(buf, true)
}

/// Parses one packet from the client socket, where CTDB's clients (smbd, the `ctdb` tool)
/// send frames of any length: ctdbd's unix-socket reader does not ask for padding.
pub fn decode_unpadded(buf: &[u8]) -> Result<Packet, WireError> {
    decode_frame(buf, false)
}

fn decode_frame(buf: &[u8], padded: bool) -> Result<Packet, WireError> {
    if buf.len() < PACKET_HEADER_LEN {
        return Err(WireError::ShortPacket { len: buf.len() });
    }
    let mut f = Fields { buf, pos: 0, operation: u32::MAX };
    let length = f.u32("length")?;
    if usize::try_from(length).ok() != Some(buf.len()) {
        return Err(WireError::LengthMismatch { header: length, buffer: buf.len() });
    }
    let magic = f.u32("magic")?;
    if magic != CTDB_MAGIC {
        return Err(WireError::BadMagic(magic));
    }
    let version = f.u32("version")?;
    if version != PROTOCOL_VERSION {
        return Err(WireError::BadVersion(version));
    }
    if padded && buf.len() % PACKET_ALIGNMENT != 0 {
        return Err(WireError::Unaligned { len: buf.len() });
    }
    let generation = f.u32("generation")?;
    let operation = f.u32("operation")?;
    let destnode = f.u32("destnode")?;
    let srcnode = f.u32("srcnode")?;
    let reqid = f.u32("reqid")?;
    f.operation = operation;
    let body = decode_body(&mut f, operation)?;
    f.finish()?;
    Ok(Packet { generation, destnode, srcnode, reqid, body })
}

fn decode_body(f: &mut Fields<'_>, operation: u32) -> Result<Body, WireError> {
    let body = match operation {
        op::REQ_CALL => {
            let flags = f.u32("flags")?;
            let db_id = f.u32("db_id")?;
            let callid = f.u32("callid")?;
            let hopcount = f.u32("hopcount")?;
            let keylen = f.u32("keylen")?;
            let calldatalen = f.u32("calldatalen")?;
            let key = f.counted("key", keylen)?;
            let calldata = f.counted("calldata", calldatalen)?;
            Body::ReqCall(ReqCall { flags, db_id, callid, hopcount, key, calldata })
        }
        op::REPLY_CALL => {
            let status = f.i32("status")?;
            let datalen = f.u32("datalen")?;
            let data = f.counted("data", datalen)?;
            Body::ReplyCall(ReplyCall { status, data })
        }
        op::REQ_DMASTER => {
            let db_id = f.u32("db_id")?;
            f.pad("rsn alignment", 4)?;
            let rsn = f.u64("rsn")?;
            let dmaster = f.u32("dmaster")?;
            let keylen = f.u32("keylen")?;
            let datalen = f.u32("datalen")?;
            let key = f.counted("key", keylen)?;
            let data = f.counted("data", datalen)?;
            let record_flags = f.u32("record flags")?;
            Body::ReqDmaster(ReqDmaster { db_id, rsn, dmaster, key, data, record_flags })
        }
        op::REPLY_DMASTER => {
            let db_id = f.u32("db_id")?;
            f.pad("rsn alignment", 4)?;
            let rsn = f.u64("rsn")?;
            let keylen = f.u32("keylen")?;
            let datalen = f.u32("datalen")?;
            let key = f.counted("key", keylen)?;
            let data = f.counted("data", datalen)?;
            let record_flags = f.u32("record flags")?;
            Body::ReplyDmaster(ReplyDmaster { db_id, rsn, key, data, record_flags })
        }
        op::REPLY_ERROR => {
            let status = f.i32("status")?;
            let msglen = f.u32("msglen")?;
            let msg = f.counted("msg", msglen)?;
            Body::ReplyError(ReplyError { status, msg })
        }
        op::REQ_CONTROL => {
            let opcode = f.u32("opcode")?;
            f.pad("pad", 4)?;
            let srvid = f.u64("srvid")?;
            let client_id = f.u32("client_id")?;
            let flags = f.u32("flags")?;
            let datalen = f.u32("datalen")?;
            let data = f.counted("data", datalen)?;
            Body::ReqControl(ReqControl { opcode, srvid, client_id, flags, data })
        }
        op::REPLY_CONTROL => {
            let status = f.i32("status")?;
            let datalen = f.u32("datalen")?;
            let errorlen = f.u32("errorlen")?;
            let data = f.counted("data", datalen)?;
            let errmsg = f.counted("errmsg", errorlen)?;
            Body::ReplyControl(ReplyControl { status, data, errmsg })
        }
        op::REQ_MESSAGE => {
            let srvid = f.u64("srvid")?;
            let datalen = f.u32("datalen")?;
            let data = f.counted("data", datalen)?;
            Body::Message(ReqMessage { srvid, data })
        }
        op::REQ_KEEPALIVE => {
            let version = f.u32("version")?;
            let uptime = f.u32("uptime")?;
            Body::Keepalive(Keepalive { version, uptime })
        }
        op::CLUSTER => {
            let len = f.u32("cluster body length")?;
            let bytes = f.counted("cluster body", len)?;
            let mut reader = super::payload::Reader(&bytes);
            let msg = super::cluster::ClusterMsg::decode(&mut reader)
                .map_err(|e| WireError::BadClusterMessage(e.0))?;
            if !reader.is_empty() {
                return Err(WireError::BadClusterMessage("bytes after the message"));
            }
            Body::Cluster(msg)
        }
        other => return Err(WireError::UnknownOperation(other)),
    };
    Ok(body)
}

// ---------------------------------------------------------------------------------------
// Framed streams

/// Why no packet could be read from a stream.
#[derive(Debug)]
pub enum ReadError {
    /// The stream ended cleanly, between two frames.
    Eof,
    /// The stream ended inside a frame.
    TruncatedFrame {
        expected: usize,
        got: usize,
    },
    /// The length field announces less than a header.
    FrameTooShort {
        len: u32,
    },
    /// The length field announces more than the limit; nothing was allocated for it.
    FrameTooLong {
        len: u32,
        max: usize,
    },
    Io(io::Error),
    /// A complete frame that is not a valid packet.
    Wire(WireError),
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadError::Eof => write!(f, "end of stream"),
            ReadError::TruncatedFrame { expected, got } => {
                write!(f, "stream ended inside a frame: got {got} of {expected} bytes")
            }
            ReadError::FrameTooShort { len } => {
                write!(f, "frame length {len} is shorter than the {PACKET_HEADER_LEN}-byte header")
            }
            ReadError::FrameTooLong { len, max } => {
                write!(f, "frame length {len} exceeds the limit of {max}")
            }
            ReadError::Io(e) => write!(f, "read failed: {e}"),
            ReadError::Wire(e) => write!(f, "corrupt packet: {e}"),
        }
    }
}

impl std::error::Error for ReadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ReadError::Io(e) => Some(e),
            ReadError::Wire(e) => Some(e),
            _ => None,
        }
    }
}

/// Reads and decodes one frame. `max_len` is capped at [`MAX_PACKET_LEN`].
pub fn read_packet(r: &mut impl Read, max_len: usize) -> Result<Packet, ReadError> {
    let mut frame = Vec::new();
    read_frame(r, max_len, &mut frame)?;
    decode(&frame).map_err(ReadError::Wire)
}

/// Reads one frame's bytes into `frame` (replacing its contents) without decoding it, so a
/// reader thread can reuse one buffer. The length is checked before anything is allocated,
/// and the buffer then only grows as bytes actually arrive.
pub fn read_frame(r: &mut impl Read, max_len: usize, frame: &mut Vec<u8>) -> Result<(), ReadError> {
    let mut len_bytes = [0u8; 4];
    let got = read_full(r, &mut len_bytes)?;
    if got == 0 {
        return Err(ReadError::Eof);
    }
    if got < len_bytes.len() {
        return Err(ReadError::TruncatedFrame { expected: len_bytes.len(), got });
    }
    let len = u32::from_le_bytes(len_bytes);
    let max = max_len.min(MAX_PACKET_LEN);
    if (len as usize) < PACKET_HEADER_LEN {
        return Err(ReadError::FrameTooShort { len });
    }
    if len as usize > max {
        return Err(ReadError::FrameTooLong { len, max });
    }
    let len = len as usize;
    frame.clear();
    frame.extend_from_slice(&len_bytes);
    let rest = (len - len_bytes.len()) as u64;
    (&mut *r).take(rest).read_to_end(frame).map_err(ReadError::Io)?;
    if frame.len() != len {
        return Err(ReadError::TruncatedFrame { expected: len, got: frame.len() });
    }
    Ok(())
}

/// Fills `buf` unless the stream ends first; returns how many bytes were read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize, ReadError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(ReadError::Io(e)),
        }
    }
    Ok(got)
}

#[cfg(test)]
#[path = "codec_tests.rs"]
mod tests;
