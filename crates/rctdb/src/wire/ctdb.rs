//! The controls of ctdbd's client protocol, with CTDB's numbers and byte layouts, so that
//! stock smbd (`source3/lib/ctdbd_conn.c`, `dbwrap_ctdb.c`) and Samba's `ctdb` tool talk to
//! rctdbd unchanged (DESIGN §6). Layouts were checked against `ctdb/protocol/protocol.h`
//! and the push functions of `protocol_types.c`; every one is little endian and packed.

use std::net::IpAddr;

use super::payload::{PayloadError, Reader, Writer};
use crate::record::RecordHeader;
use crate::wire::{DbId, Pnn};

/// CTDB control numbers (`enum ctdb_controls`). Only those rctdbd serves.
pub mod opcode {
    pub const PROCESS_EXISTS: u32 = 0;
    pub const STATISTICS: u32 = 1;
    pub const PING: u32 = 3;
    pub const GETDBPATH: u32 = 4;
    pub const GETVNNMAP: u32 = 5;
    pub const GET_DEBUG: u32 = 7;
    pub const GET_DBMAP: u32 = 9;
    pub const GET_RECMODE: u32 = 15;
    pub const DB_ATTACH: u32 = 18;
    pub const TRAVERSE_START: u32 = 20;
    pub const REGISTER_SRVID: u32 = 23;
    pub const DEREGISTER_SRVID: u32 = 24;
    pub const GET_DBNAME: u32 = 25;
    pub const ENABLE_SEQNUM: u32 = 26;
    pub const GET_PID: u32 = 30;
    pub const GET_RECMASTER: u32 = 31;
    pub const GET_PNN: u32 = 35;
    pub const TCP_CLIENT: u32 = 44;
    pub const DB_ATTACH_PERSISTENT: u32 = 61;
    pub const UPTIME: u32 = 69;
    pub const GET_CAPABILITIES: u32 = 80;
    pub const GET_PUBLIC_IPS: u32 = 90;
    pub const GET_NODEMAP: u32 = 91;
    pub const GET_RECLOCK_FILE: u32 = 99;
    pub const REGISTER_NOTIFY: u32 = 114;
    pub const DEREGISTER_NOTIFY: u32 = 115;
    pub const TRANS3_COMMIT: u32 = 119;
    pub const GET_DB_SEQNUM: u32 = 120;
    pub const DB_GET_HEALTH: u32 = 122;
    pub const GET_IFACES: u32 = 124;
    pub const SCHEDULE_FOR_DELETION: u32 = 128;
    pub const SET_DB_READONLY: u32 = 129;
    pub const TRAVERSE_START_EXT: u32 = 131;
    pub const GET_RUNSTATE: u32 = 138;
    pub const GET_NODES_FILE: u32 = 140;
    pub const DB_OPEN_FLAGS: u32 = 149;
    pub const DB_ATTACH_REPLICATED: u32 = 150;
    pub const CHECK_PID_SRVID: u32 = 151;

    /// Whether a control is CTDB's rather than one of rctdb's own (which sit far above).
    pub fn is_ctdb(opcode: u32) -> bool {
        opcode < 0x1000
    }
}

/// Destinations besides a node number (`protocol.h`).
pub const BROADCAST_ALL: Pnn = 0xF000_0002;
pub const BROADCAST_ACTIVE: Pnn = 0xF000_0003;
pub const BROADCAST_CONNECTED: Pnn = 0xF000_0004;
pub const MULTICAST: Pnn = 0xF000_0005;

/// Node flags of a node map.
pub const NODE_FLAGS_DISCONNECTED: u32 = 0x01;
pub const NODE_FLAGS_BANNED: u32 = 0x08;

/// Capabilities every rctdb node has: it can lead (RECMASTER) and be an LMASTER.
pub const CAPABILITIES: u32 = 0x01 | 0x02;

/// Recovery modes (GET_RECMODE answers in the status).
pub const RECOVERY_NORMAL: i32 = 0;
pub const RECOVERY_ACTIVE: i32 = 1;

/// `enum ctdb_runstate`: RUNNING once the node serves.
pub const RUNSTATE_FIRST_RECOVERY: u32 = 3;
pub const RUNSTATE_RUNNING: u32 = 5;

/// `sizeof(ctdb_sock_addr)`: the union of sockaddr, sockaddr_in and sockaddr_in6.
const SOCK_ADDR_LEN: usize = 28;

