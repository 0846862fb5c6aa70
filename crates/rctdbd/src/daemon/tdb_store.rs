//! The daemon's `RecordStore`: one libtdb file per attached database under `--dbdir`, values
//! stored as the 24-byte record header followed by the data (DESIGN §8.1).
//!
//! A write the file refuses (a full disk, a read-only file system, or a lock a stopped
//! client holds past `WRITE_LOCK_BOUND`) is kept in memory, where the engine reads it, and
//! written again from the node's tick: libtdb drops the old record before it allocates the
//! new one, so a failed store must not lose the record. Volatile records live no longer on
//! disk than in the daemon anyway (a restarted daemon empties its files).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::lock_bound;
use super::lock_wait::LockFiles;
use crate::engine::{Record, RecordStore};
use crate::error::{Error, ErrorCode, Result};
use crate::local::{StoreFlag, Tdb};
use crate::record::RecordHeader;
use crate::wire::control::{valid_db_name, ChunkRequest, RecordChunk, RecordCopy};
use crate::wire::DbId;

/// tdb_flags of clustered database files; clients open them with the same flags. The
/// Jenkins hash lets the daemon compute which byte a chain lock covers (`lock_wait`).
pub const CLUSTERED_TDB_FLAGS: i32 = crate::local::flags::TDB_INCOMPATIBLE_HASH;
/// CTDB's bucket count: chains stay short however many records migrate through.
const HASH_SIZE: i32 = 100_001;
/// How long a daemon write may wait for a lock libtdb takes by itself (the free list; a
/// traverse's transaction lock): clients hold them for microseconds, unless stopped inside
/// a store (or descheduled: a busy 2-core machine shows a few ms).
const WRITE_LOCK_BOUND: Duration = Duration::from_millis(10);
/// After a write failed, writes of records the file does not have stay in memory until
/// the file is tried again: after 10 ms, doubling while it keeps refusing, up to 1 s. A
/// lock held for a moment costs a client 10 ms; a stuck lock or a full disk costs the
/// node one bounded wait per retry.
const FIRST_RETRY: Duration = Duration::from_millis(10);
const LAST_RETRY: Duration = Duration::from_secs(1);
/// Records kept in memory longer than this because of a lock are worth a warning.
const STUCK_AFTER: Duration = Duration::from_secs(1);
/// The DMASTER a placeholder names (CTDB's CTDB_UNKNOWN_PNN): no node, so no client trusts it.
const NO_NODE: u32 = u32::MAX;
/// Records written again per database per tick.
const REWRITES_PER_TICK: usize = 256;
/// The most a chunk of a traverse may ask for, whatever a peer says: one chunk is read under
/// the node's mutex, and its reply must stay far below the packet limit.
pub const MAX_CHUNK_RECORDS: u32 = 4096;
pub const MAX_CHUNK_BYTES: u32 = 4 << 20;

/// What reading a chunk of a traverse found.
#[derive(Debug)]
pub enum ChunkRead {
    Records(RecordChunk),
    /// A client holds the chain of the next record: the caller waits for it on a lock
    /// waiter and reads again while the waiter holds it (`held_for_us`).
    Busy(Vec<u8>),
}

/// A record the file refused, and why (an errno, EAGAIN for a lock held too long).
struct Unwritten {
    record: Record,
    errno: i32,
}

pub struct AttachedDb {
    pub name: String,
    pub tdb: Tdb,
    /// A client asked for the change counter (CTDB's ENABLE_SEQNUM): every writer, this
    /// daemon included, raises it, so smbd's caches keyed by it (brlock) see every change,
    /// records arriving and leaving included.
    seqnum: bool,
    /// Open file descriptions of the same file, for lock waiters.
    lock_files: Arc<LockFiles>,
    /// Holds a read lock on tdb's ACTIVE_LOCK byte for as long as the database is attached,
    /// so that no opener with TDB_CLEAR_IF_FIRST (smbd opens its volatile databases so when
    /// not clustered) can take the file for unused and wipe records this node holds.
    _active_lock: std::fs::File,
    /// Records the file refused, newest version, until written.
    unwritten: HashMap<Vec<u8>, Unwritten>,
    /// After a refused write: when the file is tried again, and the wait before that.
    retry_at: Option<Instant>,
    /// Why the file refused the last write: what records kept meanwhile are refused with.
    refused_errno: i32,
    retry_delay: Duration,
    /// Since when records are kept in memory, and whether that was said in the log.
    unwritten_since: Option<Instant>,
    stuck_reported: bool,
}

