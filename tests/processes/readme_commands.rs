//! The README smoke test: every command README.md and samba-glue/README.md show is run here,
//! as a new user would type it, with the smallest parameters that still exercise it, and is
//! checked for its exit status and one line of its output; or it is listed in `SHOWN` with
//! the reason it is left out. A command added to a README's `sh` block fails
//! `every_command_the_readmes_show_is_run_here_or_left_out` until it gets its line here.
//!
//! What changes from the READMEs, for every command: the binaries are the ones `cargo test`
//! built (debug, put first on PATH and given to the scripts as RCTDB_BIN_DIR, instead of a
//! release build), each cluster lives in a scratch directory instead of /tmp/c, and it runs
//! on this test's addresses (127.0.70.x to 127.0.77.x) instead of the READMEs' defaults, so
//! that it never meets another test's cluster.
//!
//! | command (README)                                    | here |
//! |-----------------------------------------------------|------|
//! | `./scripts/demo.sh`                                 | `scripts_demo_sh` (`--seconds 3`) |
//! | `./scripts/test.sh`                                 | left out: it is the test command that runs this test |
//! | `./scripts/c_demo.sh`, `./scripts/local_demo.sh`    | `scripts_c_demo_sh`, `scripts_local_demo_sh` (`--keys 2000`, 1 s ring) |
//! | `rctdb help demo`, `rctdbd --help`, `rctdb keygen`  | `help_and_keygen` |
//! | "A cluster by hand", every line                     | `a_cluster_by_hand`, one cluster for all of them |
//! | the "Samba on rctdb" block                          | left out: root, Samba and 127.0.0.2-3:445; tests/samba/samba_cluster.rs and tests/processes/ctdb_tool.rs run them |
//! | `rctdb bench local [--mutex]`, `bench hit`          | `benches_local_and_hit` (2000 / 300 keys, 1 round) |
//! | `rctdb bench ring ...` (3 forms)                    | `bench_ring` (0.5 s each) |
//! | `rctdb bench recovery --records N`                  | `bench_recovery` (300 records, every fault, twice on one `--dir`) |
//! | `rctdb bench churn ... --compare`                   | `bench_churn` (600 keys, 1 round) |
//! | `rctdb bench clients ...`                           | `bench_clients` (20 idle clients, 0.5 s, 1 round) |
//! | `rctdb bench traverse ...`                          | `bench_traverse` (1000 records, 0.5 s, 1 round) |
//! | `benches/*_vs_ctdbd.sh`, `benches/samba_bench.sh`   | left out: root, Samba's ctdbd lab or smbd, minutes; their rctdbd halves are the benches above |
//! | `./scripts/fuzz.sh`, `cargo install cargo-fuzz`     | left out: a release build of the tests (minutes); tests/fuzz_regressions.rs fuzzes briefly |
//! | samba-glue: `make -C samba-glue/preload`            | `samba_glue_preload_build` |
//! | samba-glue: `rctdb cluster up ... --first-address`  | `samba_glue_preload_build` |
//! | samba-glue: smbd with LD_PRELOAD, `test_preload.sh` | left out: root, Samba, 127.0.0.5-6 and 127.0.0.31; tests/samba/samba_preload.rs runs them |

use crate::c_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use c_support::Scratch;

/// How this test treats one command a README shows.
struct Shown {
    readme: &'static str,
    /// As the README shows it (an `sh` block's line without its comment, or a command in
    /// the text), spaces collapsed.
    command: &'static str,
    /// `run: TEST` or `left out: WHY`.
    here: &'static str,
}

const MAIN: &str = "README.md";
const GLUE: &str = "samba-glue/README.md";

