//! What `rctdb statistics` shows beyond the plain counters of `EngineStats`: how far
//! requests travelled before they found the record, how long work waited for chain locks
//! clients held, how long recoveries took, and each database's hot keys (CTDB's
//! `ctdb dbstatistics`). Counted where it happens, with the engine's own clock.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{Engine, EngineStats, Millis};
use crate::wire::{DbId, Pnn};

/// Hop-count buckets, CTDB's way: 0, 1, 2-3, 4-7, ... 64 and more.
pub const HOP_BUCKETS: usize = 8;

/// The bucket of a request forwarded `hops` times before it reached the DMASTER.
pub fn hop_bucket(hops: u32) -> usize {
    match hops {
        0 => 0,
        hops => (32 - hops.leading_zeros() as usize).min(HOP_BUCKETS - 1),
    }
}

/// The bucket's range as text, for a table.
pub fn hop_bucket_label(bucket: usize) -> String {
    match bucket {
        0 => "0".into(),
        1 => "1".into(),
        b if b == HOP_BUCKETS - 1 => format!("{}+", 1u32 << (b - 1)),
        b => format!("{}-{}", 1u32 << (b - 1), (1u32 << b) - 1),
    }
}

/// Keys tracked per database for its hot-key list: memory stays bounded however many
/// keys migrate.
const TRACKED_KEYS: usize = 64;
/// Keys a database's statistics list.
pub const HOT_KEYS_SHOWN: usize = 10;

/// One key's traffic at this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotKey {
    /// The key, printable bytes as they are and others as `\xNN`.
    pub key: String,
    /// Migrations of the record to and from this node. A key that entered the list late may
    /// be over-counted by at most the count of the key it replaced.
    pub migrations: u64,
    /// The most forwards a request for it took before reaching the DMASTER, here.
    pub max_hops: u32,
}

/// One database's migrations and hot keys at this node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DbStatistics {
    pub db_id: DbId,
    pub name: String,
    pub migrations_in: u64,
    pub migrations_out: u64,
    /// Busiest first.
    pub hot_keys: Vec<HotKey>,
}

/// A node's statistics: the counters, and each attached database's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statistics {
    pub pnn: Pnn,
    pub counters: EngineStats,
    pub dbs: Vec<DbStatistics>,
}

#[derive(Debug, Default)]
struct KeyTraffic {
    migrations: u64,
    max_hops: u32,
}

#[derive(Debug, Default)]
struct DbTraffic {
    migrations_in: u64,
    migrations_out: u64,
    /// The busiest keys seen, by the Space-Saving rule: a new key takes the place of the
    /// least busy one and inherits its count, so a key busier than every key not listed is
    /// always listed.
    keys: BTreeMap<Vec<u8>, KeyTraffic>,
}

/// Per-database traffic, for the hot-key lists.
#[derive(Debug, Default)]
pub(super) struct Traffic {
    dbs: BTreeMap<DbId, DbTraffic>,
}

/// Which way a record went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Direction {
    In,
    Out,
}

impl Traffic {
    fn note(&mut self, db_id: DbId, key: &[u8], direction: Direction, hops: u32) {
        let db = self.dbs.entry(db_id).or_default();
        match direction {
            Direction::In => db.migrations_in += 1,
            Direction::Out => db.migrations_out += 1,
        }
        if !db.keys.contains_key(key) && db.keys.len() >= TRACKED_KEYS {
            let least = db.keys.iter().min_by_key(|(_, t)| t.migrations).map(|(k, _)| k.clone());
            if let Some(traffic) = least.and_then(|least| db.keys.remove(&least)) {
                db.keys.insert(key.to_vec(), KeyTraffic { max_hops: 0, ..traffic });
            }
        }
        let traffic = db.keys.entry(key.to_vec()).or_default();
        traffic.migrations += 1;
        traffic.max_hops = traffic.max_hops.max(hops);
    }
}

impl EngineStats {
    pub(super) fn note_lock_wait(&mut self, waited: Millis) {
        self.lock_wait_ms_total += waited;
        self.lock_wait_ms_max = self.lock_wait_ms_max.max(waited);
    }

    pub(super) fn note_recovery(&mut self, millis: Millis) {
        self.last_recovery_ms = millis;
        self.recovery_ms_total += millis;
        self.recovery_ms_max = self.recovery_ms_max.max(millis);
    }
}

impl Engine {
    /// A record of `db_id` left this node for a request forwarded `hops` times, or arrived.
    pub(super) fn note_migration(&mut self, db_id: DbId, key: &[u8], direction: Direction, hops: u32) {
        if direction == Direction::Out {
            self.stats.hop_buckets[hop_bucket(hops)] += 1;
        }
        self.traffic.note(db_id, key, direction, hops);
    }

    pub fn statistics(&self) -> Statistics {
        let dbs = self
            .dbs
            .iter()
            .map(|(&db_id, name)| {
                let traffic = self.traffic.dbs.get(&db_id);
                let mut hot_keys: Vec<HotKey> = traffic
                    .map(|t| &t.keys)
                    .into_iter()
                    .flatten()
                    .map(|(key, t)| HotKey {
                        key: key.escape_ascii().to_string(),
                        migrations: t.migrations,
                        max_hops: t.max_hops,
                    })
                    .collect();
                hot_keys.sort_by_key(|hot| std::cmp::Reverse((hot.migrations, hot.max_hops)));
                hot_keys.truncate(HOT_KEYS_SHOWN);
                DbStatistics {
                    db_id,
                    name: name.clone(),
                    migrations_in: traffic.map_or(0, |t| t.migrations_in),
                    migrations_out: traffic.map_or(0, |t| t.migrations_out),
                    hot_keys,
                }
            })
            .collect();
        Statistics { pnn: self.config.pnn, counters: self.stats.clone(), dbs }
    }

    /// Counters and hot keys start from zero again (`rctdb statistics --reset`).
    pub fn reset_statistics(&mut self) {
        self.stats = EngineStats::default();
        self.traffic = Traffic::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_buckets_are_powers_of_two() {
        let buckets: Vec<usize> = [0, 1, 2, 3, 4, 7, 8, 63, 64, 1000].map(hop_bucket).to_vec();
        assert_eq!(buckets, [0, 1, 2, 2, 3, 3, 4, 6, 7, 7]);
        assert_eq!(hop_bucket_label(2), "2-3");
        assert_eq!(hop_bucket_label(HOP_BUCKETS - 1), "64+");
    }

    #[test]
    fn a_busy_key_stays_listed_among_many_quiet_ones() {
        let mut traffic = Traffic::default();
        for round in 0..10 {
            for quiet in 0..TRACKED_KEYS * 3 {
                traffic.note(1, format!("quiet{round}-{quiet}").as_bytes(), Direction::In, 0);
            }
            for _ in 0..TRACKED_KEYS {
                traffic.note(1, b"busy", Direction::Out, 2);
            }
        }
        let db = &traffic.dbs[&1];
        assert_eq!(db.keys.len(), TRACKED_KEYS, "bounded");
        assert!(db.keys[&b"busy"[..]].migrations >= 10 * TRACKED_KEYS as u64);
        assert_eq!(db.keys[&b"busy"[..]].max_hops, 2);
        assert_eq!(db.migrations_out, 10 * TRACKED_KEYS as u64);
    }
}