impl AttachedDb {
    fn write_deferred(&self) -> bool {
        self.retry_at.is_some_and(|at| Instant::now() < at)
    }

    /// Writes the record to the file, waiting at most `WRITE_LOCK_BOUND` for tdb's own
    /// locks; the errno on failure.
    fn write(&self, key: &[u8], record: &Record) -> std::result::Result<(), (i32, Error)> {
        let header = record.header.encode();
        lock_bound::within(WRITE_LOCK_BOUND, || {
            self.tdb.storev(key, &[&header, &record.data], StoreFlag::Replace).map_err(|err| {
                let errno = match err.code {
                    ErrorCode::Lock | ErrorCode::LockTimeout => libc::EAGAIN,
                    _ => {
                        let len = key.len() + crate::record::HEADER_LEN + record.data.len();
                        file_system_trouble(self.tdb.path(), len).unwrap_or(libc::EIO)
                    }
                };
                (errno, err)
            })
        })
    }

    /// Whether the file's version of `key` is at least as long as `record`: libtdb then
    /// overwrites it in place, with no allocation and so no free-list lock, and records
    /// already here keep moving while a client holds the free list.
    fn fits_in_place(&self, key: &[u8], record: &Record) -> bool {
        let len = crate::record::HEADER_LEN + record.data.len();
        matches!(self.tdb.parse_record(key, |value| value.len() >= len), Ok(Some(true)))
    }

    /// Makes sure no client finds a version of `key` in the file it would trust: one there is
    /// overwritten in place (no allocation, so no free-list lock) by the record's header
    /// naming no node, and no data; a client asks the daemon, which has the record. False if
    /// a trusted version stays.
    fn hide_in_file(&self, key: &[u8], record: &Record) -> bool {
        if !self.tdb.exists(key) {
            return true;
        }
        let placeholder = RecordHeader { dmaster: NO_NODE, ..record.header }.encode();
        let hidden = lock_bound::within(WRITE_LOCK_BOUND, || {
            self.tdb.storev(key, &[&placeholder], StoreFlag::Replace)
        });
        hidden.is_ok() || lock_bound::within(WRITE_LOCK_BOUND, || self.tdb.delete(key)).is_ok()
    }

    fn keep_unwritten(&mut self, key: &[u8], record: &Record, errno: i32, err: Option<&Error>) {
        if let Some(err) = err {
            self.refused_errno = errno;
            // A lock held a moment too long is the machine being busy: said only if it lasts
            // (`report_stuck`). A full disk or a read-only file system is said at once.
            if self.unwritten.is_empty() && errno != libc::EAGAIN {
                log::error!(
                    "db {}: the file refused a record: {} (libtdb: {err}); records stay in memory \
                     and are written again once it takes them, and clients asking for them get \
                     that error meanwhile",
                    self.name,
                    std::io::Error::from_raw_os_error(errno),
                );
            }
            self.retry_later();
        }
        self.unwritten_since.get_or_insert_with(Instant::now);
        self.unwritten.insert(key.to_vec(), Unwritten { record: record.clone(), errno });
    }

    fn retry_later(&mut self) {
        self.retry_delay = (self.retry_delay * 2).clamp(FIRST_RETRY, LAST_RETRY);
        self.retry_at = Some(Instant::now() + self.retry_delay);
    }

    fn all_written(&mut self) {
        if self.stuck_reported {
            log::warn!("db {}: every record kept in memory is written to the file again", self.name);
        }
        self.retry_at = None;
        self.retry_delay = Duration::ZERO;
        self.unwritten_since = None;
        self.stuck_reported = false;
    }

