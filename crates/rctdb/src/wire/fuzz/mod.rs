//! Fuzz entry points: every decoder that reads bytes a peer or a client chose, driven from
//! one function per target so that `cargo fuzz` (fuzz/), the stable mutation runner
//! ([`runner`]) and the regression tests (tests/fuzz_regressions.rs) run the same code.
//!
//! A target must never panic, whatever the bytes. Where it is cheap it also checks what the
//! decoders promise: a decoded value encodes back to the bytes it came from (decoding is
//! canonical), and every length agrees with the buffer. A broken promise is a panic too,
//! so the fuzzers report it like a crash.
//!
//! Each target returns whether the input decoded to something: the stable runner keeps such
//! inputs as new material to mutate (libFuzzer has coverage instead and ignores it).

pub mod runner;
pub mod seeds;

use std::io::Cursor;

use super::cluster::ClusterMsg;
use super::codec::{decode, decode_unpadded, encode, encoded_len, read_frame, ReadError};
use super::control::{self, opcode as rctdb_op, AttachReply, SrvidUpdate};
use super::ctdb::{self, opcode as ctdb_op, TraverseStart};
use super::payload::Reader;
use super::{Body, Packet, ReqControl, MAX_PACKET_LEN, PACKET_HEADER_LEN};
use crate::record::{RecordHeader, HEADER_LEN};
use crate::tunables;

/// A fuzz target: bytes in, `true` when they decoded to something.
pub type Target = fn(&[u8]) -> bool;

/// Every target by name, as `cargo fuzz` and `scripts/fuzz.sh` call them.
pub const TARGETS: &[(&str, Target)] = &[
    ("wire_packet", wire_packet),
    ("wire_packet_unpadded", wire_packet_unpadded),
    ("frame_stream", frame_stream),
    ("control_payload", control_payload),
    ("cluster_msg", cluster_msg),
    ("record_header", record_header),
    ("client_request", client_request),
];

pub fn target(name: &str) -> Option<Target> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
}

/// One frame of a node link (padded, as CTDB's TCP queue sends). The bytes are tried as
/// they are and with the length field set to their size, so that mutations which change
/// the size still reach the body decoders.
pub fn wire_packet(bytes: &[u8]) -> bool {
    with_fixed_length(bytes, |b| match decode(b) {
        Ok(packet) => {
            assert_eq!(encode(&packet), b, "padded decoding is canonical");
            assert_eq!(encoded_len(&packet), b.len());
            assert_eq!(decode_unpadded(b).as_ref(), Ok(&packet), "a padded frame is a valid unpadded one");
            true
        }
        Err(err) => {
            let _ = err.to_string();
            false
        }
    })
}

/// One frame from the client socket, where frames need not be padded (smbd's are not).
pub fn wire_packet_unpadded(bytes: &[u8]) -> bool {
    with_fixed_length(bytes, |b| match decode_unpadded(b) {
        Ok(packet) => {
            check_unpadded_round_trip(b, &packet);
            true
        }
        Err(err) => {
            let _ = err.to_string();
            false
        }
    })
}

/// A node link's byte stream: frames read one after another (`read_frame`, as the link
/// reader does) and decoded, until the stream ends or a frame is refused.
pub fn frame_stream(bytes: &[u8]) -> bool {
    read_frames(bytes, |frame| decode(frame).map(|packet| assert_eq!(encode(&packet), frame)).is_ok())
}

/// What the daemon does with a client's bytes: frames off the socket, each decoded
/// unpadded, then the payload decoder the daemon applies to that control or call
/// (`daemon::node::{controls, ctdb_clients}`).
pub fn client_request(bytes: &[u8]) -> bool {
    read_frames(bytes, |frame| match decode_unpadded(frame) {
        Ok(packet) => {
            check_unpadded_round_trip(frame, &packet);
            client_payload(&packet);
            true
        }
        Err(_) => false,
    })
}

