//! The controls only Samba's `ctdb` tool sends (`ctdb status`, `getdbmap`, `catdb`, ...),
//! answered byte-exact so administrators keep their tool on an rctdb cluster.
//!
//! The tool also learns the leader from a message, not a control: ctdbd's leader
//! broadcasts its pnn to `SRVID_LEADER` every second and `ctdb status` waits for one. Every
//! rctdb node knows the leader, so it tells a client the moment it registers that srvid,
//! and tells every such client again when a recovery ends.

use std::time::{SystemTime, UNIX_EPOCH};

use super::controls::{error_reply, ok_reply};
use super::Node;
use crate::daemon::cluster_lock::ClusterLockSpec;
use crate::engine::{ClientId, ClusterEvent};
use crate::wire::ctdb::{self, opcode, Uptime};
use crate::wire::{Body, Packet, Pnn, ReplyControl, ReqMessage};

/// What the tool asks about that the node does not keep for itself: when this node last
/// went into and out of recovery (`ctdb uptime`).
#[derive(Debug, Default)]
pub(super) struct RecoveryTimes {
    started: Option<SystemTime>,
    finished: Option<SystemTime>,
}

impl Node {
    /// `None` when the control is not one the tool needs.
    pub(super) fn ctdb_tool_query(&self, opcode: u32, data: &[u8]) -> Option<ReplyControl> {
        let reply = match opcode {
            // Every database rctdb attached is healthy: no reason, an empty string.
            opcode::DB_GET_HEALTH => match self.ctdb_db(data) {
                Ok(_) => ok_reply(vec![]),
                Err(err) => error_reply(&err),
            },
            opcode::GET_IFACES => ok_reply(ctdb::encode_empty_list()),
            opcode::UPTIME => ok_reply(ctdb::encode_uptime(&self.uptime())),
            opcode::GET_DEBUG => ok_reply(ctdb_debug_level(log::max_level()).to_le_bytes().to_vec()),
            // The cluster lock as configured (`!helper args` or a file); none: no string.
            opcode::GET_RECLOCK_FILE => match &self.cluster_lock {
                Some(spec) => ok_reply(ctdb::c_string(&cluster_lock_text(spec))),
                None => ok_reply(vec![]),
            },
            // ctdbd reads a database's sequence number from a record only persistent
            // databases keep; for a volatile one, which is all rctdb has, it answers 0.
            opcode::GET_DB_SEQNUM => match self.ctdb_db(data) {
                Ok(_) => ok_reply(0u64.to_le_bytes().to_vec()),
                Err(err) => error_reply(&err),
            },
            _ => return None,
        };
        Some(reply)
    }

    /// Whether a recovery has admitted this node since it started (ctdbd's runstate is
    /// RUNNING from then on, through later recoveries too).
    pub(super) fn ctdb_has_served(&self) -> bool {
        self.recovery_times.finished.is_some()
    }

    fn uptime(&self) -> Uptime {
        let current_time = SystemTime::now();
        // A clock set back before the epoch plus our uptime says the epoch, not a panic.
        let start_time = current_time.checked_sub(self.started.elapsed()).unwrap_or(UNIX_EPOCH);
        let times = &self.recovery_times;
        Uptime {
            current_time,
            start_time,
            last_recovery_started: times.started.unwrap_or(UNIX_EPOCH),
            last_recovery_finished: times.finished.unwrap_or(UNIX_EPOCH),
        }
    }

    /// Notes the recovery times and announces the leader once a recovery is over.
    pub(super) fn ctdb_tool_event(&mut self, event: &ClusterEvent) {
        let now = SystemTime::now();
        match event {
            ClusterEvent::Deactivated { .. } => self.recovery_times.started = Some(now),
            ClusterEvent::Activated { .. } => {
                let times = &mut self.recovery_times;
                // A node is inactive from its start until its first recovery admits it,
                // as ctdbd starts in recovery mode: that recovery began with the daemon.
                if times.started.is_none() {
                    times.started = Some(now.checked_sub(self.started.elapsed()).unwrap_or(UNIX_EPOCH));
                }
                times.finished = Some(now);
                self.ctdb_announce_leader();
            }
            _ => {}
        }
    }

    /// Tells one client who leads, as the leader's broadcast would (nothing while no
    /// leader is known: the tool then waits and prints UNKNOWN, as with ctdbd).
    pub(super) fn ctdb_tell_leader(&self, client: ClientId) {
        let (Some((leader, message)), Some(link)) = (self.leader_message(), self.clients.get(&client)) else {
            return;
        };
        let generation = self.engine.generation();
        let body = Body::Message(message);
        link.send(&Packet { generation, destnode: self.pnn, srcnode: leader, reqid: 0, body });
    }

    fn ctdb_announce_leader(&mut self) {
        if let Some((leader, message)) = self.leader_message() {
            self.deliver_message(leader, message);
        }
    }

    /// The leader's announcement: its pnn, a u32, to `SRVID_LEADER`.
    fn leader_message(&self) -> Option<(Pnn, ReqMessage)> {
        let leader = self.engine.cluster_status().leader?;
        Some((leader, ReqMessage { srvid: ctdb::SRVID_LEADER, data: leader.to_le_bytes().to_vec() }))
    }
}

/// Samba's debug level (ERROR 0, WARNING 1, NOTICE 3, INFO 5, DEBUG 10) of the daemon's
/// log filter, level for level by name.
fn ctdb_debug_level(filter: log::LevelFilter) -> i32 {
    match filter {
        log::LevelFilter::Off | log::LevelFilter::Error => 0,
        log::LevelFilter::Warn => 1,
        log::LevelFilter::Info => 5,
        log::LevelFilter::Debug | log::LevelFilter::Trace => 10,
    }
}

/// The cluster lock as ctdbd's `cluster lock` setting spells it.
fn cluster_lock_text(spec: &ClusterLockSpec) -> String {
    match spec {
        ClusterLockSpec::File(path) => path.display().to_string(),
        ClusterLockSpec::Helper { program, args } => {
            let mut text = format!("!{}", program.display());
            for arg in args {
                text.push(' ');
                text.push_str(arg);
            }
            text
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn debug_levels_are_samba_s() {
        assert_eq!(ctdb_debug_level(log::LevelFilter::Warn), 1);
        assert_eq!(ctdb_debug_level(log::LevelFilter::Info), 5);
        assert_eq!(ctdb_debug_level(log::LevelFilter::Trace), 10);
    }

    #[test]
    fn cluster_lock_as_configured() {
        assert_eq!(cluster_lock_text(&ClusterLockSpec::File(PathBuf::from("/c/lock"))), "/c/lock");
        let helper =
            ClusterLockSpec::Helper { program: PathBuf::from("/bin/m"), args: vec!["a".into(), "b".into()] };
        assert_eq!(cluster_lock_text(&helper), "!/bin/m a b");
    }
}
