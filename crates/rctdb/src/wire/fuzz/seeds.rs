//! Seed inputs for each fuzz target: valid encodings of every packet, control payload,
//! cluster message and record, for the mutators to start from.

use super::super::cluster::{
    flags, ClusterMsg, DbName, Epoch, FixEntry, HeaderEntry, Heartbeat, RecordFix, VacuumEntry,
};
use super::super::codec::{decode_unpadded, encode, PACKET_ALIGNMENT};
use super::super::control::{self, opcode as rctdb_op, RecordCopy, SrvidUpdate};
use super::super::ctdb::opcode as ctdb_op;
use super::super::*;
use crate::record::RecordHeader;
use crate::tunables;

/// The seeds of target `name` (see [`super::TARGETS`]); empty for an unknown name.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "wire_packet" => packets().iter().map(encode).collect(),
        "wire_packet_unpadded" => client_packets().iter().map(unpadded).collect(),
        "frame_stream" => streams(packets().iter().map(encode).collect()),
        "client_request" => streams(client_packets().iter().map(unpadded).collect()),
        "control_payload" => control_payloads(),
        "cluster_msg" => cluster_msgs()
            .iter()
            .map(|msg| {
                let mut out = Vec::new();
                msg.encode_into(&mut out);
                out
            })
            .collect(),
        "record_header" => records(),
        _ => vec![],
    }
}

/// Each frame alone, then all of them back to back as one stream.
fn streams(frames: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let all = frames.concat();
    frames.into_iter().chain([all]).collect()
}

/// A frame as smbd sends it: no tail padding, the length field its true size. (The
/// shortest cut that still decodes to the same packet: the body may end in zero bytes.)
fn unpadded(packet: &Packet) -> Vec<u8> {
    let padded = encode(packet);
    (0..PACKET_ALIGNMENT)
        .rev()
        .filter_map(|cut| {
            let mut bytes = padded.get(..padded.len().checked_sub(cut)?)?.to_vec();
            let len = bytes.len() as u32;
            bytes[0..4].copy_from_slice(&len.to_le_bytes());
            (decode_unpadded(&bytes).as_ref() == Ok(packet)).then_some(bytes)
        })
        .next()
        .unwrap_or(padded)
}

fn packet(reqid: ReqId, body: Body) -> Packet {
    Packet { generation: 5, destnode: 1, srcnode: 0, reqid, body }
}

fn control(opcode: u32, data: Vec<u8>) -> Body {
    Body::ReqControl(ReqControl { opcode, srvid: 0x77, client_id: 3, flags: 0, data })
}

/// One packet of every operation, with every cluster message kind.
fn packets() -> Vec<Packet> {
    let mut bodies = vec![
        Body::ReqCall(ReqCall {
            flags: CALL_FLAG_IMMEDIATE_MIGRATION,
            db_id: 0x42fe_72c5,
            callid: CALL_NULL_FUNC,
            hopcount: 2,
            key: b"key".to_vec(),
            calldata: b"call".to_vec(),
        }),
        Body::ReplyCall(ReplyCall { status: 0, data: b"value".to_vec() }),
        Body::ReqDmaster(ReqDmaster {
            db_id: 9,
            rsn: 12,
            dmaster: 1,
            key: b"k".to_vec(),
            data: b"record".to_vec(),
            record_flags: crate::record::FLAG_MIGRATED_WITH_DATA,
        }),
        Body::ReplyDmaster(ReplyDmaster {
            db_id: 9,
            rsn: 13,
            key: b"k".to_vec(),
            data: vec![],
            record_flags: 0,
        }),
        Body::ReplyError(ReplyError { status: -2, msg: b"no such database".to_vec() }),
        control(
            rctdb_op::PULL_DB,
            control::ChunkRequest { db_id: 9, max_records: 10, max_bytes: 4096, after: Some(b"k".to_vec()) }
                .encode(),
        ),
        Body::ReplyControl(ReplyControl {
            status: 0,
            data: control::encode_records(&sample_records()),
            errmsg: b"err".to_vec(),
        }),
        Body::Message(ReqMessage { srvid: 0xF101_0000_0000_0000, data: 1u32.to_le_bytes().to_vec() }),
        Body::Keepalive(Keepalive { version: PROTOCOL_VERSION, uptime: 30 }),
    ];
    bodies.extend(cluster_msgs().into_iter().map(Body::Cluster));
    bodies.into_iter().enumerate().map(|(i, body)| packet(i as ReqId + 1, body)).collect()
}