/// `ctdb_sock_addr` as the C union's bytes: family in host order, port and address in
/// network order, the rest zero.
fn push_sock_addr(out: &mut Vec<u8>, addr: IpAddr, port: u16) {
    let start = out.len();
    match addr {
        IpAddr::V4(v4) => {
            out.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            out.extend_from_slice(&port.to_be_bytes());
            out.extend_from_slice(&v4.octets());
        }
        IpAddr::V6(v6) => {
            out.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            out.extend_from_slice(&port.to_be_bytes());
            out.extend_from_slice(&0u32.to_ne_bytes()); // flowinfo
            out.extend_from_slice(&v6.octets());
        }
    }
    out.resize(start + SOCK_ADDR_LEN, 0);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeEntry {
    pub pnn: Pnn,
    pub flags: u32,
    pub addr: IpAddr,
}

/// GET_NODEMAP's answer: `num`, then per node `pnn, flags, ctdb_sock_addr` (36 bytes).
pub fn encode_node_map(nodes: &[NodeEntry], port: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + nodes.len() * (8 + SOCK_ADDR_LEN));
    Writer(&mut out).count(nodes.len());
    for node in nodes {
        Writer(&mut out).u32(node.pnn);
        Writer(&mut out).u32(node.flags);
        push_sock_addr(&mut out, node.addr, port);
    }
    out
}

/// GETVNNMAP's answer: `generation, size, map[size]`.
pub fn encode_vnn_map(generation: u32, map: &[Pnn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + 4 * map.len());
    Writer(&mut out).u32(generation);
    Writer(&mut out).count(map.len());
    for pnn in map {
        Writer(&mut out).u32(*pnn);
    }
    out
}

/// GET_DBMAP's answer: `num`, then per database `db_id, flags (u8), 3 bytes of padding`.
/// Every database rctdb clusters is volatile: flags 0.
pub fn encode_db_map(db_ids: &[DbId]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 8 * db_ids.len());
    Writer(&mut out).count(db_ids.len());
    for db_id in db_ids {
        Writer(&mut out).u32(*db_id);
        Writer(&mut out).u32(0);
    }
    out
}

/// An empty list (`num = 0`): GET_PUBLIC_IPS' and GET_IFACES' answer, since rctdb serves no
/// public addresses. The tool reads no interfaces as "no link is down", never
/// PARTIALLYONLINE.
pub fn encode_empty_list() -> Vec<u8> {
    0u32.to_le_bytes().to_vec()
}

/// A C string as CTDB sends names and paths: the bytes and a terminating NUL.
pub fn c_string(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 1);
    out.extend_from_slice(s.as_bytes());
    out.push(0);
    out
}

/// A u32 control argument (a db id), as smbd sends it: exactly four bytes, or eight when
/// the sender padded it.
pub fn decode_u32_arg(data: &[u8], what: &'static str) -> Result<u32, PayloadError> {
    if data.len() != 4 && data.len() != 8 {
        return Err(PayloadError(what));
    }
    Reader(data).u32(what)
}

/// PROCESS_EXISTS' argument: a pid_t.
pub fn decode_pid(data: &[u8]) -> Result<i32, PayloadError> {
    decode_u32_arg(data, "pid").map(|pid| pid as i32)
}

/// CHECK_PID_SRVID's argument: `pid_t pid; uint64_t srvid` packed (12 bytes, as smbd
/// builds it), or with the C struct's 4-byte hole (16 bytes).
pub fn decode_pid_srvid(data: &[u8]) -> Result<(i32, u64), PayloadError> {
    let mut r = Reader(data);
    let pid = r.u32("pid")? as i32;
    match data.len() {
        12 => {}
        16 => {
            r.take(4, "pid padding")?;
        }
        _ => return Err(PayloadError("pid and srvid")),
    }
    Ok((pid, r.u64("srvid")?))
}

/// TRAVERSE_START(_EXT)'s argument: `db_id, reqid, srvid` and, in the EXT form, a bool
/// `withemptyrecords` with 7 bytes of padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraverseStart {
    pub db_id: DbId,
    pub reqid: u32,
    pub srvid: u64,
    pub with_empty_records: bool,
}

impl TraverseStart {
    pub fn decode(data: &[u8], ext: bool) -> Result<TraverseStart, PayloadError> {
        let mut r = Reader(data);
        let db_id = r.u32("traverse db_id")?;
        let reqid = r.u32("traverse reqid")?;
        let srvid = r.u64("traverse srvid")?;
        let with_empty_records = ext && r.take(1, "traverse withemptyrecords")?[0] != 0;
        Ok(TraverseStart { db_id, reqid, srvid, with_empty_records })
    }
}

