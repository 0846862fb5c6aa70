//! Generates the raw libtdb bindings (src/local/ffi.rs includes them) and links libtdb.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-changed=src/local/tdb_wrapper.h");
    println!("cargo:rustc-link-lib=tdb");

    let bindings = bindgen::Builder::default()
        .header("src/local/tdb_wrapper.h")
        .allowlist_function("tdb_.*")
        .allowlist_type("TDB_.*|tdb_.*")
        .allowlist_var("TDB_.*")
        .rustified_enum("TDB_ERROR")
        .derive_debug(true)
        .derive_default(true)
        .generate()
        .expect("bindgen failed on <tdb.h>: is libtdb-dev installed?");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings.write_to_file(out.join("tdb_bindings.rs")).expect("writing tdb_bindings.rs");
}
