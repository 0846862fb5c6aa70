//! Codec tests: golden byte layouts written out by hand from CTDB's C structs, round trips of
//! every body, and hostile input (random bytes, truncations, mutations, lying lengths).

use super::*;
use crate::wire::*;
use proptest::prelude::*;
use std::io::Cursor;

/// Little-endian byte builder so the golden vectors read like the C struct definitions.
#[derive(Default)]
struct Bytes(Vec<u8>);

impl Bytes {
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_le_bytes());
        self
    }
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }
    /// struct ctdb_req_header: length, magic, version, generation, operation, destnode,
    /// srcnode, reqid.
    fn header(len: u32, operation: u32) -> Self {
        Bytes::default().u32(len).u32(0x4354_4442).u32(1).u32(7).u32(operation).u32(2).u32(1).u32(0x1234)
    }
}

fn packet(body: Body) -> Packet {
    Packet { generation: 7, destnode: 2, srcnode: 1, reqid: 0x1234, body }
}

fn check_golden(body: Body, expected: Vec<u8>) {
    let p = packet(body);
    let bytes = encode(&p);
    assert_eq!(bytes, expected, "encoding of {p:?}");
    assert_eq!(bytes.len() % 8, 0);
    assert_eq!(encoded_len(&p), bytes.len());
    assert_eq!(decode(&expected), Ok(p));
}

#[test]
fn golden_req_call() {
    // 56-byte fixed part + key "ab" + calldata "xyz" = 61, padded to 64.
    let expected = Bytes::header(64, 0)
        .u32(0x1) // 32 flags: IMMEDIATE_MIGRATION
        .u32(0x42fe_72c5) // 36 db_id
        .u32(0xFF00_0002) // 40 callid: FETCH
        .u32(3) // 44 hopcount
        .u32(2) // 48 keylen
        .u32(3) // 52 calldatalen
        .raw(b"abxyz") // 56 key ++ calldata
        .raw(&[0, 0, 0]) // 61 padding
        .0;
    check_golden(
        Body::ReqCall(ReqCall {
            flags: CALL_FLAG_IMMEDIATE_MIGRATION,
            db_id: 0x42fe_72c5,
            callid: CALL_FETCH_FUNC,
            hopcount: 3,
            key: b"ab".to_vec(),
            calldata: b"xyz".to_vec(),
        }),
        expected,
    );
}

#[test]
fn golden_reply_call() {
    let expected = Bytes::header(48, 1).u32((-5i32) as u32).u32(5).raw(b"hello").raw(&[0, 0, 0]).0;
    check_golden(Body::ReplyCall(ReplyCall { status: -5, data: b"hello".to_vec() }), expected);
}

#[test]
fn golden_req_dmaster_with_alignment_hole() {
    // Written out as raw bytes: the 4-byte hole at 36 before the u64 rsn is the detail that
    // matters for the dissector.
    #[rustfmt::skip]
    let expected: Vec<u8> = vec![
        72, 0, 0, 0,   0x42, 0x44, 0x54, 0x43,   1, 0, 0, 0,   7, 0, 0, 0,     // length magic version generation
        2, 0, 0, 0,    2, 0, 0, 0,               1, 0, 0, 0,   0x34, 0x12, 0, 0, // operation destnode srcnode reqid
        0x10, 0x34, 0x5d, 0x43,   0, 0, 0, 0,                                   // 32 db_id, 36 hole
        0x08, 0x07, 0x06, 0x05, 0x04, 0x03, 0x02, 0x01,                         // 40 rsn
        3, 0, 0, 0,    2, 0, 0, 0,               1, 0, 0, 0,                    // 48 dmaster, 52 keylen, 56 datalen
        b'k', b'1', b'v',                                                       // 60 key ++ data
        0, 0, 1, 0,                                                             // 63 record flags 0x10000
        0, 0, 0, 0, 0,                                                          // 67 padding to 72
    ];
    check_golden(
        Body::ReqDmaster(ReqDmaster {
            db_id: 0x435d_3410,
            rsn: 0x0102_0304_0506_0708,
            dmaster: 3,
            key: b"k1".to_vec(),
            data: b"v".to_vec(),
            record_flags: 0x0001_0000,
        }),
        expected,
    );
}

