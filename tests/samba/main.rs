//! Stock Samba on rctdb: smbd on rctdbd and the tdb preload (root, Samba installed; the
//! scripts of samba-glue/). `cargo test --test samba`.

#[path = "../c_support/mod.rs"]
mod c_support;

mod samba_cluster;
mod samba_preload;
