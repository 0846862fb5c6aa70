//! The membership and recovery messages between daemons (DESIGN §5, §8.4): heartbeats,
//! elections and the steps of a recovery. They travel as one operation of our own,
//! [`op::CLUSTER`](super::op::CLUSTER), so CTDB's dissector shows them as unknown rather than
//! as something they are not. Body: `u32 kind`, then the kind's fields, little endian;
//! lists are a u32 count then their items, byte strings a u32 length then the bytes. Like
//! the rest of the codec, decoding is canonical and checks every length.

use super::payload::{PayloadError, Reader, Writer};
use super::{DbId, Generation, Pnn};

/// No leader known (in a heartbeat).
pub const NO_LEADER: Pnn = u32::MAX;

/// Heartbeat flags.
pub mod flags {
    /// The sender leads the cluster.
    pub const LEADER: u32 = 1;
    /// The sender serves: it is in the generation its leader activated.
    pub const ACTIVE: u32 = 2;
    /// The sender asks for a recovery (it came back from quiet, lost a record in flight...).
    pub const WANTS_RECOVERY: u32 = 4;
    /// The sender took itself out (a store failed) and must not be a member for a while.
    pub const BANNED: u32 = 8;
    pub const ALL: u32 = LEADER | ACTIVE | WANTS_RECOVERY | BANNED;
}

/// Where a node is in the cluster's history of recoveries: the leader's term, then the
/// recovery's number within it. Ordered; `Epoch::default()` is "never admitted".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Epoch {
    pub term: u64,
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    pub term: u64,
    pub leader: Pnn,
    pub flags: u32,
    pub epoch: Epoch,
    pub generation: Generation,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DbName {
    pub db_id: DbId,
    pub name: String,
}

/// One record's header as a node holds it (`dmaster == sender`: the sender holds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderEntry {
    pub key: Vec<u8>,
    pub rsn: u64,
    pub dmaster: Pnn,
}