    /// Records kept because a process holds a lock libtdb needs, for longer than a moment.
    fn report_stuck(&mut self) {
        let stuck = self.unwritten_since.is_some_and(|since| since.elapsed() > STUCK_AFTER);
        if stuck && !self.stuck_reported {
            self.stuck_reported = true;
            log::warn!(
                "db {}: {} records kept in memory for over {} s: a process holds a lock libtdb \
                 needs to write them (the free list: a client stopped inside a store?), or the \
                 file system refuses them; clients wait for them",
                self.name,
                self.unwritten.len(),
                STUCK_AFTER.as_secs()
            );
        }
    }
}

/// tdb's ACTIVE_LOCK offset: CLEAR_IF_FIRST wipes the file only if it can write-lock it.
const TDB_ACTIVE_LOCK: u64 = 4;

fn hold_active_lock(path: &Path) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("{}: {e}", path.display())))?;
    super::lock_wait::ofd_lock(&file, TDB_ACTIVE_LOCK, 1, libc::F_RDLCK, false)
        .map_err(|e| Error::io(format!("{}: read-locking tdb's ACTIVE_LOCK: {e}", path.display())))?;
    Ok(file)
}

pub struct TdbStore {
    dir: PathBuf,
    dbs: HashMap<DbId, AttachedDb>,
    /// Chains a waiter thread holds for the engine: locked as far as the engine is concerned.
    held_for_us: HashSet<(DbId, Vec<u8>)>,
    /// The header of every record of every database, as the engine last wrote it. Only the
    /// engine changes headers (clients store under the header they read), so a recovery
    /// reads them here instead of walking chains that clients may hold locked. In key
    /// order: a traverse reads the records a chunk at a time, each after the last key sent.
    headers: HashMap<DbId, BTreeMap<Vec<u8>, RecordHeader>>,
}

impl TdbStore {
    pub fn new(dir: &Path) -> TdbStore {
        TdbStore {
            dir: dir.to_owned(),
            dbs: HashMap::new(),
            held_for_us: HashSet::new(),
            headers: HashMap::new(),
        }
    }

    /// A freeze waiter holds every chain of `db_id` for us (or gave them back): while it
    /// does, the engine's chain locks are satisfied by the whole-database lock mark.
    pub fn frozen_for_us(&mut self, db_id: DbId, frozen: bool) -> Result<()> {
        let db = self.db(db_id)?;
        if frozen {
            db.tdb.lockall_mark()
        } else {
            db.tdb.lockall_unmark()
        }
    }

    /// Opens (creating it if needed) the file of database `name`; returns its path.
    pub fn attach(&mut self, db_id: DbId, name: &str) -> Result<PathBuf> {
        if !valid_db_name(name) {
            return Err(Error::einval(format!("{name:?} is not a database name (a plain file name)")));
        }
        if let Some(db) = self.dbs.get(&db_id) {
            if db.name != name {
                return Err(Error::einval(format!(
                    "{name:?} and {:?} have the same db id {db_id:#x}",
                    db.name
                )));
            }
            return Ok(db.tdb.path().to_owned());
        }
        let path = self.dir.join(name);
        let tdb = Tdb::open(&path, HASH_SIZE, CLUSTERED_TDB_FLAGS, libc::O_RDWR | libc::O_CREAT, 0o600)?;
        tdb.fail_lock_waits_on_signal(&lock_bound::ALWAYS_INTERRUPT);
        // A volatile database starts empty, as in CTDB. The daemon emptied the files of a
        // previous run when it started; emptying again at the first attach also drops what
        // a stale client of that run may have written since.
        wipe_without_waiting(&tdb)?;
        if tdb.chain_lock_offset(b"").is_none() {
            return Err(Error::einval(format!(
                "{}: chain locks of this file cannot be waited for",
                path.display()
            )));
        }
        let lock_files = Arc::new(LockFiles::new(&path));
        let _active_lock = hold_active_lock(&path)?;
        self.dbs.insert(
            db_id,
            AttachedDb {
                name: name.to_owned(),
                tdb,
                seqnum: false,
                lock_files,
                _active_lock,
                unwritten: HashMap::new(),
                retry_at: None,
                refused_errno: libc::EAGAIN,
                retry_delay: Duration::ZERO,
                unwritten_since: None,
                stuck_reported: false,
            },
        );
        self.headers.insert(db_id, BTreeMap::new());
        Ok(path)
    }

