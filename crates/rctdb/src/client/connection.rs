//! One connection to the local rctdbd. Requests are answered in order on this socket, so a
//! request/response pair is a write and a blocking read with a deadline.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorCode, Result};
use crate::tunables::{self, payload};
use crate::wire::codec::{read_packet, write_packet, ReadError};
use crate::wire::control::{self, opcode, AttachReply, RecordChunk, RecordCopy, FLAG_NOREPLY};
use crate::wire::{
    Body, DbId, Packet, ReplyCall, ReplyError, ReqCall, ReqControl, ReqId, CALL_FLAG_FIRST_USE,
    CALL_FLAG_IMMEDIATE_MIGRATION, CALL_NULL_FUNC, CURRENT_NODE, MAX_PACKET_LEN,
};

pub struct DaemonConnection {
    stream: UnixStream,
    socket: String,
    next_reqid: ReqId,
    /// The process that connected. A forked child that used this connection would share
    /// its parent's request stream (and take its answers): it gets an error instead and must
    /// open the database again, as tdb_reopen does.
    owner: u32,
}

impl DaemonConnection {
    pub fn connect(socket: &Path) -> Result<DaemonConnection> {
        let stream = UnixStream::connect(socket).map_err(|e| {
            Error::io(format!("cannot reach rctdbd at {}: {e} (is the daemon running?)", socket.display()))
        })?;
        let owner = std::process::id();
        Ok(DaemonConnection { stream, socket: socket.display().to_string(), next_reqid: 1, owner })
    }

    /// Attaches database `name` cluster-wide; the reply says where this node keeps its file.
    pub fn attach(&mut self, name: &str, timeout: Duration) -> Result<AttachReply> {
        let data = self.control(opcode::DB_ATTACH, name.as_bytes().to_vec(), timeout)?;
        AttachReply::decode(&data).map_err(|e| Error::io(format!("rctdbd at {}: {e}", self.socket)))
    }

    /// The newest copy of every non-empty record of the database, from every node, to
    /// `visit` as the daemon streams them (in chunks, each within `timeout`), until it
    /// returns false. An error if the traverse could not finish: what `visit` saw is then
    /// not the whole database.
    pub fn traverse_all(
        &mut self,
        db_id: DbId,
        timeout: Duration,
        mut visit: impl FnMut(RecordCopy) -> bool,
    ) -> Result<()> {
        let reqid = self.take_reqid();
        let data = db_id.to_le_bytes().to_vec();
        let request = ReqControl { opcode: opcode::TRAVERSE_ALL, srvid: 0, client_id: 0, flags: 0, data };
        self.send(reqid, Body::ReqControl(request))?;
        let mut wanted = true;
        loop {
            let chunk = match self.read_reply(reqid, timeout)? {
                Body::ReplyControl(reply) if reply.status == 0 => {
                    RecordChunk::decode(&reply.data).map_err(|e| self.malformed(&e.to_string()))?
                }
                Body::ReplyControl(reply) => {
                    let why = String::from_utf8_lossy(&reply.errmsg);
                    return Err(Error::io(format!("rctdbd at {}: {why}", self.socket)));
                }
                other => return Err(self.unexpected(&other)),
            };
            // Once `visit` stops, the rest is still read: the stream must end before this
            // connection's next answer.
            for record in chunk.records {
                wanted = wanted && visit(record);
            }
            if chunk.last {
                return Ok(());
            }
        }
    }