#[test]
fn golden_reply_dmaster() {
    // 56 fixed + "k1" + "v" + 4 flags = 63, padded to 64.
    let expected = Bytes::header(64, 3)
        .u32(0x1421_fb78) // 32 db_id
        .u32(0) // 36 hole
        .u64(9) // 40 rsn
        .u32(2) // 48 keylen
        .u32(1) // 52 datalen
        .raw(b"k1v") // 56 key ++ data
        .u32(0x0001_0000) // 59 record flags
        .raw(&[0]) // 63 padding
        .0;
    check_golden(
        Body::ReplyDmaster(ReplyDmaster {
            db_id: 0x1421_fb78,
            rsn: 9,
            key: b"k1".to_vec(),
            data: b"v".to_vec(),
            record_flags: 0x0001_0000,
        }),
        expected,
    );
}

#[test]
fn golden_reply_error() {
    let expected = Bytes::header(48, 4).u32((-1i32) as u32).u32(6).raw(b"no db\0").raw(&[0, 0]).0;
    check_golden(Body::ReplyError(ReplyError { status: -1, msg: b"no db\0".to_vec() }), expected);
}

#[test]
fn golden_req_control() {
    // 60 fixed + 4 data = 64: no padding.
    let expected = Bytes::header(64, 7)
        .u32(18) // 32 opcode: DB_ATTACH
        .u32(0) // 36 pad
        .u64(0xF001_0000_0000_0000) // 40 srvid
        .u32(0xabcd) // 48 client_id
        .u32(1) // 52 flags: NOREPLY
        .u32(4) // 56 datalen
        .raw(&[1, 2, 3, 4]) // 60 data
        .0;
    check_golden(
        Body::ReqControl(ReqControl {
            opcode: 18,
            srvid: 0xF001_0000_0000_0000,
            client_id: 0xabcd,
            flags: 1,
            data: vec![1, 2, 3, 4],
        }),
        expected,
    );
}

#[test]
fn golden_reply_control() {
    // 44 fixed + 1 data + 3 errmsg = 48.
    let expected = Bytes::header(48, 8).u32(0).u32(1).u32(3).raw(&[9]).raw(b"bad").0;
    check_golden(
        Body::ReplyControl(ReplyControl { status: 0, data: vec![9], errmsg: b"bad".to_vec() }),
        expected,
    );
}

#[test]
fn golden_keepalive() {
    let expected = Bytes::header(40, 9).u32(1).u32(3600).0;
    check_golden(Body::Keepalive(Keepalive { version: 1, uptime: 3600 }), expected);
}

fn sample_req_call() -> Vec<u8> {
    encode(&packet(Body::ReqCall(ReqCall {
        flags: 1,
        db_id: 5,
        callid: CALL_FETCH_FUNC,
        hopcount: 0,
        key: b"key".to_vec(),
        calldata: vec![],
    })))
}