    /// CTDB's ENABLE_SEQNUM: the change counter of `db_id` counts from now on.
    pub fn enable_seqnum(&mut self, db_id: DbId) -> Result<()> {
        let db = self
            .dbs
            .get_mut(&db_id)
            .ok_or_else(|| Error::einval(format!("db {db_id:#x} is not attached")))?;
        db.tdb.enable_seqnum();
        db.seqnum = true;
        Ok(())
    }

    /// Whether a client asked for `db_id`'s change counter (ENABLE_SEQNUM).
    pub fn seqnum_enabled(&self, db_id: DbId) -> bool {
        self.dbs.get(&db_id).is_some_and(|db| db.seqnum)
    }

    /// The tdb_flags a client opens `db_id` with: every opener must agree on them.
    pub fn open_flags(&self, db_id: DbId) -> Result<i32> {
        let db = self.db(db_id)?;
        Ok(CLUSTERED_TDB_FLAGS | if db.seqnum { crate::local::flags::TDB_SEQNUM } else { 0 })
    }

    pub fn dbs(&self) -> impl Iterator<Item = (&DbId, &AttachedDb)> {
        self.dbs.iter()
    }

    /// The next records of a traverse of `request.db_id`, in key order after `request.after`,
    /// read one chain lock at a time, never waiting: a chain a client holds ends the chunk
    /// (`ChunkRead::Busy` if it is the first). The header index says which keys exist, so
    /// no walk of the file's chains (and no lock over all of them) is needed.
    pub fn read_chunk(&mut self, request: &ChunkRequest) -> Result<ChunkRead> {
        let db_id = request.db_id;
        self.db(db_id)?;
        let max_records = request.max_records.clamp(1, MAX_CHUNK_RECORDS) as usize;
        let max_bytes = request.max_bytes.min(MAX_CHUNK_BYTES) as usize;
        let start = request.after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        // One more than asked for, to know whether the chunk is the last.
        let keys: Vec<Vec<u8>> = self.headers.get(&db_id).map_or_else(Vec::new, |headers| {
            headers
                .range::<[u8], _>((start, Bound::Unbounded))
                .take(max_records + 1)
                .map(|(k, _)| k.clone())
                .collect()
        });
        let mut chunk = RecordChunk { last: false, records: vec![] };
        let mut bytes = 0;
        for key in keys.iter().take(max_records) {
            if !self.try_lock(db_id, key) {
                if chunk.records.is_empty() {
                    return Ok(ChunkRead::Busy(key.clone()));
                }
                return Ok(ChunkRead::Records(chunk));
            }
            let found = self.fetch(db_id, key);
            self.unlock(db_id, key);
            // A key the engine deleted since the index was read has no record: skipped.
            let Some(record) = found? else { continue };
            let copy = RecordCopy { key: key.clone(), header: record.header, data: record.data };
            if !chunk.records.is_empty() && bytes + copy.encoded_len() > max_bytes {
                return Ok(ChunkRead::Records(chunk));
            }
            bytes += copy.encoded_len();
            chunk.records.push(copy);
        }
        chunk.last = keys.len() <= max_records;
        Ok(ChunkRead::Records(chunk))
    }

    /// How many pieces `db_id`'s free list is in (tdb merges neighbours as it counts).
    pub fn free_pieces(&self, db_id: DbId) -> Result<usize> {
        let tdb = &self.db(db_id)?.tdb;
        lock_bound::within(WRITE_LOCK_BOUND, || tdb.freelist_size())
    }