/// Every control payload decoder on the same bytes; a value any of them accepts must
/// encode back to the bytes where the format is canonical. Returns whether a structured
/// payload (counts, lists, fixed layouts) decoded: nearly any bytes pass the plain ones.
pub fn control_payload(bytes: &[u8]) -> bool {
    if let Ok(reply) = AttachReply::decode(bytes) {
        assert_eq!(reply.encode(), bytes, "AttachReply");
    }
    if let Ok((db_id, key)) = control::decode_db_key(bytes) {
        assert_eq!(control::encode_db_key(db_id, key), bytes, "db_id ++ key");
    }
    let _ = control::decode_db_id(bytes);
    db_name(bytes);
    let mut decoded = false;
    if let Ok(update) = SrvidUpdate::decode(bytes) {
        assert_eq!(update.encode(), bytes, "SrvidUpdate");
        decoded = true;
    }
    if let Ok(records) = control::decode_records(bytes) {
        assert_eq!(control::encode_records(&records), bytes, "records");
        decoded = true;
    }
    if let Ok(request) = control::ChunkRequest::decode(bytes) {
        assert_eq!(request.encode(), bytes, "ChunkRequest");
        decoded = true;
    }
    if let Ok(chunk) = control::RecordChunk::decode(bytes) {
        assert_eq!(chunk.encode(), bytes, "RecordChunk");
        decoded = true;
    }
    if ctdb::decode_u32_arg(bytes, "arg").is_ok() || ctdb::decode_pid(bytes).is_ok() {
        assert!(bytes.len() == 4 || bytes.len() == 8, "a u32 argument is 4 or 8 bytes");
        decoded = true;
    }
    if ctdb::decode_pid_srvid(bytes).is_ok() {
        assert!(bytes.len() == 12 || bytes.len() == 16, "pid and srvid are 12 or 16 bytes");
        decoded = true;
    }
    for ext in [false, true] {
        decoded |= TraverseStart::decode(bytes, ext).is_ok();
    }
    if let Ok((_, key)) = ctdb::decode_schedule_for_deletion(bytes) {
        assert!(36 + key.len() <= bytes.len(), "the key lies inside the payload");
        decoded = true;
    }
    decoded | tunable_payload(bytes)
}

/// A membership or recovery message body (`ClusterMsg`), alone and inside a CLUSTER packet.
pub fn cluster_msg(bytes: &[u8]) -> bool {
    let mut reader = Reader(bytes);
    let Ok(msg) = ClusterMsg::decode(&mut reader) else { return false };
    let consumed = bytes.len() - reader.rest().len();
    let mut encoded = Vec::new();
    msg.encode_into(&mut encoded);
    assert_eq!(encoded, &bytes[..consumed], "cluster messages decode canonically");
    assert_eq!(msg.encoded_len(), consumed);
    let packet = Packet { generation: 2, destnode: 0, srcnode: 1, reqid: 0, body: Body::Cluster(msg) };
    if encoded_len(&packet) <= MAX_PACKET_LEN {
        assert_eq!(decode(&encode(&packet)), Ok(packet), "a CLUSTER packet round-trips");
    }
    true
}

/// A stored value: the record header in front of the data.
pub fn record_header(bytes: &[u8]) -> bool {
    let Some((header, data)) = RecordHeader::decode(bytes) else {
        assert!(bytes.len() < HEADER_LEN, "a value with room for a header has one");
        return false;
    };
    assert_eq!(data, &bytes[HEADER_LEN..]);
    let value = header.with_data(data);
    assert_eq!(value.len(), bytes.len());
    // Only the reserved and padding bytes, which encode writes as zero, may differ.
    let kept = |b: &[u8]| [&b[0..12], &b[16..20], &b[HEADER_LEN..]].concat();
    assert_eq!(kept(&value), kept(bytes));
    assert_eq!(RecordHeader::decode(&value), Some((header, data)));
    true
}

/// The payload decoders the daemon applies to a decoded client packet.
fn client_payload(packet: &Packet) {
    let Body::ReqControl(ReqControl { opcode, data, .. }) = &packet.body else { return };
    let data = data.as_slice();
    match *opcode {
        rctdb_op::MIGRATION_DONE | rctdb_op::DELETED => {
            let _ = control::decode_db_key(data);
        }
        rctdb_op::DB_ATTACH
        | ctdb_op::DB_ATTACH
        | ctdb_op::DB_ATTACH_PERSISTENT
        | ctdb_op::DB_ATTACH_REPLICATED => {
            db_name(data);
        }
        rctdb_op::TRAVERSE_ALL => {
            let _ = control::decode_db_id(data);
        }
        rctdb_op::PULL_DB => {
            let _ = control::ChunkRequest::decode(data);
        }
        rctdb_op::CLIENT_SRVIDS => {
            let _ = SrvidUpdate::decode(data);
        }
        tunables::opcode::GET_TUNABLE | tunables::opcode::SET_TUNABLE => {
            tunable_payload(data);
        }
        ctdb_op::SCHEDULE_FOR_DELETION => {
            let _ = ctdb::decode_schedule_for_deletion(data);
        }
        ctdb_op::TRAVERSE_START | ctdb_op::TRAVERSE_START_EXT => {
            let _ = TraverseStart::decode(data, *opcode == ctdb_op::TRAVERSE_START_EXT);
        }
        ctdb_op::PROCESS_EXISTS => {
            let _ = ctdb::decode_pid(data);
        }
        ctdb_op::CHECK_PID_SRVID => {
            let _ = ctdb::decode_pid_srvid(data);
        }
        _ => {
            // DB_OPEN_FLAGS, ENABLE_SEQNUM, GETDBPATH, ... name a database by its id.
            let _ = ctdb::decode_u32_arg(data, "db_id");
        }
    }
}

