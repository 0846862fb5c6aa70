//! What the C test runners share: scratch directories, building tests/c/<program>.c with gcc
//! against include/rctdb.h and the librctdb.so that cargo built for this very test run, and
//! running the programs (bounded in time where they talk to a cluster).

#![allow(dead_code)] // each test crate uses its own part

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Output, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

/// A fresh directory for one test, removed when the test ends.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rctdb-c-{}-{n}-{test}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating a scratch directory");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    pub fn arg(&self, name: &str) -> String {
        self.path(name).to_str().expect("UTF-8 temp path").to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where this run's librctdb.so is: `cargo test` builds the cdylib next to the test
/// executables (target/<profile>/deps/), `cargo build` one level up.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let deps = exe.parent().expect("target/<profile>/deps").to_path_buf();
    let candidates = [deps.clone(), deps.parent().map(Path::to_path_buf).unwrap_or_default()];
    candidates.into_iter().find(|dir| dir.join("librctdb.so").is_file()).unwrap_or_else(|| {
        panic!("librctdb.so is neither in {} nor its parent: run `cargo build --lib` first", deps.display())
    })
}

/// Compiles tests/c/<program>.c into `scratch`; `libtdb` builds it against libtdb itself.
pub fn build(scratch: &Scratch, program: &str, libtdb: bool) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = scratch.path(if libtdb { format!("{program}-libtdb") } else { program.to_string() }.as_str());
    let mut gcc = Command::new("gcc");
    gcc.args(["-std=gnu11", "-O1", "-Wall", "-Wextra", "-Werror"])
        .arg("-I")
        .arg(root.join("include"))
        .arg("-o")
        .arg(&exe)
        .arg(root.join("tests/c").join(format!("{program}.c")));
    if libtdb {
        gcc.args(["-DUSE_LIBTDB", "-ltdb"]);
    } else {
        gcc.arg("-L").arg(lib_dir()).arg("-lrctdb");
    }
    let out = gcc.output().expect("running gcc (apt-get install gcc libtdb-dev)");
    assert!(out.status.success(), "gcc failed on {program}.c:\n{}", String::from_utf8_lossy(&out.stderr));
    exe
}

/// A command for a test program: this run's librctdb.so, and no cluster unless the caller
/// sets RCTDB_SOCKET.
pub fn command(exe: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env("LD_LIBRARY_PATH", lib_dir()).env_remove("RCTDB_SOCKET").env_remove("RCTDB_MIGRATE_TIMEOUT_MS");
    cmd
}

/// Runs a program to the end; it must succeed. Returns its standard output.
pub fn run(exe: &Path, args: &[&str]) -> String {
    let out = command(exe).args(args).output().expect("running a test program");
    expect_success(exe, &out)
}

pub fn expect_success(what: &Path, out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} failed ({}):\nstdout:\n{stdout}\nstderr:\n{}",
        what.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Waits for `child` until `deadline`; past it the child is killed and `None` returned.
pub fn wait_until(child: &mut std::process::Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().expect("waiting for a test program") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10)); // polling a child's exit, not a race
    }
}

/// Runs `cmd` to the end within `limit` (killed past it, which fails the test), output
/// captured in files under `scratch` so that no pipe can fill up. Returns its output.
pub fn run_bounded(scratch: &Scratch, name: &str, mut cmd: Command, limit: Duration) -> Output {
    let stdout_path = scratch.path(&format!("{name}.stdout"));
    let stderr_path = scratch.path(&format!("{name}.stderr"));
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).expect("creating a stdout file"))
        .stderr(std::fs::File::create(&stderr_path).expect("creating a stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let status = wait_until(&mut child, Instant::now() + limit);
    let stdout = std::fs::read(&stdout_path).unwrap_or_default();
    let stderr = std::fs::read(&stderr_path).unwrap_or_default();
    let Some(status) = status else {
        panic!(
            "{name} did not finish within {limit:?} (killed):\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&stdout),
            String::from_utf8_lossy(&stderr)
        );
    };
    Output { status, stdout, stderr }
}