const SHOWN: &[Shown] = &[
    Shown { readme: MAIN, command: "./scripts/demo.sh", here: "run: scripts_demo_sh" },
    Shown { readme: MAIN, command: "./scripts/test.sh", here: "left out: the test command itself, which runs this test" },
    Shown { readme: MAIN, command: "./scripts/c_demo.sh", here: "run: scripts_c_demo_sh" },
    Shown { readme: MAIN, command: "./scripts/local_demo.sh", here: "run: scripts_local_demo_sh" },
    Shown { readme: MAIN, command: "rctdb help demo", here: "run: help_and_keygen" },
    Shown { readme: MAIN, command: "rctdbd --help", here: "run: help_and_keygen" },
    Shown { readme: MAIN, command: "rctdb keygen /etc/rctdb/cluster.key", here: "run: help_and_keygen" },
    Shown {
        readme: MAIN,
        command: "cargo build --release && export PATH=$PWD/target/release:$PATH",
        here: "run: a_cluster_by_hand (PATH gets the binaries cargo test built; a release build takes minutes)",
    },
    Shown { readme: MAIN, command: "rctdb cluster up --nodes 3 --dir /tmp/c", here: "run: a_cluster_by_hand" },
    Shown { readme: MAIN, command: "export RCTDB_SOCKET=/tmp/c/node0.sock", here: "run: a_cluster_by_hand" },
    Shown { readme: MAIN, command: "rctdb status", here: "run: a_cluster_by_hand" },
    Shown { readme: MAIN, command: "rctdb statistics", here: "run: a_cluster_by_hand" },
    Shown { readme: MAIN, command: "rctdb statistics --json; rctdb status --json", here: "run: a_cluster_by_hand" },
    Shown { readme: MAIN, command: "rctdb writekey opens.tdb alice \"share mode\"", here: "run: a_cluster_by_hand" },
    Shown {
        readme: MAIN,
        command: "rctdb --socket /tmp/c/node2.sock readkey opens.tdb alice",
        here: "run: a_cluster_by_hand",
    },
    Shown { readme: MAIN, command: "rctdb dump opens.tdb", here: "run: a_cluster_by_hand" },
    Shown { readme: MAIN, command: "rctdb deletekey opens.tdb alice", here: "run: a_cluster_by_hand" },
    Shown { readme: MAIN, command: "ltdbtool dump -p /tmp/c/node2/opens.tdb", here: "run: a_cluster_by_hand" },
    Shown { readme: MAIN, command: "rctdb listvars", here: "run: a_cluster_by_hand" },
    Shown { readme: MAIN, command: "rctdb setvar KeepaliveLimit 10", here: "run: a_cluster_by_hand" },
    Shown { readme: MAIN, command: "rctdb --socket /tmp/c/node2.sock quiet", here: "run: a_cluster_by_hand" },
    Shown { readme: MAIN, command: "rctdb --socket /tmp/c/node2.sock unquiet", here: "run: a_cluster_by_hand" },
    Shown { readme: MAIN, command: "kill -9 $(cat /tmp/c/node1.pid)", here: "run: a_cluster_by_hand" },
    Shown { readme: MAIN, command: "rctdb --socket /tmp/c/node0.sock stop", here: "run: a_cluster_by_hand" },
    Shown { readme: MAIN, command: "rctdb cluster down --dir /tmp/c", here: "run: a_cluster_by_hand" },
    Shown {
        readme: MAIN,
        command: "samba-glue/cluster.sh up /tmp/s",
        here: "left out: root, Samba and 127.0.0.2-3:445; tests/samba/samba_cluster.rs runs cluster.sh up and down",
    },
    Shown {
        readme: MAIN,
        command: "smbclient //127.0.0.2/share -U root%Rctdb.Pass1",
        here: "left out: needs the Samba cluster above; test_samba.sh (tests/samba/samba_cluster.rs) uses smbclient on it",
    },
    Shown {
        readme: MAIN,
        command: "CTDB_SOCKET=/tmp/s/rctdb/node0.sock ctdb status",
        here: "left out: needs the Samba cluster above; tests/processes/ctdb_tool.rs runs ctdb status on rctdbd",
    },
    Shown {
        readme: MAIN,
        command: "CTDB_SOCKET=/tmp/s/rctdb/node1.sock ctdb catdb locking.tdb",
        here: "left out: needs the Samba cluster above; tests/processes/ctdb_tool.rs runs ctdb catdb on rctdbd",
    },
    Shown {
        readme: MAIN,
        command: "samba-glue/cluster.sh down /tmp/s",
        here: "left out: root, Samba and 127.0.0.2-3:445; tests/samba/samba_cluster.rs runs cluster.sh up and down",
    },
    Shown {
        readme: MAIN,
        command: "cargo build --release && target/release/rctdb bench local",
        here: "run: benches_local_and_hit (on the debug build, --keys 2000 --rounds 1)",
    },
    Shown {
        readme: MAIN,
        command: "target/release/rctdb bench local --mutex",
        here: "run: benches_local_and_hit (--keys 2000 --rounds 1)",
    },
    Shown {
        readme: MAIN,
        command: "target/release/rctdb bench hit",
        here: "run: benches_local_and_hit (--keys 300 --rounds 1)",
    },
    Shown {
        readme: MAIN,
        command: "benches/ring_vs_ctdbd.sh 5",
        here: "left out: root and Samba's ctdbd lab (../shared/anchors) on 127.0.0.11-13; its rctdbd half is \
               `rctdb cluster up` and `rctdb bench ring`, run here",
    },
    Shown {
        readme: MAIN,
        command: "rctdb bench ring --nodes 2 --seconds 5 [--lmaster other]",
        here: "run: bench_ring (--seconds 0.5, both placements)",
    },
    Shown {
        readme: MAIN,
        command: "rctdb bench ring --nodes 3 --seconds 60 --cpu-hog",
        here: "run: bench_ring (--seconds 0.5)",
    },
    Shown {
        readme: MAIN,
        command: "rctdb bench recovery --records N",
        here: "run: bench_recovery (--records 300, every fault, twice on one --dir)",
    },
    Shown {
        readme: MAIN,
        command: "rctdb bench recovery --records 100000",
        here: "run: bench_recovery (with 300 records)",
    },
    Shown {
        readme: MAIN,
        command: "benches/recovery_vs_ctdbd.sh",
        here: "left out: root and Samba's ctdbd lab; ctdbd's own failure tests take minutes (25 s to detect a \
               death); its rctdbd half is `rctdb bench recovery`, run here",
    },
    Shown {
        readme: MAIN,
        command: "benches/samba_bench.sh",
        here: "left out: root, smbd and ctdbd on 127.0.0.2-3 and port 445, 3-4 minutes",
    },
    Shown {
        readme: MAIN,
        command: "rctdb bench churn --keys 90000 --vacuum-interval 1000 --compare --rounds 3",
        here: "run: bench_churn (--keys 600 --rounds 1)",
    },
    Shown {
        readme: MAIN,
        command: "rctdb bench churn --keys 450000 --vacuum-interval 10000 --compare",
        here: "left out: the same bench as the line above with more keys and a 10 s vacuum interval, which makes \
               its drain last 10 s at least",
    },
    Shown {
        readme: MAIN,
        command: "rctdb bench clients --seconds 3 --rounds 5",
        here: "run: bench_clients (--many 20 --seconds 0.5 --rounds 1)",
    },
    Shown {
        readme: MAIN,
        command: "rctdb bench traverse --rounds 5",
        here: "run: bench_traverse (--records 1000 --seconds 0.5 --rounds 1)",
    },
    Shown {
        readme: MAIN,
        command: "RCTDB_BLESS=1 cargo test --test header",
        here: "left out: a test command (tests/header.rs runs in cargo test)",
    },
    Shown {
        readme: MAIN,
        command: "./scripts/fuzz.sh [SECONDS]",
        here: "left out: a release build of the test suite first (minutes); tests/fuzz_regressions.rs runs the \
               stable fuzzer briefly in cargo test",
    },
    Shown {
        readme: MAIN,
        command: "cargo install cargo-fuzz",
        here: "left out: installs a tool from crates.io",
    },
    Shown { readme: GLUE, command: "make -C samba-glue/preload", here: "run: samba_glue_preload_build" },
    Shown {
        readme: GLUE,
        command: "cargo build --release",
        here: "left out: the build (minutes in release); cargo test built what the other commands run",
    },
    Shown {
        readme: GLUE,
        command: "rctdb cluster up --dir /tmp/c --nodes 2 --first-address 127.0.0.31",
        here: "run: samba_glue_preload_build (on 127.0.77.31)",
    },
    Shown {
        readme: GLUE,
        command: "LD_PRELOAD=$PWD/samba-glue/preload/build/libtdb-rctdb.so \
                  RCTDB_LIBRCTDB=$PWD/target/release/librctdb.so RCTDB_SOCKET=/tmp/c/node0.sock \
                  /usr/sbin/smbd --foreground --no-process-group -s smb.conf",
        here: "left out: root and Samba, a server that runs until stopped, with an smb.conf of the reader's; \
               tests/samba/samba_preload.rs runs smbd on the preload (test_preload.sh smbd)",
    },
    Shown {
        readme: GLUE,
        command: "samba-glue/preload/test_preload.sh",
        here: "left out: root and Samba, ~17 min; tests/samba/samba_preload.rs runs its unit and split parts",
    },
    Shown {
        readme: GLUE,
        command: "samba-glue/preload/test_preload.sh unit",
        here: "left out: root and smbd, its cluster on 127.0.0.31; tests/samba/samba_preload.rs runs it",
    },
];

