//! The tdb preload (`samba-glue/preload/test_preload.sh`): it exports libtdb's functions,
//! binds under LD_BIND_NOW, survives fork; one stock smbd on it (clustering = no, its
//! locking.tdb and brlock.tdb on an rctdb node) passes smbtorture raw.oplock, base.lock
//! and base.open (base.deny2 and base.ntdeny2 pass too but take ~15 min: run
//! `test_preload.sh smbd` for them); and two such smbd on two nodes share records yet
//! grant conflicting locks and opens, the split brain that only clustered smbd avoids.
//!
//! Needs root and Samba like `tests/samba/samba_cluster.rs`; `RCTDB_SAMBA_TESTS=skip` skips it.

use crate::c_support;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The script wants rctdb, rctdbd and librctdb.so in one directory; `cargo test` puts the
/// cdylib among the test executables, so the directory is made of links to this run's.
fn bin_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rctdb-preload-bins-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let files = [
        ("rctdb", PathBuf::from(env!("CARGO_BIN_EXE_rctdb"))),
        ("rctdbd", PathBuf::from(env!("CARGO_BIN_EXE_rctdbd"))),
        ("librctdb.so", c_support::lib_dir().join("librctdb.so")),
    ];
    for (name, target) in files {
        std::os::unix::fs::symlink(target, dir.join(name)).unwrap();
    }
    dir
}

fn run(bin_dir: &Path, what: &str, torture: &str) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("samba-glue/preload/test_preload.sh");
    let out = Command::new(&script)
        .arg(what)
        .env("RCTDB_BIN_DIR", bin_dir)
        .env("TORTURE_TESTS", torture)
        .output()
        .expect("running test_preload.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "test_preload.sh {what} failed: {}", stdout.lines().last().unwrap_or(""));
    assert!(stdout.contains("== all passed"), "test_preload.sh {what}: no verdict");
    stdout
}

#[test]
fn stock_smbd_runs_on_the_tdb_preload() {
    if std::env::var("RCTDB_SAMBA_TESTS").as_deref() == Ok("skip") {
        eprintln!("RCTDB_SAMBA_TESTS=skip: not running the preload tests");
        return;
    }
    let bins = bin_dir();
    let bin_dir = bins.as_path();
    run(bin_dir, "unit", "");
    let smbd = run(bin_dir, "smbd", "raw.oplock base.lock base.open");
    for test in ["raw.oplock", "base.lock", "base.open"] {
        assert!(smbd.contains(&format!("ok   {test}:")), "smbtorture {test} must pass on the preload");
    }
    let split = run(bin_dir, "split", "");
    assert!(split.contains("split brain shown"), "two unclustered smbd must show the split brain");
    let _ = std::fs::remove_dir_all(&bins);
}
