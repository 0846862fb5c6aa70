//! A node whose database directory fills up, or is read-only: operations fail with
//! clear errors, nothing is corrupted or lost, the node stays in the cluster, and it serves
//! again once space returns. The directory is a small tmpfs, so the test needs root (CI is
//! root); elsewhere it says why it did not run.
//!
//! Addresses: 127.0.54.11-13 and 127.0.54.21.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rctdb::client::{ClusteredDb, DaemonConnection};
use rctdb::local::flags::{TDB_INCOMPATIBLE_HASH, TDB_NOLOCK};
use rctdb::local::{StoreFlag, Tdb};
use rctdb_cli::tool::cluster::{ClusterSpec, RunningCluster};
use rctdbd::status::{NodeStatus, StatusControls};

const DB: &str = "full.tdb";
const TIMEOUT: Duration = Duration::from_secs(5);
const LIMIT: Duration = Duration::from_secs(20);
const KEYS: usize = 20;

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A tmpfs of `size` mounted at `dir`, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("running mount");
        assert!(status.success(), "mounting a tmpfs at {}", dir.display());
        Tmpfs(dir.to_owned())
    }

    fn remount(&self, options: &str) {
        let status =
            Command::new("mount").args(["-o", &format!("remount,{options}")]).arg(&self.0).status().unwrap();
        assert!(status.success(), "remounting {} {options}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` with one file; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0xa5u8; 16 << 10];
    loop {
        match file.write_all(&chunk) {
            Ok(()) => {}
            Err(err) if err.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(err) => panic!("filling {}: {err}", path.display()),
        }
    }
    path
}

fn key(i: usize) -> Vec<u8> {
    format!("full-{i}").into_bytes()
}

fn value(i: usize, round: u32) -> Vec<u8> {
    format!("round {round} of key {i} ").repeat(10_000).into_bytes()
}

fn status(cluster: &RunningCluster, node: usize) -> NodeStatus {
    DaemonConnection::connect(&cluster.socket(node))
        .and_then(|mut d| d.status(TIMEOUT))
        .unwrap_or_else(|e| panic!("node {node} does not answer: {e}"))
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < LIMIT, "waited {LIMIT:?} for {what}");
        std::thread::sleep(Duration::from_millis(50)); // polling a daemon's status
    }
}

/// Every record of a node's file is readable and well formed (tdb's own check).
fn file_is_sound(path: &Path) -> usize {
    let tdb = Tdb::open(path, 0, TDB_INCOMPATIBLE_HASH | TDB_NOLOCK, libc::O_RDONLY, 0)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let count = tdb.traverse_read(|_, value| value.len() >= 24).expect("traversing the file");
    tdb.close().unwrap();
    let check = Command::new("tdbtool").arg(path).arg("check").output().expect("running tdbtool");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(said.contains("Database integrity is OK"), "tdbtool check of {}: {said}", path.display());
    count
}