/// What a recovery changes in one node's copy of a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFix {
    /// Nobody alive holds the record and this node's copy is the newest: it holds it now,
    /// at this RSN.
    Promote { rsn: u64 },
    /// This node's copy (created empty if it has none) names `dmaster` as the holder: what
    /// a new LMASTER must know.
    Point { dmaster: Pnn },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixEntry {
    pub key: Vec<u8>,
    pub fix: RecordFix,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterMsg {
    Heartbeat(Heartbeat),
    /// A candidate asks for votes in `term` (clusters without a cluster lock).
    VoteRequest {
        term: u64,
    },
    Vote {
        term: u64,
        granted: bool,
    },
    /// Leader -> member: stop serving, a recovery to `generation` begins.
    RecoveryStart {
        term: u64,
        generation: Generation,
    },
    /// Member -> leader: stopped; where it is in the history, and what it has attached.
    RecoveryReady {
        generation: Generation,
        epoch: Epoch,
        participants: Vec<Pnn>,
        dbs: Vec<DbName>,
    },
    /// Leader -> trusted member: send the headers of your records of these databases.
    Pull {
        generation: Generation,
        dbs: Vec<DbId>,
    },
    /// Member -> leader: chunk number `chunk` of a database's headers; `last` ends it. A
    /// chunk lost on a reset link shows as a gap, and the recovery starts again.
    Headers {
        generation: Generation,
        db_id: DbId,
        chunk: u32,
        entries: Vec<HeaderEntry>,
        last: bool,
    },
    /// Leader -> untrusted member: your records are from a history the cluster left; empty
    /// these databases (attaching them first).
    Wipe {
        generation: Generation,
        dbs: Vec<DbName>,
    },
    Wiped {
        generation: Generation,
    },
    /// Leader -> member: a chunk of the record fixes the member applies at `Commit`.
    Fixes {
        generation: Generation,
        db_id: DbId,
        fixes: Vec<FixEntry>,
    },
    /// Leader -> member: the new history entry and map; apply the `fixes` fixes sent before
    /// (a member that received another number commits nothing and says so).
    Commit {
        generation: Generation,
        epoch: Epoch,
        vnn_map: Vec<Pnn>,
        dbs: Vec<DbName>,
        fixes: u64,
    },
    Committed {
        generation: Generation,
    },
    /// Member -> leader: part of the recovery did not arrive; start it again.
    RecoveryFailed {
        generation: Generation,
    },
    /// Leader -> member: serve under `generation`.
    Activate {
        generation: Generation,
    },
    /// Member -> leader: something only a recovery can mend (a record lost in flight).
    Trouble {
        reason: String,
    },
    /// Member -> all: leaving the cluster now.
    Leaving,
    /// Member -> its leader, or leader -> members: renew my lease, counted from `stamp` on
    /// my own clock (the engine's `now` when it asked). `leader` is whom the asker follows
    /// (itself, when it leads): only that relation is granted.
    LeaseAsk {
        leader: Pnn,
        stamp: u64,
    },
    /// The answer to `LeaseAsk`: the asker may hold records until `stamp` plus its lease
    /// time, on its own clock.
    LeaseGrant {
        stamp: u64,
    },
    /// "Still here": sent outside the node's lock while a long step (a recovery of a large
    /// database) keeps its heartbeats from going out.
    Alive,
    /// A client attached database `db` on the sender: attach it too, and say so (`id`
    /// names the request).
    Attach {
        id: u32,
        db: DbName,
    },
    /// The answer to `Attach`: `error` empty when attached.
    Attached {
        id: u32,
        error: String,
    },
    /// Holder -> LMASTER (vacuuming, DESIGN §8.5): these records are empty here; take them
    /// (migrate them to yourself) and vacuum them.
    VacuumFetch {
        generation: Generation,
        db_id: DbId,
        keys: Vec<Vec<u8>>,
    },
    /// LMASTER -> every other member (vacuuming): the sender holds these
    /// records, empty, at these RSNs; drop your copy of each unless it is newer or yours.
    VacuumDrop {
        generation: Generation,
        round: u32,
        db_id: DbId,
        entries: Vec<VacuumEntry>,
    },
    /// Member -> LMASTER: the answer to `VacuumDrop`; the keys whose copies were kept.
    VacuumKept {
        generation: Generation,
        round: u32,
        kept: Vec<Vec<u8>>,
    },
}

/// A record the LMASTER asks its peers to drop: the key and the RSN of its empty copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VacuumEntry {
    pub key: Vec<u8>,
    pub rsn: u64,
}

const HEARTBEAT: u32 = 1;
const VOTE_REQUEST: u32 = 2;
const VOTE: u32 = 3;
const RECOVERY_START: u32 = 4;
const RECOVERY_READY: u32 = 5;
const PULL: u32 = 6;
const HEADERS: u32 = 7;
const WIPE: u32 = 8;
const WIPED: u32 = 9;
const FIXES: u32 = 10;
const COMMIT: u32 = 11;
const COMMITTED: u32 = 12;
const ACTIVATE: u32 = 13;
const TROUBLE: u32 = 14;
const LEAVING: u32 = 15;
const RECOVERY_FAILED: u32 = 16;
const ALIVE: u32 = 17;
const ATTACH: u32 = 18;
const ATTACHED: u32 = 19;
const VACUUM_DROP: u32 = 20;
const VACUUM_KEPT: u32 = 21;
const VACUUM_FETCH: u32 = 22;
const LEASE_ASK: u32 = 23;
const LEASE_GRANT: u32 = 24;

const FIX_PROMOTE: u32 = 1;
const FIX_POINT: u32 = 2;

/// The composite fields of cluster messages, on the payload reader and writer.
impl Writer<'_> {
    fn pnns(&mut self, pnns: &[Pnn]) {
        self.count(pnns.len());
        pnns.iter().for_each(|&p| self.u32(p));
    }
    fn epoch(&mut self, e: Epoch) {
        self.u64(e.term);
        self.u64(e.seq);
    }
    fn dbs(&mut self, dbs: &[DbName]) {
        self.count(dbs.len());
        for db in dbs {
            self.u32(db.db_id);
            self.counted(db.name.as_bytes());
        }
    }
}