/// One record of a traverse, sent as a message to the traverse's srvid
/// (`struct ctdb_rec_data_old`): `length, reqid, keylen, datalen, key, header + data`.
/// The traverse ends with a record with neither key nor data.
pub fn encode_rec_data(reqid: u32, key: &[u8], record: Option<(&RecordHeader, &[u8])>) -> Vec<u8> {
    let datalen = record.map_or(0, |(_, data)| crate::record::HEADER_LEN + data.len());
    let length = 16 + key.len() + datalen;
    let mut out = Vec::with_capacity(length);
    Writer(&mut out).count(length);
    Writer(&mut out).u32(reqid);
    Writer(&mut out).count(key.len());
    Writer(&mut out).count(datalen);
    out.extend_from_slice(key);
    if let Some((header, data)) = record {
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(data);
    }
    out
}

/// The end of a traverse that failed: no key, and for data a status (a negated errno)
/// shorter than a record header. Samba's `ctdbd_traverse` ends a traverse at a record with
/// neither key nor data and fails it (EIO) at data too short to hold a header, so smbd sees
/// an error instead of a traverse that looks complete. (ctdbd itself ends a timed-out
/// traverse with the plain end marker: its client cannot tell.)
pub fn encode_traverse_failed(reqid: u32, status: i32) -> Vec<u8> {
    let mut out = Vec::with_capacity(20);
    Writer(&mut out).u32(20);
    Writer(&mut out).u32(reqid);
    Writer(&mut out).u32(0);
    Writer(&mut out).u32(4);
    Writer(&mut out).u32(status as u32);
    out
}

/// SCHEDULE_FOR_DELETION's argument, `struct ctdb_control_schedule_for_deletion` as the C
/// compiler lays it out: `db_id`, 4 bytes of padding (the header starts with a u64), the
/// ltdb header (24), `keylen`, the key.
pub fn decode_schedule_for_deletion(data: &[u8]) -> Result<(DbId, Vec<u8>), PayloadError> {
    let mut r = Reader(data);
    let db_id = r.u32("deletion db_id")?;
    r.take(4, "deletion padding")?;
    r.take(crate::record::HEADER_LEN, "deletion header")?;
    let key = r.counted("deletion key")?;
    Ok((db_id, key))
}

/// The srvid the leader announces itself on: a u32 pnn, once a second in ctdbd. Samba's
/// `ctdb` tool learns the leader (`ctdb status`, `ctdb leader`) only from this message.
pub const SRVID_LEADER: u64 = 0xF101_0000_0000_0000;

/// UPTIME's times (`struct ctdb_uptime`); a time that never happened is the epoch, as in
/// ctdbd, which starts with them zeroed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uptime {
    pub current_time: std::time::SystemTime,
    pub start_time: std::time::SystemTime,
    pub last_recovery_started: std::time::SystemTime,
    pub last_recovery_finished: std::time::SystemTime,
}