fn set_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn header_checks() {
    let good = sample_req_call();
    assert_eq!(decode(&good[..31]), Err(WireError::ShortPacket { len: 31 }));

    let mut b = good.clone();
    set_u32(&mut b, 4, 0x4244_5443); // byte-swapped magic: a big-endian CTDB
    assert_eq!(decode(&b), Err(WireError::BadMagic(0x4244_5443)));

    let mut b = good.clone();
    set_u32(&mut b, 8, 2);
    assert_eq!(decode(&b), Err(WireError::BadVersion(2)));

    let mut b = good.clone();
    set_u32(&mut b, 16, 6); // removed from CTDB
    assert_eq!(decode(&b), Err(WireError::UnknownOperation(6)));
    set_u32(&mut b, 16, op::REQ_TUNNEL);
    assert_eq!(decode(&b), Err(WireError::UnknownOperation(10)));

    // The length field must describe exactly the buffer handed in.
    let mut b = good.clone();
    b.extend_from_slice(&[0; 8]);
    assert_eq!(decode(&b), Err(WireError::LengthMismatch { header: 64, buffer: 72 }));
    set_u32(&mut b, 0, 72);
    assert_eq!(decode(&b), Err(WireError::TrailingBytes { operation: 0, extra: 13 }));

    // Unpadded lengths are refused on node links, as CTDB's TCP reader does, and taken on
    // the client socket, where smbd sends them.
    let mut b = good[..61].to_vec();
    set_u32(&mut b, 0, 61);
    assert_eq!(decode(&b), Err(WireError::Unaligned { len: 61 }));
    assert_eq!(decode_unpadded(&b), decode(&good));
}

#[test]
fn req_message_layout() {
    // srvid at 32, datalen at 40, data at 44: `struct ctdb_req_message_old`.
    let p = packet(Body::Message(ReqMessage { srvid: 0x0102_0304_0506_0708, data: b"abc".to_vec() }));
    let b = encode(&p);
    assert_eq!(b.len(), 48);
    assert_eq!(&b[32..40], &0x0102_0304_0506_0708u64.to_le_bytes());
    assert_eq!(&b[40..44], &3u32.to_le_bytes());
    assert_eq!(&b[44..47], b"abc");
    // smbd writes it unpadded: 47 bytes.
    let mut unpadded = b[..47].to_vec();
    set_u32(&mut unpadded, 0, 47);
    assert_eq!(decode_unpadded(&unpadded), Ok(p));
}

#[test]
fn padding_must_be_zero() {
    let mut b = sample_req_call();
    b[63] = 1;
    assert_eq!(decode(&b), Err(WireError::NonZeroPadding { operation: 0, offset: 63 }));

    let mut b = encode(&packet(Body::ReqControl(ReqControl {
        opcode: 1,
        srvid: 2,
        client_id: 3,
        flags: 0,
        data: vec![],
    })));
    b[37] = 0xff; // the C struct's `pad`
    assert_eq!(decode(&b), Err(WireError::NonZeroPadding { operation: 7, offset: 37 }));
}

#[test]
fn lying_lengths_are_rejected() {
    let good = sample_req_call(); // keylen at 48, calldatalen at 52, 64 bytes
    for (at, v, field) in [
        (48, 9, "key"),
        (48, 100, "key"),
        (48, u32::MAX, "key"),
        (52, 6, "calldata"),
        (52, u32::MAX, "calldata"),
    ] {
        let mut b = good.clone();
        set_u32(&mut b, at, v);
        match decode(&b) {
            Err(WireError::Truncated { field: f, .. }) => assert_eq!(f, field, "len {v} at {at}"),
            other => panic!("len {v} at {at}: {other:?}"),
        }
    }
    // A shorter key than sent leaves more than padding behind.
    let mut b = good.clone();
    set_u32(&mut b, 48, 0);
    assert_eq!(decode(&b), Err(WireError::TrailingBytes { operation: 0, extra: 8 }));

    // REQ_DMASTER without the record flags CTDB appends.
    let mut b = encode(&packet(Body::ReqDmaster(ReqDmaster {
        db_id: 1,
        rsn: 1,
        dmaster: 1,
        key: vec![1; 4],
        data: vec![],
        record_flags: 0,
    })));
    set_u32(&mut b, 52, 9); // keylen 9 leaves no room for the flags
    assert!(
        matches!(decode(&b), Err(WireError::Truncated { field: "record flags", .. })),
        "{:?}",
        decode(&b)
    );
}