const TESTS: &[&str] = &[
    "scripts_demo_sh",
    "scripts_c_demo_sh",
    "scripts_local_demo_sh",
    "help_and_keygen",
    "a_cluster_by_hand",
    "benches_local_and_hit",
    "bench_ring",
    "bench_recovery",
    "bench_churn",
    "bench_clients",
    "bench_traverse",
    "samba_glue_preload_build",
];

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The commands of a README's `sh` blocks, each with the title of the section it is in:
/// continuation lines joined, comments and comment-only lines dropped.
fn sh_blocks(readme: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(root().join(readme)).expect(readme);
    let (mut commands, mut section, mut in_sh, mut pending) = (vec![], String::new(), false, String::new());
    for line in text.lines() {
        if !in_sh {
            if let Some(title) = line.strip_prefix("## ") {
                section = title.trim().to_owned();
            }
            in_sh = line.trim() == "```sh";
            continue;
        }
        if line.trim() == "```" {
            in_sh = false;
            continue;
        }
        let code = line.split(" #").next().unwrap_or("");
        let code = if code.trim_start().starts_with('#') { "" } else { code };
        match code.trim_end().strip_suffix('\\') {
            Some(head) => pending.push_str(&format!("{head} ")),
            None => {
                let command = collapse(&format!("{pending}{code}"));
                pending.clear();
                if !command.is_empty() {
                    commands.push((section.clone(), command));
                }
            }
        }
    }
    commands
}

