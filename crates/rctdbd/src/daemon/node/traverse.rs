//! Cluster-wide traverses, streamed. The node a client asked (the origin) pulls every
//! member's records a chunk at a time, in key order (PULL_DB with a cursor); a key's copies
//! are merged, and the newest sent on, once every member has sent its records up to that
//! key. Each chunk is read from the engine thread's tick (`CHUNK_READS_PER_TICK`), in one
//! short hold of the node's mutex (`TdbStore::read_chunk`, which never waits for a lock a
//! client holds), so migrations go on between chunks and keep most of the node; the
//! origin asks for more only while its client keeps reading, so memory stays at about a
//! chunk per member. A traverse that cannot finish (a member dies, is slow, refuses a
//! chunk, or a recovery moves records) ends with an error, never as a shorter success.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::controls::{error_reply, ok_reply};
use super::Node;
use crate::daemon::lock_wait::LockTarget;
use crate::daemon::tdb_store::ChunkRead;
use crate::engine::ClientId;
use crate::wire::control::{self, opcode, ChunkRequest, RecordChunk, RecordCopy};
use crate::wire::ctdb::{self, TraverseStart};
use crate::wire::{Body, DbId, Packet, Pnn, ReplyControl, ReqId, ReqMessage};

/// Traverses a node runs at once for its clients (one per connection); one more is refused
/// at once. Each holds
/// about a chunk per member plus what its client has not read, and takes turns with
/// migrations for the node's mutex: the bound keeps both small. Refused rather than
/// queued: a queued traverse would leave its client with no answer for an unknown time.
pub const MAX_TRAVERSES: usize = 4;
/// What one chunk holds at most: one is read per hold of the node's mutex.
const CHUNK_RECORDS: u32 = 256;
const CHUNK_BYTES: u32 = 128 << 10;
/// Chunk reads a node does per tick (10 ms), over all traverses and peers: traverses
/// take a small share of the node's time, so migrations meanwhile keep their latency.
pub const CHUNK_READS_PER_TICK: usize = 1;
/// Chunk reads that may wait for their tick; past it a peer's PULL_DB is refused.
const MAX_QUEUED_READS: usize = 256;
/// How long a member may take to send a chunk before the traverse fails.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(5);
/// More is asked for only while the client has less than this queued unread.
const CLIENT_BACKLOG: usize = 1 << 20;
/// A client that leaves its traverse unread this long loses it.
const CLIENT_STALL: Duration = Duration::from_secs(30);

/// The most records a reply to librctdb carries (a record more if one alone is larger):
/// however many members sent a chunk, a reply stays far below the packet limit.
const CLIENT_CHUNK_BYTES: usize = 4 << 20;

/// `records` as the replies that carry them to librctdb, the last marked if `last`; one
/// empty reply if there are none (a last one, or word that the traverse goes on).
fn client_chunks(records: Vec<RecordCopy>, last: bool) -> Vec<RecordChunk> {
    let mut chunks = vec![RecordChunk { last: false, records: vec![] }];
    for record in records {
        let current = chunks.last_mut().expect("one chunk at least");
        if !current.records.is_empty() && current.encoded_len() + record.encoded_len() > CLIENT_CHUNK_BYTES {
            chunks.push(RecordChunk { last: false, records: vec![] });
        }
        chunks.last_mut().expect("one chunk at least").records.push(record);
    }
    chunks.last_mut().expect("one chunk at least").last = last;
    chunks
}

/// Who gets a traverse's records, and how.
pub(super) enum TraverseAnswer {
    /// librctdb's TRAVERSE_ALL: replies with the request's reqid, each a `RecordChunk`.
    Reply { client: ClientId, reqid: ReqId },
    /// A CTDB client's TRAVERSE_START: a message per record to its srvid, then the end marker.
    Ctdb { client: ClientId, start: TraverseStart },
}

impl TraverseAnswer {
    fn client(&self) -> ClientId {
        match self {
            TraverseAnswer::Reply { client, .. } | TraverseAnswer::Ctdb { client, .. } => *client,
        }
    }
}

/// What the origin knows of one member's part of a traverse.
#[derive(Default)]
struct MemberPart {
    /// Records received and not sent on yet, in key order.
    buffered: VecDeque<RecordCopy>,
    /// The last key the member sent: it has sent every record it has up to this one.
    last_key: Option<Vec<u8>>,
    done: bool,
    /// A chunk asked for and not received yet: by when it must come.
    due: Option<Instant>,
}

