//! The local paths against raw libtdb, in one process: `rctdb bench local` (fetch+store
//! through the C ABI on a plain tdb) and `rctdb bench hit` (Samba's locked read-modify-write
//! of records a cluster node already holds: what every repeated access costs).

use std::path::{Path, PathBuf};
use std::time::Instant;

use super::bench_baseline::{Locking, RawTdb};
use crate::capi::{
    rctdb_chainlock, rctdb_chainunlock, rctdb_close, rctdb_fetch, rctdb_open, rctdb_open_error, rctdb_store,
};
use crate::local::{flags, TDB_DATA};
use crate::tool::cluster::{ClusterSpec, RunningCluster};

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
    let (capi_median, raw_median) = compare(
        bench.rounds,
        keys.len(),
        || capi.pass(&keys, &value, Locking::Unlocked),
        || raw.pass(&keys, &value, Locking::Unlocked),
        |round, capi, raw| println!("  round {round}: C ABI {capi:>9.0} /s   raw libtdb {raw:>9.0} /s"),
    );
    println!("fetch+store pairs per second (median of {} rounds):", bench.rounds);
    println!("  rctdb C ABI  {capi_median:>10.0} /s  ({:.2} us per pair)", 1e6 / capi_median);
    println!("  raw libtdb   {raw_median:>10.0} /s  ({:.2} us per pair)", 1e6 / raw_median);
    println!("  ratio (C ABI / raw) {:.3}", capi_median / raw_median);
    capi.close()
}

/// Runs `ours` and `raw` (each one pass over `count` keys) for `rounds` rounds after an
/// unmeasured first pass that creates the records, alternating which goes first so that
/// drift in the machine's speed cancels; returns both medians in passes' keys per second.
fn compare(
    rounds: usize,
    count: usize,
    ours: impl Fn() -> usize,
    raw: impl Fn() -> usize,
    mut each_round: impl FnMut(usize, f64, f64),
) -> (f64, f64) {
    ours();
    raw();
    let (mut ours_rates, mut raw_rates) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            ours_rates.push(rate(count, &ours));
            raw_rates.push(rate(count, &raw));
        } else {
            raw_rates.push(rate(count, &raw));
            ours_rates.push(rate(count, &ours));
        }
        each_round(round + 1, ours_rates[round], raw_rates[round]);
    }
    (median(&mut ours_rates), median(&mut raw_rates))
}

/// Pairs per second of one pass over `count` keys.
fn rate(count: usize, pass: impl Fn() -> usize) -> f64 {
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
        CapiDb::open(path, hash_size, tdb_flags, libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC)
    }

    fn open(path: &Path, hash_size: i32, tdb_flags: i32, open_flags: i32) -> Result<CapiDb, String> {
        let c_path =
            std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: c_path is a NUL-terminated string that outlives the call.
        let db = unsafe { rctdb_open(c_path.as_ptr(), hash_size, tdb_flags, open_flags, 0o600) };
        if db.is_null() {
            // SAFETY: rctdb_open_error returns a NUL-terminated string valid until the next open.
            let why = unsafe { std::ffi::CStr::from_ptr(rctdb_open_error()) };
            return Err(why.to_string_lossy().into_owned());
        }
        Ok(CapiDb(db))
    }

    /// The same loop as `RawTdb::pass`, through the C ABI.
    fn pass(&self, keys: &[Vec<u8>], value: &[u8], locking: Locking) -> usize {
        let mut found = 0;
        let data = TDB_DATA { dptr: value.as_ptr() as *mut u8, dsize: value.len() };
        let locked = locking == Locking::ChainLocked;
        for key in keys {
            let key = TDB_DATA { dptr: key.as_ptr() as *mut u8, dsize: key.len() };
            // SAFETY: the context is open; key and value outlive the calls and are not
            // written; rctdb_fetch's result is malloc'd and ours to free.
            unsafe {
                if locked {
                    assert_eq!(
                        rctdb_chainlock(self.0, key),
                        0,
                        "rctdb_chainlock failed in the benchmark loop"
                    );
                }
                let old = rctdb_fetch(self.0, key);
                if !old.dptr.is_null() {
                    found += 1;
                    libc::free(old.dptr.cast());
                }
                assert_eq!(rctdb_store(self.0, key, data, flags::TDB_REPLACE), 0, "rctdb_store failed");
                if locked {
                    assert_eq!(rctdb_chainunlock(self.0, key), 0, "rctdb_chainunlock failed");
                }
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

pub struct HitBench {
    pub keys: usize,
    pub value_size: usize,
    pub rounds: usize,
    pub dir: PathBuf,
    /// Address of the one-node cluster the bench starts.
    pub address: std::net::Ipv4Addr,
}

/// chainlock + fetch + store + chainunlock of records this node holds, through the C ABI on
/// a clustered database, against the same on a raw libtdb file with the same tdb flags and
/// hash size, in alternating rounds. A one-node cluster: what is measured is the local hit,
/// which never talks to the daemon whatever the cluster's size.
pub fn bench_hit(bench: &HitBench) -> Result<(), String> {
    let mut spec = ClusterSpec::new(1, &bench.dir);
    spec.first_address = bench.address;
    let cluster = RunningCluster::start(spec)?;
    // rctdb_open reads the socket from the environment, as a C program would.
    std::env::set_var("RCTDB_SOCKET", cluster.socket(0));
    let clustered = CapiDb::open(Path::new("hit.tdb"), 0, 0, libc::O_RDWR | libc::O_CREAT);
    std::env::remove_var("RCTDB_SOCKET");
    let clustered = clustered?;
    let raw_flags = crate::daemon::CLUSTERED_TDB_FLAGS;
    let raw = RawTdb::create(&bench.dir.join("raw.tdb"), 100_001, raw_flags)
        .map_err(|e| format!("tdb_open for the baseline: {e}"))?;
    let keys: Vec<Vec<u8>> = (0..bench.keys).map(|i| format!("key-{i:08}").into_bytes()).collect();
    let value = vec![b'v'; bench.value_size];
    println!(
        "bench hit: {} records this node holds, {}-byte values, {} rounds per side",
        bench.keys, bench.value_size, bench.rounds
    );
    let (ours, theirs) = compare(
        bench.rounds,
        keys.len(),
        || clustered.pass(&keys, &value, Locking::ChainLocked),
        || raw.pass(&keys, &value, Locking::ChainLocked),
        |_, _, _| {},
    );
    println!("locked read-modify-writes per second (median of {} rounds):", bench.rounds);
    println!("  rctdb, clustered, local hit  {ours:>10.0} /s  ({:.2} us each)", 1e6 / ours);
    println!("  raw libtdb                   {theirs:>10.0} /s  ({:.2} us each)", 1e6 / theirs);
    println!("  ratio (rctdb / raw) {:.3}", ours / theirs);
    clustered.close()
}