#[test]
fn every_command_the_readmes_show_is_run_here_or_left_out() {
    for readme in [MAIN, GLUE] {
        for (_, command) in sh_blocks(readme) {
            let listed = SHOWN.iter().any(|s| s.readme == readme && collapse(s.command) == command);
            assert!(
                listed,
                "{readme} shows `{command}`: run it in tests/processes/readme_commands.rs or say why not (SHOWN)"
            );
        }
    }
    for shown in SHOWN {
        let text = collapse(&std::fs::read_to_string(root().join(shown.readme)).unwrap());
        let command = collapse(shown.command);
        let in_block = sh_blocks(shown.readme).iter().any(|(_, c)| *c == command);
        assert!(
            in_block || text.contains(&command),
            "SHOWN lists `{command}`, which {} no longer shows",
            shown.readme
        );
        match shown.here.split_once(": ") {
            Some(("run", test)) => {
                let name = test.split_whitespace().next().unwrap_or("");
                assert!(TESTS.contains(&name), "`{command}` is run by {name}, which is not a test here");
            }
            Some(("left out", why)) => assert!(why.len() > 10, "`{command}` is left out without a reason"),
            _ => panic!("`{command}`: `here` must say `run: TEST` or `left out: WHY`"),
        }
    }
}

// ---- running commands

/// rctdb, rctdbd and librctdb.so of this `cargo test`, in one directory: PATH's first entry
/// and the scripts' RCTDB_BIN_DIR.
fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("readme-bin-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let links = [
            ("rctdb", PathBuf::from(env!("CARGO_BIN_EXE_rctdb"))),
            ("rctdbd", PathBuf::from(env!("CARGO_BIN_EXE_rctdbd"))),
            ("librctdb.so", c_support::lib_dir().join("librctdb.so")),
        ];
        for (name, target) in links {
            std::os::unix::fs::symlink(&target, dir.join(name)).unwrap();
        }
        dir
    })
}