    /// Asks the daemon to make this node the record's DMASTER; returns once it is. With
    /// `first_use`, the daemon keeps the record here until `migration_done`.
    pub fn migrate(&mut self, db_id: DbId, key: &[u8], first_use: bool, timeout: Duration) -> Result<()> {
        let call = ReqCall {
            flags: CALL_FLAG_IMMEDIATE_MIGRATION | if first_use { CALL_FLAG_FIRST_USE } else { 0 },
            db_id,
            callid: CALL_NULL_FUNC,
            hopcount: 0,
            key: key.to_vec(),
            calldata: vec![],
        };
        match self.request(Body::ReqCall(call), timeout)? {
            Body::ReplyCall(reply) if reply.status == 0 => Ok(()),
            // The daemon refuses a call with REPLY_ERROR, as ctdbd does.
            Body::ReplyCall(ReplyCall { status, .. }) => Err(self.migrate_refused(status, &[])),
            Body::ReplyError(ReplyError { status, msg }) => Err(self.migrate_refused(status, &msg)),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Tells the daemon this client used the record it migrated here; remote requests may
    /// take it now. No reply.
    pub fn migration_done(&mut self, db_id: DbId, key: &[u8]) -> Result<()> {
        self.notify(opcode::MIGRATION_DONE, db_id, key)
    }

    /// Tells the daemon this client deleted a record, so vacuuming removes it from every
    /// node. No reply.
    pub fn deleted(&mut self, db_id: DbId, key: &[u8]) -> Result<()> {
        self.notify(opcode::DELETED, db_id, key)
    }

    /// A control about one record that the daemon does not answer.
    fn notify(&mut self, opcode: u32, db_id: DbId, key: &[u8]) -> Result<()> {
        let body = Body::ReqControl(ReqControl {
            opcode,
            srvid: 0,
            client_id: 0,
            flags: FLAG_NOREPLY,
            data: control::encode_db_key(db_id, key),
        });
        let reqid = self.take_reqid();
        self.send(reqid, body)
    }

    /// The value of tunable `name` on the daemon's node (`ctdb getvar`).
    pub fn get_tunable(&mut self, name: &str, timeout: Duration) -> Result<u64> {
        let request = payload::encode_get_request(name);
        let data = self.control(tunables::opcode::GET_TUNABLE, request, timeout)?;
        let value = payload::decode_value(&data).map_err(|e| self.malformed(&e))?;
        Ok(u64::from(value))
    }

    /// Sets tunable `name` on the daemon's node (`ctdb setvar`); the daemon checks the range.
    pub fn set_tunable(&mut self, name: &str, value: u64, timeout: Duration) -> Result<()> {
        // CTDB's SET_TUNABLE carries a u32: refuse here rather than send a truncated value.
        let value = u32::try_from(value).map_err(|_| {
            Error::einval(format!("{name} = {value}: tunables are 32-bit values, at most {}", u32::MAX))
        })?;
        let request = payload::encode_set_request(name, value);
        self.control(tunables::opcode::SET_TUNABLE, request, timeout).map(drop)
    }

    /// The names of every tunable of the daemon (`ctdb listvars` asks for these first).
    pub fn list_tunables(&mut self, timeout: Duration) -> Result<Vec<String>> {
        let data = self.control(tunables::opcode::LIST_TUNABLES, vec![], timeout)?;
        payload::decode_list_reply(&data).map_err(|e| self.malformed(&e))
    }

    /// A control with an empty payload and an empty answer, about the node itself:
    /// `tunables::opcode::{QUIET, UNQUIET, STOP_NODE}`.
    pub fn node_control(&mut self, opcode: u32, timeout: Duration) -> Result<()> {
        self.control(opcode, vec![], timeout).map(drop)
    }

    /// A control and its answer's data (the status controls, whose answers are JSON, are
    /// asked through `rctdbd::status`).
    pub fn control(&mut self, opcode: u32, data: Vec<u8>, timeout: Duration) -> Result<Vec<u8>> {
        let body = Body::ReqControl(ReqControl { opcode, srvid: 0, client_id: 0, flags: 0, data });
        match self.request(body, timeout)? {
            Body::ReplyControl(reply) if reply.status == 0 => Ok(reply.data),
            Body::ReplyControl(reply) => Err(Error::io(format!(
                "rctdbd at {}: {}",
                self.socket,
                String::from_utf8_lossy(&reply.errmsg)
            ))),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The daemon's refusal as tdb's code and a message (its status is a negated errno,
    /// `msg` its own words, if it said any).
    fn migrate_refused(&self, status: i32, msg: &[u8]) -> Error {
        let (code, why) = match -status {
            libc::ENOENT => (ErrorCode::Einval, "the database is not attached on that node".to_string()),
            libc::EIO => (ErrorCode::Io, "the node could not read or store the record".to_string()),
            errno => (ErrorCode::Io, std::io::Error::from_raw_os_error(errno).to_string()),
        };
        let why = if msg.is_empty() { why } else { format!("{why} ({})", String::from_utf8_lossy(msg)) };
        Error::new(code, format!("rctdbd at {} could not migrate the record: {why}", self.socket))
    }

    fn take_reqid(&mut self) -> ReqId {
        let reqid = self.next_reqid;
        self.next_reqid = self.next_reqid.wrapping_add(1).max(1);
        reqid
    }

    fn send(&mut self, reqid: ReqId, body: Body) -> Result<()> {
        if std::process::id() != self.owner {
            return Err(Error::io(format!(
                "the connection to rctdbd at {} belongs to process {}, this process's parent: \
                 open the database again after fork",
                self.socket, self.owner
            )));
        }
        let packet = Packet { generation: 0, destnode: CURRENT_NODE, srcnode: 0, reqid, body };
        write_packet(&mut self.stream, &packet)
            .map_err(|e| Error::io(format!("connection to rctdbd at {} lost: {e}", self.socket)))
    }

    fn request(&mut self, body: Body, timeout: Duration) -> Result<Body> {
        let reqid = self.take_reqid();
        self.send(reqid, body)?;
        self.read_reply(reqid, timeout)
    }

    /// The next packet answering `reqid`, within `timeout`.
    fn read_reply(&mut self, reqid: ReqId, timeout: Duration) -> Result<Body> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::new(
                    ErrorCode::LockTimeout,
                    format!("rctdbd at {} did not answer within {timeout:?}", self.socket),
                ));
            }
            if !self.wait_readable(left)? {
                continue;
            }
            // The daemon writes whole packets, so once the first byte is here a blocking read
            // of the frame never strands us mid-packet.
            match read_packet(&mut self.stream, MAX_PACKET_LEN) {
                // Answers to requests we gave up on (timed out) come late: skip them.
                Ok(packet) if packet.reqid != reqid => continue,
                Ok(packet) => return Ok(packet.body),
                Err(ReadError::Eof) => {
                    return Err(Error::io(format!("rctdbd at {} closed the connection", self.socket)));
                }
                Err(err) => {
                    return Err(Error::io(format!("connection to rctdbd at {} lost: {err}", self.socket)));
                }
            }
        }
    }

    fn wait_readable(&self, timeout: Duration) -> Result<bool> {
        let mut fds = libc::pollfd { fd: self.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let millis = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: `fds` is one valid pollfd that lives across the call; nfds is 1.
        let ready = unsafe { libc::poll(&mut fds, 1, millis) };
        match ready {
            n if n > 0 => Ok(true),
            0 => Ok(false),
            _ if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted => Ok(false),
            _ => Err(Error::io(format!(
                "waiting for rctdbd at {}: {}",
                self.socket,
                std::io::Error::last_os_error()
            ))),
        }
    }

    pub fn malformed(&self, problem: &str) -> Error {
        Error::io(format!("rctdbd at {} sent a malformed reply: {problem}", self.socket))
    }

    fn unexpected(&self, body: &Body) -> Error {
        Error::io(format!("rctdbd at {} sent an unexpected operation {}", self.socket, body.operation()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection used by a process other than the one that opened it (a forked child)
    /// is refused before anything is written, so the parent's stream stays whole.
    #[test]
    fn another_process_cannot_use_the_connection() {
        let (ours, daemon_side) = UnixStream::pair().unwrap();
        let mut connection =
            DaemonConnection { stream: ours, socket: "test".into(), next_reqid: 1, owner: 0 };
        let err = connection.list_tunables(Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("after fork"), "{err}");
        daemon_side.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 1];
        assert!(std::io::Read::read(&mut &daemon_side, &mut buf).is_err(), "nothing was written");
    }
}
