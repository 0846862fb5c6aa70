//! Link sessions: nothing sent to a peer is lost to a broken connection, nothing arrives
//! twice, and the order holds across reconnects.
//!
//! A TCP reset throws away what sits in both ends' socket buffers, and a link stays down
//! for a moment before it reconnects; CTDB queues to a reconnecting node, and smbd reads a
//! lost answer as "that process is gone". So each direction of a link is a *session*:
//!
//! - The sender numbers the frames of its session implicitly, 0, 1, 2... (the wire carries
//!   no number, so every packet stays a plain CTDB frame that tshark decodes). It keeps each
//!   frame, encoded, in its [`Outbox`] until the receiver acknowledges it. While the link is
//!   down, new frames wait there too; the writer sends them after the reconnect.
//! - The receiver counts the frames of the session it has read ([`Inbound`]); every
//!   [`ACK_EVERY`] frames it writes an ACK with that count back on the same connection
//!   (which otherwise carries nothing that way), and the sender trims its outbox.
//! - Every connection opens, after the key handshake, with RESUME (sender's session id)
//!   answered by RESUMED (receiver's instance id, frames of that session it has read). The
//!   sender drops what was read and writes the rest again, in order, before anything new.
//!   A reader of an older connection of the same peer stops before it hands on another
//!   frame, so the count is final when RESUMED is sent: no frame is handed on twice.
//! - Session ids are random per transport, instance ids random per transport: a restarted
//!   sender starts a new session (count 0); a restarted receiver answers with a new instance
//!   id, and the sender drops its whole outbox rather than replay frames meant for the
//!   process that died (the engine recovers with the new one from scratch).
//! - A peer that refuses the connection has no process listening: what we hold for it was
//!   meant for a run that ended, and is dropped then (membership declares it dead at once
//!   on the refusal, too). So the outbox holds frames for a live peer's reconnect, not for
//!   a node that is down for hours.
//! - The outbox is bounded (frames and bytes). A frame that does not fit is dropped and
//!   counted (`packets_dropped`, `queue_full_drops`), never a frame already numbered, so the
//!   numbering has no gaps. Membership declares a node dead long before a live link fills it.
//!
//! Frames of this module are CTDB-framed like the handshake (operation [`SESSION_OPERATION`]).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use crate::wire::{codec, Packet, Pnn, CTDB_MAGIC, PACKET_HEADER_LEN, PROTOCOL_VERSION};

/// Operation number of session frames; no CTDB operation uses it.
pub(super) const SESSION_OPERATION: u32 = 0x0000_0201;
/// A receiver acknowledges every this many frames.
pub(super) const ACK_EVERY: u64 = 64;
pub(super) const FRAME_LEN: usize = PACKET_HEADER_LEN + 16;

/// Session frames' kinds, carried in the header's reqid field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum Kind {
    /// Connector to acceptor: `a` = the sender's session id.
    Resume = 1,
    /// Acceptor to connector: `a` = its instance id, `b` = frames of the session it read.
    Resumed = 2,
    /// Acceptor to connector: `a` = the session, `b` = frames of it read so far.
    Ack = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Frame {
    pub kind: Kind,
    pub srcnode: Pnn,
    pub destnode: Pnn,
    pub a: u64,
    pub b: u64,
}