    /// Writes records the file refused before, a batch per database whose retry is due;
    /// from the node's tick. Chains a client holds are left for a later tick.
    pub fn rewrite_unwritten(&mut self) {
        for db in self.dbs.values_mut() {
            if db.unwritten.is_empty() || db.write_deferred() {
                continue;
            }
            let keys: Vec<Vec<u8>> = db.unwritten.keys().take(REWRITES_PER_TICK).cloned().collect();
            for key in keys {
                if db.tdb.lock_chain_nonblock(&key).is_err() {
                    continue;
                }
                let written = db.write(&key, &db.unwritten[&key].record);
                if let Err(err) = db.tdb.unlock_chain(&key) {
                    log::error!("db {}: unlocking a chain after a rewrite: {err}", db.name);
                }
                match written {
                    Ok(()) => {
                        db.unwritten.remove(&key);
                    }
                    Err((errno, _)) => {
                        db.unwritten.get_mut(&key).expect("still kept").errno = errno;
                        db.retry_later();
                        break;
                    }
                }
            }
            if db.unwritten.is_empty() {
                db.all_written();
            } else {
                db.report_stuck();
            }
        }
    }

    /// How many records the files refused and memory keeps, over all databases.
    pub fn unwritten_count(&self) -> usize {
        self.dbs.values().map(|db| db.unwritten.len()).sum()
    }

    /// Rewrites `db_id` while a lock waiter holds every chain for us: the live records are
    /// read, the file emptied (its whole data area one free record) and the records stored
    /// again, close together. The file keeps its size; allocations stop walking a free list
    /// of small pieces. Returns the number of records rewritten.
    pub fn repack_held_for_us(&self, db_id: DbId) -> Result<usize> {
        let db = self.db(db_id)?;
        db.tdb.lockall_mark()?;
        let repacked = lock_bound::within(WRITE_LOCK_BOUND, || rewrite(&db.tdb));
        db.tdb.lockall_unmark()?;
        repacked
    }

    /// Where a lock waiter can wait for the chain lock of `key`: file, byte offset, length.
    pub fn chain_site(&self, db_id: DbId, key: &[u8]) -> Option<(Arc<LockFiles>, u64, u64)> {
        let db = self.dbs.get(&db_id)?;
        Some((db.lock_files.clone(), db.tdb.chain_lock_offset(key)?, 1))
    }

    /// Where a lock waiter can wait for every chain lock of the database.
    pub fn all_chains_site(&self, db_id: DbId) -> Option<(Arc<LockFiles>, u64, u64)> {
        let db = self.dbs.get(&db_id)?;
        let (start, len) = db.tdb.chains_lock_range()?;
        Some((db.lock_files.clone(), start, len))
    }

    /// While a waiter holds `key`'s chain for the engine, the engine's locking is marking.
    pub fn held_for_us(&mut self, db_id: DbId, key: &[u8], held: bool) {
        if held {
            self.held_for_us.insert((db_id, key.to_vec()));
        } else {
            self.held_for_us.remove(&(db_id, key.to_vec()));
        }
    }

    /// The attached database `db_id`; an error naming it if it is not attached.
    pub fn db(&self, db_id: DbId) -> Result<&AttachedDb> {
        self.dbs.get(&db_id).ok_or_else(|| Error::einval(format!("db {db_id:#x} is not attached")))
    }
}

impl RecordStore for TdbStore {
    fn try_lock(&mut self, db: DbId, key: &[u8]) -> bool {
        let marked = self.held_for_us.contains(&(db, key.to_vec()));
        self.db(db)
            .and_then(|db| if marked { db.tdb.chainlock_mark(key) } else { db.tdb.lock_chain_nonblock(key) })
            .is_ok()
    }

    fn unlock(&mut self, db: DbId, key: &[u8]) {
        let marked = self.held_for_us.contains(&(db, key.to_vec()));
        let unlocked = self.db(db).and_then(|db| {
            if marked {
                db.tdb.chainlock_unmark(key)
            } else {
                db.tdb.unlock_chain(key)
            }
        });
        if let Err(err) = unlocked {
            log::error!("unlocking a chain of db {db:#x}: {err}");
        }
    }

