//! Samba's `ctdb` tool (Debian package ctdb) against rctdbd (DESIGN §6): administrators
//! keep their tool. A 3-node cluster on 127.0.40.11-13, records stored and read through
//! `ClusteredDb` on different nodes, then `ctdb pnn`, `status`, `-X status`, `getdbmap`,
//! `catdb`, `listnodes`, `leader`, `uptime`, `ping`, `runstate`, `getreclock`, `getvar`,
//! `setvar` and `listvars` (CTDB's units: seconds) run on the nodes and their output
//! checked; last, a node is killed and
//! `ctdb status` must show it DISCONNECTED and the others still OK.
//!
//! The tool decodes our replies with Samba's own parsers, so an output that reads right is
//! a reply that is byte-exact where the tool looks. Each tool run is bounded (CTDB_TIMEOUT
//! and a deadline here); CTDB_TEST_MODE keeps the tool's timeout kill inside its own
//! process group. Without the `ctdb` binary the test says so and passes.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use rctdb::client::{ClusteredDb, DaemonConnection};
use rctdb::local::StoreFlag;
use rctdb::record::FLAG_MIGRATED_WITH_DATA;
use rctdb_cli::tool::cluster::{self, ClusterSpec, RunningCluster};

const NODES: usize = 3;
const DB: &str = "tool.tdb";
const FIRST_ADDRESS: Ipv4Addr = Ipv4Addr::new(127, 0, 40, 11);
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(10);
/// A tool run that answers from one daemon takes milliseconds; `ctdb status` waiting for a
/// leader it is never told about would take the tool's own 10 s timeout.
const TOOL_LIMIT: Duration = Duration::from_secs(30);
const QUICK: Duration = Duration::from_secs(5);
/// Detection of a killed node plus the recovery without it, on a loaded machine.
const RECOVERY_LIMIT: Duration = Duration::from_secs(15);
/// The nodes start with `--set RecoverTimeout=4`, in CTDB's unit: seconds (the default is 3).
/// A whole number of seconds tells seconds from milliseconds and from rounding, and a
/// timeout changes no detection or lease time, so the killed-node checks keep their pace.
const RECOVER_TIMEOUT_SECONDS: u64 = 4;

/// `ctdb ARGS` against node `node` of the cluster in `dir`: its stdout, and how long it took.
/// Panics on a failed or overlong run.
fn ctdb(dir: &Path, node: usize, args: &[&str]) -> (String, Duration) {
    let child = Command::new("ctdb")
        .args(args)
        .env("CTDB_SOCKET", cluster::socket_path(dir, node))
        .env("CTDB_BASE", dir) // its `nodes` file is what `ctdb listnodes` reads
        .env("CTDB_TEST_MODE", "yes")
        .env("CTDB_TIMEOUT", TOOL_LIMIT.as_secs().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting ctdb: {e}"));
    let pid = Pid::from_raw(child.id() as i32);
    let started = Instant::now();
    let (done, outcome) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    let out = match outcome.recv_timeout(TOOL_LIMIT + Duration::from_secs(5)) {
        Ok(out) => out.unwrap_or_else(|e| panic!("waiting for ctdb: {e}")),
        Err(_) => {
            let _ = kill(pid, Signal::SIGKILL);
            panic!("`ctdb {}` on node {node} ran for more than {TOOL_LIMIT:?}", args.join(" "));
        }
    };
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "`ctdb {}` on node {node} failed ({}):\n{stdout}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, elapsed)
}

fn ctdb_installed() -> bool {
    match Command::new("ctdb").arg("version").stdout(Stdio::null()).stderr(Stdio::null()).status() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => panic!("running ctdb: {e}"),
    }
}

/// One record as `ctdb catdb` prints it: `key(5) = "alpha"`, `dmaster: 1`, `rsn: 2`,
/// `flags: 0x00010000 MIGRATED_WITH_DATA`, `data(3) = "one"`, an empty line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Dumped {
    dmaster: u32,
    rsn: u64,
    flags: u32,
    data: String,
}