impl Frame {
    pub(super) fn encode(&self) -> [u8; FRAME_LEN] {
        let mut out = [0u8; FRAME_LEN];
        let header = [
            FRAME_LEN as u32,
            CTDB_MAGIC,
            PROTOCOL_VERSION,
            0,
            SESSION_OPERATION,
            self.destnode,
            self.srcnode,
            self.kind as u32,
        ];
        for (i, word) in header.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
        }
        out[PACKET_HEADER_LEN..PACKET_HEADER_LEN + 8].copy_from_slice(&self.a.to_le_bytes());
        out[PACKET_HEADER_LEN + 8..].copy_from_slice(&self.b.to_le_bytes());
        out
    }

    pub(super) fn decode(buf: &[u8; FRAME_LEN]) -> Result<Frame, String> {
        let word =
            |i: usize| u32::from_le_bytes([buf[i * 4], buf[i * 4 + 1], buf[i * 4 + 2], buf[i * 4 + 3]]);
        let long = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[at..at + 8]);
            u64::from_le_bytes(b)
        };
        if word(0) as usize != FRAME_LEN
            || word(1) != CTDB_MAGIC
            || word(2) != PROTOCOL_VERSION
            || word(4) != SESSION_OPERATION
        {
            return Err("not a link session frame".into());
        }
        let kind = match word(7) {
            1 => Kind::Resume,
            2 => Kind::Resumed,
            3 => Kind::Ack,
            other => return Err(format!("unknown session frame kind {other}")),
        };
        Ok(Frame {
            kind,
            destnode: word(5),
            srcnode: word(6),
            a: long(PACKET_HEADER_LEN),
            b: long(PACKET_HEADER_LEN + 8),
        })
    }

    /// Writes this frame before `deadline`.
    pub(super) fn send(&self, stream: &TcpStream, deadline: Instant) -> io::Result<()> {
        stream.set_write_timeout(Some(remaining(deadline)?))?;
        (&*stream).write_all(&self.encode())
    }

    /// Reads one session frame of `kind` before `deadline`.
    pub(super) fn receive(stream: &TcpStream, kind: Kind, deadline: Instant) -> io::Result<Frame> {
        let mut buf = [0u8; FRAME_LEN];
        let mut got = 0;
        while got < FRAME_LEN {
            stream.set_read_timeout(Some(remaining(deadline)?))?;
            match (&*stream).read(&mut buf[got..]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        stream.set_read_timeout(None)?;
        let frame = Frame::decode(&buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        if frame.kind != kind {
            let why = format!("session frame {:?} where {kind:?} belongs", frame.kind);
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        Ok(frame)
    }
}

fn remaining(deadline: Instant) -> io::Result<std::time::Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "session handshake deadline passed"));
    }
    Ok(left)
}

/// A random id for a session or an instance.
pub(super) fn fresh_id() -> u64 {
    let mut bytes = [0u8; 8];
    // Without the OS's randomness, the clock still tells restarts apart.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1);
        return nanos ^ u64::from(std::process::id()) << 32;
    }
    u64::from_le_bytes(bytes)
}

/// Why a frame was not taken into the outbox.
#[derive(Debug)]
pub(super) enum PushError {
    /// The outbox holds its limit of frames or bytes.
    Full,
    /// The packet cannot be encoded (too large).
    Encode(crate::wire::WireError),
}

/// What a resume did to the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resumed {
    /// The receiver is the one we sent to before (or the first): `resent` frames it had not
    /// read go again.
    Continued { resent: u64 },
    /// The receiver restarted: `dropped` frames meant for its previous instance are gone.
    PeerRestarted { dropped: u64 },
}

/// The sender's side of a session: the frames the receiver has not acknowledged, encoded
/// back to back, and how far the current connection has taken them.
pub(super) struct Outbox {
    session: u64,
    /// Frames from `first_seq` on, starting at byte `start` (the front is trimmed lazily).
    bytes: Vec<u8>,
    start: usize,
    lens: VecDeque<usize>,
    first_seq: u64,
    /// Bytes up to here are written to the current connection.
    written: usize,
    max_frames: usize,
    max_bytes: usize,
    /// The receiver instance the last resume answered from.
    receiver: Option<u64>,
}

impl Outbox {
    pub(super) fn new(max_frames: usize, max_bytes: usize) -> Outbox {
        Outbox {
            session: fresh_id(),
            bytes: Vec::new(),
            start: 0,
            lens: VecDeque::new(),
            first_seq: 0,
            written: 0,
            // Unacknowledged frames count too: room for more than an acknowledgement's worth.
            max_frames: max_frames.max(2 * ACK_EVERY as usize),
            max_bytes: max_bytes.max(1),
            receiver: None,
        }
    }

    pub(super) fn session(&self) -> u64 {
        self.session
    }

    /// Frames held: not yet acknowledged.
    pub(super) fn len(&self) -> usize {
        self.lens.len()
    }

    /// Numbers and encodes `packet` after the frames already held.
    pub(super) fn push(&mut self, packet: &Packet) -> Result<(), PushError> {
        if self.lens.len() >= self.max_frames {
            return Err(PushError::Full);
        }
        let before = self.bytes.len();
        codec::encode_into(packet, &mut self.bytes).map_err(PushError::Encode)?;
        let len = self.bytes.len() - before;
        if before - self.start + len > self.max_bytes {
            self.bytes.truncate(before);
            return Err(PushError::Full);
        }
        self.lens.push_back(len);
        Ok(())
    }