    fn fetch(&mut self, db_id: DbId, key: &[u8]) -> Result<Option<Record>> {
        let db = self.db(db_id)?;
        if let Some(kept) = db.unwritten.get(key) {
            return Ok(Some(kept.record.clone()));
        }
        let parsed = db.tdb.parse_record(key, |value| {
            RecordHeader::decode(value).map(|(header, data)| Record { header, data: data.to_vec() })
        })?;
        match parsed.flatten() {
            Some(record) => Ok(Some(record)),
            // A client's store that failed (a full disk) drops the record before it fails.
            // Its value is lost as the client was told; its header is not, so the key's RSN
            // never goes back and no stale copy elsewhere can count as newer.
            None => Ok(self
                .headers
                .get(&db_id)
                .and_then(|headers| headers.get(key))
                .map(|&header| Record { header, data: vec![] })),
        }
    }

    /// Never leaves an older version in the file while memory keeps the record: clients
    /// trust the file's header, and an older one may name this node DMASTER of a record that
    /// left. Such a version is overwritten in place by a placeholder no client trusts
    /// (`hide_in_file`), or the store fails.
    fn store(&mut self, db_id: DbId, key: &[u8], record: &Record) -> Result<()> {
        let db = self
            .dbs
            .get_mut(&db_id)
            .ok_or_else(|| Error::einval(format!("db {db_id:#x} is not attached")))?;
        if db.write_deferred() && !db.fits_in_place(key, record) {
            if !db.hide_in_file(key, record) {
                return Err(Error::io(format!("db {}: a stale copy stays in the file", db.name)));
            }
            let errno = db.refused_errno;
            db.keep_unwritten(key, record, errno, None);
        } else {
            match db.write(key, record) {
                Ok(()) => {
                    if db.unwritten.remove(key).is_some() && db.unwritten.is_empty() {
                        db.all_written();
                    }
                }
                Err((errno, err)) => {
                    // libtdb drops the old record before it allocates, so it is usually gone.
                    if !db.hide_in_file(key, record) {
                        return Err(err);
                    }
                    db.keep_unwritten(key, record, errno, Some(&err));
                }
            }
        }
        self.headers.entry(db_id).or_default().insert(key.to_vec(), record.header);
        Ok(())
    }

    fn unwritten(&self, db: DbId, key: &[u8]) -> Option<i32> {
        Some(self.dbs.get(&db)?.unwritten.get(key)?.errno)
    }

    fn delete(&mut self, db_id: DbId, key: &[u8]) -> Result<()> {
        let db = self
            .dbs
            .get_mut(&db_id)
            .ok_or_else(|| Error::einval(format!("db {db_id:#x} is not attached")))?;
        db.unwritten.remove(key);
        match lock_bound::within(WRITE_LOCK_BOUND, || db.tdb.delete(key)) {
            Err(err) if err.code != ErrorCode::NoExist => return Err(err),
            _ => {}
        }
        if let Some(headers) = self.headers.get_mut(&db_id) {
            headers.remove(key);
        }
        Ok(())
    }

    fn headers(&mut self, db: DbId) -> Result<Vec<(Vec<u8>, RecordHeader)>> {
        self.db(db)?;
        let headers = self.headers.get(&db).into_iter().flatten();
        Ok(headers.map(|(key, header)| (key.clone(), *header)).collect())
    }

    fn wipe(&mut self, db_id: DbId) -> Result<()> {
        let db = self
            .dbs
            .get_mut(&db_id)
            .ok_or_else(|| Error::einval(format!("db {db_id:#x} is not attached")))?;
        lock_bound::within(WRITE_LOCK_BOUND, || db.tdb.wipe_all())?;
        db.unwritten.clear();
        db.all_written();
        self.headers.insert(db_id, BTreeMap::new());
        Ok(())
    }

    fn attach(&mut self, db: DbId, name: &str) -> Result<()> {
        TdbStore::attach(self, db, name).map(drop)
    }
}

