//! `rctdb demo` end to end, and `rctdb statistics --json` / `rctdb status --json` on a live
//! cluster.

use std::path::Path;
use std::process::{Command, Output};

use rctdb_cli::tool::cluster::{ClusterSpec, RunningCluster};
use serde_json::Value;

fn rctdb(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rctdb"))
        .args(args)
        .env_remove("RCTDB_SOCKET")
        .output()
        .expect("running rctdb")
}

fn stdout_of(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Processes whose command line mentions `dir`: what the demo left running.
fn processes_of(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else { return vec![] };
    entries
        .flatten()
        .filter_map(|entry| {
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            cmdline.contains(&needle).then_some(cmdline)
        })
        .collect()
}

#[test]
fn the_demo_survives_a_kill_loses_no_update_and_leaves_nothing_behind() {
    let dir = std::env::temp_dir().join(format!("rctdb-demo-test-{}", std::process::id()));
    let dir_arg = dir.display().to_string();
    let out = rctdb(&["demo", "--seconds", "6", "--first-address", "127.0.60.11", "--dir", &dir_arg]);
    let stdout = stdout_of(&out, "rctdb demo");
    for expected in [
        "node 2 killed",
        "detected by node 0",
        "detected by node 1",
        "recovery done",
        "workload resumed",
        "readmitted",
        "no lost update",
    ] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    let table = stdout.split("phase          nodes").nth(1).expect("a final table");
    assert!(!table.contains("never"), "every step of the fault happened:\n{table}");
    let phases = ["3 nodes", "node 2 down", "node 2 back"];
    for phase in phases {
        let row = table.lines().find(|l| l.trim_start().starts_with(phase)).expect(phase);
        let ops: u64 =
            row.split_whitespace().nth(phase.split_whitespace().count() + 2).unwrap().parse().unwrap();
        assert!(ops > 0, "the workload ran in phase {phase:?}: {row}");
    }
    assert!(processes_of(&dir).is_empty(), "left running: {:?}", processes_of(&dir));
    assert!(!dir.exists(), "the demo removes its directory without --keep");
}

#[test]
fn the_demo_refuses_a_directory_it_did_not_make() {
    let dir = std::env::temp_dir().join(format!("rctdb-demo-foreign-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("precious"), "keep me").unwrap();
    let out = rctdb(&["demo", "--seconds", "3", "--dir", &dir.display().to_string()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a directory of an earlier demo"));
    assert_eq!(std::fs::read_to_string(dir.join("precious")).unwrap(), "keep me");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn statistics(socket: &Path, extra: &[&str]) -> Value {
    let socket = socket.display().to_string();
    let mut args = vec!["--socket", &socket, "statistics", "--json"];
    args.extend_from_slice(extra);
    let stdout = stdout_of(&rctdb(&args), "rctdb statistics --json");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

#[test]
fn statistics_count_a_migration_and_list_its_key_as_hot() {
    let dir = std::env::temp_dir().join(format!("rctdb-statistics-test-{}", std::process::id()));
    let mut spec = ClusterSpec::new(2, &dir);
    spec.first_address = std::net::Ipv4Addr::new(127, 0, 60, 21);
    let cluster = RunningCluster::start(spec).expect("cluster up");
    let (node0, node1) = (cluster.socket(0).display().to_string(), cluster.socket(1).display().to_string());
    let write = |socket: &str, value: &str| {
        stdout_of(&rctdb(&["--socket", socket, "writekey", "stats.tdb", "wandering", value]), "writekey")
    };
    write(&node1, "first");
    let before = statistics(&cluster.socket(0), &[]);
    for round in 0..3 {
        write(&node0, &format!("on 0, round {round}"));
        write(&node1, &format!("on 1, round {round}"));
    }
    let after = statistics(&cluster.socket(0), &[]);
    assert!(counter(&after, "migrations_completed") >= counter(&before, "migrations_completed") + 3);
    assert!(counter(&after, "handovers") >= counter(&before, "handovers") + 3);
    assert!(counter(&after, "client_calls") >= counter(&before, "client_calls") + 3);
    let hops: u64 =
        after["counters"]["hop_buckets"].as_array().unwrap().iter().filter_map(Value::as_u64).sum();
    assert_eq!(hops, counter(&after, "handovers"), "every handover is in the hop histogram");
    let db = after["dbs"].as_array().unwrap().iter().find(|db| db["name"] == "stats.tdb").expect("stats.tdb");
    let hot = &db["hot_keys"][0];
    assert_eq!(hot["key"], "wandering", "{db}");
    assert!(hot["migrations"].as_u64().unwrap() >= 6, "{db}");

    let reset = statistics(&cluster.socket(0), &["--reset"]);
    assert_eq!(counter(&reset, "migrations_completed"), counter(&after, "migrations_completed"));
    let fresh = statistics(&cluster.socket(0), &[]);
    assert_eq!(counter(&fresh, "migrations_completed"), 0);
    let db = fresh["dbs"].as_array().unwrap().iter().find(|db| db["name"] == "stats.tdb").unwrap();
    assert_eq!(db["hot_keys"].as_array().unwrap().len(), 0);

    let status = stdout_of(&rctdb(&["--socket", &node0, "status", "--json"]), "rctdb status --json");
    let status: Value = serde_json::from_str(&status).unwrap_or_else(|e| panic!("not JSON ({e}):\n{status}"));
    assert_eq!(status["pnn"], 0);
    assert_eq!(status["state"], "active");
    assert_eq!(status["nodes"][1]["state"], "alive");
    assert!(status["stats"]["migrations_completed"].is_u64());
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