    /// The bytes the current connection has not taken yet.
    pub(super) fn unwritten(&self) -> &[u8] {
        &self.bytes[self.written..]
    }

    /// `n` more bytes went to the current connection.
    pub(super) fn wrote(&mut self, n: usize) {
        self.written = (self.written + n).min(self.bytes.len());
    }

    /// The receiver has read `received` frames of `session`: forget those.
    pub(super) fn acknowledged(&mut self, session: u64, received: u64) {
        if session == self.session {
            self.trim(received);
        }
    }

    fn trim(&mut self, received: u64) {
        let done = received.saturating_sub(self.first_seq).min(self.lens.len() as u64) as usize;
        let trimmed: usize = self.lens.drain(..done).sum();
        self.first_seq += done as u64;
        self.start += trimmed;
        self.written = self.written.max(self.start);
        self.compact();
    }

    /// A new connection: the receiver (instance `receiver`) read `received` frames of our
    /// session. What it has not read is written again, from the start.
    pub(super) fn resume(&mut self, receiver: u64, received: u64) -> Resumed {
        let known = self.receiver.map_or(true, |r| r == receiver);
        self.receiver = Some(receiver);
        let next_seq = self.first_seq + self.lens.len() as u64;
        if !known || received < self.first_seq || received > next_seq {
            // A new process, or counts that cannot be ours: begin again where it stands.
            let dropped = self.lens.len() as u64;
            self.lens.clear();
            self.bytes.clear();
            self.start = 0;
            self.written = 0;
            self.first_seq = received;
            return Resumed::PeerRestarted { dropped };
        }
        let written_frames = self.frames_before(self.written);
        self.trim(received);
        self.written = self.start;
        Resumed::Continued { resent: written_frames.saturating_sub(received) }
    }

    /// Forgets every frame held (the receiver is gone); returns how many. Numbering goes
    /// on after them, so no frame of this session can be taken for another.
    pub(super) fn discard(&mut self) -> u64 {
        let dropped = self.lens.len() as u64;
        self.trim(self.first_seq + dropped);
        dropped
    }

    /// The number of the first frame not wholly before byte `offset`.
    fn frames_before(&self, offset: usize) -> u64 {
        let mut at = self.start;
        let mut seq = self.first_seq;
        for &len in &self.lens {
            if at + len > offset {
                break;
            }
            at += len;
            seq += 1;
        }
        seq
    }

    fn compact(&mut self) {
        if self.start == self.bytes.len() {
            self.bytes.clear();
            self.written = 0;
            self.start = 0;
            if self.bytes.capacity() > 1 << 20 {
                self.bytes = Vec::new(); // a large packet went: give its memory back
            }
        } else if self.start > 64 * 1024 && self.start * 2 > self.bytes.len() {
            self.bytes.drain(..self.start);
            self.written -= self.start;
            self.start = 0;
        }
    }
}

/// The receiver's side of a peer's session: which session, how many of its frames were
/// read, and which connection may hand on the next one.
#[derive(Default)]
pub(super) struct Inbound {
    session: u64,
    received: u64,
    conn: Option<u64>,
}

impl Inbound {
    /// Connection `conn` resumes `session`: older connections stop handing on frames.
    /// Returns the frames of the session read so far.
    pub(super) fn resume(&mut self, conn: u64, session: u64) -> u64 {
        if self.session != session {
            self.session = session;
            self.received = 0;
        }
        self.conn = Some(conn);
        self.received
    }

    /// Whether `conn` is the connection the session continues on.
    pub(super) fn is_current(&self, conn: u64) -> bool {
        self.conn == Some(conn)
    }

    /// One more frame read; returns the count to acknowledge when one is due.
    pub(super) fn count_frame(&mut self) -> Option<u64> {
        self.received += 1;
        (self.received % ACK_EVERY == 0).then_some(self.received)
    }

    pub(super) fn session(&self) -> u64 {
        self.session
    }

    pub(super) fn closed(&mut self, conn: u64) {
        if self.conn == Some(conn) {
            self.conn = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Body, Keepalive};

    fn packet(n: u32) -> Packet {
        Packet {
            generation: 1,
            destnode: 1,
            srcnode: 0,
            reqid: n,
            body: Body::Keepalive(Keepalive { version: 1, uptime: 1 }),
        }
    }

    fn frames_in(bytes: &[u8]) -> Vec<u32> {
        let mut out = vec![];
        let mut at = 0;
        while at < bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
            out.push(codec::decode(&bytes[at..at + len]).unwrap().reqid);
            at += len;
        }
        out
    }