/// Why writing a record of `len` bytes to the tdb at `path` fails, if its file system says:
/// read-only (EROFS), or too full for the growth libtdb asks for (ENOSPC): 100 times the
/// record (twice, past 100 KiB), or a quarter of the file if more. libtdb does not keep
/// the errno of a failed expansion, and its later calls overwrite it.
fn file_system_trouble(path: &Path, len: usize) -> Option<i32> {
    let c_path = std::ffi::CString::new(std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str())).ok()?;
    // SAFETY: statvfs is a plain C struct, filled by the call; c_path is NUL-terminated.
    let mut fs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut fs) } != 0 {
        return None;
    }
    let file_len = std::fs::metadata(path).map_or(0, |m| m.len());
    let growth = (len as u64 * if len > 100 << 10 { 2 } else { 100 }).max(file_len / 4);
    if fs.f_flag & libc::ST_RDONLY != 0 {
        Some(libc::EROFS)
    } else if (fs.f_bavail as u64).saturating_mul(fs.f_frsize as u64) < growth {
        Some(libc::ENOSPC)
    } else {
        None
    }
}

/// Reads every record, empties the file, stores them again; under a lock the caller holds.
/// The records fit: they did before, and emptying frees at least that space. Should a store
/// fail all the same, the others are still stored and the error names how many were lost.
fn rewrite(tdb: &Tdb) -> Result<usize> {
    let mut records = vec![];
    tdb.traverse_read(|key, value| {
        records.push((key.to_vec(), value.to_vec()));
        true
    })?;
    tdb.wipe_all()?;
    let mut failed = (0, None);
    for (key, value) in &records {
        if let Err(err) = tdb.store(key, value, StoreFlag::Insert) {
            failed = (failed.0 + 1, Some(err));
        }
    }
    match failed {
        (0, _) => Ok(records.len()),
        (lost, err) => Err(Error::io(format!(
            "{}: {lost} of {} records could not be stored back: {}",
            tdb.path().display(),
            records.len(),
            err.map_or_else(String::new, |e| e.to_string())
        ))),
    }
}