pub(super) struct Traverse {
    db_id: DbId,
    answer: TraverseAnswer,
    /// A recovery (a new generation) moves records between members: the traverse fails.
    generation: u32,
    members: BTreeMap<Pnn, MemberPart>,
    /// When the client last had room for more.
    client_read_at: Instant,
    started: Instant,
    records_sent: u64,
}

impl Traverse {
    /// The merged newest copies of the keys every member has sent up to: those below the
    /// smallest last key of the members not done (all keys once every member is done).
    fn take_ready(&mut self) -> Vec<RecordCopy> {
        let mut frontier: Option<Vec<u8>> = None;
        for part in self.members.values().filter(|part| !part.done) {
            match &part.last_key {
                None => return vec![],
                Some(key) if frontier.as_ref().map_or(true, |f| key < f) => frontier = Some(key.clone()),
                Some(_) => {}
            }
        }
        let mut ready = vec![];
        for part in self.members.values_mut() {
            while part.buffered.front().is_some_and(|r| frontier.as_ref().map_or(true, |f| &r.key <= f)) {
                ready.extend(part.buffered.pop_front());
            }
        }
        control::merge_newest(ready)
    }

    fn finished(&self) -> bool {
        self.members.values().all(|part| part.done && part.buffered.is_empty())
    }

    /// Takes a member's chunk; an error if it breaks the order a merge relies on.
    fn take_chunk(&mut self, pnn: Pnn, chunk: RecordChunk) -> Result<(), String> {
        let Some(part) = self.members.get_mut(&pnn) else { return Ok(()) };
        let mut previous = part.last_key.as_ref();
        for record in &chunk.records {
            if previous.is_some_and(|p| &record.key <= p) {
                return Err(format!("node {pnn} sent its records out of key order"));
            }
            previous = Some(&record.key);
        }
        if chunk.records.is_empty() && !chunk.last {
            return Err(format!("node {pnn} sent an empty chunk that is not its last"));
        }
        if let Some(record) = chunk.records.last() {
            part.last_key = Some(record.key.clone());
        }
        part.done = chunk.last;
        part.buffered.extend(chunk.records);
        Ok(())
    }
}

/// Who waits for a chunk this node reads.
pub(super) enum ChunkFor {
    Peer { node: Pnn, reqid: ReqId, request: ChunkRequest },
    Local { traverse: ReqId },
}

#[derive(Default)]
pub(super) struct Traverses {
    running: HashMap<ReqId, Traverse>,
    /// Chunks asked of peers: the traverse and member each reply is for.
    asked: HashMap<ReqId, (ReqId, Pnn)>,
    /// Chunks that wait for a chain a client holds, by chain.
    waiting: HashMap<(DbId, Vec<u8>), Vec<ChunkFor>>,
    /// Chunk reads that wait for the engine thread, in the order asked.
    reads: VecDeque<(ChunkFor, ChunkRequest)>,
    /// The longest a chunk (read here or received, with what it drove on) held the node's
    /// mutex since a traverse of this node last ended: what a migration may have waited
    /// behind it.
    longest_hold: Duration,
}

impl Node {
    /// Starts a cluster-wide traverse of `db_id` for a client (`traverse_refusal` said yes).
    pub(super) fn start_traverse(&mut self, db_id: DbId, answer: TraverseAnswer) {
        let members = self.engine.vnn_map().iter().map(|&pnn| (pnn, MemberPart::default())).collect();
        let id = self.take_control_reqid();
        let traverse = Traverse {
            db_id,
            answer,
            generation: self.engine.generation(),
            members,
            client_read_at: Instant::now(),
            started: Instant::now(),
            records_sent: 0,
        };
        self.traverses.running.insert(id, traverse);
        self.drive_traverse(id);
    }

    /// Why a traverse of `db_id` cannot start now, if it cannot.
    pub(super) fn traverse_refusal(&self, db_id: DbId, client: ClientId) -> Result<(), String> {
        self.store.db(db_id).map_err(|e| format!("{e} on node {}", self.pnn))?;
        // A client reads one traverse at a time (smbd opens a connection per traverse), so
        // one that stopped reading cannot take every traverse of the node.
        if self.traverses.running.values().any(|traverse| traverse.answer.client() == client) {
            return Err(format!(
                "node {}: this connection runs a traverse already; one at a time per connection",
                self.pnn
            ));
        }
        if self.traverses.running.len() >= MAX_TRAVERSES {
            return Err(format!(
                "node {}: {MAX_TRAVERSES} traverses run already, the limit; try again when one ends",
                self.pnn
            ));
        }
        let state = self.engine.cluster_status().state;
        if state != "active" {
            return Err(format!("node {} is {state}: a traverse needs an active cluster", self.pnn));
        }
        Ok(())
    }

