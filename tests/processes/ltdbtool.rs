//! Samba's `ltdbtool dump` (Debian package ctdb) reads a node's database file and shows our
//! record headers (DESIGN §8.1): a 3-node cluster on 127.0.7.11-13, records stored from
//! different nodes through `ClusteredDb`, then every node's file dumped and checked.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rctdb::client::ClusteredDb;
use rctdb::engine::lmaster_of;
use rctdb::local::StoreFlag;
use rctdb::record::FLAG_MIGRATED_WITH_DATA;
use rctdb_cli::tool::cluster::{ClusterSpec, RunningCluster};

const NODES: usize = 3;
const DB: &str = "ltdbtool.tdb";
const TIMEOUT: Duration = Duration::from_secs(10);

/// One record as `ltdbtool dump -p` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dumped {
    dmaster: u32,
    rsn: u64,
    flags: u32,
    data: String,
}

/// `ltdbtool dump -p FILE`: `{`, `key(5) = "alpha"`, `dmaster: 1`, `rsn: 2`,
/// `flags: 0x10000`, `data(3) = "two"`, `}` per record.
fn ltdbtool_dump(file: &Path) -> BTreeMap<String, Dumped> {
    let out = match Command::new("ltdbtool").args(["dump", "-p"]).arg(file).output() {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "ltdbtool is not installed: this test checks that Samba's ltdbtool reads our files. \
             Install it (apt-get install ctdb; .ci/run does) and run the test again."
        ),
        Err(e) => panic!("running ltdbtool: {e}"),
    };
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ltdbtool dump -p {} failed: {}{text}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let quoted = |line: &str| -> String {
        let start = line.find('"').unwrap_or_else(|| panic!("no quoted value in {line:?}"));
        line[start + 1..].strip_suffix('"').unwrap_or_else(|| panic!("unterminated {line:?}")).to_owned()
    };
    let number = |line: &str| -> u64 {
        let value = line.split(':').nth(1).unwrap_or_else(|| panic!("no value in {line:?}")).trim();
        match value.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => value.parse(),
        }
        .unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };
    let mut records = BTreeMap::new();
    let mut key = None;
    let mut record = Dumped { dmaster: u32::MAX, rsn: 0, flags: 0, data: String::new() };
    for line in text.lines() {
        match line {
            "{" => {
                key = None;
                record = Dumped { dmaster: u32::MAX, rsn: 0, flags: 0, data: String::new() };
            }
            "}" => {
                let key = key.take().unwrap_or_else(|| panic!("a record without a key in:\n{text}"));
                assert!(records.insert(key, record.clone()).is_none(), "a key twice in:\n{text}");
            }
            l if l.starts_with("key(") => key = Some(quoted(l)),
            l if l.starts_with("dmaster:") => record.dmaster = number(l) as u32,
            l if l.starts_with("rsn:") => record.rsn = number(l),
            l if l.starts_with("flags:") => record.flags = number(l) as u32,
            l if l.starts_with("data(") => record.data = quoted(l),
            l => panic!("unexpected ltdbtool line {l:?} in:\n{text}"),
        }
    }
    records
}

#[test]
fn ltdbtool_reads_our_files_and_headers() {
    let dir = std::env::temp_dir().join(format!("rctdb-ltdbtool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut spec = ClusterSpec::new(NODES, &dir);
    spec.first_address = Ipv4Addr::new(127, 0, 7, 11);
    let cluster = RunningCluster::start(spec).unwrap_or_else(|e| panic!("cluster up: {e}"));

    // (key, the nodes that store it in turn): the last one ends up DMASTER, the earlier
    // ones keep a copy they handed over with data.
    let writes: &[(&str, &[usize])] = &[
        ("only-node0", &[0]),
        ("only-node2", &[2]),
        ("node0-then-1", &[0, 1]),
        ("round-trip", &[0, 1, 2, 0]),
        ("node2-then-1", &[2, 1]),
    ];
    let mut dbs: Vec<ClusteredDb> =
        (0..NODES).map(|n| ClusteredDb::open(&cluster.socket(n), DB, TIMEOUT).expect("attach")).collect();
    let value = |key: &str, step: usize, node: usize| format!("{key} #{step} from node{node}");
    for (key, nodes) in writes {
        for (step, &node) in nodes.iter().enumerate() {
            let data = value(key, step, node);
            dbs[node].store(key.as_bytes(), &[data.as_bytes()], StoreFlag::Replace).expect("store");
        }
    }
    drop(dbs); // no client holds or reserves a record any more

    let dumps: Vec<BTreeMap<String, Dumped>> =
        (0..NODES).map(|n| ltdbtool_dump(&cluster.dir().join(format!("node{n}")).join(DB))).collect();
    let all = format!("{dumps:#?}");
    let vnn_map: Vec<u32> = (0..NODES as u32).collect();
    for (key, nodes) in writes {
        let last_node = *nodes.last().unwrap();
        let last_value = value(key, nodes.len() - 1, last_node);
        let copies: Vec<(usize, &Dumped)> =
            dumps.iter().enumerate().filter_map(|(n, d)| d.get(*key).map(|r| (n, r))).collect();
        let masters: Vec<usize> =
            copies.iter().filter(|(n, r)| r.dmaster == *n as u32).map(|(n, _)| *n).collect();
        assert_eq!(masters, vec![last_node], "{key}: exactly the last writer is DMASTER\n{all}");
        let master = &dumps[last_node][*key];
        assert_eq!(master.data, last_value, "{key}: the DMASTER has the last value\n{all}");
        assert!(master.rsn >= 1, "{key}: a stored record has rsn >= 1\n{all}");
        for &(node, copy) in &copies {
            assert!(copy.rsn <= master.rsn, "{key}: node {node}'s copy is newer than the DMASTER's\n{all}");
            if node == last_node {
                continue;
            }
            if !copy.data.is_empty() {
                assert_ne!(
                    copy.flags & FLAG_MIGRATED_WITH_DATA,
                    0,
                    "{key}: node {node} handed the record over with data\n{all}"
                );
            }
            if nodes.contains(&node) {
                // It stored the key once, so it held data when it handed the record over.
                assert!(!copy.data.is_empty(), "{key}: node {node} kept its data\n{all}");
            }
        }
        // Every node that stored the key keeps a copy; the LMASTER knows the DMASTER.
        for node in nodes.iter() {
            assert!(dumps[*node].contains_key(*key), "{key}: node {node} has no copy\n{all}");
        }
        let lmaster = lmaster_of(key.as_bytes(), &vnn_map) as usize;
        if let Some(copy) = dumps[lmaster].get(*key) {
            assert_eq!(copy.dmaster, last_node as u32, "{key}: the LMASTER's copy names the DMASTER\n{all}");
        }
        // Each handover raises the RSN: a record moved k times has rsn >= k.
        let moves = nodes.windows(2).filter(|w| w[0] != w[1]).count() as u64;
        assert!(master.rsn > moves, "{key}: rsn {} after {moves} moves\n{all}", master.rsn);
    }
    let stored: usize = writes.len();
    let seen: std::collections::BTreeSet<&String> = dumps.iter().flat_map(|d| d.keys()).collect();
    assert_eq!(seen.len(), stored, "only the keys we stored are in the files\n{all}");
}
