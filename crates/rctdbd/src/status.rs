//! A node's status: what rctdbd answers to the STATUS control (as JSON), what `rctdb status`
//! prints (`--json`: the same object; else the `key value` lines its `Display` renders), and
//! what every tool, bench and test reads. One type, so that a renamed word cannot silently
//! break a reader. [`StatusControls`] asks for it, and for the statistics, on a client
//! connection: their answers are JSON, which stays out of librctdb.

use std::collections::BTreeMap;
use std::time::Duration;

use rctdb::client::DaemonConnection;
use serde::{Deserialize, Serialize};

use crate::engine::statistics::Statistics;
use crate::engine::EngineStats;
use crate::error::Result;
use crate::wire::control::{self, opcode};
use crate::wire::{DbId, Pnn};

/// The controls whose answers are JSON, on a connection to the local rctdbd.
pub trait StatusControls {
    /// The node's status (`rctdb status`).
    fn status(&mut self, timeout: Duration) -> Result<NodeStatus>;
    /// The node's statistics; with `reset` the daemon starts them from zero after answering.
    fn statistics(&mut self, reset: bool, timeout: Duration) -> Result<Statistics>;
}

impl StatusControls for DaemonConnection {
    fn status(&mut self, timeout: Duration) -> Result<NodeStatus> {
        let data = self.control(opcode::STATUS, vec![], timeout)?;
        serde_json::from_slice(&data).map_err(|e| self.malformed(&format!("status: {e}")))
    }

    fn statistics(&mut self, reset: bool, timeout: Duration) -> Result<Statistics> {
        let request = if reset { control::STATISTICS_RESET.to_vec() } else { vec![] };
        let data = self.control(opcode::STATISTICS, request, timeout)?;
        serde_json::from_slice(&data).map_err(|e| self.malformed(&format!("statistics: {e}")))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub pnn: Pnn,
    /// `active` (serves), `recovering`, `inactive`, `banned` or `quiet`.
    pub state: String,
    pub leader: Option<Pnn>,
    pub term: u64,
    pub generation: u32,
    /// The active nodes, in LMASTER order.
    pub vnn_map: Vec<Pnn>,
    /// Every node of the nodes file, this one included, as this node sees it.
    pub nodes: Vec<PeerStatus>,
    pub dbs: Vec<DbStatus>,
    pub vacuum_backlog: u64,
    pub repacks: u64,
    /// Records the files refused (a full disk, a stuck lock), kept in memory.
    pub records_unwritten: usize,
    pub stats: EngineStats,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    pub pnn: Pnn,
    pub address: String,
    pub state: PeerState,
    pub link_up: bool,
    pub packets_sent: u64,
    pub packets_received: u64,
    /// Kept until the peer acknowledges them: sent again after a reconnect if need be.
    pub packets_queued: u64,
    /// Written again after a reconnect: the broken connection lost them.
    pub packets_resent: u64,
    /// Never sent: the queue was full, or they were meant for a peer's previous run.
    pub packets_dropped: u64,
    /// Why the link is down, if the peer was refused (authentication).
    pub refused: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// The node that answers.
    #[serde(rename = "self")]
    Me,
    Alive,
    Dead,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbStatus {
    pub name: String,
    pub db_id: DbId,
}

impl NodeStatus {
    pub fn serves(&self) -> bool {
        self.state == "active"
    }

    pub fn peer(&self, pnn: Pnn) -> Option<&PeerStatus> {
        self.nodes.iter().find(|node| node.pnn == pnn)
    }

    /// This node sees `pnn` alive with its link to it up.
    pub fn sees_up(&self, pnn: Pnn) -> bool {
        self.peer(pnn).is_some_and(PeerStatus::is_up)
    }

    pub fn sees_dead(&self, pnn: Pnn) -> bool {
        self.peer(pnn).is_some_and(|peer| peer.state == PeerState::Dead)
    }

    /// The peers this node sees in `state`.
    pub fn peers_in(&self, state: PeerState) -> Vec<Pnn> {
        self.nodes.iter().filter(|node| node.state == state).map(|node| node.pnn).collect()
    }

    pub fn db(&self, name: &str) -> Option<&DbStatus> {
        self.dbs.iter().find(|db| db.name == name)
    }

    /// The engine's counters by name (`stats` of the text form), for readers that pick
    /// counters by a prefix; the hop histogram is left out.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        let Ok(serde_json::Value::Object(fields)) = serde_json::to_value(&self.stats) else {
            return BTreeMap::new();
        };
        fields.into_iter().filter_map(|(name, value)| Some((name, value.as_u64()?))).collect()
    }
}