/// Runs `command` with bash in the repository, this test's binaries first on PATH and no
/// RCTDB_SOCKET unless `env` sets it; killed after `limit`.
fn sh(command: &str, env: &[(&str, String)], limit: Duration) -> Output {
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("timeout");
    cmd.arg("--kill-after=5")
        .arg(format!("{}", limit.as_secs().max(1)))
        .args(["bash", "-c", command])
        .current_dir(root())
        .env("PATH", path)
        .env("RCTDB_BIN_DIR", bin_dir())
        .env_remove("RCTDB_SOCKET");
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd.output().unwrap_or_else(|e| panic!("running bash for `{command}`: {e}"))
}

/// Checks that `command` succeeded and printed a line containing `line`; returns stdout.
fn expect(command: &str, out: &Output, line: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "`{command}` failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(
        stdout.lines().any(|l| l.contains(line)),
        "`{command}` printed no line with {line:?}:\n{stdout}\n{stderr}"
    );
    stdout
}

fn run(command: &str, line: &str, limit: Duration) -> String {
    expect(command, &sh(command, &[], limit), line)
}

const MINUTE: Duration = Duration::from_secs(60);

// ---- the scripts

#[test]
fn scripts_demo_sh() {
    let scratch = Scratch::new("readme-demo");
    let command =
        format!("./scripts/demo.sh --seconds 3 --first-address 127.0.71.61 --dir {}", scratch.arg("demo"));
    run(&command, "no lost update", 3 * MINUTE);
}

#[test]
fn scripts_c_demo_sh() {
    let scratch = Scratch::new("readme-c-demo");
    let command = format!(
        "FIRST_ADDRESS=127.0.72.11 RING_ADDRESS=127.0.72.31 RING_SECONDS=1 ./scripts/c_demo.sh {}",
        scratch.arg("cluster")
    );
    let stdout = run(&command, "node 2 reads hits = 6000", 3 * MINUTE);
    assert!(stdout.contains("rctdbd migrations"), "the demo ends with the migration benchmark:\n{stdout}");
}

#[test]
fn scripts_local_demo_sh() {
    run("./scripts/local_demo.sh --keys 2000 --rounds 1 --hash-size 131", "ratio (C ABI / raw)", 2 * MINUTE);
}

#[test]
fn help_and_keygen() {
    run("rctdb help demo", "WHAT IT SHOWS", MINUTE);
    run("rctdbd --help", "--cluster-key", MINUTE);
    let scratch = Scratch::new("readme-keygen");
    let key = scratch.path("cluster.key");
    run(&format!("rctdb keygen {}", key.display()), "cluster key written to", MINUTE);
    assert_eq!(std::fs::metadata(&key).map(|m| m.len()).unwrap_or(0), 32, "32 random bytes");
}

// ---- A cluster by hand

