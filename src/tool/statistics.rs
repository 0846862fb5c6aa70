//! `rctdb statistics`: a node's counters as CTDB's `ctdb statistics` and `ctdb dbstatistics`
//! show theirs — client calls, migrations, hop counts, lock waits, recoveries, and each
//! database's hot keys — as a table, or as JSON for scripts.

use std::fmt::Write;

use crate::engine::statistics::{hop_bucket_label, DbStatistics, Statistics};

/// The statistics as a person reads them.
pub fn render(stats: &Statistics) -> String {
    let c = &stats.counters;
    let mut out = String::new();
    let mut line = |name: &str, value: String| {
        let _ = writeln!(out, "  {name:<38} {value}");
    };
    line("client calls (records not here)", c.client_calls.to_string());
    line("  of them while not serving", c.calls_deferred.to_string());
    line("migrations in (records that came here)", c.migrations_completed.to_string());
    line("migrations out (records handed over)", c.handovers.to_string());
    line("requests sent / resent", format!("{} / {}", c.calls_sent, c.calls_resent));
    line("requests forwarded", c.calls_forwarded.to_string());
    line("requests parked for a first use", c.calls_parked.to_string());
    line("reads sent / answered", format!("{} / {}", c.fetches_sent, c.fetches_answered));
    line("max hop count", c.max_hopcount.to_string());
    line(
        "lock waits (count, total, max)",
        format!("{}   {} ms   {} ms", c.lock_waits, c.lock_wait_ms_total, c.lock_wait_ms_max),
    );
    let mean = match c.recoveries_led {
        0 => "-".to_string(),
        led => format!("{:.1} ms", c.recovery_ms_total as f64 / led as f64),
    };
    line(
        "recoveries led (last, max, mean)",
        format!("{}   {} ms   {} ms   {mean}", c.recoveries_led, c.last_recovery_ms, c.recovery_ms_max),
    );
    line("recoveries joined", c.recoveries_joined.to_string());
    line("records fixed by recoveries", c.records_fixed.to_string());
    line("nodes seen dying", c.nodes_died.to_string());
    line("vacuum runs / records deleted", format!("{} / {}", c.vacuum_runs, c.vacuum_deleted));
    line(
        "dropped: stale gen / dup / unknown db",
        format!("{} / {} / {}", c.stale_generation_dropped, c.duplicates_dropped, c.unknown_db_dropped),
    );
    line("store errors / protocol violations", format!("{} / {}", c.store_errors, c.protocol_violations));
    let hops: Vec<String> = c
        .hop_buckets
        .iter()
        .enumerate()
        .map(|(bucket, count)| format!("{}: {count}", hop_bucket_label(bucket)))
        .collect();
    let mut text = format!("node {} statistics\n{out}", stats.pnn);
    let _ = writeln!(text, "  hop counts of records handed over (forwards before the DMASTER):");
    let _ = writeln!(text, "    {}", hops.join("   "));
    for db in &stats.dbs {
        text.push_str(&render_db(db));
    }
    text
}

/// One database's part, as `ctdb dbstatistics` lists hot keys.
fn render_db(db: &DbStatistics) -> String {
    let mut text = format!(
        "db {} {:#010x}: migrations in {}, out {}\n",
        db.name, db.db_id, db.migrations_in, db.migrations_out
    );
    if db.hot_keys.is_empty() {
        text.push_str("  no hot keys\n");
        return text;
    }
    let _ = writeln!(text, "  hot keys  migrations  max hops  key");
    for (rank, hot) in db.hot_keys.iter().enumerate() {
        let _ = writeln!(text, "  {:>8}  {:>10}  {:>8}  {}", rank + 1, hot.migrations, hot.max_hops, hot.key);
    }
    text
}

/// The statistics as one JSON object, for scripts.
pub fn to_json(stats: &Statistics) -> Result<String, String> {
    serde_json::to_string_pretty(stats).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::statistics::HotKey;

    #[test]
    fn the_table_names_every_part_and_json_round_trips() {
        let mut stats = Statistics { pnn: 2, ..Default::default() };
        stats.counters.hop_buckets[1] = 7;
        stats.counters.lock_waits = 3;
        stats.dbs.push(DbStatistics {
            db_id: 0x1234,
            name: "demo.tdb".into(),
            migrations_in: 5,
            migrations_out: 4,
            hot_keys: vec![HotKey { key: "counter-01".into(), migrations: 9, max_hops: 1 }],
        });
        let text = render(&stats);
        for part in
            ["node 2 statistics", "client calls", "lock waits", "recoveries led", "1: 7", "counter-01"]
        {
            assert!(text.contains(part), "no {part:?} in\n{text}");
        }
        let json = to_json(&stats).unwrap();
        assert_eq!(serde_json::from_str::<Statistics>(&json).unwrap(), stats);
    }
}