/// `ctdb catdb`'s records by key, and the count of its last line `Dumped N records`.
fn parse_catdb(text: &str) -> (BTreeMap<String, Dumped>, usize) {
    let quoted = |line: &str| -> String {
        let start = line.find(" = \"").unwrap_or_else(|| panic!("no quoted value in {line:?}"));
        line[start + 4..].strip_suffix('"').unwrap_or_else(|| panic!("unterminated {line:?}")).to_owned()
    };
    fn value(line: &str) -> &str {
        line.split_once(": ").unwrap_or_else(|| panic!("no value in {line:?}")).1
    }
    let mut records = BTreeMap::new();
    let mut key: Option<String> = None;
    let mut record = Dumped { dmaster: u32::MAX, rsn: 0, flags: 0, data: String::new() };
    let mut count = None;
    for line in text.lines() {
        match line {
            l if l.starts_with("key(") => key = Some(quoted(l)),
            l if l.starts_with("dmaster: ") => record.dmaster = value(l).parse().expect("dmaster"),
            l if l.starts_with("rsn: ") => record.rsn = value(l).parse().expect("rsn"),
            l if l.starts_with("flags: 0x") => {
                let hex = &value(l)[2..10];
                record.flags = u32::from_str_radix(hex, 16).unwrap_or_else(|e| panic!("{l:?}: {e}"));
            }
            l if l.starts_with("data(") => {
                record.data = quoted(l);
                let key = key.take().unwrap_or_else(|| panic!("data without a key in:\n{text}"));
                assert!(records.insert(key, record.clone()).is_none(), "a key twice in:\n{text}");
            }
            "" => {}
            l if l.starts_with("Dumped ") => {
                count = l.split(' ').nth(1).and_then(|n| n.parse().ok());
            }
            l => panic!("unexpected catdb line {l:?} in:\n{text}"),
        }
    }
    (records, count.unwrap_or_else(|| panic!("no `Dumped N records` line in:\n{text}")))
}

/// The value of `Name:value` lines of `ctdb status`.
fn status_field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(':')))
        .unwrap_or_else(|| panic!("no {name}: line in:\n{status}"))
}

fn address(node: usize) -> String {
    Ipv4Addr::from(u32::from(FIRST_ADDRESS) + node as u32).to_string()
}

