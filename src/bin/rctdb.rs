//! The `rctdb` command line: benchmarks now; cluster control and status to come.

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use clap::{Parser, Subcommand};
use rctdb::{
    capi::{rctdb_close, rctdb_fetch, rctdb_open, rctdb_open_error, rctdb_store},
    local::{bench_baseline::RawTdb, flags, TDB_DATA},
};

#[derive(Parser)]
#[command(name = "rctdb", version, about = "rctdb: a clustered TDB (CTDB's record migration, in Rust)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure rctdb.
    Bench {
        #[command(subcommand)]
        bench: BenchCmd,
    },
}

#[derive(Subcommand)]
enum BenchCmd {
    /// fetch+store of every key through the C ABI and through raw libtdb, in alternating
    /// rounds in one process, and their ratio (C ABI / raw; 1.0 means no overhead).
    Local {
        /// Number of records.
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        /// Bytes per value.
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Measured rounds per side (each a pass over all keys); the median counts.
        #[arg(long, default_value_t = 7)]
        rounds: usize,
        /// Hash chains (CTDB sizes its databases with 100001).
        #[arg(long, default_value_t = 100_003)]
        hash_size: i32,
        /// Robust mutexes instead of fcntl locks (TDB_MUTEX_LOCKING, as CTDB's volatile dbs).
        #[arg(long)]
        mutex: bool,
        /// Directory for the two database files (default: a fresh one under $TMPDIR).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() {
    env_logger::init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Bench { bench: BenchCmd::Local { keys, value_size, rounds, hash_size, mutex, dir } } => {
            let tdb_flags = if mutex {
                flags::TDB_MUTEX_LOCKING | flags::TDB_INCOMPATIBLE_HASH | flags::TDB_CLEAR_IF_FIRST
            } else {
                flags::TDB_DEFAULT
            };
            bench_local(&LocalBench { keys, value_size, rounds: rounds.max(1), hash_size, tdb_flags }, dir)
        }
    };
    if let Err(message) = result {
        eprintln!("rctdb: {message}");
        std::process::exit(1);
    }
}

struct LocalBench {
    keys: usize,
    value_size: usize,
    rounds: usize,
    hash_size: i32,
    tdb_flags: i32,
}

fn bench_local(bench: &LocalBench, dir: Option<PathBuf>) -> Result<(), String> {
    let (dir, remove_dir) = match dir {
        Some(dir) => (dir, false),
        None => (std::env::temp_dir().join(format!("rctdb-bench-{}", std::process::id())), true),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let result = run_local_bench(bench, &dir);
    if remove_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn run_local_bench(bench: &LocalBench, dir: &Path) -> Result<(), String> {
    let keys: Vec<Vec<u8>> = (0..bench.keys).map(|i| format!("key-{i:08}").into_bytes()).collect();
    let value = vec![b'v'; bench.value_size];
    let capi = CapiDb::create(&dir.join("capi.tdb"), bench.hash_size, bench.tdb_flags)?;
    let raw = RawTdb::create(&dir.join("raw.tdb"), bench.hash_size, bench.tdb_flags)
        .map_err(|e| format!("tdb_open for the baseline: {e}"))?;

    println!(
        "bench local: {} keys, {}-byte values, hash size {}, {} locks, {} rounds per side",
        bench.keys,
        bench.value_size,
        bench.hash_size,
        if bench.tdb_flags & flags::TDB_MUTEX_LOCKING != 0 { "mutex" } else { "fcntl" },
        bench.rounds
    );
    // The first pass of each side creates the records: not measured.
    capi.fetch_store_pass(&keys, &value);
    raw.fetch_store_pass(&keys, &value);

    let (mut capi_rates, mut raw_rates) = (Vec::new(), Vec::new());
    for round in 0..bench.rounds {
        // Alternate which side goes first, so that drift in the machine's speed cancels.
        let mut measure_capi = || capi_rates.push(rate(keys.len(), || capi.fetch_store_pass(&keys, &value)));
        let mut measure_raw = || raw_rates.push(rate(keys.len(), || raw.fetch_store_pass(&keys, &value)));
        if round % 2 == 0 {
            measure_capi();
            measure_raw();
        } else {
            measure_raw();
            measure_capi();
        }
        println!(
            "  round {}: C ABI {:>9.0} /s   raw libtdb {:>9.0} /s",
            round + 1,
            capi_rates[round],
            raw_rates[round]
        );
    }
    let (capi_median, raw_median) = (median(&mut capi_rates), median(&mut raw_rates));
    println!("fetch+store pairs per second (median of {} rounds):", bench.rounds);
    println!("  rctdb C ABI  {capi_median:>10.0} /s  ({:.2} us per pair)", 1e6 / capi_median);
    println!("  raw libtdb   {raw_median:>10.0} /s  ({:.2} us per pair)", 1e6 / raw_median);
    println!("  ratio (C ABI / raw) {:.3}", capi_median / raw_median);
    capi.close()
}

/// Pairs per second of one pass over `count` keys.
fn rate(count: usize, pass: impl FnOnce() -> usize) -> f64 {
    let start = Instant::now();
    let found = pass();
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(found, count, "every key must be found after the first pass");
    count as f64 / elapsed
}

fn median(rates: &mut [f64]) -> f64 {
    rates.sort_by(f64::total_cmp);
    rates[rates.len() / 2]
}

/// A database opened through the C ABI, driven exactly as a C program would.
struct CapiDb(*mut rctdb::capi::rctdb_context);

impl CapiDb {
    fn create(path: &Path, hash_size: i32, tdb_flags: i32) -> Result<CapiDb, String> {
        let c_path =
            std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        let open_flags = libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC;
        // SAFETY: c_path is a NUL-terminated string that outlives the call.
        let db = unsafe { rctdb_open(c_path.as_ptr(), hash_size, tdb_flags, open_flags, 0o600) };
        if db.is_null() {
            // SAFETY: rctdb_open_error returns a NUL-terminated string valid until the next open.
            let why = unsafe { std::ffi::CStr::from_ptr(rctdb_open_error()) };
            return Err(why.to_string_lossy().into_owned());
        }
        Ok(CapiDb(db))
    }

    /// The same loop as `RawTdb::fetch_store_pass`, through rctdb_fetch and rctdb_store.
    fn fetch_store_pass(&self, keys: &[Vec<u8>], value: &[u8]) -> usize {
        let mut found = 0;
        let data = TDB_DATA { dptr: value.as_ptr() as *mut u8, dsize: value.len() };
        for key in keys {
            let key = TDB_DATA { dptr: key.as_ptr() as *mut u8, dsize: key.len() };
            // SAFETY: the context is open; key and value outlive the calls and are not
            // written; rctdb_fetch's result is malloc'd and ours to free.
            unsafe {
                let old = rctdb_fetch(self.0, key);
                if !old.dptr.is_null() {
                    found += 1;
                    libc::free(old.dptr.cast());
                }
                let rc = rctdb_store(self.0, key, data, flags::TDB_REPLACE);
                assert_eq!(rc, 0, "rctdb_store failed in the benchmark loop");
            }
        }
        found
    }

    fn close(self) -> Result<(), String> {
        // SAFETY: the context is open and not used after this.
        match unsafe { rctdb_close(self.0) } {
            0 => Ok(()),
            _ => Err("rctdb_close failed".into()),
        }
    }
}