/// What clients send: calls, messages and a control of every opcode the daemon decodes a
/// payload for, each with a valid payload.
fn client_packets() -> Vec<Packet> {
    let db_id = 9u32.to_le_bytes().to_vec();
    let [traverse, traverse_ext, pid_srvid, deletion] = ctdb_arguments();
    let bodies = vec![
        Body::ReqCall(ReqCall {
            flags: CALL_FLAG_FIRST_USE,
            db_id: 9,
            callid: CALL_FETCH_FUNC,
            hopcount: 0,
            key: b"key".to_vec(),
            calldata: vec![],
        }),
        Body::Message(ReqMessage { srvid: 0x55, data: b"hello".to_vec() }),
        control(rctdb_op::DB_ATTACH, b"locking.tdb\0".to_vec()),
        control(rctdb_op::STATUS, vec![]),
        control(rctdb_op::TRAVERSE_ALL, db_id.clone()),
        control(rctdb_op::MIGRATION_DONE, control::encode_db_key(9, b"key")),
        control(rctdb_op::DELETED, control::encode_db_key(9, b"key")),
        control(rctdb_op::CLIENT_SRVIDS, SrvidUpdate::Added(vec![(7, 0x55)]).encode()),
        control(tunables::opcode::GET_TUNABLE, tunables::payload::encode_get_request("KeepaliveLimit")),
        control(tunables::opcode::SET_TUNABLE, tunables::payload::encode_set_request("KeepaliveLimit", 9)),
        control(ctdb_op::DB_ATTACH, b"brlock.tdb\0".to_vec()),
        control(ctdb_op::DB_ATTACH_PERSISTENT, b"registry.tdb\0".to_vec()),
        control(ctdb_op::GETDBPATH, db_id.clone()),
        control(ctdb_op::DB_OPEN_FLAGS, db_id),
        control(ctdb_op::TRAVERSE_START, traverse),
        control(ctdb_op::TRAVERSE_START_EXT, traverse_ext),
        control(ctdb_op::PROCESS_EXISTS, 7u32.to_le_bytes().to_vec()),
        control(ctdb_op::CHECK_PID_SRVID, pid_srvid),
        control(ctdb_op::SCHEDULE_FOR_DELETION, deletion),
        control(ctdb_op::REGISTER_SRVID, vec![]),
        control(ctdb_op::GET_NODEMAP, vec![]),
    ];
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| Packet { destnode: CURRENT_NODE, ..packet(i as ReqId + 1, body) })
        .collect()
}

/// TRAVERSE_START's, TRAVERSE_START_EXT's, CHECK_PID_SRVID's and SCHEDULE_FOR_DELETION's
/// arguments.
fn ctdb_arguments() -> [Vec<u8>; 4] {
    let mut traverse = [9u32.to_le_bytes(), 4u32.to_le_bytes()].concat();
    traverse.extend_from_slice(&0x55u64.to_le_bytes());
    let traverse_ext = [traverse.clone(), vec![1, 0, 0, 0, 0, 0, 0, 0]].concat();
    let pid_srvid = [7u32.to_le_bytes().to_vec(), 0x55u64.to_le_bytes().to_vec()].concat();
    let mut deletion = [9u32.to_le_bytes(), [0; 4]].concat();
    deletion.extend_from_slice(&RecordHeader { rsn: 3, dmaster: 0, flags: 0 }.encode());
    deletion.extend_from_slice(&3u32.to_le_bytes());
    deletion.extend_from_slice(b"key");
    [traverse, traverse_ext, pid_srvid, deletion]
}

fn sample_records() -> Vec<RecordCopy> {
    vec![
        RecordCopy {
            key: b"a".to_vec(),
            header: RecordHeader { rsn: 4, dmaster: 1, flags: 0 },
            data: b"x".to_vec(),
        },
        RecordCopy { key: vec![], header: RecordHeader::initial(0), data: vec![] },
    ]
}