/// An attach's database name as the daemon reads it: UTF-8, one trailing NUL allowed, then
/// checked as a file name before anything is created.
fn db_name(data: &[u8]) {
    let name = data.strip_suffix(b"\0").unwrap_or(data);
    let Ok(name) = std::str::from_utf8(name) else { return };
    if control::valid_db_name(name) {
        assert!(!name.contains('/') && name != ".." && name.len() <= 255, "{name:?} is a plain file name");
        let _ = control::db_id_of(name);
    }
}

/// GET_TUNABLE and SET_TUNABLE requests: what decodes re-encodes to the same request. And
/// the replies a client reads.
fn tunable_payload(data: &[u8]) -> bool {
    use tunables::payload::*;
    let mut decoded = decode_value(data).is_ok();
    if let Ok(names) = decode_list_reply(data) {
        assert!(names.iter().all(|name| !name.is_empty() && !name.contains([':', '\0'])));
        decoded = true;
    }
    if let Ok(name) = decode_get_request(data) {
        assert_eq!(decode_get_request(&encode_get_request(&name)), Ok(name));
        decoded = true;
    }
    if let Ok((name, value)) = decode_set_request(data) {
        assert_eq!(decode_set_request(&encode_set_request(&name, value)), Ok((name, value)));
        decoded = true;
    }
    decoded
}

/// An unpadded frame is the padded encoding with fewer than 8 bytes of zero tail padding
/// added or removed, and a length field that says its own size.
fn check_unpadded_round_trip(frame: &[u8], packet: &Packet) {
    let padded = encode(packet);
    let common = padded.len().min(frame.len());
    assert_eq!(&padded[4..common], &frame[4..common], "unpadded decoding is canonical up to padding");
    let tail = if padded.len() > common { &padded[common..] } else { &frame[common..] };
    assert!(tail.len() < 8 && tail.iter().all(|&b| b == 0), "only zero padding differs");
    assert_eq!(decode(&padded).as_ref(), Ok(packet));
}

/// Runs `check` on `bytes` and, when its length field does not already say so, on a copy
/// whose length field is the buffer's size.
fn with_fixed_length(bytes: &[u8], check: impl Fn(&[u8]) -> bool) -> bool {
    let as_sent = check(bytes);
    let Ok(len) = u32::try_from(bytes.len()) else { return as_sent };
    if bytes.len() < 4 || bytes[0..4] == len.to_le_bytes() {
        return as_sent;
    }
    let mut fixed = bytes.to_vec();
    fixed[0..4].copy_from_slice(&len.to_le_bytes());
    check(&fixed) | as_sent
}

/// Reads frames off `bytes` as a stream reader does and hands each to `on_frame` until it
/// refuses one; returns whether any frame was accepted. Checks that each frame is what its length field said.
fn read_frames(bytes: &[u8], mut on_frame: impl FnMut(&[u8]) -> bool) -> bool {
    // Small, so that the fuzzer also meets the too-long refusal.
    const MAX: usize = 1 << 16;
    let mut stream = Cursor::new(bytes);
    let mut frame = Vec::new();
    let mut accepted = false;
    loop {
        let start = stream.position() as usize;
        match read_frame(&mut stream, MAX, &mut frame) {
            Ok(()) => {
                let len = u32::from_le_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
                assert_eq!(frame.len(), len, "a frame is as long as its length field");
                assert!((PACKET_HEADER_LEN..=MAX).contains(&len));
                assert_eq!(&bytes[start..start + len], frame.as_slice());
                // A reader drops the connection at the first frame it refuses.
                if !on_frame(&frame) {
                    return accepted;
                }
                accepted = true;
            }
            Err(ReadError::Eof) => {
                assert_eq!(start, bytes.len(), "end of stream only between frames");
                return accepted;
            }
            Err(err) => {
                let _ = err.to_string();
                return accepted;
            }
        }
    }
}