    /// Sends on what every member has sent, and asks members whose records were all sent on
    /// for their next chunk, while the client keeps up.
    pub(super) fn drive_traverse(&mut self, id: ReqId) {
        let generation = self.engine.generation();
        let Some(traverse) = self.traverses.running.get_mut(&id) else { return };
        if traverse.generation != generation {
            let why = "a recovery ran during the traverse and moved records; traverse again";
            return self.end_traverse(id, Err(why.to_string()));
        }
        let ready = traverse.take_ready();
        let finished = traverse.finished();
        if !ready.is_empty() || finished {
            self.send_records(id, ready, finished);
        }
        if finished {
            return self.end_traverse(id, Ok(()));
        }
        let Some(traverse) = self.traverses.running.get_mut(&id) else { return };
        let Some(link) = self.clients.get(&traverse.answer.client()) else {
            return self.end_traverse(id, Err("its client left".to_string()));
        };
        if link.queued_bytes() > CLIENT_BACKLOG {
            return; // the tick goes on once the client has read (`check_traverses`)
        }
        traverse.client_read_at = Instant::now();
        let due = Instant::now() + CHUNK_TIMEOUT;
        let db_id = traverse.db_id;
        let mut to_ask = vec![];
        for (&pnn, part) in traverse.members.iter_mut() {
            if part.buffered.is_empty() && !part.done && part.due.is_none() {
                part.due = Some(due);
                to_ask.push((pnn, part.last_key.clone()));
            }
        }
        for (pnn, after) in to_ask {
            let request = ChunkRequest { db_id, max_records: CHUNK_RECORDS, max_bytes: CHUNK_BYTES, after };
            if pnn == self.pnn {
                self.queue_chunk_read(ChunkFor::Local { traverse: id }, request);
            } else {
                let reqid = self.take_control_reqid();
                self.traverses.asked.insert(reqid, (id, pnn));
                self.send_control(pnn, reqid, opcode::PULL_DB, request.encode());
            }
        }
    }

    /// Queues a chunk read for a peer or a traverse of ours; refused when the queue is full
    /// (only a peer that floods fills it: each traverse asks a node for one chunk at a time).
    fn queue_chunk_read(&mut self, wanted: ChunkFor, request: ChunkRequest) {
        if self.traverses.reads.len() >= MAX_QUEUED_READS {
            let why = format!("node {}: {MAX_QUEUED_READS} chunk reads wait already, the limit", self.pnn);
            return self.chunk_read(wanted, Err(why));
        }
        self.traverses.reads.push_back((wanted, request));
    }

    /// Reads the next queued chunk, from the engine thread, `CHUNK_READS_PER_TICK` times a
    /// tick, each in a hold of the node's mutex of its own: whatever the traverses, a node
    /// spends at most that many chunk reads per tick on them, and migrations take turns.
    /// False if none was queued.
    pub(super) fn read_queued_chunk(&mut self) -> bool {
        let Some((wanted, request)) = self.traverses.reads.pop_front() else { return false };
        let traverse = match wanted {
            ChunkFor::Local { traverse } => Some(traverse),
            ChunkFor::Peer { .. } => None,
        };
        let started = Instant::now();
        self.read_chunk_for(wanted, request);
        if let Some(traverse) = traverse {
            self.drive_traverse(traverse);
        }
        self.traverses.longest_hold = self.traverses.longest_hold.max(started.elapsed());
        true
    }