#[test]
fn error_messages_name_the_problem() {
    let e = WireError::Truncated { operation: 2, field: "key", needed: 100, available: 4 };
    assert_eq!(e.to_string(), "REQ_DMASTER: field key needs 100 bytes but only 4 remain");
    assert_eq!(WireError::BadMagic(1).to_string(), "bad magic 0x00000001, expected 0x43544442 (CTDB)");
    let r = ReadError::FrameTooLong { len: 1 << 30, max: MAX_PACKET_LEN };
    assert_eq!(r.to_string(), format!("frame length {} exceeds the limit of {}", 1u32 << 30, MAX_PACKET_LEN));
}

#[test]
fn encode_into_refuses_oversized_packets_and_appends() {
    let big = packet(Body::ReplyCall(ReplyCall { status: 0, data: vec![0; MAX_PACKET_LEN] }));
    let mut out = vec![0xAA];
    assert!(matches!(encode_into(&big, &mut out), Err(WireError::TooLarge { .. })));
    assert_eq!(out, vec![0xAA]);
    let small = packet(Body::Keepalive(Keepalive { version: 1, uptime: 2 }));
    encode_into(&small, &mut out).unwrap();
    assert_eq!(&out[1..], &encode(&small)[..]);
}

// ---------------------------------------------------------------------------------------
// Framed streams

#[test]
fn read_packet_reads_a_stream_then_clean_eof() {
    let a = packet(Body::Keepalive(Keepalive { version: 1, uptime: 5 }));
    let b = packet(Body::ReplyCall(ReplyCall { status: 0, data: vec![7; 300] }));
    let mut stream = Vec::new();
    write_packet(&mut stream, &a).unwrap();
    write_packet(&mut stream, &b).unwrap();
    let mut r = Cursor::new(stream);
    assert_eq!(read_packet(&mut r, MAX_PACKET_LEN).unwrap(), a);
    assert_eq!(read_packet(&mut r, MAX_PACKET_LEN).unwrap(), b);
    assert!(matches!(read_packet(&mut r, MAX_PACKET_LEN), Err(ReadError::Eof)));
}

#[test]
fn read_packet_distinguishes_truncation_from_eof() {
    let bytes = sample_req_call();
    let mut r = Cursor::new(bytes[..2].to_vec());
    assert!(matches!(
        read_packet(&mut r, MAX_PACKET_LEN),
        Err(ReadError::TruncatedFrame { expected: 4, got: 2 })
    ));
    let mut r = Cursor::new(bytes[..40].to_vec());
    assert!(matches!(
        read_packet(&mut r, MAX_PACKET_LEN),
        Err(ReadError::TruncatedFrame { expected: 64, got: 40 })
    ));
}

#[test]
fn read_packet_checks_the_length_before_reading_on() {
    // Only the length field is there: an implementation that allocated and read on would
    // report a truncated frame instead.
    let mut r = Cursor::new(u32::MAX.to_le_bytes().to_vec());
    assert!(matches!(
        read_packet(&mut r, MAX_PACKET_LEN),
        Err(ReadError::FrameTooLong { len: u32::MAX, .. })
    ));
    let mut r = Cursor::new(1000u32.to_le_bytes().to_vec());
    assert!(matches!(read_packet(&mut r, 512), Err(ReadError::FrameTooLong { len: 1000, max: 512 })));
    let mut r = Cursor::new(31u32.to_le_bytes().to_vec());
    assert!(matches!(read_packet(&mut r, MAX_PACKET_LEN), Err(ReadError::FrameTooShort { len: 31 })));
    // A well-framed but corrupt packet is a Wire error, and the stream stays in step.
    let mut bad = sample_req_call();
    set_u32(&mut bad, 4, 0);
    bad.extend_from_slice(&sample_req_call());
    let mut r = Cursor::new(bad);
    assert!(matches!(read_packet(&mut r, MAX_PACKET_LEN), Err(ReadError::Wire(WireError::BadMagic(0)))));
    assert!(read_packet(&mut r, MAX_PACKET_LEN).is_ok());
}

