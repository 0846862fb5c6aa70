//! `rctdb bench local` runs end to end (tiny sizes: this checks that it works, not how fast).

use std::process::Command;

#[test]
fn bench_local_reports_both_sides_and_their_ratio() {
    let out = Command::new(env!("CARGO_BIN_EXE_rctdb"))
        .args([
            "bench",
            "local",
            "--keys",
            "2000",
            "--value-size",
            "10",
            "--rounds",
            "2",
            "--hash-size",
            "131",
        ])
        .env_remove("RCTDB_SOCKET")
        .output()
        .expect("running rctdb");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rctdb bench local failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in ["rctdb C ABI", "raw libtdb", "ratio (C ABI / raw)"] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
}

/// `rctdb bench hit` starts its one-node cluster, measures both sides and stops the node.
#[test]
fn bench_hit_reports_both_sides_and_stops_its_cluster() {
    let dir = std::env::temp_dir().join(format!("rctdb-bench-hit-test-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_rctdb"))
        .args(["bench", "hit", "--keys", "300", "--rounds", "1", "--address", "127.0.9.41", "--dir"])
        .arg(&dir)
        .env_remove("RCTDB_SOCKET")
        .output()
        .expect("running rctdb");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "rctdb bench hit failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in ["clustered, local hit", "raw libtdb", "ratio (rctdb / raw)"] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
    let pid: i32 =
        std::fs::read_to_string(dir.join("node0.pid")).map_or(-1, |p| p.trim().parse().unwrap_or(-1));
    assert_eq!(pid, -1, "the bench removes its node's pid file when it stops the node");
    let _ = std::fs::remove_dir_all(&dir);
}