    /// Reads a chunk of this node's records for a peer or a traverse of ours, now or once
    /// a lock waiter holds the chain a client holds.
    fn read_chunk_for(&mut self, wanted: ChunkFor, request: ChunkRequest) {
        match self.store.read_chunk(&request) {
            Ok(ChunkRead::Records(chunk)) => self.chunk_read(wanted, Ok(chunk)),
            Ok(ChunkRead::Busy(key)) => {
                let db_id = request.db_id;
                let waiting = self.traverses.waiting.entry((db_id, key.clone())).or_default();
                waiting.push(wanted);
                if waiting.len() > 1 {
                    return; // a waiter is on it already
                }
                match self.store.chain_site(db_id, &key) {
                    Some((file, start, len)) => {
                        let target = LockTarget::TraverseChain { db_id, key };
                        self.lock_waiters.wait_for(file, start, len, target)
                    }
                    None => {
                        for wanted in self.traverses.waiting.remove(&(db_id, key)).unwrap_or_default() {
                            self.chunk_read(wanted, Err(format!("db {db_id:#x}: no chain lock to wait for")));
                        }
                    }
                }
            }
            Err(err) => self.chunk_read(wanted, Err(err.to_string())),
        }
    }

    /// A lock waiter holds the chain that chunks wait for: they are read now.
    pub(super) fn traverse_chain_held(&mut self, db_id: DbId, key: &[u8]) {
        let wanted = self.traverses.waiting.remove(&(db_id, key.to_vec())).unwrap_or_default();
        let mut local = vec![];
        self.store.held_for_us(db_id, key, true);
        for wanted in wanted {
            let request = match &wanted {
                ChunkFor::Peer { request, .. } => Some(request.clone()),
                ChunkFor::Local { traverse } => {
                    local.push(*traverse);
                    self.local_request(*traverse)
                }
            };
            if let Some(request) = request {
                self.read_chunk_for(wanted, request);
            }
        }
        self.store.held_for_us(db_id, key, false);
        for traverse in local {
            self.drive_traverse(traverse);
        }
    }

    /// The chunk this node's part of traverse `id` asks for next.
    fn local_request(&self, id: ReqId) -> Option<ChunkRequest> {
        let traverse = self.traverses.running.get(&id)?;
        let after = traverse.members.get(&self.pnn)?.last_key.clone();
        Some(ChunkRequest {
            db_id: traverse.db_id,
            max_records: CHUNK_RECORDS,
            max_bytes: CHUNK_BYTES,
            after,
        })
    }

    fn chunk_read(&mut self, wanted: ChunkFor, chunk: Result<RecordChunk, String>) {
        match wanted {
            ChunkFor::Peer { node, reqid, .. } => {
                let reply = chunk.map_or_else(|err| error_reply(&err), |chunk| ok_reply(chunk.encode()));
                self.reply_to_peer(node, reqid, reply);
            }
            ChunkFor::Local { traverse } => self.chunk_arrived(traverse, self.pnn, chunk),
        }
    }

    /// A member's chunk (or its refusal) for traverse `id`; the caller drives it on.
    fn chunk_arrived(&mut self, id: ReqId, pnn: Pnn, chunk: Result<RecordChunk, String>) {
        let Some(traverse) = self.traverses.running.get_mut(&id) else { return };
        let Some(part) = traverse.members.get_mut(&pnn) else { return };
        if part.due.take().is_none() {
            return; // not asked for
        }
        let taken = chunk.map_err(|err| format!("node {pnn} refused a chunk: {err}"));
        if let Err(why) = taken.and_then(|chunk| traverse.take_chunk(pnn, chunk)) {
            self.end_traverse(id, Err(why));
        }
    }

    /// A peer answered a control: a chunk, if it is the one a traverse asked it for.
    pub(super) fn traverse_chunk_replied(&mut self, from: Pnn, reqid: ReqId, reply: &ReplyControl) {
        let Some(&(id, pnn)) = self.traverses.asked.get(&reqid) else { return };
        if pnn != from {
            return; // not from the node asked, which still has to answer
        }
        self.traverses.asked.remove(&reqid);
        let chunk = match reply.status {
            0 => RecordChunk::decode(&reply.data).map_err(|e| e.to_string()),
            _ => Err(String::from_utf8_lossy(&reply.errmsg).into_owned()),
        };
        let started = Instant::now();
        self.chunk_arrived(id, from, chunk);
        self.drive_traverse(id);
        self.traverses.longest_hold = self.traverses.longest_hold.max(started.elapsed());
    }

    /// Serves a peer's PULL_DB.
    pub(super) fn serve_chunk(&mut self, from: Pnn, reqid: ReqId, data: &[u8]) {
        match ChunkRequest::decode(data) {
            Ok(request) => {
                let wanted = ChunkFor::Peer { node: from, reqid, request: request.clone() };
                self.queue_chunk_read(wanted, request)
            }
            Err(err) => self.reply_to_peer(from, reqid, error_reply(&err.to_string())),
        }
    }

