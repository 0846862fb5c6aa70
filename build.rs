//! Generates the raw libtdb calls of `rctdb bench local`'s baseline (src/tool/bench_baseline.rs),
//! which measures libtdb with nothing of librctdb between; librctdb (crates/rctdb) links libtdb.

use std::{env, path::PathBuf};

const HEADER: &str = "crates/rctdb/src/local/tdb_wrapper.h";

fn main() {
    println!("cargo:rerun-if-changed={HEADER}");
    let bindings = bindgen::Builder::default()
        .header(HEADER)
        .allowlist_function("tdb_(open|close|fetch|store|chainlock|chainunlock)")
        .allowlist_var("TDB_REPLACE")
        .generate()
        .expect("bindgen failed on <tdb.h>: is libtdb-dev installed?");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings.write_to_file(out.join("tdb_baseline.rs")).expect("writing tdb_baseline.rs");
}
