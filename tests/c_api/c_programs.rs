//! Builds the C programs of tests/c/ with gcc against include/rctdb.h and the librctdb.so
//! that cargo built for this very test run, runs them, and checks what they report. The
//! interop tests put rctdb, libtdb itself (`tdbdump`, a libtdb build of counter_tool) and
//! python3-tdb on the same files.

use crate::c_support;

use std::{
    io::{BufRead, BufReader, Write},
    path::Path,
    process::{Child, Command, Stdio},
};

use c_support::{build, command, expect_success, run, Scratch};

/// Debian's python, which has python3-tdb (a python on PATH may be another one).
const PYTHON: &str = "/usr/bin/python3";

fn python(script: &str, args: &[&str]) -> String {
    let out =
        Command::new(PYTHON).arg("-c").arg(script).args(args).output().expect("running /usr/bin/python3");
    expect_success(Path::new("python3-tdb script"), &out)
}

#[test]
fn crud_and_store_flags() {
    let scratch = Scratch::new("crud");
    let exe = build(&scratch, "crud", false);
    assert!(run(&exe, &[&scratch.arg("")]).contains("crud: ok"));
}

#[test]
fn traverse_counts_stops_and_deletes() {
    let scratch = Scratch::new("traverse");
    let exe = build(&scratch, "traverse", false);
    assert!(run(&exe, &[&scratch.arg("")]).contains("traverse: ok"));
}

#[test]
fn bad_input_fails_precisely() {
    let scratch = Scratch::new("bad-input");
    let exe = build(&scratch, "bad_input", false);
    assert!(run(&exe, &[&scratch.arg("")]).contains("bad_input: ok"));
}

#[test]
fn eight_processes_increment_under_chain_locks() {
    let scratch = Scratch::new("multiprocess");
    let exe = build(&scratch, "multiprocess", false);
    assert!(run(&exe, &[&scratch.arg("")]).contains("counter = 16000"));
}

#[test]
fn tdbdump_reads_what_rctdb_wrote() {
    let scratch = Scratch::new("tdbdump");
    let tool = build(&scratch, "counter_tool", false);
    let db = scratch.arg("written.tdb");
    run(&tool, &["write", &db, "100"]);
    let out = Command::new("tdbdump").arg(&db).output().expect("running tdbdump (apt-get install tdb-tools)");
    let dump = expect_success(Path::new("tdbdump"), &out);
    assert_eq!(dump.matches("key(").count(), 100, "{dump}");
    assert!(dump.contains("key(5) = \"key42\"\ndata(7) = \"value42\""), "{dump}");
}

#[test]
fn python_tdb_reads_what_rctdb_wrote() {
    let scratch = Scratch::new("py-read");
    let tool = build(&scratch, "counter_tool", false);
    let db = scratch.arg("written.tdb");
    run(&tool, &["write", &db, "100"]);
    let script = "import os, sys, tdb\n\
                  t = tdb.Tdb(sys.argv[1], 0, tdb.DEFAULT, os.O_RDONLY)\n\
                  assert len(list(t.keys())) == 100\n\
                  for i in range(100):\n    \
                      assert t.get(b'key%d' % i) == b'value%d' % i, i\n\
                  print('python3-tdb: ok')\n";
    assert!(python(script, &[&db]).contains("python3-tdb: ok"));
}

#[test]
fn rctdb_reads_what_python_tdb_wrote() {
    let scratch = Scratch::new("py-write");
    let tool = build(&scratch, "counter_tool", false);
    let db = scratch.arg("python.tdb");
    let script = "import os, sys, tdb\n\
                  t = tdb.Tdb(sys.argv[1], 0, tdb.DEFAULT, os.O_RDWR | os.O_CREAT, 0o600)\n\
                  for i in range(100):\n    \
                      t.store(b'py%d' % i, b'val%d' % i, tdb.INSERT)\n\
                  t.close()\n";
    python(script, &[&db]);
    assert!(run(&tool, &["check", &db, "py", "val", "100"]).contains("rctdb: 100 records ok"));
}

/// rctdb processes and plain libtdb processes increment one counter in one file at the same
/// time, each increment under the chain lock: no increment may be lost.
#[test]
fn tdb_and_rctdb_processes_share_one_file() {
    const PER_PROCESS: u32 = 3000;
    let scratch = Scratch::new("shared");
    let rctdb_tool = build(&scratch, "counter_tool", false);
    let libtdb_tool = build(&scratch, "counter_tool", true);
    let db = scratch.arg("shared.tdb");
    let per_process = PER_PROCESS.to_string();
    let args = ["incr", db.as_str(), "counter", per_process.as_str()];

    // Each process opens the file, says "ready" and waits for a byte on stdin: once all are
    // ready, they start together.
    let tools = [&rctdb_tool, &libtdb_tool, &rctdb_tool, &libtdb_tool];
    let mut children: Vec<Child> = tools
        .iter()
        .map(|tool| {
            command(tool)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("starting counter_tool")
        })
        .collect();
    for child in &mut children {
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading ready");
        assert_eq!(line, "ready\n", "a counter process did not get ready");
    }
    for child in &mut children {
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin.write_all(b"go\n").expect("starting a counter process");
    }
    for (child, tool) in children.into_iter().zip(tools) {
        let out = child.wait_with_output().expect("waiting for counter_tool");
        expect_success(tool, &out);
    }
    let total = run(&rctdb_tool, &["get", &db, "counter"]);
    assert_eq!(total.trim(), (4 * PER_PROCESS).to_string());
    let by_libtdb = run(&libtdb_tool, &["get", &db, "counter"]);
    assert_eq!(by_libtdb.trim(), (4 * PER_PROCESS).to_string());
}