// ---------------------------------------------------------------------------------------
// Properties

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => proptest::collection::vec(any::<u8>(), 0..24),
        1 => proptest::collection::vec(any::<u8>(), 0..max),
    ]
}

pub(crate) fn arb_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), bytes(300), bytes(300)).prop_map(
            |(flags, db_id, callid, hopcount, key, calldata)| Body::ReqCall(ReqCall {
                flags,
                db_id,
                callid,
                hopcount,
                key,
                calldata
            })
        ),
        (any::<i32>(), bytes(300)).prop_map(|(status, data)| Body::ReplyCall(ReplyCall { status, data })),
        (any::<u32>(), any::<u64>(), any::<u32>(), bytes(300), bytes(300), any::<u32>()).prop_map(
            |(db_id, rsn, dmaster, key, data, record_flags)| Body::ReqDmaster(ReqDmaster {
                db_id,
                rsn,
                dmaster,
                key,
                data,
                record_flags
            })
        ),
        (any::<u32>(), any::<u64>(), bytes(300), bytes(300), any::<u32>()).prop_map(
            |(db_id, rsn, key, data, record_flags)| Body::ReplyDmaster(ReplyDmaster {
                db_id,
                rsn,
                key,
                data,
                record_flags
            })
        ),
        (any::<i32>(), bytes(100)).prop_map(|(status, msg)| Body::ReplyError(ReplyError { status, msg })),
        (any::<u32>(), any::<u64>(), any::<u32>(), any::<u32>(), bytes(300)).prop_map(
            |(opcode, srvid, client_id, flags, data)| Body::ReqControl(ReqControl {
                opcode,
                srvid,
                client_id,
                flags,
                data
            })
        ),
        (any::<i32>(), bytes(300), bytes(100))
            .prop_map(|(status, data, errmsg)| Body::ReplyControl(ReplyControl { status, data, errmsg })),
        (any::<u64>(), bytes(300)).prop_map(|(srvid, data)| Body::Message(ReqMessage { srvid, data })),
        (any::<u32>(), any::<u32>())
            .prop_map(|(version, uptime)| Body::Keepalive(Keepalive { version, uptime })),
        (any::<u64>(), bytes(40), any::<u32>()).prop_map(|(term, key, db_id)| {
            use crate::wire::cluster::{ClusterMsg, HeaderEntry};
            let entries = vec![HeaderEntry { key, rsn: term, dmaster: db_id }];
            Body::Cluster(ClusterMsg::Headers {
                generation: db_id,
                db_id,
                chunk: 0,
                entries,
                last: term % 2 == 0,
            })
        }),
    ]
}

pub(crate) fn arb_packet() -> impl Strategy<Value = Packet> {
    (any::<u32>(), any::<u32>(), any::<u32>(), any::<u32>(), arb_body()).prop_map(
        |(generation, destnode, srcnode, reqid, body)| Packet { generation, destnode, srcnode, reqid, body },
    )
}

/// Whatever `decode` makes of `b`, it must not panic, and an accepted packet must be the
/// canonical encoding of what it decoded to.
fn assert_decode_is_sound(b: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(p) = decode(b) {
        prop_assert_eq!(encode(&p), b.to_vec());
    }
    Ok(())
}