/// UPTIME's answer: four C `struct timeval`s (64-bit `tv_sec` then 64-bit `tv_usec`, 16
/// bytes each on the LP64 hosts ctdb runs on), copied as memory by the tool.
pub fn encode_uptime(uptime: &Uptime) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 * 16);
    for time in
        [uptime.current_time, uptime.start_time, uptime.last_recovery_started, uptime.last_recovery_finished]
    {
        let since = time.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        out.extend_from_slice(&(since.as_secs() as i64).to_le_bytes());
        out.extend_from_slice(&i64::from(since.subsec_micros()).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn node_map_entries_are_36_bytes_with_a_c_sockaddr() {
        let nodes = [
            NodeEntry { pnn: 0, flags: 0, addr: "127.0.0.2".parse().unwrap() },
            NodeEntry { pnn: 1, flags: NODE_FLAGS_DISCONNECTED, addr: "127.0.0.3".parse().unwrap() },
        ];
        let b = encode_node_map(&nodes, 4379);
        assert_eq!(b.len(), 4 + 2 * 36);
        assert_eq!(&b[0..4], &2u32.to_le_bytes());
        assert_eq!(&b[40..44], &1u32.to_le_bytes()); // second pnn
        assert_eq!(&b[44..48], &NODE_FLAGS_DISCONNECTED.to_le_bytes());
        assert_eq!(&b[48..50], &(libc::AF_INET as u16).to_ne_bytes());
        assert_eq!(&b[50..52], &4379u16.to_be_bytes());
        assert_eq!(&b[52..56], &[127, 0, 0, 3]);
        assert!(b[56..76].iter().all(|&x| x == 0));
    }

    #[test]
    fn small_layouts() {
        assert_eq!(encode_vnn_map(9, &[0, 2]), [9, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
        assert_eq!(encode_db_map(&[0xaabbccdd]), [1, 0, 0, 0, 0xdd, 0xcc, 0xbb, 0xaa, 0, 0, 0, 0]);
        assert_eq!(c_string("locking.tdb"), b"locking.tdb\0");
        assert_eq!(decode_pid_srvid(&[5, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]), Ok((5, 1)));
        assert_eq!(decode_pid_srvid(&[5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]), Ok((5, 1)));
        assert!(decode_pid_srvid(&[5, 0, 0, 0]).is_err());
        assert_eq!(decode_u32_arg(&[7, 0, 0, 0], "db_id"), Ok(7));
        assert!(decode_u32_arg(&[7, 0, 0], "db_id").is_err());
    }

    #[test]
    fn traverse_records_and_their_end() {
        let header = RecordHeader { rsn: 3, dmaster: 1, flags: 0 };
        let rec = encode_rec_data(42, b"k", Some((&header, b"vv")));
        assert_eq!(rec.len(), 16 + 1 + 24 + 2);
        assert_eq!(&rec[0..4], &(rec.len() as u32).to_le_bytes());
        assert_eq!(&rec[4..8], &42u32.to_le_bytes());
        assert_eq!(&rec[8..12], &1u32.to_le_bytes());
        assert_eq!(&rec[12..16], &26u32.to_le_bytes());
        assert_eq!(&rec[17..41], &header.encode());
        let end = encode_rec_data(42, b"", None);
        assert_eq!(end, [16, 0, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let failed = encode_traverse_failed(42, -libc::EIO);
        assert_eq!(&failed[..16], [20, 0, 0, 0, 42, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0]);
        assert_eq!(failed[16..], (-libc::EIO).to_le_bytes(), "a status, shorter than a record header");
    }

    #[test]
    fn traverse_start_forms() {
        let mut b = vec![1, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            TraverseStart::decode(&b, false),
            Ok(TraverseStart { db_id: 1, reqid: 2, srvid: 3, with_empty_records: false })
        );
        b.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        assert!(TraverseStart::decode(&b, true).unwrap().with_empty_records);
        assert!(TraverseStart::decode(&b[..10], false).is_err());
    }

    #[test]
    fn schedule_for_deletion_carries_the_key_after_a_padded_header() {
        // smbd 4.17 sends offsetof(key) + keylen bytes: the key starts at 36.
        let mut b = 9u32.to_le_bytes().to_vec();
        b.extend_from_slice(&[0xee; 4]);
        b.extend_from_slice(&RecordHeader { rsn: 7, dmaster: 1, flags: 0 }.encode());
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(b"abc");
        assert_eq!(b.len(), 36 + 3);
        assert_eq!(decode_schedule_for_deletion(&b), Ok((9, b"abc".to_vec())));
        assert!(decode_schedule_for_deletion(&b[..38]).is_err());
    }

    #[test]
    fn uptime_is_four_timevals() {
        let at =
            |secs: u64, micros: u32| std::time::UNIX_EPOCH + std::time::Duration::new(secs, micros * 1000);
        let uptime = Uptime {
            current_time: at(1_700_000_100, 7),
            start_time: at(1_700_000_000, 0),
            last_recovery_started: std::time::UNIX_EPOCH,
            last_recovery_finished: at(1, 999_999),
        };
        let b = encode_uptime(&uptime);
        assert_eq!(b.len(), 64);
        assert_eq!(&b[0..8], &1_700_000_100i64.to_le_bytes());
        assert_eq!(&b[8..16], &7i64.to_le_bytes());
        assert_eq!(&b[16..24], &1_700_000_000i64.to_le_bytes());
        assert!(b[32..48].iter().all(|&x| x == 0));
        assert_eq!(&b[48..56], &1i64.to_le_bytes());
        assert_eq!(&b[56..64], &999_999i64.to_le_bytes());
        assert_eq!(encode_empty_list(), [0, 0, 0, 0]);
    }

    proptest! {
        #[test]
        fn garbage_arguments_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_pid(&bytes);
            let _ = decode_pid_srvid(&bytes);
            let _ = TraverseStart::decode(&bytes, true);
            let _ = decode_schedule_for_deletion(&bytes);
        }
    }
}
