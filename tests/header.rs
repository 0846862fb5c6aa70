//! include/rctdb.h must be what cbindgen makes of crates/rctdb/src/capi today.
//! Regenerate it with: RCTDB_BLESS=1 cargo test --test header

use std::path::Path;

#[test]
fn header_is_current() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let library = root.join("crates/rctdb");
    let config = cbindgen::Config::from_file(library.join("cbindgen.toml")).expect("reading cbindgen.toml");
    let bindings = cbindgen::Builder::new()
        .with_src(library.join("src/capi/mod.rs"))
        .with_config(config)
        .generate()
        .expect("cbindgen could not parse the crate");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("cbindgen writes UTF-8");

    let path = root.join("include/rctdb.h");
    if std::env::var_os("RCTDB_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().expect("include/")).expect("creating include/");
        std::fs::write(&path, &generated).expect("writing include/rctdb.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    if committed != generated {
        let first_difference = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(generated.lines().count()));
        panic!(
            "include/rctdb.h is stale: it differs from what cbindgen generates from crates/rctdb/src/capi \
             (first at line {}).\nRegenerate it with: RCTDB_BLESS=1 cargo test --test header",
            first_difference + 1
        );
    }
}
