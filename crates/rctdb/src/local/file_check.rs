//! Reads a tdb file's header and hash table in plain Rust, to say precisely why a file is
//! not a usable tdb. libtdb only answers EIO or EINVAL, reinitialises a file that is not a
//! tdb when O_CREAT is given, and notices a truncated file only when a record past the end is
//! first touched; these checks catch all three at open time.
//!
//! The layout is tdb's `struct tdb_header` (168 bytes) followed by the hash table: the free
//! list head, then one u32 offset per hash chain. With robust mutexes the whole database is
//! shifted by the mutex area and its offsets are relative to that shift.

use std::{fs::File, io, os::unix::fs::FileExt};

/// `TDB_MAGIC_FOOD` with its terminating NUL, the first bytes of every tdb file.
const MAGIC_FOOD: &[u8] = b"TDB file\n\0";
const HEADER_LEN: u64 = 168;
const VERSION: u32 = 0x2601_1967 + 6;
const FEATURE_FLAG_MUTEX: u32 = 1;
/// A record header: next, rec_len, key_len, data_len, full_hash, magic.
const RECORD_HEADER_LEN: u64 = 24;

/// What a file holds when it is a tdb: enough of the header to check the layout.
struct Header {
    hash_size: u32,
    recovery_start: u32,
    /// Where the database proper begins: after the mutex area, when there is one.
    base: u64,
    swapped: bool,
}

/// `Err` with a sentence when a non-empty file at `path` is not a tdb or is truncated, so
/// that an `O_CREAT` open does not let libtdb overwrite it. A missing or empty file is fine:
/// that is what O_CREAT is for.
pub fn refuse_to_overwrite(path: &std::path::Path) -> Result<(), String> {
    let file = match File::open(path) {
        Ok(file) => file,
        // Missing or unreadable: libtdb's own open reports that more precisely.
        Err(_) => return Ok(()),
    };
    match file.metadata() {
        Ok(meta) if meta.len() == 0 || !meta.is_file() => return Ok(()),
        Ok(_) => {}
        Err(_) => return Ok(()),
    }
    read_header(&file)
        .map(|_| ())
        .map_err(|problem| format!("{problem}; refusing to let O_CREAT overwrite it"))
}

/// Checks an open tdb file: header, hash table and every chain head inside the file.
pub fn check_layout(file: &File) -> Result<(), String> {
    let header = read_header(file)?;
    let table_len = (u64::from(header.hash_size) + 1) * 4;
    let data_start = HEADER_LEN + table_len;
    // Size checked before reading the table so that a corrupt hash size cannot make us
    // allocate more than the file holds.
    let size = file_len(file)?;
    if size < header.base + data_start {
        return Err(format!(
            "truncated: the file is {size} bytes, but its header announces {} hash chains, \
             which need {} bytes",
            header.hash_size,
            header.base + data_start
        ));
    }
    let mut table = vec![0u8; table_len as usize];
    file.read_exact_at(&mut table, header.base + HEADER_LEN)
        .map_err(|e| format!("reading the hash table: {e}"))?;
    // Read the size again after the table: the file only grows while others use it, so every
    // offset we read must lie inside this size.
    let size = file_len(file)?.saturating_sub(header.base);
    for (slot, raw) in table.chunks_exact(4).enumerate() {
        let offset = u64::from(header.u32(raw));
        if offset != 0 && (offset < data_start || offset + RECORD_HEADER_LEN > size) {
            let what =
                if slot == 0 { "the free list".to_string() } else { format!("hash chain {}", slot - 1) };
            return Err(format!(
                "truncated or corrupt: {what} starts at byte {offset}, outside the {size}-byte database"
            ));
        }
    }
    let recovery = u64::from(header.recovery_start);
    if recovery != 0 && recovery + RECORD_HEADER_LEN > size {
        return Err(format!(
            "truncated: the transaction recovery area starts at byte {recovery}, outside the \
             {size}-byte database"
        ));
    }
    Ok(())
}

/// The bytes tdb's all-record lock (`tdb_lockall`, CTDB's freeze) covers: the lock byte of
/// every hash chain. An error for a file that is not a tdb, or whose chains are locked with
/// robust mutexes rather than fcntl locks.
pub fn chains_lock_range(file: &File) -> Result<(u64, u64), String> {
    let header = read_header(file)?;
    if header.base != 0 {
        return Err("its chains are locked with mutexes, not fcntl locks".into());
    }
    Ok((HEADER_LEN, 4 * u64::from(header.hash_size)))
}

/// Why an existing file that libtdb refused is not a tdb, if we can tell.
pub fn diagnose(path: &std::path::Path) -> Option<String> {
    let file = File::open(path).ok()?;
    if file_len(&file).ok()? == 0 {
        return Some("the file is empty, not a tdb (open it with O_CREAT to make it one)".into());
    }
    check_layout(&file).err()
}

fn read_header(file: &File) -> Result<Header, String> {
    let mut raw = [0u8; HEADER_LEN as usize];
    let got = read_up_to(file, &mut raw, 0).map_err(|e| format!("reading the tdb header: {e}"))?;
    let present = &raw[..got.min(MAGIC_FOOD.len())];
    if present != &MAGIC_FOOD[..present.len()] {
        return Err("not a tdb file: it does not start with tdb's magic \"TDB file\\n\"".into());
    }
    if got < raw.len() {
        return Err(format!(
            "truncated: the file is {got} bytes, shorter than the {HEADER_LEN}-byte tdb header"
        ));
    }
    let native = u32::from_ne_bytes([raw[32], raw[33], raw[34], raw[35]]);
    let swapped = match native {
        VERSION => false,
        v if v == VERSION.swap_bytes() => true,
        v => {
            return Err(format!(
                "not a tdb this library knows: header version {v:#010x}, expected {VERSION:#010x}"
            ))
        }
    };
    let field = |at: usize| {
        let value = u32::from_ne_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        if swapped {
            value.swap_bytes()
        } else {
            value
        }
    };
    let base = if field(60) & FEATURE_FLAG_MUTEX != 0 { u64::from(field(64)) } else { 0 };
    Ok(Header { hash_size: field(36), recovery_start: field(44), base, swapped })
}

impl Header {
    fn u32(&self, raw: &[u8]) -> u32 {
        let value = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]);
        if self.swapped {
            value.swap_bytes()
        } else {
            value
        }
    }
}

fn file_len(file: &File) -> Result<u64, String> {
    file.metadata().map(|m| m.len()).map_err(|e| format!("fstat: {e}"))
}

fn read_up_to(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}