impl PeerStatus {
    /// Alive, with the link to it up.
    pub fn is_up(&self) -> bool {
        self.state == PeerState::Alive && self.link_up
    }

    /// Heard (alive) while the link to it is down: what this node sends it waits in its queue.
    pub fn is_half_open(&self) -> bool {
        self.state == PeerState::Alive && !self.link_up
    }
}

impl std::fmt::Display for PeerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PeerState::Me => "self",
            PeerState::Alive => "alive",
            PeerState::Dead => "dead",
        })
    }
}

/// The text form of `rctdb status`: `key value` lines a person can read.
impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let leader = self.leader.map_or("none".to_string(), |l| l.to_string());
        writeln!(f, "pnn {}\nstate {}\nleader {leader}\nterm {}", self.pnn, self.state, self.term)?;
        writeln!(f, "generation {:#010x}\nvnn_map {:?}", self.generation, self.vnn_map)?;
        for node in &self.nodes {
            let state = match (node.state, node.link_up) {
                (PeerState::Me, _) => "self".to_string(),
                (alive, true) => {
                    format!("{alive} link-up sent={} received={}", node.packets_sent, node.packets_received)
                }
                (alive, false) => match &node.refused {
                    Some(why) => format!("{alive} link-down refused: {why}"),
                    None => format!("{alive} link-down"),
                },
            };
            let queue = match (node.packets_queued, node.packets_resent, node.packets_dropped) {
                (0, 0, 0) => String::new(),
                (queued, resent, dropped) => format!(" queued={queued} resent={resent} dropped={dropped}"),
            };
            writeln!(f, "node {} {} {state}{queue}", node.pnn, node.address)?;
        }
        for db in &self.dbs {
            writeln!(f, "db {} {:#010x}", db.name, db.db_id)?;
        }
        writeln!(f, "vacuum_backlog {}\nrepacks {}", self.vacuum_backlog, self.repacks)?;
        writeln!(f, "records_unwritten {}\nstats {}", self.records_unwritten, self.stats)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> NodeStatus {
        let peer = |pnn: Pnn, state, link_up| PeerStatus {
            pnn,
            address: format!("127.0.0.{}", 11 + pnn),
            state,
            link_up,
            packets_sent: 3,
            packets_received: 4,
            packets_queued: 0,
            packets_resent: 0,
            packets_dropped: 0,
            refused: None,
        };
        NodeStatus {
            pnn: 0,
            state: "active".into(),
            leader: Some(1),
            term: 2,
            generation: 0x1234,
            vnn_map: vec![0, 1],
            nodes: vec![
                peer(0, PeerState::Me, false),
                peer(1, PeerState::Alive, true),
                peer(2, PeerState::Dead, false),
            ],
            dbs: vec![DbStatus { name: "opens.tdb".into(), db_id: 0xabcd }],
            vacuum_backlog: 0,
            repacks: 1,
            records_unwritten: 0,
            stats: EngineStats { nodes_died: 5, ..EngineStats::default() },
        }
    }

    #[test]
    fn the_json_form_reads_back_as_the_same_status() {
        let status = sample();
        let json = serde_json::to_string(&status).unwrap();
        assert!(json.contains("\"state\":\"self\""), "peer states are words: {json}");
        assert_eq!(serde_json::from_str::<NodeStatus>(&json).unwrap(), status);
    }

    #[test]
    fn the_text_form_renders_every_field_as_a_line() {
        let text = sample().to_string();
        for line in [
            "state active",
            "leader 1",
            "generation 0x00001234",
            "vnn_map [0, 1]",
            "node 0 127.0.0.11 self",
            "node 1 127.0.0.12 alive link-up sent=3 received=4",
            "node 2 127.0.0.13 dead link-down",
            "db opens.tdb 0x0000abcd",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
        assert!(text.contains(" nodes_died=5 "), "{text}");
    }

    #[test]
    fn readers_ask_by_peer_and_by_counter_name() {
        let status = sample();
        assert!(status.serves() && status.sees_up(1) && status.sees_dead(2) && !status.sees_up(2));
        assert_eq!(status.peers_in(PeerState::Dead), vec![2]);
        assert_eq!(status.counters().get("nodes_died"), Some(&5));
        assert!(!status.counters().contains_key("hop_buckets"));
    }
}
