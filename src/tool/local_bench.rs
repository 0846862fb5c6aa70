//! `rctdb bench local`: fetch+store through the C ABI against raw libtdb, in one process.

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::capi::{rctdb_close, rctdb_fetch, rctdb_open, rctdb_open_error, rctdb_store};
use crate::local::{bench_baseline::RawTdb, flags, TDB_DATA};

pub struct LocalBench {
    pub keys: usize,
    pub value_size: usize,
    pub rounds: usize,
    pub hash_size: i32,
    pub tdb_flags: i32,
}

pub fn bench_local(bench: &LocalBench, dir: Option<PathBuf>) -> Result<(), String> {
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
struct CapiDb(*mut crate::capi::rctdb_context);

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
