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