/// Empties a volatile database, unless a process holds one of its locks: a stale client of a
/// previous run, which must not make the daemon wait. The caller gets an error instead.
pub fn wipe_without_waiting(tdb: &Tdb) -> Result<()> {
    tdb.lockall_nonblock().map_err(|err| {
        Error::new(
            err.code,
            format!(
                "{}: a process still holds a lock on this volatile database, so it cannot be \
                 emptied (a client of a previous rctdbd?): {}",
                tdb.path().display(),
                err.detail
            ),
        )
    })?;
    let wiped = tdb.wipe_all();
    tdb.unlockall()?;
    wiped
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::store::{Record, RecordStore};

    /// Vacuuming leaves the free list in many small pieces; a repack keeps every record and
    /// value and leaves it in one.
    #[test]
    fn a_repack_keeps_every_record_and_mends_the_free_list() {
        let dir = std::env::temp_dir().join(format!("rctdb-repack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = TdbStore::new(&dir);
        store.attach(9, "repack.tdb").unwrap();
        let header = RecordHeader { rsn: 3, dmaster: 1, flags: 0 };
        let key = |i: u32| format!("k{i}").into_bytes();
        for i in 0..6000u32 {
            // Empty records (a key and a header) among full ones, as migrations leave them.
            let data = if i % 2 == 0 { vec![] } else { vec![i as u8; 120] };
            RecordStore::store(&mut store, 9, &key(i), &Record { header, data }).unwrap();
        }
        for i in (0..6000u32).filter(|i| i % 3 != 0) {
            RecordStore::delete(&mut store, 9, &key(i)).unwrap();
        }
        let before = store.free_pieces(9).unwrap();
        assert!(before > 100, "the deletes left the free list in {before} pieces");
        assert_eq!(store.repack_held_for_us(9).unwrap(), 2000);
        assert!(store.free_pieces(9).unwrap() <= 1, "one free record after the rewrite");
        for i in 0..6000u32 {
            let found = RecordStore::fetch(&mut store, 9, &key(i)).unwrap();
            let expected = (i % 3 == 0).then(|| {
                let data = if i % 2 == 0 { vec![] } else { vec![i as u8; 120] };
                Record { header, data }
            });
            assert_eq!(found, expected, "record {i}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn chunk(store: &mut TdbStore, after: Option<&[u8]>, max_records: u32, max_bytes: u32) -> ChunkRead {
        let request = ChunkRequest { db_id: 5, max_records, max_bytes, after: after.map(<[u8]>::to_vec) };
        store.read_chunk(&request).expect("read_chunk")
    }

    /// A traverse reads a node's records in key order, a chunk at a time after a cursor,
    /// each bounded in records and bytes, the last one marked; a chain another process
    /// holds is waited for (`Busy`), not read around.
    #[test]
    fn chunks_come_in_key_order_within_their_bounds_and_stop_at_a_held_chain() {
        let dir = std::env::temp_dir().join(format!("rctdb-chunks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = TdbStore::new(&dir);
        store.attach(5, "chunks.tdb").unwrap();
        let header = RecordHeader { rsn: 2, dmaster: 0, flags: 0 };
        for i in (0..10u8).rev() {
            let record = Record { header, data: vec![i; 100] };
            RecordStore::store(&mut store, 5, &[b'k', b'0' + i], &record).unwrap();
        }
        let keys = |read: ChunkRead| match read {
            ChunkRead::Records(chunk) => (
                chunk
                    .records
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.key).into_owned())
                    .collect::<Vec<_>>(),
                chunk.last,
            ),
            ChunkRead::Busy(key) => panic!("busy at {key:?}"),
        };
        assert_eq!(
            keys(chunk(&mut store, None, 3, 1 << 20)),
            (vec!["k0".into(), "k1".into(), "k2".into()], false)
        );
        assert_eq!(
            keys(chunk(&mut store, Some(b"k2"), 100, 300)).0,
            ["k3", "k4"],
            "a record past 300 bytes waits"
        );
        assert_eq!(keys(chunk(&mut store, Some(b"k7"), 2, 1 << 20)), (vec!["k8".into(), "k9".into()], true));
        assert_eq!(keys(chunk(&mut store, Some(b"k9"), 2, 1 << 20)), (vec![], true));

        // Another process (python3-tdb) holds every chain until told to let go.
        let script = "import sys, tdb\n\
                      t = tdb.Tdb(sys.argv[1], 0, tdb.INCOMPATIBLE_HASH, 2, 0o600)\n\
                      t.lock_all()\n\
                      print('locked', flush=True)\n\
                      sys.stdin.readline()";
        let mut holder = std::process::Command::new("/usr/bin/python3")
            .args(["-c", script])
            .arg(dir.join("chunks.tdb"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(holder.stdout.take().unwrap()), &mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        assert!(matches!(chunk(&mut store, Some(b"k4"), 3, 1 << 20), ChunkRead::Busy(key) if key == b"k5"));
        drop(holder.stdin.take());
        holder.wait().unwrap();
        assert_eq!(keys(chunk(&mut store, Some(b"k4"), 1, 1 << 20)), (vec!["k5".into()], false));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// smbd opens its volatile databases with TDB_CLEAR_IF_FIRST when it is not clustered;
    /// such an opener (here python3-tdb, in another process as smbd would be) must not wipe
    /// a file this daemon has attached.
    #[test]
    fn a_clear_if_first_opener_cannot_wipe_an_attached_database() {
        let dir = std::env::temp_dir().join(format!("rctdb-active-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut store = TdbStore::new(&dir);
        store.attach(7, "locking.tdb").unwrap();
        let record = Record { header: RecordHeader { rsn: 1, dmaster: 0, flags: 0 }, data: b"held".to_vec() };
        RecordStore::store(&mut store, 7, b"key", &record).unwrap();
        let script = "import sys, tdb\n\
                      t = tdb.Tdb(sys.argv[1], 0, tdb.CLEAR_IF_FIRST | tdb.INCOMPATIBLE_HASH, 2, 0o600)\n\
                      print(len(list(t.keys())))";
        let path = dir.join("locking.tdb");
        let out =
            std::process::Command::new("/usr/bin/python3").args(["-c", script]).arg(&path).output().unwrap();
        assert!(out.status.success(), "python3-tdb: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "the opener wiped the attached file");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
