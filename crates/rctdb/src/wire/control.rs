//! Payloads of the REQ_CONTROL / REPLY_CONTROL packets rctdb uses, between a client and its
//! daemon and between daemons. The packet framing is `wire`'s; this is what goes inside.
//! Opcodes are our own, far above CTDB's, so a capture never confuses the two.

pub use super::payload::PayloadError;
use super::payload::{Reader, Writer};
use crate::record::{RecordHeader, HEADER_LEN};
use crate::wire::{DbId, Pnn};

pub mod opcode {
    /// Client -> daemon, and daemon -> every peer: attach a database by name.
    pub const DB_ATTACH: u32 = 0x7c00_0001;
    /// Client -> daemon: this node, its links, engine counters (`status::NodeStatus`, as JSON).
    pub const STATUS: u32 = 0x7c00_0002;
    /// Daemon -> peer: the next chunk, in key order, of the records of a database that the
    /// peer holds a copy of (`ChunkRequest`; the reply is a `RecordChunk`).
    pub const PULL_DB: u32 = 0x7c00_0003;
    /// Client -> daemon: the newest copy of every record of a database, cluster-wide. The
    /// answer is a series of replies with the request's reqid, each a `RecordChunk`; the one
    /// marked last ends it, a reply with an error status ends it as failed.
    pub const TRAVERSE_ALL: u32 = 0x7c00_0004;
    /// Client -> daemon, no reply: the client answered after a migration has used the record.
    pub const MIGRATION_DONE: u32 = 0x7c00_0005;
    /// Daemon -> peer, no reply: the (pid, srvid) pairs this node's clients registered or
    /// dropped, so the peer answers CHECK_PID_SRVID for live processes without asking.
    pub const CLIENT_SRVIDS: u32 = 0x7c00_0006;
    /// Client -> daemon, no reply: the client deleted this record (left it empty); CTDB's
    /// SCHEDULE_FOR_DELETION. Payload `encode_db_key`.
    pub const DELETED: u32 = 0x7c00_0007;
    /// Client -> daemon: the node's statistics (`engine::statistics::Statistics`) as JSON;
    /// payload `STATISTICS_RESET` also starts them from zero.
    pub const STATISTICS: u32 = 0x7c00_0020;
}

/// STATISTICS payload: answer, then reset the counters.
pub const STATISTICS_RESET: &[u8] = b"reset";

/// What a CLIENT_SRVIDS control says about the sender's clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SrvidUpdate {
    /// Every pair the sender's clients hold now (after a link comes up).
    All(Vec<(i32, u64)>),
    Added(Vec<(i32, u64)>),
    Removed(Vec<(i32, u64)>),
}

impl SrvidUpdate {
    pub fn encode(&self) -> Vec<u8> {
        let (kind, pairs) = match self {
            SrvidUpdate::All(p) => (0, p),
            SrvidUpdate::Added(p) => (1, p),
            SrvidUpdate::Removed(p) => (2, p),
        };
        let mut out = Vec::with_capacity(8 + 12 * pairs.len());
        Writer(&mut out).u32(kind);
        Writer(&mut out).count(pairs.len());
        for (pid, srvid) in pairs {
            Writer(&mut out).u32(*pid as u32);
            Writer(&mut out).u64(*srvid);
        }
        out
    }

    pub fn decode(data: &[u8]) -> Result<SrvidUpdate, PayloadError> {
        let mut r = Reader(data);
        let kind = r.u32("srvid update kind")?;
        let n = r.count(12, "srvid pair count")?;
        let mut pairs = Vec::with_capacity(n);
        for _ in 0..n {
            let pid = r.u32("pid")? as i32;
            pairs.push((pid, r.u64("srvid")?));
        }
        if !r.is_empty() {
            return Err(PayloadError("bytes after the srvid pairs"));
        }
        match kind {
            0 => Ok(SrvidUpdate::All(pairs)),
            1 => Ok(SrvidUpdate::Added(pairs)),
            2 => Ok(SrvidUpdate::Removed(pairs)),
            _ => Err(PayloadError("srvid update kind")),
        }
    }
}

/// REQ_CONTROL flag: the sender wants no reply (CTDB's CTDB_CTRL_FLAG_NOREPLY).
pub const FLAG_NOREPLY: u32 = 1;

/// A database id is the Jenkins hash of its name, as in CTDB: every node derives the same id.
pub fn db_id_of(name: &str) -> DbId {
    crate::hash::jenkins_hash(name.as_bytes())
}

/// Database names are file names under the daemon's `--dbdir`.
pub fn valid_db_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name != "." && name != ".." && !name.contains(['/', '\0'])
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachReply {
    pub db_id: DbId,
    pub pnn: Pnn,
    /// tdb_flags the client must open the file with, so every opener agrees.
    pub tdb_flags: u32,
    pub path: String,
}