/// What each line of the README's "A cluster by hand" block must do, in its order.
enum Check {
    /// It prints a line containing this.
    Line(&'static str),
    /// It prints nothing; then the command given (run as the README's lines are) shows a
    /// line containing this within 10 s.
    Then(&'static str, &'static str),
    /// Run again until a line contains this, for up to 10 s.
    Eventually(&'static str),
    /// Sets the environment of the lines after it.
    Env,
}

const BY_HAND: &[(&str, Check)] = &[
    ("cargo build --release && export PATH=$PWD/target/release:$PATH", Check::Env),
    ("rctdb cluster up --nodes 3 --dir /tmp/c", Check::Line("3 nodes up in")),
    ("export RCTDB_SOCKET=/tmp/c/node0.sock", Check::Env),
    ("rctdb status", Check::Line("node 2 127.0.70.13 alive link-up")),
    ("rctdb statistics", Check::Line("migrations in (records that came here)")),
    ("rctdb statistics --json; rctdb status --json", Check::Line("\"state\": \"active\"")),
    ("rctdb writekey opens.tdb alice \"share mode\"", Check::Then("rctdb status", "db opens.tdb")),
    ("rctdb --socket /tmp/c/node2.sock readkey opens.tdb alice", Check::Line("share mode")),
    ("rctdb dump opens.tdb", Check::Line("1 records")),
    ("rctdb deletekey opens.tdb alice", Check::Then("rctdb dump opens.tdb", "0 records")),
    ("ltdbtool dump -p /tmp/c/node2/opens.tdb", Check::Line("key(5) = \"alice\"")),
    ("rctdb listvars", Check::Line("KeepaliveIntervalMs        = 100")),
    (
        "rctdb setvar KeepaliveLimit 10",
        Check::Then("rctdb getvar KeepaliveLimit", "KeepaliveLimit             = 10"),
    ),
    (
        "rctdb --socket /tmp/c/node2.sock quiet",
        Check::Then("rctdb --socket /tmp/c/node1.sock status", "node 2 127.0.70.13 dead"),
    ),
    ("rctdb status", Check::Eventually("node 2 127.0.70.13 dead")),
    (
        "rctdb --socket /tmp/c/node2.sock unquiet",
        Check::Then("rctdb status", "node 2 127.0.70.13 alive link-up"),
    ),
    ("kill -9 $(cat /tmp/c/node1.pid)", Check::Then("rctdb status", "node 1 127.0.70.12 dead")),
    (
        "rctdb --socket /tmp/c/node0.sock stop",
        Check::Then("rctdb --socket /tmp/c/node2.sock status", "node 0 127.0.70.11 dead"),
    ),
    // How many it stops depends on whether node 0 and 1 were reaped yet: not counted.
    ("rctdb cluster down --dir /tmp/c", Check::Line(" nodes")),
];

/// Stops the cluster of `a_cluster_by_hand` whatever happens.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = sh(&format!("rctdb cluster down --dir {}", self.0.display()), &[], MINUTE);
    }
}

/// Runs `command` until a line of its output contains `line` (10 s at most).
fn eventually(command: &str, env: &[(&str, String)], line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = sh(command, env, MINUTE);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && stdout.lines().any(|l| l.contains(line)) {
            return;
        }
        assert!(Instant::now() < deadline, "`{command}` showed no {line:?} within 10 s; last:\n{stdout}");
        std::thread::sleep(Duration::from_millis(50)); // polling a cluster's state
    }
}

#[test]
fn a_cluster_by_hand() {
    let block: Vec<String> = sh_blocks(MAIN)
        .into_iter()
        .filter(|(section, _)| section == "A cluster by hand")
        .map(|(_, command)| command)
        .collect();
    let expected: Vec<String> = BY_HAND.iter().map(|(command, _)| collapse(command)).collect();
    assert_eq!(
        block, expected,
        "README's \"A cluster by hand\" changed: give each line its check in BY_HAND"
    );
    let scratch = Scratch::new("readme-by-hand");
    let dir = scratch.path("c");
    let _down = Down(dir.clone());
    let dir_text = dir.display().to_string();
    let mut env: Vec<(&str, String)> = vec![];
    for (shown, check) in BY_HAND {
        let mut command = shown.replace("/tmp/c", &dir_text);
        if command.starts_with("rctdb cluster up") {
            command.push_str(" --first-address 127.0.70.11");
        }
        match check {
            Check::Env => {
                if let Some((name, value)) =
                    command.strip_prefix("export RCTDB_SOCKET=").map(|v| ("RCTDB_SOCKET", v))
                {
                    env.push((name, value.to_owned()));
                }
            }
            Check::Line(line) => {
                expect(&command, &sh(&command, &env, MINUTE), line);
            }
            Check::Eventually(line) => eventually(&command, &env, line),
            Check::Then(then, line) => {
                let out = sh(&command, &env, MINUTE);
                assert!(out.status.success(), "`{command}` failed: {}", String::from_utf8_lossy(&out.stderr));
                assert!(
                    out.stdout.is_empty(),
                    "`{command}` prints nothing: {}",
                    String::from_utf8_lossy(&out.stdout)
                );
                eventually(&then.replace("/tmp/c", &dir_text), &env, line);
            }
        }
    }
    assert_eq!(processes_of(&dir), Vec::<String>::new(), "every daemon of the cluster is gone");
}