/// A header with a plausible operation and a correct length, then arbitrary body bytes:
/// gets past the header checks so the body parsers see hostile input.
fn arb_framed_garbage() -> impl Strategy<Value = Vec<u8>> {
    (0u32..12, proptest::collection::vec(any::<u8>(), 0..128), proptest::collection::vec(any::<u32>(), 0..8))
        .prop_map(|(operation, mut body, small_words)| {
            // Sprinkle small values so length fields sometimes fit the buffer.
            for (i, w) in small_words.iter().enumerate() {
                let at = (i * 4) % body.len().max(1);
                if at + 4 <= body.len() {
                    body[at..at + 4].copy_from_slice(&(w % 64).to_le_bytes());
                }
            }
            let len = (32 + body.len()) & !7;
            body.truncate(len - 32);
            let mut b = Bytes::default()
                .u32(len as u32)
                .u32(CTDB_MAGIC)
                .u32(1)
                .u32(0)
                .u32(operation)
                .u32(0)
                .u32(0)
                .u32(0)
                .0;
            b.extend_from_slice(&body);
            b
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn round_trip(p in arb_packet()) {
        let b = encode(&p);
        prop_assert_eq!(b.len() % 8, 0);
        prop_assert_eq!(b.len(), encoded_len(&p));
        prop_assert_eq!(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize, b.len());
        prop_assert_eq!(decode(&b), Ok(p.clone()));
        // And through a framed stream.
        let mut s = Vec::new();
        write_packet(&mut s, &p).unwrap();
        prop_assert_eq!(read_packet(&mut Cursor::new(s), MAX_PACKET_LEN).unwrap(), p);
    }

    #[test]
    fn random_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200)) {
        assert_decode_is_sound(&b)?;
        let _ = read_packet(&mut Cursor::new(b), 256);
    }

    #[test]
    fn framed_garbage_never_panics(b in arb_framed_garbage()) {
        assert_decode_is_sound(&b)?;
    }

    #[test]
    fn truncations_are_rejected(p in arb_packet(), cut in any::<prop::sample::Index>(), fix_len in any::<bool>()) {
        let full = encode(&p);
        let n = cut.index(full.len());
        let mut b = full[..n].to_vec();
        if fix_len && n >= 4 {
            set_u32(&mut b, 0, n as u32);
        }
        // Cutting only padding off and fixing the length cannot yield a valid packet either:
        // the length would no longer be a multiple of 8.
        prop_assert!(decode(&b).is_err(), "accepted a truncation to {} of {} bytes", n, full.len());
        prop_assert!(read_packet(&mut Cursor::new(b), MAX_PACKET_LEN).is_err());
    }

    #[test]
    fn mutations_never_panic(
        p in arb_packet(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        word in proptest::option::of((any::<prop::sample::Index>(), any::<u32>())),
    ) {
        let mut b = encode(&p);
        for (at, v) in edits {
            let i = at.index(b.len());
            b[i] = v;
        }
        if let Some((at, v)) = word {
            let i = at.index(b.len() - 3);
            set_u32(&mut b, i, v);
        }
        assert_decode_is_sound(&b)?;
        let _ = read_packet(&mut Cursor::new(b), MAX_PACKET_LEN);
    }

    #[test]
    fn length_fields_that_lie_are_rejected(p in arb_packet(), delta in 1u32..1000, grow in any::<bool>()) {
        // Every counted field sits right after the fixed part; change the first length field
        // of the body and the packet must be refused (it no longer adds up).
        let b = encode(&p);
        let at = match p.body {
            Body::ReqCall(_) => 48,
            Body::ReplyCall(_) | Body::ReplyError(_) => 36,
            Body::ReqDmaster(_) => 52,
            Body::ReplyDmaster(_) => 48,
            Body::ReqControl(_) => 56,
            Body::ReplyControl(_) => 36,
            Body::Message(_) => 40,
            Body::Cluster(_) => 32,
            Body::Keepalive(_) => return Ok(()),
        };
        let old = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let new = if grow { old.saturating_add(delta) } else { old.saturating_sub(delta) };
        prop_assume!(new != old);
        let mut bad = b.clone();
        set_u32(&mut bad, at, new);
        // Shrinking a length by less than the padding and moving nothing is the only way to
        // keep the sum in range, and then later fields read from the wrong place: either
        // way it must not decode to the same packet.
        match decode(&bad) {
            Err(_) => {}
            Ok(q) => prop_assert_ne!(q, p),
        }
    }
}