impl AttachReply {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + self.path.len());
        Writer(&mut out).u32(self.db_id);
        Writer(&mut out).u32(self.pnn);
        Writer(&mut out).u32(self.tdb_flags);
        out.extend_from_slice(self.path.as_bytes());
        out
    }

    pub fn decode(data: &[u8]) -> Result<AttachReply, PayloadError> {
        let mut r = Reader(data);
        let db_id = r.u32("attach reply db_id")?;
        let pnn = r.u32("attach reply pnn")?;
        let tdb_flags = r.u32("attach reply tdb_flags")?;
        let path = String::from_utf8(r.rest().to_vec()).map_err(|_| PayloadError("attach reply path"))?;
        Ok(AttachReply { db_id, pnn, tdb_flags, path })
    }
}

/// `db_id ++ key`: the payload of MIGRATION_DONE.
pub fn encode_db_key(db_id: DbId, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + key.len());
    Writer(&mut out).u32(db_id);
    out.extend_from_slice(key);
    out
}

pub fn decode_db_key(data: &[u8]) -> Result<(DbId, &[u8]), PayloadError> {
    let mut r = Reader(data);
    let db_id = r.u32("db_id")?;
    Ok((db_id, r.rest()))
}

pub fn decode_db_id(data: &[u8]) -> Result<DbId, PayloadError> {
    Reader(data).u32("db_id")
}

/// PULL_DB's argument: the records of `db_id` with keys after `after` (from the first if
/// `None`), in key order, at most `max_records` of them and about `max_bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRequest {
    pub db_id: DbId,
    pub max_records: u32,
    pub max_bytes: u32,
    pub after: Option<Vec<u8>>,
}

impl ChunkRequest {
    /// `db_id, max_records, max_bytes, has_cursor (u32), cursor key (counted)`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.after.as_ref().map_or(0, Vec::len));
        Writer(&mut out).u32(self.db_id);
        Writer(&mut out).u32(self.max_records);
        Writer(&mut out).u32(self.max_bytes);
        Writer(&mut out).u32(self.after.is_some() as u32);
        if let Some(key) = &self.after {
            Writer(&mut out).counted(key);
        }
        out
    }

    pub fn decode(data: &[u8]) -> Result<ChunkRequest, PayloadError> {
        let mut r = Reader(data);
        let db_id = r.u32("chunk db_id")?;
        let max_records = r.u32("chunk max_records")?;
        let max_bytes = r.u32("chunk max_bytes")?;
        let after = match r.u32("chunk has_cursor")? {
            0 => None,
            1 => Some(r.counted("chunk cursor")?),
            _ => return Err(PayloadError("chunk has_cursor is neither 0 nor 1")),
        };
        if !r.is_empty() {
            return Err(PayloadError("bytes after the chunk request"));
        }
        Ok(ChunkRequest { db_id, max_records, max_bytes, after })
    }
}

/// A chunk of a traverse: records in key order, and whether they are the last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordChunk {
    pub last: bool,
    pub records: Vec<RecordCopy>,
}

impl RecordChunk {
    /// `last (u32)`, then `encode_records`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        Writer(&mut out).u32(self.last as u32);
        out.extend_from_slice(&encode_records(&self.records));
        out
    }

    pub fn decode(data: &[u8]) -> Result<RecordChunk, PayloadError> {
        let mut r = Reader(data);
        let last = match r.u32("chunk last")? {
            0 => false,
            1 => true,
            _ => return Err(PayloadError("chunk last is neither 0 nor 1")),
        };
        Ok(RecordChunk { last, records: decode_records(r.rest())? })
    }

    /// What the chunk takes on the wire.
    pub fn encoded_len(&self) -> usize {
        8 + self.records.iter().map(RecordCopy::encoded_len).sum::<usize>()
    }
}

/// One record with its header, as PULL_DB and TRAVERSE_ALL carry them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordCopy {
    pub key: Vec<u8>,
    pub header: RecordHeader,
    pub data: Vec<u8>,
}

impl RecordCopy {
    /// What the record takes in `encode_records`.
    pub fn encoded_len(&self) -> usize {
        24 + self.key.len() + self.data.len()
    }
}

/// `count, then per record: keylen, datalen, rsn (u64), dmaster, flags, key, data`.
pub fn encode_records(records: &[RecordCopy]) -> Vec<u8> {
    let size: usize = records.iter().map(RecordCopy::encoded_len).sum();
    let mut out = Vec::with_capacity(4 + size);
    Writer(&mut out).u32(records.len() as u32);
    for record in records {
        Writer(&mut out).u32(record.key.len() as u32);
        Writer(&mut out).u32(record.data.len() as u32);
        out.extend_from_slice(&record.header.rsn.to_le_bytes());
        Writer(&mut out).u32(record.header.dmaster);
        Writer(&mut out).u32(record.header.flags);
        out.extend_from_slice(&record.key);
        out.extend_from_slice(&record.data);
    }
    out
}