/// The payloads with structure (counts, lists, fixed sizes); the plain ones (a db id then a
/// key, a name) take nearly any bytes and need no seed.
fn control_payloads() -> Vec<Vec<u8>> {
    let mut payloads = vec![
        SrvidUpdate::All(vec![(1, 2), (-1, u64::MAX)]).encode(),
        SrvidUpdate::Removed(vec![]).encode(),
        control::encode_records(&sample_records()),
        9u32.to_le_bytes().to_vec(),
        tunables::payload::encode_get_request("KeepaliveLimit"),
        tunables::payload::encode_set_request("KeepaliveLimit", 9),
    ];
    payloads.extend(ctdb_arguments());
    payloads
}

/// One message of every kind, empty keys among them; the cluster codec's round-trip test
/// uses them too.
pub(crate) fn cluster_msgs() -> Vec<ClusterMsg> {
    let dbs = vec![DbName { db_id: 9, name: "locking.tdb".into() }];
    let epoch = Epoch { term: 3, seq: 2 };
    vec![
        ClusterMsg::Heartbeat(Heartbeat {
            term: 3,
            leader: 0,
            flags: flags::LEADER | flags::ACTIVE,
            epoch,
            generation: 5,
        }),
        ClusterMsg::VoteRequest { term: 4 },
        ClusterMsg::Vote { term: 4, granted: true },
        ClusterMsg::RecoveryStart { term: 4, generation: 6 },
        ClusterMsg::RecoveryReady { generation: 6, epoch, participants: vec![0, 1], dbs: dbs.clone() },
        ClusterMsg::Pull { generation: 6, dbs: vec![9] },
        ClusterMsg::Headers {
            generation: 6,
            db_id: 9,
            chunk: 0,
            entries: vec![HeaderEntry { key: b"k".to_vec(), rsn: 5, dmaster: 1 }],
            last: true,
        },
        ClusterMsg::Wipe { generation: 6, dbs: dbs.clone() },
        ClusterMsg::Wiped { generation: 6 },
        ClusterMsg::Fixes {
            generation: 6,
            db_id: 9,
            fixes: vec![
                FixEntry { key: b"a".to_vec(), fix: RecordFix::Promote { rsn: 6 } },
                FixEntry { key: b"b".to_vec(), fix: RecordFix::Point { dmaster: 1 } },
                FixEntry { key: vec![], fix: RecordFix::Point { dmaster: 1 } },
            ],
        },
        ClusterMsg::Commit { generation: 6, epoch, vnn_map: vec![0, 1], dbs: dbs.clone(), fixes: 2 },
        ClusterMsg::Committed { generation: 6 },
        ClusterMsg::RecoveryFailed { generation: 6 },
        ClusterMsg::Activate { generation: 6 },
        ClusterMsg::Trouble { reason: "record lost in flight".into() },
        ClusterMsg::Leaving,
        ClusterMsg::LeaseAsk { leader: 2, stamp: 1_234 },
        ClusterMsg::LeaseGrant { stamp: u64::MAX },
        ClusterMsg::Alive,
        ClusterMsg::Attach { id: 1, db: dbs[0].clone() },
        ClusterMsg::Attached { id: 1, error: String::new() },
        ClusterMsg::VacuumFetch { generation: 6, db_id: 9, keys: vec![b"k".to_vec(), vec![]] },
        ClusterMsg::VacuumDrop {
            generation: 6,
            round: 1,
            db_id: 9,
            entries: vec![VacuumEntry { key: b"k".to_vec(), rsn: 7 }, VacuumEntry { key: vec![], rsn: 1 }],
        },
        ClusterMsg::VacuumKept { generation: 6, round: 1, kept: vec![b"k".to_vec()] },
    ]
}

fn records() -> Vec<Vec<u8>> {
    vec![
        RecordHeader { rsn: 1, dmaster: 0, flags: 0 }.with_data(b"value"),
        RecordHeader { rsn: u64::MAX, dmaster: 7, flags: crate::record::FLAG_VACUUM_MIGRATED }.with_data(&[]),
    ]
}