impl Reader<'_> {
    fn pnns(&mut self, what: &'static str) -> Result<Vec<Pnn>, PayloadError> {
        let n = self.count(4, what)?;
        (0..n).map(|_| self.u32(what)).collect()
    }
    fn epoch(&mut self) -> Result<Epoch, PayloadError> {
        Ok(Epoch { term: self.u64("epoch term")?, seq: self.u64("epoch seq")? })
    }
    fn dbs(&mut self) -> Result<Vec<DbName>, PayloadError> {
        let n = self.count(8, "database count")?;
        (0..n)
            .map(|_| {
                let db_id = self.u32("db id")?;
                let name = self.string("db name")?;
                Ok(DbName { db_id, name })
            })
            .collect()
    }
    fn string(&mut self, what: &'static str) -> Result<String, PayloadError> {
        String::from_utf8(self.counted(what)?).map_err(|_| PayloadError(what))
    }
}

impl ClusterMsg {
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let mut w = Writer(out);
        match self {
            ClusterMsg::Heartbeat(h) => {
                w.u32(HEARTBEAT);
                w.u64(h.term);
                w.u32(h.leader);
                w.u32(h.flags);
                w.epoch(h.epoch);
                w.u32(h.generation);
            }
            ClusterMsg::VoteRequest { term } => {
                w.u32(VOTE_REQUEST);
                w.u64(*term);
            }
            ClusterMsg::Vote { term, granted } => {
                w.u32(VOTE);
                w.u64(*term);
                w.u32(*granted as u32);
            }
            ClusterMsg::RecoveryStart { term, generation } => {
                w.u32(RECOVERY_START);
                w.u64(*term);
                w.u32(*generation);
            }
            ClusterMsg::RecoveryReady { generation, epoch, participants, dbs } => {
                w.u32(RECOVERY_READY);
                w.u32(*generation);
                w.epoch(*epoch);
                w.pnns(participants);
                w.dbs(dbs);
            }
            ClusterMsg::Pull { generation, dbs } => {
                w.u32(PULL);
                w.u32(*generation);
                w.pnns(dbs);
            }
            ClusterMsg::Headers { generation, db_id, chunk, entries, last } => {
                w.u32(HEADERS);
                w.u32(*generation);
                w.u32(*db_id);
                w.u32(*chunk);
                w.u32(*last as u32);
                w.count(entries.len());
                for e in entries {
                    w.counted(&e.key);
                    w.u64(e.rsn);
                    w.u32(e.dmaster);
                }
            }
            ClusterMsg::Wipe { generation, dbs } => {
                w.u32(WIPE);
                w.u32(*generation);
                w.dbs(dbs);
            }
            ClusterMsg::Wiped { generation } => {
                w.u32(WIPED);
                w.u32(*generation);
            }
            ClusterMsg::Fixes { generation, db_id, fixes } => {
                w.u32(FIXES);
                w.u32(*generation);
                w.u32(*db_id);
                w.count(fixes.len());
                for f in fixes {
                    w.counted(&f.key);
                    match f.fix {
                        RecordFix::Promote { rsn } => {
                            w.u32(FIX_PROMOTE);
                            w.u64(rsn);
                        }
                        RecordFix::Point { dmaster } => {
                            w.u32(FIX_POINT);
                            w.u64(dmaster as u64);
                        }
                    }
                }
            }
            ClusterMsg::Commit { generation, epoch, vnn_map, dbs, fixes } => {
                w.u32(COMMIT);
                w.u32(*generation);
                w.epoch(*epoch);
                w.pnns(vnn_map);
                w.dbs(dbs);
                w.u64(*fixes);
            }
            ClusterMsg::Committed { generation } => {
                w.u32(COMMITTED);
                w.u32(*generation);
            }
            ClusterMsg::RecoveryFailed { generation } => {
                w.u32(RECOVERY_FAILED);
                w.u32(*generation);
            }
            ClusterMsg::Activate { generation } => {
                w.u32(ACTIVATE);
                w.u32(*generation);
            }
            ClusterMsg::Trouble { reason } => {
                w.u32(TROUBLE);
                w.counted(reason.as_bytes());
            }
            ClusterMsg::Leaving => w.u32(LEAVING),
            ClusterMsg::LeaseAsk { leader, stamp } => {
                w.u32(LEASE_ASK);
                w.u32(*leader);
                w.u64(*stamp);
            }
            ClusterMsg::LeaseGrant { stamp } => {
                w.u32(LEASE_GRANT);
                w.u64(*stamp);
            }
            ClusterMsg::Alive => w.u32(ALIVE),
            ClusterMsg::Attach { id, db } => {
                w.u32(ATTACH);
                w.u32(*id);
                w.dbs(std::slice::from_ref(db));
            }
            ClusterMsg::Attached { id, error } => {
                w.u32(ATTACHED);
                w.u32(*id);
                w.counted(error.as_bytes());
            }
            ClusterMsg::VacuumFetch { generation, db_id, keys } => {
                w.u32(VACUUM_FETCH);
                w.u32(*generation);
                w.u32(*db_id);
                w.count(keys.len());
                keys.iter().for_each(|key| w.counted(key));
            }
            ClusterMsg::VacuumDrop { generation, round, db_id, entries } => {
                w.u32(VACUUM_DROP);
                w.u32(*generation);
                w.u32(*round);
                w.u32(*db_id);
                w.count(entries.len());
                for e in entries {
                    w.counted(&e.key);
                    w.u64(e.rsn);
                }
            }
            ClusterMsg::VacuumKept { generation, round, kept } => {
                w.u32(VACUUM_KEPT);
                w.u32(*generation);
                w.u32(*round);
                w.count(kept.len());
                kept.iter().for_each(|key| w.counted(key));
            }
        }
    }

    /// The encoded size, for the packet's length field.
    pub fn encoded_len(&self) -> usize {
        let mut buf = Vec::new();
        self.encode_into(&mut buf);
        buf.len()
    }

    pub(super) fn decode(r: &mut Reader<'_>) -> Result<ClusterMsg, PayloadError> {
        let msg = match r.u32("kind")? {
            HEARTBEAT => {
                let term = r.u64("term")?;
                let leader = r.u32("leader")?;
                let flags = r.u32("flags")?;
                if flags & !flags::ALL != 0 {
                    return Err(PayloadError("heartbeat flags"));
                }
                let epoch = r.epoch()?;
                let generation = r.u32("generation")?;
                ClusterMsg::Heartbeat(Heartbeat { term, leader, flags, epoch, generation })
            }
            VOTE_REQUEST => ClusterMsg::VoteRequest { term: r.u64("term")? },
            VOTE => ClusterMsg::Vote { term: r.u64("term")?, granted: r.bool("granted")? },
            RECOVERY_START => {
                ClusterMsg::RecoveryStart { term: r.u64("term")?, generation: r.u32("generation")? }
            }
            RECOVERY_READY => ClusterMsg::RecoveryReady {
                generation: r.u32("generation")?,
                epoch: r.epoch()?,
                participants: r.pnns("participants")?,
                dbs: r.dbs()?,
            },
            PULL => ClusterMsg::Pull { generation: r.u32("generation")?, dbs: r.pnns("db ids")? },
            HEADERS => {
                let generation = r.u32("generation")?;
                let db_id = r.u32("db id")?;
                let chunk = r.u32("chunk")?;
                let last = r.bool("last")?;
                let n = r.count(16, "header count")?;
                let entries = (0..n)
                    .map(|_| {
                        Ok(HeaderEntry {
                            key: r.counted("key")?,
                            rsn: r.u64("rsn")?,
                            dmaster: r.u32("dmaster")?,
                        })
                    })
                    .collect::<Result<_, PayloadError>>()?;
                ClusterMsg::Headers { generation, db_id, chunk, entries, last }
            }
            WIPE => ClusterMsg::Wipe { generation: r.u32("generation")?, dbs: r.dbs()? },
            WIPED => ClusterMsg::Wiped { generation: r.u32("generation")? },
            FIXES => {
                let generation = r.u32("generation")?;
                let db_id = r.u32("db id")?;
                let n = r.count(16, "fix count")?;
                let fixes = (0..n)
                    .map(|_| {
                        let key = r.counted("key")?;
                        let kind = r.u32("fix kind")?;
                        let value = r.u64("fix value")?;
                        let fix = match kind {
                            FIX_PROMOTE => RecordFix::Promote { rsn: value },
                            FIX_POINT => RecordFix::Point {
                                dmaster: Pnn::try_from(value).map_err(|_| PayloadError("fix dmaster"))?,
                            },
                            _ => return Err(PayloadError("fix kind")),
                        };
                        Ok(FixEntry { key, fix })
                    })
                    .collect::<Result<_, PayloadError>>()?;
                ClusterMsg::Fixes { generation, db_id, fixes }
            }
            COMMIT => ClusterMsg::Commit {
                generation: r.u32("generation")?,
                epoch: r.epoch()?,
                vnn_map: r.pnns("vnn map")?,
                dbs: r.dbs()?,
                fixes: r.u64("fix count")?,
            },
            COMMITTED => ClusterMsg::Committed { generation: r.u32("generation")? },
            RECOVERY_FAILED => ClusterMsg::RecoveryFailed { generation: r.u32("generation")? },
            ACTIVATE => ClusterMsg::Activate { generation: r.u32("generation")? },
            TROUBLE => ClusterMsg::Trouble { reason: r.string("reason")? },
            LEAVING => ClusterMsg::Leaving,
            LEASE_ASK => {
                ClusterMsg::LeaseAsk { leader: r.u32("lease leader")?, stamp: r.u64("lease stamp")? }
            }
            LEASE_GRANT => ClusterMsg::LeaseGrant { stamp: r.u64("lease stamp")? },
            ALIVE => ClusterMsg::Alive,
            ATTACH => {
                let id = r.u32("attach id")?;
                let mut dbs = r.dbs()?;
                match (dbs.pop(), dbs.is_empty()) {
                    (Some(db), true) => ClusterMsg::Attach { id, db },
                    _ => return Err(PayloadError("attach: one database")),
                }
            }
            ATTACHED => ClusterMsg::Attached { id: r.u32("attach id")?, error: r.string("attach error")? },
            VACUUM_FETCH => {
                let generation = r.u32("generation")?;
                let db_id = r.u32("db id")?;
                let n = r.count(4, "vacuum key count")?;
                let keys = (0..n).map(|_| r.counted("key")).collect::<Result<_, PayloadError>>()?;
                ClusterMsg::VacuumFetch { generation, db_id, keys }
            }
            VACUUM_DROP => {
                let generation = r.u32("generation")?;
                let round = r.u32("vacuum round")?;
                let db_id = r.u32("db id")?;
                let n = r.count(12, "vacuum entry count")?;
                let entries = (0..n)
                    .map(|_| Ok(VacuumEntry { key: r.counted("key")?, rsn: r.u64("rsn")? }))
                    .collect::<Result<_, PayloadError>>()?;
                ClusterMsg::VacuumDrop { generation, round, db_id, entries }
            }
            VACUUM_KEPT => {
                let generation = r.u32("generation")?;
                let round = r.u32("vacuum round")?;
                let n = r.count(4, "kept key count")?;
                let kept = (0..n).map(|_| r.counted("key")).collect::<Result<_, PayloadError>>()?;
                ClusterMsg::VacuumKept { generation, round, kept }
            }
            _ => return Err(PayloadError("kind")),
        };
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(msg: ClusterMsg) {
        let mut buf = vec![];
        msg.encode_into(&mut buf);
        assert_eq!(buf.len(), msg.encoded_len());
        let mut r = Reader(&buf);
        assert_eq!(ClusterMsg::decode(&mut r), Ok(msg));
        assert!(r.is_empty());
    }

    #[test]
    fn every_kind_round_trips() {
        for msg in crate::wire::fuzz::seeds::cluster_msgs() {
            round_trip(msg);
        }
    }

    #[test]
    fn a_count_larger_than_the_body_is_refused_before_allocating() {
        let mut buf = vec![];
        Writer(&mut buf).u32(HEADERS);
        Writer(&mut buf).u32(1);
        Writer(&mut buf).u32(7);
        Writer(&mut buf).u32(0);
        Writer(&mut buf).u32(0);
        Writer(&mut buf).u32(u32::MAX);
        assert_eq!(ClusterMsg::decode(&mut Reader(&buf)), Err(PayloadError("header count")));
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ClusterMsg::decode(&mut Reader(&bytes));
        }
    }
}