pub fn decode_records(data: &[u8]) -> Result<Vec<RecordCopy>, PayloadError> {
    let mut r = Reader(data);
    let count = r.u32("record count")? as usize;
    // Each record takes at least 24 bytes: a lying count cannot make us allocate much.
    let mut records = Vec::with_capacity(count.min(data.len() / 24));
    for _ in 0..count {
        let keylen = r.u32("record keylen")? as usize;
        let datalen = r.u32("record datalen")? as usize;
        let rsn = r.u64("record rsn")?;
        let dmaster = r.u32("record dmaster")?;
        let flags = r.u32("record flags")?;
        let key = r.take(keylen, "record key")?.to_vec();
        let data = r.take(datalen, "record data")?.to_vec();
        records.push(RecordCopy { key, header: RecordHeader { rsn, dmaster, flags }, data });
    }
    if !r.rest().is_empty() {
        return Err(PayloadError("bytes after the last record"));
    }
    Ok(records)
}

/// Keeps the newest copy (highest RSN) of each key, in key order: how a cluster-wide
/// traverse decides which copy is the record.
pub fn merge_newest(copies: impl IntoIterator<Item = RecordCopy>) -> Vec<RecordCopy> {
    let mut newest: std::collections::BTreeMap<Vec<u8>, RecordCopy> = Default::default();
    for copy in copies {
        match newest.get(&copy.key) {
            Some(kept) if kept.header.rsn >= copy.header.rsn => {}
            _ => {
                newest.insert(copy.key.clone(), copy);
            }
        }
    }
    newest.into_values().collect()
}

const _: () = assert!(HEADER_LEN == 24);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn copy(key: &[u8], rsn: u64, data: &[u8]) -> RecordCopy {
        RecordCopy {
            key: key.to_vec(),
            header: RecordHeader { rsn, dmaster: 1, flags: 0 },
            data: data.to_vec(),
        }
    }

    #[test]
    fn attach_reply_round_trips() {
        let reply = AttachReply { db_id: 7, pnn: 2, tdb_flags: 1, path: "/tmp/x/locking.tdb".into() };
        assert_eq!(AttachReply::decode(&reply.encode()), Ok(reply));
        assert!(AttachReply::decode(&[1, 2, 3]).is_err());
    }

    #[test]
    fn merge_keeps_the_highest_rsn() {
        let merged = merge_newest([
            copy(b"a", 3, b"old"),
            copy(b"a", 5, b"new"),
            copy(b"b", 1, b"x"),
            copy(b"a", 4, b"mid"),
        ]);
        assert_eq!(merged, vec![copy(b"a", 5, b"new"), copy(b"b", 1, b"x")]);
    }

    #[test]
    fn db_names_are_plain_file_names() {
        assert!(valid_db_name("locking.tdb"));
        for bad in ["", ".", "..", "a/b", "../etc", "x\0y"] {
            assert!(!valid_db_name(bad), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn records_round_trip(records in prop::collection::vec(
            (prop::collection::vec(any::<u8>(), 0..20), any::<u64>(), any::<u32>(), any::<u32>(), prop::collection::vec(any::<u8>(), 0..40)),
            0..10,
        )) {
            let records: Vec<RecordCopy> = records.into_iter().map(|(key, rsn, dmaster, flags, data)| {
                RecordCopy { key, header: RecordHeader { rsn, dmaster, flags }, data }
            }).collect();
            prop_assert_eq!(decode_records(&encode_records(&records)), Ok(records));
        }

        #[test]
        fn srvid_updates_round_trip(kind in 0u8..3, pairs in prop::collection::vec((any::<i32>(), any::<u64>()), 0..20)) {
            let update = match kind {
                0 => SrvidUpdate::All(pairs),
                1 => SrvidUpdate::Added(pairs),
                _ => SrvidUpdate::Removed(pairs),
            };
            prop_assert_eq!(SrvidUpdate::decode(&update.encode()), Ok(update));
        }

        #[test]
        fn random_payloads_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = SrvidUpdate::decode(&bytes);
            let _ = decode_records(&bytes);
            let _ = AttachReply::decode(&bytes);
            let _ = decode_db_key(&bytes);
            let _ = ChunkRequest::decode(&bytes);
            let _ = RecordChunk::decode(&bytes);
        }

        #[test]
        fn chunks_round_trip(after in prop::option::of(prop::collection::vec(any::<u8>(), 0..20)), last: bool, n in 0usize..5) {
            let request = ChunkRequest { db_id: 3, max_records: 100, max_bytes: 1 << 20, after };
            prop_assert_eq!(ChunkRequest::decode(&request.encode()), Ok(request));
            let records: Vec<RecordCopy> = (0..n).map(|i| copy(&[i as u8], i as u64, b"v")).collect();
            let chunk = RecordChunk { last, records };
            prop_assert_eq!(chunk.encode().len(), chunk.encoded_len());
            prop_assert_eq!(RecordChunk::decode(&chunk.encode()), Ok(chunk));
        }
    }
}
