//! The C API on a real cluster: 3 rctdbd on loopback (tool::cluster), C programs from
//! tests/c/ built against include/rctdb.h and this run's librctdb.so, pointed at a node by
//! RCTDB_SOCKET. The ring from C (2 processes per node x 1000 increments under
//! rctdb_chainlock end at exactly 6000), CRUD and store flags across nodes, a cluster-wide
//! traverse, and the clustered bad-input cases. Every wait is bounded.
//!
//! Addresses: 127.0.4.x (ring) and 127.0.5.x (the rest), port 4379; other cluster tests
//! use other third octets, so all may run at once.

use crate::c_support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use c_support::{build, command, expect_success, run_bounded, wait_until, Scratch};
use rctdb::client::ClusteredDb;
use rctdb_cli::tool::cluster::{self, ClusterSpec, RunningCluster};

const NODES: usize = 3;
const PROCS_PER_NODE: usize = 2;
const INCREMENTS: u64 = 1000;
/// A call may wait this long for its record; far above what a healthy ring needs.
const MIGRATE_TIMEOUT_MS: &str = "20000";
/// How long a whole C program may run.
const PROGRAM_LIMIT: Duration = Duration::from_secs(120);

/// The test's cluster (stopped when dropped), with helpers for its C programs.
struct Cluster(RunningCluster);

impl Cluster {
    fn start(scratch: &Scratch, third_octet: u8) -> Cluster {
        // The rctdbd that cargo built for this run, found the way `cluster up` finds it.
        let rctdbd = cluster::rctdbd_binary();
        assert_eq!(
            rctdbd.canonicalize().ok(),
            Path::new(env!("CARGO_BIN_EXE_rctdbd")).canonicalize().ok(),
            "tool::cluster::rctdbd_binary() does not find this build's rctdbd next to the test executable"
        );
        let mut spec = ClusterSpec::new(NODES, &scratch.path("cluster"));
        spec.first_address = Ipv4Addr::new(127, 0, third_octet, 11);
        Cluster(RunningCluster::start(spec).unwrap_or_else(|e| panic!("cluster up: {e}")))
    }

    fn socket(&self, node: usize) -> PathBuf {
        self.0.socket(node)
    }

    fn socket_arg(&self, node: usize) -> String {
        self.socket(node).to_str().expect("UTF-8 socket path").to_string()
    }

    /// The nodes' logs, for a failure message.
    fn logs(&self) -> String {
        (0..NODES)
            .map(|node| {
                let log = self.0.dir().join(format!("node{node}.log"));
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!(
                    "--- {} (last lines)\n{}\n",
                    log.display(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect()
    }
}

/// A ring.c process on `node`, started and waiting for "go".
struct Worker {
    child: Child,
    stdout: BufReader<std::process::ChildStdout>,
    node: usize,
}

#[test]
fn ring_from_c_loses_no_increment() {
    let scratch = Scratch::new("cluster-ring");
    let ring = build(&scratch, "ring", false);
    let cluster = Cluster::start(&scratch, 4);
    let increments = INCREMENTS.to_string();

    let mut workers: Vec<Worker> = vec![];
    for node in 0..NODES {
        for _ in 0..PROCS_PER_NODE {
            let mut child = command(&ring)
                .args(["incr", "ring.tdb", "counter", increments.as_str()])
                .env("RCTDB_SOCKET", cluster.socket(node))
                .env("RCTDB_MIGRATE_TIMEOUT_MS", MIGRATE_TIMEOUT_MS)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting ring");
            let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
            workers.push(Worker { child, stdout, node });
        }
    }
    // Every process attaches and says "ready" (or exits, which ends the read); then all
    // start at once.
    for worker in &mut workers {
        let mut line = String::new();
        worker.stdout.read_line(&mut line).expect("reading ready");
        if line != "ready\n" {
            let mut stderr = String::new();
            let _ = worker.child.stderr.take().map(|mut e| e.read_to_string(&mut stderr));
            panic!("a ring process on node {} did not get ready: {line:?}\n{stderr}", worker.node);
        }
    }
    for worker in &mut workers {
        worker.child.stdin.take().expect("piped stdin").write_all(b"go\n").expect("starting a ring process");
    }
    let deadline = Instant::now() + PROGRAM_LIMIT;
    for worker in &mut workers {
        let status = wait_until(&mut worker.child, deadline);
        let mut rest = String::new();
        let _ = worker.stdout.read_to_string(&mut rest);
        let mut stderr = String::new();
        let _ = worker.child.stderr.take().map(|mut e| e.read_to_string(&mut stderr));
        assert!(
            status.is_some_and(|s| s.success()) && rest == "done\n",
            "a ring process on node {} failed ({status:?}; killed if None):\nstdout: {rest}\nstderr: {stderr}\n{}",
            worker.node,
            cluster.logs()
        );
    }

    let expected = NODES as u64 * PROCS_PER_NODE as u64 * INCREMENTS;
    // Through the C ABI, from every node...
    for node in 0..NODES {
        let mut get = command(&ring);
        get.args(["get", "ring.tdb", "counter"]).env("RCTDB_SOCKET", cluster.socket(node));
        let out = run_bounded(&scratch, &format!("get{node}"), get, PROGRAM_LIMIT);
        assert_eq!(expect_success(&ring, &out).trim(), expected.to_string(), "counter read on node {node}");
    }
    // ...and through ClusteredDb, with a cluster-wide traverse that sees it once.
    let mut db = ClusteredDb::open(&cluster.socket(1), "ring.tdb", Duration::from_secs(20)).expect("attach");
    let value = db.fetch(b"counter").expect("fetch").expect("the counter exists");
    assert_eq!(value, expected.to_ne_bytes());
    let mut seen = vec![];
    db.traverse(|key, data| {
        seen.push((key.to_vec(), data.to_vec()));
        true
    })
    .expect("traverse");
    assert_eq!(seen, vec![(b"counter".to_vec(), expected.to_ne_bytes().to_vec())]);
}

#[test]
fn crud_traverse_and_bad_input_on_a_cluster() {
    let scratch = Scratch::new("cluster-crud");
    let crud = build(&scratch, "cluster_crud", false);
    let bad_input = build(&scratch, "cluster_bad_input", false);
    let cluster = Cluster::start(&scratch, 5);

    let mut cmd = command(&crud);
    cmd.args((0..NODES).map(|node| cluster.socket_arg(node)))
        .env("RCTDB_MIGRATE_TIMEOUT_MS", MIGRATE_TIMEOUT_MS);
    let out = run_bounded(&scratch, "cluster_crud", cmd, PROGRAM_LIMIT);
    assert!(
        out.status.success(),
        "cluster_crud failed ({}):\n{}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cluster_crud: ok"));

    let work = scratch.path("bad-input");
    std::fs::create_dir_all(&work).expect("creating a work directory");
    let mut cmd = command(&bad_input);
    cmd.arg(&work).arg(cluster.socket(0)).arg(cluster.socket(1));
    let out = run_bounded(&scratch, "cluster_bad_input", cmd, PROGRAM_LIMIT);
    assert!(
        out.status.success(),
        "cluster_bad_input failed ({}):\n{}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        cluster.logs()
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cluster_bad_input: ok"));
    // Nothing was created locally in place of the unreachable cluster.
    let left: Vec<_> = std::fs::read_dir(&work)
        .expect("listing the work directory")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("dead.sock")], "files left by cluster_bad_input");
}
