//! Stock smbd on rctdbd, end to end (`samba-glue/test_samba.sh`): two smbd with
//! `clustering = yes` on a two-node rctdb cluster pass the cross-node coherence checks and
//! smbtorture's raw.oplock, base.lock, base.deny2, base.ntdeny2 and base.open; no conflicting
//! open or lock is granted while the node links are killed every 0.3 s, nor while a node's
//! rctdbd is stopped for 3 s under its serving smbd (until that smbd is fenced); a node killed
//! under open files leaves the other serving; and two unclustered smbd over the same
//! directory show the split brain the cluster prevents.
//!
//! Needs root (port 445) and Samba (`samba smbclient samba-testsuite`, which
//! `scripts/test.sh` and CI install). `RCTDB_SAMBA_TESTS=skip` skips it on a machine
//! without them; otherwise a missing prerequisite is a failure, not a silent pass.

use std::path::Path;
use std::process::Command;

#[test]
fn stock_smbd_is_coherent_on_rctdbd() {
    if std::env::var("RCTDB_SAMBA_TESTS").as_deref() == Ok("skip") {
        eprintln!("RCTDB_SAMBA_TESTS=skip: not running the Samba cluster test");
        return;
    }
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_rctdbd")).parent().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("samba-glue/test_samba.sh");
    let out = Command::new(&script).arg(bin_dir).output().expect("running samba-glue/test_samba.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    eprintln!("{stderr}");
    assert_ne!(
        out.status.code(),
        Some(77),
        "a prerequisite is missing (see above); RCTDB_SAMBA_TESTS=skip skips"
    );
    assert!(out.status.success(), "test_samba.sh failed: {}", stdout.lines().last().unwrap_or(""));
    // What passed, checked here too: the script's own verdict could not say PASS otherwise.
    assert!(stdout.contains("coherent: 15/15"), "every cross-node check must pass on rctdbd");
    assert!(stdout.contains("split brain shown"), "the plain control case must show the split brain");
    assert!(stdout.contains("passed 5/5"), "node B must keep serving after node A dies");
    // each script's summary line, so that one's "granted: 0" never stands for the other's
    let blips = stdout.lines().find(|line| line.contains("connections killed"));
    assert!(
        stdout.contains("link blips: SKIPPED") || blips.is_some_and(|line| line.contains(", granted: 0, ")),
        "a conflicting open or lock was granted while the node links were killed: {blips:?}"
    );
    let stall = stdout.lines().find(|line| line.contains("A's rctdbd stopped"));
    assert!(
        stall.is_some_and(|line| line.starts_with("conflicting attempts:") && line.contains(", granted: 0, ")),
        "a conflicting open or lock was granted on the other node while a stalled daemon's smbd held it: {stall:?}"
    );
    for test in ["raw.oplock", "base.lock", "base.deny2", "base.ntdeny2", "base.open"] {
        assert!(stdout.contains(&format!("{test} ok")), "smbtorture {test} must pass across the two nodes");
    }
}