    /// From the tick: traverses whose member is late fail, those whose client read enough
    /// go on, those whose client stopped reading end.
    pub(super) fn check_traverses(&mut self, now: Instant) {
        let mut late = vec![];
        let mut go_on = vec![];
        for (&id, traverse) in &self.traverses.running {
            let queued = self.clients.get(&traverse.answer.client()).map_or(0, |link| link.queued_bytes());
            if let Some((&pnn, _)) =
                traverse.members.iter().find(|(_, p)| p.due.is_some_and(|due| due <= now))
            {
                let why = format!(
                    "node {pnn} sent no records for {CHUNK_TIMEOUT:?} (down, stuck, or a client \
                     holds a chain lock there)"
                );
                late.push((id, why));
            } else if queued <= CLIENT_BACKLOG {
                go_on.push(id);
            } else if now.duration_since(traverse.client_read_at) > CLIENT_STALL {
                late.push((id, format!("its client read nothing for {CLIENT_STALL:?}")));
            }
        }
        for (id, why) in late {
            self.end_traverse(id, Err(why));
        }
        for id in go_on {
            self.drive_traverse(id);
        }
    }

    /// Ends the traverses of a client that left.
    pub(super) fn client_traverses_gone(&mut self, client: ClientId) {
        let ids: Vec<ReqId> = self
            .traverses
            .running
            .iter()
            .filter(|(_, traverse)| traverse.answer.client() == client)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.end_traverse(id, Err("its client left".to_string()));
        }
    }

    /// Sends records to the traverse's client, and the end if `last`.
    fn send_records(&mut self, id: ReqId, records: Vec<RecordCopy>, last: bool) {
        let Some(traverse) = self.traverses.running.get_mut(&id) else { return };
        let with_empty =
            matches!(traverse.answer, TraverseAnswer::Ctdb { start, .. } if start.with_empty_records);
        let records: Vec<RecordCopy> =
            records.into_iter().filter(|r| with_empty || !r.data.is_empty()).collect();
        traverse.records_sent += records.len() as u64;
        match traverse.answer {
            TraverseAnswer::Reply { client, reqid } => {
                for chunk in client_chunks(records, last) {
                    self.reply_to_client(client, reqid, Body::ReplyControl(ok_reply(chunk.encode())));
                }
            }
            TraverseAnswer::Ctdb { client, start } => {
                let mut messages: Vec<Vec<u8>> = records
                    .iter()
                    .map(|r| ctdb::encode_rec_data(start.reqid, &r.key, Some((&r.header, &r.data))))
                    .collect();
                if last {
                    messages.push(ctdb::encode_rec_data(start.reqid, &[], None));
                }
                self.send_ctdb_messages(client, start.srvid, messages);
            }
        }
    }

    fn send_ctdb_messages(&mut self, client: ClientId, srvid: u64, messages: Vec<Vec<u8>>) {
        let Some(link) = self.clients.get(&client) else { return };
        let (generation, pnn) = (self.engine.generation(), self.pnn);
        for data in messages {
            let body = Body::Message(ReqMessage { srvid, data });
            link.send(&Packet { generation, destnode: pnn, srcnode: pnn, reqid: 0, body });
        }
    }

    /// Forgets a traverse; a failed one ends with an error its client cannot take for the end.
    fn end_traverse(&mut self, id: ReqId, outcome: Result<(), String>) {
        let Some(traverse) = self.traverses.running.remove(&id) else { return };
        self.traverses.asked.retain(|_, (traverse, _)| *traverse != id);
        let longest_hold = std::mem::take(&mut self.traverses.longest_hold);
        let Err(why) = outcome else {
            log::info!(
                "traverse of db {:#x}: {} records sent in {:.2} s; longest hold for a chunk here {:.2} ms",
                traverse.db_id,
                traverse.records_sent,
                traverse.started.elapsed().as_secs_f64(),
                longest_hold.as_secs_f64() * 1000.0
            );
            return;
        };
        log::warn!(
            "traverse of db {:#x} failed after {} records: {why}",
            traverse.db_id,
            traverse.records_sent
        );
        let message =
            format!("node {}: traverse failed after {} records: {why}", self.pnn, traverse.records_sent);
        match traverse.answer {
            TraverseAnswer::Reply { client, reqid } => {
                self.reply_to_client(client, reqid, Body::ReplyControl(error_reply(&message)))
            }
            TraverseAnswer::Ctdb { client, start } => {
                let end = ctdb::encode_traverse_failed(start.reqid, -libc::EIO);
                self.send_ctdb_messages(client, start.srvid, vec![end]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::RecordHeader;

    fn copy(key: &str, rsn: u64, data: &str) -> RecordCopy {
        RecordCopy {
            key: key.as_bytes().to_vec(),
            header: RecordHeader { rsn, dmaster: 0, flags: 0 },
            data: data.as_bytes().to_vec(),
        }
    }

    fn traverse(members: &[Pnn]) -> Traverse {
        Traverse {
            db_id: 1,
            answer: TraverseAnswer::Reply { client: 1, reqid: 1 },
            generation: 1,
            members: members
                .iter()
                .map(|&pnn| (pnn, MemberPart { due: Some(Instant::now()), ..Default::default() }))
                .collect(),
            client_read_at: Instant::now(),
            started: Instant::now(),
            records_sent: 0,
        }
    }

    fn chunk(last: bool, records: Vec<RecordCopy>) -> RecordChunk {
        RecordChunk { last, records }
    }

    fn keys(records: &[RecordCopy]) -> Vec<String> {
        records.iter().map(|r| format!("{}@{}", String::from_utf8_lossy(&r.key), r.header.rsn)).collect()
    }

    /// A key is sent on only once every member has sent its records up to it, so its copies
    /// are merged whichever member's chunk came first, and the newest wins.
    #[test]
    fn a_key_waits_for_every_member_and_the_newest_copy_wins() {
        let mut t = traverse(&[0, 1]);
        t.take_chunk(0, chunk(false, vec![copy("a", 1, "x"), copy("c", 5, "new")])).unwrap();
        assert!(t.take_ready().is_empty(), "member 1 has sent nothing yet");
        t.take_chunk(1, chunk(false, vec![copy("b", 2, "y")])).unwrap();
        assert_eq!(keys(&t.take_ready()), ["a@1", "b@2"], "up to b, the smaller last key");
        t.take_chunk(1, chunk(true, vec![copy("c", 3, "old"), copy("d", 1, "z")])).unwrap();
        assert_eq!(keys(&t.take_ready()), ["c@5"], "member 0 has sent up to c only");
        assert!(!t.finished());
        t.take_chunk(0, chunk(true, vec![])).unwrap();
        assert_eq!(keys(&t.take_ready()), ["d@1"]);
        assert!(t.finished());
    }

    /// However many members sent a chunk, librctdb gets replies of at most
    /// CLIENT_CHUNK_BYTES (a record more if one alone is larger), only the last marked.
    #[test]
    fn replies_to_a_client_stay_small_and_only_the_last_is_marked() {
        let big = "x".repeat(CLIENT_CHUNK_BYTES / 3);
        let records: Vec<RecordCopy> = (0..7).map(|i| copy(&format!("k{i}"), 1, &big)).collect();
        let chunks = client_chunks(records, true);
        assert_eq!(chunks.iter().map(|c| c.records.len()).collect::<Vec<_>>(), [2, 2, 2, 1]);
        assert!(chunks.iter().all(|c| c.encoded_len() <= CLIENT_CHUNK_BYTES));
        assert_eq!(chunks.iter().map(|c| c.last).collect::<Vec<_>>(), [false, false, false, true]);
        let huge = copy("huge", 1, &"y".repeat(CLIENT_CHUNK_BYTES * 2));
        assert_eq!(client_chunks(vec![huge], false).len(), 1, "a record larger than the bound goes alone");
        assert_eq!(client_chunks(vec![], true).len(), 1, "an empty last reply ends the traverse");
    }

    /// A member that sends keys out of order, or an empty chunk that is not its last, would
    /// make a key go out twice or the traverse spin: it fails instead.
    #[test]
    fn a_member_breaking_the_order_fails_the_traverse() {
        let mut t = traverse(&[0]);
        t.take_chunk(0, chunk(false, vec![copy("b", 1, "x")])).unwrap();
        assert!(t.take_chunk(0, chunk(false, vec![copy("a", 1, "x")])).is_err());
        assert!(t.take_chunk(0, chunk(false, vec![copy("c", 1, "x"), copy("c", 2, "x")])).is_err());
        assert!(t.take_chunk(0, chunk(false, vec![])).is_err());
    }
}