/// A fresh cluster directory whose node `node` keeps its databases on a tmpfs of `size`;
/// `None`, said on stderr, when not root.
fn cluster_dir_with_tmpfs(name: &str, node: usize, size: &str) -> Option<(PathBuf, Tmpfs)> {
    if !is_root() {
        eprintln!("not run: mounting the small tmpfs this test uses needs root");
        return None;
    }
    let dir = std::env::temp_dir().join(format!("rctdb-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let tmpfs = Tmpfs::mount(&dir.join(format!("node{node}")), size);
    Some((dir, tmpfs))
}

#[test]
fn a_full_disk_fails_operations_clearly_and_loses_nothing() {
    let Some((dir, tmpfs)) = cluster_dir_with_tmpfs("disk-full", 1, "8m") else { return };
    let mut spec = ClusterSpec::new(3, &dir).with_tunable("VacuumInterval", 0);
    spec.first_address = Ipv4Addr::new(127, 0, 54, 11);
    let cluster = RunningCluster::start(spec).expect("cluster up");

    // The records live on node 0; node 1 has the database attached, its file small.
    let mut on0 = ClusteredDb::open(&cluster.socket(0), DB, TIMEOUT).expect("attach on node 0");
    let mut on1 = ClusteredDb::open(&cluster.socket(1), DB, TIMEOUT).expect("attach on node 1");
    let mut on2 = ClusteredDb::open(&cluster.socket(2), DB, TIMEOUT).expect("attach on node 2");
    for i in 0..KEYS {
        on0.store(&key(i), &[&value(i, 1)], StoreFlag::Replace).expect("store on node 0");
    }
    // Key 0 lives on node 1 before the disk fills.
    on1.store(&key(0), &[&value(0, 2)], StoreFlag::Replace).expect("store on node 1");
    let filler = fill(&dir.join("node1"));

    // A client of node 1 asking for records gets the disk's error, promptly, by name.
    // Which round each key holds: a store the full disk refused changed nothing.
    let mut round = [1; KEYS];
    round[0] = 2;
    let mut refused = 0;
    for (i, round) in round.iter_mut().enumerate().skip(1) {
        let started = Instant::now();
        match on1.store(&key(i), &[&value(i, 2)], StoreFlag::Replace) {
            Ok(()) => *round = 2,
            Err(err) => {
                let text = err.to_string();
                assert!(
                    text.contains("No space left on device") || text.contains("ENOSPC"),
                    "the error does not say the disk is full: {text}"
                );
                refused += 1;
            }
        }
        assert!(started.elapsed() < TIMEOUT, "a store on the full node took {:?}", started.elapsed());
    }
    assert!(refused > 0, "the disk was full, yet every store on node 1 succeeded");
    let full = status(&cluster, 1);
    assert!(full.serves(), "node 1 left the cluster over a full disk:\n{full}");
    assert!(full.records_unwritten > 0, "node 1 keeps no record in memory:\n{full}");

    // The rest of the cluster is served meanwhile, and records node 1 could not write reach
    // the others with their data.
    for (i, &round) in round.iter().enumerate() {
        let got = on2.fetch(&key(i)).expect("fetch on node 2").expect("the record exists");
        assert!(got == value(i, round), "key {i} read on node 2 is not round {round}");
    }

    // Space returns: the kept records are written, and node 1 serves every key again.
    std::fs::remove_file(&filler).unwrap();
    wait_for("node 1 to write what it kept", || status(&cluster, 1).records_unwritten == 0);
    for i in 0..KEYS {
        on1.store(&key(i), &[&value(i, 3)], StoreFlag::Replace)
            .expect("store on node 1 after space returned");
    }
    for i in 0..KEYS {
        let got = on0.fetch(&key(i)).expect("fetch on node 0").expect("the record exists");
        assert!(got == value(i, 3), "key {i} is not round 3 after space returned");
    }
    drop((on0, on1, on2));
    assert!(file_is_sound(&dir.join("node1").join(DB)) > 0, "node 1's file has no records");
    drop(cluster);
    drop(tmpfs);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_read_only_database_directory_is_refused_by_name() {
    let Some((dir, tmpfs)) = cluster_dir_with_tmpfs("read-only", 0, "1m") else { return };
    tmpfs.remount("ro");
    let mut spec = ClusterSpec::new(1, &dir);
    spec.first_address = Ipv4Addr::new(127, 0, 54, 21);
    let cluster = RunningCluster::start(spec).expect("a node with a read-only directory still starts");
    let err = ClusteredDb::open(&cluster.socket(0), DB, TIMEOUT)
        .err()
        .expect("attaching a database in a read-only directory succeeded");
    assert!(err.to_string().contains("Read-only file system"), "the error does not say why: {err}");
    let after = status(&cluster, 0);
    assert!(after.serves(), "the node stopped serving:\n{after}");
    tmpfs.remount("rw");
    ClusteredDb::open(&cluster.socket(0), DB, TIMEOUT).expect("attaching once the directory is writable");
    drop(cluster);
    drop(tmpfs);
    let _ = std::fs::remove_dir_all(&dir);
}