#[test]
fn the_ctdb_tool_reads_an_rctdb_cluster() {
    if !ctdb_installed() {
        // The test command installs it: a missing tool is a broken setup, not a pass.
        assert!(
            std::env::var("RCTDB_SAMBA_TESTS").as_deref() == Ok("skip"),
            "Samba's `ctdb` tool is not installed (apt-get install ctdb; RCTDB_SAMBA_TESTS=skip skips this)"
        );
        println!("SKIPPED: Samba's `ctdb` tool is not installed and RCTDB_SAMBA_TESTS=skip");
        return;
    }
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("rctdb-ctdb-tool-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut spec = ClusterSpec::new(NODES, &dir).with_tunable("RecoverTimeout", RECOVER_TIMEOUT_SECONDS);
    spec.first_address = FIRST_ADDRESS;
    let running = RunningCluster::start(spec).unwrap_or_else(|e| panic!("cluster up: {e}"));
    let dir = running.dir().to_owned();

    // alpha: written on node 0, read on node 1 (it moves there, node 0 keeps a copy);
    // beta: written on node 2; binary: bytes the tool prints as \XX.
    let mut dbs: Vec<ClusteredDb> = (0..NODES)
        .map(|n| ClusteredDb::open(&running.socket(n), DB, MIGRATE_TIMEOUT).expect("attach"))
        .collect();
    dbs[0].store(b"alpha", &[b"one"], StoreFlag::Replace).expect("store alpha on node 0");
    dbs[2].store(b"beta", &[b"two"], StoreFlag::Replace).expect("store beta on node 2");
    dbs[2].store(b"binary", &[&[0x80, 0xff]], StoreFlag::Replace).expect("store binary on node 2");
    assert_eq!(dbs[1].fetch(b"alpha").expect("fetch alpha on node 1"), Some(b"one".to_vec()));
    let db_id = dbs[0].db_id();
    drop(dbs); // no client holds a record any more

    for node in 0..NODES {
        assert_eq!(ctdb(&dir, node, &["pnn"]).0, format!("{node}\n"), "ctdb pnn on node {node}");
    }

    // status: every node OK, the same generation, vnn map and leader from every node.
    let mut seen = vec![];
    for node in 0..NODES {
        let (status, took) = ctdb(&dir, node, &["status"]);
        println!("ctdb status on node {node} ({took:?}):\n{status}");
        assert!(took < QUICK, "ctdb status took {took:?}: was the leader not told?\n{status}");
        assert_eq!(status_field(&status, "Number of nodes"), "3", "{status}");
        for other in 0..NODES {
            let this = if other == node { " (THIS NODE)" } else { "" };
            let line = format!("pnn:{other} {:<16} OK{this}", address(other));
            assert!(status.lines().any(|l| l == line), "no line {line:?} in:\n{status}");
        }
        assert_eq!(status_field(&status, "Size"), "3", "{status}");
        for hash in 0..NODES {
            let line = format!("hash:{hash} lmaster:{hash}");
            assert!(status.lines().any(|l| l == line), "no line {line:?} in:\n{status}");
        }
        assert_eq!(status_field(&status, "Recovery mode"), "NORMAL (0)", "{status}");
        let leader = status_field(&status, "Leader").to_owned();
        assert!(leader.parse::<usize>().is_ok_and(|l| l < NODES), "Leader:{leader}\n{status}");
        let generation = status_field(&status, "Generation").to_owned();
        assert!(generation.parse::<u32>().is_ok(), "Generation:{generation}\n{status}");
        assert_eq!(ctdb(&dir, node, &["leader"]).0.trim(), leader, "ctdb leader on node {node}");
        seen.push((generation, leader));
    }
    assert!(seen.iter().all(|s| *s == seen[0]), "the nodes disagree on generation or leader: {seen:?}");

    let (machine, _) = ctdb(&dir, 1, &["-X", "status"]);
    let mut expected = vec![
        "|Node|IP|Disconnected|Unknown|Banned|Disabled|Unhealthy|Stopped|Inactive|PartiallyOnline|ThisNode|"
            .to_owned(),
    ];
    for node in 0..NODES {
        let this = if node == 1 { 'Y' } else { 'N' };
        expected.push(format!("|{node}|{}|0|0|0|0|0|0|0|0|{this}|", address(node)));
    }
    assert_eq!(machine.lines().collect::<Vec<_>>(), expected, "ctdb -X status on node 1");

    // getdbmap: the one database, its id as librctdb knows it, each node's own file.
    for node in 0..NODES {
        let (dbmap, _) = ctdb(&dir, node, &["getdbmap"]);
        let path = dir.join(format!("node{node}")).join(DB);
        let expected =
            format!("Number of databases:1\ndbid:{db_id:#010x} name:{DB} path:{}\n", path.display());
        assert_eq!(dbmap, expected, "ctdb getdbmap on node {node}");
    }

    // catdb from node 2, which never touched alpha: the newest copy of every record.
    let (catdb, _) = ctdb(&dir, 2, &["catdb", DB]);
    println!("ctdb catdb {DB} on node 2:\n{catdb}");
    let (records, count) = parse_catdb(&catdb);
    assert_eq!(count, 3, "{catdb}");
    assert_eq!(records.keys().collect::<Vec<_>>(), ["alpha", "beta", "binary"], "{catdb}");
    let alpha = &records["alpha"];
    assert_eq!(
        (alpha.data.as_str(), alpha.dmaster),
        ("one", 1),
        "alpha moved to node 1 when read there\n{catdb}"
    );
    assert!(alpha.rsn >= 2, "alpha was handed over once: rsn {}\n{catdb}", alpha.rsn);
    assert_ne!(alpha.flags & FLAG_MIGRATED_WITH_DATA, 0, "{catdb}");
    assert!(catdb.contains("flags: 0x00010000 MIGRATED_WITH_DATA\n"), "{catdb}");
    assert_eq!((records["beta"].data.as_str(), records["beta"].dmaster), ("two", 2), "{catdb}");
    assert_eq!(records["binary"].data, "\\80\\FF", "{catdb}");

    // The rest an administrator reaches for.
    let listed: Vec<String> = (0..NODES).map(address).collect();
    assert_eq!(ctdb(&dir, 0, &["listnodes"]).0.lines().collect::<Vec<_>>(), listed, "ctdb listnodes");
    let (uptime, _) = ctdb(&dir, 1, &["uptime"]);
    for line in ["Current time of node 1 ", "Ctdbd start time ", "Time of last recovery/failover: ("] {
        assert!(uptime.contains(line), "no {line:?} in ctdb uptime:\n{uptime}");
    }
    assert!(!uptime.contains("1970"), "uptime has a time that never happened:\n{uptime}");
    assert!(ctdb(&dir, 2, &["ping"]).0.starts_with("response from 2 time="), "ctdb ping");
    assert_eq!(ctdb(&dir, 0, &["runstate"]).0, "RUNNING\n", "ctdb runstate");
    let lock = dir.join("cluster.lock");
    assert_eq!(ctdb(&dir, 0, &["getreclock"]).0, format!("{}\n", lock.display()), "ctdb getreclock");

    // Tunables: CTDB's names in CTDB's units, the finer name in milliseconds, and rctdbd's
    // `--set`, Samba's tool and librctdb's connection all agree.
    let var = |name: &str, value: u64| format!("{name:<26} = {value}\n");
    let (getvar, _) = ctdb(&dir, 0, &["getvar", "RecoverTimeout"]);
    assert_eq!(getvar, var("RecoverTimeout", RECOVER_TIMEOUT_SECONDS), "ctdb getvar prints seconds");
    let (getvar, _) = ctdb(&dir, 0, &["getvar", "RecoverTimeoutMs"]);
    assert_eq!(getvar, var("RecoverTimeoutMs", RECOVER_TIMEOUT_SECONDS * 1000), "ctdb getvar of the Ms name");
    ctdb(&dir, 1, &["setvar", "VacuumInterval", "7"]);
    let mut daemon = DaemonConnection::connect(&running.socket(1)).expect("connect to node 1");
    let vacuum_ms = daemon.get_tunable("VacuumIntervalMs", QUICK).expect("get VacuumIntervalMs");
    assert_eq!(vacuum_ms, 7000, "ctdb setvar VacuumInterval 7 means seven seconds");
    drop(daemon);
    let (listvars, _) = ctdb(&dir, 1, &["listvars"]);
    let listed: Vec<String> = listvars.lines().map(|line| format!("{line}\n")).collect();
    for line in [
        var("VacuumInterval", 7),
        var("VacuumIntervalMs", 7000),
        var("RecoverTimeout", RECOVER_TIMEOUT_SECONDS),
    ] {
        assert!(listed.contains(&line), "no {line:?} in ctdb listvars:\n{listvars}");
    }
    let (dbstatus, _) = ctdb(&dir, 1, &["getdbstatus", DB]);
    assert!(dbstatus.contains("HEALTH: OK\n"), "ctdb getdbstatus:\n{dbstatus}");
    let (remote, _) = ctdb(&dir, 0, &["-n", "2", "getdbmap"]);
    assert!(
        remote.contains(&format!("path:{}", dir.join("node2").join(DB).display())),
        "-n 2 getdbmap:\n{remote}"
    );

    // A killed node: DISCONNECTED for the survivors, out of the vnn map, the rest OK.
    cluster::kill_node(&dir, 2).unwrap_or_else(|e| panic!("killing node 2: {e}"));
    let deadline = Instant::now() + RECOVERY_LIMIT;
    let status = loop {
        let (status, _) = ctdb(&dir, 0, &["status"]);
        if status_field(&status, "Size") == "2" && status_field(&status, "Recovery mode") == "NORMAL (0)" {
            break status;
        }
        assert!(Instant::now() < deadline, "node 2 still in the vnn map after {RECOVERY_LIMIT:?}:\n{status}");
        std::thread::sleep(Duration::from_millis(100)); // polling the survivors
    };
    println!("ctdb status on node 0 with node 2 killed:\n{status}");
    let line = format!("pnn:2 {:<16} DISCONNECTED|INACTIVE", address(2));
    assert!(status.lines().any(|l| l == line), "no line {line:?} in:\n{status}");
    assert!(status.lines().any(|l| l == format!("pnn:1 {:<16} OK", address(1))), "{status}");
    let (machine, _) = ctdb(&dir, 1, &["-X", "status"]);
    assert!(machine.lines().any(|l| l == format!("|2|{}|1|0|0|0|0|0|1|0|N|", address(2))), "{machine}");
    let (records, _) = parse_catdb(&ctdb(&dir, 1, &["catdb", DB]).0);
    assert_eq!(records.get("alpha").map(|r| r.data.as_str()), Some("one"), "alpha lives on node 1");

    drop(running);
    println!("the ctdb tool checks took {:?}", started.elapsed());
}