    #[test]
    fn frames_the_receiver_did_not_read_go_again_in_order() {
        let mut outbox = Outbox::new(100, 1 << 20);
        assert_eq!(outbox.resume(7, 0), Resumed::Continued { resent: 0 });
        for n in 0..10 {
            outbox.push(&packet(n)).unwrap();
        }
        let all = outbox.unwritten().len();
        outbox.wrote(all);
        outbox.acknowledged(outbox.session() + 1, 5);
        assert_eq!(outbox.len(), 10, "another session's acknowledgement");
        outbox.acknowledged(outbox.session(), 4);
        assert_eq!(outbox.len(), 6);
        // The connection broke after the receiver read 7: 7, 8, 9 go again, then new ones.
        outbox.push(&packet(10)).unwrap();
        assert_eq!(outbox.resume(7, 7), Resumed::Continued { resent: 3 });
        assert_eq!(frames_in(outbox.unwritten()), vec![7, 8, 9, 10]);
    }

    #[test]
    fn a_restarted_receiver_gets_nothing_meant_for_its_predecessor() {
        let mut outbox = Outbox::new(100, 1 << 20);
        outbox.resume(7, 0);
        for n in 0..5 {
            outbox.push(&packet(n)).unwrap();
        }
        assert_eq!(outbox.resume(8, 0), Resumed::PeerRestarted { dropped: 5 });
        assert!(outbox.unwritten().is_empty());
        outbox.push(&packet(5)).unwrap();
        assert_eq!(frames_in(outbox.unwritten()), vec![5]);
    }

    #[test]
    fn discarded_frames_are_never_written_and_numbering_goes_on() {
        let mut outbox = Outbox::new(100, 1 << 20);
        outbox.resume(7, 0);
        for n in 0..5 {
            outbox.push(&packet(n)).unwrap();
        }
        assert_eq!(outbox.discard(), 5);
        assert!(outbox.unwritten().is_empty());
        outbox.push(&packet(5)).unwrap();
        // The same receiver had read none of them: its count is behind, so it starts over.
        assert_eq!(outbox.resume(7, 0), Resumed::PeerRestarted { dropped: 1 });
    }

    #[test]
    fn the_bound_refuses_new_frames_only() {
        let limit = 2 * ACK_EVERY as u32;
        let mut outbox = Outbox::new(limit as usize, 1 << 20);
        for n in 0..limit {
            outbox.push(&packet(n)).unwrap();
        }
        assert!(matches!(outbox.push(&packet(limit)), Err(PushError::Full)));
        let one = outbox.unwritten().len() / limit as usize;
        let mut by_bytes = Outbox::new(100, 2 * one);
        by_bytes.push(&packet(0)).unwrap();
        by_bytes.push(&packet(1)).unwrap();
        assert!(matches!(by_bytes.push(&packet(2)), Err(PushError::Full)));
        by_bytes.acknowledged(by_bytes.session(), 1);
        by_bytes.push(&packet(2)).unwrap();
        assert_eq!(frames_in(by_bytes.unwritten()), vec![1, 2]);
    }

    #[test]
    fn session_frames_round_trip_and_refuse_garbage() {
        let frame = Frame { kind: Kind::Resumed, srcnode: 2, destnode: 0, a: u64::MAX, b: 12345 };
        assert_eq!(Frame::decode(&frame.encode()), Ok(frame));
        let mut bad = frame.encode();
        bad[28] = 9;
        assert!(Frame::decode(&bad).is_err());
        bad = frame.encode();
        bad[16] = 0;
        assert!(Frame::decode(&bad).is_err());
    }

    #[test]
    fn inbound_counts_per_session_and_follows_the_newest_connection() {
        let mut inbound = Inbound::default();
        assert_eq!(inbound.resume(1, 42), 0);
        for _ in 0..ACK_EVERY - 1 {
            assert_eq!(inbound.count_frame(), None);
        }
        assert_eq!(inbound.count_frame(), Some(ACK_EVERY));
        assert_eq!(inbound.resume(2, 42), ACK_EVERY);
        assert!(!inbound.is_current(1) && inbound.is_current(2));
        assert_eq!(inbound.resume(3, 43), 0, "a new session starts at zero");
    }
}