/// Processes whose command line mentions `dir` (a zombie's is empty).
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

// ---- the benches

#[test]
fn benches_local_and_hit() {
    run("rctdb bench local --keys 2000 --rounds 1 --hash-size 131", "ratio (C ABI / raw)", MINUTE);
    run("rctdb bench local --mutex --keys 2000 --rounds 1 --hash-size 131", "ratio (C ABI / raw)", MINUTE);
    let scratch = Scratch::new("readme-hit");
    let command =
        format!("rctdb bench hit --keys 300 --rounds 1 --address 127.0.73.41 --dir {}", scratch.arg("hit"));
    run(&command, "ratio (rctdb / raw)", MINUTE);
}

#[test]
fn bench_ring() {
    let scratch = Scratch::new("readme-ring");
    let dir = scratch.arg("ring");
    for args in ["--nodes 2", "--nodes 2 --lmaster other"] {
        let command =
            format!("rctdb bench ring {args} --seconds 0.5 --first-address 127.0.73.31 --dir {dir}");
        run(&command, "rctdbd migrations", MINUTE);
    }
    let command =
        format!("rctdb bench ring --nodes 3 --seconds 0.5 --cpu-hog --first-address 127.0.73.31 --dir {dir}");
    run(&command, "nodes declared dead during the run", MINUTE);
}

/// A fresh directory, then the same one again with what the first run left in it.
#[test]
fn bench_recovery() {
    let scratch = Scratch::new("readme-recovery");
    let command = format!(
        "rctdb bench recovery --records 300 --moved 30 --first-address 127.0.74.51 --dir {}",
        scratch.arg("recovery")
    );
    for run_number in [1, 2] {
        let stdout = run(&command, "records lost", 2 * MINUTE);
        // The table's rows, not the lines printed as each scenario ends ("...: node 2 seen").
        let rows: Vec<&str> =
            stdout.lines().filter(|l| l.starts_with("rejoin node") && !l.contains(':')).collect();
        assert_eq!(rows.len(), 3, "run {run_number}: a rejoin row per fault (kill, stop, leader):\n{stdout}");
        assert!(
            rows.iter().all(|r| r.contains(" ok ")),
            "run {run_number}: nothing lost that may not be:\n{stdout}"
        );
    }
}

/// `rctdb bench NAME ARGS --dir D` in a scratch directory of its own; its output must show
/// `expect`.
fn bench(name: &str, args: &str, expect: &str, limit: Duration) {
    let scratch = Scratch::new(&format!("readme-{name}"));
    let command = format!("rctdb bench {name} {args} --dir {}", scratch.arg(name));
    run(&command, expect, limit);
}

#[test]
fn bench_churn() {
    let args = "--keys 600 --vacuum-interval 1000 --compare --rounds 1 --first-address 127.0.75.71";
    bench("churn", args, "keys left", 3 * MINUTE);
}

#[test]
fn bench_clients() {
    bench("clients", "--many 20 --seconds 0.5 --rounds 1 --first-address 127.0.76.81", "ratio", 2 * MINUTE);
}

#[test]
fn bench_traverse() {
    let args = "--records 1000 --seconds 0.5 --rounds 1 --first-address 127.0.77.91";
    bench("traverse", args, "during traverses", 2 * MINUTE);
}

// ---- samba-glue/README.md

/// The preload's build, and the cluster its README starts for it (the smbd on top needs
/// root and Samba: see SHOWN).
#[test]
fn samba_glue_preload_build() {
    run("make -C samba-glue/preload", "", MINUTE);
    assert!(root().join("samba-glue/preload/build/libtdb-rctdb.so").is_file(), "make builds the preload");
    let scratch = Scratch::new("readme-glue");
    let dir = scratch.arg("c");
    let _down = Down(PathBuf::from(&dir));
    run(
        &format!("rctdb cluster up --dir {dir} --nodes 2 --first-address 127.0.77.31"),
        "2 nodes up in",
        MINUTE,
    );
}
